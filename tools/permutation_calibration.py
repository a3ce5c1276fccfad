"""How often the paired permutation test rejects, swapping raw probabilities or normalised ranks
(docs/experiments.md, "The permutation test on probabilities or on ranks").

Two models score the same held-out scans. Both see the label through the same signal and their own noise, so
their AUROCs are equal in expectation; model b's scores are squashed towards 0.5 (a probe beside a fine-tuned
classifier: a strictly increasing map, which leaves its AUROC as it is). Under this null a test at α = 0.05
should reject in ~5% of datasets. With ``--effect`` model a gets a stronger signal, and the rejection rate is the
test's power. Prints the rejection rate of each way of swapping, over ``--datasets`` simulated test sets.

    python tools/permutation_calibration.py                 # the null: both should be near 0.05
    python tools/permutation_calibration.py --effect 0.5    # power
"""
from __future__ import annotations

import argparse

import numpy as np

from fmct_lib.evaluate.stats import _p_value, normalised_ranks, permutation_null


def simulate(rng, n: int, prevalence: float, effect: float, squash: float) -> tuple[np.ndarray, ...]:
    """Labels (n, 1) and two models' probabilities: a = σ(3 (1 + effect) y + 3 ε_a), b = 0.5 + squash (σ(3 y + 3 ε_b) − 0.5)."""
    y = (rng.random(n) < prevalence).astype(float)
    a = 1 / (1 + np.exp(-3 * ((1 + effect) * y + rng.normal(size=n))))
    b = 0.5 + squash * (1 / (1 + np.exp(-3 * (y + rng.normal(size=n)))) - 0.5)
    return y[:, None], a[:, None], b[:, None]


def rejection_rates(datasets: int, n: int, prevalence: float, effect: float, squash: float, n_perm: int,
                    alpha: float = 0.05, seed: int = 0) -> dict[str, float]:
    """The fraction of simulated test sets whose AUROC difference the test rejects at ``alpha``, per swap."""
    rng = np.random.default_rng(seed)
    rejected = {"raw probabilities": 0, "normalised ranks": 0}
    for d in range(datasets):
        y, a, b = simulate(rng, n, prevalence, effect, squash)
        for way, (sa, sb) in (("raw probabilities", (a, b)),
                              ("normalised ranks", (normalised_ranks(a, y), normalised_ranks(b, y)))):
            observed, null = permutation_null(y, sa, sb, n_perm=n_perm, seed=d)["auroc"]
            rejected[way] += _p_value(observed[0], null[:, 0]) < alpha
    return {way: count / datasets for way, count in rejected.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", type=int, default=1000)
    parser.add_argument("--scans", type=int, default=159, help="held-out scans (Fig. 1e's test split: 159)")
    parser.add_argument("--prevalence", type=float, default=0.2)
    parser.add_argument("--effect", type=float, default=0.0, help="model a's extra signal (0: the null)")
    parser.add_argument("--squash", type=float, default=0.1, help="model b's scale around 0.5 (1: unchanged)")
    parser.add_argument("--permutations", type=int, default=1000)
    args = parser.parse_args()
    rates = rejection_rates(args.datasets, args.scans, args.prevalence, args.effect, args.squash, args.permutations)
    print(f"{args.datasets} test sets of {args.scans} scans, prevalence {args.prevalence}, effect {args.effect}, "
          f"model b squashed to ×{args.squash} around 0.5, {args.permutations} permutations; rejected at 0.05:")
    for way, rate in rates.items():
        se = np.sqrt(rate * (1 - rate) / args.datasets)
        print(f"  swapping {way:<18} {rate:.3f} ± {se:.3f}")


if __name__ == "__main__":
    main()

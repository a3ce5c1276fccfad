"""The rule every conclusion sentence follows to say how two models compare (``judge_difference``): their
difference is "above" or "below" 0 only where both tests the paper's Methods give say so, its 95% paired bootstrap
CI lying on that side and the two-sided paired permutation test rejecting (p < 0.05; the paper's test of
significance); a tie where both find nothing, and "mixed" where they disagree (at 100 bootstrap replicates, the
paper's number, a CI's ends move by ~0.01 from one seed to another, so an interval that only just misses 0 is
not a finding on its own). With one of the two, it alone decides. ``describe_comparison`` writes one such
sentence, and ``against_reference`` places a model against a reference run (the histogram) by the same rule.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..evaluate import paired_comparison

__all__ = ["describe_comparison", "judge_difference", "has_ci", "is_tie", "tally", "paired_evidence",
           "against_reference", "OTHER_VERDICTS"]


def describe_comparison(name_a: str, a: float, name_b: str, b: float, p_value: float | None = None,
                        paper: str | None = None, ci: tuple[float, float] | None = None) -> str:
    """One honest sentence: how two numbers compare, by how much (relative, as the paper reports it), with the
    95% CI of the difference a − b (``ci``) and the p-value where there are, and what the paper found for the
    same comparison. The verdict is ``judge_difference``'s: a CI that contains 0 with p ≥ 0.05 makes the two a tie
    whichever number is higher, and a CI and a p that disagree give no verdict; without either the sentence says
    the difference is untested."""
    if pd.isna(a) or pd.isna(b):
        return f"{name_a} vs {name_b}: not measurable on this run (a metric is undefined)."
    verdict = judge_difference(a - b, p_value, ci)
    verb = {"above": "beats", "below": "does NOT beat", "tie": "ties", "mixed": "vs", "disagree": "vs",
            "untested": "is above" if a > b else "is below" if a < b else "equals"}[verdict]
    text = f"{name_a} ({a:.3f}) {verb} {name_b} ({b:.3f})"
    if b > 0:
        text += f": {100.0 * (a - b) / b:+.1f}% relative"
    if has_ci(ci):
        note = {"tie": " (contains 0)",
                "disagree": f" ({'above' if ci[0] > 0 else 'below'} 0, against the point estimate: no verdict)"}
        if verdict == "mixed":
            note["mixed"] = (" (contains 0" if is_tie(ci) else " (excludes 0") + ", the permutation test " + (
                "rejects" if p_value < 0.05 else "does not") + ": the two tests disagree, no verdict)"
        text += (f"{',' if b > 0 else ':'} 95% CI of the difference {ci[0]:+.3f} to {ci[1]:+.3f}"
                 + note.get(verdict, ""))
    if p_value is not None and not pd.isna(p_value):
        text += f", paired permutation p = {p_value:.3g}"
    if verdict == "untested":
        text += " (no test of the difference)"
    text += "."
    if paper:
        text += f" Paper: {paper}."
    return text


def has_ci(ci: tuple[float, float] | None) -> bool:
    """Whether there is a 95% CI and it is defined (no NaN end)."""
    return ci is not None and not np.isnan(ci).any()


def is_tie(ci: tuple[float, float] | None) -> bool:
    """Whether a 95% CI of a difference contains 0 (False without a CI, or with an undefined one)."""
    return has_ci(ci) and ci[0] <= 0 <= ci[1]


def judge_difference(difference: float, p_value: float | None = None, ci: tuple[float, float] | None = None) -> str:
    """What the evidence says of a difference a − b: ``above`` or ``below`` (its 95% CI lies on that side of 0
    and p < 0.05), ``tie`` (the CI contains 0 and p ≥ 0.05), ``mixed`` (one of the two finds a difference, the
    other does not), ``disagree`` (the CI lies on the side of 0 opposite the point estimate), ``untested``
    (neither CI nor p) or ``undefined`` (a NaN difference). With only a CI, or only a p-value, it alone decides."""
    if pd.isna(difference):
        return "undefined"
    side = {1: "above", -1: "below", 0: "tie"}
    tested = p_value is not None and not pd.isna(p_value)
    if has_ci(ci):
        if not is_tie(ci) and np.sign(difference) != (1 if ci[0] > 0 else -1):
            return "disagree"
        by_ci = "tie" if is_tie(ci) else side[int(np.sign(difference))]
        if not tested or (by_ci == "tie") == (p_value >= 0.05):
            return by_ci
        return "mixed"
    if tested:
        return side[int(np.sign(difference))] if p_value < 0.05 else "tie"
    return "untested"


# the verdicts other than "above", as a count of them reads: "ties on 2", "is below at K = [8]"
OTHER_VERDICTS = {"tie": "ties", "below": "is below", "mixed": "no verdict (the CI and p disagree)",
                  "disagree": "no verdict (CI against the point estimate)", "untested": "untested",
                  "undefined": "not measurable"}


def tally(verdicts: list[str], preposition: str = "on") -> str:
    """The verdicts other than ``above``, counted: "ties on 2, is below on 1" ("" where all are ``above``)."""
    return ", ".join(f"{word} {preposition} {verdicts.count(v)}" for v, word in OTHER_VERDICTS.items()
                     if v in verdicts)


def paired_evidence(test: pd.DataFrame, task: str = "macro") -> tuple[float | None, tuple[float, float] | None]:
    """The AUROC p-value and 95% CI of the difference of ``task`` in a ``paired_comparison`` table (no CI in a
    ``paired_permutation_test`` table; neither where the table has no such row)."""
    row = test[(test["task"] == task) & (test["metric"] == "auroc")]
    if len(row) != 1:
        return None, None
    ci = (float(row["ci_low"].item()), float(row["ci_high"].item())) if "ci_low" in row else None
    return float(row["p_value"].item()), ci


def against_reference(predictions: pd.DataFrame, model: str, reference: str, profile) -> str:
    """Where ``model``'s macro-AUROC stands against ``reference``'s, on the tasks both have: ``above``, ``below``,
    ``not comparable with`` (an undefined metric), ``level with`` (a tie) or ``not settled against`` (the CI and
    p disagree), by ``judge_difference`` on the paired comparison (``paired_comparison``, the profile's
    resamples, seeded as the notebook's comparisons: the first training seed). A reference run with one seed
    (deterministic, as the histogram's) stands for every seed of ``model``."""
    pick = {m: predictions[predictions.protocol == m] for m in (model, reference)}
    common = set(pick[model]["task"]) & set(pick[reference]["task"])
    a, b = (pick[m][pick[m]["task"].isin(common)] for m in (model, reference))
    if b["seed"].nunique() == 1 and a["seed"].nunique() > 1:
        b = pd.concat([b.assign(seed=s) for s in sorted(a["seed"].unique())], ignore_index=True)
    comparison = paired_comparison(a, b, n_boot=profile.n_bootstrap, n_perm=profile.n_permutations,
                                   seed=int(predictions["seed"].min()))
    p_value, ci = paired_evidence(comparison)
    if not has_ci(ci):
        return "not comparable with"
    difference = comparison.loc[(comparison["task"] == "macro") & (comparison["metric"] == "auroc"), "difference"]
    verdict = judge_difference(float(difference.item()), p_value, ci)
    return {"above": "above", "below": "below", "tie": "level with", "mixed": "not settled against",
            "disagree": "not settled against"}[verdict]

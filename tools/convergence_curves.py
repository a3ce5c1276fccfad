"""Measure how downstream models converge, to choose the convergence rule's patience and cap on validation.

Trains the protocols of Fig. 1e (fine-tuned from the profile's pretrained encoder, and scratch) on each task
WITHOUT early stopping (patience = cap) and records the validation AUROC after every epoch. For each patience P
it then replays the rule on the recorded curves: the epoch the rule would stop at, and how much validation
AUROC it would give up against the best epoch of the whole run (its regret). Only the validation split is read.

    python tools/convergence_curves.py --profile demo --cap 80 --out docs/measurements/convergence_demo

writes ``<out>.csv`` (one row per run and epoch), ``<out>_rule.csv`` (one row per run and patience) and
``<out>.png`` (the curves). Runs resume (they are ordinary downstream runs under ``<runs>/convergence``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

from fmct_lib.cli import report_errors
from fmct_lib.downstream.training import ConvergenceRule

PATIENCES = (2, 3, 5, 8, 10, 15, 20)


def replay(val_auroc: list[float], patience: int) -> dict:
    """The library's convergence rule (``ConvergenceRule``, the one ``fit`` applies) on a recorded curve."""
    rule = ConvergenceRule(patience)
    for epoch, value in enumerate(val_auroc, start=1):
        rule.improved(epoch, value)
        if rule.should_stop(epoch):
            return {"stopped_epoch": epoch, "kept_epoch": rule.best_epoch, "kept_val_auroc": rule.best_val_auroc,
                    "reason": "rule"}
    return {"stopped_epoch": len(val_auroc), "kept_epoch": rule.best_epoch, "kept_val_auroc": rule.best_val_auroc,
            "reason": "cap"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="demo")
    parser.add_argument("--cap", type=int, default=80, help="epochs every run trains (no early stop)")
    parser.add_argument("--protocols", nargs="+", default=["finetune", "scratch"])
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)

    from fmct_lib import pipeline
    study = pipeline.start("synthetic", args.profile, site="internal")
    tasks, encoder = study.tasks(), study.encoder()  # the pretrained encoder of the notebooks
    profile = study.profile.replace(finetune_max_epochs=args.cap, finetune_patience=args.cap)
    study = pipeline.Study(study.dataset, profile, study.scans, study.runs / "convergence", study.seed, study.method,
                           study.site_filter)
    study.sweep(tasks, args.protocols, encoder, n_seeds=args.seeds)

    from fmct_lib.downstream.runs import checkpoint_signature
    encoders = {checkpoint_signature(encoder), None}  # this encoder's runs, and scratch's (no encoder)
    rows = []
    for path in sorted((study.runs / "downstream").rglob("config.json")):  # this call's runs only (a review: the
        config = json.loads(path.read_text())                            # curves of earlier calls were mixed in)
        s = config["signature"]
        if (s["protocol"] not in args.protocols or s["hparams"]["max_epochs"] != args.cap
                or s["profile"] != profile.name or s["encoder"] not in encoders or s["task"] not in tasks
                or s["seed"] not in range(study.seed, study.seed + args.seeds) or s["eval_split"] != "test"):
            continue
        for h in config["history"]:
            rows.append({"task": s["task"], "protocol": s["protocol"], "seed": s["seed"], "epoch": h["epoch"],
                         "step": h["step"], "loss": h["loss"], "val_auroc": h.get("val_auroc")})
    curves = pd.DataFrame(rows)
    rule = []
    for (task, protocol, seed), g in curves.groupby(["task", "protocol", "seed"]):
        values = g.sort_values("epoch")["val_auroc"].tolist()
        best = max(values)
        for p in PATIENCES:
            r = replay(values, p)
            rule.append({"task": task, "protocol": protocol, "seed": seed, "patience": p, **r,
                         "best_epoch": values.index(best) + 1, "best_val_auroc": best,
                         "regret": best - r["kept_val_auroc"]})
    rule = pd.DataFrame(rule)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    curves.to_csv(args.out.with_suffix(".csv"), index=False)
    rule.to_csv(args.out.with_name(f"{args.out.with_suffix('').name}_rule.csv"), index=False)
    summary = rule.groupby("patience").agg(median_stop=("stopped_epoch", "median"), max_stop=("stopped_epoch", "max"),
                                           mean_regret=("regret", "mean"), max_regret=("regret", "max"),
                                           at_cap=("reason", lambda r: int((r == "cap").sum())))
    print(summary.round(4).to_string())

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(args.protocols), figsize=(5 * len(args.protocols), 3.4), sharey=True)
    for ax, protocol in zip([axes] if len(args.protocols) == 1 else axes, args.protocols):
        for (task, seed), g in curves[curves.protocol == protocol].groupby(["task", "seed"]):
            ax.plot(g["step"], g["val_auroc"], lw=1, label=f"{task} (seed {seed})")
        ax.set_title(f"{protocol}: validation AUROC per epoch", fontsize=9)
        ax.set_xlabel("step")
        ax.axhline(0.5, color="grey", lw=0.6, ls="--")
        ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    fig.savefig(args.out.with_suffix(".png"), dpi=120)
    return 0


if __name__ == "__main__":
    sys.exit(report_errors("tools/convergence_curves.py", main))

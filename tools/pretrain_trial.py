"""One pretraining recipe trial on a profile's cohort, scored by the validation kNN monitor (issue 24).

    python tools/pretrain_trial.py NAME --method vicreg --epochs 3 --base-lr 8e-3 [--warmup-epochs 1]
        [--option KEY=VALUE ...] [--profile demo]

Runs (or resumes) ``<runs>/trials/NAME`` with the profile's values replaced by the flags, then appends the
run's validation kNN AUROC per epoch (step 0 = the randomly initialised encoder) to
``docs/measurements/ssl_trials.csv`` (its ``recipe`` column: every setting of the run and the profile's name).
Recipes are chosen on these validation scores; the test split is not read here.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd

from fmct_lib.cli import report_errors
from fmct_lib.cli.pretrain import parse_options
from fmct_lib.config import get_profile
from fmct_lib.paths import runs_root
from fmct_lib.train import pretrain

OUT = Path(__file__).resolve().parents[1] / "docs" / "measurements" / "ssl_trials.csv"


# the run's settings that are bookkeeping, not recipe (the recipe column keeps every other, MAE's options included)
BOOKKEEPING = ("method", "seed", "checkpoint_every", "world_size", "accum_steps", "n_scans", "steps_per_epoch",
               "batch_size", "base_lr")


def recipe(run: dict, profile: str, fields) -> str:
    """The trial's recipe as JSON: the run's settings (``config.json``'s ``run``) less its bookkeeping, the profile
    and the profile fields ``--set`` replaced."""
    return json.dumps({k: v for k, v in run.items() if k not in BOOKKEEPING} | {"profile": profile} | dict(fields),
                      sort_keys=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("--method", required=True)
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--base-lr", type=float, default=None, help="per 256 scans (default: the profile's)")
    ap.add_argument("--warmup-epochs", type=int, default=None)
    ap.add_argument("--option", dest="options", action="append", default=[], type=lambda s: tuple(s.split("=", 1)))
    ap.add_argument("--set", dest="fields", action="append", default=[], type=lambda s: tuple(s.split("=", 1)),
                    metavar="FIELD=JSON", help="a profile field, e.g. local_input_size=16 or global_crop=[48,75]")
    args = ap.parse_args()
    profile = get_profile(args.profile)
    changes = {"pretrain_epochs_by_method": {**profile.pretrain_epochs_by_method, args.method: args.epochs}}
    if args.base_lr is not None:
        changes["pretrain_base_lr"] = {**profile.pretrain_base_lr, args.method: args.base_lr}
    if args.warmup_epochs is not None:
        changes["pretrain_warmup_epochs"] = args.warmup_epochs
    changes.update({k: json.loads(v) for k, v in args.fields})
    changes = {k: tuple(v) if isinstance(v, list) else v for k, v in changes.items()}
    profile = profile.replace(**changes)
    options = parse_options(args.method, args.options)
    run_dir = runs_root() / "trials" / args.name
    start = time.time()
    pretrain(args.method, "synthetic", profile, run_dir=run_dir, options=options)
    metrics = pd.read_csv(run_dir / "metrics.csv")
    scored = metrics.dropna(subset=["knn_auroc"])
    run = json.loads((run_dir / "config.json").read_text())["run"]
    rows = pd.DataFrame({"trial": args.name, "method": args.method, "epoch_end_step": scored["step"],
                         "epoch": scored["step"] // run["steps_per_epoch"], "knn_auroc_val": scored["knn_auroc"],
                         "loss": scored["loss"], "recipe": recipe(run, profile.name, args.fields),
                         "minutes_this_call": round((time.time() - start) / 60, 1)})
    OUT.parent.mkdir(parents=True, exist_ok=True)
    rows.to_csv(OUT, mode="a", header=not OUT.exists(), index=False)
    print(rows[["trial", "epoch", "knn_auroc_val", "loss"]].to_string(index=False))


if __name__ == "__main__":
    sys.exit(report_errors("tools/pretrain_trial.py", main))

"""Frozen linear probe of pretrained encoders against the same probe on the random encoder (issue 24 target).

    python tools/probe_encoders.py NAME=ENCODER.safetensors [...] [--profile demo] [--tasks ich sah ...]

The random encoder is the ViT initialised as pretraining initialises it (``torch.manual_seed(seed)``, then
``vit_from_config``: the encoder of every run's step 0). Each encoder gets the library's ``linear`` protocol
(logistic regression on the frozen cls token, its regularisation chosen on the validation split; scored on
the test split once) on the profile's tasks, with the ``histogram`` reference beside them. Writes
``docs/measurements/probe_<profile>.csv`` (summary with 95% bootstrap CIs) and
``..._comparison.csv`` (each encoder against the random one and against the histogram reference:
difference, 95% bootstrap CI, paired permutation p).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from fmct_lib import pipeline
from fmct_lib.cli import report_errors
from fmct_lib.evaluate import bootstrap_ci, paired_comparison
from fmct_lib.models.checkpoints import save_checkpoint
from fmct_lib.models.vit3d import vit_from_config

OUT = Path(__file__).resolve().parents[1] / "docs" / "measurements"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("encoders", nargs="+", help="NAME=PATH of an encoder checkpoint")
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--tasks", nargs="*", default=None)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    S = pipeline.start("synthetic", args.profile, seed=args.seed, site="internal")  # the notebooks' site
    P = S.profile
    random_path = S.runs / "probe" / f"random_init_{P.name}_s{args.seed}.safetensors"
    if not random_path.exists():
        torch.manual_seed(args.seed)
        save_checkpoint(random_path, vit_from_config(P.model), config={"model": P.model.to_dict(), "method": "none",
                                                                        "profile": P.name, "seed": args.seed})
    encoders = {"random init": random_path} | dict(e.split("=", 1) for e in args.encoders)
    tasks = S.tasks(args.tasks)
    preds = {name: S.sweep(tasks, ["linear"], Path(path), progress=False) for name, path in encoders.items()}
    preds["histogram"] = S.sweep(tasks, ["histogram"], random_path, progress=False)
    summary = pd.concat([bootstrap_ci(p, n_boot=P.n_bootstrap, seed=args.seed).assign(encoder=name)
                         for name, p in preds.items()], ignore_index=True)
    comparison = pd.concat([paired_comparison(p, preds[base], n_boot=P.n_bootstrap, n_perm=P.n_permutations,
                                              seed=args.seed).assign(model_a=name, model_b=base)
                            for base in ("random init", "histogram") for name, p in preds.items()
                            if name not in ("random init", "histogram")
                            or (base == "random init" and name == "histogram")], ignore_index=True)
    OUT.mkdir(parents=True, exist_ok=True)
    summary.to_csv(OUT / f"probe_{P.name}.csv", index=False)
    comparison.to_csv(OUT / f"probe_{P.name}_comparison.csv", index=False)
    macro = comparison[(comparison.task == "macro") & (comparison.metric == "auroc")]
    print(macro[["model_a", "model_b", "a", "b", "difference", "ci_low", "ci_high", "p_value"]].round(4)
          .to_string(index=False))


if __name__ == "__main__":
    sys.exit(report_errors("tools/probe_encoders.py", main))

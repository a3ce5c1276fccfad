"""``fmct cache --dataset NAME --profile P --preset paper|reference``: build the preprocessed cache."""
from __future__ import annotations

import argparse

import pandas as pd


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", required=True, help="dataset name (its scan table under $FMCT_DATA)")
    parser.add_argument("--profile", default="paper", help="toy | demo | paper: sets spacing and sizes")
    parser.add_argument("--preset", default="paper", choices=["paper", "reference"],
                        help="paper chain (default) or the authors' training chain (reference weights)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: CPU count)")
    parser.add_argument("--scans", nargs="+", default=None, help="only these scan ids")
    parser.add_argument("--retry-rejected", action="store_true", help="try previously rejected scans again")


def run(args: argparse.Namespace) -> int:
    from .cache import build_cache, read_index
    from ..preprocess import paper_spec, reference_spec

    spec = (paper_spec if args.preset == "paper" else reference_spec)(args.profile)
    out = build_cache(args.dataset, spec, scans=args.scans, workers=args.workers,
                      retry_rejected=args.retry_rejected)
    n_cached = len(read_index(args.dataset, spec))
    rejects = out / "rejects.csv"
    n_rejected = len(pd.read_csv(rejects)) if rejects.exists() else 0
    print(f"{out}: {n_cached} scans cached, {n_rejected} rejected"
          + (f" (reasons in {rejects})" if n_rejected else ""))
    return 0

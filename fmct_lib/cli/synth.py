"""``fmct synth``: generate the synthetic head-CT cohort (and optionally its condition figure)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .options import add_profile, count, positive_int


def _prevalence(text: str) -> dict:
    """``tumor=0.2,iph=0.1`` or a JSON object."""
    text = text.strip()
    if text.startswith("{"):
        return {k: float(v) for k, v in json.loads(text).items()}
    try:
        return {k.strip(): float(v) for k, v in (item.split("=") for item in text.split(",") if item)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--prevalence: expected NAME=RATE[,NAME=RATE...], got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_profile(parser)
    parser.add_argument("--root", type=Path, default=None, help="data root (default $FMCT_DATA, else as `fmct info` shows)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: all CPU cores)")
    parser.add_argument("--n-internal", type=count, default=None, help="internal-site scans (default: profile)")
    parser.add_argument("--n-external", type=count, default=None, help="external-site scans (default: profile)")
    parser.add_argument("--n-pretrain", type=count, default=None, help="unlabeled pretraining scans (default: profile)")
    parser.add_argument("--prevalence", type=_prevalence, default=None,
                        help="override base rates, e.g. tumor=0.2,iph=0.15 (external keeps its shift)")
    parser.add_argument("--figure", type=Path, default=None, metavar="PATH",
                        help="also write the one-slice-per-condition figure to PATH.png/.pdf")


def run(args: argparse.Namespace) -> int:
    from ..config import get_profile
    from ..data.synthetic import generate_cohort

    start = time.time()
    try:
        df = generate_cohort(args.profile, root=args.root, seed=args.seed, workers=args.workers,
                             prevalence=args.prevalence, n_internal=args.n_internal,
                             n_external=args.n_external, n_pretrain=args.n_pretrain)
    except ValueError as err:
        print(f"fmct synth: {err}", file=sys.stderr)
        return 2
    print(f"{len(df)} scans ({df.groupby('site').size().to_dict()}) in {time.time() - start:.0f} s")
    if args.figure is not None:
        from ..data.synthetic.figure import condition_figure
        print("figure:", condition_figure(args.figure, step=get_profile(args.profile).synth_grid_mm,
                                          seed=args.seed))
    return 0

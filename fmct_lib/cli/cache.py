"""``fmct cache --dataset NAME --profile P --preset paper|reference``: build the preprocessed cache."""
from __future__ import annotations

import argparse

from .options import add_dataset, add_preset, add_profile, positive_int


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    add_profile(parser)
    add_preset(parser)
    parser.add_argument("--workers", type=positive_int, default=None, help="processes (default: CPU count)")
    parser.add_argument("--scans", nargs="+", default=None, help="only these scan ids")
    parser.add_argument("--retry-rejected", action="store_true",
                        help="try previously rejected scans again (one whose volume was replaced since is tried anyway)")


def run(args: argparse.Namespace) -> int:
    from ..data.cache import read_index, read_rejects
    from ..data.preprocess import preset_spec
    from ..pipeline import ensure_cache

    out = ensure_cache(args.dataset, args.profile, args.preset, scans=args.scans, workers=args.workers,
                       retry_rejected=args.retry_rejected)
    spec = preset_spec(args.preset, args.profile)
    n_cached, n_rejected = len(read_index(args.dataset, spec)), len(read_rejects(args.dataset, spec))
    print(f"{out}: {n_cached} scans cached, {n_rejected} rejected"
          + (f" (reasons in {out / 'rejects.csv'})" if n_rejected else ""))
    return 0

"""``fmct embed``: frozen-encoder cls embeddings of a dataset as a table (``embeddings.embed``).

    fmct embed --dataset synthetic --encoder runs/pretrain/X/encoder.safetensors --out emb.npz

The table holds scan_id, patient_id, split, the protocol columns (manufacturer, slice thickness, kVp,
site), the label columns and the vector ``e0 … e{D-1}``; ``.csv`` or ``.npz`` by the file's suffix. A refused
encoder file, one whose input size is not the profile's, or another suffix prints one line on stderr (the file
and the problem, no traceback) and exits 2, before anything is computed.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import EXIT_BAD_INPUT
from .options import (add_dataset, add_device, add_preset, add_profile, check_filter, check_split, input_size_problem,
                      parse_filter, positive_int, warn_of_chain)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset(parser)
    parser.add_argument("--encoder", required=True, help="encoder checkpoint (ours or the authors')")
    parser.add_argument("--out", required=True, help="output file, .csv or .npz")
    add_profile(parser)
    add_preset(parser)
    parser.add_argument("--split", default=None, help="only this split (default: all scans)")
    parser.add_argument("--filter", action="append", metavar="COLUMN=VALUE", help="select rows, e.g. site=external")
    parser.add_argument("--batch-size", type=positive_int, default=None)
    add_device(parser)


def run(args: argparse.Namespace) -> int:
    from ..data.manifest import load_scans
    from ..data.preprocess import preset_spec
    from ..downstream.embeddings import embed
    from ..models.checkpoints import CheckpointError, load_encoder
    from ..pipeline import ensure_cache
    from ..precision import check_device
    spec = preset_spec(args.preset, args.profile)
    if args.device:
        check_device(args.device)  # a typo failed in torch after the encoder and the cache, with a traceback
    scans = load_scans(args.dataset)
    if args.split is not None:
        check_split("--split", args.split, scans, args.dataset)
    check_filter("--filter", parse_filter(args.filter), scans, args.dataset)  # before the cache is built
    try:  # before the cache: a refused file is one line (the file and the problem), not a traceback
        encoder = load_encoder(args.encoder)
        problem = input_size_problem(args.encoder, encoder, spec)
        if problem is None:
            warn_of_chain(args.encoder, spec)
    except (CheckpointError, FileNotFoundError) as e:
        problem = str(e)
    if Path(args.out).suffix not in (".csv", ".npz"):
        problem = f"--out {args.out}: the table is written as .csv or .npz, by the file's suffix"
    if problem:
        print(f"fmct embed: error: {' '.join(problem.split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    ensure_cache(args.dataset, args.profile, args.preset)
    table = embed(args.dataset, encoder, args.profile, split=args.split, filter=parse_filter(args.filter),
                  spec=spec, batch_size=args.batch_size, out=args.out, device=args.device)
    dims = sum(c.startswith("e") and c[1:].isdigit() for c in table.columns)
    print(f"{len(table)} embeddings of dimension {dims} -> {args.out}")
    return 0

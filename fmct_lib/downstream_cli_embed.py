"""``fmct embed``: frozen-encoder cls embeddings of a dataset as a table (``embeddings.embed``).

    fmct embed --dataset synthetic --encoder runs/pretrain/X/encoder.safetensors --out emb.npz

The table holds scan_id, patient_id, split, the protocol columns (manufacturer, slice thickness, kVp,
site), the label columns and the vector ``e0 … e{D-1}``; ``.csv`` or ``.npz`` by the file's suffix.
"""
from __future__ import annotations

import argparse

from .downstream_cli import parse_filter


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="synthetic")
    parser.add_argument("--encoder", required=True, help="encoder checkpoint (ours or the authors')")
    parser.add_argument("--out", required=True, help="output file, .csv or .npz")
    parser.add_argument("--profile", default="demo", help="toy | demo | paper (preprocessing geometry)")
    parser.add_argument("--split", default=None, help="only this split (default: all scans)")
    parser.add_argument("--filter", action="append", metavar="COLUMN=VALUE", help="select rows, e.g. site=external")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--device", default=None)


def run(args: argparse.Namespace) -> int:
    from .embeddings import embed
    table = embed(args.dataset, args.encoder, args.profile, split=args.split, filter=parse_filter(args.filter),
                  batch_size=args.batch_size, out=args.out, device=args.device)
    dims = sum(c.startswith("e") and c[1:].isdigit() for c in table.columns)
    print(f"{len(table)} embeddings of dimension {dims} -> {args.out}")
    return 0

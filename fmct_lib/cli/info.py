"""``fmct info``: profiles and datasets at a glance."""
from __future__ import annotations

import argparse

from ..config import PROFILES
from ..data.manifest import is_available, read_manifest
from ..paths import cache_root, data_root, manifest_path, runs_root


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    print(f"data root   {data_root()}\ncache root  {cache_root()}\nruns root   {runs_root()}\n"
          f"manifest    {manifest_path()}\n")
    print("profiles:")
    for p in PROFILES.values():
        m = p.model
        print(f"  {p.name:6s} {p.spacing_mm:g} mm, canvas {p.canvas}, eval crop {p.eval_crop}, "
              f"input {m.img_size}³ / patch {m.patch_size}, ViT {m.embed_dim}×{m.depth} ({m.num_heads} heads)")
    print("\ndatasets:")
    for _, row in read_manifest().iterrows():
        state = "available" if is_available(row["name"]) else f"not available ({row['ingest_command']})"
        print(f"  {row['name']:16s} {state}")
    return 0

"""``fmct info``: profiles and datasets at a glance."""
from __future__ import annotations

import argparse

from ..config import PROFILES
from ..data.manifest import is_available, read_manifest, registry_files
from ..paths import roots


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    for name, (path, how) in roots().items():
        print(f"{name + ' root':14s}{path}  ({how})")
    print(f"{'registry':14s}{' + '.join(str(f) for f in registry_files())}\n")
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

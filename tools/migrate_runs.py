"""Rename downstream runs made before a run named its encoder by its weights (2026-12-06).

    python tools/migrate_runs.py [--runs runs/] [--dry-run]

Runs used to record our checkpoint by its path (``/…/encoders/synthetic_vicreg_f1_demo_s0/encoder.safetensors``),
so a moved checkout or a released copy of a pretraining run did not find them, and new weights at the same path
were taken for the old. They now record ``<run folder>@<sha256[:16]>`` and live under ``<run folder>-<sha[:8]>/``
(``downstream.runs.checkpoint_signature``). Without this script the old runs are simply not found and are trained
again; with it, every old run, kept classifier and fine-tuned encoder whose checkpoint still lies at the recorded
path is renamed and re-labelled with that file's weights. One whose checkpoint is gone is left as it is and listed:
nothing says which weights it was trained from.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from safetensors.torch import load_file

from fmct_lib.cli import report_errors
from fmct_lib.downstream.runs import (checkpoint_signature, default_run_name, trained_model_path,
                                      training_signature)
from fmct_lib.io import atomic_write_text
from fmct_lib.models.checkpoints import read_checkpoint_config, save_checkpoint
from fmct_lib.paths import runs_root


def _is_old(encoder) -> bool:
    return isinstance(encoder, str) and encoder.startswith("/")


def _new_signature(signature: dict, missing: set) -> dict | None:
    """``signature`` with its checkpoint path replaced by the file's weights; None when the file is gone."""
    path = Path(signature["encoder"])
    if not path.exists():
        missing.add(str(path))
        return None
    return {**signature, "encoder": checkpoint_signature(path)}


def _relabel(path: Path, dest: Path, update) -> None:
    """Write our checkpoint ``path`` to ``dest`` with its configuration passed through ``update``."""
    tensors = load_file(str(path))
    dest.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(dest, tensors, update(read_checkpoint_config(path)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=Path, default=None, help="the runs root (default: $FMCT_RUNS or runs/)")
    ap.add_argument("--dry-run", action="store_true", help="list what would move, move nothing")
    args = ap.parse_args(argv)
    runs = args.runs or runs_root()
    if not runs.is_dir():  # a mistyped --runs moved nothing and said so as a success
        ap.error(f"{runs}: no such runs folder")
    downstream, missing, moved = runs / "downstream", set(), {"runs": 0, "classifiers": 0, "fine-tuned": 0}

    for config_path in sorted(downstream.glob("*/*/**/config.json")):
        if "trained" in config_path.relative_to(downstream).parts[:1]:
            continue
        config = json.loads(config_path.read_text())
        if not _is_old(config["signature"].get("encoder")):
            continue
        signature = _new_signature(config["signature"], missing)
        if signature is None:
            continue
        target = downstream / default_run_name(signature)
        if target.exists():
            print(f"left: {config_path.parent} (its new place {target} is taken)")
            continue
        moved["runs"] += 1
        if not args.dry_run:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(config_path.parent), str(target))
            atomic_write_text(target / "config.json", json.dumps({**config, "signature": signature}, indent=2,
                                                                 default=str))

    for model in sorted((downstream / "trained").rglob("model.safetensors")):
        kept = read_checkpoint_config(model)
        if not _is_old(kept["signature"].get("encoder")):
            continue
        signature = _new_signature(kept["signature"], missing)
        if signature is None:
            continue
        target = trained_model_path(signature, downstream)
        if target.exists():
            print(f"left: {model} (its new place {target} is taken)")
            continue
        moved["classifiers"] += 1
        if not args.dry_run:
            _relabel(model, target, lambda c: {**c, "signature": training_signature(signature)})
            model.unlink()

    for encoder in sorted((runs / "finetuned").rglob("encoder.safetensors")):
        config = read_checkpoint_config(encoder)
        pretrained = config.get("pretrained")
        if not _is_old(pretrained):
            continue
        if not Path(pretrained).exists():
            missing.add(pretrained)
            continue
        moved["fine-tuned"] += 1
        if not args.dry_run:
            _relabel(encoder, encoder, lambda c: {**c, "pretrained": checkpoint_signature(pretrained)})

    if not args.dry_run:  # the folders the moves emptied
        for folder in sorted((p for p in downstream.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
            if not any(folder.iterdir()):
                folder.rmdir()
    print(("would move" if args.dry_run else "moved") + ": " + ", ".join(f"{n} {what}" for what, n in moved.items()))
    if missing:
        print("left as they are, their checkpoint gone (they will be trained again):\n  " + "\n  ".join(sorted(missing)))
    return 0


if __name__ == "__main__":
    sys.exit(report_errors("tools/migrate_runs.py", main))

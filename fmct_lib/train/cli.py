"""``fmct pretrain``: DINO or MAE pretraining from the command line (a thin face over ``pretrain``).

One process:   fmct pretrain --method dino --dataset synthetic --fraction 0.3 --profile demo
Many GPUs:     torchrun --nproc_per_node 4 -m fmct_lib.cli pretrain --method dino --profile paper
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--method", choices=["dino", "mae"], default="dino")
    parser.add_argument("--dataset", default="synthetic", help="a dataset in the manifest (default: synthetic)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of training patients (0, 1]")
    parser.add_argument("--profile", default="demo", help="toy | demo | paper")
    parser.add_argument("--run-dir", default=None, help="default: $FMCT_RUNS/pretrain/<dataset>_<method>_f…")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="total optimiser steps (default: profile epochs)")
    parser.add_argument("--batch-size", type=int, default=None, help="per process (default: the profile's)")
    parser.add_argument("--accum-steps", type=int, default=1, help="gradient accumulation steps")
    parser.add_argument("--checkpoint-every", type=int, default=None, help="steps between resume checkpoints")
    parser.add_argument("--workers", type=int, default=2, help="data-loading workers per process")
    parser.add_argument("--device", default=None, help="default: this process's GPU if any, else cpu")
    parser.add_argument("--norm-pix-loss", action="store_true", help="MAE: per-patch normalised target")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_true", default=True,
                       help="continue an interrupted run in the run directory (default)")
    group.add_argument("--restart", dest="resume", action="store_false", help="start the run over")
    parser.add_argument("--no-progress", dest="progress", action="store_false")


def run(args: argparse.Namespace) -> int:
    from . import pretrain
    run_dir = pretrain(method=args.method, dataset=args.dataset, profile=args.profile, fraction=args.fraction,
                       run_dir=args.run_dir, seed=args.seed, resume=args.resume, max_steps=args.steps,
                       device=args.device, progress=args.progress, batch_size=args.batch_size,
                       accum_steps=args.accum_steps, checkpoint_every=args.checkpoint_every,
                       num_workers=args.workers, norm_pix_loss=args.norm_pix_loss)
    print(f"pretraining run: {run_dir}")
    return 0

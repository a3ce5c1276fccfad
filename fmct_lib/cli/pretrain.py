"""``fmct pretrain``: self-supervised pretraining from the command line (a thin face over ``pretrain``).

One process:   fmct pretrain --method dino --dataset synthetic --fraction 0.3 --profile demo
Many GPUs:     fmct cache --dataset rsna --profile paper     # first: torchrun processes only read the cache
               torchrun --nproc_per_node 4 -m fmct_lib.cli pretrain --method dino --dataset rsna --profile paper
Options:       fmct pretrain --method mae --option norm_pix_loss=true --run-dir runs/pretrain/mae_normpix
               fmct pretrain --method dino --option n_local_crops=2 --option teacher_temp=0.04   # authors' code

``--method`` is any method of ``train.methods.METHODS``; ``--option KEY=VALUE`` sets one of its options
(the fields of its options dataclass), the value read as the type of the option's default.
"""
from __future__ import annotations

import argparse
import os
from dataclasses import fields

from .options import add_profile, count, positive_int

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--option expects KEY=VALUE, got {text!r}")
    return key.strip().replace("-", "_"), value.strip()


def _typed(key: str, value: str, default):
    """``value`` read as the type of the option's default (bool: true/false, yes/no, on/off, 1/0)."""
    if isinstance(default, bool):
        if value.lower() not in _TRUE | _FALSE:
            raise ValueError(f"option {key}: expected true or false, got {value!r}")
        return value.lower() in _TRUE
    try:
        return type(default)(value) if isinstance(default, (int, float)) else value
    except ValueError:
        raise ValueError(f"option {key}: expected a{'n int' if isinstance(default, int) else ' number'}, "
                         f"got {value!r}") from None


def parse_options(method: str, pairs: list[tuple[str, str]]) -> dict:
    """``[("n_local_crops", "2")]`` → ``{"n_local_crops": 2}`` for ``method``; an unknown key is left for the
    method to refuse (``train.methods.method_options``), with the list of the options it has."""
    from ..train.methods import get_method
    defaults = {f.name: f.default for f in fields(get_method(method).Options)}
    return {k: _typed(k, v, defaults[k]) if k in defaults else v for k, v in pairs}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..train.methods import METHODS
    known = "; ".join(f"{name}: " + (", ".join(f"{f.name}={f.default}" for f in fields(m.Options)) or "none")
                      for name, m in METHODS.items())
    parser.add_argument("--method", choices=list(METHODS), default="dino", help="pretraining method (default: dino)")
    parser.add_argument("--dataset", default="synthetic", help="a dataset in the manifest (default: synthetic)")
    parser.add_argument("--fraction", type=float, default=1.0, help="fraction of training patients (0, 1]")
    add_profile(parser)
    parser.add_argument("--run-dir", default=None, help="default: $FMCT_RUNS/pretrain/<dataset>_<method>_f…")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=positive_int, default=None, help="total optimiser steps (default: profile epochs)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="per process (default: the profile's)")
    parser.add_argument("--accum-steps", type=positive_int, default=1, help="gradient accumulation steps")
    parser.add_argument("--checkpoint-every", type=positive_int, default=None, help="steps between resume checkpoints")
    parser.add_argument("--workers", type=count, default=2, help="data-loading workers per process")
    parser.add_argument("--device", default=None, help="default: this process's GPU if any, else cpu")
    parser.add_argument("--option", dest="options", action="append", type=_key_value, default=[],
                        metavar="KEY=VALUE", help=f"a method option (repeatable). Options and defaults: {known}")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--resume", dest="resume", action="store_true", default=True,
                       help="continue an interrupted run in the run directory (default)")
    group.add_argument("--restart", dest="resume", action="store_false", help="start the run over")
    parser.add_argument("--no-progress", dest="progress", action="store_false")
    parser.add_argument("--no-monitor", dest="monitor", action="store_false",
                        help="skip the validation kNN score logged at step 0 and every epoch (train/monitor.py; under "
                             "torchrun rank 0 computes it while the others wait)")


def run(args: argparse.Namespace) -> int:
    from ..train import pretrain
    from ..train.distributed import teardown
    from ..train.methods import method_options
    options = parse_options(args.method, args.options)
    method_options(args.method, options)  # a bad option fails before any work
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        from ..pipeline import ensure_cache  # one process builds what is missing; torchrun's only read it
        from ..precision import check_device
        if args.device:
            check_device(args.device)  # before the cache, which a device typo used to wait for
        ensure_cache(args.dataset, args.profile)
    run_dir = pretrain(method=args.method, dataset=args.dataset, profile=args.profile, fraction=args.fraction,
                       run_dir=args.run_dir, seed=args.seed, resume=args.resume, max_steps=args.steps,
                       device=args.device, progress=args.progress, batch_size=args.batch_size,
                       accum_steps=args.accum_steps, checkpoint_every=args.checkpoint_every,
                       num_workers=args.workers, options=options, monitor=args.monitor)
    print(f"pretraining run: {run_dir}")
    teardown()
    return 0

"""Downstream runs in worker processes against one process using every core, side by side (issue 23, item 6).

A sweep's fine-tuning and scratch runs are independent, so on a CPU they can train in parallel processes, each
with its share of the cores, instead of one after the other with all the cores each. This times the same demo
fine-tuning runs (the released or pretrained demo encoder, the synthetic cohort's cache, every run capped at
``--epochs`` epochs so that each does the same work) both ways, interleaved and repeated, and prints the ratio;
then checks that the two ways give the same predictions.

    .venv/bin/python bench/parallel_runs.py [--runs 4] [--epochs 2] [--repeats 2] [--task ich]

Needs the demo synthetic cohort and its cache (``make reproduce`` or any demo notebook builds them).
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from fmct_lib import pipeline
from fmct_lib.config import get_profile
from fmct_lib.downstream import run_sweep
from fmct_lib.models.efficiency import cpu_name


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4, help="fine-tuning runs (seeds) per sweep")
    ap.add_argument("--epochs", type=int, default=2, help="epochs every run trains (cap = patience)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--task", default="ich")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)

    demo = get_profile("demo")
    profile = demo.replace(finetune_max_epochs=args.epochs, finetune_patience=args.epochs)
    study = pipeline.start("synthetic", demo)
    encoder = study.encoder()
    threads = torch.get_num_threads()
    print(f"{cpu_name()}, {os.cpu_count()} cores, torch {torch.__version__} with {threads} threads; load average "
          f"{os.getloadavg()[0]:.2f}")
    print(f"{args.runs} demo fine-tuning runs of {args.epochs} epochs ({args.epochs * demo.finetune_epoch_steps} "
          f"steps + {args.epochs} validation passes each) on {args.task!r}")
    times: dict[int, list[float]] = {1: [], args.workers: []}
    tables = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for workers in (1, args.workers):
                t0 = time.perf_counter()
                tables[workers] = run_sweep("synthetic", [args.task], ["finetune"], encoder, profile,
                                            n_seeds=args.runs, train_filter=study.site_filter, workers=workers,
                                            run_root=Path(tmp) / f"r{r}w{workers}", progress=False)
                times[workers].append(time.perf_counter() - t0)
                print(f"  repeat {r + 1}: {workers} process{'es' if workers > 1 else ''} × "
                      f"{max(1, threads // workers)} thread{'s' if threads // workers > 1 else ''}: "
                      f"{times[workers][-1]:.1f} s")
    one, many = float(np.median(times[1])), float(np.median(times[args.workers]))
    print(f"median: one process {one:.1f} s, {args.workers} processes {many:.1f} s: "
          f"**{one / many:.2f}× faster** in worker processes")
    a, b = tables[1]["probability"].to_numpy(), tables[args.workers]["probability"].to_numpy()
    print(f"largest difference between the two ways' predicted probabilities: {np.abs(a - b).max():.2e} "
          f"(threads sum in another order)")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

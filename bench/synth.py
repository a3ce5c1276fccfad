"""Synthetic phantom speed: a toy-grid (3 mm) and a full 1 mm phantom, render + acquire, median of repeats.

Targets (issue 4): toy phantom well under 1 s, 1 mm phantom under 10 s on a 2-core machine. Atlas
construction is a one-off (cached on disk) and is timed separately. BLAS is single-threaded, as in the
cohort's worker processes. The machine's load average is printed: on a shared machine, divide by the load.

    python bench/synth.py [--repeats 3]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
from threadpoolctl import threadpool_limits

from fmct_lib.data.synthetic.atlas import build_atlas, load_atlas
from fmct_lib.data.synthetic.phantom import render, sample_subject
from fmct_lib.data.synthetic.scanner import acquire

TARGETS_S = {3.0: 1.0, 1.0: 10.0}


def time_phantom(step: float, repeats: int) -> tuple[float, float, tuple]:
    atlas = load_atlas(step)
    render_s, acquire_s = [], []
    for k in range(repeats + 1):                      # the first run warms up and is not counted
        p = sample_subject(100 + k, ("iph", "ivh", "sdh", "tumor"))
        t0 = time.perf_counter()
        ph = render(p, atlas)
        t1 = time.perf_counter()
        vol, _, _ = acquire(ph.hu, ph.labels, ph.affine, "B", 2.5, 120, np.random.default_rng(k))
        t2 = time.perf_counter()
        if k:
            render_s.append(t1 - t0)
            acquire_s.append(t2 - t1)
    return statistics.median(render_s), statistics.median(acquire_s), vol.shape


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    t = time.perf_counter()
    build_atlas(3.0)
    print(f"atlas build (one-off, cached): 3 mm {time.perf_counter() - t:.1f} s")
    print(f"{'grid':>6} {'render s':>9} {'acquire s':>10} {'total s':>8} {'target s':>9} {'total/target':>13}  shape")
    for step in (3.0, 1.0):
        with threadpool_limits(1):
            r, a, shape = time_phantom(step, args.repeats)
        print(f"{step:>4g}mm {r:9.2f} {a:10.2f} {r + a:8.2f} {TARGETS_S[step]:9.1f} "
              f"{(r + a) / TARGETS_S[step]:13.2f}  {shape}")
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()

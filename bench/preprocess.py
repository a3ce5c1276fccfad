"""Benchmark: the paper preprocessing chain, ours against a straightforward MONAI ``Compose``.

Two synthetic head-like scans (ellipsoid skull, brain with grey/white contrast, ventricles, a bleed,
air around; LPS voxel order as a DICOM series has): a thick one (512×512×40 at 0.45×0.45×5 mm) and a
thin one (512×512×300 at 0.45×0.45×0.625 mm). For each, prints the median seconds per volume of
``fmct_lib.data.preprocess`` (to_canvas + model_input) and of MONAI's

    Orientation(RAS) → Spacing(1 mm, mode=3: SciPy's order-3 spline, the paper's cubic) →
    CropForeground(HU > -800) → ResizeWithPadOrCrop(224, air) → windows (ScaleIntensityRange ×3) →
    CenterSpatialCrop(192) → Resize(96)

(the CropForeground + ResizeWithPadOrCrop pair is how MONAI centres the canvas on the head, our
canvas rule), volumes per second, the speed ratio and the largest difference between the two
outputs in window units. Then builds a cache of ``--cache-scans`` small scans with the same spec and
prints its size per scan and how fast ``CachedVolumes`` reads it back (files just written, so from the
page cache: the throughput when the cache fits in RAM; from disk, divide the size by the disk's speed).
Run: ``python bench/preprocess.py [--profile paper] [--repeats 5] [--cache-scans 16]``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import torch

from fmct_lib.data.preprocess import AIR_HU, model_input, paper_spec, to_canvas


def synthetic_head(shape, spacing, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A head-like volume in HU and its affine (LPS voxel order, the head centred in the field)."""
    rng = np.random.default_rng(seed)
    axes = [(np.arange(n, dtype=np.float32) - (n - 1) / 2) * s for n, s in zip(shape, spacing)]
    x, y, z = axes[0][:, None, None], axes[1][None, :, None], axes[2][None, None, :]
    r = np.sqrt((x / 72) ** 2 + (y / 92) ** 2 + ((z + 10) / 88) ** 2)  # outer skull surface at r = 1
    hu = np.full(shape, AIR_HU, dtype=np.float32)
    hu[r < 1.06] = 30.0                                          # scalp
    hu[r < 1.0] = 1200.0                                         # skull
    brain = r < 0.92
    texture = 6 * np.sin(x / 9) * np.cos(y / 11) * np.sin(z / 7)  # grey/white matter-like contrast
    hu[brain] = (32.0 + texture + rng.normal(0, 3, size=shape).astype(np.float32))[brain]
    ventricle = ((x - 8) / 6) ** 2 + (y / 22) ** 2 + ((z - 5) / 12) ** 2 < 1
    hu[ventricle & brain] = 5.0
    bleed = ((x + 35) / 9) ** 2 + ((y - 20) / 12) ** 2 + ((z - 20) / 10) ** 2 < 1
    hu[bleed & brain] = 65.0
    affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])  # LPS storage: x to the left, y back
    affine[:3, 3] = [-(n - 1) / 2 * a for n, a in zip(shape, np.diag(affine)[:3])]
    return hu, affine


def ours(hu, affine, spec) -> torch.Tensor:
    return model_input(to_canvas(hu, affine, spec)[None], spec)[0]


def monai_chain(spec):
    from monai.transforms import (CenterSpatialCrop, Compose, CropForeground, Lambda, Orientation, Resize,
                                  ResizeWithPadOrCrop, ScaleIntensityRange, Spacing)
    windows = [ScaleIntensityRange(a_min=lv - w / 2, a_max=lv + w / 2, b_min=0.0, b_max=1.0, clip=True)
               for lv, w in spec.windows]
    return Compose([
        Orientation(axcodes="RAS", labels=None),
        Spacing(pixdim=spec.spacing, mode=spec.interp_order),
        CropForeground(select_fn=lambda v: v > spec.foreground_hu, margin=0, allow_smaller=True),
        ResizeWithPadOrCrop(spec.canvas, value=AIR_HU),
        Lambda(lambda v: torch.cat([w(v) for w in windows], dim=0)),
        CenterSpatialCrop(spec.eval_crop),
        Resize((spec.input_size,) * 3, mode=spec.resize_mode),
    ])


def timed(fn, repeats):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def cache_read(spec, n_scans: int) -> None:
    """Build a cache of ``n_scans`` scans, then time reading it back (single process and a DataLoader)."""
    import tempfile
    from pathlib import Path

    import nibabel as nib
    import pandas as pd

    from fmct_lib.data.cache import CachedVolumes, build_cache
    from fmct_lib.data.manifest import write_scans

    with tempfile.TemporaryDirectory() as tmp:
        data, rows = Path(tmp) / "data", []
        (data / "bench").mkdir(parents=True)
        for i in range(n_scans):
            hu, affine = synthetic_head((128, 128, 40), (1.8, 1.8, 5.0), seed=i)
            nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), data / "bench" / f"{i}.nii")
            rows.append({"scan_id": f"scan{i}", "patient_id": f"p{i}", "path": f"{i}.nii", "split": "train",
                         "manufacturer": "", "slice_thickness_mm": 5.0, "spacing": "1.8x1.8x5"})
        write_scans(pd.DataFrame(rows), "bench", root=data)
        out = build_cache("bench", spec, root=Path(tmp) / "cache", data_root=data)
        size = np.mean([f.stat().st_size for f in out.glob("*.npy")]) / 2 ** 20
        volumes = CachedVolumes("bench", spec, root=Path(tmp) / "cache")
        t0 = time.perf_counter()
        for i in range(len(volumes)):
            volumes[i]  # np.load reads every byte
        single = len(volumes) / (time.perf_counter() - t0)
        loader = torch.utils.data.DataLoader(volumes, batch_size=4, num_workers=2, persistent_workers=True)
        for _ in loader:  # first epoch starts the workers
            pass
        t0 = time.perf_counter()
        for _ in loader:
            pass
        pooled = len(volumes) / (time.perf_counter() - t0)
    print(f"cache: {size:.1f} MiB per scan ({spec.dtype} {spec.canvas}^3 .npy); reading {n_scans} scans: "
          f"{single:.0f} scans/s in one process ({single * size:.0f} MiB/s), "
          f"{pooled:.0f} scans/s through a DataLoader (2 workers, batches of 4, collated)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--repeats", type=int, default=5, help="repeats of our chain (median)")
    ap.add_argument("--monai-repeats", type=int, default=2, help="repeats of the MONAI chain (median)")
    ap.add_argument("--cache-scans", type=int, default=16, help="scans in the cache-read test (0: skip)")
    args = ap.parse_args(argv)
    from monai.data import MetaTensor

    spec = paper_spec(args.profile)
    chain = monai_chain(spec)
    print(f"spec {spec.name} {spec.hash}: spacing {spec.spacing} mm, canvas {spec.canvas}, crop "
          f"{spec.eval_crop}, input {spec.input_size}; torch threads {torch.get_num_threads()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print(f"{'scan':<34}{'ours s':>9}{'vol/s':>8}{'MONAI s':>10}{'vol/s':>8}{'speed-up':>10}{'max |diff|':>12}")
    for name, shape, spacing in [("thick 512x512x40 @0.45x0.45x5", (512, 512, 40), (0.45, 0.45, 5.0)),
                                 ("thin 512x512x300 @0.45x0.45x0.625", (512, 512, 300), (0.45, 0.45, 0.625))]:
        hu, affine = synthetic_head(shape, spacing)
        ours(hu, affine, spec)  # warm-up
        mine, t_ours = timed(lambda: ours(hu, affine, spec), args.repeats)
        meta = MetaTensor(torch.from_numpy(hu)[None], affine=torch.from_numpy(affine))
        ref, t_monai = timed(lambda: chain(meta), args.monai_repeats)
        diff = (torch.as_tensor(ref).float() - mine).abs().max().item()
        print(f"{name:<34}{t_ours:>9.3f}{1 / t_ours:>8.2f}{t_monai:>10.3f}{1 / t_monai:>8.2f}"
              f"{t_monai / t_ours:>9.1f}x{diff:>12.4f}")
    if args.cache_scans:
        cache_read(spec, args.cache_scans)


if __name__ == "__main__":
    main()

"""Benchmark: one DINO step and one MAE step, model only and end to end with the data path.

For each method prints scans/s and student tokens/s of

- ``model``: forward + backward + optimiser step (+ EMA teacher and centre for DINO) on views already on
  the device;
- ``views``: the augmentation alone (multi-crop or MAE view from int16 canvases on the device);
- ``end to end``: DataLoader read of int16 canvases → device → views → model step, as ``train`` runs it;

and on a GPU the model FLOP utilisation (analytic matmul FLOPs of the ViT forward, ×3 for the student's
training step, ×1 for the teacher; peak from ``--peak-tflops`` or a small table of known GPUs).
Canvases come from the synthetic dataset's cache when built, else random int16 HU volumes (said so).

    .venv/bin/python bench/pretrain.py [--profile demo|paper] [--batch 8] [--steps 3]

The paper implies ~45 scans/s per A100 for DINO at ViT-B/96³; the target on an H100 is ≥ 2× end to end.
"""
from __future__ import annotations

import argparse
import sys
import time

import torch

from fmct_lib.config import get_profile
from fmct_lib.data.augment import AugmentConfig, mae_view, multicrop_views
from fmct_lib.precision import autocast_for
from fmct_lib.train.loop import _collate, make_optimizer
from fmct_lib.train.methods import get_method
from fmct_lib.train.trainer import run_config

PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0}  # dense bf16


def vit_forward_flops(cfg, tokens: int) -> float:
    """Matmul FLOPs of one encoder forward on ``tokens`` tokens (2 per multiply-add)."""
    d, t = cfg.embed_dim, tokens
    per_block = 2 * t * (4 * d * d + 2 * d * int(d * cfg.mlp_ratio)) + 2 * 2 * t * t * d
    patch = 2 * (t - 1) * d * cfg.in_chans * cfg.patch_size ** 3
    return cfg.depth * per_block + patch


def _canvases(profile, n: int):
    try:
        from fmct_lib.data.cache import CachedVolumes
        from fmct_lib.data.manifest import load_scans
        from fmct_lib.data.preprocess import paper_spec
        ids = list(load_scans("synthetic")["scan_id"][:n])
        data = CachedVolumes("synthetic", paper_spec(profile), scan_ids=ids)
        if len(data) >= n:
            return data, "synthetic cache"
    except Exception as e:  # no cache: measure on in-memory canvases
        reason = f"{type(e).__name__}"
    else:
        reason = "too few cached scans"
    g = torch.Generator().manual_seed(0)
    vols = (torch.rand(n, *(profile.canvas,) * 3, generator=g) * 1600 - 1000).to(torch.int16)
    data = [{"scan_id": str(i), "volume": v} for i, v in enumerate(vols)]
    return data, f"random int16 canvases ({reason})"


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def bench(method: str, profile, batch: int, steps: int, device: torch.device, peak: float | None) -> None:
    run = run_config(method, profile, n_scans=batch * (steps + 1), batch_size=batch, max_steps=steps + 1)
    Method = get_method(method)
    augment = AugmentConfig.from_profile(profile, **Method.crops(run))
    task = Method(profile, augment, run).to(device)
    opt = make_optimizer(task.model, run["lr"], run["weight_decay"], run["betas"])
    autocast, needs_scaler = autocast_for(device)
    scaler = torch.amp.GradScaler(device.type, enabled=needs_scaler)  # fp16 GPUs (V100, T4) scale the loss, as loop.py
    gen = torch.Generator().manual_seed(0)
    data, source = _canvases(profile, batch * (steps + 1))
    loader = torch.utils.data.DataLoader(data, batch_size=batch, collate_fn=_collate, num_workers=2,
                                         pin_memory=device.type == "cuda")
    n_patches = (profile.input_size // profile.patch_size) ** 3
    make_views = multicrop_views if method == "dino" else mae_view
    n_views = augment.n_global + augment.n_local if method == "dino" else 1
    student_tokens = n_views * (1 + n_patches) if method == "dino" else 1 + int(n_patches * 0.25)

    def model_step(canvases, step):
        loss = task.micro_step(task.model, canvases, gen, slice(None), batch, step, autocast)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        task.before_optimizer(step)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
        task.after_step(step)

    it = iter(loader)
    first = next(it).to(device)
    model_step(first, 0)  # warm-up
    views_t, e2e_t = [], []
    for step in range(1, steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        canvases = next(it).to(device, non_blocking=True)
        model_step(canvases, step)
        _sync(device)
        e2e_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            make_views(canvases, augment, gen)
        _sync(device)
        views_t.append(time.perf_counter() - t0)
    # model only: replace the view maker by pre-computed views
    fixed = make_views(first, augment, torch.Generator().manual_seed(1))
    method_module = sys.modules[Method.__module__]  # the method's file, where its view maker is looked up
    name = "multicrop_views" if method == "dino" else "mae_view"
    original = getattr(method_module, name)
    setattr(method_module, name, lambda *a, **k: fixed)
    try:
        model_t = []
        for step in range(1, steps + 1):
            _sync(device)
            t0 = time.perf_counter()
            model_step(first, step)
            _sync(device)
            model_t.append(time.perf_counter() - t0)
    finally:
        setattr(method_module, name, original)

    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    print(f"\n{method.upper()} — profile {profile.name}, batch {batch}, {student_tokens} student tokens/scan, "
          f"data: {source}")
    for label, t in (("model", med(model_t)), ("views", med(views_t)), ("end to end", med(e2e_t))):
        line = (f"  {label:11s} {t * 1e3:9.1f} ms/step  {batch / t:8.2f} scans/s  "
                f"{batch * student_tokens / t:11.0f} tokens/s")
        if label == "model" and peak:
            cfg = profile.model
            if method == "dino":
                flops = 3 * vit_forward_flops(cfg, 1 + n_patches) * n_views + vit_forward_flops(cfg, 1 + n_patches) * 2
            else:
                flops = 3 * vit_forward_flops(cfg, student_tokens)
            line += f"  MFU {100 * flops * batch / t / (peak * 1e12):.1f}% (encoder matmuls)"
        print(line)
    print(f"  end to end / model only: {med(model_t) / med(e2e_t):.2f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="default: paper on a GPU, demo on a CPU")
    ap.add_argument("--batch", type=int, default=None, help="default: the profile's (4 on a CPU)")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=["dino", "mae"])
    ap.add_argument("--peak-tflops", type=float, default=None)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    profile = get_profile(args.profile or ("paper" if device.type == "cuda" else "demo"))
    batch = args.batch or (profile.pretrain_batch_size if device.type == "cuda" else 4)
    peak = args.peak_tflops
    if device.type == "cuda" and peak is None:
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in PEAK_TFLOPS.items() if k in name), None)
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}" + ("" if device.type == "cuda" else " — no GPU: MFU not reported"))
    for method in args.methods:
        bench(method, profile, batch, args.steps, device, peak)


if __name__ == "__main__":
    main()

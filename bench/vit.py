"""Encoder speed: forward and forward+backward per volume, FLOP/s, and two side-by-side ratios.

    python bench/vit.py [--repeats 5] [--batches 1 2] [--profile paper]

Ratios are measured in the same run, interleaved, and reported as medians (the machine is shared):
- against the machine's dense fp32 matmul throughput (the physical limit on a CPU): a 2048² product, and
  the encoder's own linear-layer shapes (what is attainable at its token count), and
- against MONAI's ``ViT`` built with the same configuration.
On a GPU the encoder also runs in bf16 autocast, where SDPA dispatches to flash attention.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fmct_lib.config import get_profile  # noqa: E402
from fmct_lib.models.vit3d import vit_from_config  # noqa: E402


def encoder_flops(cfg, batch: int) -> float:
    """Forward FLOPs (multiply-add = 2) of the encoder at its built input size."""
    n = (cfg.img_size // cfg.patch_size) ** 3
    t = n + 1 + cfg.num_register_tokens
    d, h = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    patch = 2 * n * d * cfg.in_chans * cfg.patch_size ** 3
    block = 2 * t * d * 3 * d + 2 * 2 * t * t * d + 2 * t * d * d + 2 * 2 * t * d * h
    return batch * (patch + cfg.depth * block)


def matmul_flops_per_s(device, n: int = 2048, repeats: int = 3) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    return 2 * n ** 3 / _median_time(lambda: a @ b, device, repeats)


def linear_shapes_flops_per_s(cfg, batch: int, device, repeats: int = 3) -> float:
    """Matmul throughput at the encoder's own linear-layer shapes (tokens × in → out), the attainable rate."""
    m = batch * ((cfg.img_size // cfg.patch_size) ** 3 + 1 + cfg.num_register_tokens)
    d, h = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    seconds, flops = 0.0, 0.0
    for k, n in ((d, 3 * d), (d, d), (d, h), (h, d)):
        x, w = torch.randn(m, k, device=device), torch.randn(n, k, device=device)
        seconds += _median_time(lambda: torch.nn.functional.linear(x, w), device, repeats)
        flops += 2 * m * k * n
    return flops / seconds


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _median_time(fn, device, repeats: int) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def monai_vit(cfg):
    from monai.networks.nets import ViT  # imported here: ~8 s
    return ViT(in_channels=cfg.in_chans, img_size=cfg.img_size, patch_size=cfg.patch_size,
               hidden_size=cfg.embed_dim, mlp_dim=int(cfg.embed_dim * cfg.mlp_ratio), num_layers=cfg.depth,
               num_heads=cfg.num_heads, proj_type="conv", pos_embed_type="sincos", classification=False,
               qkv_bias=cfg.qkv_bias, spatial_dims=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default="paper")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-monai", action="store_true")
    args = ap.parse_args()

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = get_profile(args.profile).model
    ours = vit_from_config(cfg).to(device)
    theirs = None if args.no_monai else monai_vit(cfg).to(device)
    print(f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}, profile {args.profile}: "
          f"ViT {cfg.embed_dim}x{cfg.depth}, {cfg.in_chans}x{cfg.img_size}^3, patch {cfg.patch_size}")
    peak = matmul_flops_per_s(device)
    print(f"dense fp32 matmul: {peak / 1e9:.1f} GFLOP/s")

    rows = []
    for batch in args.batches:
        x = torch.randn(batch, cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size, device=device)
        flops = encoder_flops(cfg, batch)
        shaped = linear_shapes_flops_per_s(cfg, batch, device)
        for mode in ("forward", "forward+backward"):
            def step(model, fwd=lambda m: m.forward_features):
                if mode == "forward":
                    with torch.no_grad():
                        fwd(model)(x)
                else:
                    out = fwd(model)(x)
                    (out[0] if isinstance(out, tuple) else out).float().mean().backward()
            t_ours, t_monai = [], []
            for _ in range(args.repeats):  # interleaved, so both see the same machine load
                t_ours.append(_median_time(lambda: step(ours), device, 1))
                if theirs is not None:
                    t_monai.append(_median_time(lambda: step(theirs, fwd=lambda m: m), device, 1))
            ours_s = statistics.median(t_ours)
            work = flops * (1 if mode == "forward" else 3)
            line = (f"batch {batch} {mode:17s} ours {ours_s / batch:6.3f} s/volume  "
                    f"{work / ours_s / 1e9:6.1f} GFLOP/s  = {work / ours_s / peak:4.2f} x matmul "
                    f"({work / ours_s / shaped:4.2f} x at the encoder's shapes)")
            if t_monai:
                monai_s = statistics.median(t_monai)
                line += f"   MONAI {monai_s / batch:6.3f} s/volume  speed-up x{monai_s / ours_s:4.2f}"
            print(line)
            rows.append((batch, mode, ours_s))
    if device.type == "cuda":
        x = torch.randn(max(args.batches), cfg.in_chans, cfg.img_size, cfg.img_size, cfg.img_size, device=device)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            t = _median_time(lambda: ours.forward_features(x).float().mean().backward(), device, args.repeats)
        print(f"bf16 autocast forward+backward batch {x.shape[0]}: {t / x.shape[0]:.4f} s/volume, "
              f"{3 * encoder_flops(cfg, x.shape[0]) / t / 1e12:.1f} TFLOP/s")


if __name__ == "__main__":
    main()

"""Downstream training in fp32 against reduced precision (bf16 autocast), side by side in one run.

The convergence rule's training loop, ``downstream.training.fit``, trains a fine-tuned classifier (encoder +
linear head) on in-memory volumes for a fixed number of steps, once in fp32 and once under bf16 autocast; then the
fp32-trained model predicts the same volumes in both precisions. On a GPU bf16 is what ``precision.autocast_for``
chooses (fused attention kernels, half the activation memory); on a CPU fmct stays in fp32, and this run shows
why on the CPU at hand (a CPU without bf16 units runs bf16 slower). Prints, per profile: ms per training step
in each precision and their ratio, peak GPU memory, and the largest difference in P(positive).

    .venv/bin/python bench/precision.py [--profiles demo paper] [--steps 20] [--batch-size N]
"""
from __future__ import annotations

import argparse
import contextlib
import time
from dataclasses import replace

import numpy as np
import torch

from fmct_lib import precision
from fmct_lib.config import get_profile
from fmct_lib.data.inputs import VolumeSource
from fmct_lib.downstream import training
from fmct_lib.models.efficiency import machine_name
from fmct_lib.models.heads import Classifier, build_head
from fmct_lib.models.vit3d import vit_from_config

FP32 = (contextlib.nullcontext, False)


def bf16_on(device: torch.device):
    """bf16 autocast on ``device``: ``precision.autocast_for`` on a bf16 GPU, the CPU's autocast otherwise."""
    if precision.precision_name(device) == "bfloat16 autocast":
        return precision.autocast_for(device)
    return (lambda: torch.autocast(device.type, dtype=torch.bfloat16)), False


@contextlib.contextmanager
def training_in(autocast):
    """fmct (``fit``, ``predict``) computing under ``autocast`` in place of the device's own."""
    original = precision.autocast_for
    precision.autocast_for = lambda device: autocast
    try:
        yield
    finally:
        precision.autocast_for = original


def train_and_time(profile, x, y, device, autocast, steps: int, batch_size: int) -> tuple[Classifier, float, float]:
    """(the model, seconds per step, peak GPU memory in MiB or NaN) of ``fit`` for ``steps`` steps under
    ``autocast``, after a warm-up fit of two steps."""
    torch.manual_seed(0)
    encoder = vit_from_config(profile.model)
    model = Classifier(encoder, build_head("linear", encoder))
    hp = training.HParams.from_profile(profile, batch_size=batch_size, max_epochs=1, patience=1)
    with training_in(autocast):
        training.fit(model, x, y, replace(hp, subset=2 * batch_size), frozen=False, device=device, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        training.fit(model, x, y, replace(hp, subset=steps * batch_size), frozen=False, device=device,
                     progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return model, seconds, peak


def bench(profile_name: str, device: torch.device, steps: int, batch_size: int | None) -> None:
    profile = get_profile(profile_name)
    batch_size = batch_size or profile.finetune_batch_size
    n = 4 * batch_size
    g = torch.Generator().manual_seed(0)
    x = VolumeSource(torch.rand(n, 3, *(3 * [profile.input_size]), generator=g))
    y = np.arange(n) % 2
    model, t32, m32 = train_and_time(profile, x, y, device, FP32, steps, batch_size)
    model.cpu()  # off the GPU while bf16 trains, so its peak memory is bf16's alone (predict moves it back)
    if device.type == "cuda":
        torch.cuda.empty_cache()
    _, t16, m16 = train_and_time(profile, x, y, device, bf16_on(device), steps, batch_size)
    with training_in(FP32):
        p32 = training.predict(model, x, batch_size, device=device)
    with training_in(bf16_on(device)):
        p16 = training.predict(model, x, batch_size, device=device)
    memory = "" if device.type != "cuda" else f"; peak GPU memory {m32:.0f} MiB fp32, {m16:.0f} MiB bf16"
    print(f"[{profile_name}, {device.type}] fit: batch {batch_size} of 3×{profile.input_size}³, {steps} steps: "
          f"fp32 {1e3 * t32:.1f} ms/step, bf16 autocast {1e3 * t16:.1f} ms/step → bf16 {t32 / t16:.2f}× "
          f"the speed of fp32{memory}; largest difference in P(positive) {np.abs(p32 - p16).max():.1e} "
          f"(fmct trains in {precision.precision_name(device)} here)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profiles", nargs="+", default=["demo"])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the profile's fine-tuning batch")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"machine: {machine_name(device)}; torch {torch.__version__}")
    for profile in args.profiles:
        bench(profile, device, args.steps, args.batch_size)


if __name__ == "__main__":
    main()

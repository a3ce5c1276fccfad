"""Benchmark: throughput and peak memory of the 3-D ViT against every other architecture (Extended Data Fig. 5).

    .venv/bin/python bench/architectures.py [--profile paper] [--batch 16] [--repeats 5] [--architectures vit ctfm]

All architectures are measured in one run by ``fmct_lib.models.efficiency`` (a warm-up step, then the median of
``--repeats`` steps, the architectures interleaved so that all see the same machine load): forward and
forward+backward scans/s, peak memory (what it includes: that module's docstring) and the FLOPs torch counts, each
as a ratio to the profile's 3-D ViT (paper: ViT-B/12 at 96³). The other encoders are randomly initialised, at the
published architecture at the paper profile and as the small stand-ins at toy and demo (weights do not change the
compute). On a GPU: bf16 autocast and fused attention, and then the DINO pretraining step of ``bench/pretrain.py``
for the ViT at the same profile (the target on one H100: at least 90 scans/s end to end, twice the ~45 per A100
the paper implies).
"""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fmct_lib.config import get_profile  # noqa: E402
from fmct_lib.models import efficiency  # noqa: E402

DINO_TARGET = 90.0  # scans/s end to end on one H100 (issue 27)


def versions() -> str:
    """The libraries the measurements ran on (a library that is not installed says so, and the table still prints)."""
    import importlib.metadata as metadata
    parts = [f"torch {torch.__version__}"]
    for name in ("transformers", "monai", "numpy"):
        try:
            parts.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            parts.append(f"{name} not installed")
    parts.append(f"python {sys.version.split()[0]}")
    if torch.cuda.is_available():
        parts += [f"CUDA {torch.version.cuda}", f"cuDNN {torch.backends.cudnn.version()}"]
    return ", ".join(parts)


def print_table(table) -> None:
    print(f"\n{'model':14s} {'mode':17s} {'scans/s':>9s} {'x ViT':>6s} {'peak MiB':>9s} {'x ViT':>6s} "
          f"{'GFLOP/scan':>10s} {'params M':>8s}  input")
    for r in table.itertuples():
        print(f"{r.model:14s} {r.mode:17s} {r.scans_per_s:9.2f} {r.throughput_ratio:6.2f} {r.peak_memory_mb:9.1f} "
              f"{r.memory_ratio:6.2f} {r.gflops_per_scan:10.2f} {r.params_m:8.1f}  {r.in_chans}x{r.input_size}^3")


class _Tee(io.TextIOBase):
    """Writes to the real stdout and keeps a copy."""

    def __init__(self, out):
        self.out, self.copy = out, io.StringIO()

    def write(self, text: str) -> int:
        self.out.write(text)
        return self.copy.write(text)


def dino_throughput(profile, batch: int, steps: int) -> None:
    """``bench/pretrain.py``'s DINO step on the GPU (model only, views, end to end), then its end-to-end scans/s
    against the target."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import pretrain  # bench/pretrain.py
    device = torch.device("cuda")
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in pretrain.PEAK_TFLOPS.items() if k in name), None)
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        pretrain.bench("dino", profile, batch, steps, device, peak)
    found = re.search(r"end to end\s+[\d.]+ ms/step\s+([\d.]+) scans/s", tee.copy.getvalue())
    if found:
        rate = float(found[1])
        verdict = "met" if rate >= DINO_TARGET else "NOT met"
        print(f"DINO pretraining end to end: {rate:.1f} scans/s on {name}; target >= {DINO_TARGET:g} scans/s on one "
              f"H100: {verdict}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=None, help="default: paper on a GPU, demo on a CPU")
    ap.add_argument("--architectures", nargs="+", default=None,
                    help="vit, vit_p<patch>, ctfm, merlin, resnet3d, dinov3, vjepa2 (default: the ViT, its patch-16 "
                         "counterpart at the paper profile, and every external encoder)")
    ap.add_argument("--input-size", type=int, default=None, help="default: the profile's")
    ap.add_argument("--batch", type=int, default=None, help="default: the profile's fine-tuning batch on a GPU, 1 on a CPU")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--no-dino", action="store_true", help="on a GPU, skip the DINO pretraining step")
    ap.add_argument("--dino-batch", type=int, default=None, help="default: the profile's pretraining batch")
    ap.add_argument("--dino-steps", type=int, default=5)
    args = ap.parse_args()

    cuda = torch.cuda.is_available()
    profile = get_profile(args.profile or ("paper" if cuda else "demo"))
    batch = args.batch or (profile.finetune_batch_size if cuda else 1)
    table = efficiency.relative_to(efficiency.measure_architectures(
        profile, args.architectures, input_size=args.input_size, batch_size=batch, repeats=args.repeats,
        warmup=args.warmup))
    first = table.iloc[0]
    print(f"machine: {first.machine}; {versions()}")
    print(f"profile {profile.name}, batch {batch}, {first['dtype']}, median of {args.repeats} steps after "
          f"{args.warmup} warm-up; peak memory: {first.memory}; ratios to {first.model}")
    print_table(table)
    if cuda and not args.no_dino:
        dino_throughput(profile, args.dino_batch or profile.pretrain_batch_size, args.dino_steps)
    elif not cuda:
        print("\nno GPU: the DINO pretraining throughput is measured on a GPU (bench/pretrain.py on a CPU runs alone)")


if __name__ == "__main__":
    main()

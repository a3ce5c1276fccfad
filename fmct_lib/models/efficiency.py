"""What an encoder costs: throughput, peak memory and FLOPs by architecture (paper, Extended Data Fig. 5), and the 3-D
ViT's cost by patch size (Supplementary Fig. 2; Supplementary Section E: shrinking the patch side by a factor s
multiplies the tokens by s³ and self-attention's cost by s⁶). It builds the encoders, so it sits with the models,
not in ``evaluate`` (pure math on tables, below ``models``).

**Measured** (:func:`measure`, :func:`measure_architectures`): a forward, and a forward+backward, of each encoder's
``forward_features`` on random inputs with its preprocessing's channels (the values do not change the compute),
modules in eval mode (BatchNorm on running statistics, so that a batch of one runs; the arithmetic is the same).
``warmup`` steps first, then ``repeats`` timed steps, the architectures interleaved so that all see the same machine
load; scans/s is the batch over the median step. Peak memory is the bytes of the weights and the input plus the
rise, during a step, of the device's peak memory over its memory in use just before the step (activations,
gradients, temporaries; so that a library's first import or lazily loaded kernels are not counted), the least of up
to three steps (on a CPU, whether a freed buffer is reused or mapped anew varies from step to step, and only adds):

- CUDA: bf16 autocast (``precision.autocast_for``; ``scaled_dot_product_attention`` dispatches to its fused
  kernels); the peak is ``torch.cuda.max_memory_allocated`` (the allocator's cache is not counted).
- CPU: fp32; the peak is the process's peak resident memory (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``
  just before the step, free heap returned to the system with ``malloc_trim`` first), so the allocator's slack is
  counted. NaN where the system has no such counter.

**Counted** (:func:`counted_flops`): the FLOPs of the matrix products and convolutions that run, as
``torch.utils.flop_counter`` counts them, attention through SDPA's math path so that it is counted.
**Analytic** (:func:`vit_flops`, :func:`patch_cost`): the 3-D ViT's FLOPs from its configuration, 2 per
multiply-add: patch embedding, qkv, attention (QKᵀ and AV), output projection, MLP (norms, softmax, GELU and biases
are left out, as the counter leaves them out).

**Checked** (:func:`check_parameters`, :func:`pick_device`; :func:`measure` checks its own): a device that cannot run
here, a count below 1, a patch that does not divide the input, an unknown architecture are refused in one line
before anything is built or measured; the 3-D ViT, the reference of every ratio, is always among the architectures.
"""
from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import inspect
import math
import numbers
import platform
import re
import statistics
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, NamedTuple

import pandas as pd
import torch
import torch.nn as nn

from ..config import ModelConfig, Profile, get_profile, is_whole_number, patch_variant
from ..precision import autocast_for, check_device, precision_name

__all__ = ["MODES", "Candidate", "Settings", "vit_flops", "patch_cost", "dividing_patches", "counted_flops",
           "cpu_name", "machine_name", "vit_candidate", "candidates", "pick_device", "check_parameters", "measure",
           "measure_architectures", "relative_to"]

MODES = ("forward", "forward+backward")
EXTERNAL = ("ctfm", "merlin", "resnet3d", "dinov3", "vjepa2")   # models.external.ENCODERS, in the paper's order


# ------------------------------------------------------------------------------------------------ analytic
def _vit_terms(cfg: ModelConfig, n_patches: float) -> dict[str, float]:
    """Forward FLOPs per scan of each part of the ViT on ``n_patches`` patch tokens (a real number in
    :func:`patch_cost`'s curve)."""
    t = n_patches + 1 + cfg.num_register_tokens
    d, h = cfg.embed_dim, int(cfg.embed_dim * cfg.mlp_ratio)
    return {"patch_embed": 2 * n_patches * cfg.in_chans * cfg.patch_size ** 3 * d,
            "qkv": cfg.depth * 2 * t * d * 3 * d,
            "attention": cfg.depth * 2 * 2 * t * t * d,      # QKᵀ and AV over all heads: 2·T²·D each
            "proj": cfg.depth * 2 * t * d * d,
            "mlp": cfg.depth * 2 * 2 * t * d * h}


def vit_flops(config: ModelConfig, *, backward: bool = False) -> dict[str, float]:
    """FLOPs per scan of the 3-D ViT of ``config`` by part (``patch_embed``, ``qkv``, ``attention``, ``proj``,
    ``mlp``) and their ``total``, plus ``tokens``; with ``backward`` those of a forward+backward: each product's
    backward costs twice its forward, but the patch embedding's only once (no gradient for the input)."""
    if config.img_size % config.patch_size:
        raise ValueError(f"img_size {config.img_size} is not divisible by patch_size {config.patch_size}")
    n = (config.img_size // config.patch_size) ** 3
    terms = _vit_terms(config, n)
    if backward:
        terms = {k: v * (2 if k == "patch_embed" else 3) for k, v in terms.items()}
    return {**terms, "total": sum(terms.values()), "tokens": n + 1 + config.num_register_tokens}


def patch_cost(config: ModelConfig, patch_sizes) -> pd.DataFrame:
    """The ViT of ``config`` at each of ``patch_sizes``, same input: ``grid`` (patches per side, ``img_size / patch``,
    a whole number where the patch divides the input), ``tokens``, ``s`` (``config``'s patch over this one: the
    paper's reduction factor), forward FLOPs per scan (``flops``, ``attention_flops``) and each as a ratio to
    ``config``'s patch (``tokens_ratio``, ``flops_ratio``, ``attention_ratio``); ``s3``, ``s6``: s³ and s⁶."""
    base = _vit_terms(config, (config.img_size / config.patch_size) ** 3)
    rows = []
    for p in patch_sizes:
        grid = config.img_size / p
        terms = _vit_terms(replace(config, patch_size=p), grid ** 3)
        s = config.patch_size / p
        rows.append({"patch_size": p, "grid": grid, "tokens": grid ** 3 + 1 + config.num_register_tokens, "s": s,
                     "flops": sum(terms.values()), "attention_flops": terms["attention"],
                     "flops_ratio": sum(terms.values()) / sum(base.values()),
                     "attention_ratio": terms["attention"] / base["attention"], "s3": s ** 3, "s6": s ** 6})
    out = pd.DataFrame(rows)
    out["tokens_ratio"] = (out["grid"] ** 3) / (config.img_size / config.patch_size) ** 3
    return out


def dividing_patches(config: ModelConfig, max_token_ratio: float = 8.0) -> list[int]:
    """The patch sizes that divide ``config``'s input into a grid of at least 2 per side and at most
    ``max_token_ratio`` times ``config``'s patch tokens (paper 96³: 6 … 48; demo 32³: 4, 8, 16)."""
    n = (config.img_size // config.patch_size) ** 3
    return [p for p in range(1, config.img_size // 2 + 1)
            if config.img_size % p == 0 and (config.img_size // p) ** 3 <= max_token_ratio * n]


def counted_flops(model: nn.Module, x: torch.Tensor, *, backward: bool = False) -> int:
    """FLOPs of ``model.forward_features(x)`` (and its backward) as ``torch.utils.flop_counter`` counts them, with
    ``scaled_dot_product_attention`` on its math path (the fused kernels are not counted)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode
    grad = contextlib.nullcontext() if backward else torch.no_grad()
    with sdpa_kernel([SDPBackend.MATH]), grad, FlopCounterMode(display=False) as counter:
        out = model.forward_features(x)
        if backward:
            out.float().mean().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------------ what to measure
@dataclass(frozen=True)
class Candidate:
    """One architecture to measure: ``name`` (its key in the table), ``label`` (as a figure names it), ``build``
    (returns the module, whose ``forward_features`` takes (B, C, S, S, S)) and ``input_size`` S."""

    name: str
    label: str
    build: Callable[[], nn.Module]
    input_size: int


def vit_candidate(config: ModelConfig, name: str = "vit", label: str | None = None) -> Candidate:
    """The 3-D ViT of ``config`` at its input size (label ``3D ViT/<patch>``)."""
    from .vit3d import vit_from_config
    return Candidate(name, label or f"3D ViT/{config.patch_size}", lambda: vit_from_config(config), config.img_size)


def _external_candidate(name: str, profile: Profile, input_size: int) -> Candidate:
    """An external encoder, randomly initialised (weights do not change the compute) at the profile's size
    (``SMALL_ARCHITECTURES``; the published architecture at the paper profile)."""
    from .external import ADAPTERS, ENCODERS, SMALL_ARCHITECTURES, build_encoder
    options = dict(SMALL_ARCHITECTURES.get(profile.name, {}).get(name, {}))
    if "input_size" in inspect.signature(ENCODERS[name]).parameters:
        options["input_size"] = input_size

    def build():
        with warnings.catch_warnings():  # "randomly initialised": said in the table's detail column
            warnings.simplefilter("ignore", UserWarning)
            return build_encoder(name, **options)
    return Candidate(name, ADAPTERS[name].name, build, input_size)


def candidates(profile: str | Profile, names=None, input_size: int | None = None) -> list[Candidate]:
    """The architectures ``names`` at ``profile``'s size on inputs of side ``input_size`` (default the profile's):
    ``vit`` (the profile's 3-D ViT), ``vit_p<N>`` (the same with patch N, on the smallest input N divides that is at
    least ``input_size``: :func:`config.patch_variant`) and the external encoders ``ctfm``, ``merlin``,
    ``resnet3d``, ``dinov3``, ``vjepa2``. Default: the ViT, its Supplementary Fig. 2 counterpart (paper patch 16)
    and every external encoder."""
    p = get_profile(profile)
    size = input_size or p.input_size
    at_size = p.replace(model=replace(p.model, img_size=size))
    names = _names(names) or _default_names(at_size)
    out = []
    for name in names:
        if name == "vit":
            out.append(vit_candidate(at_size.model))
        elif re.fullmatch(r"vit_p\d+", name):
            out.append(vit_candidate(patch_variant(at_size, int(name[5:])).model, name))
        elif name in EXTERNAL:
            out.append(_external_candidate(name, p, size))
        else:
            raise ValueError(f"unknown architecture {name!r}; choose from 'vit', 'vit_p<patch>', {', '.join(EXTERNAL)}")
    return out


def _default_names(at_size: Profile) -> list[str]:
    return ["vit", f"vit_p{patch_variant(at_size).patch_size}", *EXTERNAL]


def _names(names) -> list[str]:
    """``names`` as a list; one string is a comma- or space-separated list (``papermill -p architectures ctfm``)."""
    if names is None:
        return []
    if isinstance(names, str):
        return [n for n in re.split(r"[,\s]+", names) if n]
    return list(names)


# ------------------------------------------------------------------------------------------------ parameters
def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else CUDA when torch sees a GPU, else the CPU; one that cannot run here is refused in
    one line (the wording of ``train.distributed``), before anything is built."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = check_device(device)
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"device {device!r}: the efficiency measurements run on 'cpu' or 'cuda'")
    return dev


def _whole(name: str, value, least: int) -> int:
    """``value`` as an int, refused in one line unless a whole number at least ``least``."""
    if not is_whole_number(value, least):
        raise ValueError(f"{name} must be a whole number ≥ {least}, got {value!r}")
    return int(value)


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


class Settings(NamedTuple):
    """Notebook 11's parameters, checked and resolved by :func:`check_parameters`."""

    architectures: list[str]
    input_size: int
    patch_sizes: list[int]
    device: str


def check_parameters(profile: str | Profile, architectures=None, *, input_size: int | None = None, patch_sizes=None,
                     batch_size: int = 1, repeats: int = 3, warmup: int = 1,
                     device: str | torch.device | None = None) -> Settings:
    """Notebook 11's parameters (Extended Data Fig. 5, Supp. Fig. 2's cost), checked before anything is measured,
    each refusal a one-line ``ValueError``; returns them resolved:

    - ``architectures``: as :func:`candidates` takes them (default its default); ``vit``, the reference every ratio
      is relative to (:func:`relative_to`), is always measured: put first where not named.
    - ``input_size``: default the profile's; a multiple of the profile's patch.
    - ``patch_sizes``: the ViT's patch sizes for the cost curve, each dividing ``input_size`` (the divisors are named
      where one does not); default :func:`dividing_patches`; sorted, the profile's patch included.
    - ``batch_size``, ``repeats`` ≥ 1, ``warmup`` ≥ 0 (as :func:`measure` requires).
    - ``device``: :func:`pick_device`, as a string."""
    p = get_profile(profile)
    size = _whole("input_size", input_size, 1) if input_size is not None else p.input_size
    patch = p.model.patch_size
    if size % patch:
        lower, upper = max(patch, size // patch * patch), (size // patch + 1) * patch
        raise ValueError(f"input_size {size} is not a multiple of the {p.name} profile's patch {patch} "
                         f"(e.g. {lower} or {upper})")
    names = _names(architectures) or _default_names(p.replace(model=replace(p.model, img_size=size)))
    if "vit" not in names:
        names = ["vit", *names]
    candidates(p, names, size)  # refuses an unknown name
    cfg = replace(p.model, img_size=size)
    given = [patch_sizes] if isinstance(patch_sizes, numbers.Real) else _names(patch_sizes)
    given = given or dividing_patches(cfg)  # None or empty: the default
    sizes = set()
    for q in given:
        try:
            q = _whole("a patch size", float(q) if isinstance(q, str) else q, 1)
        except (TypeError, ValueError):
            raise ValueError(f"patch_sizes: {q!r} is not a whole number ≥ 1; the patch sizes that divide the input "
                             f"side {size}: {', '.join(map(str, _divisors(size)))}") from None
        if size % q:
            raise ValueError(f"patch_sizes: {q} does not divide the input side {size}; the patch sizes that do: "
                             f"{', '.join(map(str, _divisors(size)))} (default "
                             f"{', '.join(map(str, dividing_patches(cfg)))}: at most 8× the profile's tokens)")
        sizes.add(q)
    _check_counts(batch_size, repeats, warmup)
    return Settings(names, size, sorted(sizes | {patch}), str(pick_device(device)))


def _check_counts(batch_size, repeats, warmup) -> tuple[int, int, int]:
    return _whole("batch_size", batch_size, 1), _whole("repeats", repeats, 1), _whole("warmup", warmup, 0)


# ------------------------------------------------------------------------------------------------ measuring
def cpu_name() -> str:
    """The CPU's model (``/proc/cpuinfo``), else what ``platform`` knows of it."""
    cpuinfo = Path("/proc/cpuinfo")
    found = re.search(r"^model name\s*:\s*(.+)$", cpuinfo.read_text(), re.M) if cpuinfo.exists() else None
    return found[1].strip() if found else platform.processor() or platform.machine()


def machine_name(device: torch.device | str) -> str:
    """The GPU's name, or the CPU's model and the threads torch uses."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    threads = torch.get_num_threads()
    return f"{cpu_name()} CPU, {threads} thread{'s' if threads > 1 else ''}"


class _PeakMemory:
    """The device's memory in use and its peak since ``reset`` (module docstring), in bytes."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        clear = Path("/proc/self/clear_refs")
        self.available = self.cuda or (clear.exists() and _writable(clear))
        libc = ctypes.util.find_library("c")
        self._trim = getattr(ctypes.CDLL(libc), "malloc_trim", None) if libc and not self.cuda else None
        self.source = ("torch.cuda.max_memory_allocated" if self.cuda else
                       "peak resident set rise (Linux VmHWM)" if self.available else "not measured (no Linux /proc)")

    def settle(self) -> None:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
        elif self._trim is not None:
            self._trim(0)

    def current(self) -> float:
        if self.cuda:
            return float(torch.cuda.memory_allocated(self.device))
        return _proc_status("VmRSS") if self.available else math.nan

    def reset(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)
        elif self.available:
            Path("/proc/self/clear_refs").write_text("5")

    def peak(self) -> float:
        if self.cuda:
            return float(torch.cuda.max_memory_allocated(self.device))
        return _proc_status("VmHWM") if self.available else math.nan


def _writable(path: Path) -> bool:
    try:
        path.write_text("5")
        return True
    except OSError:
        return False


def _proc_status(field: str) -> float:
    return float(re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M)[1]) * 1024


def _step(model: nn.Module, x: torch.Tensor, mode: str) -> Callable[[], None]:
    autocast, _ = autocast_for(x.device)
    if mode == "forward":
        def step():
            with torch.no_grad(), autocast():
                model.forward_features(x)
    elif mode == "forward+backward":
        def step():
            with autocast():
                out = model.forward_features(x)
            out.float().mean().backward()
            model.zero_grad(set_to_none=True)
    else:
        raise ValueError(f"unknown mode {mode!r}; choose from {MODES}")
    return step


def _timed(step: Callable[[], None], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def measure(cands: list[Candidate], *, batch_size: int = 1, repeats: int = 3, warmup: int = 1,
            device: str | torch.device | None = None, modes=MODES, seed: int = 0) -> pd.DataFrame:
    """One row per candidate and mode: ``architecture``, ``model``, ``detail``, ``params_m``, ``input_size``,
    ``in_chans``, ``batch_size``, ``mode``, ``seconds`` (median step), ``scans_per_s``, ``peak_memory_mb`` (MiB),
    ``gflops_per_scan`` (counted), ``device``, ``machine``, ``torch``, ``dtype``, ``memory`` (what the peak is),
    ``repeats``, ``warmup``. ``device`` defaults to CUDA when present (module docstring). ``batch_size`` and
    ``repeats`` are at least 1, ``warmup`` at least 0, ``device`` one that runs here (:func:`pick_device`): refused
    in one line before anything is built."""
    batch_size, repeats, warmup = _check_counts(batch_size, repeats, warmup)
    modes = tuple(modes)
    if set(modes) - set(MODES):
        raise ValueError(f"unknown mode(s) {sorted(set(modes) - set(MODES))}; choose from {MODES}")
    if not cands or not modes:
        raise ValueError(f"nothing to measure: {len(cands)} architecture(s) in {len(modes)} mode(s)")
    device = pick_device(device)
    memory = _PeakMemory(device)
    common = {"batch_size": batch_size, "device": device.type, "machine": machine_name(device),
              "torch": torch.__version__, "dtype": precision_name(device),
              "memory": memory.source, "repeats": repeats, "warmup": warmup}
    rows, built = {}, []
    torch.manual_seed(seed)
    for cand in cands:
        model = cand.build().to(device).eval()
        in_chans = getattr(model, "in_chans", None) or model.config.in_chans
        x = torch.randn(batch_size, in_chans, *(cand.input_size,) * 3, device=device)
        detail = getattr(model, "architecture", None) or (
            f"ViT {model.config.embed_dim}×{model.config.depth}, patch {model.config.patch_size}, "
            f"{(cand.input_size // model.config.patch_size) ** 3} patch tokens")
        resident = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers(), x])
        for mode in modes:
            step = _step(model, x, mode)
            for _ in range(warmup):
                step()
            rises = []
            for _ in range(min(3, repeats)):
                memory.settle()
                before = memory.current()
                memory.reset()
                step()
                rises.append(memory.peak() - before)
            rise = min(rises)
            rows[cand.name, mode] = {
                "architecture": cand.name, "model": cand.label, "detail": detail,
                "params_m": sum(p.numel() for p in model.parameters()) / 1e6, "input_size": cand.input_size,
                "in_chans": in_chans, "mode": mode, "peak_memory_mb": (resident + rise) / 2 ** 20,
                "gflops_per_scan": counted_flops(model, x[:1], backward=mode != "forward") / 1e9}
        built.append((cand.name, model, x))
    for mode in modes:  # timing, the candidates interleaved
        steps = {name: _step(model, x, mode) for name, model, x in built}
        times = {name: [] for name in steps}
        for _ in range(repeats):
            for name, step in steps.items():
                times[name].append(_timed(step, device))
        for name, ts in times.items():
            seconds = statistics.median(ts)
            rows[name, mode].update(seconds=seconds, scans_per_s=batch_size / seconds)
    columns = ["architecture", "model", "detail", "params_m", "input_size", "in_chans", "batch_size", "mode",
               "seconds", "scans_per_s", "peak_memory_mb", "gflops_per_scan", "device", "machine", "torch", "dtype",
               "memory", "repeats", "warmup"]
    return pd.DataFrame([{**common, **row} for row in rows.values()])[columns]


def measure_architectures(profile: str | Profile, names=None, *, input_size: int | None = None,
                          **kwargs) -> pd.DataFrame:
    """:func:`measure` of :func:`candidates` (``kwargs``: ``batch_size``, ``repeats``, ``warmup``, ``device``,
    ``modes``, ``seed``)."""
    return measure(candidates(profile, names, input_size), **kwargs)


def relative_to(table: pd.DataFrame, reference: str = "vit") -> pd.DataFrame:
    """``table`` with ``throughput_ratio`` and ``memory_ratio``: each row's scans/s and peak memory over those of the
    ``reference`` architecture in the same mode."""
    ref = table[table["architecture"] == reference].set_index("mode")
    if ref.empty:
        raise ValueError(f"no {reference!r} rows in the table (architectures: {sorted(set(table['architecture']))})")
    return table.assign(throughput_ratio=table["scans_per_s"] / table["mode"].map(ref["scans_per_s"]),
                        memory_ratio=table["peak_memory_mb"] / table["mode"].map(ref["peak_memory_mb"]))

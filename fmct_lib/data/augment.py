"""Pretraining views, computed as batched tensor operations on the training device (DESIGN §4).

Input: a batch of cached canvases, int16 HU (B, C, C, C) (paper: C = 224 at 1 mm). Each view is a random
cube of the canvas resampled to the model input (paper: 96³), windowed into three channels, then
intensity-augmented. Paper, Methods "Self-distillation modelling" and Supplement B:

- DINO (``multicrop_views``): 2 global crops with sides in ``profile.global_crop`` (paper 112–224),
  resampled to the input size, and 3 local crops in ``profile.local_crop`` (paper 64–112), resampled to
  ``profile.local_input_size`` (paper: the input size, 96³, as the authors' code; DINO's own recipe keeps
  local crops small, 96 px against 224, which a profile may choose). Crops are cubes at a uniformly random
  integer position; the side is a uniform integer in the range.
- MAE (``mae_view``): one global-range crop (MAE's random-resized crop, He et al. 2022), flips and
  intensity shift, with DINO's probabilities. A departure from the authors' MAE code, which flips with
  p = 0.1 per axis and does not crop (``reference_code_facts.md``, MAE): the paper gives no probabilities;
  the released demo MAE encoders were trained with these views.
- Flips along each of the three axes; intensity shift by a uniform offset in ±0.1 (all channels);
  Gaussian smoothing with σ ∈ [0.5, 1.0] voxels per axis; gamma (contrast) with γ ∈ [0.2, 1.0].

The paper names transforms and ranges but not probabilities or which view gets which; those follow the
authors' DINO code (``reference_code_facts.md`` §3.1): flips p = 0.2 per axis and shift p = 0.5 on every view,
smoothing p = 0.2 on the first global view, gamma p = 0.2 on the second (DINO's asymmetric pair), and
— where the code has none, since the paper applies the augmentations to all views — smoothing p = 0.2
on local views.

How a view is computed: one ``grid_sample`` (trilinear) samples the crop at ``s``× the output resolution
(flips folded into the sampling grid), the windows are applied (``preprocess.apply_windows``), and an
``s``³ average pool brings it to the input size — an area-style resize, as the evaluation path's
``interpolate(mode="area")``, windows before averaging as in the paper's chain. ``s`` = ⌈largest side /
input⌉ capped at 2. All random numbers are drawn on the CPU from one ``torch.Generator`` for the *global*
batch (every process draws the same numbers and takes its rows), so a run gives the same views on one or
many processes, and saving the generator state makes resume exact.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .preprocess import PAPER_WINDOWS, apply_windows

__all__ = ["AugmentConfig", "ViewParams", "draw_view_params", "render_view", "multicrop_views", "mae_view"]


@dataclass(frozen=True)
class AugmentConfig:
    """Geometry from the profile, augmentation ranges from Supplement B, probabilities from the authors' DINO
    code (MAE views use them too)."""

    canvas: int
    input_size: int
    global_crop: tuple[int, int]
    local_crop: tuple[int, int]
    local_input_size: int
    windows: tuple[tuple[float, float], ...] = PAPER_WINDOWS
    n_global: int = 2
    n_local: int = 3
    flip_p: float = 0.2
    shift_offset: float = 0.1
    shift_p: float = 0.5
    smooth_sigma: tuple[float, float] = (0.5, 1.0)
    smooth_p: float = 0.2
    gamma: tuple[float, float] = (0.2, 1.0)
    gamma_p: float = 0.2
    max_supersample: int = 2

    def __post_init__(self):
        for name in ("global_crop", "local_crop"):
            lo, hi = getattr(self, name)
            if not 1 <= lo <= hi <= self.canvas:
                raise ValueError(f"{name} {lo}–{hi} must lie within 1..canvas={self.canvas}")

    @classmethod
    def from_profile(cls, profile, windows=PAPER_WINDOWS, **overrides) -> "AugmentConfig":
        return cls(canvas=profile.canvas, input_size=profile.input_size, global_crop=tuple(profile.global_crop),
                   local_crop=tuple(profile.local_crop), local_input_size=profile.local_input_size, windows=tuple(tuple(map(float, w)) for w in windows),
                   **overrides)


@dataclass
class ViewParams:
    """Random parameters of one view for n volumes (CPU tensors)."""

    side: torch.Tensor    # (n,) int64 cube side on the canvas, voxels
    origin: torch.Tensor  # (n, 3) int64 corner on the canvas
    flip: torch.Tensor    # (n, 3) bool
    shift: torch.Tensor   # (n,) float, 0 where not applied
    sigma: torch.Tensor   # (n, 3) float, 0 where not smoothed
    gamma: torch.Tensor   # (n,) float, 1 where not applied

    def rows(self, part: slice) -> "ViewParams":
        return ViewParams(**{k: v[part] for k, v in vars(self).items()})


def draw_view_params(n: int, crop: tuple[int, int], cfg: AugmentConfig, generator: torch.Generator,
                     smooth_p: float = 0.0, gamma_p: float = 0.0) -> ViewParams:
    """Draw one view's parameters. The same number of values is drawn whatever the probabilities."""
    g = generator
    lo, hi = crop
    side = torch.randint(lo, hi + 1, (n,), generator=g)
    origin = (torch.rand(n, 3, generator=g) * (cfg.canvas - side + 1).unsqueeze(1)).long()
    flip = torch.rand(n, 3, generator=g) < cfg.flip_p
    shift = (torch.rand(n, generator=g) * 2 - 1) * cfg.shift_offset
    shift = torch.where(torch.rand(n, generator=g) < cfg.shift_p, shift, torch.zeros(()))
    s_lo, s_hi = cfg.smooth_sigma
    sigma = s_lo + (s_hi - s_lo) * torch.rand(n, 3, generator=g)
    sigma = torch.where((torch.rand(n, generator=g) < smooth_p).unsqueeze(1), sigma, torch.zeros(()))
    g_lo, g_hi = cfg.gamma
    gamma = g_lo + (g_hi - g_lo) * torch.rand(n, generator=g)
    gamma = torch.where(torch.rand(n, generator=g) < gamma_p, gamma, torch.ones(()))
    return ViewParams(side, origin, flip, shift, sigma, gamma)


def _sampling_grid(p: ViewParams, canvas: int, size: int, device) -> torch.Tensor:
    """``grid_sample`` grid (n, size, size, size, 3) covering each crop (align_corners=False)."""
    u = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) / size  # voxel centres in [0, 1]
    u = torch.where(p.flip.to(device).unsqueeze(-1), 1 - u, u)                   # (n, 3, size)
    edge = p.origin.to(device).unsqueeze(-1) + p.side.to(device).view(-1, 1, 1) * u  # canvas edge coords
    norm = 2 * edge / canvas - 1
    n = norm.shape[0]
    shape = (n, size, size, size)
    # grid's last dim is (x, y, z) = (axis 2, axis 1, axis 0)
    return torch.stack([norm[:, 2, None, None, :].expand(shape), norm[:, 1, None, :, None].expand(shape),
                        norm[:, 0, :, None, None].expand(shape)], dim=-1)


def _gaussian_smooth(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur, per-volume σ per axis (n, 3), replicate padding; σ = 0 leaves a volume as is."""
    n, k = x.shape[:2]
    radius = max(1, math.ceil(3 * float(sigma.max())))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
    out = x.reshape(1, n * k, *x.shape[2:])
    for axis in range(3):
        s = sigma[:, axis].to(x.device).clamp_min(1e-3).view(-1, 1)
        w = torch.exp(-0.5 * (offsets / s) ** 2)
        w = (w / w.sum(dim=1, keepdim=True)).repeat_interleave(k, dim=0)  # (n·k, taps)
        shape = [n * k, 1, 1, 1, 1]
        shape[2 + axis] = w.shape[1]
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), w.view(shape), groups=n * k)
    return out.reshape(x.shape)


def _adjust_gamma(x: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """MONAI ``AdjustContrast``: per volume, ``min + ((x − min) / range)^γ · range``."""
    flat = x.flatten(1)
    lo = flat.min(dim=1).values.view(-1, 1, 1, 1, 1)
    rng = flat.max(dim=1).values.view(-1, 1, 1, 1, 1) - lo
    g = gamma.to(x.device).view(-1, 1, 1, 1, 1)
    return lo + ((x - lo) / (rng + 1e-7)).clamp_min(0) ** g * rng


def render_view(canvases: torch.Tensor, p: ViewParams, input_size: int, windows=PAPER_WINDOWS,
                supersample: int = 1, chunk: int = 8) -> torch.Tensor:
    """Canvases (n, C, C, C) HU on any device + parameters → views (n, K, S, S, S) float32."""
    n, c = canvases.shape[0], canvases.shape[-1]
    if canvases.ndim != 4 or canvases.shape[1:] != (c, c, c):
        raise ValueError(f"expected canvases (n, C, C, C), got {tuple(canvases.shape)}")
    if len(p.side) != n:
        raise ValueError(f"{len(p.side)} view parameters for {n} canvases")
    views = []
    for start in range(0, n, chunk):
        part = slice(start, start + chunk)
        q = p.rows(part)
        grid = _sampling_grid(q, c, input_size * supersample, canvases.device)
        hu = F.grid_sample(canvases[part].unsqueeze(1).float(), grid, mode="bilinear", padding_mode="border",
                           align_corners=False)[:, 0]
        x = apply_windows(hu, windows)
        if supersample > 1:
            x = F.avg_pool3d(x, supersample)
        views.append(x)
    x = torch.cat(views)
    rows = (p.gamma != 1).nonzero().flatten()
    if len(rows):
        x[rows.to(x.device)] = _adjust_gamma(x[rows.to(x.device)], p.gamma[rows])
    rows = (p.sigma > 0).any(dim=1).nonzero().flatten()
    if len(rows):
        x[rows.to(x.device)] = _gaussian_smooth(x[rows.to(x.device)], p.sigma[rows])
    return x + p.shift.to(x.device).view(-1, 1, 1, 1, 1)


def _supersample(crop: tuple[int, int], cfg: AugmentConfig, size: int | None = None) -> int:
    return max(1, min(cfg.max_supersample, math.ceil(crop[1] / (size or cfg.input_size))))


def multicrop_views(canvases: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
                    rows: slice = slice(None), global_batch: int | None = None) -> list[torch.Tensor]:
    """DINO views: ``n_global`` global crops (n, K, S, S, S) then ``n_local`` local crops (n, K, s, s, s),
    ``S`` the input size and ``s`` the local input size.

    Parameters are drawn for ``global_batch`` volumes (default: this batch) and ``rows`` selects the ones
    ``canvases`` holds (a process's share of the global batch).
    """
    total = global_batch or canvases.shape[0]
    recipe = [(cfg.global_crop, cfg.input_size, cfg.smooth_p if i == 0 else 0.0, cfg.gamma_p if i == 1 else 0.0)
              for i in range(cfg.n_global)]
    recipe += [(cfg.local_crop, cfg.local_input_size, cfg.smooth_p, 0.0)] * cfg.n_local
    views = []
    for crop, size, smooth_p, gamma_p in recipe:
        p = draw_view_params(total, crop, cfg, generator, smooth_p=smooth_p, gamma_p=gamma_p).rows(rows)
        views.append(render_view(canvases, p, size, cfg.windows, _supersample(crop, cfg, size)))
    return views


def mae_view(canvases: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator,
             rows: slice = slice(None), global_batch: int | None = None) -> torch.Tensor:
    """The MAE view: a global-range crop with flips and intensity shift, (n, K, S, S, S)."""
    total = global_batch or canvases.shape[0]
    p = draw_view_params(total, cfg.global_crop, cfg, generator).rows(rows)
    return render_view(canvases, p, cfg.input_size, cfg.windows, _supersample(cfg.global_crop, cfg))

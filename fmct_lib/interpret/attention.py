"""Attention maps of the encoder, mapped back onto the model-input volume (paper, "Visual interpretation").

:func:`compute_attention` runs the encoder once on one volume and keeps, for every layer and head,

- the **cls-to-patch attention**: row 0 of the softmax, at the patch columns, laid out on the patch grid.
  The full cls row sums to one over all tokens (cls, registers, patches); the patch part therefore sums to
  ``1 - cls_to_prefix`` (the mass the cls token keeps on itself and on the registers). These are the
  probabilities as the model computed them: any normalisation for display is the viewer's business;
- the **attention distance** of every patch, Eq. 1 (``distance.py``), in mm.

For display and for comparing encoders, :func:`enrichment` puts a cls-to-patch map on the scale of a uniform
map: each patch's share of the patch attention times the number of patches N, so 1 is "as much as a uniform
map gives every patch", N is "everything on this patch" and 0 is "nothing here". (The lesion enrichment of
``lesion.py`` is measured against the head, not the whole input: ``lesion.lesion_shares``.)

Both are small, ``(layers, heads, g0, g1, g2)``, so a viewer can move through layers, heads and slices
without running the model again. :func:`upsample_to_volume` puts a grid map back at full resolution with
the patch geometry of the encoder: patch (i, j, k) covers voxels ``[i·p, (i+1)·p)`` on each axis.
"""
from __future__ import annotations

import warnings

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .distance import attention_distance, patch_attention_rows, patch_distance_matrix, uniform_attention_distance

__all__ = ["AttentionResult", "compute_attention", "upsample_to_volume", "reduce_layers_heads", "enrichment"]


def reduce_layers_heads(values: np.ndarray, layer: int | None = None, head: int | None = None) -> np.ndarray:
    """Select from a ``(layers, heads, …)`` array; ``None`` averages over that axis, negative indices count from
    the end (-1: the last layer)."""
    for name, index, size in (("layer", layer, values.shape[0]), ("head", head, values.shape[1])):
        if index is not None and not -size <= index < size:
            raise ValueError(f"{name} {index} does not exist: the encoder has {size} {name}s (0…{size - 1}, or "
                             f"-{size}…-1 from the end)")
    values = values.mean(axis=0) if layer is None else values[layer]
    return values.mean(axis=0) if head is None else values[head]


def enrichment(grid_map: np.ndarray) -> np.ndarray:
    """A non-negative patch map (g0, g1, g2) as multiples of the uniform map: ``map / map.sum() · N`` (N patches).

    The map is renormalised over the patches first, so the mass the cls token keeps on itself and on the
    registers does not count: a map that spreads its patch attention evenly is 1 everywhere."""
    grid_map = np.asarray(grid_map, dtype=np.float64)
    if grid_map.ndim != 3 or grid_map.min() < 0:
        raise ValueError(f"expected a non-negative 3-D patch map, got shape {grid_map.shape}, min {grid_map.min():.3g}")
    total = grid_map.sum()
    if total <= 0:
        raise ValueError("the attention map has no mass on the patches")
    return (grid_map / total * grid_map.size).astype(np.float32)


def upsample_to_volume(grid_map: np.ndarray, patch_size: int, mode: str = "nearest") -> np.ndarray:
    """A (g0, g1, g2) patch map → (g0·p, g1·p, g2·p) voxels.

    ``nearest`` gives every voxel of a patch its patch's value: the exact footprint of the token, and the
    map keeps its sum up to a factor p³. ``trilinear`` (``align_corners=False``) places each patch value at
    the patch centre and interpolates between centres: smoother for display, same geometry.
    """
    grid_map = np.asarray(grid_map, dtype=np.float32)
    if grid_map.ndim != 3:
        raise ValueError(f"expected a 3-D patch map, got shape {grid_map.shape}")
    if mode == "nearest":
        out = grid_map
        for axis in range(3):
            out = np.repeat(out, patch_size, axis=axis)
        return out
    if mode == "trilinear":
        t = torch.from_numpy(grid_map)[None, None]
        return F.interpolate(t, scale_factor=patch_size, mode="trilinear", align_corners=False)[0, 0].numpy()
    raise ValueError(f"unknown upsampling mode {mode!r}; use 'nearest' or 'trilinear'")


@dataclass(frozen=True)
class AttentionResult:
    """Attention of one encoder on one volume. Arrays are ``(layers, heads, g0, g1, g2)`` float32."""

    cls_to_patch: np.ndarray   # cls-token attention on each patch (probabilities, not renormalised)
    cls_to_prefix: np.ndarray  # (layers, heads): mass the cls row puts on cls + register tokens
    distance_mm: np.ndarray    # Eq. 1 attention distance of each patch, mm
    patch_size: int
    voxel_mm: tuple[float, float, float]

    @property
    def num_layers(self) -> int:
        return self.cls_to_patch.shape[0]

    @property
    def num_heads(self) -> int:
        return self.cls_to_patch.shape[1]

    @property
    def grid(self) -> tuple[int, int, int]:
        return tuple(self.cls_to_patch.shape[2:])

    @property
    def num_patches(self) -> int:
        return int(np.prod(self.grid))

    @property
    def volume_shape(self) -> tuple[int, int, int]:
        return tuple(g * self.patch_size for g in self.grid)

    def attention_map(self, layer: int | None = -1, head: int | None = None, mode: str = "nearest") -> np.ndarray:
        """cls-to-patch attention at full resolution; ``None`` averages over layers / heads."""
        return upsample_to_volume(reduce_layers_heads(self.cls_to_patch, layer, head), self.patch_size, mode)

    def enrichment_map(self, layer: int | None = -1, head: int | None = None, mode: str = "nearest") -> np.ndarray:
        """cls-to-patch attention as multiples of the uniform map (:func:`enrichment`), at full resolution."""
        return upsample_to_volume(enrichment(reduce_layers_heads(self.cls_to_patch, layer, head)), self.patch_size,
                                  mode)

    def distance_map(self, layer: int | None = None, head: int | None = None, mode: str = "nearest") -> np.ndarray:
        """Attention distance (mm) at full resolution; the default averages over heads and layers (Fig. 5)."""
        return upsample_to_volume(reduce_layers_heads(self.distance_mm, layer, head), self.patch_size, mode)

    def uniform_distance(self) -> float:
        """The attention distance (mm) uniform attention gives on this grid (``distance.uniform_attention_distance``):
        the reference a mean attention distance is read against."""
        return uniform_attention_distance(self.grid, self.patch_size, self.voxel_mm)

    def mean_distance_per_layer(self) -> np.ndarray:
        """(layers,) mean attention distance over heads and patches: how far each layer looks, in mm."""
        return self.distance_mm.reshape(self.num_layers, -1).mean(axis=1)


@torch.no_grad()
def compute_attention(encoder: torch.nn.Module, volume: torch.Tensor | np.ndarray,
                      voxel_mm: float | Sequence[float]) -> AttentionResult:
    """Run ``encoder`` once on one model-input ``volume`` (C, D0, D1, D2) and collect every layer's attention.

    ``voxel_mm`` is the voxel size of the model input (``distance.model_voxel_mm(profile)``). A volume with NaN
    or infinite voxels, or with another number of channels than the encoder's, is refused; one of another size
    than the encoder was built for (its position table then interpolated) or outside the windows' [0, 1] (raw HU?)
    is warned about: its maps come from inputs the encoder never saw.
    """
    x = torch.as_tensor(volume, dtype=torch.float32)
    if x.ndim == 5 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 4:
        raise ValueError(f"expected one volume (C, D0, D1, D2), got shape {tuple(x.shape)}")
    bad = int((~torch.isfinite(x)).sum())
    if bad:
        raise ValueError(f"the volume holds {bad} NaN or infinite voxels: every attention map would be NaN")
    config = getattr(encoder, "config", None)
    if config is not None and x.shape[0] != config.in_chans:
        raise ValueError(f"the volume has {x.shape[0]} channels, the encoder takes {config.in_chans} (the windows of "
                         f"the paper chain: data.preprocess.model_input)")
    if config is not None and tuple(x.shape[1:]) != (config.img_size,) * 3:
        warnings.warn(f"the encoder was built for {config.img_size}³ inputs and this volume is "
                      f"{'×'.join(map(str, x.shape[1:]))}: its position table is interpolated, so the maps come from "
                      f"inputs it was not trained on (preprocess with the encoder's profile)", stacklevel=2)
    if float(x.min()) < -0.1 or float(x.max()) > 1.1:  # windowed inputs lie in [0, 1]; raw HU reach -1000
        warnings.warn(f"the volume's values span {float(x.min()):.4g} … {float(x.max()):.4g}, outside the windowed "
                      f"[0, 1] the encoder takes (raw HU? data.preprocess.model_input windows them)", stacklevel=2)
    device = next(encoder.parameters()).device
    was_training = encoder.training
    encoder.eval()
    try:
        attentions = encoder.get_attention(x[None].to(device))
    finally:
        encoder.train(was_training)

    grid = encoder.patch_grid(x.shape[1:])
    patch_size = int(x.shape[1] // grid[0])
    prefix = encoder.num_prefix_tokens
    distances = torch.as_tensor(patch_distance_matrix(grid, patch_size, voxel_mm), dtype=torch.float32,
                                device=device)
    cls_rows, prefix_mass, eq1 = [], [], []
    for attn in attentions:  # (1, heads, T, T) per layer; only the small per-layer summaries are kept
        attn = attn[0].float()
        cls_rows.append(attn[:, 0, prefix:])
        prefix_mass.append(attn[:, 0, :prefix].sum(dim=-1))
        eq1.append(attention_distance(patch_attention_rows(attn, prefix), distances))
    layers, heads = len(attentions), attentions[0].shape[1]
    as_grid = lambda rows: torch.stack(rows).reshape(layers, heads, *grid).cpu().numpy()  # noqa: E731
    return AttentionResult(
        cls_to_patch=as_grid(cls_rows),
        cls_to_prefix=torch.stack(prefix_mass).cpu().numpy(),
        distance_mm=as_grid(eq1),
        patch_size=patch_size,
        voxel_mm=tuple(float(v) for v in np.broadcast_to(np.asarray(voxel_mm, dtype=float), (3,))),
    )

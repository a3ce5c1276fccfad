"""Attention distance, Eq. 1 of the paper (Methods, "Visual interpretation").

    D_i^(l,h) = Σ_j A_ij^(l,h) d(i, j)

``A^(l,h)`` is the patch-to-patch attention of head ``h`` in layer ``l`` and ``d(i, j)`` the distance in
millimetres between the centres of patches ``i`` and ``j`` in the model-input volume. ``D_i`` is how far,
on average, patch ``i`` gathers information from: an estimate of the receptive field in mm.

Our encoder also has a cls token (and optional register tokens), so a patch's softmax row spreads its mass
over the prefix tokens as well as the N patches. The paper writes ``A ∈ R^{N×N}`` and calls ``D_i`` a
weighted *average* distance, so :func:`patch_attention_rows` drops the prefix columns and renormalises
each patch row to sum to one over the patches before Eq. 1 is applied. Without that, a head that parks
attention on the cls token (an "attention sink") would look short-sighted for a reason that has nothing to
do with space.

Eq. 1 has a floor of 0 (attention on the patch itself) and a reference level set by the grid alone: for
uniform attention, the mean distance between patch centres (:func:`uniform_attention_distance`; 126 mm on the
paper's 8³ grid of 24 mm patches). It is not a ceiling: attention on distant patches goes beyond it, up to a
patch's farthest centre (291 mm from a corner of the paper's grid). A mean attention distance is read against
the reference: at or below it, the heads look no farther than a uniform spread would.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from scipy.spatial.distance import cdist

__all__ = [
    "model_voxel_mm", "patch_centres_mm", "patch_distance_matrix", "patch_attention_rows",
    "attention_distance", "uniform_attention_distance",
]


def model_voxel_mm(profile) -> float:
    """Voxel size (mm) of the model input for a profile: the ``eval_crop`` voxels at ``spacing_mm`` are
    resized to ``img_size`` (paper: 192 mm / 96 = 2 mm)."""
    from ..config import get_profile

    profile = get_profile(profile)
    return profile.spacing_mm * profile.eval_crop / profile.model.img_size


def _voxel_size(voxel_mm: float | Sequence[float]) -> np.ndarray:
    size = np.broadcast_to(np.asarray(voxel_mm, dtype=np.float64), (3,))
    if not np.all(size > 0):
        raise ValueError(f"voxel size must be positive, got {voxel_mm!r}")
    return size


def patch_centres_mm(grid: Sequence[int], patch_size: int, voxel_mm: float | Sequence[float]) -> np.ndarray:
    """Centres of the patches in mm, shape (N, 3), rows in token order (last axis fastest).

    Patch (i, j, k) covers voxels [i·p, (i+1)·p) × … so its centre is at ((i + ½)·p·s0, …) mm.
    """
    index = np.stack(np.meshgrid(*(np.arange(g) for g in grid), indexing="ij"), axis=-1).reshape(-1, 3)
    return (index + 0.5) * patch_size * _voxel_size(voxel_mm)


def patch_distance_matrix(grid: Sequence[int], patch_size: int,
                          voxel_mm: float | Sequence[float]) -> np.ndarray:
    """Euclidean distance ``d(i, j)`` in mm between patch centres, (N, N), token order."""
    centres = patch_centres_mm(grid, patch_size, voxel_mm)
    return cdist(centres, centres)


def patch_attention_rows(attention: torch.Tensor, num_prefix_tokens: int) -> torch.Tensor:
    """Patch-to-patch block of an attention matrix ``(..., T, T)``, each row renormalised to sum to one.

    Returns ``(..., N, N)`` with ``N = T - num_prefix_tokens``: the weights of Eq. 1 (see module doc).
    """
    block = attention[..., num_prefix_tokens:, num_prefix_tokens:]
    return block / block.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(block.dtype).tiny)


def attention_distance(patch_attention: torch.Tensor | np.ndarray,
                       distance_mm: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Eq. 1 for every patch at once: ``(..., N, N)`` weights × ``(N, N)`` distances → ``(..., N)`` mm."""
    weights = torch.as_tensor(patch_attention)
    d = torch.as_tensor(distance_mm, dtype=weights.dtype, device=weights.device)
    if weights.shape[-2:] != d.shape:
        raise ValueError(f"attention rows {tuple(weights.shape[-2:])} do not match the distance matrix "
                         f"{tuple(d.shape)}")
    return (weights * d).sum(dim=-1)


def uniform_attention_distance(grid: Sequence[int], patch_size: int, voxel_mm: float | Sequence[float]) -> float:
    """Eq. 1 averaged over patches for uniform attention (every row ``1/N``): the mean distance in mm between
    patch centres over all N² ordered pairs (self pairs, at 0 mm, included, as a uniform row includes them)."""
    return float(patch_distance_matrix(grid, patch_size, voxel_mm).mean())

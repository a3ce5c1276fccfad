"""MAE masking and loss (paper, Methods "Masked image modelling"; He et al. 2022).

- ``random_masking``: per volume, keep a uniformly random subset of ``N − round_down(N · ratio)`` patches
  (paper: ratio 0.75, i.e. 128 of 512 patches kept). The randomness comes in as ``noise`` (B, N), so the
  caller controls it (one generator for the global batch keeps DDP runs equal to single-process runs).
- ``mae_loss``: mean squared error per patch, averaged over the *masked* patches only; with
  ``norm_pix=True`` the target is each patch normalised by its own mean and variance (MAE's option).
"""
from __future__ import annotations

import torch

__all__ = ["random_masking", "mae_loss"]


def random_masking(tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    """Keep the patches with the smallest ``noise``.

    Returns ``(visible (B, n_keep, D), mask (B, N) with 1 = removed, ids_restore (B, N))``;
    ``ids_restore`` puts ``[visible, removed]`` tokens back in patch order.
    """
    if not 0 <= mask_ratio < 1:
        raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
    B, N, D = tokens.shape
    if noise.shape != (B, N):
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected {(B, N)}")
    n_keep = int(N * (1 - mask_ratio))
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    ids_keep = ids_shuffle[:, :n_keep]
    visible = torch.gather(tokens, 1, ids_keep.unsqueeze(-1).expand(-1, -1, D))
    mask = torch.ones(B, N, device=tokens.device)
    mask[:, :n_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return visible, mask, ids_restore


def mae_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, norm_pix: bool = False) -> torch.Tensor:
    """MSE on masked patches. ``pred``, ``target``: (B, N, P) patchified; ``mask``: (B, N), 1 = masked.

    With ``norm_pix`` the target is ``(x − mean) / sqrt(var + 1e-6)`` per patch (unbiased variance, as MAE).
    """
    if pred.shape != target.shape or mask.shape != pred.shape[:2]:
        raise ValueError(f"shapes disagree: pred {tuple(pred.shape)}, target {tuple(target.shape)}, "
                         f"mask {tuple(mask.shape)}")
    target = target.float()
    if norm_pix:
        mean = target.mean(dim=-1, keepdim=True)
        var = target.var(dim=-1, keepdim=True)
        target = (target - mean) / (var + 1e-6) ** 0.5
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum()

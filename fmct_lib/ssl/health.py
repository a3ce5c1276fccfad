"""Representation health: is the encoder still telling scans apart? (collapse shows here first)

Two batch statistics of the features ``z`` (n, d) a method produces, logged every step beside its loss:

- ``feature_std``: the standard deviation over the batch of the L2-normalised features, averaged over
  dimensions and multiplied by √d, so 1 is an isotropic spread and 0 a collapse onto one point (the
  collapse monitor of SimSiam, Chen & He 2021, §4; scaled to be independent of ``d``);
- ``effective_rank``: RankMe (Garrido et al., ICML 2023): ``exp(H(p))`` with ``p_k = σ_k / Σσ + ε`` the
  normalised singular values of ``z``; between 1 (every sample on one line) and ``min(n, d)``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["feature_std", "effective_rank", "representation_health"]

EPS = 1e-7  # RankMe's ε


def feature_std(z: torch.Tensor) -> float:
    """√d × mean over dimensions of the batch standard deviation of ``z / ‖z‖``."""
    z = F.normalize(z.detach().float(), dim=1)
    return float(z.std(dim=0).mean() * math.sqrt(z.shape[1]))


def effective_rank(z: torch.Tensor) -> float:
    """RankMe: ``exp(−Σ p_k log p_k)``, ``p_k = σ_k / Σσ + ε`` over the singular values of ``z``."""
    s = torch.linalg.svdvals(z.detach().float())
    p = s / s.sum() + EPS
    return float(torch.exp(-(p * p.log()).sum()))


def representation_health(z: torch.Tensor) -> dict:
    """Both statistics of a batch of features (at least two rows); NaN for features that are not finite (the
    training loop then stops on the loss: ``loop.TrainingDiverged``)."""
    if not bool(torch.isfinite(z).all()):
        return {"feature_std": math.nan, "effective_rank": math.nan}
    return {"feature_std": feature_std(z), "effective_rank": effective_rank(z)}

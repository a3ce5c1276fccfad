"""VICReg pretraining (Bardes, Ponce & LeCun, ICLR 2022): the project's batch-robust control method.

Not in the paper. It answers a question the paper's design leaves open: does a result depend on DINO's
sensitivity to batch size? DINO avoids collapse through centring and sharpening of an EMA teacher, which
needs many scans per batch to estimate the centre; at batch 16 on the demo it stays at the uniform
distribution (docs/experiments.md). VICReg has no teacher, no centre and no predictor: its loss keeps every
dimension's spread across the batch above a margin (variance), decorrelates the dimensions (covariance) and
pulls two views of one scan together (invariance), so collapse is prevented by the loss itself. We chose it
over BYOL for that reason (BYOL's collapse avoidance rests on a predictor and an EMA target, like DINO's, and
is known to depend on batch statistics) and because its loss is a closed formula a test can recompute.

For two views' expander outputs ``z_a, z_b`` (n, D) (all processes' rows gathered, as VICReg does):

    invariance  s = mean over rows and dims of (z_a − z_b)²
    variance    v = mean_j max(0, γ − √(Var_j(z) + ε))            for z_a and z_b, summed
    covariance  c = Σ_{i≠j} Cov(z)_{ij}² / D                      for z_a and z_b, summed
    loss        λ s + μ v + ν c,   λ = μ = 25, ν = 1, γ = 1, ε = 1e-4 (the paper's values)

(``Var`` and ``Cov`` with the n − 1 denominator, as ``torch.var`` and VICReg's code.) The expander is
VICReg's: three linear layers, the first two with batch normalisation and ReLU, 4× the input width in the
paper (8,192 for a 2,048-wide ResNet); a profile sets a narrower one (``pretrain_options``). Views are two
global crops of the DINO recipe (``data/augment``). The exported encoder is the backbone.
Batch normalisation runs on each process's rows (on CPU, torch has no synchronised batch norm).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ...data.augment import AugmentConfig, multicrop_views
from ...models.vit3d import VisionTransformer3d, vit_from_config
from ...ssl.health import representation_health
from ..distributed import all_gather_rows, mean_over_processes

__all__ = ["VICRegOptions", "VICRegTask", "vicreg_loss", "Expander"]

BASE_LR = 5e-4  # per 256 scans; no published AdamW value for a ViT: DINO's default, a profile may set its own


@dataclass(frozen=True)
class VICRegOptions:
    sim_coeff: float = 25.0     # λ, invariance
    std_coeff: float = 25.0     # μ, variance
    cov_coeff: float = 1.0      # ν, covariance
    expander_dim: int = 8192    # VICReg's (4× a 2,048-wide backbone)

    def to_dict(self) -> dict:
        return asdict(self)


def _gather(z: torch.Tensor) -> torch.Tensor:
    """Every process's rows, with gradients flowing back to this process's (VICReg's FullGatherLayer)."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        from torch.distributed.nn.functional import all_gather
        return torch.cat(all_gather(z))
    return z


def vicreg_loss(z_a: torch.Tensor, z_b: torch.Tensor, sim_coeff: float = 25.0, std_coeff: float = 25.0,
                cov_coeff: float = 1.0, gamma: float = 1.0, eps: float = 1e-4) -> tuple[torch.Tensor, dict]:
    """The VICReg loss of two batches of embeddings (n, D) and its three terms (floats, for the log).

    As the VICReg paper's Eq. 6 writes it: ``λ s + μ [v(Z) + v(Z')] + ν [c(Z) + c(Z')]``, the variance and the
    covariance terms summed over the two views. Its public code halves the variance sum (``/ 2`` per view), so
    with the same 25/25/1 the variance weighs twice as much here as there (``std_coeff=12.5`` matches the code);
    the released demo encoders were pretrained with the sum."""
    z_a, z_b = z_a.float(), z_b.float()
    invariance = F.mse_loss(z_a, z_b)
    z_a, z_b = _gather(z_a), _gather(z_b)
    n, d = z_a.shape
    variance = covariance = 0.0
    for z in (z_a, z_b):
        z = z - z.mean(dim=0)
        std = torch.sqrt(z.var(dim=0) + eps)
        variance = variance + F.relu(gamma - std).mean()
        cov = z.T @ z / (n - 1)
        covariance = covariance + (cov.pow(2).sum() - cov.diagonal().pow(2).sum()) / d
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance
    terms = {"invariance": invariance, "variance": variance, "covariance": covariance}
    return loss, {k: float(v.detach()) for k, v in terms.items()}


class Expander(nn.Sequential):
    """VICReg's expander: Linear-BN-ReLU, Linear-BN-ReLU, Linear."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__(nn.Linear(in_dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True),
                         nn.Linear(dim, dim))


class _VICRegModel(nn.Module):
    def __init__(self, backbone: VisionTransformer3d, expander: Expander):
        super().__init__()
        self.backbone, self.expander = backbone, expander

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(x)
        return features, self.expander(features)


class VICRegTask:
    """Backbone + expander on the cls token; two global crops per scan."""

    name = "vicreg"
    base_lr = BASE_LR
    Options = VICRegOptions
    exported = "backbone"

    @staticmethod
    def warmup_steps(profile, steps_per_epoch: int, total_steps: int) -> int:
        """The profile's warm-up epochs (VICReg: 10), at most the whole run."""
        return min(total_steps, round(profile.pretrain_warmup_epochs * steps_per_epoch))

    @staticmethod
    def run_entries(options: VICRegOptions, total_steps: int, steps_per_epoch: int) -> dict:
        return {"vicreg": options.to_dict()}

    @staticmethod
    def crops(run: dict) -> dict:
        return {"n_global": 2, "n_local": 0}

    def __init__(self, profile, augment: AugmentConfig, run: dict):
        self.cfg, self.augment = VICRegOptions(**run["vicreg"]), augment
        self.net = _VICRegModel(vit_from_config(profile.model), Expander(profile.model.embed_dim,
                                                                           self.cfg.expander_dim))
        self._terms: list[dict] = []              # each micro-step's loss terms
        self._features: list[torch.Tensor] = []   # the backbone's cls of the first views (health)

    @property
    def model(self) -> nn.Module:
        return self.net

    def to(self, device) -> "VICRegTask":
        self.net.to(device)
        return self

    def micro_step(self, model: nn.Module, canvases: torch.Tensor, generator: torch.Generator, rows: slice,
                   global_batch: int, step: int, autocast) -> torch.Tensor:
        view_a, view_b = multicrop_views(canvases, self.augment, generator, rows, global_batch)
        n = view_a.shape[0]
        with autocast():
            features, z = model(torch.cat([view_a, view_b]))
        c = self.cfg
        loss, terms = vicreg_loss(z[:n], z[n:], c.sim_coeff, c.std_coeff, c.cov_coeff)
        self._terms.append(terms)
        self._features.append(features[:n].detach().float())
        return loss

    def before_optimizer(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> dict:
        """The loss terms (mean over the step's micro-steps) and the health of the step's features, gathered
        from every process."""
        terms = {k: sum(t[k] for t in self._terms) / len(self._terms) for k in self._terms[0]}
        terms = mean_over_processes(terms, self._features[0].device)  # invariance is each process's rows'
        health = representation_health(all_gather_rows(torch.cat(self._features)))
        self._terms, self._features = [], []
        return {**terms, **health}

    def state_dict(self) -> dict:
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.net.load_state_dict(state["net"])

    def encoder(self) -> VisionTransformer3d:
        return self.net.backbone

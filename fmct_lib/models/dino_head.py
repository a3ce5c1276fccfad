"""The DINO projection head (paper, Methods "Self-distillation modelling"; Caron et al. 2021).

``cls embedding → MLP (3 Linear layers, GELU between) → bottleneck → L2 normalisation →
weight-normalised Linear to the prototypes``. Paper size: 768 → 2048 → 2048 → 256 → 65,536; profiles scale
it (``Profile.dino_*``).

Weight normalisation is written out explicitly (no ``torch.nn.utils`` hook) with the legacy key names the
authors' checkpoints use (``reference_code_facts.md`` §3.1), so their heads load key for key:

================================  =====================================================================
state-dict key                    meaning
================================  =====================================================================
``mlp.0.weight/bias``             Linear(in, hidden)            (GELU follows)
``mlp.2.weight/bias``             Linear(hidden, hidden)        (GELU follows)
``mlp.4.weight/bias``             Linear(hidden, bottleneck)
``last_layer.weight_g``           (out, 1) row norms ``g`` — a buffer filled with 1, never trained
``last_layer.weight_v``           (out, bottleneck) directions ``v`` — trained
================================  =====================================================================

The last layer computes ``x @ (g · v / ‖v‖)ᵀ`` with ``‖v‖`` the norm of each row. With ``g`` frozen at 1
("norm_last_layer" in DINO) every prototype is a unit vector, which is what keeps training stable.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["WeightNormLinear", "DINOHead"]


class WeightNormLinear(nn.Module):
    """Bias-free Linear with weight ``g · v / ‖v‖`` (row-wise); ``g`` is a frozen buffer of ones."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        v = torch.empty(out_dim, in_dim)
        nn.init.kaiming_uniform_(v, a=5 ** 0.5)  # nn.Linear's default initialisation
        self.weight_v = nn.Parameter(v)
        self.register_buffer("weight_g", torch.ones(out_dim, 1))

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_g * F.normalize(self.weight_v, dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)


class DINOHead(nn.Module):
    """MLP → L2-normalised bottleneck → weight-normalised prototypes. Returns logits (B, out_dim)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256,
                 nlayers: int = 3):
        super().__init__()
        if nlayers < 1:
            raise ValueError(f"nlayers must be at least 1, got {nlayers}")
        dims = [in_dim] + [hidden_dim] * (nlayers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(a, b))
            if i < nlayers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-12)
        return self.last_layer(x)

    @classmethod
    def from_profile(cls, profile) -> "DINOHead":
        return cls(profile.model.embed_dim, profile.dino_out_dim, profile.dino_hidden_dim,
                   profile.dino_bottleneck_dim)

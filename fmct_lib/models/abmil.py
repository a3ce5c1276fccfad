"""ABMIL: gated attention-based multiple-instance pooling (Ilse, Tomczak & Welling 2018, Eq. 9) as a head,
the paper's "DINOv3 with ABMIL" (Results "Comparison to alternative modelling choices"; Extended Data Fig. 4).

The instances are the encoder's tokens after its prefix (slices of a 2-D model, patches of a ViT); the prefix
(the first token, the encoder's own summary, and a ViT's register tokens, which hold no place in the volume) is
no instance. With instances h_k, the attention weights are

    a_k = softmax_k( wᵀ (tanh(V h_k + b_V) ⊙ sigmoid(U h_k + b_U)) ),

the bag is z = Σ_k a_k h_k, and a linear layer classifies z. The weights do not depend on the order of the
instances, so neither does the output.
"""
from __future__ import annotations

import torch
import torch.nn as nn

__all__ = ["ABMILHead"]


class ABMILHead(nn.Module):
    """Tokens (B, P + K, D) → logits (B, num_classes), pooling the K instances after the ``num_prefix_tokens``
    P (the cls token, and a ViT's registers: ``encoder.num_prefix_tokens``) by gated attention."""

    def __init__(self, dim: int, num_classes: int = 2, hidden_dim: int = 128, num_prefix_tokens: int = 1):
        super().__init__()
        self.num_prefix_tokens = num_prefix_tokens
        self.attention_v = nn.Linear(dim, hidden_dim)           # V, b_V: the tanh branch
        self.attention_u = nn.Linear(dim, hidden_dim)           # U, b_U: the sigmoid gate
        self.attention_w = nn.Linear(hidden_dim, 1, bias=False)  # w (a bias would cancel in the softmax)
        self.linear = nn.Linear(dim, num_classes)

    def attention(self, tokens: torch.Tensor) -> torch.Tensor:
        """The instances' attention weights a_k, (B, K), each row summing to one."""
        h = tokens[:, self.num_prefix_tokens:]
        scores = self.attention_w(torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h)))
        return torch.softmax(scores.squeeze(-1), dim=1)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The bag embedding z = Σ_k a_k h_k, (B, D)."""
        return torch.einsum("bk,bkd->bd", self.attention(tokens), tokens[:, self.num_prefix_tokens:])

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pool(tokens))

"""Classification heads on the encoder's tokens (paper, Methods "Fine tuning and probing").

- ``LinearHead``: the linear probe on the cls token — BatchNorm without affine (standardises the frozen
  features, as MAE's linear probe and the authors' ``LinearClassifier``) then one linear layer.
- ``AttentiveHead``: the attentive probe — a learned query attends over *all* tokens (cls and patches),
  the pooled vector goes to a linear layer. The paper chose it because MAE does not train the cls token.
  It computes what the authors intended, not their two slips (``reference_code_facts.md`` §4, §8.5): the
  attention logits are scaled once by 1/√head_dim (theirs scale twice), and several queries are
  reshaped head-by-head correctly (theirs is right only for one query).

Every head maps tokens (B, T, D) to logits (B, num_classes); binary tasks use two classes with softmax
cross-entropy, as the paper. ``Classifier`` chains an encoder and a head.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .abmil import ABMILHead

__all__ = ["LinearHead", "AttentiveHead", "Classifier", "build_head", "HEADS"]


class LinearHead(nn.Module):
    """BatchNorm1d(affine=False) → Linear on the cls token ``tokens[:, 0]``."""

    def __init__(self, dim: int, num_classes: int = 2):
        super().__init__()
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.norm(tokens[:, 0]))


class AttentiveHead(nn.Module):
    """Attention pooling with ``num_queries`` learned queries over all tokens, then a linear layer.

    Tokens are standardised per channel (BatchNorm1d, no affine), projected to keys and values
    (``kv``, no bias); each query attends per head with ``softmax(q·kᵀ/√d)``; the head outputs are
    concatenated, averaged over queries, standardised again and classified.
    """

    def __init__(self, dim: int, num_heads: int, num_classes: int = 2, num_queries: int = 1):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.query = nn.Parameter(torch.zeros(1, num_queries, dim))
        nn.init.trunc_normal_(self.query, std=0.02)
        self.norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.kv = nn.Linear(dim, 2 * dim, bias=False)
        self.pooled_norm = nn.BatchNorm1d(dim, affine=False, eps=1e-6)
        self.linear = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.linear.weight, std=0.01)
        nn.init.zeros_(self.linear.bias)

    def pool(self, tokens: torch.Tensor) -> torch.Tensor:
        """The attention-pooled vector (B, D), before the classifier."""
        B, T, D = tokens.shape
        H, Q = self.num_heads, self.query.shape[1]
        x = self.norm(tokens.transpose(1, 2)).transpose(1, 2)
        k, v = self.kv(x).reshape(B, T, 2, H, D // H).permute(2, 0, 3, 1, 4)  # each (B, H, T, d)
        q = self.query.expand(B, -1, -1).reshape(B, Q, H, D // H).transpose(1, 2)  # (B, H, Q, d)
        pooled = F.scaled_dot_product_attention(q, k, v)                          # (B, H, Q, d)
        return pooled.transpose(1, 2).reshape(B, Q, D).mean(dim=1)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.linear(self.pooled_norm(self.pool(tokens)))


HEADS = ("linear", "attentive", "abmil")


def build_head(kind: str, encoder: nn.Module) -> nn.Module:
    """A two-class head (absent, present: ``training.predict`` reads the second) sized for ``encoder`` (this
    library's or an external one: ``embed_dim``, ``num_heads``): ``linear`` (cls token), ``attentive`` (all tokens)
    or ``abmil`` (gated attention over the patch tokens: those after the cls token and any register tokens,
    ``encoder.num_prefix_tokens``; a 2-D model's slices after its first token)."""
    if kind == "linear":
        return LinearHead(encoder.embed_dim, 2)
    if kind == "attentive":
        return AttentiveHead(encoder.embed_dim, encoder.num_heads, 2)
    if kind == "abmil":
        return ABMILHead(encoder.embed_dim, 2, num_prefix_tokens=getattr(encoder, "num_prefix_tokens", 1))
    raise ValueError(f"unknown head {kind!r}; choose one of {HEADS}")


class Classifier(nn.Module):
    """``head(encoder.forward_features(x))``: volumes (B, 3, S, S, S) → logits (B, num_classes)."""

    def __init__(self, encoder: nn.Module, head: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder.forward_features(x))

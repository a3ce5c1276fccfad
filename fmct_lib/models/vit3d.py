"""3-D Vision Transformer encoder of FM-CT (paper, Methods "Model architecture").

ViT-B with patch 12 on a 3×96³ input: 8³ = 512 patch tokens plus a cls token (and optional register
tokens), pre-norm blocks, exact GELU, a trainable position table initialised with the 3-D sine-cosine
table. It computes exactly as the authors' encoder (``reference_code_facts.md`` §1):

- token order ``[cls, reg_1..reg_R, patch_0..patch_{N-1}]``; patches flattened with the last spatial
  axis fastest (``Conv3d`` output ``.flatten(2)``); the position table covers the patches only;
- LayerNorm eps 1e-5 inside the blocks, 1e-6 for the final norm;
- attention through ``scaled_dot_product_attention`` (flash / memory-efficient kernels on a GPU).

Parameter names follow timm's ``vision_transformer.py``; ``checkpoints.py`` maps the authors' names.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..config import ModelConfig

__all__ = [
    "PatchEmbed3d", "Attention", "Mlp", "Block", "VisionTransformer3d", "sincos_pos_embed_3d",
    "vit_from_config", "vit_base_p12_96",
]


def sincos_pos_embed_3d(grid: tuple[int, int, int], dim: int, temperature: float = 10000.0) -> torch.Tensor:
    """The fixed 3-D sine-cosine table, shape (g0·g1·g2, dim), rows in patch order (axis 0 slowest).

    With ``pd = dim / 6`` and ``w_m = temperature^(-m/pd)``, the patch at grid index (i, j, k) gets
    ``[sin(j·w), cos(j·w), sin(i·w), cos(i·w), sin(k·w), cos(k·w)]`` — the authors' channel order
    (``reference_code_facts.md`` §1.3), so a table we build equals theirs.
    """
    if dim % 6:
        raise ValueError(f"embedding dim {dim} must be divisible by 6 for a 3-D sine-cosine table")
    pd = dim // 6
    omega = 1.0 / temperature ** (torch.arange(pd, dtype=torch.float32) / pd)
    i, j, k = torch.meshgrid(*(torch.arange(g, dtype=torch.float32) for g in grid), indexing="ij")
    parts = []
    for axis in (j, i, k):
        angles = axis.reshape(-1, 1) * omega
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1)


class PatchEmbed3d(nn.Module):
    """Non-overlapping cubic patches → tokens, with the weights of a strided ``Conv3d``.

    A convolution whose stride equals its kernel is a matrix product over unfolded patches; computing it
    that way gives the same numbers as ``self.proj(x)`` and a faster backward on CPUs.
    """

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, *spatial = x.shape
        p = self.patch_size
        if any(s % p for s in spatial):
            raise ValueError(f"input spatial shape {tuple(spatial)} is not divisible by the patch size {p}")
        g0, g1, g2 = (s // p for s in spatial)
        # (B, C, g0, p, g1, p, g2, p) → (B, g0·g1·g2, C·p³): patches in grid order, last axis fastest
        patches = x.reshape(B, C, g0, p, g1, p, g2, p).permute(0, 2, 4, 6, 1, 3, 5, 7).reshape(B, -1, C * p ** 3)
        return F.linear(patches, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class Attention(nn.Module):
    """Multi-head self-attention. ``keep_attn`` makes the next forward also store its probabilities."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)
        self.keep_attn = False
        self.attn_probs: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        # q, k, v each (B, heads, T, head_dim); q occupies output rows [0, C), then k, then v.
        q, k, v = self.qkv(x).reshape(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if self.keep_attn:
            probs = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(self.head_dim), dim=-1)
            self.attn_probs = probs
            out = probs @ v
        else:
            out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(B, T, C))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()  # exact (erf) form, as the authors' MLP
        self.fc2 = nn.Linear(hidden_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))`` then ``x + mlp(norm2(x))``."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, qkv_bias: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-5)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.norm2 = nn.LayerNorm(dim, eps=1e-5)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer3d(nn.Module):
    """The FM-CT encoder. ``forward`` returns the cls embedding, ``forward_features`` all normed tokens."""

    def __init__(self, img_size: int = 96, patch_size: int = 12, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 num_register_tokens: int = 0):
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not divisible by patch_size {patch_size}")
        self.config = ModelConfig(img_size=img_size, patch_size=patch_size, in_chans=in_chans,
                                  embed_dim=embed_dim, depth=depth, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                  qkv_bias=qkv_bias, num_register_tokens=num_register_tokens)
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.num_register_tokens = num_register_tokens
        self.num_prefix_tokens = 1 + num_register_tokens
        self.grid_size = (img_size // patch_size,) * 3

        self.patch_embed = PatchEmbed3d(patch_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.register_tokens = (nn.Parameter(torch.zeros(1, num_register_tokens, embed_dim))
                                if num_register_tokens else None)
        # Trainable, initialised with the fixed table (as the authors' "sincos" embedding).
        self.pos_embed = nn.Parameter(sincos_pos_embed_3d(self.grid_size, embed_dim).unsqueeze(0))
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias) for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        if self.register_tokens is not None:
            nn.init.trunc_normal_(self.register_tokens, std=0.02)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    # -- tokens -----------------------------------------------------------------------------------
    def patch_grid(self, spatial_shape) -> tuple[int, int, int]:
        """Patch grid (g0, g1, g2) for an input of the given spatial shape (D0, D1, D2)."""
        p = self.patch_embed.patch_size
        return tuple(int(s) // p for s in spatial_shape)

    def pos_embed_for(self, grid: tuple[int, int, int]) -> torch.Tensor:
        """The position table for a patch grid; resampled trilinearly when it differs from the built one."""
        if tuple(grid) == self.grid_size:
            return self.pos_embed
        table = self.pos_embed.reshape(1, *self.grid_size, self.embed_dim).permute(0, 4, 1, 2, 3)
        table = F.interpolate(table, size=tuple(grid), mode="trilinear", align_corners=False)
        return table.permute(0, 2, 3, 4, 1).reshape(1, -1, self.embed_dim)

    def embed_patches(self, x: torch.Tensor) -> torch.Tensor:
        """Patch tokens with positions added, (B, N, D). MAE masks these before ``prepend_prefix``."""
        return self.patch_embed(x) + self.pos_embed_for(self.patch_grid(x.shape[2:]))

    def prepend_prefix(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[cls, registers, tokens]``; the prefix tokens get no position embedding."""
        B = tokens.shape[0]
        prefix = [self.cls_token.expand(B, -1, -1)]
        if self.register_tokens is not None:
            prefix.append(self.register_tokens.expand(B, -1, -1))
        return torch.cat(prefix + [tokens], dim=1)

    # -- forward ----------------------------------------------------------------------------------
    def forward_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Run the blocks and the final norm on a token sequence (prefix included)."""
        for block in self.blocks:
            tokens = block(tokens)
        return self.norm(tokens)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, D0, D1, D2) → (B, 1 + R + N, D), final norm applied."""
        return self.forward_tokens(self.prepend_prefix(self.embed_patches(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The cls embedding, (B, D)."""
        return self.forward_features(x)[:, 0]

    def get_intermediate_layers(self, x: torch.Tensor, n: int = 1, norm: bool = True) -> list[torch.Tensor]:
        """Outputs of the last ``n`` blocks, each (B, T, D), with the final norm applied if ``norm``."""
        tokens = self.prepend_prefix(self.embed_patches(x))
        outputs = []
        for i, block in enumerate(self.blocks):
            tokens = block(tokens)
            if i >= len(self.blocks) - n:
                outputs.append(self.norm(tokens) if norm else tokens)
        return outputs

    @torch.no_grad()
    def get_attention(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Attention probabilities of every block, a list of (B, heads, T, T) in token order.

        Recomputed explicitly as ``softmax(q kᵀ / √d)`` for this call only; the default path keeps the
        fused kernel.
        """
        attns = [block.attn for block in self.blocks]
        for a in attns:
            a.keep_attn = True
        try:
            self.forward_features(x)
            return [a.attn_probs for a in attns]
        finally:
            for a in attns:
                a.keep_attn, a.attn_probs = False, None


def vit_from_config(config: ModelConfig | dict) -> VisionTransformer3d:
    cfg = config.to_dict() if isinstance(config, ModelConfig) else dict(config)
    return VisionTransformer3d(**cfg)


def vit_base_p12_96(**overrides) -> VisionTransformer3d:
    """The paper's encoder: ViT-B/12 on 3×96³ (512 patch tokens + cls), 89.4 M parameters."""
    return vit_from_config(ModelConfig(**overrides))

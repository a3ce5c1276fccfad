"""The 3-D masked autoencoder (paper, Methods "Masked image modelling"; He et al. 2022).

The encoder is our ``VisionTransformer3d``: patch tokens get their positions (``embed_patches``), 75% of
them are dropped, the cls token is prepended to the visible ones, and the blocks run on those only
(``forward_tokens``). The decoder (paper: 8 blocks, width 768, 16 heads) embeds the encoder tokens,
appends a learned mask token for every removed patch, restores patch order, adds a *fixed* 3-D sine-cosine
position table, and predicts every patch's voxels; the loss (``ssl.mae.mae_loss``) looks at masked patches.

Element order of ``patchify`` (documented because checkpoints depend on it): a (B, C, D0, D1, D2) volume
with patch ``p`` becomes (B, N, p·p·p·C); the N patches are in the encoder's token order (grid axis 0
slowest, axis 2 fastest, as ``Conv3d(...).flatten(2)``); inside a patch the values run ``(i0, i1, i2, c)``
with the channel fastest — the authors' order, so their ``decoder_pred`` weights line up.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..ssl.mae import mae_loss, random_masking
from .vit3d import Block, VisionTransformer3d, sincos_pos_embed_3d

__all__ = ["patchify", "unpatchify", "MaskedAutoencoder3d"]


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """(B, C, D0, D1, D2) → (B, N, p³·C); see the module docstring for the element order."""
    B, C, *spatial = x.shape
    p = patch_size
    if len(spatial) != 3 or any(s % p for s in spatial):
        raise ValueError(f"expected (B, C, D0, D1, D2) with sides divisible by {p}, got {tuple(x.shape)}")
    g0, g1, g2 = (s // p for s in spatial)
    x = x.reshape(B, C, g0, p, g1, p, g2, p)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # B, g0, g1, g2, i0, i1, i2, C
    return x.reshape(B, g0 * g1 * g2, p ** 3 * C)


def unpatchify(patches: torch.Tensor, patch_size: int, grid: tuple[int, int, int], channels: int) -> torch.Tensor:
    """Inverse of ``patchify``: (B, N, p³·C) → (B, C, g0·p, g1·p, g2·p)."""
    B, N, P = patches.shape
    p, (g0, g1, g2) = patch_size, grid
    if N != g0 * g1 * g2 or P != p ** 3 * channels:
        raise ValueError(f"patches {tuple(patches.shape)} do not match grid {grid}, patch {p}, {channels} channels")
    x = patches.reshape(B, g0, g1, g2, p, p, p, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # B, C, g0, i0, g1, i1, g2, i2
    return x.reshape(B, channels, g0 * p, g1 * p, g2 * p)


class MaskedAutoencoder3d(nn.Module):
    """Encoder on visible patches + light decoder. ``forward(x, noise) → (loss, pred, mask)``."""

    def __init__(self, encoder: VisionTransformer3d, decoder_dim: int = 768, decoder_depth: int = 8,
                 decoder_heads: int = 16, mask_ratio: float = 0.75, norm_pix_loss: bool = False):
        super().__init__()
        self.encoder = encoder
        self.mask_ratio = mask_ratio
        self.norm_pix_loss = norm_pix_loss
        cfg = encoder.config
        self.patch_size, self.in_chans = cfg.patch_size, cfg.in_chans
        self.decoder_embed = nn.Linear(cfg.embed_dim, decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, decoder_dim))
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_3d(encoder.grid_size, decoder_dim).unsqueeze(0),
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(Block(decoder_dim, decoder_heads, cfg.mlp_ratio, qkv_bias=True)
                                            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(decoder_dim, eps=1e-6)
        self.decoder_pred = nn.Linear(decoder_dim, cfg.patch_size ** 3 * cfg.in_chans)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        for name, m in self.named_modules():
            if name.startswith("decoder") and isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def num_patches(self) -> int:
        g = self.encoder.grid_size
        return g[0] * g[1] * g[2]

    def forward_encoder(self, x: torch.Tensor, noise: torch.Tensor):
        """Visible tokens through the encoder → (latent (B, prefix + n_keep, D), mask, ids_restore)."""
        tokens = self.encoder.embed_patches(x)
        if tokens.shape[1] != self.num_patches:
            raise ValueError(f"input {tuple(x.shape)} gives {tokens.shape[1]} patches; the MAE was built for "
                             f"{self.num_patches} (input {self.encoder.config.img_size}³)")
        visible, mask, ids_restore = random_masking(tokens, self.mask_ratio, noise)
        return self.encoder.forward_tokens(self.encoder.prepend_prefix(visible)), mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """Predicted patches (B, N, p³·C) in patch order."""
        n_prefix = self.encoder.num_prefix_tokens
        x = self.decoder_embed(latent)
        prefix, visible = x[:, :n_prefix], x[:, n_prefix:]
        B, N = ids_restore.shape
        masked = self.mask_token.expand(B, N - visible.shape[1], -1)
        full = torch.cat([visible, masked], dim=1)
        full = torch.gather(full, 1, ids_restore.unsqueeze(-1).expand(-1, -1, full.shape[-1]))
        x = torch.cat([prefix, full + self.decoder_pos_embed.to(full.dtype)], dim=1)
        for block in self.decoder_blocks:
            x = block(x)
        return self.decoder_pred(self.decoder_norm(x))[:, n_prefix:]

    def forward(self, x: torch.Tensor, noise: torch.Tensor):
        """``noise`` (B, N) uniform in [0, 1) chooses the kept patches (smallest first)."""
        latent, mask, ids_restore = self.forward_encoder(x, noise)
        pred = self.forward_decoder(latent, ids_restore)
        loss = mae_loss(pred, patchify(x, self.patch_size), mask, self.norm_pix_loss)
        return loss, pred, mask

    @classmethod
    def from_profile(cls, encoder: VisionTransformer3d, profile, **kwargs) -> "MaskedAutoencoder3d":
        return cls(encoder, profile.mae_decoder_dim, profile.mae_decoder_depth, profile.mae_decoder_heads, **kwargs)

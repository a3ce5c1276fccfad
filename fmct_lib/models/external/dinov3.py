"""DINOv3 (Siméoni et al. 2025), a 2-D foundation model, applied slice by slice: the paper's first two
alternative modelling choices (Results "Comparison to alternative modelling choices"; Extended Data Fig. 4):
DINOv3 with ABMIL over the slices (``models.abmil``) and DINOv3 with mean pooling (the linear head on the
first token).

Each axial slice of the input, its three HU windows as R, G, B normalised with ImageNet's statistics, goes
through the ViT; its cls token (after the final norm) is that slice's token. The token set is [mean of the
slices, slice 1 … slice S], inferior to superior. The input size is the paper's (96³: 6 × 6 patches of 16 per
slice), as in the paper, DINOv3's rotary positions allowing any resolution; in training mode they are jittered
as in DINOv3's own training (``pos_embed_rescale``).

Through ``transformers`` (``DINOv3ViTModel``), not ``timm``: timm needs torchvision, whose CPU build for the
pinned torch is not on PyPI (its Linux wheel is built for CUDA and does not import with CPU torch).
Meta publishes the weights on Hugging Face in this layout (``facebook/dinov3-vitb16-pretrain-lvd1689m`` and
siblings; gated, DINOv3 License): ``config.json`` and ``model.safetensors`` with keys ``embeddings.*``,
``layer.<i>.*`` and ``norm.*``; transformers 5 keeps the blocks under ``model.layer.<i>`` and renames on
loading, as does this adapter. Without a folder, the architecture is the ViT-B/16 of that repository.
"""
from __future__ import annotations

import re

import torch

from .base import ExternalEncoder, axial_slices, hf_config, imagenet_normalise, model_files, offline_transformers

__all__ = ["DINOv3SliceEncoder", "build_dinov3", "PUBLISHED"]

# facebook/dinov3-vitb16-pretrain-lvd1689m; the other fields are DINOv3ViTConfig's defaults
PUBLISHED = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12, "num_hidden_layers": 12,
             "num_register_tokens": 4, "patch_size": 16}


class DINOv3SliceEncoder(ExternalEncoder):
    name = "DINOv3"
    published = ("Hugging Face facebook/dinov3-vitb16-pretrain-lvd1689m (config.json, model.safetensors), "
                 "DINOv3 License (gated)")

    def __init__(self, config):
        transformers = offline_transformers()
        super().__init__(embed_dim=config.hidden_size, num_heads=config.num_attention_heads, in_chans=3)
        self.architecture = (f"DINOv3 ViT on axial slices: {config.num_hidden_layers} layers, width "
                             f"{config.hidden_size}, patch {config.patch_size}, {config.num_register_tokens} registers")
        self.vit = transformers.DINOv3ViTModel(config)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        slices = axial_slices(x)                                          # (B, S, 3, H, W)
        images = imagenet_normalise(slices.flatten(0, 1), channel_dim=1)
        per_slice = self.vit(pixel_values=images).pooler_output.reshape(len(x), slices.shape[1], self.embed_dim)
        return torch.cat([per_slice.mean(dim=1, keepdim=True), per_slice], dim=1)


def build_dinov3(weights=None, *, strict: bool = True, **architecture) -> DINOv3SliceEncoder:
    """DINOv3 from a local model folder (``config.json`` + ``model.safetensors``) or weights file, or randomly
    initialised. ``architecture`` (``DINOv3ViTConfig`` fields) changes the published ViT-B/16."""
    transformers = offline_transformers()
    state, config = model_files(weights) if weights is not None else ({}, None)
    model = DINOv3SliceEncoder(hf_config(transformers.DINOv3ViTConfig, PUBLISHED, architecture, config, weights))
    state = {re.sub(r"^layer\.", "model.layer.", k): v for k, v in state.items()}
    return model.attach(model.vit, weights, state, strict=strict)

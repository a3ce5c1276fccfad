"""V-JEPA 2 (Assran et al. 2025), a video foundation model reading the slices as frames: the paper's third
alternative modelling choice (Results "Comparison to alternative modelling choices"; Extended Data Fig. 4).

The axial slices, inferior to superior, are the frames; each frame is its three HU windows as R, G, B,
normalised with ImageNet's statistics (V-JEPA 2's video processor). The encoder's output tokens (one per
tubelet: 2 slices × 16 × 16 voxels) are the token set, after their mean as the first token. The input size is
the paper's (96³), V-JEPA 2's rotary positions allowing any resolution; transformers derives the positions
from ``crop_size``, so the adapter is built for the input side (``input_size``) and refuses another.

Through ``transformers`` (``VJEPA2Model``). Meta publishes the weights on Hugging Face in this layout
(``facebook/vjepa2-vitl-fpc64-256`` and siblings, MIT): ``config.json`` and ``model.safetensors`` whose keys
are the model's own: the encoder under ``encoder.``, the pretraining predictor under ``predictor.``. The
encoder loads; the predictor (and the attentive ``pooler.``/``classifier.`` of the fine-tuned releases) is
dropped and listed. Without a folder, the architecture is the ViT-L of ``vjepa2-vitl-fpc64-256``.
"""
from __future__ import annotations

import torch

from .base import ExternalEncoder, axial_slices, hf_config, imagenet_normalise, model_files, offline_transformers

__all__ = ["VJEPA2VideoEncoder", "build_vjepa2"]

_ENCODER = "encoder."
_OTHERS = r"(predictor|pooler|classifier)\."


class VJEPA2VideoEncoder(ExternalEncoder):
    name = "V-JEPA 2"
    published = "Hugging Face facebook/vjepa2-vitl-fpc64-256 (config.json, model.safetensors), MIT"

    def __init__(self, config):
        transformers = offline_transformers()
        super().__init__(embed_dim=config.hidden_size, num_heads=config.num_attention_heads, in_chans=3)
        self.architecture = (f"V-JEPA 2 ViT on slices as frames: {config.num_hidden_layers} layers, width "
                             f"{config.hidden_size}, tubelet {config.tubelet_size}×{config.patch_size}², built for "
                             f"{config.crop_size}² frames")
        self.frame_size = config.crop_size
        self.encoder = transformers.VJEPA2Model(config).encoder   # the predictor only serves pretraining

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        frames = imagenet_normalise(axial_slices(x), channel_dim=2)     # (B, S, 3, H, W)
        if frames.shape[-2:] != (self.frame_size, self.frame_size):
            raise ValueError(f"{self.name} was built for {self.frame_size}² slices (input_size), got "
                             f"{tuple(frames.shape[-2:])}")
        patches = self.encoder(pixel_values_videos=frames).last_hidden_state
        return torch.cat([patches.mean(dim=1, keepdim=True), patches], dim=1)


def build_vjepa2(weights=None, *, strict: bool = True, input_size: int = 96, **architecture) -> VJEPA2VideoEncoder:
    """V-JEPA 2's encoder from a local model folder (``config.json`` + ``model.safetensors``) or weights file, or
    randomly initialised, for inputs of side ``input_size`` (the preprocessing's). ``architecture``
    (``VJEPA2Config`` fields) changes the published ViT-L."""
    transformers = offline_transformers()
    state, config = model_files(weights) if weights is not None else ({}, None)
    cfg = hf_config(transformers.VJEPA2Config, {}, architecture, config, weights)
    cfg.crop_size = cfg.frames_per_clip = input_size    # positions only: no weight depends on them
    model = VJEPA2VideoEncoder(cfg)
    state = {k[len(_ENCODER):] if k.startswith(_ENCODER) else k: v for k, v in state.items()}
    return model.attach(model.encoder, weights, state, strict=strict, drop=_OTHERS)

"""CT-FM (Pai et al. 2025, arXiv 2501.09001): a SegResNet encoder pretrained by contrastive SSL on 148,000 CTs
of the Imaging Data Commons, one of the paper's baselines (Methods "Baseline comparisons"; Fig. 1f, Extended
Data Fig. 3).

The published feature extractor (Hugging Face ``project-lighter/ct_fm_feature_extractor``, Apache-2.0) is
MONAI's ``SegResEncoder`` (``segresnet_ds``; spatial_dims 3, in_channels 1, init_filters 32, blocks_down
(1, 2, 2, 4, 4)) saved as a model folder: ``config.json`` with those four fields and ``model.safetensors``
whose keys are the MONAI module's own (``conv_init.weight``, ``layers.<level>.blocks.<i>.conv1.weight``, …).
The folder's ``config.json`` fixes the architecture; a bare ``.safetensors``/``.pt`` file is read as the
published one. Its deepest feature map (512 channels at 1/16 of the input) is the token set; its average
is the global feature, as in the model card's feature extraction.

CT-FM sees one channel: HU windowed to [−1024, 2048] and scaled to [0, 1], in SPL orientation, cropped to
the foreground (HU > 0), at 3 × 1 × 1 mm (S, P, L) in pretraining (``experiments/fm`` of project-lighter/CT-FM).
That chain is the ``ctfm`` preset of ``data.preprocess`` (``ctfm_spec``), as near as a ``PreprocessSpec``
allows: isotropic voxels at the in-plane 1 mm, and the foreground box resized to the profile's input size
(CT-FM's own head-CT evaluations used 2 mm in-plane voxels).
"""
from __future__ import annotations

import torch

from ..checkpoints import CheckpointError
from .base import ExternalEncoder, feature_map_tokens, heads_for, merged_config, model_files

__all__ = ["CTFMEncoder", "build_ctfm", "PUBLISHED"]

PUBLISHED = {"spatial_dims": 3, "in_channels": 1, "init_filters": 32, "blocks_down": [1, 2, 2, 4, 4]}


class CTFMEncoder(ExternalEncoder):
    name = "CT-FM"
    published = "Hugging Face project-lighter/ct_fm_feature_extractor (config.json, model.safetensors), Apache-2.0"
    preset = "ctfm"

    def __init__(self, spatial_dims: int, in_channels: int, init_filters: int, blocks_down):
        from monai.networks.nets.segresnet_ds import SegResEncoder
        width = init_filters * 2 ** (len(blocks_down) - 1)
        super().__init__(embed_dim=width, num_heads=heads_for(width), in_chans=in_channels)
        self.architecture = (f"MONAI SegResEncoder, init_filters {init_filters}, blocks_down {tuple(blocks_down)}, "
                             f"{in_channels} channel(s)")
        self.encoder = SegResEncoder(spatial_dims=spatial_dims, in_channels=in_channels, init_filters=init_filters,
                                     blocks_down=tuple(blocks_down))

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return feature_map_tokens(self.encoder(x)[-1])


def build_ctfm(weights=None, *, strict: bool = True, **architecture) -> CTFMEncoder:
    """CT-FM from a local model folder or weights file (``weights``), or randomly initialised. ``architecture``
    (fields of ``PUBLISHED``) changes the published architecture; a folder's ``config.json`` must agree."""
    unknown = set(architecture) - set(PUBLISHED)
    if unknown:
        raise ValueError(f"unknown CT-FM architecture fields {sorted(unknown)}; known: {sorted(PUBLISHED)}")
    state, config = model_files(weights) if weights is not None else ({}, None)
    if config is not None and set(config) - set(PUBLISHED):
        raise CheckpointError(f"{weights}/config.json: not a CT-FM feature extractor configuration (unknown fields "
                              f"{sorted(set(config) - set(PUBLISHED))})")
    cfg = merged_config(PUBLISHED, architecture, config, weights)
    model = CTFMEncoder(**cfg)
    return model.attach(model.encoder, weights, state, strict=strict)

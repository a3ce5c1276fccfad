"""Other foundation models standing in for the 3-D ViT downstream (paper, Methods "Baseline comparisons";
Results "Comparison to alternative modelling choices"): one adapter per file, each keeping the contract of
``base.ExternalEncoder``, and ``ENCODERS``, name → builder. A builder takes the local weights (a file or a
model folder; None: randomly initialised, with a warning) and ``strict``; docs/other_encoders.md says where
each model's weights are published. Google's CT Foundation model is reachable only through a web API and has
no adapter.
"""
from __future__ import annotations

from .base import EncoderDescription, ExternalEncoder, LoadReport
from .ctfm import build_ctfm
from .dinov3 import build_dinov3
from .merlin import build_merlin
from .resnet3d import build_resnet3d
from .vjepa2 import build_vjepa2

__all__ = ["ENCODERS", "build_encoder", "ExternalEncoder", "EncoderDescription", "LoadReport"]

ENCODERS = {
    "ctfm": build_ctfm,          # CT-FM, SegResNet encoder (MONAI), 148k CTs
    "merlin": build_merlin,      # Merlin, I3D ResNet-152 (MONAI), abdominal CT + reports
    "dinov3": build_dinov3,      # DINOv3 ViT (transformers) on axial slices
    "vjepa2": build_vjepa2,      # V-JEPA 2 ViT (transformers) on slices as frames
    "resnet3d": build_resnet3d,  # ResNet-50-3D (MONAI), the convolutional baseline
}


def build_encoder(name: str, weights=None, *, strict: bool = True, **options) -> ExternalEncoder:
    """The external encoder ``name`` with ``weights`` (a local file or model folder) loaded strictly, or
    randomly initialised when ``weights`` is None; ``options`` go to its builder."""
    if name not in ENCODERS:
        raise ValueError(f"unknown external encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name](weights, strict=strict, **options)

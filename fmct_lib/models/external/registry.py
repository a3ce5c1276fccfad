"""The external encoders by name: ``ENCODERS`` (name → builder), ``ADAPTERS`` (name → adapter class),
``build_encoder`` and ``SMALL_ARCHITECTURES`` (a randomly initialised stand-in's size at the small profiles)."""
from __future__ import annotations

from .base import ExternalEncoder
from .ctfm import CTFMEncoder, build_ctfm
from .dinov3 import DINOv3SliceEncoder, build_dinov3
from .merlin import MerlinEncoder, build_merlin
from .resnet3d import ResNet3dEncoder, build_resnet3d
from .vjepa2 import VJEPA2VideoEncoder, build_vjepa2

__all__ = ["ENCODERS", "ADAPTERS", "SMALL_ARCHITECTURES", "build_encoder"]

ENCODERS = {
    "ctfm": build_ctfm,          # CT-FM, SegResNet encoder (MONAI), 148k CTs
    "merlin": build_merlin,      # Merlin, I3D ResNet-152 (MONAI), abdominal CT + reports
    "dinov3": build_dinov3,      # DINOv3 ViT (transformers) on axial slices
    "vjepa2": build_vjepa2,      # V-JEPA 2 ViT (transformers) on slices as frames
    "resnet3d": build_resnet3d,  # ResNet-50-3D (MONAI), the convolutional baseline
}
# each name's adapter class: its model's name and its preprocessing preset, known without building it
ADAPTERS = {"ctfm": CTFMEncoder, "merlin": MerlinEncoder, "dinov3": DINOv3SliceEncoder, "vjepa2": VJEPA2VideoEncoder,
            "resnet3d": ResNet3dEncoder}

# A randomly initialised stand-in at the small profiles, scaled down as the profile scales the project's own ViT
# (DESIGN §5; toy: width 48, 2 blocks; demo: width 96, 4 blocks): same kind of network, same token layout, a
# compute the 2-core CI and demo can afford. The paper profile, and any build with weights, uses the published
# architecture (a model folder's config.json fixes it).
SMALL_ARCHITECTURES = {
    "toy": {"ctfm": {"init_filters": 4, "blocks_down": [1, 1, 1]},
            "merlin": {"layers": [1, 1, 1, 1], "widths": [4, 8, 16, 32]},
            "resnet3d": {"layers": [1, 1, 1, 1], "widths": [4, 8, 16, 32]},
            "dinov3": {"hidden_size": 32, "intermediate_size": 128, "num_attention_heads": 2, "num_hidden_layers": 2,
                       "num_register_tokens": 4, "patch_size": 8},
            "vjepa2": {"hidden_size": 32, "num_attention_heads": 2, "num_hidden_layers": 2, "patch_size": 8,
                       "pred_hidden_size": 16, "pred_num_attention_heads": 2, "pred_num_hidden_layers": 1}},
    "demo": {"ctfm": {"init_filters": 8, "blocks_down": [1, 1, 1, 1]},
             "merlin": {"layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64]},
             "resnet3d": {"layers": [1, 1, 1, 1], "widths": [8, 16, 32, 64]},
             "dinov3": {"hidden_size": 64, "intermediate_size": 256, "num_attention_heads": 4, "num_hidden_layers": 2,
                        "num_register_tokens": 4, "patch_size": 8},
             "vjepa2": {"hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2, "patch_size": 8,
                        "pred_hidden_size": 32, "pred_num_attention_heads": 2, "pred_num_hidden_layers": 1}},
}


def build_encoder(name: str, weights=None, *, strict: bool = True, **options) -> ExternalEncoder:
    """The external encoder ``name`` with ``weights`` (a local file or model folder) loaded strictly, or
    randomly initialised when ``weights`` is None; ``options`` go to its builder."""
    if name not in ENCODERS:
        raise ValueError(f"unknown external encoder {name!r}; choose one of {sorted(ENCODERS)}")
    return ENCODERS[name](weights, strict=strict, **options)

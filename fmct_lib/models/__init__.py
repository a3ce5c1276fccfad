"""Models: the 3-D ViT encoder, heads, MAE, and checkpoint loading."""
from .checkpoints import load_checkpoint, load_reference_checkpoint, save_checkpoint
from .vit3d import VisionTransformer3d, vit_base_p12_96, vit_from_config

__all__ = ["VisionTransformer3d", "vit_base_p12_96", "vit_from_config", "load_reference_checkpoint",
           "save_checkpoint", "load_checkpoint"]

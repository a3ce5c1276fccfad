"""Self-supervised objectives: DINO self-distillation and MAE masked modelling (paper, Methods)."""
from .dino import DINOConfig, dino_loss, ema_update, teacher_health, update_centre
from .mae import mae_loss, random_masking

__all__ = ["DINOConfig", "dino_loss", "ema_update", "teacher_health", "update_centre", "mae_loss",
           "random_masking"]

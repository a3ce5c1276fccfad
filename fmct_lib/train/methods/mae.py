"""MAE pretraining (paper, Methods, "Self-supervised pretraining"; He et al., 2022).

The encoder sees the 25% of patches left visible by random masking; a light decoder reconstructs the
masked ones (model: ``models/mae.py``, masking and loss: ``ssl/mae.py``). One view per scan. The paper's
base learning rate is 1.5e-3 per 256 scans with "a linear warmup on the first 5% steps". The exported
encoder is the MAE encoder.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from ...data.augment import AugmentConfig, mae_view
from ...models.mae import MaskedAutoencoder3d
from ...models.vit3d import VisionTransformer3d, vit_from_config

__all__ = ["BASE_LR", "MAEOptions", "MAETask"]

BASE_LR = 1.5e-3        # paper, Methods; scaled by global batch / 256
WARMUP_FRACTION = 0.05  # paper: "a linear warmup on the first 5% steps"
MASK_RATIO = 0.75       # MAE's


@dataclass(frozen=True)
class MAEOptions:
    norm_pix_loss: bool = False  # MAE's target option: each patch normalised by its own mean and variance


class MAETask:
    """Masked autoencoder: encoder on visible patches + decoder; masking noise from the view generator."""

    name = "mae"
    base_lr = BASE_LR
    Options = MAEOptions
    exported = "MAE encoder"

    @staticmethod
    def warmup_steps(profile, steps_per_epoch: int, total_steps: int) -> int:
        """The paper's "first 5% steps"."""
        return round(total_steps * WARMUP_FRACTION)

    @staticmethod
    def run_entries(options: MAEOptions, total_steps: int, steps_per_epoch: int) -> dict:
        return {"norm_pix_loss": options.norm_pix_loss, "mask_ratio": MASK_RATIO}

    @staticmethod
    def crops(run: dict) -> dict:
        return {}

    def __init__(self, profile, augment: AugmentConfig, run: dict):
        self.augment = augment
        self.mae = MaskedAutoencoder3d.from_profile(vit_from_config(profile.model), profile,
                                                    mask_ratio=run["mask_ratio"], norm_pix_loss=run["norm_pix_loss"])

    @property
    def model(self) -> nn.Module:
        return self.mae

    def to(self, device) -> "MAETask":
        self.mae.to(device)
        return self

    def micro_step(self, model: nn.Module, canvases: torch.Tensor, generator: torch.Generator, rows: slice,
                   global_batch: int, step: int, autocast) -> torch.Tensor:
        view = mae_view(canvases, self.augment, generator, rows, global_batch)
        noise = torch.rand(global_batch, self.mae.num_patches, generator=generator)[rows].to(view.device)
        with autocast():
            loss, _, _ = model(view, noise)
        return loss

    def before_optimizer(self, step: int) -> None:
        pass

    def after_step(self, step: int) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"mae": self.mae.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.mae.load_state_dict(state["mae"])

    def encoder(self) -> VisionTransformer3d:
        return self.mae.encoder

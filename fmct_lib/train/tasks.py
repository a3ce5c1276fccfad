"""What differs between DINO and MAE inside the one training loop (``loop.py``).

A task owns its models and method state and answers four questions for the loop: which module the
optimiser trains (``model``), the loss of one micro-batch (``micro_step``), what happens after the
optimiser step (``after_step``: EMA teacher and centre for DINO), and what to save (``state_dict``).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ..data.augment import AugmentConfig, mae_view, multicrop_views
from ..models.dino_head import DINOHead
from ..models.mae import MaskedAutoencoder3d
from ..models.vit3d import VisionTransformer3d, vit_from_config
from ..ssl.dino import (DINOConfig, cancel_last_layer_grads, clip_gradients, dino_loss, ema_update, teacher_health,
                        update_centre)
from .schedules import cosine_momentum, teacher_temperature

__all__ = ["DINOModel", "DINOTask", "MAETask", "build_task"]


class DINOModel(nn.Module):
    """Backbone + projection head on the cls token; all crops (same size) go through in one pass."""

    def __init__(self, backbone: VisionTransformer3d, head: DINOHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class DINOTask:
    """Student + EMA teacher (initialised from the student) + centre."""

    name = "dino"

    def __init__(self, profile, augment: AugmentConfig, config: DINOConfig, schedule: dict):
        self.cfg, self.augment, self.schedule = config, augment, schedule
        self.student = DINOModel(vit_from_config(profile.model), DINOHead.from_profile(profile))
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.centre = torch.zeros(profile.dino_out_dim)
        self._teacher_out: list[torch.Tensor] = []

    @property
    def model(self) -> nn.Module:
        return self.student

    def to(self, device) -> "DINOTask":
        self.student.to(device)
        self.teacher.to(device)
        self.centre = self.centre.to(device)
        return self

    def values(self, step: int) -> dict:
        s = self.schedule
        return {"momentum": cosine_momentum(step, s["total_steps"], self.cfg.momentum_teacher),
                "teacher_temp": teacher_temperature(step, s["teacher_temp_warmup_steps"],
                                                    self.cfg.warmup_teacher_temp, self.cfg.teacher_temp)}

    def micro_step(self, model: nn.Module, canvases: torch.Tensor, generator: torch.Generator, rows: slice,
                   global_batch: int, step: int, autocast) -> torch.Tensor:
        views = multicrop_views(canvases, self.augment, generator, rows, global_batch)
        n_global = self.cfg.n_global_crops
        with autocast():
            with torch.no_grad():
                teacher_out = self.teacher(torch.cat(views[:n_global])).float()
            student_out = model(torch.cat(views))
        self._teacher_out.append(teacher_out)
        return dino_loss(student_out, teacher_out, self.centre, self.cfg.student_temp,
                         self.values(step)["teacher_temp"], n_global)

    def before_optimizer(self, step: int) -> None:
        if step < self.schedule["freeze_last_layer_steps"]:
            cancel_last_layer_grads(self.student.head)
        clip_gradients(self.student, self.cfg.clip_grad)

    def after_step(self, step: int) -> dict:
        """EMA update of the teacher, centre update; returns the health signals of this step."""
        v = self.values(step)
        ema_update(self.teacher, self.student, v["momentum"])
        teacher_out = torch.cat(self._teacher_out)
        self._teacher_out = []
        health = teacher_health(teacher_out, self.centre, v["teacher_temp"])
        update_centre(self.centre, teacher_out.sum(0), teacher_out.shape[0], self.cfg.centre_momentum)
        return {**v, **health, "centre_norm": float(self.centre.norm())}

    def state_dict(self) -> dict:
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(), "centre": self.centre}

    def load_state_dict(self, state: dict) -> None:
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.centre.copy_(state["centre"])

    def encoder(self) -> VisionTransformer3d:
        """The exported encoder: the teacher's backbone, as DINO does (it is the better model)."""
        return self.teacher.backbone


class MAETask:
    """Masked autoencoder: encoder on visible patches + decoder; masking noise from the view generator."""

    name = "mae"

    def __init__(self, profile, augment: AugmentConfig, mask_ratio: float = 0.75, norm_pix_loss: bool = False):
        self.augment = augment
        self.mae = MaskedAutoencoder3d.from_profile(vit_from_config(profile.model), profile,
                                                    mask_ratio=mask_ratio, norm_pix_loss=norm_pix_loss)

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


def build_task(method: str, profile, augment: AugmentConfig, schedule: dict, dino: DINOConfig | None = None,
               norm_pix_loss: bool = False):
    if method == "dino":
        return DINOTask(profile, augment, dino or DINOConfig(), schedule)
    if method == "mae":
        return MAETask(profile, augment, norm_pix_loss=norm_pix_loss)
    raise ValueError(f"unknown method {method!r}; choose 'dino' or 'mae'")

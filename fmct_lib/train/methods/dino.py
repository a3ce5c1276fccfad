"""DINO pretraining (paper, Methods, "Self-supervised pretraining"; Caron et al., 2021).

Student and teacher ViTs with a projection head; the teacher, initialised from the student, is an EMA of
it; the student matches the centred, sharpened teacher distribution of the other crops (the loss and the
EMA are ``ssl/dino.py``). Two global and three local crops per scan (DESIGN §4). The paper's base learning
rate is 3e-4 per 256 scans, warmed up over the profile's warm-up epochs (paper: the first 5 of 1,000). The schedules are
set in epochs (learning-rate warm-up: the profile's ``pretrain_warmup_epochs``; teacher-temperature warm-up
and frozen prototypes: ``DINOConfig``, which a profile may set, ``pretrain_options``), converted to steps with
the run's steps per epoch, so a run follows them whatever its length; the teacher momentum follows the global
step over the whole run. The exported encoder is the teacher's backbone, as in DINO (it is the better model).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ...data.augment import AugmentConfig, multicrop_views
from ...models.dino_head import DINOHead
from ...models.vit3d import VisionTransformer3d, vit_from_config
from ...ssl.dino import (DINOConfig, cancel_last_layer_grads, clip_gradients, dino_cross_entropy, distribution_health,
                         ema_update, koleo_loss, teacher_targets, update_centre)
from ...ssl.health import representation_health
from ..distributed import all_gather_rows, mean_over_processes
from ..schedules import cosine_momentum, teacher_temperature

__all__ = ["BASE_LR", "DINOModel", "DINOTask"]

BASE_LR = 3e-4  # paper, Methods; scaled by global batch / 256


class DINOModel(nn.Module):
    """Backbone + projection head on the cls token. Given a list of crops, the backbone runs once per run of
    same-sized crops and the head once on all of them (DINO's ``MultiCropWrapper``), in one ``forward``."""

    def __init__(self, backbone: VisionTransformer3d, head: DINOHead):
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: torch.Tensor | list[torch.Tensor], return_cls: bool = False):
        """The head's logits of every crop, crop-major; with ``return_cls`` also the backbone's cls features."""
        if torch.is_tensor(x):
            x = [x]
        groups, start = [], 0
        for i in range(1, len(x) + 1):
            if i == len(x) or x[i].shape[2:] != x[start].shape[2:]:
                groups.append(torch.cat(x[start:i]))
                start = i
        cls = torch.cat([self.backbone(g) for g in groups])
        return (self.head(cls), cls) if return_cls else self.head(cls)


class DINOTask:
    """Student + EMA teacher (initialised from the student) + centre."""

    name = "dino"
    base_lr = BASE_LR
    Options = DINOConfig
    exported = "teacher backbone"

    @staticmethod
    def warmup_steps(profile, steps_per_epoch: int, total_steps: int) -> int:
        """The profile's warm-up epochs in steps (paper: 5 epochs), at most the whole run."""
        return min(total_steps, round(profile.pretrain_warmup_epochs * steps_per_epoch))

    @staticmethod
    def run_entries(options: DINOConfig, total_steps: int, steps_per_epoch: int) -> dict:
        """The hyper-parameters, and the teacher-temperature warm-up and frozen-prototype periods in steps."""
        return {"dino": options.to_dict(),
                "teacher_temp_warmup_steps": min(total_steps,
                                                 round(options.warmup_teacher_temp_epochs * steps_per_epoch)),
                "freeze_last_layer_steps": min(total_steps, round(options.freeze_last_layer_epochs * steps_per_epoch))}

    @staticmethod
    def crops(run: dict) -> dict:
        return {"n_global": run["dino"]["n_global_crops"], "n_local": run["dino"]["n_local_crops"]}

    def __init__(self, profile, augment: AugmentConfig, run: dict):
        self.cfg, self.augment, self.schedule = DINOConfig(**run["dino"]), augment, run
        self.student = DINOModel(vit_from_config(profile.model), DINOHead.from_profile(profile))
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.centre = torch.zeros(profile.dino_out_dim)
        self._teacher_out: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []  # the teacher distributions the loss used (health)
        self._koleo: list[float] = []
        self._features: list[torch.Tensor] = []  # the teacher backbone's cls of the global crops (health)

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
                features = self.teacher.backbone(torch.cat(views[:n_global]))
                teacher_out = self.teacher.head(features).float()
            # global and local crops may differ in size (profile.local_input_size)
            student_out, student_cls = model(views, return_cls=True)
        targets = teacher_targets(teacher_out, self.centre, self.values(step)["teacher_temp"], self.cfg.centring)
        self._teacher_out.append(teacher_out)
        self._targets.append(targets)
        self._features.append(features.float())
        loss = dino_cross_entropy(student_out, targets, self.cfg.student_temp, n_global)
        if self.cfg.koleo_weight:  # DINOv2: on each global crop's batch of student cls features
            b = views[0].shape[0]
            koleo = sum(koleo_loss(c) for c in student_cls[:n_global * b].chunk(n_global)) / n_global
            self._koleo.append(float(koleo.detach()))
            loss = loss + self.cfg.koleo_weight * koleo
        return loss

    def before_optimizer(self, step: int) -> None:
        if step < self.schedule["freeze_last_layer_steps"]:
            cancel_last_layer_grads(self.student.head)
        clip_gradients(self.student, self.cfg.clip_grad)

    def after_step(self, step: int) -> dict:
        """EMA update of the teacher, centre update; returns the health signals of this step."""
        v = self.values(step)
        ema_update(self.teacher, self.student, v["momentum"])
        teacher_out, targets, features = (torch.cat(x) for x in (self._teacher_out, self._targets, self._features))
        health = {**distribution_health(targets), **representation_health(all_gather_rows(features))}
        if self._koleo:  # each process's own rows (as DINOv2), so the mean over processes, as the loss
            health.update(mean_over_processes({"koleo": sum(self._koleo) / len(self._koleo)}, teacher_out.device))
        self._teacher_out, self._targets, self._features, self._koleo = [], [], [], []
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

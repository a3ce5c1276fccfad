"""Supervised training of one classifier on cached model inputs (paper, Methods, "Fine tuning and probing").

``fit`` trains a ``models.heads.Classifier`` (encoder + head) with the settings of ``HParams``: class-balanced
draws per epoch (``balanced_draw``) or a K-shot training set (``fewshot_draw``), the authors' flips and
intensity offsets (``augment_batch``), AdamW with a one-epoch warm-up and cosine decay over the cap, and one
convergence rule for every model (``Stopping``): score the validation split after every epoch, keep the best
state, stop when the validation AUROC has not improved for ``patience`` epochs, and never train past
``max_epochs`` (the cap). A model whose validation predictions are not finite has diverged: it stops there,
keeping its best earlier state, if any. The deep protocols (``protocols``: fine-tuned, probes, scratch, few-shot) train with it.
On a CUDA GPU the forward passes run under bf16 autocast (``precision.autocast_for``); fp32 on the CPU.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from ..progress import tqdm

from ..config import get_profile
from ..data.inputs import ProtocolSkipped, VolumeSource
from ..evaluate.metrics import auroc
from ..models.heads import Classifier
from .. import precision
from ..train.schedules import warmup_cosine

__all__ = ["HParams", "ConvergenceRule", "Stopping", "balanced_draw", "fewshot_draw", "augment_batch", "predict", "fit"]


@dataclass(frozen=True)
class HParams:
    """Training settings of one run; ``from_profile`` gives the paper's defaults at a profile's scale."""

    max_epochs: int                 # the cap; a model stops earlier by the convergence rule
    patience: int                   # epochs without a better validation AUROC before it stops
    batch_size: int
    subset: int                     # balanced draws per epoch; 0 = one shuffled pass over the training set
    lr_encoder: float = 1e-5
    lr_head: float = 1e-3
    weight_decay: float = 0.01
    optimizer: str = "adamw"        # adamw | adam | sgd (momentum 0.9); the scratch sweep varies it
    warmup_epochs: int = 1          # linear warm-up, then cosine decay to 0 at the cap
    clip_grad: float = 1.0
    flip_p: float = 0.1
    flip_axes: tuple[int, ...] = (0, 1, 2)
    shift: float = 0.1
    shift_p: float = 0.5

    @classmethod
    def from_profile(cls, profile, dataset: str | None = None, **overrides) -> "HParams":
        """The profile's settings for training on ``dataset`` (its draws per epoch: ``Profile.finetune_draws``)."""
        p = get_profile(profile)
        base = cls(max_epochs=p.finetune_max_epochs, patience=p.finetune_patience, batch_size=p.finetune_batch_size,
                   subset=p.finetune_draws(dataset), lr_encoder=p.finetune_lr_encoder)
        return replace(base, **overrides)


# ---------------------------------------------------------------------------------------- training
def balanced_draw(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """``size`` indices drawn with replacement, weight 1/(class count): about half positives per epoch."""
    labels = np.asarray(labels).astype(int)
    counts = np.bincount(labels, minlength=2)
    if (counts == 0).any():
        raise ProtocolSkipped(f"the training set has no {'positive' if counts[1] == 0 else 'negative'} scans")
    weights = 1.0 / counts[labels]
    return rng.choice(len(labels), size=size, replace=True, p=weights / weights.sum())


def fewshot_draw(labels: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """K positive and K negative indices, without replacement (the paper's K-shot training set)."""
    labels = np.asarray(labels).astype(int)
    picked = []
    for cls in (1, 0):
        pool = np.flatnonzero(labels == cls)
        if len(pool) < k:
            raise ProtocolSkipped(f"K={k} shots need {k} {'positive' if cls else 'negative'} training scans, "
                                  f"only {len(pool)} exist")
        picked.append(rng.choice(pool, size=k, replace=False))
    return np.sort(np.concatenate(picked))


def augment_batch(x: torch.Tensor, hp: HParams, generator: torch.Generator) -> torch.Tensor:
    """Random flips (p = ``flip_p`` per axis in ``flip_axes``), intensity offset (±``shift``, p = ``shift_p``).

    Only the drawn volumes are flipped (in the new tensor the offset makes), not the whole batch. With both
    probabilities 0 (a probe trained on cached features, which are not volumes) the batch is returned as it is."""
    if hp.flip_p == 0 and hp.shift_p == 0:
        return x
    B = x.shape[0]
    flips = [(axis, torch.rand(B, generator=generator) < hp.flip_p) for axis in hp.flip_axes]
    apply = torch.rand(B, generator=generator) < hp.shift_p
    offset = (torch.rand(B, generator=generator) * 2 - 1) * hp.shift * apply
    out = x + offset.view(B, 1, 1, 1, 1).to(x.device, x.dtype)
    for axis, flip in flips:
        if flip.any():
            rows = flip.nonzero().squeeze(1).to(x.device)
            out[rows] = out[rows].flip(2 + axis)
    return out


def _optimizer(model: Classifier, hp: HParams, frozen: bool) -> torch.optim.Optimizer:
    groups = [{"params": list(model.head.parameters()), "lr": hp.lr_head, "peak": hp.lr_head}]
    if not frozen:
        groups.append({"params": list(model.encoder.parameters()), "lr": hp.lr_encoder, "peak": hp.lr_encoder})
    if hp.optimizer == "adamw":
        return torch.optim.AdamW(groups, weight_decay=hp.weight_decay)
    if hp.optimizer == "adam":
        return torch.optim.Adam(groups, weight_decay=hp.weight_decay)
    if hp.optimizer == "sgd":
        return torch.optim.SGD(groups, momentum=0.9, weight_decay=hp.weight_decay)
    raise ValueError(f"unknown optimizer {hp.optimizer!r}; choose adamw, adam or sgd")


@torch.no_grad()
def predict(model: Classifier, source: VolumeSource, batch_size: int, device="cpu") -> np.ndarray:
    """P(positive) = softmax(logits)[:, 1] for every scan of ``source``, the model moved to ``device`` first (a kept
    classifier is loaded on the CPU)."""
    model.to(device).eval()
    out = precision.infer(lambda x: F.softmax(model(x).float(), dim=1)[:, 1],
                          source.batches(range(len(source)), batch_size, device), device)
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


@dataclass
class ConvergenceRule:
    """The convergence rule over one run's epochs: the epoch with the best validation AUROC so far is kept, and
    training stops once ``patience`` epochs have passed without a better one (``fit`` applies it after every
    epoch; ``tools/convergence_curves.py`` replays it on recorded curves to choose the patience)."""

    patience: int
    best_epoch: int | None = None
    best_val_auroc: float | None = None

    def improved(self, epoch: int, val_auroc: float) -> bool:
        """Record ``epoch``'s validation AUROC; True when it beats every earlier epoch (its state is the kept one)."""
        if self.best_val_auroc is None or val_auroc > self.best_val_auroc:
            self.best_epoch, self.best_val_auroc = epoch, val_auroc
            return True
        return False

    def should_stop(self, epoch: int) -> bool:
        """True once ``patience`` epochs have passed since the best one."""
        return self.best_epoch is not None and epoch - self.best_epoch >= self.patience


@dataclass
class Stopping:
    """Where and why a model stopped: ``reason`` is ``"rule"`` (no better validation AUROC for ``patience``
    epochs), ``"cap"`` (``max_epochs`` reached first), ``"cap: no validation AUROC"`` (no two-class
    validation split to apply the rule to) or ``"diverged"`` (validation predictions not finite: NaN or
    infinite); the kept state is the one of ``best_epoch`` (none: the last one)."""

    reason: str
    stopped_epoch: int
    stopped_step: int
    best_epoch: int | None
    best_step: int | None
    best_val_auroc: float | None
    patience: int
    max_epochs: int
    steps_per_epoch: int


def fit(model: Classifier, train: VolumeSource, train_labels, hp: HParams, *, frozen: bool,
        val: VolumeSource | None = None, val_labels=None, train_indices=None, seed: int = 0,
        device="cpu", progress: bool = True) -> tuple[list[dict], Stopping]:
    """Train ``model`` in place by the convergence rule; keep the state of the epoch with the best validation
    AUROC. Returns the epoch history and the ``Stopping`` record.

    Each epoch draws ``hp.subset`` rows class-balanced (``balanced_draw``) from the training rows, or from
    ``train_indices`` where given (few-shot: the paper trains it "with the same hyperparameter settings");
    ``hp.subset = 0`` passes each row once per epoch, shuffled. Without a two-class validation split the rule
    cannot apply: the model trains to the cap and the last state is kept.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    labels = np.asarray(train_labels).astype(int)
    model.to(device)
    for p in model.encoder.parameters():
        p.requires_grad_(not frozen)
    opt = _optimizer(model, hp, frozen)
    autocast, needs_scaler = precision.autocast_for(device)
    scaler = torch.amp.GradScaler(torch.device(device).type, enabled=needs_scaler)
    rows = np.arange(len(labels)) if train_indices is None else np.asarray(train_indices)
    full, rest = divmod(hp.subset or len(rows), hp.batch_size)
    steps_per_epoch = max(1, full + (rest >= 2))  # a last batch of one is skipped (below)
    total = hp.max_epochs * steps_per_epoch
    warmup = min(total, hp.warmup_epochs * steps_per_epoch)
    scored = val is not None and val_labels is not None and len(np.unique(val_labels)) == 2
    history, best_state, step, reason = [], None, 0, None
    rule = ConvergenceRule(hp.patience)
    # one bar of optimiser steps (to the cap; the rule usually stops it earlier): an epoch of a large model on a CPU
    # can take hours, so its steps show, and the epoch and best validation AUROC so far beside them
    bar = tqdm(total=total, desc="steps", unit="step", leave=False, disable=not progress)
    for epoch in range(hp.max_epochs):
        order = rows[balanced_draw(labels[rows], hp.subset, rng)] if hp.subset else rng.permutation(rows)
        model.train()
        if frozen:
            model.encoder.eval()
        losses = []
        # one reader per epoch (a loader's workers start once an epoch, not once a step)
        for s, batch in zip(range(0, len(order), hp.batch_size), train.batches(order, hp.batch_size, device)):
            idx = order[s:s + hp.batch_size]
            if len(idx) < 2:  # BatchNorm in the heads needs two samples
                continue
            x = augment_batch(batch, hp, gen)
            y = torch.as_tensor(labels[idx], device=device)
            for group in opt.param_groups:
                group["lr"] = warmup_cosine(step, total, warmup, group["peak"], 0.0)
            with autocast():
                logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if hp.clip_grad:
                scaler.unscale_(opt)
                torch.nn.utils.clip_grad_norm_(model.head.parameters(), hp.clip_grad)
                if not frozen:
                    torch.nn.utils.clip_grad_norm_(model.encoder.parameters(), hp.clip_grad)
            scaler.step(opt)
            scaler.update()
            losses.append(loss.detach())  # read once an epoch: no host sync per step on a GPU
            step += 1
            bar.update()
        record = {"epoch": epoch + 1, "step": step,
                  "loss": float(np.mean(torch.stack(losses).tolist())) if losses else float("nan")}
        history.append(record)
        if not scored:
            continue
        probabilities = predict(model, val, hp.batch_size, device=device)
        if not np.isfinite(probabilities).all():  # diverged: never a best epoch, and no use training on
            record["val_auroc"], reason = float("nan"), "diverged"
            break
        record["val_auroc"] = auroc(val_labels, probabilities)
        if rule.improved(record["epoch"], record["val_auroc"]):
            best_state = copy.deepcopy(model.state_dict())
            record["best"] = True
        bar.set_postfix(epoch=record["epoch"], best_val_auroc=f"{rule.best_val_auroc:.3f}", refresh=False)
        if rule.should_stop(record["epoch"]):
            reason = "rule"
            break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    stopping = Stopping(reason=reason or ("cap" if scored else "cap: no validation AUROC"),
                        stopped_epoch=history[-1]["epoch"], stopped_step=step,
                        best_epoch=rule.best_epoch,
                        best_step=history[rule.best_epoch - 1]["step"] if rule.best_epoch else None,
                        best_val_auroc=rule.best_val_auroc, patience=hp.patience, max_epochs=hp.max_epochs,
                        steps_per_epoch=steps_per_epoch)
    return history, stopping

"""The downstream protocols, one registry entry each (paper, Methods, "Fine tuning and probing", "Few-shot").

One binary classifier per task on the encoder:

- ``finetune``: pretrained encoder + linear head on the cls token, all weights trained.
- ``linear``: frozen pretrained encoder, linear head on the cls token (``models.heads.LinearHead``).
- ``attentive``: frozen pretrained encoder, learned-query attention pooling over all tokens.
- ``scratch``: randomly initialised encoder + linear head, all weights trained, with the paper's
  hyper-parameter sweep (``profile.scratch_grid``) chosen by validation AUROC.
- ``histogram``: no deep model, a reference (not in the paper): logistic regression on the histogram of
  each windowed input channel (``histogram``), its C chosen by validation AUROC.

Few-shot is not a protocol of its own: any protocol trains on a K-shot draw when ``run_protocol`` gets
``k_shot`` (``"fewshot"`` is fine-tuning with K shots). A new protocol is one ``Protocol`` entry below:
its head, whether the encoder is frozen, whether it needs a pretrained encoder, and how it trains.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch

from ..config import Profile
from ..data.inputs import VolumeSource
from ..models.checkpoints import load_encoder
from ..models.heads import Classifier, build_head
from .fit import HParams, fit, predict

__all__ = ["Protocol", "TrainingJob", "Trained", "PROTOCOLS", "get_protocol", "build_classifier",
           "trained_classifier"]


@dataclass
class TrainingJob:
    """Everything a protocol trains from: the settings, the training rows (or K-shot draw) and validation."""

    profile: Profile
    hp: HParams
    seed: int
    encoder: object                 # pretrained checkpoint path (None where the protocol needs none)
    input_size: int                 # the preprocessing's model input size, which the encoder must take
    train: VolumeSource
    train_labels: np.ndarray
    val: VolumeSource | None
    val_labels: np.ndarray
    train_indices: np.ndarray | None
    device: str
    progress: bool = True

    def fit_args(self) -> dict:
        return dict(train=self.train, train_labels=self.train_labels, val=self.val, val_labels=self.val_labels,
                    train_indices=self.train_indices, device=self.device, progress=self.progress)


@dataclass
class Trained:
    """A trained protocol: its classifier (None without a deep model), what it predicts with, its training
    history, and the hyper-parameters it chose on validation (with the scores of every point tried)."""

    model: Classifier | None
    predict: Callable[[VolumeSource], np.ndarray]
    history: list
    choice: dict | None = None
    grid: list | None = None


@dataclass(frozen=True)
class Protocol:
    name: str
    head: str | None        # head on the encoder (models.heads.build_head); None: no deep model
    frozen: bool            # encoder weights fixed: only the head trains, and only the head is kept
    needs_encoder: bool     # starts from a pretrained encoder (scratch: random init; histogram: no encoder)
    trainer: Callable[["Protocol", TrainingJob], Trained]

    scratch_grid: bool = False  # chooses its hyper-parameters from profile.scratch_grid (part of its run's identity)

    def train(self, job: TrainingJob) -> Trained:
        return self.trainer(self, job)


def build_classifier(protocol: Protocol, encoder, profile: Profile) -> Classifier:
    """The protocol's classifier on the pretrained ``encoder`` (a checkpoint path), or on a randomly
    initialised one where the protocol needs none."""
    from ..models.vit3d import vit_from_config
    model = load_encoder(encoder) if protocol.needs_encoder else vit_from_config(profile.model)
    return Classifier(model, build_head(protocol.head, model))


def trained_classifier(model: Classifier, job: TrainingJob, history: list, choice=None, grid=None) -> Trained:
    """A trained deep classifier as ``Trained``: it predicts with the job's batch size and device."""
    return Trained(model, partial(_predict, model, job), history, choice, grid)


def _predict(model: Classifier, job: TrainingJob, source: VolumeSource) -> np.ndarray:
    return predict(model, source, job.hp.batch_size, device=job.device)


def train_pretrained(protocol: Protocol, job: TrainingJob) -> Trained:
    """Fine-tuning and probes: the protocol's head on the pretrained encoder, trained by ``fit``."""
    model = build_classifier(protocol, job.encoder, job.profile)
    if model.encoder.config.img_size != job.input_size:
        raise ValueError(f"{job.encoder}: the encoder takes {model.encoder.config.img_size}³ inputs but the "
                         f"preprocessing makes {job.input_size}³ (profile {job.profile.name!r})")
    history = fit(model, hp=job.hp, frozen=protocol.frozen, seed=job.seed, **job.fit_args())
    return trained_classifier(model, job, history)


def train_scratch(protocol: Protocol, job: TrainingJob) -> Trained:
    """A random-init ViT per grid point (lr for all weights, weight decay, epochs, optimiser); the one with the
    best validation AUROC is kept (paper: "hyperparameter sweeps ... report the best")."""
    grid = job.profile.scratch_grid or {}
    keys = list(grid)
    results, best = [], None
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        lr = point.get("lr", job.hp.lr_head)
        trial_hp = replace(job.hp, lr_encoder=lr, lr_head=lr,
                           weight_decay=point.get("weight_decay", job.hp.weight_decay),
                           epochs=point.get("epochs", job.hp.epochs), optimizer=point.get("optimizer", job.hp.optimizer))
        torch.manual_seed(job.seed)
        model = build_classifier(protocol, None, job.profile)
        history = fit(model, hp=trial_hp, frozen=False, seed=job.seed, **job.fit_args())
        val_auc = max((h.get("val_auroc", float("nan")) for h in history), default=float("nan"),
                      key=lambda v: -np.inf if not np.isfinite(v) else v)
        results.append({**point, "val_auroc": val_auc})
        if best is None or (np.isfinite(val_auc) and not val_auc <= best[0]):
            best = (val_auc if np.isfinite(val_auc) else -np.inf, model, history, point)
    _, model, history, chosen = best
    return trained_classifier(model, job, history, chosen, results)


def train_histogram(protocol: Protocol, job: TrainingJob) -> Trained:
    """``histogram.fit_histogram_classifier`` on the training rows (or the K-shot draw), C chosen on
    validation."""
    from .histogram import fit_histogram_classifier, window_histograms

    def features(source, indices=None):
        indices = range(len(source)) if indices is None else indices
        return np.concatenate([window_histograms(x) for x in source.batches(indices, 4 * job.hp.batch_size)])

    labels = np.asarray(job.train_labels)
    rows = np.arange(len(labels)) if job.train_indices is None else np.asarray(job.train_indices)
    model, chosen = fit_histogram_classifier(features(job.train, rows), labels[rows],
                                             None if job.val is None else features(job.val), job.val_labels)
    return Trained(None, lambda source: model.predict_proba(features(source))[:, 1].astype(np.float64), [], chosen)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("finetune", head="linear", frozen=False, needs_encoder=True, trainer=train_pretrained),
    Protocol("linear", head="linear", frozen=True, needs_encoder=True, trainer=train_pretrained),
    Protocol("attentive", head="attentive", frozen=True, needs_encoder=True, trainer=train_pretrained),
    Protocol("scratch", head="linear", frozen=False, needs_encoder=False, trainer=train_scratch,
             scratch_grid=True),
    Protocol("histogram", head=None, frozen=True, needs_encoder=False, trainer=train_histogram),
)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {tuple(PROTOCOLS)} or 'fewshot'")
    return PROTOCOLS[name]

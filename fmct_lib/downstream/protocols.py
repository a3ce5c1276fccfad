"""The downstream protocols, one registry entry each (paper, Methods, "Fine tuning and probing", "Few-shot").

One binary classifier per task on the encoder:

- ``finetune``: pretrained encoder + linear head on the cls token, all weights trained.
- ``linear``: frozen pretrained encoder, linear head on the cls token (``models.heads.LinearHead``), solved as
  an L2 logistic regression to convergence on the cached features, its C chosen by validation AUROC.
- ``attentive``: frozen pretrained encoder, learned-query attention pooling over all tokens, trained on the
  cached tokens by the convergence rule.
- ``scratch``: randomly initialised encoder + linear head, all weights trained, with the paper's
  hyper-parameter sweep (``profile.scratch_grid``) chosen by validation AUROC.
- ``abmil``: frozen pretrained encoder, gated attention-based multiple-instance pooling over its tokens after
  the first (``models.abmil``; the paper's "DINOv3 with ABMIL" over slices, Extended Data Fig. 4), trained on
  the cached tokens by the convergence rule, as the attentive probe.
- ``histogram``: no deep model, a reference (not in the paper): logistic regression on the histogram of
  each windowed input channel (``histogram``), its C chosen by validation AUROC.

The pretrained encoder is our checkpoint (or the authors'), a path, or another foundation model named by a
``models.external.ExternalRef`` (Fig. 1f, Extended Data Figs 3-4), built by ``encoder_module``.

The frozen protocols never run their encoder twice on the same inputs: its tokens are computed once and
cached (``features``). Few-shot is not a protocol of its own: any protocol trains on a K-shot draw when ``run_protocol`` gets
``k_shot`` (``"fewshot"`` is fine-tuning with K shots). A new protocol is one ``Protocol`` entry below:
its head, whether the encoder is frozen, whether it needs a pretrained encoder, and how it trains.
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from ..config import Profile
from ..data.inputs import ProtocolSkipped, VolumeSource
from ..models.checkpoints import load_encoder
from ..models.external import ExternalRef
from ..models.heads import Classifier, build_head
from .logistic import choose_c, lbfgs_stopping
from .training import HParams, fit, predict

LINEAR_C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)  # inverse L2 strengths of the linear probe, chosen on validation
LINEAR_MAX_ITER = 10_000                            # L-BFGS iterations; the probe is solved to convergence well before

__all__ = ["Protocol", "TrainingJob", "Trained", "PROTOCOLS", "get_protocol", "build_classifier",
           "trained_classifier", "encoder_module"]


@dataclass
class TrainingJob:
    """Everything a protocol trains from: the settings, the training rows (or K-shot draw) and validation."""

    profile: Profile
    hp: HParams
    seed: int
    encoder: object                 # pretrained checkpoint path or ExternalRef (None where the protocol needs none)
    input_size: int                 # the preprocessing's model input size, which the encoder must take
    train: VolumeSource
    train_labels: np.ndarray
    val: VolumeSource | None
    val_labels: np.ndarray
    train_indices: np.ndarray | None
    device: str
    progress: bool = True
    feature_cache: Path | None = None   # where a frozen encoder's features are kept (``features``)

    def fit_args(self) -> dict:
        return dict(train=self.train, train_labels=self.train_labels, val=self.val, val_labels=self.val_labels,
                    train_indices=self.train_indices, device=self.device, progress=self.progress)


@dataclass
class Trained:
    """A trained protocol: its classifier (None without a deep model), what it predicts with, its training
    history, where and why it stopped (``fit.Stopping`` as a dict; None without a deep model), and the
    hyper-parameters it chose on validation (with the scores of every point tried)."""

    model: Classifier | None
    predict: Callable[[VolumeSource], np.ndarray]
    history: list
    stopping: dict | None = None
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


def encoder_module(encoder, profile: Profile) -> torch.nn.Module:
    """The pretrained encoder a run starts from: an external encoder built from its ``ExternalRef`` (at
    ``profile``), or our (or the authors') checkpoint at a path, loaded by ``load_encoder``."""
    return encoder.build(profile) if isinstance(encoder, ExternalRef) else load_encoder(encoder)


def build_classifier(protocol: Protocol, encoder, profile: Profile) -> Classifier:
    """The protocol's classifier on the pretrained ``encoder`` (a checkpoint path or an ``ExternalRef``), or on
    a randomly initialised ViT where the protocol needs none."""
    from ..models.vit3d import vit_from_config
    model = encoder_module(encoder, profile) if protocol.needs_encoder else vit_from_config(profile.model)
    return Classifier(model, build_head(protocol.head, model))


def _check_input_size(model: torch.nn.Module, job: "TrainingJob") -> None:
    """Our encoder must take the preprocessing's input size (an external one was checked against its preset)."""
    if not isinstance(job.encoder, ExternalRef) and model.config.img_size != job.input_size:
        raise ValueError(f"{job.encoder}: the encoder takes {model.config.img_size}³ inputs but the "
                         f"preprocessing makes {job.input_size}³ (profile {job.profile.name!r})")


def trained_classifier(model: Classifier, job: TrainingJob, history: list, stopping: dict, choice=None,
                       grid=None) -> Trained:
    """A trained deep classifier as ``Trained``: it predicts with the job's batch size and device."""
    return Trained(model, partial(_predict, model, job), history, stopping, choice, grid)


def _predict(model: Classifier, job: TrainingJob, source: VolumeSource) -> np.ndarray:
    return predict(model, source, job.hp.batch_size, device=job.device)


def train_pretrained(protocol: Protocol, job: TrainingJob) -> Trained:
    """Fine-tuning: the protocol's head on the pretrained encoder, all weights trained by ``fit``."""
    model = build_classifier(protocol, job.encoder, job.profile)
    _check_input_size(model.encoder, job)
    history, stopping = fit(model, hp=job.hp, frozen=protocol.frozen, seed=job.seed, **job.fit_args())
    return trained_classifier(model, job, history, asdict(stopping))


class _Tokens(torch.nn.Module):
    """The encoder of a probe trained on cached features: its inputs are already the frozen encoder's tokens."""

    def forward_features(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens


def _frozen(protocol: Protocol, job: TrainingJob):
    """The frozen encoder, its head, and its tokens for a source (computed once, ``features``)."""
    from .features import encoder_id, encoder_tokens
    encoder = encoder_module(job.encoder, job.profile)
    _check_input_size(encoder, job)
    identity = encoder_id(job.encoder)

    def tokens(source: VolumeSource) -> VolumeSource:
        return VolumeSource(encoder_tokens(encoder, identity, source, job.hp.batch_size, job.device, job.feature_cache))
    return encoder, build_head(protocol.head, encoder), tokens


def train_attentive_probe(protocol: Protocol, job: TrainingJob) -> Trained:
    """The attentive probe (and the ABMIL head): its head trained by ``fit`` (the convergence rule) on the frozen
    encoder's cached tokens. The inputs are not augmented: the features are computed once, from the evaluation
    view."""
    encoder, head, tokens = _frozen(protocol, job)
    probe = Classifier(_Tokens(), head)
    hp = replace(job.hp, flip_p=0.0, shift_p=0.0)
    args = {**job.fit_args(), "train": tokens(job.train), "val": tokens(job.val) if job.val is not None else None}
    history, stopping = fit(probe, hp=hp, frozen=True, seed=job.seed, **args)
    return Trained(Classifier(encoder, head),
                   lambda source: predict(probe, tokens(source), hp.batch_size, device=job.device),
                   history, asdict(stopping))


def train_linear_probe(protocol: Protocol, job: TrainingJob) -> Trained:
    """The linear probe: L2 logistic regression on the standardised cls token of the frozen encoder, solved to
    convergence (L-BFGS) for each C of ``LINEAR_C_GRID`` (whether it converged is recorded per C), the C chosen
    by validation AUROC; then written into the ``LinearHead`` (its BatchNorm centres, its linear layer holds the
    scaled regression), so the kept classifier is an ordinary one (``_write_logistic``)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    encoder, head, tokens = _frozen(protocol, job)
    cls = lambda source: tokens(source).data[:, 0].double().numpy()  # noqa: E731
    labels = np.asarray(job.train_labels).astype(int)
    rows = np.arange(len(labels)) if job.train_indices is None else np.asarray(job.train_indices)
    x, y = cls(job.train)[rows], labels[rows]
    if len(np.unique(y)) < 2:
        raise ProtocolSkipped(f"the training rows hold one class only ({'positives' if y.any() else 'negatives'})")
    scaler = StandardScaler().fit(x)
    val_x = scaler.transform(cls(job.val)) if job.val is not None else None
    c, model, record = choose_c(lambda c: LogisticRegression(C=c, class_weight="balanced", max_iter=LINEAR_MAX_ITER),
                                LINEAR_C_GRID, scaler.transform(x), y, val_x, job.val_labels, LINEAR_MAX_ITER,
                                "linear probe")
    _write_logistic(head, scaler, model)
    probe = Classifier(_Tokens(), head)
    choice = {"C": c, **record}
    return Trained(Classifier(encoder, head),
                   lambda source: predict(probe, tokens(source), job.hp.batch_size, device=job.device), [],
                   lbfgs_stopping(choice), choice=choice)


def _write_logistic(head: torch.nn.Module, scaler, model) -> None:
    """Write a fitted ``StandardScaler`` + binary ``LogisticRegression`` into a ``LinearHead``, so that it gives
    sklearn's ``predict_proba`` for any feature scale: the BatchNorm only centres (on the float32 mean: near the
    mean the subtraction is exact), the linear layer holds coef / scale (a feature's scale never meets the
    BatchNorm's eps), and the bias the intercept less what the float32 mean left out."""
    mean = scaler.mean_.astype(np.float32)
    weight = model.coef_[0] / scaler.scale_
    bias = model.intercept_[0] - weight @ (scaler.mean_ - mean.astype(np.float64))
    with torch.no_grad():
        head.norm.running_mean.copy_(torch.as_tensor(mean))
        head.norm.running_var.fill_(1.0 - head.norm.eps)
        head.linear.weight.zero_()
        head.linear.weight[1] = torch.as_tensor(weight)
        head.linear.bias.copy_(torch.as_tensor([0.0, bias]))


def train_scratch(protocol: Protocol, job: TrainingJob) -> Trained:
    """A random-init ViT per grid point (lr for all weights, weight decay, optimiser), each trained by the
    convergence rule (which replaces the paper's grid over epochs); the one with the best validation AUROC is
    kept (paper: "hyperparameter sweeps ... report the best")."""
    grid = job.profile.scratch_grid or {}
    keys = list(grid)
    results, best = [], None
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        lr = point.get("lr", job.hp.lr_head)
        trial_hp = replace(job.hp, lr_encoder=lr, lr_head=lr,
                           weight_decay=point.get("weight_decay", job.hp.weight_decay),
                           optimizer=point.get("optimizer", job.hp.optimizer))
        torch.manual_seed(job.seed)
        model = build_classifier(protocol, None, job.profile)
        history, stopping = fit(model, hp=trial_hp, frozen=False, seed=job.seed, **job.fit_args())
        val_auc = stopping.best_val_auroc if stopping.best_val_auroc is not None else float("nan")
        results.append({**point, "val_auroc": val_auc, "stopped_step": stopping.stopped_step,
                        "stop_reason": stopping.reason})
        if best is None or (np.isfinite(val_auc) and not val_auc <= best[0]):
            best = (val_auc if np.isfinite(val_auc) else -np.inf, model, history, stopping, point)
    _, model, history, stopping, chosen = best
    return trained_classifier(model, job, history, asdict(stopping), chosen, results)


def train_histogram(protocol: Protocol, job: TrainingJob) -> Trained:
    """``histogram.fit_histogram_classifier`` on the training rows (or the K-shot draw), C chosen on
    validation; its stopping record is the chosen fit's (``logistic.lbfgs_stopping``)."""
    from .histogram import fit_histogram_classifier, window_histograms

    def features(source, indices=None):
        indices = range(len(source)) if indices is None else indices
        return np.concatenate([window_histograms(x) for x in source.batches(indices, 4 * job.hp.batch_size)])

    labels = np.asarray(job.train_labels)
    rows = np.arange(len(labels)) if job.train_indices is None else np.asarray(job.train_indices)
    model, chosen = fit_histogram_classifier(features(job.train, rows), labels[rows],
                                             None if job.val is None else features(job.val), job.val_labels)
    return Trained(None, lambda source: model.predict_proba(features(source))[:, 1].astype(np.float64), [],
                   lbfgs_stopping(chosen), choice=chosen)


PROTOCOLS: dict[str, Protocol] = {p.name: p for p in (
    Protocol("finetune", head="linear", frozen=False, needs_encoder=True, trainer=train_pretrained),
    Protocol("linear", head="linear", frozen=True, needs_encoder=True, trainer=train_linear_probe),
    Protocol("attentive", head="attentive", frozen=True, needs_encoder=True, trainer=train_attentive_probe),
    Protocol("abmil", head="abmil", frozen=True, needs_encoder=True, trainer=train_attentive_probe),
    Protocol("scratch", head="linear", frozen=False, needs_encoder=False, trainer=train_scratch,
             scratch_grid=True),
    Protocol("histogram", head=None, frozen=True, needs_encoder=False, trainer=train_histogram),
)}


def get_protocol(name: str) -> Protocol:
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; choose one of {tuple(PROTOCOLS)} or 'fewshot'")
    return PROTOCOLS[name]

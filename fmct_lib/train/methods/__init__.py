"""The pretraining methods (paper, Methods, "Self-supervised pretraining"): one file each, one line here.

A method is a class; ``trainer.py`` asks it for the method-specific parts of a run and ``loop.py`` runs an
instance of it. Adding a method is one file under ``train/methods/`` and one line in ``METHODS``.

What the trainer reads from the class:

- ``name``: the registry key, stored as the run's ``method``;
- ``base_lr``: the paper's learning rate per 256 scans (a profile may override it, ``pretrain_base_lr``);
- ``Options``: a dataclass of the method's options; its fields are the only keys ``options`` accepts;
- ``warmup_steps(profile, steps_per_epoch, total_steps)``: the learning-rate warm-up in steps;
- ``run_entries(options, total_steps, steps_per_epoch)``: the method's entries of the run configuration
  (``config.json["run"]``); the task is later built from them alone, so a run resumes from its config;
- ``crops(run)``: overrides of the augmentation (``AugmentConfig``) the method needs, e.g. crop counts;
- ``exported``: what ``encoder()`` returns, in words (stored in the checkpoint's metadata).

What the loop calls on an instance ``method(profile, augment, run)``: ``name``, ``model`` (the module the
optimiser trains), ``to(device)``, ``micro_step(model, canvases, generator, rows, global_batch, step,
autocast)`` (the loss of one micro-batch), ``before_optimizer(step)`` (after unscaling, before the optimiser
step: clipping, frozen layers), ``after_step(step)`` (EMA, centring; returns metrics for the log),
``state_dict()`` / ``load_state_dict(state)`` (resume) and ``encoder()`` (the exported ViT).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields

from .dino import DINOTask
from .mae import MAETask
from .vicreg import VICRegTask

__all__ = ["METHODS", "get_method", "method_options"]

METHODS: dict[str, type] = {
    "dino": DINOTask,  # the paper's final model
    "mae": MAETask,
    "vicreg": VICRegTask,  # the batch-robust control (not in the paper)
}


def get_method(name: str) -> type:
    """The method class registered as ``name``; a ValueError lists the known methods."""
    try:
        return METHODS[name]
    except KeyError:
        raise ValueError(f"unknown method {name!r}; the known methods are {', '.join(METHODS)}") from None


def method_options(method: str | type, options=None, profile=None):
    """The method's options object from ``options``: None (the defaults), a dict of some of its fields,
    or the options object itself. A dict is laid over the profile's values for the method
    (``profile.pretrain_options``), which are laid over the method's defaults. An option the method does
    not have is a ValueError naming those it has."""
    m = get_method(method) if isinstance(method, str) else method
    if isinstance(options, m.Options):
        return options
    if options is None or isinstance(options, Mapping):
        options = {**(profile.pretrain_options.get(m.name, {}) if profile is not None else {}), **(options or {})}
    known = [f.name for f in fields(m.Options)]
    if not isinstance(options, Mapping):
        raise ValueError(f"options of method {m.name!r} are a dict or a {m.Options.__name__}, "
                         f"not a {type(options).__name__}")
    unknown = [k for k in options if k not in known]
    if unknown:
        raise ValueError(f"method {m.name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options are {', '.join(known) or 'none'}")
    return m.Options(**options)

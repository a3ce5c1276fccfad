"""The contract by which another foundation model stands in for the 3-D ViT downstream (paper, Methods
"Baseline comparisons"; Results "Comparison to alternative modelling choices"; Extended Data Figs 3-4).

The project consumes an encoder through ``forward_features`` and sizes its heads from ``embed_dim`` and
``num_heads`` (``heads.build_head``, ``heads.Classifier``). An :class:`ExternalEncoder` keeps that contract:

- ``forward_features(x)``: ``x`` is a batch of model inputs (B, in_chans, S, S, S), its channels the HU
  windows of ``preprocess_spec`` (the paper's three for most models); returns a token set (B, N, D) whose
  first token is the model's global feature (its cls token, or the mean of its features) and whose other
  tokens are what the model sees (slices, frames, feature-map voxels). ``forward(x)`` is the first token.
- ``embed_dim``, ``num_heads`` (how an attentive head splits D), ``in_chans``.
- ``preset``, ``preprocess_spec(profile)``: the preprocessing preset its inputs come from
  (``data.preprocess.PRESETS``): the paper chain, or the model's own chain where it was trained on another
  (``ctfm``, ``merlin``). A normalisation the model expects on top of the windows (ImageNet's, for DINOv3 and
  V-JEPA 2) is applied inside the adapter.
- ``description``: name, architecture, where the published weights come from, what was loaded.

Weights come only from a local file or model folder the user names, never from the network, and load
strictly (DESIGN §4): every tensor of the architecture must be in the file and every tensor of the file must
be used, except those of the publisher's other modules (a text tower, a predictor, a classifier), which are
dropped and listed in the ``LoadReport``. A mismatch raises ``CheckpointError`` naming the file and the keys;
``strict=False`` loads what matches and warns. Without weights the architecture is randomly initialised, with
a ``UserWarning``, so that the pipeline still runs where no weights are at hand (CI).
"""
from __future__ import annotations

import json
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn as nn

from ...data.preprocess import PreprocessSpec, preset_spec
from ..checkpoints import CheckpointError, load_state_dict_file

__all__ = ["ExternalEncoder", "EncoderDescription", "LoadReport", "load_weights", "model_files", "merged_config",
           "feature_map_tokens", "axial_slices", "imagenet_normalise", "heads_for", "offline_transformers",
           "hf_config"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class EncoderDescription:
    """What an external encoder is: ``weights`` is the local file loaded (None: randomly initialised)."""

    name: str
    architecture: str
    published: str      # where the publisher's weights are, and their licence
    weights: str | None
    status: str         # "loaded strictly", "loaded partially: …" or "randomly initialised: not <name>'s weights"

    def __str__(self) -> str:
        where = f" from {self.weights}" if self.weights else ""
        return f"{self.name} ({self.architecture}): {self.status}{where}; published weights: {self.published}"


@dataclass
class LoadReport:
    """What loading did with a file's keys; ``complete`` when nothing was missing, unexpected or misshapen."""

    source: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    misshapen: list[str] = field(default_factory=list)    # "key (file shape) (expected shape)"
    dropped: list[str] = field(default_factory=list)      # the publisher's other modules

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.misshapen)

    def problems(self) -> str:
        parts = (("missing", self.missing), ("unexpected", self.unexpected), ("shapes differ:", self.misshapen))
        return "; ".join(f"{name} {_listing(keys)}" for name, keys in parts if keys)

    def __str__(self) -> str:
        s = f"{self.source}: loaded {self.loaded} tensors" + (" strictly" if self.complete else f"; {self.problems()}")
        if self.dropped:
            s += f"; dropped {len(self.dropped)} of the publisher's other modules ({_listing(self.dropped, 4)})"
        return s


def _listing(keys: list[str], n: int = 12) -> str:
    return f"{keys[:n]}" + (f" and {len(keys) - n} more" if len(keys) > n else "")


def load_weights(module: nn.Module, state: dict, source: str, *, name: str, strict: bool = True,
                 drop: str | None = None) -> LoadReport:
    """Load ``state`` (keys already in ``module``'s names) into ``module``; keys matching the regex ``drop``
    belong to the publisher's other modules and are set aside. Strict unless ``strict=False``, which loads
    the keys that match and warns."""
    report = LoadReport(source)
    kept = {}
    for key, value in state.items():
        if drop is not None and re.match(drop, key):
            report.dropped.append(key)
        elif not torch.is_tensor(value):
            raise CheckpointError(f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor")
        else:
            kept[key] = value
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    report.missing = sorted(set(expected) - set(kept))
    report.unexpected = sorted(set(kept) - set(expected))
    report.misshapen = [f"{k} {tuple(kept[k].shape)} (expected {expected[k]})"
                        for k in sorted(set(kept) & set(expected)) if tuple(kept[k].shape) != expected[k]]
    if strict and not report.complete:
        raise CheckpointError(f"{source}: keys do not match {name}: {report.problems()} (strict=False loads the "
                              f"matching keys only)")
    usable = {k: v for k, v in kept.items() if expected.get(k) == tuple(v.shape)}
    module.load_state_dict(usable, strict=report.complete)
    report.loaded = len(usable)
    if not report.complete:
        warnings.warn(f"{source}: {name} loaded partially (strict=False): {report.problems()}", UserWarning,
                      stacklevel=3)
    return report


def model_files(path, weights_name: str = "model.safetensors") -> tuple[dict, dict | None]:
    """The tensors at ``path`` and the configuration beside them: a file (its tensors, no configuration) or a
    model folder as Hugging Face publishes one (``weights_name``, or its shards listed in
    ``<weights_name>.index.json``, and ``config.json`` where present; ``~`` is your home). Reads files only, never
    the network."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such weights file or model folder")
    if path.is_file():
        return _tensors(path), None
    config = json.loads((path / "config.json").read_text()) if (path / "config.json").is_file() else None
    if (path / weights_name).is_file():
        return _tensors(path / weights_name), config
    index = path / f"{weights_name}.index.json"
    if index.is_file():
        state = {}
        for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
            state.update(_tensors(path / shard))
        return state, config
    found = sorted(p.name for p in path.iterdir())
    raise CheckpointError(f"{path}: no {weights_name} (nor its shard index) in this folder; it holds {found}")


def _tensors(path: Path) -> dict:
    obj = load_state_dict_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict (or a checkpoint dict holding one), got "
                              f"{type(obj).__name__}")
    return obj


def merged_config(published: dict, overrides: dict, config: dict | None, source) -> dict:
    """The architecture to build: the published one, changed by the caller's ``overrides``, then by the model
    folder's ``config.json`` (``config``), which must not contradict an override."""
    def plain(v):
        return list(v) if isinstance(v, (list, tuple)) else v
    differ = sorted(k for k, v in overrides.items() if config and k in config and plain(config[k]) != plain(v))
    if differ:
        raise CheckpointError(f"{source}/config.json: {differ} differ from the architecture asked for "
                              f"({ {k: overrides[k] for k in differ} })")
    return {**published, **overrides, **(config or {})}


def feature_map_tokens(fmap: torch.Tensor) -> torch.Tensor:
    """A CNN's feature map (B, D, d, h, w) as a token set: [global average, the d·h·w voxels in order]."""
    tokens = fmap.flatten(2).transpose(1, 2)
    return torch.cat([tokens.mean(dim=1, keepdim=True), tokens], dim=1)


def axial_slices(x: torch.Tensor) -> torch.Tensor:
    """RAS volumes (B, C, X, Y, Z) → axial images (B, Z, C, Y, X), inferior to superior, each as a radiologist
    reads it: anterior at the top row, the patient's right on the left."""
    return x.permute(0, 4, 1, 3, 2).flip(-2, -1)


def imagenet_normalise(images: torch.Tensor, channel_dim: int) -> torch.Tensor:
    """(image − mean) / std with ImageNet's RGB statistics; the three windows, in [0, 1], stand for R, G, B."""
    shape = [1] * images.ndim
    shape[channel_dim] = 3
    mean = torch.tensor(IMAGENET_MEAN, dtype=images.dtype, device=images.device).reshape(shape)
    std = torch.tensor(IMAGENET_STD, dtype=images.dtype, device=images.device).reshape(shape)
    return (images - mean) / std


def offline_transformers():
    """``transformers`` with the Hugging Face hub switched off (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``): the
    adapters build from a configuration and read local files, and nothing may reach the network."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    try:
        import transformers
    except ImportError as e:
        raise ImportError("DINOv3 and V-JEPA 2 need transformers: pip install 'fmct[encoders]'") from e
    return transformers


def hf_config(config_class, published: dict, overrides: dict, config: dict | None, source):
    """A transformers configuration: ``merged_config`` of the published fields, the overrides and the folder's
    ``config.json``, which must be of the model's type."""
    if config is not None and config.get("model_type", config_class.model_type) != config_class.model_type:
        raise CheckpointError(f"{source}/config.json: model_type {config['model_type']!r}, expected "
                              f"{config_class.model_type!r}")
    return config_class.from_dict(merged_config(published, overrides, config, source))


def heads_for(dim: int, head_dim: int = 64) -> int:
    """Attention heads an attentive head uses on a model without its own: heads of ``head_dim`` channels
    (ViT-B's 64), fewer where ``dim`` does not divide, at least one."""
    heads = max(1, dim // head_dim)
    while dim % heads:
        heads -= 1
    return heads


class ExternalEncoder(nn.Module):
    """Base of the adapters: the checks and the description; an adapter implements ``tokens``, sets ``name``,
    ``architecture`` and ``published``, and sets ``preset`` where its model was trained on another chain than
    the paper's."""

    name = ""
    architecture = ""
    published = ""
    preset = "paper"    # the preprocessing preset of its inputs (data.preprocess.PRESETS)
    revision = 0        # raised when a fix changes what the adapter computes: part of its runs' identity

    def __init__(self, *, embed_dim: int, num_heads: int, in_chans: int):
        super().__init__()
        self.embed_dim, self.num_heads, self.in_chans = embed_dim, num_heads, in_chans
        self.weights: str | None = None
        self.load_report: LoadReport | None = None

    def preprocess_spec(self, profile="paper") -> PreprocessSpec:
        """The preprocessing the inputs come from: the adapter's ``preset`` at ``profile``."""
        return preset_spec(self.preset, profile)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_chans, S, S, S) → (B, N, embed_dim); token 0 is the global feature."""
        if x.ndim != 5 or x.shape[1] != self.in_chans:
            raise ValueError(f"{self.name} takes (B, {self.in_chans}, D, H, W) inputs (preprocessing "
                             f"{self.preprocess_spec().name!r}), got {tuple(x.shape)}")
        return self.tokens(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The global feature, (B, embed_dim)."""
        return self.forward_features(x)[:, 0]

    @property
    def description(self) -> EncoderDescription:
        if self.weights is None:
            status = f"randomly initialised: not {self.name}'s weights"
        elif self.load_report is not None and not self.load_report.complete:
            status = f"loaded partially (strict=False): {self.load_report.problems()}"
        else:
            status = "loaded strictly"
        return EncoderDescription(self.name, self.architecture, self.published, self.weights, status)

    def attach(self, module: nn.Module, weights, state: dict, *, strict: bool, drop: str | None = None):
        """Load the publisher's ``state`` (keys in ``module``'s names) into ``module`` from ``weights``, or
        announce a random initialisation when ``weights`` is None. Returns the encoder."""
        if weights is None:
            warnings.warn(f"{self.name}: randomly initialised: not {self.name}'s weights (pass weights=<a local "
                          f"file or model folder>; docs/other_encoders.md)", UserWarning, stacklevel=3)
            return self
        self.load_report = load_weights(module, state, str(weights), name=self.name, strict=strict, drop=drop)
        self.weights = str(weights)
        return self

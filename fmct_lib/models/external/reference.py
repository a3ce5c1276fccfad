"""An external encoder as the downstream runs name it (issue 27): ``ExternalRef(name, weights, options, seed)``.

Our encoders are named by their checkpoint file; an external encoder is named by what builds it: the adapter
(``ENCODERS``), its local ``weights`` (a file or model folder; None: randomly initialised from ``seed``) and the
builder's ``options`` (the architecture). A reference is small, frozen and picklable, so a sweep can send it to
worker processes, which build the encoder themselves.

Its ``identity`` names its runs and its cached features: ``<name>-<sha256 of the weights>[:16]`` for published
weights, ``<name>-random-s<seed>`` for a random initialisation, each followed by ``-<sha256 of the options>[:8]``
where options were given, and by ``-r<revision>`` before those where a fix changed what the adapter computes
(so runs and features made before it are not reused). Two weight files never share an identity, and a random build says so in every run
directory. The weights' sha256 is computed once, when the reference is made (a folder: over its files, names and
bytes). Its inputs come from its own preprocessing preset (``preset``, ``spec``; paper, Methods "Baseline
comparisons": "original preprocessing pipelines ... were used for Merlin and CT-FM"), and ``check_spec`` refuses
any other.
"""
from __future__ import annotations

import hashlib
import inspect
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ...data.preprocess import PreprocessSpec, preset_spec
from .base import ExternalEncoder
from .registry import ADAPTERS, ENCODERS, build_encoder

__all__ = ["ExternalRef", "EXTERNAL_PREFIX"]

EXTERNAL_PREFIX = "external:"   # how a run's signature names an external encoder: external:<identity>


@dataclass(frozen=True)
class ExternalRef:
    """The external encoder ``name`` with local ``weights`` (None: randomly initialised from ``seed``) and builder
    ``options`` (a dict, kept as sorted (key, value) pairs with lists as tuples)."""

    name: str
    weights: str | None = None
    options: tuple = ()
    seed: int = 0
    weights_sha256: str | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        if self.name not in ENCODERS:
            raise ValueError(f"unknown external encoder {self.name!r}; choose one of {sorted(ENCODERS)}")
        options = self.options if isinstance(self.options, Mapping) else dict(self.options)
        object.__setattr__(self, "options", tuple(sorted((str(k), _frozen(v)) for k, v in options.items())))
        if self.weights is not None:
            path = Path(self.weights).expanduser().resolve()
            if not path.exists():
                raise FileNotFoundError(f"{path}: no such weights file or model folder for {self.name}")
            object.__setattr__(self, "weights", str(path))
            object.__setattr__(self, "weights_sha256", _sha256_of(path))

    @property
    def model_name(self) -> str:
        """The model's name as its publisher writes it (``CT-FM``, ``Merlin`` …)."""
        return ADAPTERS[self.name].name

    @property
    def preset(self) -> str:
        """The preprocessing preset its inputs come from (``data.preprocess.PRESETS``)."""
        return ADAPTERS[self.name].preset

    @property
    def random(self) -> bool:
        return self.weights is None

    @property
    def identity(self) -> str:
        """What its runs and cached features are named by (module docstring)."""
        base = f"{self.name}-random-s{self.seed}" if self.random else f"{self.name}-{self.weights_sha256[:16]}"
        if ADAPTERS[self.name].revision:
            base += f"-r{ADAPTERS[self.name].revision}"
        if not self.options:
            return base
        options = json.dumps(dict(self.options), sort_keys=True)
        return f"{base}-{hashlib.sha256(options.encode()).hexdigest()[:8]}"

    @property
    def signature(self) -> str:
        """The encoder entry of a run's signature: ``external:<identity>``."""
        return EXTERNAL_PREFIX + self.identity

    def spec(self, profile="paper") -> PreprocessSpec:
        """The preprocessing of its inputs at ``profile``: its ``preset``."""
        return preset_spec(self.preset, profile)

    def check_spec(self, spec: PreprocessSpec, profile="paper") -> None:
        """Refuse inputs of another preprocessing than its own (``ValueError`` naming both and the fix)."""
        own = self.spec(profile)
        if spec != own:
            raise ValueError(f"{self.model_name} ({self.identity}) takes inputs of the {own.name!r} preprocessing "
                             f"({own.hash} at profile {getattr(profile, 'name', profile)!r}), not {spec.name!r} "
                             f"({spec.hash}): leave spec out, or pass spec=preset_spec({own.name!r}, profile)")

    def build(self, profile="paper") -> ExternalEncoder:
        """The encoder: its weights loaded strictly, or randomly initialised from ``seed`` (with the adapters'
        warning). A builder that is sized by the input (V-JEPA 2's ``input_size``) gets the preset's at
        ``profile`` unless the options set it."""
        options = dict(self.options)
        if "input_size" in inspect.signature(ENCODERS[self.name]).parameters:
            options.setdefault("input_size", self.spec(profile).input_size)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            return build_encoder(self.name, self.weights, **options)

    def describe(self) -> str:
        """One line: the model, and whether it has its publisher's weights or is randomly initialised."""
        if self.random:
            what = f"RANDOMLY INITIALISED (seed {self.seed}), not {self.model_name}'s weights"
        else:
            what = f"published weights {Path(self.weights).name} (sha256 {self.weights_sha256[:12]}…)"
        options = f"; architecture options {dict(self.options)}" if self.options else ""
        return f"{self.model_name}: {what}{options}"

    def to_dict(self) -> dict:
        """What a run's configuration records about it."""
        return {"name": self.name, "model": self.model_name, "weights": self.weights,
                "weights_sha256": self.weights_sha256, "options": dict(self.options),
                "seed": self.seed if self.random else None, "identity": self.identity}


def _frozen(value):
    """``value`` with lists (and tuples) as tuples, recursively, so that a reference hashes and compares."""
    if isinstance(value, (list, tuple)):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, Mapping):
        raise TypeError(f"an external encoder's option must be a number, string or list, got a mapping {value!r}")
    return value


def _sha256_of(path: Path) -> str:
    """The sha256 of a weights file, or of a model folder's files (each name and its bytes, hidden files left out)."""
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(p for p in path.iterdir()
                                                  if p.is_file() and not p.name.startswith("."))
    for file in files:
        if path.is_dir():
            digest.update(file.name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()

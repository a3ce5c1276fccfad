"""Checkpoints: our own safetensors format and the authors' released layouts (DESIGN §4).

Our format is one ``.safetensors`` file: the tensors, and in its header metadata the model configuration
as JSON (key ``fmct_config``) plus any user metadata. Files are written atomically (temp file + rename).

The authors' layouts (``reference_code_facts.md`` §2) load through one explicit key map, strictly: every
encoder parameter must be present, keys that belong to other modules (DINO head, MAE decoder) are
dropped and reported, and any other key is an error. Nothing is ever unpickled with code: ``.pth`` files
go through ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io import atomic_path
from .vit3d import VisionTransformer3d, vit_from_config

__all__ = [
    "save_checkpoint", "load_checkpoint", "load_encoder", "read_checkpoint_config", "load_state_dict_file",
    "load_reference_checkpoint", "reference_to_fmct_key", "LoadReport", "CheckpointError",
]
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


# ---------------------------------------------------------------------------------------------- ours
def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module | dict, config: dict,
                    metadata: dict | None = None) -> Path:
    """Write ``model``'s state dict (or a state dict) and ``config`` to ``path`` atomically."""
    path = Path(path)
    state = model.state_dict() if isinstance(model, torch.nn.Module) else model
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    meta = {"fmct_config": json.dumps(config, sort_keys=True)}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return path


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The configuration stored in one of our checkpoints (reads the header only)."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "fmct_config" not in meta:
        raise CheckpointError(f"{path}: not an fmct checkpoint (no 'fmct_config' in its metadata)")
    return json.loads(meta["fmct_config"])


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu"):
    """Load one of our encoder checkpoints → ``(encoder, config)``; the config's ``model`` builds it."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    config = read_checkpoint_config(path)
    if "model" not in config:
        raise CheckpointError(f"{path}: its configuration has no 'model' entry to build an encoder from")
    from safetensors.torch import load_file
    state = load_file(str(path), device=map_location)
    with torch.device("meta"):
        model = vit_from_config(config["model"])
    return _assign(model, state), config


def _assign(model: VisionTransformer3d, state: dict) -> VisionTransformer3d:
    """Load ``state`` strictly into a model built on the meta device (no wasted random initialisation).

    Floating-point tensors are copied as float32, so the model never aliases the caller's tensors.
    """
    state = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Tensors from a ``.safetensors`` or a ``.pth``/``.pt`` file, never executing code."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        return load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused — it contains objects other than tensors and plain containers, and loading it "
            f"would execute code. Re-save it as a plain state dict. ({str(e).splitlines()[0]})") from None


# ------------------------------------------------------------------------------------------ authors'
_PREFIXES = ("module.", "backbone.", "_orig_mod.")
_DROPPED = re.compile(r"^(head\.|decoder|mask_token)")
_KEY_MAP = [  # (authors' name, ours); applied as regex substitutions in order
    (r"^patch_embedding\.position_embeddings$", "pos_embed"),
    (r"^patch_embedding\.patch_embeddings\.", "patch_embed.proj."),
    (r"^blocks\.(\d+)\.att_norm\.", r"blocks.\1.norm1."),
    (r"^blocks\.(\d+)\.ffn_norm\.", r"blocks.\1.norm2."),
    (r"^blocks\.(\d+)\.mlp\.linear1\.", r"blocks.\1.mlp.fc1."),
    (r"^blocks\.(\d+)\.mlp\.linear2\.", r"blocks.\1.mlp.fc2."),
]


def reference_to_fmct_key(key: str) -> str:
    """Map one of the authors' encoder keys (prefixes already stripped) to ours."""
    for pattern, repl in _KEY_MAP:
        key = re.sub(pattern, repl, key)
    return key


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for p in _PREFIXES:
            if key.startswith(p):
                key, changed = key[len(p):], True
    return key


@dataclass
class LoadReport:
    """What ``load_reference_checkpoint`` did with the keys."""

    source: str
    which: str
    loaded: int = 0
    dropped: list[str] = field(default_factory=list)      # other modules' keys (head, decoder)
    config: dict = field(default_factory=dict)

    def __str__(self) -> str:
        c = self.config
        s = (f"{self.source} [{self.which}]: loaded {self.loaded} encoder tensors strictly "
             f"(width {c.get('embed_dim')}, depth {c.get('depth')}, heads {c.get('num_heads')}, "
             f"registers {c.get('num_register_tokens')}, qkv bias {c.get('qkv_bias')})")
        if self.dropped:
            groups = sorted({k.split(".")[0] for k in self.dropped})
            s += f"; dropped {len(self.dropped)} non-encoder keys ({', '.join(groups)})"
        return s


def _select(obj, which: str, source: str) -> dict:
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a state dict or a dict of state dicts, got {type(obj).__name__}")
    if "state_dict" in obj or "momentum_model_state_dict" in obj:
        key = {"student": "state_dict", "teacher": "momentum_model_state_dict"}.get(which)
        if key is None:
            raise ValueError(f"which must be 'student' or 'teacher', got {which!r}")
        state = obj.get(key)
        if not isinstance(state, dict):
            raise CheckpointError(f"{source}: the checkpoint holds no {which} weights ('{key}' is {state!r:.40})")
        return state
    return obj


def load_reference_checkpoint(path_or_state_dict, *, num_heads: int = 12, img_size: int = 96,
                              patch_size: int = 12, which: str = "student") -> VisionTransformer3d:
    """Build the matching encoder and load the authors' weights into it, strictly.

    Accepts a bare state dict, a DINO/MAE checkpoint dict (``state_dict`` = student, ``momentum_model_state_dict``
    = teacher, choose with ``which``), with ``module.``/``backbone.``/``_orig_mod.`` prefixes. Width, depth,
    MLP size, register tokens and qkv bias come from the keys; heads, input size and patch size (which the
    keys cannot tell) from the arguments. The returned encoder carries ``load_report`` (also logged).
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = str(path_or_state_dict)
        obj = load_state_dict_file(path_or_state_dict)
    else:
        source, obj = "<state dict>", path_or_state_dict
    raw = _select(obj, which, source)

    report = LoadReport(source=source, which=which)
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        key = _strip_prefixes(key)
        if _DROPPED.match(key):
            report.dropped.append(key)
            continue
        if not torch.is_tensor(value):
            raise CheckpointError(f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor")
        state[reference_to_fmct_key(key)] = value

    try:
        embed_dim, in_chans, *kernel = state["patch_embed.proj.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{source}: does not look like an FM-CT encoder state dict (missing {e})") from None
    if kernel != [patch_size] * 3:
        raise CheckpointError(f"{source}: patch kernel is {kernel}, but patch_size={patch_size} was given")
    n_reg = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                  depth=depth, num_heads=num_heads, mlp_ratio=mlp_dim / embed_dim,
                  qkv_bias="blocks.0.attn.qkv.bias" in state, num_register_tokens=n_reg)
    with torch.device("meta"):
        model = vit_from_config(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{source}: keys do not match the encoder: missing {missing[:10]}, "
                              f"unexpected {unexpected[:10]}")
    if state["pos_embed"].shape != expected["pos_embed"]:
        raise CheckpointError(f"{source}: position table {tuple(state['pos_embed'].shape)} does not fit "
                              f"img_size={img_size}, patch_size={patch_size} ({tuple(expected['pos_embed'])})")
    model = _assign(model, state)
    report.loaded, report.config = len(state), config
    model.load_report = report
    log.info("%s", report)
    return model


def load_encoder(path: str | os.PathLike) -> VisionTransformer3d:
    """An encoder from one of our checkpoints, or from the authors' released layouts."""
    try:
        return load_checkpoint(path)[0]
    except CheckpointError:
        return load_reference_checkpoint(path)

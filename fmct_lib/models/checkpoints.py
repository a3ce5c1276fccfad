"""Checkpoints: our own safetensors format and the authors' released layouts (DESIGN §4).

Our format is one ``.safetensors`` file: the tensors, and in its header metadata the model configuration
as JSON (key ``fmct_config``) plus any user metadata. Files are written atomically (temp file + rename).

The authors' layouts (``reference_code_facts.md`` §2) load through one explicit key map, strictly: every
encoder parameter must be present, keys that belong to other modules (DINO head, MAE decoder) are
dropped and reported, and any other key is an error. Nothing is ever unpickled with code: ``.pth`` files
go through ``torch.load(weights_only=True)``.

``load_encoder`` is the one entry point (the command line, the notebooks, the protocols): it tells the
formats apart by the file's first bytes (``checkpoint_format``), never by trying loaders in turn, and can be
asked for an expected architecture (``expect``), so a file that lacks a block is refused, not loaded shallower.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from ..config import ModelConfig
from ..io import atomic_path
from .vit3d import VisionTransformer3d, vit_from_config

__all__ = [
    "save_checkpoint", "load_checkpoint", "load_encoder", "read_checkpoint_config", "recorded_config",
    "authors_method", "chain_warning", "load_state_dict_file",
    "load_reference_checkpoint", "reference_to_fmct_key", "checkpoint_format", "LoadReport", "CheckpointError",
    "ARCHITECTURES",
]
log = logging.getLogger(__name__)

# named architectures ``expect`` accepts: ViT-B/12 on 96³ is the paper's and the only one the authors released
# (with or without register tokens and qkv bias, which the keys tell)
ARCHITECTURES = {"ViT-B": dict(img_size=96, patch_size=12, in_chans=3, embed_dim=768, depth=12, num_heads=12,
                               mlp_ratio=4.0)}


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


# -------------------------------------------------------------------------------------------- format
def checkpoint_format(path: str | os.PathLike) -> str:
    """What a file holds, from its first bytes: ``"safetensors"``, ``"torch"`` (``torch.save``'s zip) or
    ``"pickle"`` (the legacy ``torch.save`` stream). A missing file raises ``FileNotFoundError``; an empty,
    truncated or foreign one ``CheckpointError``."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a folder, not a checkpoint file")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    # safetensors first: its first 8 bytes are the header's length, which can begin as a pickle stream does
    # (a 640-byte header is b"\x80\x02…"); a pickle's would claim more bytes than the file holds
    header_length = int.from_bytes(head[:8], "little")
    if head[8:9] == b"{" and header_length <= size - 8:
        return "safetensors"
    if head[:4] == b"PK\x03\x04":
        return "torch"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle"
    if head[8:9] == b"{":
        raise CheckpointError(f"{path}: truncated safetensors file (its header claims {header_length} bytes, the "
                              f"file holds {size})")
    raise CheckpointError(f"{path}: not a checkpoint: neither safetensors nor a PyTorch file (it starts with "
                          f"{head[:8]!r})")


def _safetensors(path: Path, what: str = "tensors"):
    """The metadata (``what="metadata"``) or the tensors of a safetensors file; a damaged file raises
    ``CheckpointError`` naming it."""
    try:
        if what == "metadata":
            with safe_open(str(path), framework="pt") as f:
                return f.metadata() or {}
        return load_file(str(path))
    except SafetensorError as e:
        raise CheckpointError(f"{path}: damaged safetensors file ({e})") from None


def _torch_load(path: Path):
    """``torch.load(weights_only=True)``: tensors and plain containers only; a refusal names the file and
    torch's own reason."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path}: refused by torch.load(weights_only=True): {_torch_reason(e)}. Only tensors and plain "
            f"containers are loaded, never objects whose unpickling could execute code; if you trust the file, "
            f"re-save its state dict alone.") from None
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        raise CheckpointError(f"{path}: damaged PyTorch file ({_torch_reason(e)})") from None


def _torch_reason(error: Exception) -> str:
    """The line of torch's message that says what went wrong (not its advice to load the file unsafely)."""
    advice = ("Weights only load failed", "(1)", "(2)", "Check the documentation", "In PyTorch", "Please file an issue")
    lines = []
    for line in str(error).splitlines():
        line = re.sub(r"\x1b\[[0-9;]*m", "", line).strip()
        if "WeightsUnpickler error:" in line:
            line = line.split("WeightsUnpickler error:", 1)[1].strip()
        elif line.startswith(advice):
            continue
        if line:
            lines.append(line)
    reason = lines[0] if lines else type(error).__name__
    return reason.split(" Please use ")[0].split(". This is an internal")[0].rstrip(".")


def load_state_dict_file(path: str | os.PathLike) -> dict:
    """Tensors from a safetensors or a ``torch.save`` file (told apart by content), never executing code."""
    path = Path(path)
    return _safetensors(path) if checkpoint_format(path) == "safetensors" else _torch_load(path)


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
        _sort_metadata(tmp)
    return path


def _sort_metadata(path: Path) -> None:
    """Sort a safetensors header's metadata keys, in place. safetensors writes them in a hash map's order, which
    changes from call to call, so the same tensors and configuration gave files of different sha256, and a run,
    cache or figure keyed by it (``downstream.features.encoder_id``) took a resumed pretraining's encoder for
    another. The keys and values are the same, so the header keeps its length (its padding is spaces)."""
    with open(path, "r+b") as f:
        size = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(size))
        meta = header.pop("__metadata__", None)
        if not meta or len(meta) < 2:
            return
        text = json.dumps({"__metadata__": dict(sorted(meta.items())), **header}, separators=(",", ":"),
                          ensure_ascii=False).encode()
        if len(text) > size:  # not safetensors' own serialisation: refused (the save fails, nothing is written)
            raise CheckpointError(f"{path}: its header could not be written in a fixed order ({len(text)} > {size})")
        f.seek(8)
        f.write(text.ljust(size))


def read_checkpoint_config(path: str | os.PathLike) -> dict:
    """The configuration stored in one of our checkpoints (reads the header only)."""
    path = Path(path).expanduser()  # as load_encoder: --encoder=~/x reaches a command unexpanded
    if checkpoint_format(path) != "safetensors":
        raise CheckpointError(f"{path}: not an fmct checkpoint (a PyTorch file, not safetensors)")
    meta = _safetensors(path, "metadata")
    if "fmct_config" not in meta:
        raise CheckpointError(f"{path}: not an fmct checkpoint (no 'fmct_config' in its metadata)")
    return json.loads(meta["fmct_config"])


def recorded_config(path: str | os.PathLike) -> dict | None:
    """The configuration one of our checkpoints records, None for a file in the authors' layouts (they record none)."""
    try:
        return read_checkpoint_config(path)
    except CheckpointError:
        return None


def authors_method(report: "LoadReport") -> str | None:
    """The method an authors' training checkpoint shows by what it held beside the encoder (an MAE decoder, a DINO
    head; ``LoadReport.dropped``), else None: their bare weights (``model_weights.pth``) say none."""
    if any(key.startswith(("decoder", "mask_token")) for key in report.dropped):
        return "mae"
    if any(key.startswith("head.") for key in report.dropped):
        return "dino"
    return None


def chain_warning(checkpoint, config: dict | None, spec) -> str | None:
    """What to warn about where an encoder runs on a preprocessing chain (``spec``) its weights were not trained on,
    or None: the authors' layout (``config`` None: ``recorded_config``) on a chain other than their ``reference``, or
    one of ours on a chain other than the one it records (``config["preprocess"]``; ``paper`` where it records
    none). The notebooks (``pipeline.start``) and ``fmct embed`` / ``fmct finetune`` warn with it."""
    if config is None:
        if spec.name == "reference":
            return None
        return (f"checkpoint {checkpoint} is in the authors' layout, whose weights were trained on their own "
                f"preprocessing: preset 'reference' (-p preset reference, --preset reference) feeds them the inputs "
                f"they know; the {spec.name} chain runs, on inputs they were not trained on")
    trained_on = (config.get("preprocess") or {}).get("name", "paper")
    if spec.name == trained_on:
        return None
    return (f"checkpoint {checkpoint} was pretrained on the {trained_on!r} preprocessing chain; preset {spec.name!r} "
            f"feeds it inputs it was not trained on (preset {trained_on!r} is its own)")


def load_checkpoint(path: str | os.PathLike, map_location: str = "cpu", expect=None):
    """Load one of our encoder checkpoints → ``(encoder, config)``; the config's ``model`` builds it, strictly
    (and must match ``expect``, as in ``load_encoder``, where given)."""
    path = Path(path)
    config = read_checkpoint_config(path)
    if "model" not in config:
        raise CheckpointError(f"{path}: its configuration has no 'model' entry to build an encoder from")
    state = {k: v.to(map_location) for k, v in _safetensors(path).items()}
    model = _build(str(path), dict(config["model"]), state, expect)
    model.load_report = LoadReport(source=str(path), which=config.get("method") or "fmct", loaded=len(state),
                                   config=model.config.to_dict())
    return model, config


def _assign(model: VisionTransformer3d, state: dict) -> VisionTransformer3d:
    """Load ``state`` strictly into a model built on the meta device (no wasted random initialisation).

    Floating-point tensors are copied as float32, so the model never aliases the caller's tensors.
    """
    state = {k: v.to(torch.float32, copy=True) if v.is_floating_point() else v.clone() for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model


def _expected(expect) -> tuple[dict, str]:
    """``expect`` → (the ``ModelConfig`` fields it fixes, its name in messages). It is None (nothing fixed), a
    name in ``ARCHITECTURES``, a ``ModelConfig`` (every field) or a dict of some of its fields."""
    if expect is None:
        return {}, ""
    if isinstance(expect, str):
        if expect not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {expect!r}; choose one of {tuple(ARCHITECTURES)} or pass a "
                             f"ModelConfig")
        return dict(ARCHITECTURES[expect]), expect
    fields = expect.to_dict() if isinstance(expect, ModelConfig) else dict(expect)
    unknown = set(fields) - set(ModelConfig.__dataclass_fields__)
    if unknown:
        raise ValueError(f"expect: unknown ModelConfig fields {sorted(unknown)}")
    return fields, "the expected encoder"


def _build(source: str, config: dict, state: dict, expect=None) -> VisionTransformer3d:
    """The encoder of ``config`` with ``state`` loaded strictly. With ``expect``, the file's configuration must
    agree with it and the model is built as expected, so a missing block is reported as missing keys."""
    want, label = _expected(expect)
    differ = [f"{k} {config[k]} (expected {v})" for k, v in want.items() if k in config and config[k] != v]
    config.update(want)
    with torch.device("meta"):
        model = vit_from_config(config)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
              if k in state and tuple(state[k].shape) != expected[k]]
    if differ or missing or unexpected or shapes:
        keys = (("missing", missing), ("unexpected", unexpected), ("shapes differ:", shapes))
        problems = ([", ".join(differ)] if differ else []) + [  # keys name what differs, unless every shape does
            f"{name} {_listing(k)}" for name, k in keys if k and not (differ and shapes)]
        what = f"is not {label}" if differ else "keys do not match the encoder"
        raise CheckpointError(f"{source}: {what}: {'; '.join(problems)}")
    broken = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if broken:
        raise CheckpointError(f"{source}: {len(broken)} of its {len(state)} tensors hold NaN or infinite values "
                              f"({_listing(broken, 4)}): the training that wrote it diverged")
    return _assign(model, state)


def _listing(keys: list[str], n: int = 12) -> str:
    return f"{keys[:n]}" + (f" and {len(keys) - n} more" if len(keys) > n else "")


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
    """What loading did with the keys (``which``: the network of an authors' checkpoint, or the method that made
    one of ours)."""

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


# the wrappers a training script saves its networks under, per network: the authors' (``state_dict`` the student,
# ``momentum_model_state_dict`` the teacher), DINO's (``student``, ``teacher``), MAE's (``model``)
_WRAPPERS = {"student": ("state_dict", "student", "model"), "teacher": ("momentum_model_state_dict", "teacher")}


def _select(obj, which: str, source: str) -> dict:
    if which not in _WRAPPERS:
        raise ValueError(f"which must be 'student' or 'teacher', got {which!r}")
    if not isinstance(obj, dict):
        raise CheckpointError(f"{source}: expected a state dict or a dict of state dicts, got {type(obj).__name__}")
    if {"step", "task", "optimizer", "rng"} <= set(obj):
        raise CheckpointError(f"{source}: the resume state of an fmct pretraining run (step {obj['step']}), not an "
                              f"encoder: let the run finish (fmct pretrain resumes it) and use the run's "
                              f"encoder.safetensors")
    wrapped = [k for keys in _WRAPPERS.values() for k in keys if isinstance(obj.get(k), dict)]
    if wrapped:
        for key in _WRAPPERS[which]:
            if isinstance(obj.get(key), dict):
                return obj[key]
        raise CheckpointError(f"{source}: the checkpoint holds no {which} weights (its networks: {wrapped}; the "
                              f"{which}'s would be under {' or '.join(map(repr, _WRAPPERS[which]))})")
    if which == "teacher":
        raise CheckpointError(f"{source}: a bare state dict (one network), no teacher weights: which='teacher' "
                              f"needs a DINO checkpoint with 'momentum_model_state_dict' or 'teacher'")
    return obj


def load_reference_checkpoint(path_or_state_dict, *, expect="ViT-B", num_heads: int | None = None,
                              img_size: int | None = None, patch_size: int | None = None, which: str = "student",
                              source: str | None = None) -> VisionTransformer3d:
    """Build the matching encoder and load the authors' weights into it, strictly.

    Accepts a bare state dict, a DINO/MAE checkpoint dict (``state_dict`` = student, ``momentum_model_state_dict``
    = teacher, choose with ``which``; a teacher asked of a bare state dict is an error), with
    ``module.``/``backbone.``/``_orig_mod.`` prefixes. ``expect`` is the architecture, as in ``load_encoder``:
    by default ViT-B, the only one the authors released, so a file without its last block is refused, not
    loaded as a shallower encoder. Register tokens and qkv bias come from the keys. With ``expect=None``,
    width, depth and MLP size come from the keys too, and heads, input size and patch size (which the keys
    cannot tell) from the arguments (default ViT-B's 12, 96, 12); an argument that contradicts ``expect`` is
    an error. ``source`` names a state dict in messages. The returned encoder carries ``load_report`` (also
    logged).
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = str(path_or_state_dict)
        obj = load_state_dict_file(path_or_state_dict)
    else:
        source, obj = source or "<state dict>", path_or_state_dict
    raw = _select(obj, which, source)
    want, label = _expected(expect)
    given = {"num_heads": num_heads, "img_size": img_size, "patch_size": patch_size}
    clash = [f"{k}={v} (expected {want[k]})" for k, v in given.items() if v is not None and want.get(k, v) != v]
    if clash:
        raise ValueError(f"{', '.join(clash)} contradicts {label}; pass expect=None for another architecture")
    num_heads, img_size, patch_size = (v if v is not None else want.get(k, ARCHITECTURES["ViT-B"][k])
                                       for k, v in given.items())

    report = LoadReport(source=source, which=which)
    state: dict[str, torch.Tensor] = {}
    for key, value in raw.items():
        key = _strip_prefixes(str(key))
        if _DROPPED.match(key):
            report.dropped.append(key)
            continue
        if not torch.is_tensor(value):
            raise CheckpointError(f"{source}: key {key!r} holds a {type(value).__name__}, not a tensor")
        if not value.is_floating_point():
            raise CheckpointError(f"{source}: key {key!r} holds {value.dtype} values, not an encoder's floating-point "
                                  f"weights")
        state[reference_to_fmct_key(key)] = value

    try:
        embed_dim, in_chans, *kernel = state["patch_embed.proj.weight"].shape
        depth = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
        mlp_dim = state["blocks.0.mlp.fc1.weight"].shape[0]
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{source}: does not look like an FM-CT encoder state dict (missing {e})") from None
    if len(kernel) != 3:  # a 2-D ViT's patch embedding: no patch size makes it a 3-D encoder
        raise CheckpointError(f"{source}: patch kernel is {list(kernel)}, a {len(kernel)}-D encoder's; FM-CT's is "
                              f"3-D (a 3-D convolution over patch³ voxels)")
    if kernel != [patch_size] * 3:
        given = f"patch_size={patch_size} was given" if given["patch_size"] is not None else (
            f"{label or 'ViT-B'} has patch {patch_size}; for another patch size pass "
            f"expect={{'patch_size': {kernel[0]}}} (or expect=None and patch_size={kernel[0]})")
        raise CheckpointError(f"{source}: patch kernel is {kernel}, but {given}")
    n_reg = state["register_tokens"].shape[1] if "register_tokens" in state else 0
    config = dict(img_size=img_size, patch_size=patch_size, in_chans=in_chans, embed_dim=embed_dim,
                  depth=depth, num_heads=num_heads, mlp_ratio=mlp_dim / embed_dim,
                  qkv_bias="blocks.0.attn.qkv.bias" in state, num_register_tokens=n_reg)
    if "pos_embed" in state:
        with torch.device("meta"):
            table = vit_from_config(config).pos_embed.shape
        if state["pos_embed"].shape != table:
            raise CheckpointError(f"{source}: position table {tuple(state['pos_embed'].shape)} does not fit "
                                  f"img_size={img_size}, patch_size={patch_size} ({tuple(table)})")
    model = _build(source, config, state, expect)
    report.loaded, report.config = len(state), model.config.to_dict()
    model.load_report = report
    log.info("%s", report)
    return model


# --------------------------------------------------------------------------------------- entry point
def load_encoder(path: str | os.PathLike, expect=None, *, which: str = "student") -> VisionTransformer3d:
    """An encoder from one of our checkpoints or from the authors' layouts, recognised by content
    (``checkpoint_format``) and loaded strictly; a refused file raises ``CheckpointError`` naming it and the
    problem (a missing one ``FileNotFoundError``).

    ``expect`` is the architecture the caller needs: a name in ``ARCHITECTURES`` (``"ViT-B"``), a
    ``ModelConfig`` or a dict of some of its fields. Our files build what their configuration says, checked
    against ``expect`` where given; the authors' layouts are checked against ``expect``, by default ViT-B
    (the only one they released; their keys cannot tell heads, input or patch size). ``which`` picks the
    student or the teacher of an authors' DINO checkpoint. ``~`` in ``path`` is your home.
    """
    path = Path(path).expanduser()
    if checkpoint_format(path) == "safetensors":
        if "fmct_config" in _safetensors(path, "metadata"):
            return load_checkpoint(path, expect=expect)[0]
        obj = _safetensors(path)           # a bare state dict saved as safetensors: through the key map
    else:
        obj = _torch_load(path)
    return load_reference_checkpoint(obj, which=which, expect="ViT-B" if expect is None else expect,
                                     source=str(path))

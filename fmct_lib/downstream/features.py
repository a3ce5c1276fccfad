"""A frozen encoder's features, computed once per scan and cached (the frozen protocols train on them).

Where the encoder does not train (linear and attentive probes), running it again every epoch repeats the same
work: its output tokens (cls, registers and patches, after the final norm) are computed once per set of inputs
and kept, in this process and on disk, under the encoder's identity (``encoder_id``: the sha256 of its checkpoint
file, or an external encoder's ``ExternalRef.identity``: its weights' sha256, or ``random`` and the seed) and
the inputs' key (``VolumeSource.key``: the dataset, the preprocessing spec's hash and the scans) and the version of
fmct's encoder numerics (``FEATURES_VERSION``: the same weights give other tokens when the ViT's code changes). The
file is ``<cache>/<encoder identity>/<sha256 of the inputs key and version>[:24].safetensors`` (both in its
metadata), written atomically and read without executing code.
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..data.inputs import VolumeSource, hold
from ..io import atomic_path
from ..models.external import ExternalRef
from ..precision import infer, precision_name

__all__ = ["FEATURES_VERSION", "encoder_id", "encoder_tokens"]

# What the encoder code computes from given weights and inputs. Bump it with any change to the ViT's forward pass
# (``tests/test_downstream.py::test_features_version_pins_the_encoders_numerics`` fails until it is bumped), so
# that no feature cached by older code is read back.
FEATURES_VERSION = 1
HELD_BYTES = 2 << 30   # features kept in this process for the next runs of a sweep (least recently used out)
_HELD: "OrderedDict[tuple[str, str], torch.Tensor]" = OrderedDict()


def encoder_id(encoder) -> str:
    """The identity of an encoder: of a checkpoint file, the first 16 hex digits of its sha256; of an external
    encoder, its ``ExternalRef.identity`` (``<name>-<weights sha256[:16]>`` or ``<name>-random-s<seed>``)."""
    if isinstance(encoder, ExternalRef):
        return encoder.identity
    path = Path(encoder).expanduser().resolve()
    stat = path.stat()
    return _file_sha256(path, stat.st_ino, stat.st_size, stat.st_mtime_ns)[:16]


@lru_cache(maxsize=64)
def _file_sha256(path: Path, inode: int, size: int, mtime_ns: int) -> str:
    """The sha256 of ``path``, hashed once per process while the file (inode, size, modification time) stays the
    same (a sweep names its encoder in every run; ViT-B's checkpoint is ~350 MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@torch.no_grad()
def encoder_tokens(encoder: torch.nn.Module, identity: str, source: VolumeSource, batch_size: int,
                   device: str = "cpu", cache: Path | None = None) -> torch.Tensor:
    """``encoder.forward_features`` of every input of ``source`` → (N, tokens, D) float32 on the CPU.

    Reused from this process or from ``cache`` where the same encoder (``identity``) saw the same inputs
    (``source.key``); computed (and stored there) otherwise. A source without a key is not cached."""
    numerics = precision_name(device)
    if numerics != "float32":  # a GPU's bf16 tokens are not the CPU's fp32 ones: kept apart
        identity = f"{identity}@{numerics.split()[0]}"
    key = f"{source.key}|features-v{FEATURES_VERSION}" if source.key else None
    held = (identity, key) if key else None
    if held in _HELD:
        _HELD.move_to_end(held)
        return _HELD[held]
    path = None
    if cache is not None and held:
        path = Path(cache) / identity / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.safetensors"
    if path is not None and path.exists():
        tokens = load_file(str(path))["tokens"]
    else:
        encoder.to(device).eval()
        batches = infer(encoder.forward_features, source.batches(range(len(source)), batch_size, device), device)
        tokens = torch.cat(batches) if batches else torch.zeros(0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"tokens": tokens.contiguous()}, str(tmp), metadata={"inputs": source.key,
                                                                                "version": str(FEATURES_VERSION)})
    return hold(_HELD, held, tokens, HELD_BYTES) if held else tokens

"""Whether a finished downstream run, or a kept classifier, still stands for today's data (``runs.run_protocol``).

A run is reused only while what it was made from is unchanged: its evaluation rows and labels
(``evaluation_changes``), the digest of its training and validation rows (``training_rows``), the K-shot draw
today's rows give (``kshot_draw``) and what else it recorded (``reuse_record``: the versions of its volumes, a
scratch model's architecture, the frozen features' version). Each check reads the scan tables and cache indexes
once while their files are unchanged (``read_while_unchanged``), so checking many finished runs stays quick.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..data.inputs import ProtocolSkipped, select_rows
from ..precision import precision_name
from .features import FEATURES_VERSION
from .protocols import Protocol
from .training import fewshot_draw

__all__ = ["evaluation_changes", "train_rows", "kshot_draw", "training_rows", "kept_classifier", "reuse_record",
           "training_part", "record_changes", "scan_table", "read_while_unchanged"]


def evaluation_changes(signature: dict, spec, predictions: pd.DataFrame) -> str:
    """How the evaluation rows in the scan table now differ from a finished run's ``predictions`` (scan_id,
    label), e.g. ``"1 scan(s) removed, 1 label(s) changed"``; ``""`` where they do not (scans the cache rejected
    are not counted as added), or where the scan table is not here to compare with."""
    from ..data.cache import read_rejects
    from ..data.manifest import DatasetNotAvailable
    s = signature
    try:
        table = scan_table(s["eval_dataset"])
    except DatasetNotAvailable:
        return ""
    rows = select_rows(table, s["eval_filter"], s["eval_split"], s["task"], f"{s['eval_dataset']} {s['eval_split']}")
    now = dict(zip(rows["scan_id"].astype(str), rows[s["task"]].astype(int)))
    before = dict(zip(predictions["scan_id"].astype(str), predictions["label"].astype(int)))
    rejected = set(read_rejects(s["eval_dataset"], spec)["scan_id"].astype(str))
    counts = {"added": len(now.keys() - before.keys() - rejected), "removed": len(before.keys() - now.keys())}
    changed = sum(now[i] != before[i] for i in now.keys() & before.keys())
    return ", ".join([f"{n} scan(s) {what}" for what, n in counts.items() if n]
                     + ([f"{changed} label(s) changed"] if changed else []))


def train_rows(signature: dict, train_scans: pd.DataFrame | None) -> pd.DataFrame:
    """The training rows with a label: ``train_scans``, else the scan table's training split (its filter)."""
    s, task = signature, signature["task"]
    train = (train_scans.reset_index(drop=True) if train_scans is not None
             else select_rows(scan_table(s["dataset"]), s["train_filter"], "train", task, f"{s['dataset']} train"))
    return train[train[task].notna()].reset_index(drop=True)


def kshot_draw(signature: dict, spec, train_scans: pd.DataFrame | None) -> list[str] | None:
    """The scan ids a K-shot run would draw from today's training rows: those in the cache where it is built (as
    ``volume_source`` keeps them), drawn by ``fewshot_draw`` from the run's seed. The rows' digest
    (``training_rows``) cannot see a reordered table or a scan the cache now rejects; the draw can. None where the
    scan table is not here."""
    from ..data.cache import read_index
    from ..data.manifest import DatasetNotAvailable
    s = signature
    try:
        train = train_rows(signature, train_scans)
    except DatasetNotAvailable:
        return None
    try:
        cached = read_index(s["dataset"], spec)["scan_id"].astype(str)
        train = train[train["scan_id"].astype(str).isin(set(cached))].reset_index(drop=True)
    except FileNotFoundError:  # no cache (StageMissing): the rows as they are
        pass
    try:
        drawn = fewshot_draw(train[s["task"]].to_numpy(), s["k"], np.random.default_rng(s["seed"]))
    except ProtocolSkipped:
        return []
    return list(train["scan_id"].iloc[drawn].astype(str))


def training_rows(signature: dict, train_scans: pd.DataFrame | None, default: str = "") -> str:
    """A digest of the rows a run trains and chooses on: (split, scan_id, label) of its training rows (the scan
    table's, or ``train_scans``) and validation rows. A finished run or kept classifier records it; where the
    scan table now gives another (a label corrected, a scan added or withdrawn), neither is reused. ``default``
    where the scan table is not here to read."""
    from ..data.manifest import DatasetNotAvailable
    s, task = signature, signature["task"]
    try:
        table = scan_table(s["dataset"])
    except DatasetNotAvailable:
        return default
    where = f"{s['dataset']} " + "{}"
    train = (train_scans if train_scans is not None
             else select_rows(table, s["train_filter"], "train", task, where.format("train")))
    val = select_rows(table, s["train_filter"], "val", task, where.format("val"))
    lines = sorted(f"{split}:{i}:{y}" for split, rows in (("train", train), ("val", val))
                   for i, y in zip(rows["scan_id"].astype(str), rows[task]) if pd.notna(y))
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def kept_classifier(path: Path | None, signature: dict, rows: str, record: dict) -> Path | None:
    """``path`` where it holds a classifier trained on today's ``rows`` and, where it recorded them, today's
    ``record``'s training part (one kept before they were recorded counts as such), else None (then it is trained
    again and replaced, with a warning where it was stale)."""
    if path is None or not path.exists():
        return None
    from ..models.checkpoints import read_checkpoint_config
    kept = read_checkpoint_config(path)
    rows_changed = bool(kept.get("training_rows")) and kept["training_rows"] != rows
    changes = ["other training or validation rows than the scan table's now"] if rows_changed else []
    changes += record_changes(kept.get("reuse_record") or {}, training_part(record),
                               {"training_images"} if rows_changed else set())  # other rows: other volumes, said once
    if changes:
        import warnings
        warnings.warn(f"{path}: trained on {'; '.join(changes)}; training it again", stacklevel=3)
        return None
    return path


def reuse_record(signature: dict, proto: Protocol, profile, spec, train_scans: pd.DataFrame | None,
                  device) -> dict:
    """What a run and its kept classifier are made from beyond their signature, recorded beside them and compared
    before either is reused (``record_changes``): the versions of the training and validation volumes and of the
    evaluation volumes their cached inputs were made from (``volume_versions``), a scratch model's architecture
    (the profile's may change under its name) and, where the encoder is frozen, the version of the features'
    numerics (``features.FEATURES_VERSION``); and, recorded only, the precision a deep model computed in (a GPU's
    bf16 run read on a CPU is what that run computed, not a reason to train it again)."""
    from ..data.manifest import DatasetNotAvailable
    s, task = signature, signature["task"]
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    record = {"precision": precision_name(device)} if proto.head is not None else {}
    try:
        table = scan_table(s["dataset"])
        val = select_rows(table, s["train_filter"], "val", task, f"{s['dataset']} val")
        trained_on = pd.concat([train_rows(signature, train_scans)["scan_id"], val["scan_id"]])
        record["training_images"] = volume_versions(s["dataset"], spec, trained_on)
        evaluated = select_rows(scan_table(s["eval_dataset"]), s["eval_filter"], s["eval_split"], task,
                                f"{s['eval_dataset']} {s['eval_split']}")
        record["eval_images"] = volume_versions(s["eval_dataset"], spec, evaluated["scan_id"])
    except DatasetNotAvailable:  # a finished run read where its data is not: judged on what can be read
        pass
    if not proto.needs_encoder and proto.head is not None:
        record["model"] = profile.model.to_dict()
    if proto.frozen:
        record["features_version"] = FEATURES_VERSION
    return record


def training_part(record: dict) -> dict:
    """What a kept classifier depends on of a ``reuse_record``: all but the evaluation volumes."""
    return {k: v for k, v in record.items() if k != "eval_images"}


def volume_versions(dataset: str, spec, scan_ids) -> str:
    """A digest of the versions of the scans' volumes that the cache's inputs were made from (its index's
    ``volume_stat``: size and modification time; ``-`` for a scan not cached, e.g. refused): another digest after
    ``fmct cache`` means a volume re-ingested under its id (or refused, or repaired). ``""`` (not judged) where there
    is no cache, or an older one without versions: no volume is read, so a run is reused while its disk is away."""
    versions = cached_versions(dataset, spec)
    lines = sorted(f"{i}:{versions.get(i, '-')}" for i in map(str, scan_ids)) if versions else []
    if not versions or any(line.endswith(":") for line in lines):
        return ""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


def cached_versions(dataset: str, spec) -> dict[str, str]:
    """scan id -> ``volume_stat`` of ``dataset``'s cache for ``spec`` (empty where it is not built)."""
    from ..data.cache import cache_dir, read_index
    path = cache_dir(dataset, spec) / "index.csv"
    if not path.exists():
        return {}

    def versions() -> dict[str, str]:
        index = read_index(dataset, spec)
        stats = index["volume_stat"] if "volume_stat" in index else pd.Series("", index=index.index)
        return dict(zip(index["scan_id"].astype(str), stats.fillna("").astype(str)))
    return read_while_unchanged(path, versions)


RECORD_CHANGES = {"training_images": "training or validation volumes re-ingested since",
                   "eval_images": "evaluation volumes re-ingested since",
                   "model": "a scratch model of another architecture than the profile's now",
                   "features_version": "frozen features of numerics version {was}, {now} now"}


def record_changes(recorded: dict, now: dict, leave_out=frozenset()) -> list[str]:
    """What differs between a recorded ``reuse_record`` and today's, in words, but for the fields ``leave_out``
    (said otherwise); fields the record lacks (a run made before they were recorded) or that cannot be read today
    are not judged."""
    return [text.format(was=recorded[k], now=now[k]) for k, text in RECORD_CHANGES.items()
            if k not in leave_out and recorded.get(k) and now.get(k) and recorded[k] != now[k]]


def scan_table(dataset: str) -> pd.DataFrame:
    """``load_scans(dataset)``, read again only when its file changed (checking many finished runs stays quick)."""
    from ..data.manifest import load_scans, scan_table_path
    return read_while_unchanged(scan_table_path(dataset), lambda: load_scans(dataset))


_READ: dict = {}  # file -> (its inode, mtime and size, what was read from it)


def read_while_unchanged(path: Path, read):
    """``read()``, called again only when the file at ``path`` changed (its inode, modification time or size; a
    missing file every time, ``read`` saying why): the reuse checks read each scan table and cache index once."""
    path = Path(path).resolve()
    if not path.exists():
        return read()
    stat = path.stat()
    stamp = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
    if _READ.get(path, (None,))[0] != stamp:
        _READ[path] = (stamp, read())
    return _READ[path][1]

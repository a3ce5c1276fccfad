"""Model inputs for the downstream protocols: which rows of a scan table, and their cached inputs.

``select_rows`` picks rows of a scan table by column values, split and known label. ``volume_source`` turns
rows into a :class:`VolumeSource` over the preprocessing cache; it only reads the cache, which
``fmct_lib.pipeline`` builds (a scan neither cached nor rejected stops with the ``fmct cache`` command).
On the small profiles the inputs of a split are made once and held in memory for the next runs of the
process (a sweep, a notebook), so a sweep of a hundred runs makes each split's inputs once.
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import OrderedDict
from functools import partial

import pandas as pd
import torch

from ..paths import StageMissing
from .cache import CachedVolumes, cache_dir, read_index, read_rejects, stale_scans
from .preprocess import model_input
from .shared_memory import check_room_for_batches

__all__ = ["VolumeSource", "ProtocolSkipped", "hold", "select_rows", "volume_source", "ACQUISITION_COLUMNS"]

ACQUISITION_COLUMNS = ["manufacturer", "slice_thickness_mm", "kvp", "site"]  # how a scan was acquired, where known
IN_MEMORY_BYTES = 1 << 30  # model inputs of a run's split are held in memory up to this size (float32)
HELD_BYTES = 2 << 30       # in-memory inputs kept for the next runs of this process (a sweep, a notebook)
_HELD: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()


class ProtocolSkipped(ValueError):
    """A run that cannot be made from the data (e.g. fewer than K positives); sweeps record it and go on."""


class VolumeSource:
    """Model inputs by index: a tensor (N, K, S, S, S) (K windows: 3 in the paper's chain, 1 in CT-FM's and
    Merlin's), or a map-style dataset whose items are tensors or dicts with a ``volume`` tensor, collated and
    passed through ``to_input`` (e.g. ``preprocess.model_input``).
    ``key`` names what the inputs are (dataset, preprocessing and scans; ``volume_source`` sets it), so what is
    computed from them, e.g. a frozen encoder's features, can be cached under it."""

    def __init__(self, data, to_input=None, num_workers: int = 0, key: str | None = None):
        self.data, self.to_input, self.num_workers, self.key = data, to_input, num_workers, key

    def __len__(self) -> int:
        return len(self.data)

    def batches(self, indices, batch_size: int, device=None):
        """Yield input batches (float32) for ``indices`` in order, on ``device`` (default: where they are read).
        The cached canvases go to the device as they are read and ``to_input`` (crop, windows, resize) runs
        there: on a GPU, not in the CPU's main process."""
        indices = [int(i) for i in indices]
        if torch.is_tensor(self.data):
            for s in range(0, len(indices), batch_size):
                yield self._finish(self.data[indices[s:s + batch_size]], device)
            return
        check_room_for_batches(self.data, min(batch_size, len(indices)), self.num_workers,
                               f"reading {getattr(self.data, 'folder', 'volumes')}")
        pin = device is not None and torch.device(device).type == "cuda"
        loader = torch.utils.data.DataLoader(torch.utils.data.Subset(self.data, indices), batch_size=batch_size,
                                             shuffle=False, num_workers=self.num_workers, pin_memory=pin)
        for batch in loader:
            yield self._finish(batch["volume"] if isinstance(batch, dict) else batch, device)

    def _finish(self, x: torch.Tensor, device=None) -> torch.Tensor:
        if device is not None:
            x = x.to(device, non_blocking=True)
        return (self.to_input(x) if self.to_input else x).float()


def hold(held: OrderedDict, key, tensor: torch.Tensor, max_bytes: int) -> torch.Tensor:
    """Keep ``tensor`` under ``key`` in ``held`` for the next calls of this process; the least recently used
    tensors go first while all together exceed ``max_bytes`` (the newest always stays)."""
    held[key] = tensor
    held.move_to_end(key)
    while len(held) > 1 and sum(x.numel() * x.element_size() for x in held.values()) > max_bytes:
        held.popitem(last=False)
    return tensor


def select_rows(scans: pd.DataFrame, filt: dict | None, split: str | None, task: str | None,
                where: str) -> pd.DataFrame:
    """Rows matching ``filt`` (column → value or list of values) and ``split``, with a known ``task`` label.
    ``where`` names the table in errors (``"synthetic train"``). A filter column the table lacks, or a value no
    row of the table has (a typo), is a ``ValueError``."""
    if task is not None and task not in scans.columns:
        raise ProtocolSkipped(f"{where}: no label column {task!r}")
    table = scans
    for column, value in (filt or {}).items():
        if column not in scans.columns:
            raise ValueError(f"{where}: filter column {column!r} is not in the scan table")
        values = [str(v) for v in (value if isinstance(value, (list, tuple, set)) else [value])]
        present = set(table[column].dropna().astype(str))  # the whole table's: filters combine in any order
        absent = [v for v in values if v not in present]
        if absent:  # a typo selected nothing, and failed later as "nothing could be evaluated" or in torch.cat
            raise ValueError(f"{where}: filter {column}={absent[0]} matches no row (its values: "
                             f"{', '.join(sorted(present)[:12]) or 'none'})")
        scans = scans[scans[column].astype(str).isin(values)]
    if split is not None:
        scans = scans[scans["split"] == split]
    return (scans[scans[task].notna()] if task is not None else scans).reset_index(drop=True)


def volume_source(dataset: str, scans: pd.DataFrame, spec, num_workers: int = 0):
    """Cached model inputs for the rows of ``scans`` → ``(VolumeSource, rows)``.

    Scans the cache rejected (its ``rejects.csv``) are left out with a warning; the rows returned say which
    remain. A scan that is neither cached nor rejected, or whose volume changed since it was cached
    (``cache.stale_scans``), raises ``StageMissing`` naming ``fmct cache``. Where
    the inputs of all rows fit in ``IN_MEMORY_BYTES`` (toy and demo profiles) they are computed once and
    held as one tensor (the inputs are deterministic: augmentation runs on the batch), else read per batch.
    Such a tensor is kept for later calls with the same scans of the same cache build (up to
    ``HELD_BYTES``, least recently used first out). The source's ``key`` (what cached features are named by)
    names the dataset, the spec, the scans and, where the cache recorded them, their volumes' versions
    (``volume_stat``): features of a volume replaced under the same scan id are not read back."""
    ids = scans["scan_id"].astype(str)
    index_rows = read_index(dataset, spec) if len(scans) else None
    cached = set(index_rows["scan_id"].astype(str)) if len(scans) else set()
    if not ids.isin(cached).all():
        rejected = set(read_rejects(dataset, spec)["scan_id"].astype(str))
        unbuilt = sorted(set(ids) - cached - rejected)
        if unbuilt:
            raise StageMissing(
                f"{len(unbuilt)} scan(s) of {dataset!r} are not in the {spec.name} cache ({spec.cache_key}), e.g. "
                f"{unbuilt[:3]}. Build it with:\n    fmct cache --dataset {dataset} --preset {spec.name} "
                f"--profile PROFILE")
    kept = scans[ids.isin(cached)].reset_index(drop=True)
    # rows of a loaded scan table name their volumes by absolute paths; others (rows built by hand): the table's
    resolved = "path" in kept and all(os.path.isabs(path) for path in kept["path"].astype(str))
    stale = (stale_scans(dataset, spec, kept["scan_id"], scans=kept if resolved else None, index=index_rows)
             if len(kept) else [])
    if stale:  # a volume re-ingested under its id since the cache was built: its canvas is of the old one
        raise StageMissing(
            f"{len(stale)} scan(s) of {dataset!r} changed since the {spec.name} cache ({spec.cache_key}) was built "
            f"(re-ingested under the same id), e.g. {stale[:3]}. Bring it up to date with:\n    fmct cache --dataset "
            f"{dataset} --preset {spec.name} --profile PROFILE")
    if len(kept) < len(scans):
        warnings.warn(f"{dataset}: {len(scans) - len(kept)} scan(s) are not in the cache (rejected by "
                      f"preprocessing, see rejects.csv) and are left out")
    data = CachedVolumes(dataset, spec, scan_ids=list(kept["scan_id"]))
    name = f"{dataset}-{spec.hash}-{hashlib.sha256(','.join(kept['scan_id'].astype(str)).encode()).hexdigest()[:16]}"
    if len(kept) and "volume_stat" in index_rows:  # the volumes' versions, where the cache recorded them
        stats = index_rows.set_index(index_rows["scan_id"].astype(str))["volume_stat"].reindex(kept["scan_id"].astype(str))
        if stats.fillna("").astype(bool).any():   # an older cache's rows have none: its names stay as they were
            name += "-" + hashlib.sha256(",".join(stats.fillna("")).encode()).hexdigest()[:8]
    source = VolumeSource(data, to_input=partial(model_input, spec=spec), num_workers=num_workers, key=name)
    if len(kept) * 4 * len(spec.windows) * spec.input_size ** 3 <= IN_MEMORY_BYTES:  # small profiles: made once
        index = cache_dir(dataset, spec).resolve() / "index.csv"
        stat = index.stat() if index.exists() else None
        key = (str(index), stat and (stat.st_mtime_ns, stat.st_size), spec.hash, tuple(kept["scan_id"].astype(str)))
        if key not in _HELD:
            hold(_HELD, key, torch.cat(list(source.batches(range(len(kept)), 32))), HELD_BYTES)
        _HELD.move_to_end(key)
        source = VolumeSource(_HELD[key], key=name)
    return source, kept

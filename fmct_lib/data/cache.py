"""The preprocessed-volume cache: the hot path of pretraining and fine-tuning (DESIGN §4).

``cache_root()/<dataset>/<spec.cache_key>/`` holds, for one :class:`~fmct_lib.data.preprocess.PreprocessSpec`
(or several: chains that differ only in the windows, crop and resize applied on reading share a folder):

- one ``<scan>.npy`` per scan: the stage-1 output of :func:`~fmct_lib.data.preprocess.to_canvas`, an int16
  HU canvas (``paper``: 224³ int16 = 22.5 MB; no compression, so a read is one sequential ``read``) or
  the final float16 window stack (``reference``: 3×96³ = 5.3 MB);
- ``spec.json``: the stored part of the spec (``PreprocessSpec.stored``), so the folder explains itself;
- ``index.csv``: ``scan_id, file, shape, affine`` (the canvas voxel-to-RAS affine, 16 numbers), ``volume_stat``
  (``size:mtime_ns`` of the scan's volume when it was read);
- ``rejects.csv``: ``scan_id, path, reason, volume_stat`` for scans that could not be preprocessed (a volume
  replaced since, or back after it was missing, is tried again).

Every file is written atomically (temp + rename). A re-run skips scans already in the index (and, unless
asked, those already rejected), so a killed job resumes; a scan whose volume changed since it was cached
(another size or mtime: re-ingested under the same ``scan_id``) is done again. A row of an older index,
without ``volume_stat``, counts as changed only when its volume is newer than its canvas. A change to what is
stored gives another key, hence another folder: a stale cache is never read.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import re
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ..progress import tqdm

from ..io import LOCK_FILE, atomic_open, exclusive_lock, remove_leftovers_in
from ..paths import StageMissing, cache_root
from ..workers import init_worker
from .pool import run_surviving
from .preprocess import PreprocessSpec, load_volume, to_canvas_with_affine
from .manifest import load_scans

__all__ = ["cache_dir", "build_cache", "read_index", "read_rejects", "stale_scans", "volume_stat", "CachedVolumes",
           "INDEX_COLUMNS", "REJECT_COLUMNS"]

INDEX_COLUMNS = ["scan_id", "file", "shape", "affine", "volume_stat"]
REJECT_COLUMNS = ["scan_id", "path", "reason", "volume_stat"]
_SAVE_EVERY_S = 10.0  # how often the index is rewritten during a build (a crash loses at most this)


def cache_dir(dataset: str, spec: PreprocessSpec, root: Path | None = None) -> Path:
    return Path(root or cache_root()) / dataset / spec.cache_key


def file_name(scan_id: str) -> str:
    """A file name for a scan id: the id itself when safe, else a sanitised form + a short digest."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", scan_id)
    if safe != scan_id or safe.startswith("."):
        safe = f"{safe.lstrip('.')}-{hashlib.sha1(scan_id.encode()).hexdigest()[:8]}"
    return f"{safe}.npy"


def _atomic_write(path: Path, write) -> None:
    with atomic_open(path, "wb") as f:
        write(f)


def _write_table(rows: list[dict], columns: list[str], path: Path) -> None:
    _atomic_write(path, lambda f: pd.DataFrame(rows, columns=columns).to_csv(f, index=False))


def _read_table(path: Path, columns: list[str]) -> pd.DataFrame:
    if not path.exists():
        return pd.DataFrame(columns=columns)
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def read_index(dataset: str, spec: PreprocessSpec, root: Path | None = None) -> pd.DataFrame:
    """The index of a built cache; raises FileNotFoundError naming the command that builds it."""
    path = cache_dir(dataset, spec, root) / "index.csv"
    if not path.exists():
        raise StageMissing(
            f"{path}: no cache for dataset {dataset!r} and spec {spec.name} ({spec.cache_key}). Build it with:\n"
            f"    fmct cache --dataset {dataset} --preset {spec.name} --profile PROFILE")
    return _read_table(path, INDEX_COLUMNS)


def read_rejects(dataset: str, spec: PreprocessSpec, root: Path | None = None) -> pd.DataFrame:
    """The scans a cache build could not preprocess (``scan_id, path, reason, volume_stat``: a refused volume
    replaced since is tried again); empty when there are none."""
    return _read_table(cache_dir(dataset, spec, root) / "rejects.csv", REJECT_COLUMNS)


def volume_stat(path) -> str:
    """``size:mtime_ns`` of a scan's volume (``""`` when it cannot be read): how the cache notices a change."""
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def _current(entry: dict, volume: str | None, out: Path) -> bool:
    """Whether an index row was made from the volume now at ``volume`` (``None``: a scan not in the table). A volume
    that cannot be read now (a disk not mounted) leaves its canvas as it is: it was made from that volume, and
    another version of it would have another size or modification time once it is back."""
    if volume is None:
        return True
    if entry.get("volume_stat"):
        now = volume_stat(volume)
        return now == "" or entry["volume_stat"] == now
    try:  # an older cache's row, without volume_stat: changed if the volume is newer than its canvas
        return os.stat(volume).st_mtime_ns <= os.stat(out / entry["file"]).st_mtime_ns
    except OSError:
        return False


def _usable(entry: dict, volume: str | None, out: Path) -> bool:
    """Whether an index row can be read: its canvas is there and was made from the volume now at ``volume``."""
    return (out / entry["file"]).exists() and _current(entry, volume, out)


def stale_scans(dataset: str, spec: PreprocessSpec, scan_ids, *, root: Path | None = None,
                data_root: Path | None = None, scans: pd.DataFrame | None = None,
                index: pd.DataFrame | None = None) -> list[str]:
    """The scans among ``scan_ids`` whose cached canvas is gone or was made from another version of their volume
    (re-ingested since under the same id): ``build_cache`` does them again, and a reader must not use them.
    ``scans``, ``index``: the dataset's scan table and the cache's index, where the caller has read them."""
    out = cache_dir(dataset, spec, root)
    table = load_scans(dataset, data_root) if scans is None else scans
    volumes = dict(zip(table["scan_id"], table["path"].astype(str)))
    index = read_index(dataset, spec, root) if index is None else index
    index = {r["scan_id"]: r for r in index.to_dict("records")}
    return [s for s in map(str, scan_ids) if s in index and not _usable(index[s], volumes.get(s), out)]


def _process_scan(scan_id: str, path: str, spec: PreprocessSpec, out_dir: Path) -> dict:
    """Preprocess one scan into ``out_dir``; a failure comes back as a rejection, never an exception."""
    try:
        hu, affine = load_volume(path)
        volume, vol_affine = to_canvas_with_affine(hu, affine, spec, where=path)
        array = volume.cpu().numpy()
        name = file_name(scan_id)
        _atomic_write(out_dir / name, lambda f: np.save(f, array))
        return {"scan_id": scan_id, "file": name, "shape": "x".join(map(str, array.shape)),
                "affine": " ".join(f"{v:.6g}" for v in np.asarray(vol_affine).ravel())}
    except Exception as e:  # one bad scan never stops the job: record it and go on
        return {"scan_id": scan_id, "path": path, "reason": f"{type(e).__name__}: {e}"}


def build_cache(dataset: str, spec: PreprocessSpec, *, root: Path | None = None, data_root: Path | None = None,
                scans: list[str] | None = None, workers: int | None = None,
                retry_rejected: bool = False) -> Path:
    """Preprocess every scan of ``dataset``'s scan table (or the ``scans`` ids) into its cache folder.

    ``root`` is the cache root (default ``$FMCT_CACHE``), ``data_root`` the data root of the scan
    table (default ``$FMCT_DATA``). ``workers`` processes in parallel (default: the CPU count, at most
    the scans to do; 1 runs in this process). Returns the cache folder.
    """
    table = load_scans(dataset, data_root)
    if scans is not None:
        wanted = set(map(str, scans))
        missing = wanted - set(table["scan_id"])
        if missing:
            raise ValueError(f"scans not in the {dataset!r} scan table: {sorted(missing)[:10]}")
        table = table[table["scan_id"].isin(wanted)]
    out = cache_dir(dataset, spec, root)
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "spec.json"
    if spec_path.exists():
        if json.loads(spec_path.read_text()) != json.loads(json.dumps(spec.stored())):
            raise ValueError(f"{spec_path}: holds another spec than {spec} with the same key")
    else:
        _atomic_write(spec_path, lambda f: f.write(json.dumps(spec.stored(), indent=2).encode()))

    volumes = dict(zip(table["scan_id"], table["path"].astype(str)))

    def pending():
        index = {r["scan_id"]: r for r in _read_table(out / "index.csv", INDEX_COLUMNS).to_dict("records")
                 if _usable(r, volumes.get(r["scan_id"]), out)}
        rejects = {} if retry_rejected else {  # a refused volume replaced since (repaired, back) is tried again
            r["scan_id"]: r for r in _read_table(out / "rejects.csv", REJECT_COLUMNS).to_dict("records")
            if "volume_stat" not in r or volumes.get(r["scan_id"]) is None
            or r["volume_stat"] == volume_stat(volumes[r["scan_id"]])}
        return index, rejects, [(s, p) for s, p in volumes.items() if s not in index and s not in rejects]

    if not pending()[2]:  # nothing to add: leave index and rejects (and their mtimes, which key inputs) as they are
        return out
    # one builder at a time (two rewrote index.csv each from its own view, and the last dropped the other's rows);
    # readers of a complete cache never wait. Under the lock: what is still to do, and no killed writer's temporary
    # file (a canvas each, never read, but they piled up)
    with exclusive_lock(out / LOCK_FILE, what=f"cache folder {out}", wait=0):
        remove_leftovers_in(out)
        index, rejects, todo = pending()
        if todo:
            _build(out, spec, index, rejects, todo, workers, dataset)
    return out


def _build(out: Path, spec: PreprocessSpec, index: dict, rejects: dict, todo: list, workers: int | None,
           dataset: str) -> None:
    """Preprocess the scans ``todo`` into ``out``, adding them to ``index`` (or ``rejects``), which are saved every
    ``_SAVE_EVERY_S`` and at the end, also when interrupted."""
    def save():
        _write_table(list(index.values()), INDEX_COLUMNS, out / "index.csv")
        _write_table(list(rejects.values()), REJECT_COLUMNS, out / "rejects.csv")

    def record(result):
        if "file" in result:
            index[result["scan_id"]] = result
            rejects.pop(result["scan_id"], None)
        else:
            rejects[result["scan_id"]] = result

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    progress = tqdm(total=len(todo), desc=f"cache {dataset} {spec.name} {spec.cache_key}", unit="scan")
    last_save = time.monotonic()
    stats = {s: volume_stat(p) for s, p in todo}  # before reading: a volume changed meanwhile is done again
    tasks = [(s, p, spec, out) for s, p in todo]
    if workers == 1:
        results = ((t, _process_scan(*t)) for t in tasks)
    else:
        threads = max(1, (os.cpu_count() or 1) // workers)
        results = run_surviving(_process_scan, tasks, workers=workers, mp_context=mp.get_context("spawn"),
                                initializer=init_worker, initargs=(os.getpid(), threads))
    try:
        for (scan_id, path, *_), result in results:
            if isinstance(result, Exception):  # the worker died on this scan, also alone (or could not run it)
                result = {"scan_id": scan_id, "path": path, "reason": (
                    "the worker process died preprocessing this scan, also when it ran alone (out of memory?)"
                    if isinstance(result, BrokenProcessPool) else f"worker failed: {type(result).__name__}: {result}")}
            record({**result, "volume_stat": stats[scan_id]})
            progress.update()
            if time.monotonic() - last_save > _SAVE_EVERY_S:
                save()
                last_save = time.monotonic()
    finally:
        if hasattr(results, "close"):
            results.close()  # a pool still running (an interrupt): shut it down
        progress.close()
        save()


class CachedVolumes(torch.utils.data.Dataset):
    """The cached volumes of a dataset: ``{"scan_id": str, "volume": tensor}`` per item.

    ``volume`` is the stored form (``paper``, ``merlin``: int16 HU canvas³; ``reference``, ``ctfm``: float16
    (K, S, S, S), K windows).
    Items only read bytes, so DataLoader workers stay cheap; crops, windows and augmentation run on the
    batch where the model runs (:func:`~fmct_lib.data.preprocess.model_input`).
    """

    def __init__(self, dataset: str, spec: PreprocessSpec, *, scan_ids=None, root: Path | None = None):
        self.folder = cache_dir(dataset, spec, root)
        index = read_index(dataset, spec, root).set_index("scan_id", drop=False)
        if scan_ids is not None:
            scan_ids = [str(s) for s in scan_ids]
            missing = [s for s in scan_ids if s not in index.index]
            if missing:
                raise KeyError(f"{len(missing)} scan(s) not in the cache {self.folder} (not built yet, or "
                               f"rejected: see rejects.csv): {missing[:10]}")
            index = index.loc[scan_ids]
        self.index = index.reset_index(drop=True)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict:
        row = self.index.iloc[i]
        path = self.folder / row["file"]
        try:
            volume = np.load(path)
        except (OSError, ValueError, EOFError) as e:  # a half-copied cache, a disk error
            raise ValueError(f"{path}: the cached canvas of scan {row['scan_id']} cannot be read ({e}); delete it "
                             f"and run `fmct cache` again, which rebuilds it") from None
        return {"scan_id": row["scan_id"], "volume": torch.from_numpy(volume)}

    def affine(self, i: int) -> np.ndarray:
        """Voxel-to-RAS (mm) affine of item ``i``'s grid (for ``reference``, the stretched box)."""
        return np.array(self.index.iloc[i]["affine"].split(), dtype=float).reshape(4, 4)

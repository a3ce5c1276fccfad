"""The parts every ingester shares: pseudonyms, atomic NIfTI writing, the resumable job loop, the tables.

An ingester (RSNA, CQ500, a NIfTI folder) turns its source into a list of ``Job``s, one per output
volume, and hands them to ``run_jobs`` with a reader, then to ``finish``; it holds the dataset's lock all along
(``one_ingestion_at_a_time``: one ingestion of a dataset at a time). For each job the loop

- derives a pseudonymous ``scan_id`` and ``patient_id`` (keyed HMAC-SHA256 of the source key and of the
  original patient identifier; the key is ``$FMCT_PSEUDONYM_KEY`` or a random key kept beside the
  dataset in ``.pseudonym_key``, so re-runs give the same ids),
- skips the job if its volume and its sidecar row (``volumes/<scan_id>.json``) already exist and were
  written with the same reader options (resume),
- otherwise reads the volume through the shared loader (``preprocess.load_checked``: every check of
  ``checks.py``), writes ``volumes/<scan_id>.nii.gz`` (RAS, int16 HU) and the sidecar (the row, the
  skipped files and the reason of each flag), each atomically, and catches any error as a rejection
  ``(source, reason)``: one bad scan never stops the job. A refused scan's reason is the loader's
  message, so a file is refused with the same words wherever it is read.

``finish`` then writes ``scans.csv`` (DESIGN §3, with the 8:1:1 patient-level split, exact in count and
stratified by label, computed from the original patient identifiers and the seed by
``splits.stratified_splits``, or the split the user gave; a re-run keeps the split of every patient the
earlier ``scans.csv`` holds and places only new patients, ``splits.extend_splits``; and the ``flags``
column: repairs and flags, semicolon-separated), ``rejects.csv`` and ``linkage.csv`` (pseudonym -> original
ids and source paths: the re-identification key, to be kept as private as the source data; see
docs/data_safety.md).
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import inspect
import json
import os
import secrets
import tempfile
import time
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from ...progress import tqdm

from ..checks import ScanError, join_flags
from ...io import (LEFTOVER_IDLE_S, atomic_path, atomic_write_csv, atomic_write_json, exclusive_lock,
                   remove_leftovers_in)
from ...paths import data_root
from ...workers import watch_parent
from ..manifest import SCAN_COLUMNS, dataset_lock, scan_table_path, validate_dataset_name, write_scans
from ..pool import run_surviving
from ..preprocess import load_checked
from ..splits import SPLITS, extend_splits

__all__ = ["Job", "SourceError", "pseudonym", "pseudonym_key", "write_nifti", "write_private_csv",
           "one_ingestion_at_a_time", "run_jobs", "finish", "format_spacing", "to_ras", "read_dicom_job",
           "DICOM_COLUMNS", "INGESTION_COLUMNS", "REJECT_COLUMNS", "FLAGS_COLUMN"]

REJECT_COLUMNS = ["source", "reason"]
FLAGS_COLUMN = "flags"  # checks.FLAGS names, semicolon-separated; empty for a scan with nothing to note
# Protocol columns a DICOM series contributes to the scan table (no UIDs: they can embed dates).
DICOM_COLUMNS = ["series_description", "kvp", "convolution_kernel", "n_slices", "has_gap",
                 "n_duplicates_dropped", "n_localizers_dropped", "tilt_deg", "plane"]
# Every column ingestion adds beside the scan table's own and the labels: never a task, whatever its values
# (``has_gap``, ``contrast`` or an empty ``flags`` hold only 0/1 or nothing, as a label column does).
INGESTION_COLUMNS = frozenset({FLAGS_COLUMN, *DICOM_COLUMNS, "contrast", "category"})
VOLUMES = "volumes"
PRIVATE_MODE = 0o600  # tables holding original identifiers: readable by their owner only (docs/data_safety.md)
MIN_KEY_CHARS = 16  # a pseudonym key (file or $FMCT_PSEUDONYM_KEY) shorter than this is refused (ingestion writes 64)


class SourceError(FileNotFoundError):
    """The ``--source`` of an ingester is missing, empty or not in the expected layout (one-line message)."""


@dataclass(frozen=True)
class Job:
    """One output volume: where it comes from and the columns it carries besides the reader's."""

    source_key: str                 # stable identifier of the source (study UID, series folder, file)
    patient: str                    # the original patient identifier (never written to scans.csv)
    inputs: object                  # what the reader takes (a folder, a list of files, a path)
    columns: dict = field(default_factory=dict)   # dataset columns (labels, batch, ...)


def pseudonym_key(dataset_dir: Path) -> bytes:
    """``$FMCT_PSEUDONYM_KEY``, else the dataset's own random key (created on first use, mode 600)."""
    env = os.environ.get("FMCT_PSEUDONYM_KEY")
    if env:
        if len(env) < MIN_KEY_CHARS:
            raise ValueError(f"$FMCT_PSEUDONYM_KEY is {len(env)} characters long: a key shorter than "
                             f"{MIN_KEY_CHARS} makes the pseudonyms computable from the original identifiers by "
                             f"trying keys; set a longer secret (python -c 'import secrets; "
                             f"print(secrets.token_hex(32))')")
        return env.encode()
    path = Path(dataset_dir) / ".pseudonym_key"
    if not path.exists():
        _create_key(path)
    for copy in path.parent.glob(".pseudonym_key.*"):  # a copy a first ingestion killed before removing it left
        if time.time() - copy.stat().st_mtime > LEFTOVER_IDLE_S:
            copy.unlink(missing_ok=True)
    key = path.read_text().strip()
    if len(key) < MIN_KEY_CHARS:
        raise ValueError(f"{path}: the dataset's pseudonym key is {len(key)} characters long (at least "
                         f"{MIN_KEY_CHARS} expected; ingestion writes 64): an empty or cut key makes the pseudonyms "
                         f"computable from the original identifiers. If it was damaged, restore it from a backup; "
                         f"otherwise delete it and ingest this dataset again from the start (its pseudonyms change)")
    return key.encode()


def _create_key(path: Path) -> None:
    """Write a random key to ``path`` (mode 600), whole or not at all: written beside it, then linked into place,
    so a process killed meanwhile never leaves an empty key, and of two first ingestions the first key stays.
    Where the file system has no hard links (FAT, some network shares), created exclusively and then written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".pseudonym_key.")  # mode 600
    try:
        with os.fdopen(fd, "w") as f:
            f.write(key)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:  # another ingestion made it meanwhile: its key is the key
            pass
        except OSError:  # no hard links here
            with contextlib.suppress(FileExistsError), os.fdopen(
                    os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as f:
                f.write(key)
    finally:
        os.unlink(tmp)


def write_private_csv(df: pd.DataFrame, path: Path) -> Path:
    """Write a table that holds original identifiers (``linkage.csv``...) atomically, owner-only (mode 600)."""
    return atomic_write_csv(df, path, mode=PRIVATE_MODE)


def pseudonym(raw_id: str, key: bytes, prefix: str) -> str:
    """A keyed hash of ``raw_id``: stable for one key, not reversible without it."""
    return prefix + hmac.new(key, str(raw_id).encode(), hashlib.sha256).hexdigest()[:16]


def format_spacing(affine: np.ndarray) -> str:
    """Voxel sizes (mm) along the three array axes, as ``"x,y,z"``."""
    return ",".join(f"{v:.4g}" for v in np.linalg.norm(np.asarray(affine)[:3, :3], axis=0))


def write_nifti(data: np.ndarray, affine: np.ndarray, path: Path, *, sheared: bool = False) -> None:
    """Write a NIfTI atomically (temp file + rename); a sheared affine goes to the sform only."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    if sheared:
        img.set_qform(None)
    else:
        img.set_qform(affine, code=1)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    with atomic_path(path, suffix=suffix) as tmp:
        nib.save(img, tmp)


VOXELS = "_voxels"  # a row's voxel digest (``voxel_digest``): finds one volume filed twice; not a scan-table column


def voxel_digest(data: np.ndarray, spacing: str) -> str:
    """A digest of a written volume's voxels, shape, dtype and spacing (not its grid's position: a copy moved in the
    scanner's frame is still a copy): two scans with one digest are one volume filed twice."""
    digest = hashlib.sha256(f"{data.shape}{data.dtype}{spacing}".encode())
    digest.update(np.ascontiguousarray(data).tobytes())
    return digest.hexdigest()[:16]


def _identical_volumes(scans: pd.DataFrame) -> list[dict]:
    """The groups of scans whose voxels are identical (``VOXELS``; rows read before it was recorded are not
    compared), each with its scan ids, its splits and the number of patients it is filed under."""
    if VOXELS not in scans:
        return []
    known = scans[scans[VOXELS].notna() & (scans[VOXELS].astype(str) != "")]
    groups = []
    for _, group in known.groupby(VOXELS, sort=False):
        if len(group) > 1:
            groups.append({"scan_ids": sorted(group["scan_id"].astype(str)),
                           "splits": sorted(set(group["split"].astype(str))),
                           "patients": int(group["patient_id"].nunique())})
    return sorted(groups, key=lambda g: g["scan_ids"])


def _write_json(obj: dict, path: Path) -> None:
    atomic_write_json(path, obj, indent=1, default=str, sort_keys=False)


def hu_int16(hu: np.ndarray) -> np.ndarray:
    """HU rounded to integers and stored as int16 (1 HU is the precision CT is stored with)."""
    return np.clip(np.rint(hu), -32768, 32767).astype(np.int16)


def to_ras(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The array permuted/flipped to RAS voxel order and its affine (nibabel's closest canonical)."""
    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(data, ornt)
    return out, np.asarray(affine) @ nib.orientations.inv_ornt_aff(ornt, data.shape)


def read_dicom_job(inputs, *, on_gap: str = "flag", tilt: str = "resample"):
    """The reader for DICOM ingesters: one series (folder or files) -> int16 HU, affine, row, skipped."""
    scan = load_checked(inputs, on_gap=on_gap, tilt=tilt, on_bad_file="skip")
    row = {k: scan.meta[k] for k in ["manufacturer", "slice_thickness_mm", "contrast_agent", *DICOM_COLUMNS]}
    row["_notes"] = scan.notes
    skipped = [(f, f"slice skipped: {reason}") for f, reason in scan.meta["skipped_files"]]
    return hu_int16(scan.hu), scan.affine, row, skipped


def source_files(source: Path) -> list[Path]:
    """Every regular file below ``source``, symbolic links to folders followed (a cohort linked together from an
    archive; each folder once), hidden files and folders (``.DS_Store``, macOS's ``._scan.nii.gz``, ``.git``) left
    out. The NIfTI and DICOM-export ingesters walk a source with it."""
    out, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(source, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link back to a folder walked already
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in sorted(filenames) if not f.startswith(".")]
    return out


def source_stat(inputs) -> str:
    """A digest of the names, sizes and modification times of the files a job reads (a file, a series folder's
    files, a list of files), kept in the volume's sidecar: a source exported again under the same name (a
    repaired scan) is read again. ``""`` where a file is missing (the reader then says which)."""
    paths = [Path(inputs)] if isinstance(inputs, (str, Path)) else [Path(f) for f in inputs]
    if len(paths) == 1 and paths[0].is_dir():
        paths = [p for p in paths[0].rglob("*") if p.is_file()]
    digest = hashlib.sha256()
    try:
        for path in sorted(paths):
            st = path.stat()
            digest.update(f"{path.name}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    except OSError:
        return ""
    return digest.hexdigest()[:16]


def _convert(job: Job, reader, volume: Path, sidecar: Path, options: dict,
             stat: str = "") -> tuple[dict | None, list]:
    """Read one job and write its volume + sidecar; returns (row or None, rejects).

    ``row["_notes"]`` (flag name -> finding) becomes the ``flags`` column and the sidecar's ``notes``;
    ``options`` (the reader's) and ``stat`` (``source_stat``) are kept in the sidecar, so a re-run with other
    options, or on a changed source, reads the scan again.
    """
    try:
        data, affine, row, skipped = reader(job.inputs)
    except ScanError as e:  # refused by the checks: the loader's own message, which names the file
        return None, [(str(job.source_key), str(e))]
    except Exception as e:  # noqa: BLE001 - one bad scan is a rejection, never the end of the job
        return None, [(str(job.source_key), f"{type(e).__name__}: {e}")]
    notes = row.pop("_notes", {})
    try:
        write_nifti(data, affine, volume, sheared="sheared_affine" in notes)
    except Exception as e:  # noqa: BLE001
        return None, [(str(job.source_key), f"could not write {volume.name}: {type(e).__name__}: {e}")]
    spacing = format_spacing(affine)
    row = {**row, FLAGS_COLUMN: join_flags(notes), "spacing": spacing, "shape": "x".join(map(str, data.shape)),
           VOXELS: voxel_digest(data, spacing)}
    _write_json({"row": row, "rejects": skipped, "notes": notes, "options": options, "source_stat": stat}, sidecar)
    return row, skipped


def one_ingestion_at_a_time(ingest):
    """An ingester (``source, *, name, root, ...``) that holds dataset ``name``'s lock (``manifest.dataset_lock``:
    ``<data root>/.locks/<name>.lock``, so a refused ingestion leaves no folder) for the whole of its run, from
    indexing the source's headers to registering the dataset: a second ingestion of the name fails at once with
    ``LockBusy`` naming the holder, before writing anything (two read every scan twice, and the last ``scans.csv``
    written held only its own view); readers never wait. The name is checked first."""
    signature = inspect.signature(ingest)

    @functools.wraps(ingest)
    def locked(*args, **kwargs):
        call = signature.bind(*args, **kwargs)
        call.apply_defaults()
        name, root = call.arguments["name"], call.arguments["root"]
        dataset_dir = Path(root or data_root()) / validate_dataset_name(name)  # before a lock file is made for it
        with exclusive_lock(dataset_lock(name, root), what=f"dataset {name} ({dataset_dir})", wait=0):
            return ingest(*args, **kwargs)
    return locked


def run_jobs(jobs: list[Job], reader, dataset_dir: Path, *, options: dict | None = None, workers: int = 2,
             desc: str = "ingest") -> tuple[list[dict], list[tuple[str, str]]]:
    """Run ``reader`` over ``jobs`` (resuming), writing volumes under ``dataset_dir/volumes``.

    ``reader(inputs) -> (data, affine, row, skipped)`` must be a picklable module-level callable when
    ``workers > 1``; ``row`` holds the reader's columns and, under ``"_notes"``, the checks' findings
    (``CheckedScan.notes``), ``skipped`` the ``(file, reason)`` pairs it dropped without failing the
    volume. ``options`` are the reader's options (JSON values): a volume written with other options, or from a
    source whose files changed since (``source_stat``; volumes written before fmct recorded it are kept), is
    read again. A worker that dies is replaced (``pool.run_surviving``); only a scan that kills its worker
    when read alone is a rejection. Returns the rows (with scan/patient ids, path and the job's columns) and
    all rejections.
    """
    options = dict(options or {})
    dataset_dir = Path(dataset_dir)
    (dataset_dir / VOLUMES).mkdir(parents=True, exist_ok=True)
    key = pseudonym_key(dataset_dir)
    rows, rejects, pending = [], [], []
    for job in jobs:
        scan_id = pseudonym(job.source_key, key, "S")
        volume = dataset_dir / VOLUMES / f"{scan_id}.nii.gz"
        sidecar = volume.with_name(f"{scan_id}.json")
        ids = {"scan_id": scan_id, "patient_id": pseudonym(job.patient, key, "P"),
               "path": f"{VOLUMES}/{volume.name}", "_patient": job.patient, "_source": job.source_key}
        done = json.loads(sidecar.read_text()) if volume.exists() and sidecar.exists() else None
        stat = source_stat(job.inputs)
        if (done is not None and FLAGS_COLUMN in done["row"] and done.get("options", {}) == options
                and done.get("source_stat", stat) == stat):
            # done in an earlier run, with the checks, the same reader options and the same source files
            rows.append({**ids, **done["row"], **job.columns})
            rejects += [tuple(r) for r in done["rejects"]]
        else:
            pending.append((job, ids, volume, sidecar, stat))

    def collect(result, job, ids):
        row, skipped = result
        rejects.extend(tuple(r) for r in skipped)
        if row is not None:
            rows.append({**ids, **row, **job.columns})

    # the temporary files of the volumes and sidecars to write that a killed ingestion left (never read, but one
    # volume each, piling up); a caller need not hold the lock (``one_ingestion_at_a_time``), so only those no live
    # writer touches
    remove_leftovers_in(dataset_dir / VOLUMES, [path.name for _, _, volume, sidecar, _ in pending
                                                for path in (volume, sidecar)], idle_s=LEFTOVER_IDLE_S)
    if pending and len(pending) < len(jobs):
        tqdm.write(f"{desc}: {len(jobs) - len(pending)} of {len(jobs)} scans were done in an earlier run and are "
                   f"kept; reading the other {len(pending)}")
    bar = tqdm(total=len(pending), desc=desc, unit="scan", disable=not pending)
    tasks = [(job, reader, volume, sidecar, options, stat) for job, ids, volume, sidecar, stat in pending]
    outcomes = (((t, _convert(*t)) for t in tasks) if workers <= 1
                else run_surviving(_convert, tasks, workers=workers, initializer=watch_parent, initargs=(os.getpid(),)))
    ids_of = {job.source_key: ids for job, ids, *_ in pending}
    for (job, *_), outcome in outcomes:
        if isinstance(outcome, BrokenProcessPool):
            rejects.append((str(job.source_key), "the worker process died reading this scan, also when it was read "
                                                 "alone (out of memory?)"))
        elif isinstance(outcome, Exception):
            rejects.append((str(job.source_key), f"worker failed: {type(outcome).__name__}: {outcome}"))
        else:
            collect(outcome, job, ids_of[job.source_key])
        bar.update()
    bar.close()
    return rows, rejects


def _earlier_table(name: str, root: Path | None) -> pd.DataFrame:
    """``scan_id, patient_id, split`` of the dataset's scans.csv before this run (no rows where there is none)."""
    path = scan_table_path(name, root)
    columns = ["scan_id", "patient_id", "split"]
    return pd.read_csv(path, usecols=columns, dtype=str) if path.exists() else pd.DataFrame(columns=columns)


def _earlier_splits(scans: pd.DataFrame, earlier: pd.DataFrame) -> dict[str, str]:
    """Original patient id -> split, for the patients of ``scans`` that the earlier scans.csv already splits."""
    earlier = earlier[["patient_id", "split"]].dropna()
    earlier = dict(zip(earlier["patient_id"], earlier["split"]))
    return {original: earlier[pid] for original, pid in zip(scans["_patient"].astype(str), scans["patient_id"])
            if earlier.get(pid) in SPLITS}


def _refuse_if_nothing_kept(rows: list[dict], rejects: list[tuple[str, str]], name: str, dataset_dir: Path) -> None:
    """Where every scan was refused or left out: ``rejects.csv`` written and ``SourceError`` saying so (``finish``
    runs before an ingester registers the dataset, so no empty dataset is made)."""
    if rows:
        return
    rej = pd.DataFrame(sorted(set(rejects)), columns=REJECT_COLUMNS)
    Path(dataset_dir).mkdir(parents=True, exist_ok=True)
    atomic_write_csv(rej, Path(dataset_dir) / "rejects.csv")
    raise SourceError(f"{name}: no scan to keep: {len(rej)} refused or left out, each with its reason in "
                      f"{Path(dataset_dir) / 'rejects.csv'}" + (f" (e.g. {rej['source'].iloc[0]}: "
                                                                 f"{rej['reason'].iloc[0]})" if len(rej) else ""))


def finish(rows: list[dict], rejects: list[tuple[str, str]], name: str, dataset_dir: Path, *,
           columns: list[str], tasks: list[str], seed: int = 0, root: Path | None = None,
           given_splits: dict[str, str] | None = None) -> dict:
    """Write ``scans.csv``, ``rejects.csv`` and ``linkage.csv``.

    ``columns`` are the dataset's protocol columns placed after ``SCAN_COLUMNS``; ``tasks`` the label
    columns (nullable 0/1). The split is ``given_splits`` (original patient id -> split) where given, else
    ``stratified_splits`` of the original patient ids by their labels on ``tasks``, from ``seed``, keeping the
    split of every patient the dataset's earlier ``scans.csv`` holds (``extend_splits``). Returns a
    summary: counts and paths, the scans per split, ``labels`` (per task and split, the positive and
    negative scans), ``untrainable_tasks`` (the tasks whose training split holds no positive or no negative scan,
    with its counts: nothing to fine-tune or probe them on), ``unlabelled`` (scans without a label for any task)
    and ``dropped`` (scans of the earlier ``scans.csv`` that this run's sources no longer hold, and the first ten
    ``dropped_scan_ids``: the table lists what the sources hold now; their volumes stay under ``volumes/``).
    """
    dataset_dir = Path(dataset_dir)
    _refuse_if_nothing_kept(rows, rejects, name, dataset_dir)
    order = SCAN_COLUMNS + [c for c in [*columns, FLAGS_COLUMN] if c not in SCAN_COLUMNS] + tasks
    scans = pd.DataFrame(rows, columns=sorted({k for r in rows for k in r} | set(order) | {"_patient", "_source"}))
    scans = scans.sort_values("scan_id", kind="stable").reset_index(drop=True)
    for task in tasks:
        scans[task] = pd.to_numeric(scans[task], errors="coerce").astype("Int64")
    patients = scans["_patient"].astype(str)
    earlier = _earlier_table(name, root)
    if given_splits is None:
        kept = _earlier_splits(scans, earlier)
        scans["split"] = extend_splits(patients, scans[tasks], kept, seed=seed)
        split_source = f"stratified by label, seed {seed}" + (
            f"; {len(kept)} patient(s) kept in their split from the earlier scans.csv" if kept else "")
    else:
        scans["split"] = patients.map(given_splits)
        split_source = "given"
    linkage = scans[["scan_id", "patient_id", "_patient", "_source"]].rename(
        columns={"_patient": "original_patient_id", "_source": "source"})
    dropped = sorted(set(earlier["scan_id"]) - set(scans["scan_id"]))
    scans_path = write_scans(scans[order], name, root)
    write_private_csv(linkage, dataset_dir / "linkage.csv")
    rej = pd.DataFrame(sorted(set(rejects)), columns=REJECT_COLUMNS)
    atomic_write_csv(rej, dataset_dir / "rejects.csv")
    flagged = int((scans[FLAGS_COLUMN].fillna("").astype(str) != "").sum())
    splits = [s for s in SPLITS if s in set(scans["split"])]
    labels = {task: {split: {"positive": int((scans.loc[scans["split"] == split, task] == 1).sum()),
                             "negative": int((scans.loc[scans["split"] == split, task] == 0).sum())}
                     for split in splits} for task in tasks}
    identical = _identical_volumes(scans)
    no_train = {"positive": 0, "negative": 0}
    untrainable = {task: dict(by_split.get("train", no_train)) for task, by_split in labels.items()
                   if not all(by_split.get("train", no_train).values())}
    return {"dataset": name, "scans": len(scans), "patients": int(scans["patient_id"].nunique()),
            "flagged": flagged, "rejects": len(rej), "scans_csv": str(scans_path),
            "rejects_csv": str(dataset_dir / "rejects.csv"),
            "splits": scans["split"].value_counts().to_dict(), "split_source": split_source,
            "labels": labels, "untrainable_tasks": untrainable,
            "unlabelled": int(scans[tasks].isna().all(axis=1).sum()) if tasks else len(scans),
            "dropped": len(dropped), "dropped_scan_ids": dropped[:10],
            "identical_volumes": len(identical), "identical_volumes_groups": identical[:10]}

"""A folder of NIfTI volumes plus a labels CSV (a hospital's own data) -> a registered custom dataset.

Every ``.nii``/``.nii.gz`` below ``source`` becomes one scan: checked (3-D, finite, positive spacing,
readable to the end), reoriented to RAS and written under ``<root>/<name>/volumes``. The labels CSV has
one row per volume: a path column (relative to ``source``, or a bare file name), a patient column, and
label columns renamed to task names through ``mapping`` (``{"csv column": "task"}``; e.g. EHR-derived
labels as in the paper). Volumes missing from the CSV are kept with empty labels and their own file as
patient; bad volumes are rejections. The dataset is appended to the manifest with its tasks.
"""
from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from ...paths import data_root
from ..manifest import register_dataset
from .common import Job, finish, run_jobs

__all__ = ["load_volume", "read_nifti_job", "ingest_nifti"]


def load_volume(path) -> tuple[np.ndarray, np.ndarray]:
    """A NIfTI volume in RAS voxel order and its affine; ``ValueError`` naming the file and the problem."""
    path = Path(path)
    try:
        img = nib.load(path)
        data = np.asanyarray(img.dataobj)
    except Exception as e:  # noqa: BLE001 - truncated gzip (EOFError, zlib.error), bad header, ...
        raise ValueError(f"{path}: unreadable NIfTI ({type(e).__name__}: {e})") from e
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
        img = nib.Nifti1Image(data, img.affine, img.header)
    if data.ndim != 3:
        raise ValueError(f"{path}: expected a 3-D volume, got {data.ndim}-D shape {data.shape}")
    with nib.openers.ImageOpener(path) as f:  # the header as written: nibabel's load "fixes" pixdim
        zooms = np.asarray(type(img.header).from_fileobj(f, check=False)["pixdim"][1:4], dtype=float)
    if not np.all(np.isfinite(zooms)) or np.any(zooms <= 0) or abs(np.linalg.det(img.affine[:3, :3])) < 1e-9:
        raise ValueError(f"{path}: zero, negative or non-finite voxel spacing {tuple(zooms)}")
    if np.issubdtype(data.dtype, np.floating) and not np.all(np.isfinite(data)):
        raise ValueError(f"{path}: {int((~np.isfinite(data)).sum())} NaN/inf voxels")
    canonical = nib.as_closest_canonical(nib.Nifti1Image(data, img.affine))
    return np.asanyarray(canonical.dataobj), canonical.affine


def read_nifti_job(path):
    """Reader for ``run_jobs``: the RAS volume (dtype kept), its affine and its protocol columns."""
    data, affine = load_volume(path)
    return data, affine, {"manufacturer": "", "slice_thickness_mm": round(float(np.linalg.norm(affine[:3, 2])), 4)}, []


def _match_labels(files: list[Path], source: Path, labels: pd.DataFrame, path_column: str) -> dict[Path, int]:
    """Row index in ``labels`` for each file, matched by path relative to ``source`` or by file name."""
    by_rel = {str(Path(p)): i for i, p in zip(labels.index, labels[path_column].astype(str))}
    by_name = {Path(p).name: i for i, p in zip(labels.index, labels[path_column].astype(str))}
    out = {}
    for f in files:
        rel = str(f.relative_to(source))
        if rel in by_rel:
            out[f] = by_rel[rel]
        elif f.name in by_name:
            out[f] = by_name[f.name]
    return out


def ingest_nifti(source, *, name: str, labels: Path | None = None, mapping: dict[str, str] | None = None,
                 path_column: str = "path", patient_column: str = "patient_id", root: Path | None = None,
                 workers: int = 2, seed: int = 0, description: str = "") -> dict:
    """Ingest a NIfTI folder (+ labels CSV with ``mapping`` csv column -> task) as dataset ``name``."""
    source = Path(source)
    if not source.is_dir():
        raise FileNotFoundError(f"{source}: not a folder")
    files = sorted(p for p in source.rglob("*") if p.is_file() and p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise FileNotFoundError(f"{source}: no .nii or .nii.gz files")
    mapping = dict(mapping or {})
    tasks = list(mapping.values())
    table = pd.DataFrame(columns=[path_column, patient_column])
    if labels is not None:
        table = pd.read_csv(labels, dtype={path_column: str, patient_column: str})
        missing = [c for c in [path_column, patient_column, *mapping] if c not in table.columns]
        if missing:
            raise ValueError(f"{labels}: missing columns {missing}; has {list(table.columns)}")
    elif mapping:
        raise ValueError("a column mapping needs a labels CSV")
    rows_of = _match_labels(files, source, table, path_column)

    jobs = []
    for f in files:
        rel = str(f.relative_to(source))
        if f in rows_of:
            rec = table.loc[rows_of[f]]
            columns = {task: rec[col] for col, task in mapping.items()}
            patient = str(rec[patient_column])
        else:
            columns, patient = {task: pd.NA for task in tasks}, rel
        jobs.append(Job(source_key=rel, patient=patient, inputs=str(f), columns=columns))

    dataset_dir = Path(root or data_root()) / name
    rows, rejects = run_jobs(jobs, read_nifti_job, dataset_dir, workers=workers, desc=f"ingest {name}")
    description = description or f"custom NIfTI dataset ingested from a folder ({len(files)} files)"
    register_dataset(name, tasks=tasks, description=description,
                     ingest_command=f"fmct ingest nifti --name {name} --source DIR --labels LABELS.csv")
    summary = finish(rows, rejects, name, dataset_dir, seed=seed, root=root, tasks=tasks, columns=[])
    summary["unlabelled"] = len(files) - len(rows_of)
    return summary

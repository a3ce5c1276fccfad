"""The dataset registry (``data_manifest.csv``) and scan tables (DESIGN §3).

The manifest has one row per dataset. Known datasets (synthetic, RSNA, CQ500, the paper's private
cohorts as placeholders) are listed statically in the committed file; a dataset is *available* when its
scan table exists under the data root. Registering a custom dataset appends a row; the rows of known
datasets are never rewritten, and no machine-specific path is ever written (``scan_table`` is relative
to the data root).

A scan table ``<data root>/<dataset>/scans.csv`` has one row per 3-D volume with at least
``SCAN_COLUMNS``, plus protocol columns and one 1/0 column per task (empty where unknown).
"""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from ..io import atomic_write_csv
from ..paths import StageMissing, data_root, manifest_path

__all__ = [
    "MANIFEST_COLUMNS", "SCAN_COLUMNS", "PAPER_TASKS", "CQ500_FINDINGS", "RSNA_TASKS",
    "read_manifest", "dataset_info", "register_dataset", "scan_table_path", "is_available",
    "load_scans", "write_scans", "DatasetNotAvailable",
]

MANIFEST_COLUMNS = [
    "name", "description", "licence", "how_to_obtain", "tasks", "paper_scans", "paper_split",
    "scan_table", "ingest_command",
]
SCAN_COLUMNS = ["scan_id", "patient_id", "path", "split", "manufacturer", "slice_thickness_mm", "spacing"]

# Task columns, lower-case. The paper's ten tasks (Fig. 1e); ICH is the union of the subtypes.
PAPER_TASKS = ["tumor", "hydrocephalus", "edema", "adrd", "iph", "ivh", "sdh", "edh", "sah", "ich"]
RSNA_TASKS = ["ich", "edh", "iph", "ivh", "sah", "sdh"]
CQ500_FINDINGS = [
    "ich", "iph", "ivh", "sdh", "edh", "sah", "bleed_left", "bleed_right", "chronic_bleed",
    "fracture", "calvarial_fracture", "other_fracture", "mass_effect", "midline_shift",
]


class DatasetNotAvailable(StageMissing):
    """Raised when a dataset's scan table does not exist; the message names the command that makes it."""


def read_manifest(path: Path | None = None) -> pd.DataFrame:
    path = Path(path) if path else manifest_path()
    if not path.exists():
        raise FileNotFoundError(f"{path}: dataset manifest not found (set $FMCT_MANIFEST)")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {missing}")
    return df


def dataset_info(name: str, manifest: Path | None = None) -> dict:
    df = read_manifest(manifest)
    rows = df[df["name"] == name]
    if rows.empty:
        raise KeyError(f"dataset {name!r} is not in {manifest or manifest_path()}; "
                       f"known: {', '.join(df['name'])}")
    info = rows.iloc[0].to_dict()
    info["tasks"] = [t for t in info["tasks"].split(";") if t]
    return info


def register_dataset(name: str, *, description: str, tasks: list[str], licence: str = "private",
                     how_to_obtain: str = "", ingest_command: str = "", paper_scans: str = "",
                     paper_split: str = "", manifest: Path | None = None) -> bool:
    """Append a row for ``name`` unless one exists (known rows are never rewritten). Returns True if added.

    The write is atomic (temp file + rename) so a crash never leaves a half-written manifest.
    """
    path = Path(manifest) if manifest else manifest_path()
    df = read_manifest(path) if path.exists() else pd.DataFrame(columns=MANIFEST_COLUMNS)
    if (df["name"] == name).any():
        return False
    row = {
        "name": name, "description": description, "licence": licence, "how_to_obtain": how_to_obtain,
        "tasks": ";".join(tasks), "paper_scans": paper_scans, "paper_split": paper_split,
        "scan_table": f"{name}/scans.csv", "ingest_command": ingest_command,
    }
    df = pd.concat([df, pd.DataFrame([row])], ignore_index=True)
    atomic_write_csv(df[MANIFEST_COLUMNS], path)
    return True


def scan_table_path(name: str, root: Path | None = None) -> Path:
    return Path(root or data_root()) / name / "scans.csv"


def is_available(name: str, root: Path | None = None) -> bool:
    return scan_table_path(name, root).exists()


def load_scans(name: str, root: Path | None = None, manifest: Path | None = None) -> pd.DataFrame:
    """The scan table of a dataset. Raises ``DatasetNotAvailable`` naming the ingest command if absent.

    ``path`` is resolved against the dataset folder when relative. Task columns become nullable ints.
    """
    path = scan_table_path(name, root)
    if not path.exists():
        try:
            cmd = dataset_info(name, manifest).get("ingest_command") or f"fmct ingest {name} --source DIR"
        except KeyError:
            cmd = f"fmct ingest nifti --name {name} --source DIR --labels LABELS.csv"
        raise DatasetNotAvailable(
            f"dataset {name!r} is not available: {path} does not exist. Create it with:\n    {cmd}")
    df = pd.read_csv(path, dtype={"scan_id": str, "patient_id": str, "path": str, "split": str})
    folder = path.parent
    df["path"] = [p if os.path.isabs(p) else str(folder / p) for p in df["path"]]
    return df


def write_scans(df: pd.DataFrame, name: str, root: Path | None = None) -> Path:
    """Write a scan table atomically; checks the required columns and the patient-level split."""
    missing = [c for c in SCAN_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"scan table for {name!r} lacks columns {missing}")
    crossing = df.groupby("patient_id")["split"].nunique()
    if (crossing > 1).any():
        raise ValueError(f"scan table for {name!r}: patients in more than one split: "
                         f"{list(crossing[crossing > 1].index[:5])}")
    path = scan_table_path(name, root)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_csv(df, path)
    return path

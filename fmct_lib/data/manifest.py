"""The dataset registry and scan tables (DESIGN §3).

The registry has one row per dataset (``MANIFEST_COLUMNS``) and is read from two files:

- the shipped ``data_manifest.csv`` (package data; the checkout's top-level file): the known datasets
  (synthetic, RSNA, CQ500, the paper's private cohorts as placeholders), listed statically and never written;
- ``<data root>/datasets.csv`` (``USER_REGISTRY``): the datasets a user ingests under new names (a hospital's
  NIfTI folder), registered beside their data, so running fmct on your own data leaves a checkout unchanged
  and works as well from an installed wheel.

``$FMCT_MANIFEST`` names one file that replaces both: it is read alone and registrations append to it. A
dataset is *available* when its scan table exists under the data root. Registering appends a row and never
rewrites one: the bytes already in the file (line endings included) are kept, and no machine-specific path
is written (``scan_table`` is relative to the data root).

A scan table ``<data root>/<dataset>/scans.csv`` has one row per 3-D volume with at least
``SCAN_COLUMNS``, plus protocol columns and one 1/0 column per task (empty where unknown).

Nothing escapes the data root: a dataset name is one safe folder name (``validate_dataset_name``), and
every file a scan table names (``path``, ``*_path``) must lie under the data root unless the dataset lists
the outside folders it may read in ``<data root>/<dataset>/external_roots.txt`` (``load_scans``).
Registering takes the registry's lock, so concurrent registrations never lose a row.
"""
from __future__ import annotations

import csv
import io
import os
import re
from pathlib import Path

import pandas as pd

from ..io import atomic_path, atomic_write_csv, exclusive_lock
from ..paths import StageMissing, data_root, manifest_path

__all__ = [
    "check_ingestion_name", "MANIFEST_COLUMNS", "SCAN_COLUMNS", "PAPER_TASKS", "CQ500_FINDINGS", "RSNA_TASKS", "PAPER_DATASET_TASKS",
    "PAPER_RETRIEVAL_SUBTYPES", "RETRIEVAL_SUBTYPES", "paper_tasks", "retrieval_subtypes", "update_dataset_tasks",
    "read_manifest", "dataset_info", "register_dataset", "scan_table_path", "is_available",
    "load_scans", "write_scans", "DatasetNotAvailable", "validate_dataset_name", "dataset_lock", "PathOutsideRoot",
    "EXTERNAL_ROOTS_FILE", "external_roots", "USER_REGISTRY", "registry_files",
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
# The tasks the paper evaluates on the public datasets (Methods, "Datasets"): RSNA's five (any haemorrhage = ICH;
# not its EDH), CQ500's ten (not its fractures or chronic bleed); and their retrieval subtypes ("RSNA - 4
# retrieval tasks; CQ500 - 6 retrieval tasks"). Any other dataset: ``PAPER_TASKS`` and ``RETRIEVAL_SUBTYPES``.
PAPER_DATASET_TASKS = {
    "rsna": ["ich", "iph", "ivh", "sah", "sdh"],
    "cq500": ["ich", "iph", "ivh", "sdh", "edh", "sah", "bleed_left", "bleed_right", "midline_shift", "mass_effect"],
}
PAPER_RETRIEVAL_SUBTYPES = {"rsna": ["iph", "ivh", "sah", "sdh"], "cq500": ["ich", "iph", "ivh", "sdh", "edh", "sah"]}
RETRIEVAL_SUBTYPES = ["iph", "ivh", "sdh", "edh", "sah"]


# A dataset name is one folder under the data root: a letter or digit, then letters, digits, '.', '_', '-'.
DATASET_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
DATASET_NAME_RULE = ("a letter or digit, then at most 63 letters, digits, '.', '_' or '-' "
                     "(no path separators, not '.' or '..')")
# Under the data root: the registry of the datasets ingested there under new names.
USER_REGISTRY = "datasets.csv"
# Beside a scan table: the folders outside the data root its paths may name, one per line (the opt-in).
EXTERNAL_ROOTS_FILE = "external_roots.txt"
REGISTRY_WAIT_S = 60.0  # how long a registration waits for another to finish its (millisecond) update
SHOWN_ROWS = 5          # refused rows named in an error


class DatasetNotAvailable(StageMissing):
    """Raised when a dataset's scan table does not exist; the message names the command that makes it."""


class PathOutsideRoot(ValueError):
    """A scan table row names no file, or one outside the data root (and the folders its dataset allows)."""


def validate_dataset_name(name: str) -> str:
    """``name`` if it is a safe dataset folder name (``DATASET_NAME_RULE``), else ``ValueError`` saying why."""
    if not isinstance(name, str) or not DATASET_NAME.fullmatch(name):
        raise ValueError(f"dataset name {name!r} is not allowed: a name must be {DATASET_NAME_RULE}")
    return name


def check_ingestion_name(name: str, kind: str) -> str:
    """``name`` (``validate_dataset_name``) where ``fmct ingest <kind>`` may write it: a dataset the shipped registry
    knows is made only by the command it names (its ``ingest_command``; ``nifti`` and ``dicom`` count as one, a
    site's own scans), so one's own scans never take the name of the synthetic cohort, RSNA or CQ500 (whose own
    command would later replace them, and whose registered tasks are not theirs), else ``ValueError`` saying so."""
    validate_dataset_name(name)
    from ..paths import SHIPPED_MANIFEST
    shipped = read_manifest(SHIPPED_MANIFEST)
    same = shipped["name"].str.lower() == name.lower()  # Synthetic is synthetic's folder on macOS and Windows
    made_by = shipped.loc[same, "ingest_command"].astype(str).str.split(" --").str[0].tolist()
    own_scans = ("fmct ingest nifti", "fmct ingest dicom")
    command = f"fmct ingest {kind}"
    if made_by and made_by[0] != command and not (made_by[0] in own_scans and command in own_scans):
        raise ValueError(f"dataset name {name!r} is taken by a dataset fmct knows, made by `{made_by[0]}`, not "
                         f"`{command}`: name this dataset otherwise (e.g. --name {name}_{kind})")
    return name


def dataset_lock(name: str, root: Path | None = None) -> Path:
    """The lock file of dataset ``name`` under the data root (``root``, else ``$FMCT_DATA``'s): held while the dataset
    is written (an ingestion, the synthetic cohort's generation); kept apart, in ``.locks/``, so a refused
    ingestion leaves no dataset folder and no name meets another file's lock."""
    return Path(root or data_root()) / ".locks" / f"{validate_dataset_name(name)}.lock"


def registry_files(root: Path | None = None) -> list[Path]:
    """The files the registry is read from, in order: ``$FMCT_MANIFEST`` alone, else the shipped
    ``data_manifest.csv`` and ``<data root>/datasets.csv`` (where the user's datasets are registered; ``root``:
    another data root than ``$FMCT_DATA``'s)."""
    if os.environ.get("FMCT_MANIFEST"):
        return [manifest_path()]
    return [manifest_path(), Path(root or data_root()) / USER_REGISTRY]


def _read_one(path: Path) -> pd.DataFrame:
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in MANIFEST_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {missing}")
    return df


def read_manifest(path: Path | None = None, root: Path | None = None) -> pd.DataFrame:
    """The registry: the file ``path`` alone, or every file of :func:`registry_files` (of the data root ``root``,
    default ``$FMCT_DATA``'s; one that does not exist yet is skipped, except the first), one row per dataset. A
    name listed in two files is an error."""
    if path:
        files = [Path(path)]
    else:
        files = registry_files(root)
        files = files[:1] + [f for f in files[1:] if f.exists()]
    if not files[0].exists():
        if os.environ.get("FMCT_MANIFEST") and files[0] == manifest_path():
            raise FileNotFoundError(f"{files[0]}: no such dataset registry; $FMCT_MANIFEST names it (an ingestion "
                                    "creates it; unset $FMCT_MANIFEST to read the shipped one)")
        raise FileNotFoundError(f"{files[0]}: dataset manifest not found (set $FMCT_MANIFEST)")
    tables = [_read_one(f) for f in files]
    for later, table in zip(files[1:], tables[1:]):
        clash = sorted(set(table["name"]) & set(tables[0]["name"]))
        if clash:
            raise ValueError(f"{later}: datasets {clash} are already in {files[0]}; "
                             f"remove their rows from {later}")
    return pd.concat(tables, ignore_index=True) if len(tables) > 1 else tables[0]


def dataset_info(name: str, manifest: Path | None = None) -> dict:
    df = read_manifest(manifest)
    rows = df[df["name"] == name]
    if rows.empty:
        where = manifest or " and ".join(str(f) for f in registry_files())
        raise KeyError(f"dataset {name!r} is not in {where}; known: {', '.join(df['name'])}")
    info = rows.iloc[0].to_dict()
    info["tasks"] = [t for t in info["tasks"].split(";") if t]
    return info


def paper_tasks(dataset: str) -> list[str]:
    """The tasks the notebooks evaluate on ``dataset`` by default: those of the paper's for it
    (``PAPER_DATASET_TASKS``: RSNA, CQ500; else the ten of ``PAPER_TASKS``) that the registry lists for it,
    else every task it lists."""
    known = dataset_info(dataset)["tasks"]
    wanted = PAPER_DATASET_TASKS.get(dataset, PAPER_TASKS)
    return [t for t in wanted if t in known] or known


def retrieval_subtypes(dataset: str) -> list[str]:
    """The haemorrhage subtypes retrieved by default on ``dataset``: the paper's for RSNA and CQ500
    (``PAPER_RETRIEVAL_SUBTYPES``), else ``RETRIEVAL_SUBTYPES``."""
    return list(PAPER_RETRIEVAL_SUBTYPES.get(dataset, RETRIEVAL_SUBTYPES))


def register_dataset(name: str, *, description: str, tasks: list[str], licence: str = "private",
                     how_to_obtain: str = "", ingest_command: str = "", paper_scans: str = "",
                     paper_split: str = "", manifest: Path | None = None, root: Path | None = None) -> bool:
    """Register ``name`` unless the registry knows it (known rows are never rewritten). Returns True if added.

    The row is appended to ``manifest`` if given, else to the last file of :func:`registry_files` (the
    ``datasets.csv`` of the data root ``root`` (default ``$FMCT_DATA``'s) where the dataset's data are written,
    or ``$FMCT_MANIFEST``): the shipped ``data_manifest.csv`` is never
    written. The bytes already in the file are kept and the row ends as its lines do (CRLF or LF). The write
    is atomic (temp file + rename) so a crash never leaves a half-written registry, and the read-edit-write
    holds the registry's lock (``.<file name>.lock`` beside it), so concurrent registrations wait for each
    other and none is lost. A name already listed takes no lock.
    """
    validate_dataset_name(name)
    target = Path(manifest) if manifest else registry_files(root)[-1]

    def known() -> bool:
        if manifest or registry_files(root) == [target]:  # one file ($FMCT_MANIFEST): registering may create it
            return target.exists() and (read_manifest(target)["name"] == name).any()
        return (read_manifest(root=root)["name"] == name).any()

    if known():
        return False
    with exclusive_lock(target.with_name(f".{target.name}.lock"), what=f"dataset registry {target}",
                        wait=REGISTRY_WAIT_S):
        if known():  # registered by another process meanwhile
            return False
        row = {
            "name": name, "description": description, "licence": licence, "how_to_obtain": how_to_obtain,
            "tasks": ";".join(tasks), "paper_scans": paper_scans, "paper_split": paper_split,
            "scan_table": f"{name}/scans.csv", "ingest_command": ingest_command,
        }
        _append_row(target, row)
    return True


def update_dataset_tasks(name: str, tasks: list[str], description: str, *, root: Path | None = None) -> bool:
    """Set the ``tasks`` and ``description`` of ``name`` where a user's registry lists it and they differ (a
    dataset ingested again with other ``--map`` columns: its scan table has the new columns, so the registry must
    name them). The shipped ``data_manifest.csv`` is never written. Returns True if the row was rewritten."""
    files = registry_files(root)
    for target in files[1:] if len(files) > 1 else files:
        if not target.exists() or not (read_manifest(target)["name"] == name).any():
            continue
        with exclusive_lock(target.with_name(f".{target.name}.lock"), what=f"dataset registry {target}",
                            wait=REGISTRY_WAIT_S):
            old = target.read_bytes().decode()
            header, *rows = list(csv.reader(io.StringIO(old)))
            new = {header.index("tasks"): ";".join(tasks), header.index("description"): description}
            changed = False
            for row in rows:
                if row and row[header.index("name")] == name and any(row[i] != v for i, v in new.items()):
                    changed = True
                    for i, v in new.items():
                        row[i] = v
            if changed:
                text = io.StringIO()
                csv.writer(text, lineterminator="\r\n" if "\r\n" in old else "\n").writerows([header, *rows])
                with atomic_path(target) as tmp:
                    tmp.write_bytes(text.getvalue().encode())
        return changed
    return False


def _append_row(path: Path, row: dict) -> None:
    """Append ``row`` to the registry file ``path`` (created with a header if absent), keeping its bytes."""
    old = path.read_bytes() if path.exists() else b""
    columns = list(_read_one(path).columns) if old else MANIFEST_COLUMNS
    newline = "\r\n" if b"\r\n" in old else "\n"
    text = io.StringIO()
    writer = csv.writer(text, lineterminator=newline)
    if not old:
        writer.writerow(columns)
    writer.writerow([row.get(c, "") for c in columns])
    if old and not old.endswith(b"\n"):
        old += newline.encode()
    with atomic_path(path) as tmp:
        tmp.write_bytes(old + text.getvalue().encode())


def scan_table_path(name: str, root: Path | None = None) -> Path:
    return Path(root or data_root()) / validate_dataset_name(name) / "scans.csv"


def is_available(name: str, root: Path | None = None) -> bool:
    return scan_table_path(name, root).exists()


def load_scans(name: str, root: Path | None = None, manifest: Path | None = None) -> pd.DataFrame:
    """The scan table of a dataset. Raises ``DatasetNotAvailable`` naming the ingest command if absent.

    ``path`` is resolved against the dataset folder when relative. Task columns become nullable ints.

    Every file the table names (``path`` and any ``*_path`` column) must lie under the data root, after
    ``..`` is resolved (by name: symbolic links placed in the data root are followed as placed); otherwise
    ``PathOutsideRoot`` names the rows (scan_id) and where their paths lead. A dataset whose files live
    elsewhere (a hospital's NIfTI export on another disk) opts in by listing those folders, one per line
    (lines starting with ``#`` are comments; relative lines are relative to the dataset folder), in
    ``<data root>/<dataset>/external_roots.txt``: files under them are then read where they are.
    """
    path = scan_table_path(name, root)
    if not path.exists():
        known = list(read_manifest(manifest)["name"])
        similar = [k for k in known if k.lower() == name.lower() and k != name]
        if not similar and name not in known:  # a typo of a dataset that is there (mien for mine)
            import difflib
            there = [k for k in known if scan_table_path(k, root).exists()]
            similar = difflib.get_close_matches(name, there, n=1, cutoff=0.75)
        if similar:  # a typo: point at the dataset meant, not at an ingest command for a new one
            raise DatasetNotAvailable(f"dataset {name!r} is not known; did you mean {similar[0]!r}? "
                                      f"Known datasets: {', '.join(known)}")
        try:
            cmd = dataset_info(name, manifest).get("ingest_command") or f"fmct ingest {name} --source DIR"
        except KeyError:
            cmd = (f"fmct ingest nifti --name {name} --source DIR --labels LABELS.csv   "
                   "(for a DICOM export: fmct ingest dicom)")
        raise DatasetNotAvailable(
            f"dataset {name!r} is not available: {path} does not exist. Create it with:\n    {cmd}\n"
            f"Known datasets: {', '.join(known)}")
    df = pd.read_csv(path, dtype={"scan_id": str, "patient_id": str, "path": str, "split": str})
    folder = path.parent
    _check_contained(df, path, Path(root or data_root()))
    df["path"] = [p if os.path.isabs(p) else str(folder / p) for p in df["path"]]
    return df


def _check_contained(df: pd.DataFrame, table: Path, root: Path) -> None:
    """``PathOutsideRoot`` unless every path of the scan table ``table`` lies under ``root`` or an external root."""
    folder = table.parent
    allowed = [os.path.abspath(root), *external_roots(folder)]
    refused = []
    ids = df["scan_id"] if "scan_id" in df.columns else df.index
    for column in [c for c in df.columns if c == "path" or c.endswith("_path")]:
        for scan_id, p in zip(ids, df[column]):
            if pd.isna(p) or not str(p).strip():
                if column == "path":
                    refused.append(f"scan_id {scan_id!r}: no path")
                continue
            full = os.path.abspath(os.path.join(folder, str(p)))
            if not any(_is_under(full, base) for base in allowed):
                refused.append(f"scan_id {scan_id!r}: {column} {p!r} leads to {full}")
    if refused:
        raise PathOutsideRoot(
            f"{table}: {len(refused)} row(s) name no file or one outside the data root {os.path.abspath(root)}: "
            + "; ".join(refused[:SHOWN_ROWS]) + ("; …" if len(refused) > SHOWN_ROWS else "")
            + f". To read files kept elsewhere on purpose, list their folders, one per line, in "
              f"{folder / EXTERNAL_ROOTS_FILE}")


def external_roots(folder: Path) -> list[str]:
    """The outside folders a dataset may read (its ``external_roots.txt``), as absolute paths; [] without one."""
    path = Path(folder) / EXTERNAL_ROOTS_FILE
    if not path.exists():
        return []
    lines = [line.strip() for line in path.read_text().splitlines()]
    return [os.path.abspath(os.path.join(folder, os.path.expanduser(line)))
            for line in lines if line and not line.startswith("#")]


def _is_under(path: str, base: str) -> bool:
    try:
        return os.path.commonpath([path, base]) == base
    except ValueError:  # different drives
        return False


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

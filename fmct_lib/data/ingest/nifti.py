"""A folder of NIfTI volumes plus a labels CSV (a hospital's own data) -> a registered custom dataset.

Every ``.nii``/``.nii.gz`` below ``source`` (symbolic links to folders followed, hidden files such as macOS's
``._scan.nii.gz`` left out: ``common.source_files``) becomes one scan: read and checked by the loader that
preprocessing uses too (``preprocess.load_checked``: readable to the end, 3-D, finite, plausible spacing
and Hounsfield scale; ``checks.py``), so a file ingestion accepts is one the cache accepts. It is
reoriented to RAS and written under ``<root>/<name>/volumes`` as int16 HU, with its flags. The labels CSV
(``labels.read_labels``: its format, and what it refuses) has one row per volume: a path column (relative to
``source``, or a bare file name where no other file below ``source`` has that name; a bare name that several
files share is refused, naming the row and the files; so is a row that names no file but nearly names one that
no row names, ``ct_03.nii`` for ``ct_03.nii.gz``: ``_match_labels``), a patient column, label columns renamed to
task names through ``mapping`` (``{"csv column": "task"}``; e.g. EHR-derived labels as in the paper) and
optionally a split column. Volumes missing from the CSV are kept with empty labels and their own file as
patient (with a split column: in the unlabelled pretraining pool, ``splits.POOL_SPLIT``); bad volumes are
rejections. Without a split column the split is ``splits.stratified_splits`` (exact 8:1:1 by patient,
stratified by label, from ``seed``). The dataset is appended to the manifest with its tasks.

Acquisition metadata a NIfTI header lacks (the scanner's manufacturer, the slice thickness, kVp, the kernel)
comes from the same CSV through ``meta`` (``{"scan-table column": "csv column"}``, ``--meta``; ``META_COLUMNS``
are the columns it may set; ``read_meta``): a row's value replaces the default (an empty manufacturer, the
thickness as the volume's z-spacing), an empty cell keeps it. A given thickness unlike the z-spacing
(``THICKNESS_RATIO``) is kept as given, and counted and named in the summary.
"""
from __future__ import annotations

import functools
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ...paths import data_root
from ..manifest import check_ingestion_name, register_dataset, update_dataset_tasks
from ..preprocess import load_checked
from ..splits import POOL_SPLIT
from .common import Job, SourceError, finish, hu_int16, one_ingestion_at_a_time, run_jobs, source_files, to_ras
from .labels import _offending, read_labels, read_text_table, source_relative

__all__ = ["META_COLUMNS", "THICKNESS_RATIO", "read_nifti_job", "check_meta", "read_meta", "ingest_nifti"]

# The scan table's acquisition columns ``--meta`` may set from the labels CSV, each with the unit of a number
# (``None``: text, kept as written, surrounding spaces stripped). manufacturer and slice_thickness_mm are what
# notebook 06 groups by (Supp. Figs 10-11); kvp and convolution_kernel are the DICOM ingesters' protocol columns.
# Nothing else: the split, ids, paths, labels (--map) and site (which decides pretraining) are not metadata.
META_COLUMNS = {"manufacturer": None, "slice_thickness_mm": "mm", "kvp": "kV", "convolution_kernel": None}
# A given slice thickness more than this many times the volume's z-spacing, or less than its inverse, is counted
# and named (kept as given: thickness is the acquisition's, spacing the reconstruction's; 1.25 mm slices at
# 0.625 mm spacing is an overlapping reconstruction, 0.5 for 5 mm a thickness in cm).
THICKNESS_RATIO = 1.5
SHOWN_META = 10  # scans the summary names for a thickness unlike its spacing


def read_nifti_job(path):
    """Reader for ``run_jobs``: the checked volume (``preprocess.load_checked``) as RAS int16 HU."""
    scan = load_checked(Path(path))
    data, affine = to_ras(scan.hu, scan.affine)
    row = {"manufacturer": "", "slice_thickness_mm": round(float(np.linalg.norm(affine[:3, 2])), 4),
           "_notes": scan.notes}
    return hu_int16(data), affine, row, []


NEAR_SHOWN = 3  # near matches a refusal names before "…"
_LEADING_ZEROS = re.compile(r"(?<!\d)0+(?=\d)")  # zeros before a digit, at the start of a number


def _near_key(path: str) -> tuple[str, ...]:
    """A path as compared for a near match: its folders and file name in lower case, the NIfTI extension
    (``.nii.gz``, ``.nii``) dropped and leading zeros of every number dropped (``Site_A/CT_003.nii`` and
    ``site_a/ct_3.nii.gz`` are one key), ``.`` and empty parts left out."""
    parts = [part for part in path.replace("\\", "/").lower().split("/") if part not in ("", ".")]
    if parts:
        for suffix in (".nii.gz", ".nii"):
            if parts[-1].endswith(suffix) and len(parts[-1]) > len(suffix):
                parts[-1] = parts[-1][:-len(suffix)]
                break
    return tuple(_LEADING_ZEROS.sub("", part) for part in parts)


def _near_volumes(entry: str, by_stem: dict[str, list[tuple[tuple[str, ...], Path]]]) -> list[Path]:
    """The volumes whose path (relative to the source) names ``entry`` up to the NIfTI extension, case, leading
    zeros and leading folders: one key the other's last parts (``export/ct_03.nii`` and ``ct_03.nii.gz``,
    ``ct_3.nii.gz`` and ``site/CT_03.nii.gz``), never two different folders (``siteC/scan`` is no ``siteB/scan``)."""
    key = _near_key(entry)
    if not key:
        return []
    return [f for other, f in by_stem.get(key[-1], [])
            if other[-len(key):] == key or key[-len(other):] == other]


def _match_labels(files: list[Path], source: Path, labels: pd.DataFrame, labels_file,
                  path_column: str = "path") -> tuple[dict[Path, int], list[str]]:
    """Row index in ``labels`` for each file, matched by its path relative to ``source`` (``\\`` read as ``/``,
    as a Windows spreadsheet writes it; an absolute path below ``source`` made relative); a bare file name in
    the CSV (no folder part) matches the one file of that name anywhere below ``source``, and is refused
    (``ValueError`` naming the row and the files) when several files have that name. Also returns the rows
    that match no file (``"row N: path"``, N as a spreadsheet numbers them); none matching is refused.

    A row that matches no file but nearly names exactly one file no row names (``_near_volumes``: ``ct_03.nii``
    for ``ct_03.nii.gz``, another case, a leading folder, lost leading zeros) is refused, naming the rows and their
    volumes: ingested, that volume would be an unlabelled scan of a patient of its own, its patient's labelled
    scans perhaps in another split (a patient leak), so the CSV is to be corrected, not guessed at. A row with
    several near matches stays unmatched, its near matches named."""
    rel_of = {f: str(f.relative_to(source)) for f in files}
    by_rel = {rel: f for f, rel in rel_of.items()}
    by_name: dict[str, list[Path]] = {}
    for f in files:
        by_name.setdefault(f.name, []).append(f)
    relative = functools.partial(source_relative, source=source)
    out, unmatched = {}, []
    for i, entry in sorted(zip(labels.index, labels["path"].map(relative)), key=lambda r: r[1] not in by_rel):
        candidates = [by_rel[entry]] if entry in by_rel else by_name.get(entry, []) if Path(entry).name == entry else []
        if len(candidates) > 1:
            raise ValueError(f"{labels_file}: row {i + 2}: {entry!r} names {len(candidates)} files below the source: "
                             f"{', '.join(sorted(rel_of[f] for f in candidates))}; give the path relative to the "
                             "source folder (row 1 is the header)")
        if candidates and candidates[0] in out:
            raise ValueError(f"{labels_file}: rows {out[candidates[0]] + 2} and {i + 2} both name "
                             f"{rel_of[candidates[0]]}; one row per volume (row 1 is the header)")
        if candidates:
            out[candidates[0]] = i
        else:
            unmatched.append((i + 2, entry))
    unmatched.sort()
    by_stem: dict[str, list[tuple[tuple[str, ...], Path]]] = {}
    for f in files:
        if f not in out and (key := _near_key(rel_of[f])):
            by_stem.setdefault(key[-1], []).append((key, f))
    near = {n: _near_volumes(entry, by_stem) for n, entry in unmatched}
    single = [f"row {n}: {entry!r} -> volume {rel_of[near[n][0]]!r}?" for n, entry in unmatched if len(near[n]) == 1]
    if single:
        raise ValueError(
            f"{labels_file}: {len(single)} row(s) of column {path_column!r} (--path-col) name no volume below "
            f"{source} but nearly name one that no row names (another extension, case, leading folder or leading "
            f"zeros): {'; '.join(single[:NEAR_SHOWN])}"
            f"{f' and {len(single) - NEAR_SHOWN} more' if len(single) > NEAR_SHOWN else ''}. Correct the CSV's "
            f"path column to each volume's path relative to the source (or its file name) and run again; as it is, "
            "each such volume would be an unlabelled scan of a patient of its own, its patient's labelled scans "
            "perhaps in another split (row 1 is the header)")
    unmatched = [f"row {n}: {entry}" + (f" (nearly names {len(near[n])} volumes no row names: "
                                        f"{', '.join(sorted(rel_of[f] for f in near[n])[:NEAR_SHOWN])}"
                                        f"{' …' if len(near[n]) > NEAR_SHOWN else ''})" if near[n] else "")
                 for n, entry in unmatched]
    if len(labels) and not out:
        raise ValueError(f"{labels_file}: none of its {len(labels)} rows names a volume below {source} (e.g. "
                         f"{'; '.join(unmatched[:3])}; below it are e.g. {', '.join(list(by_rel)[:3])}): give each "
                         "volume's path relative to the source folder, or its file name")
    return out, unmatched


def check_meta(meta: dict[str, str] | None) -> dict[str, str]:
    """``meta`` (scan-table column -> labels CSV column), or a ``ValueError`` for a scan-table column that is not
    one of ``META_COLUMNS`` (naming them, and the pair written the other way round where it is one) or an empty
    name."""
    meta = dict(meta or {})
    for target, column in meta.items():
        if target not in META_COLUMNS:
            hint = (f" (the scan-table column comes first: --meta {column}={target}?)" if column in META_COLUMNS
                    else "")
            raise ValueError(f"--meta {target}={column}: {target!r} is not a column --meta sets{hint}; it sets the "
                             f"acquisition columns {', '.join(META_COLUMNS)} (SCAN_COLUMN=CSV_COLUMN; labels are "
                             "--map, the split --split-col)")
        if not column:
            raise ValueError(f"--meta {target}=: no CSV column named; --meta expects SCAN_COLUMN=CSV_COLUMN")
    return meta


def _positive_number(text: str) -> float:
    """``text`` as a finite positive number, else NaN."""
    try:
        value = float(text)
    except ValueError:
        return np.nan
    return value if np.isfinite(value) and value > 0 else np.nan


def read_meta(path, meta: dict[str, str]) -> pd.DataFrame:
    """The ``meta`` columns of the labels CSV at ``path`` (``check_meta``'s), one column per scan-table column,
    indexed by row position as ``labels.read_labels``'s table: text stripped, numbers (``META_COLUMNS`` with a
    unit) as floats; missing (``None``/NaN) where the cell is empty. Refused (``ValueError`` naming the file): a
    CSV column the file lacks (listing the file's columns), a number column holding anything but a positive
    number (each value with its rows)."""
    table = read_text_table(path)
    missing = [f"no column {column!r} (--meta {target}={column})" for target, column in meta.items()
               if column not in table.columns]
    if missing:
        raise ValueError(f"{path}: {', '.join(missing)}; the file's columns are "
                         f"{', '.join(map(repr, table.columns))}. Name its acquisition columns with --meta "
                         "SCAN_COLUMN=CSV_COLUMN, e.g. --meta manufacturer=scanner")
    out = pd.DataFrame(index=table.index)
    for target, column in meta.items():
        text = table[column].fillna("").astype(str).str.strip()
        if META_COLUMNS[target] is None:
            out[target] = text.where(text != "", None).astype(object)
            continue
        number = text.map(_positive_number)
        bad = (text != "") & number.isna()
        if bad.any():
            example = "120" if META_COLUMNS[target] == "kV" else "5 or 0.625"
            raise ValueError(f"{path}: column {column!r} (--meta {target}={column}) holds values that are not "
                             f"positive numbers (in {META_COLUMNS[target]}): {_offending(text, bad)}; write the "
                             f"number alone, e.g. {example}, and leave the cell empty where it is unknown (row 1 is "
                             "the header)")
        out[target] = number
    return out


def _thickness_unlike_spacing(rows: list[dict], given: dict[str, tuple[int, float]]) -> list[str]:
    """``"p01/ct.nii.gz (row 3): 5 mm given, z-spacing 0.5 mm"`` for each kept scan whose thickness ``given``
    (source -> (CSV row, thickness)) is more than ``THICKNESS_RATIO`` times its z-spacing or less than its
    inverse, in source order."""
    out = []
    for row in sorted(rows, key=lambda r: str(r["_source"])):
        if row["_source"] not in given:
            continue
        n, thickness = given[row["_source"]]
        z = float(str(row["spacing"]).split(",")[2])
        if max(thickness, z) > THICKNESS_RATIO * min(thickness, z):
            out.append(f"{row['_source']} (row {n}): {thickness:g} mm given, z-spacing {z:g} mm")
    return out


@one_ingestion_at_a_time
def ingest_nifti(source, *, name: str, labels: Path | None = None, mapping: dict[str, str] | None = None,
                 path_column: str = "path", patient_column: str = "patient_id", split_column: str | None = None,
                 meta: dict[str, str] | None = None, root: Path | None = None, workers: int = 2, seed: int = 0,
                 description: str = "") -> dict:
    """Ingest a NIfTI folder (+ labels CSV with ``mapping`` csv column -> task, ``meta`` scan-table column -> csv
    column) as dataset ``name``.

    The summary (``common.finish``) adds ``not_in_labels`` (volumes the CSV does not list) and
    ``labels_without_volume`` (CSV rows no volume matches) and ``labels_without_volume_rows`` (the first ten,
    named); with ``meta``, ``meta_given`` (per scan-table column, the kept scans whose value the CSV gave) and
    ``thickness_unlike_spacing`` (kept scans whose given thickness is unlike their z-spacing: ``THICKNESS_RATIO``)
    with ``thickness_unlike_spacing_scans`` (the first ten, named)."""
    check_ingestion_name(name, "nifti")  # before anything is written
    meta = check_meta(meta)
    source = Path(source).expanduser()
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder (--source must be the folder of NIfTI volumes)")
    files = sorted(p for p in source_files(source) if p.name.endswith((".nii", ".nii.gz")))
    if not files:
        raise SourceError(f"{source}: no .nii or .nii.gz files below this folder")
    mapping = dict(mapping or {})
    tasks = list(mapping.values())
    if labels is None and (mapping or split_column or meta):
        raise ValueError(f"{'--map' if mapping else '--split-col' if split_column else '--meta'} needs a labels CSV "
                         "(--labels)")
    table = pd.DataFrame(columns=["path", "patient", *tasks])
    acquisition = pd.DataFrame(columns=list(meta))
    if labels is not None:
        table = read_labels(labels, path_column=path_column, patient_column=patient_column, mapping=mapping,
                            split_column=split_column)
        acquisition = read_meta(labels, meta)
    rows_of, unmatched = _match_labels(files, source, table, labels, path_column)

    jobs, given_thickness = [], {}
    for f in files:
        rel = str(f.relative_to(source))
        if f in rows_of:
            rec = table.loc[rows_of[f]]
            columns, patient = {task: rec[task] for task in tasks}, rec["patient"]
            # the CSV's acquisition values replace the reader's defaults (job columns come last); empty: kept
            columns.update({target: value for target, value in acquisition.loc[rows_of[f]].items()
                            if value is not None and pd.notna(value)})
            if "slice_thickness_mm" in columns:
                given_thickness[rel] = (rows_of[f] + 2, float(columns["slice_thickness_mm"]))
        else:
            columns, patient = {task: pd.NA for task in tasks}, rel
        jobs.append(Job(source_key=rel, patient=patient, inputs=str(f), columns=columns))
    given_splits = None
    if split_column:  # volumes the CSV does not list have neither labels nor a split: the pretraining pool
        given_splits = {str(f.relative_to(source)): POOL_SPLIT for f in files if f not in rows_of}
        given_splits.update(zip(table["patient"], table["split"]))

    dataset_dir = Path(root or data_root()) / name
    rows, rejects = run_jobs(jobs, read_nifti_job, dataset_dir, workers=workers, desc=f"ingest {name}")
    unlike = _thickness_unlike_spacing(rows, given_thickness)
    summary = finish(rows, rejects, name, dataset_dir, seed=seed, root=root, tasks=tasks, columns=list(meta),
                     given_splits=given_splits)
    description = description or f"custom NIfTI dataset ingested from a folder ({len(files)} files)"
    register_dataset(name, tasks=tasks, description=description,
                     ingest_command=f"fmct ingest nifti --name {name} --source DIR --labels LABELS.csv", root=root)
    update_dataset_tasks(name, tasks, description, root=root)  # ingested before with other --map columns
    kept = {row["_source"] for row in rows}  # a volume refused (rejects.csv) is not kept, listed or not
    unlisted = [rel for rel in (str(f.relative_to(source)) for f in files if f not in rows_of) if rel in kept]
    summary["not_in_labels"] = len(unlisted)
    summary["labels_without_volume"] = len(unmatched)
    summary["labels_without_volume_rows"] = unmatched[:10]
    summary["not_in_labels_volumes"] = unlisted[:10]
    if meta:
        summary["meta_given"] = {target: sum(job.source_key in kept and target in job.columns for job in jobs)
                                 for target in meta}
        summary["thickness_unlike_spacing"] = len(unlike)
        summary["thickness_unlike_spacing_scans"] = unlike[:SHOWN_META]
    return summary

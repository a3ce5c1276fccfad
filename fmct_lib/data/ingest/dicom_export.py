"""A hospital's DICOM export (any folder layout) plus an optional labels CSV -> a registered custom dataset.

The source is every file below ``source``, whatever its names and folders: a PACS export of one folder per
study or series, a tree with a DICOMDIR, a flat dump. The headers are indexed once (``headers.index_headers``,
cached in the private ``dicom_index.csv``) and grouped by SeriesInstanceUID. **Each CT series is one scan**, as
the paper counts scans (Methods, "Datasets": scan series, those with fewer than 10 slices left out); with
``per_study`` a study keeps only its largest series (of those the filters keep), as RSNA's per-study mode does.
Files that are not DICOM or not an image of a series (a README, a DICOMDIR) are rows of ``rejects.csv`` with their
reason, and so are the series a ``SeriesFilter`` leaves out: another modality (a dose report), fewer than 10 images
(the paper's filter), and on request contrast series, other planes (reformats), slice thicknesses, kVp or kernels
(``PAPER_COHORT``: the paper's cohort). Each series kept is read by the shared DICOM reader (``read_dicom_job``:
ordering, gaps, tilt, rescale, Enhanced CT frames, every check of ``checks.py``).

The labels CSV (``labels.read_labels``: values, refusals) names each row's study or series in the column
``key_column``, matched on ``match_on``:

- ``accession``: the AccessionNumber (what a report or an EHR extract carries; the default),
- ``study`` / ``series``: the StudyInstanceUID / SeriesInstanceUID,
- ``folder``: a folder below ``source`` (relative, or absolute below it): the series with files in it or below it.

A study's row labels each of its series (in per-study mode, the series the study keeps). Rows are matched against
every series found, before the filters: rows that match no series, and rows that label only series left out, are
named in the summary; a CSV none of whose rows matches is refused, saying which other ``match_on`` its values would
match. Series no row names are kept without labels. The patient of a scan is the header's PatientID, or with
``patient_column`` the CSV's patient of the rows matching that PatientID's series (``_patients``: one person is one
patient, in one split); a series without a PatientID is its study's own patient, counted as ``no_patient_id``. With
``split_column`` a patient's scans take the split of its rows, and patients no row names go to the pretraining pool.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...paths import data_root
from ..checks import slice_plane
from ..dicom import header_number
from ..manifest import check_ingestion_name, register_dataset, update_dataset_tasks
from ..splits import POOL_SPLIT
from .common import (DICOM_COLUMNS, Job, SourceError, finish, one_ingestion_at_a_time, read_dicom_job, run_jobs,
                     source_files)
from .cq500 import is_contrast
from .headers import index_headers
from .labels import read_labels, source_relative

__all__ = ["MATCH_ON", "MIN_SLICES", "PLANES", "PAPER_COHORT", "SeriesFilter", "index_series", "ingest_dicom"]

INDEX_TAGS = {"patient": "PatientID", "study": "StudyInstanceUID", "series": "SeriesInstanceUID",
              "accession": "AccessionNumber", "modality": "Modality", "image_type": "ImageType",
              "description": "SeriesDescription", "contrast_agent": "ContrastBolusAgent", "frames": "NumberOfFrames",
              "orientation": "ImageOrientationPatient", "thickness": "SliceThickness", "kvp": "KVP",
              "kernel": "ConvolutionKernel"}
MATCH_ON = {"accession": "AccessionNumber", "study": "StudyInstanceUID", "series": "SeriesInstanceUID",
            "folder": "folder below --source"}
MIN_SLICES = 10  # the paper leaves out series of fewer than 10 slices (Methods, "Datasets")
PLANES = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class SeriesFilter:
    """Which series of an export become scans. Every refusal is a row of ``rejects.csv`` with its reason. The
    header-only criteria (modality, images, contrast) are applied before any pixel is read; the others too where the
    headers give the value, and again once the series is read (an Enhanced CT object keeps them in its functional
    groups; a missing SliceThickness is then the slice step). The paper's cohort (Methods, "Datasets"):
    ``PAPER_COHORT``, with its kernel criterion (Siemens Hr/Qr and Toshiba J, sharpness 35–45) left to ``kernel``."""

    min_slices: int = MIN_SLICES                  # the paper leaves out series of fewer than 10 slices
    drop_contrast: bool = False                   # the paper's cohort is non-contrast CT
    planes: tuple[str, ...] | None = None         # e.g. ("axial",): sagittal and coronal reformats left out
    thickness_mm: tuple[float, float] | None = None  # inclusive range of the slice thickness
    kvp: tuple[float, float] | None = None        # inclusive range of the tube voltage
    kernel: str | None = None                     # a regular expression searched in ConvolutionKernel (any case)

    def __post_init__(self):
        if self.min_slices < 2:
            raise ValueError(f"--min-slices must be at least 2 (a volume), got {self.min_slices}")
        if self.planes is not None and (not self.planes or set(self.planes) - set(PLANES)):
            raise ValueError(f"--plane takes {', '.join(PLANES)}, got {', '.join(self.planes) or 'nothing'}")
        for flag, bounds in (("--thickness-mm", self.thickness_mm), ("--kvp", self.kvp)):
            if bounds is not None and not (len(bounds) == 2 and 0 <= bounds[0] <= bounds[1]):
                raise ValueError(f"{flag} takes MIN MAX with 0 <= MIN <= MAX, got {' '.join(map(str, bounds))}")
        if self.kernel is not None:
            try:
                re.compile(self.kernel)
            except re.error as e:
                raise ValueError(f"--kernel {self.kernel!r} is not a regular expression: {e}") from e

    def refusal(self, plane, thickness, kvp, kernel) -> str | None:
        """Why a series with these values is left out, or None; a value not known (``""``, NaN) passes."""
        ranges = [(header_number(thickness), self.thickness_mm, "slice thickness {:g} mm", "--thickness-mm"),
                  (header_number(kvp), self.kvp, "{:g} kVp", "--kvp")]
        for value, bounds, what, flag in ranges:
            if bounds is not None and value is not None and not bounds[0] <= value <= bounds[1]:
                return f"{what.format(value)} outside {bounds[0]:g}-{bounds[1]:g} ({flag})"
        if self.planes is not None and plane and plane not in self.planes:
            return f"{plane} slices (--plane {' '.join(self.planes)})"
        kernel = "" if pd.isna(kernel) else str(kernel)
        if self.kernel is not None and kernel and not re.search(self.kernel, kernel, re.IGNORECASE):
            return f"kernel {kernel!r} not matched by --kernel {self.kernel!r}"
        return None


PAPER_COHORT = SeriesFilter(drop_contrast=True, thickness_mm=(0.5, 5.0), kvp=(70.0, 150.0))


def _plane(orientation: str) -> str:
    """The plane of slices with this ImageOrientationPatient (``a\\b\\c\\d\\e\\f``); ``""`` where the header has none
    (an Enhanced CT object keeps it in its functional groups: known once read)."""
    try:
        iop = np.array([float(v) for v in orientation.split("\\")])
    except ValueError:
        return ""
    return slice_plane(np.cross(iop[:3], iop[3:])) if iop.shape == (6,) and np.isfinite(iop).all() else ""


def index_series(index: pd.DataFrame, source: Path) -> pd.DataFrame:
    """One row per series (index: SeriesInstanceUID) from the readable rows of a header index: its study, patient,
    accession, modality, description, contrast agent, ``files`` (sorted), ``n_images`` (localizers not counted; an
    Enhanced CT object's frames counted), ``plane`` (of its slices, from the headers; ``""`` where unknown),
    ``folders`` (those holding its files, relative to ``source``) and ``folder`` (the deepest folder holding all of
    them; ``.`` for the source itself)."""
    def first(values):  # the first non-empty value (a tag some slices lack)
        return next((v for v in values if v), "")

    grouped = index.groupby("series", sort=True)
    series = grouped[["study", "patient", "accession", "modality", "description", "contrast_agent",
                      "orientation", "thickness", "kvp", "kernel"]].agg(first)
    series["plane"] = series.pop("orientation").map(_plane)
    series["files"] = grouped["file"].agg(sorted)
    images = index["frames"].map(lambda f: int(f) if f.isdigit() else 1).where(
        ~index["image_type"].str.upper().str.contains("LOCALIZER"), 0)  # an Enhanced CT object: one per frame
    series["n_images"] = images.groupby(index["series"]).sum()
    series["folders"] = [sorted({os.path.relpath(os.path.dirname(f), source) for f in files})
                         for files in series["files"]]
    series["folder"] = [os.path.relpath(os.path.commonpath([os.path.join(source, d) for d in folders]), source)
                        for folders in series["folders"]]
    return series


def _series_by_key(series: pd.DataFrame, match_on: str) -> dict[str, list[str]]:
    """Labels key -> the series it names (``match_on``: the header value compared; a folder names every series
    with files in it or below it, ``.`` the whole source)."""
    out: dict[str, list[str]] = {}
    for uid, s in series.iterrows():
        if match_on == "folder":  # a folder holding some of its files, or a folder above one
            keys = {".", *(str(p) for d in s["folders"] for p in (Path(d), *Path(d).parents))}
        else:
            keys = {uid if match_on == "series" else s[match_on]}
        for key in keys - {""}:
            out.setdefault(key, []).append(uid)
    return out


def _match_labels(table: pd.DataFrame, series: pd.DataFrame, match_on: str, source: Path,
                  labels_file) -> tuple[dict[str, int], list[str]]:
    """Row of ``table`` for each series it labels, and the rows that match none (``"row N: key"``). Refused: a
    series two rows name, and a CSV none of whose rows matches (naming the ``match_on`` its keys would match)."""
    keys = table["path"].map(functools.partial(source_relative, source=source)) if match_on == "folder" \
        else table["path"]
    by_key = _series_by_key(series, match_on)
    unpadded = {key.lstrip("0"): key for key in by_key} if match_on == "accession" else {}
    row_of, unmatched = {}, []
    for i, key in zip(table.index, keys):
        found = by_key.get(key, [])
        if not found:
            near = unpadded.get(key.lstrip("0")) if key.lstrip("0") else None
            unmatched.append(f"row {i + 2}: {key}" + (f" (the export has {near}: leading zeros lost, as a spreadsheet "
                                                      "drops them? keep the column as text)" if near else ""))
        for uid in found:
            if uid in row_of:
                raise ValueError(f"{labels_file}: rows {row_of[uid] + 2} and {i + 2} both label series {uid} (folder "
                                 f"{series.loc[uid, 'folder']}); one row per study or series (row 1 is the header)")
            row_of[uid] = i
    if len(table) and not row_of:
        others = {mode: table["path"].isin(set(_series_by_key(series, mode))).sum() for mode in MATCH_ON
                  if mode != match_on}
        best = max(others, key=others.get)
        examples = ", ".join(map(repr, sorted(by_key)[:3]))
        hint = (f"; {others[best]} of them name a series by its {MATCH_ON[best]}: --match-on {best}" if others[best]
                else f"; the source's {MATCH_ON[match_on]} values are e.g. {examples}")
        raise ValueError(f"{labels_file}: none of its {len(table)} rows names a series below the source by its "
                         f"{MATCH_ON[match_on]} (--match-on {match_on}; e.g. {'; '.join(unmatched[:3])}){hint}")
    return row_of, unmatched


def _screen(series: pd.DataFrame, keep: SeriesFilter, per_study: bool) -> tuple[pd.DataFrame, list[tuple[str, str]]]:
    """The series to read, and the others as rejections with their reason (nothing read but headers). Per study the
    largest series is chosen among those the other filters keep."""
    rejects = []

    def refuse(mask, reason):
        for uid in series.index[mask]:
            rejects.append((uid, f"series in {series.loc[uid, 'folder']}: {reason(series.loc[uid])}"))
        return series[~mask]

    series = refuse(series["modality"].str.upper() != "CT",
                    lambda s: f"modality {s['modality'] or 'missing'!r}, not CT ({len(s['files'])} file(s))")
    if keep.drop_contrast:
        contrast = series["description"].map(is_contrast) | (series["contrast_agent"] != "")
        series = refuse(contrast, lambda s: f"contrast series ({s['description'] or s['contrast_agent']!r}; "
                                            "dropped by --drop-contrast)")
    series = refuse(series["n_images"] < keep.min_slices,
                    lambda s: f"{s['n_images']} image(s), fewer than {keep.min_slices} (--min-slices; the paper "
                              "leaves out series of fewer than 10 slices)")
    why = {uid: keep.refusal(s["plane"], s["thickness"], s["kvp"], s["kernel"]) for uid, s in series.iterrows()}
    series = refuse(series.index.map(lambda uid: why[uid] is not None).to_numpy(bool), lambda s: why[s.name])
    if per_study:
        largest = series.rename_axis("uid").sort_values(["n_images", "uid"], ascending=[False, True]) \
            .groupby("study", sort=False).head(1)
        kept = series.index.isin(largest.index)
        keep_of = dict(zip(largest["study"], largest.index))
        series = refuse(~kept, lambda s: f"{s['n_images']} images of a study with several series; per-study mode "
                                         f"keeps the largest ({keep_of[s['study']]})")
    return series, rejects


@one_ingestion_at_a_time
def ingest_dicom(source, *, name: str, labels: Path | None = None, mapping: dict[str, str] | None = None,
                 key_column: str = "accession", match_on: str = "accession", patient_column: str | None = None,
                 split_column: str | None = None, per_study: bool = False, keep: SeriesFilter = SeriesFilter(),
                 root: Path | None = None, workers: int = 2, seed: int = 0, on_gap: str = "flag",
                 tilt: str = "resample", description: str = "") -> dict:
    """Ingest the DICOM files below ``source`` (+ labels CSV with ``mapping`` csv column -> task) as ``name``.

    The summary (``common.finish``) adds ``series`` (CT and other series found), ``not_in_labels`` (scans no row
    labels), ``labels_without_volume`` (rows that match no scan) with ``labels_without_volume_rows`` (the first ten,
    named) and ``no_patient_id`` (scans without a PatientID: each is its study's own patient)."""
    check_ingestion_name(name, "dicom")  # before anything is written
    if match_on not in MATCH_ON:
        raise ValueError(f"--match-on must be one of {', '.join(MATCH_ON)}, got {match_on!r}")
    source = Path(source).expanduser()
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder (--source must be the folder of the DICOM export)")
    mapping = dict(mapping or {})
    tasks = list(mapping.values())
    if labels is None and (mapping or split_column or patient_column):
        flag = "--map" if mapping else "--split-col" if split_column else "--patient-col"
        raise ValueError(f"{flag} needs a labels CSV (--labels)")
    table = pd.DataFrame(columns=["path", "patient", *tasks])
    if labels is not None:  # read and checked before a header is
        table = read_labels(labels, path_column=key_column, patient_column=patient_column, mapping=mapping,
                            split_column=split_column, path_flag="--key-col", what=f"{match_on} key")
    files = source_files(source)
    if not files:
        raise SourceError(f"{source}: no files below this folder")

    dataset_dir = Path(root or data_root()) / name
    index = index_headers(files, dataset_dir / "dicom_index.csv", tags=INDEX_TAGS, required=("study", "series"),
                          workers=workers, desc=f"index {name} headers")
    rejects = [(r.file, r.error) for r in index.itertuples() if r.error]
    readable = index[index["error"] == ""]
    if readable.empty:  # nothing of the dataset is written for a source that holds no DICOM image
        (dataset_dir / "dicom_index.csv").unlink(missing_ok=True)
        if dataset_dir.is_dir() and not any(dataset_dir.iterdir()):
            dataset_dir.rmdir()
        raise SourceError(f"{source}: none of its {len(files)} files is a DICOM image (e.g. {files[0]}: "
                          f"{index['error'].iloc[0]})")
    found = index_series(readable, source)
    matched, unmatched = _match_labels(table, found, match_on, source, labels)  # every series, before the filters
    series, screened = _screen(found, keep, per_study)
    rejects += screened
    row_of, left_out = _labels_of_kept(matched, found, series, per_study, dict(screened), labels)
    patients = _patients(found, series, table, matched, labels) if patient_column else \
        {uid: _header_patient(found, uid) for uid in series.index}
    given_splits = _given_splits(table, row_of, patients, labels) if split_column else None
    jobs = []
    for uid, s in series.iterrows():
        columns = {task: table.loc[row_of[uid], task] if uid in row_of else pd.NA for task in tasks}
        columns["contrast"] = int(is_contrast(s["description"]) or s["contrast_agent"] != "")
        jobs.append(Job(source_key=s["study"] if per_study else uid, patient=patients[uid],
                        inputs=tuple(s["files"]), columns=columns))

    options = {"on_gap": on_gap, "tilt": tilt}
    rows, job_rejects = run_jobs(jobs, functools.partial(read_dicom_job, **options), dataset_dir, options=options,
                                 workers=workers, desc=f"ingest {name}")
    # again once read: the values the headers did not give (an Enhanced CT object's, a missing SliceThickness)
    why = [keep.refusal(row["plane"], row["slice_thickness_mm"], row["kvp"], row["convolution_kernel"])
           for row in rows]
    folder_of = {job.source_key: series.loc[uid, "folder"] for uid, job in zip(series.index, jobs)}
    job_rejects += [(row["_source"], f"series in {folder_of[row['_source']]}: {reason}")
                    for row, reason in zip(rows, why) if reason]
    rows = [row for row, reason in zip(rows, why) if not reason]
    summary = finish(rows, rejects + job_rejects, name, dataset_dir, seed=seed, root=root, tasks=tasks,
                     columns=[*DICOM_COLUMNS, "contrast"], given_splits=given_splits)
    description = description or f"custom DICOM dataset ingested from an export ({len(series)} series)"
    register_dataset(name, tasks=tasks, description=description,
                     ingest_command=f"fmct ingest dicom --name {name} --source DIR --labels LABELS.csv", root=root)
    update_dataset_tasks(name, tasks, description, root=root)  # ingested before with other --map columns
    summary["series"] = len(found)
    labelled = {series.loc[uid, "study"] if per_study else uid for uid in row_of}
    summary["not_in_labels"] = sum(row["_source"] not in labelled for row in rows)
    summary["labels_without_volume"] = len(unmatched)
    summary["labels_without_volume_rows"] = unmatched[:10]
    summary["labels_of_left_out_series"] = len(left_out)
    summary["labels_of_left_out_series_rows"] = left_out[:10]
    summary["no_patient_id"] = int((series["patient"] == "").sum())
    return summary


def _labels_of_kept(matched: dict[str, int], found: pd.DataFrame, series: pd.DataFrame, per_study: bool,
                    reasons: dict[str, str], labels_file) -> tuple[dict[str, int], list[str]]:
    """The labels row of each series to read, from the rows matched against every series found: in per-study mode
    a row of a study's other series labels the series the study keeps. Also the rows that label only series left
    out (``"row N: why"``). Two rows for one kept series are refused."""
    kept_of_study = dict(zip(series["study"], series.index)) if per_study else {}
    row_of, rows_kept = {}, set()
    for uid, i in matched.items():
        target = uid if uid in series.index else kept_of_study.get(found.loc[uid, "study"])
        if target is None:
            continue
        if row_of.setdefault(target, i) != i:
            raise ValueError(f"{labels_file}: rows {row_of[target] + 2} and {i + 2} both label the scan of series "
                             f"{target} (folder {series.loc[target, 'folder']}"
                             + ("; per-study mode keeps one series per study" if per_study else "") + ")")
        rows_kept.add(i)
    left_out = sorted({i for i in matched.values()} - rows_kept)
    first_of = {i: uid for uid, i in reversed(list(matched.items()))}
    return row_of, [f"row {i + 2}: {reasons.get(first_of[i], 'left out')}" for i in left_out]


def _header_patient(found: pd.DataFrame, uid: str) -> str:
    """A series' patient in the headers: its PatientID, else its own study's."""
    return found.loc[uid, "patient"] or f"study {found.loc[uid, 'study']}"


def _patients(found: pd.DataFrame, series: pd.DataFrame, table: pd.DataFrame, matched: dict[str, int],
              labels_file) -> dict[str, str]:
    """Each series' patient under ``--patient-col``: the CSV's patient of the rows that match it, taken over by every
    series with that header PatientID (a patient's unlisted studies too), so one person is never two patients in
    two splits; the header's where the CSV names none of the patient's series. A header patient given two CSV
    patients is refused."""
    csv_of: dict[str, tuple[str, int]] = {}
    for uid, i in matched.items():
        header, given = _header_patient(found, uid), table.loc[i, "patient"]
        j = csv_of.setdefault(header, (given, i))[1]
        if csv_of[header][0] != given:
            raise ValueError(f"{labels_file}: rows {j + 2} and {i + 2} name two patients ({csv_of[header][0]!r}, "
                             f"{given!r}; --patient-col) for series of one PatientID in the headers: one person is "
                             "one patient")
    return {uid: csv_of.get(_header_patient(found, uid), (_header_patient(found, uid),))[0] for uid in series.index}


def _given_splits(table: pd.DataFrame, row_of: dict[str, int], patients: dict[str, str],
                  labels_file) -> dict[str, str]:
    """Patient -> split from the CSV's split column; patients no row names go to the pretraining pool. Refused: a
    patient whose rows (matched through the headers' PatientID where the CSV has no patient column) disagree."""
    splits: dict[str, set] = {}
    for uid, i in row_of.items():
        splits.setdefault(patients[uid], set()).add((table.loc[i, "split"], i))
    crossing = {p: s for p, s in splits.items() if len({split for split, _ in s}) > 1}
    if crossing:
        p, s = next(iter(crossing.items()))
        rows = ", ".join(f"row {i + 2} {split}" for split, i in sorted(s, key=lambda r: r[1]))
        raise ValueError(f"{labels_file}: the split column puts one patient in several splits ({rows}; patient "
                         f"{p!r}{' and ' + str(len(crossing) - 1) + ' more' if len(crossing) > 1 else ''}): all "
                         "scans of a patient must share a split")
    given = {p: POOL_SPLIT for p in patients.values()}
    given.update({p: next(iter(s))[0] for p, s in splits.items()})
    return given

"""CQ500 (qure.ai) -> one RAS volume per series with the patient's majority-of-3 labels (datasets.md §2).

Source layout: ``reads.csv`` (``name,Category,R1:ICH,...,R3:MidlineShift``; 14 findings read by three
radiologists) and the batch folders ``qct*/CQ500CT<N> CQ500CT<N>/Unknown Study/CT <description>/*.dcm``
(found anywhere below ``source``). A finding is positive when at least 2 of the 3 readers marked it;
every series of a patient carries the patient's labels, as in the paper. Series description, slice
thickness and a contrast flag are kept as columns; ``drop_contrast=True`` leaves contrast series out: by the
folder's name before reading, and by the header (its description, its contrast agent) once read.
"""
from __future__ import annotations

import functools
import os
import re
from pathlib import Path

import pandas as pd

from ...paths import data_root
from ..manifest import CQ500_FINDINGS, check_ingestion_name, register_dataset
from .common import DICOM_COLUMNS, Job, SourceError, finish, one_ingestion_at_a_time, read_dicom_job, run_jobs

__all__ = ["READS_FINDINGS", "read_cq500_labels", "find_series", "is_contrast", "ingest_cq500"]

# reads.csv finding -> task column, in reads.csv order.
READS_FINDINGS = dict(zip(
    ["ICH", "IPH", "IVH", "SDH", "EDH", "SAH", "BleedLocation-Left", "BleedLocation-Right", "ChronicBleed",
     "Fracture", "CalvarialFracture", "OtherFracture", "MassEffect", "MidlineShift"],
    ["ich", "iph", "ivh", "sdh", "edh", "sah", "bleed_left", "bleed_right", "chronic_bleed", "fracture",
     "calvarial_fracture", "other_fracture", "mass_effect", "midline_shift"]))
PATIENT_FOLDER = re.compile(r"^CQ500CT(\d+)(?: CQ500CT\1)?$")
# "C" alone or first ("C THIN", not "C-SPINE"), "+C", "POST C"/"POST CONTRAST" (not "POST FOSSA"), CECT, CTA, "150cc"
_CONTRAST = re.compile(r"(\+\s*c\b|^c(?:-\d+)?(?![\w-])|\bpost[\s-]*(?:c\b|con)|\bcect\b|\bcta\b|\d+\s*cc\b|"
                       r"(?<!pre )(?<!non )(?<!non-)(?<!without )\bcontrast\b)", re.IGNORECASE)


def read_cq500_labels(reads_csv: Path) -> pd.DataFrame:
    """Majority-of-3 labels per patient (index ``CQ500-CT-<N>``; ``CQ500_FINDINGS`` + ``category``).

    Refused (``ValueError`` naming the file, column and rows): a read that is not 0 or 1 (an empty cell
    included), a patient listed twice with different reads."""
    reads = pd.read_csv(reads_csv, dtype=str, keep_default_na=False).apply(lambda c: c.str.strip())
    expected = [f"R{r}:{f}" for r in (1, 2, 3) for f in READS_FINDINGS]
    missing = [c for c in ["name", "Category", *expected] if c not in reads.columns]
    if missing:
        raise ValueError(f"{reads_csv}: not a CQ500 reads.csv, missing columns {missing[:5]}")
    for column in expected:
        bad = ~reads[column].isin(["0", "1", "0.0", "1.0"])
        if bad.any():
            rows = ", ".join(f"row {i + 2} ({reads['name'][i]}): {reads[column][i]!r}" for i in reads.index[bad][:5])
            raise ValueError(f"{reads_csv}: column {column!r} must be 0 or 1; {int(bad.sum())} row(s) are not: "
                             f"{rows} (row 1 is the header)")
    reads[expected] = reads[expected].replace({"0.0": "0", "1.0": "1"})
    distinct = reads[["name", "Category", *expected]].drop_duplicates()
    conflicting = distinct["name"][distinct["name"].duplicated()]
    if len(conflicting):
        name = conflicting.iloc[0]
        rows = ", ".join(str(i + 2) for i in reads.index[reads["name"] == name])
        raise ValueError(f"{reads_csv}: {name!r} is listed in rows {rows} with different reads "
                         f"({len(set(conflicting))} such name(s)); one set of reads per patient (row 1 is the header)")
    out = pd.DataFrame(index=reads["name"])
    for finding, task in READS_FINDINGS.items():
        votes = sum(reads[f"R{r}:{finding}"].astype(int).to_numpy() for r in (1, 2, 3))
        out[task] = (votes >= 2).astype(int)
    out["category"] = reads["Category"].to_numpy()
    return out[~out.index.duplicated()]  # repeated rows with the same reads


def is_contrast(description: str) -> bool:
    """Whether a series description names a contrast-enhanced series (``+C``, ``C THIN``, ``150cc``...).

    ``PRE CONTRAST``/``non contrast`` series are plain. Folder names lose ``+`` and ``/`` (``CT C``).
    """
    return bool(_CONTRAST.search(description.strip()))


def find_series(source: Path) -> tuple[list[tuple[str, Path]], list[tuple[str, str]]]:
    """``(patient name, series folder)`` for every folder holding files below a ``CQ500CT<N>`` folder.

    An empty leaf folder below a patient folder is a series too (the reader refuses it, so it is a row
    of ``rejects.csv``, never left out in silence).
    """
    series, rejects = [], []
    for dirpath, dirnames, filenames in os.walk(source):
        dirnames.sort()
        visible = [f for f in filenames if not f.startswith(".")]
        empty_leaf = not dirnames and not visible
        if not empty_leaf and not visible:
            continue
        folder = Path(dirpath)
        if folder == Path(source):
            continue
        rel = folder.relative_to(source)
        match = next((m for part in rel.parts if (m := PATIENT_FOLDER.match(part))), None)
        if match is None:
            what = "an empty folder" if empty_leaf else "files"
            rejects.append((str(folder), f"{what} outside a 'CQ500CT<N> CQ500CT<N>' patient folder"))
            continue
        series.append((f"CQ500-CT-{int(match.group(1))}", folder))
    return series, rejects


@one_ingestion_at_a_time
def ingest_cq500(source, *, name: str = "cq500", root: Path | None = None, drop_contrast: bool = False,
                 workers: int = 2, seed: int = 0, on_gap: str = "flag", tilt: str = "resample") -> dict:
    """Ingest CQ500 from ``source`` (``reads.csv`` + ``qct*/``) into ``<root>/<name>/``; returns a summary."""
    check_ingestion_name(name, "cq500")  # before anything is written
    source = Path(source).expanduser()
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder (--source must hold reads.csv and the qct*/ folders)")
    reads = source / "reads.csv"
    if not reads.exists():
        raise SourceError(f"{reads} not found: --source must hold reads.csv and the qct*/ folders")
    dataset_dir = Path(root or data_root()) / name
    labels = read_cq500_labels(reads)
    series, rejects = find_series(source)
    if not series:
        raise SourceError(f"{source}: no 'CQ500CT<N> CQ500CT<N>/Unknown Study/CT <desc>/' series found")

    jobs = []
    for patient, folder in series:
        description = folder.name[3:] if folder.name.startswith("CT ") else folder.name
        if drop_contrast and is_contrast(description):
            rejects.append((str(folder), "contrast series (dropped by drop_contrast)"))
            continue
        if patient in labels.index:
            columns = labels.loc[patient].to_dict()
        else:
            columns = {t: pd.NA for t in CQ500_FINDINGS} | {"category": ""}
        columns["contrast"] = int(is_contrast(description))
        jobs.append(Job(source_key=str(folder.relative_to(source)), patient=patient, inputs=str(folder),
                        columns=columns))

    options = {"on_gap": on_gap, "tilt": tilt}
    rows, job_rejects = run_jobs(jobs, functools.partial(read_dicom_job, **options), dataset_dir, options=options,
                                 workers=workers, desc=f"ingest {name}")
    for row in rows:  # the header's description (with '/' and '+') is better than the folder's
        row["contrast"] = int(bool(row.get("contrast")) or is_contrast(str(row.get("series_description") or ""))
                              or bool(row.get("contrast_agent")))
    if drop_contrast:  # again once read: contrast that only the header shows (its description, its agent tag)
        job_rejects += [(row["_source"], "contrast series by its DICOM header (dropped by drop_contrast)")
                        for row in rows if row["contrast"]]
        rows = [row for row in rows if not row["contrast"]]
    summary = finish(rows, rejects + job_rejects, name, dataset_dir, seed=seed, root=root, tasks=CQ500_FINDINGS,
                     columns=[*DICOM_COLUMNS, "contrast", "category"])
    found = {patient for patient, _ in series}
    summary["reads_without_series"] = int((~labels.index.isin(found)).sum())  # a partial download
    summary["reads_without_series_rows"] = sorted(set(labels.index) - found)[:10]
    register_dataset(name, description="CQ500 (qure.ai), one volume per series, majority-of-3 labels",
                     tasks=CQ500_FINDINGS, licence="CC BY-NC-SA 4.0",
                     ingest_command=f"fmct ingest cq500 --source DIR --name {name}", root=root)
    return summary

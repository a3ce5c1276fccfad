"""RSNA Intracranial Hemorrhage Detection (stage 2 train) -> one RAS volume per study (datasets.md §1).

Source layout: ``stage_2_train.csv`` (long format ``ID_<sop>_<subtype>,Label``, 6 rows per image, with
duplicated rows) and the flat folder ``stage_2_train/ID_<9 hex>.dcm``. Slices are grouped by
StudyInstanceUID, the paper's choice (``per_series=True`` groups by series instead; in per-study mode a
study with several series keeps the largest and lists the others as rejections). A scan's labels are the
max over the slices of the volume written: ``any`` -> ``ich``, ``epidural`` -> ``edh``, ``intraparenchymal`` -> ``iph``,
``intraventricular`` -> ``ivh``, ``subarachnoid`` -> ``sah``, ``subdural`` -> ``sdh``; a label is 0 or 1,
anything else refuses the CSV (naming the row). Undecodable
slices (the known corrupt ``ID_6431af929.dcm``) are skipped and recorded; the wrong-intercept repair
happens in the reader.
"""
from __future__ import annotations

import functools
from pathlib import Path

import pandas as pd

from ...paths import data_root
from ..manifest import RSNA_TASKS, check_ingestion_name, register_dataset
from .common import DICOM_COLUMNS, Job, SourceError, finish, one_ingestion_at_a_time, read_dicom_job, run_jobs
from .headers import index_headers

__all__ = ["RSNA_SUBTYPES", "read_rsna_labels", "index_rsna_headers", "ingest_rsna"]

RSNA_SUBTYPES = {"any": "ich", "epidural": "edh", "intraparenchymal": "iph", "intraventricular": "ivh",
                 "subarachnoid": "sah", "subdural": "sdh"}
INDEX_TAGS = {"sop": "SOPInstanceUID", "patient": "PatientID", "study": "StudyInstanceUID",
              "series": "SeriesInstanceUID"}


def read_rsna_labels(csv_path: Path) -> pd.DataFrame:
    """Per-image labels (index: ``ID_<sop>``, columns ``RSNA_TASKS``) from the long-format CSV.

    Duplicated rows (the stage-2 file repeats 4 images) collapse with max, as in public pipelines.
    """
    long = pd.read_csv(csv_path, dtype=str, keep_default_na=False)
    if list(long.columns[:2]) != ["ID", "Label"]:
        raise ValueError(f"{csv_path}: expected header 'ID,Label', got {list(long.columns)}")
    bad = ~long["Label"].str.strip().isin(["0", "1"])
    if bad.any():
        rows = [f"row {i + 2} ({long['ID'][i]}): {long['Label'][i]!r}" for i in long.index[bad][:5]]
        raise ValueError(f"{csv_path}: column 'Label' must be 0 or 1; {int(bad.sum())} row(s) are not: "
                         + ", ".join(rows) + (", …" if bad.sum() > 5 else "") + " (row 1 is the header)")
    long["Label"] = long["Label"].astype(int)
    parts = long["ID"].str.rsplit("_", n=1, expand=True)
    long = long.assign(image=parts[0], subtype=parts[1])
    unknown = set(long["subtype"]) - set(RSNA_SUBTYPES)
    if unknown:
        raise ValueError(f"{csv_path}: unknown subtypes {sorted(unknown)[:5]}")
    wide = long.pivot_table(index="image", columns="subtype", values="Label", aggfunc="max")
    return wide.rename(columns=RSNA_SUBTYPES).reindex(columns=RSNA_TASKS).astype("Int64")


def index_rsna_headers(image_dir: Path, index_path: Path, *, workers: int = 2) -> pd.DataFrame:
    """File -> SOP/patient/study/series from headers only (``headers.index_headers``, cached in ``index_path``)."""
    files = sorted(Path(image_dir).glob("*.dcm"))
    if not files:
        raise SourceError(f"{image_dir}: no .dcm files")
    return index_headers(files, index_path, tags=INDEX_TAGS, required=tuple(INDEX_TAGS), workers=workers,
                         desc="index RSNA headers")


@one_ingestion_at_a_time
def ingest_rsna(source, *, name: str = "rsna", root: Path | None = None, per_series: bool = False,
                workers: int = 2, seed: int = 0, on_gap: str = "flag", tilt: str = "resample") -> dict:
    """Ingest the RSNA stage-2 training set from ``source`` into ``<root>/<name>/``; returns a summary.

    The summary (``common.finish``) adds ``images_without_label`` (indexed images the CSV has no row for) and
    ``labels_without_image`` (CSV images no file holds; the first ten in ``labels_without_image_rows``). A scan with an unlabelled image is positive for a task
    where a labelled image is, else unknown (never a 0 that the missing image might contradict)."""
    check_ingestion_name(name, "rsna")  # before anything is written
    source = Path(source).expanduser()
    if not source.is_dir():
        raise SourceError(f"{source}: no such folder (--source must hold stage_2_train.csv and stage_2_train/)")
    csv_path, image_dir = source / "stage_2_train.csv", source / "stage_2_train"
    for p in (csv_path, image_dir):
        if not p.exists():
            raise SourceError(f"{p} not found: --source must hold stage_2_train.csv and stage_2_train/")
    dataset_dir = Path(root or data_root()) / name
    labels = read_rsna_labels(csv_path)
    index = index_rsna_headers(image_dir, dataset_dir / "dicom_index.csv", workers=workers)
    rejects = [(r.file, r.error) for r in index.itertuples() if r.error]
    index = index[index["error"] == ""]

    jobs = []
    for study, group in index.groupby("study", sort=True):
        series_sizes = group["series"].value_counts()
        keep = [series_sizes.index[0]] if not per_series else list(series_sizes.index)
        for series in series_sizes.index.difference(keep):
            rejects.append((series, f"{series_sizes[series]} files of study {study}, which has "
                                    f"{len(series_sizes)} series; per-study mode keeps the largest ({keep[0]})"))
        for series in keep:
            files = group[group["series"] == series]
            known = labels.reindex(files["sop"]).astype("Float64")
            top = known.max()  # 0 only where every image has a label; 1 where any labelled image is positive
            scan_labels = top.where(known.notna().all().to_numpy() | (top == 1).fillna(False).to_numpy())
            jobs.append(Job(source_key=series if per_series else study, patient=files["patient"].iloc[0],
                            inputs=tuple(files["file"]),
                            columns={t: scan_labels[t] for t in RSNA_TASKS}))

    options = {"on_gap": on_gap, "tilt": tilt}
    rows, job_rejects = run_jobs(jobs, functools.partial(read_dicom_job, **options), dataset_dir, options=options,
                                 workers=workers, desc=f"ingest {name}")
    summary = finish(rows, rejects + job_rejects, name, dataset_dir, seed=seed, root=root, tasks=RSNA_TASKS,
                     columns=DICOM_COLUMNS)
    register_dataset(name, description="RSNA Intracranial Hemorrhage Detection (Kaggle 2019), stage 2 train",
                     tasks=RSNA_TASKS, licence="RSNA challenge data terms",
                     ingest_command=f"fmct ingest rsna --source DIR --name {name}", root=root)
    sops = set(index["sop"])
    summary["images_without_label"] = len(sops - set(labels.index))
    without = sorted(set(labels.index) - sops)
    summary["labels_without_image"] = len(without)
    summary["labels_without_image_rows"] = without[:10]
    return summary

"""An index of DICOM headers (file -> identifiers and protocol tags), read once and cached beside the data.

Reading 750,000 RSNA headers takes minutes, so an ingester indexes its source once (in worker processes, the
pixels never read) and keeps the index in ``<dataset>/dicom_index.csv``. The index is private like
``linkage.csv`` (it holds the original patient ids and UIDs; docs/data_safety.md). A re-run reads it back when the
same files, of the same sizes and modification times, are asked for with the same columns; else it indexes again.
A file whose header cannot be read (not DICOM, truncated) is a row with its ``error``, which the ingester records
as a rejection: nothing is left out in silence.
"""
from __future__ import annotations

import functools
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import pydicom

from ...progress import tqdm
from ..dicom import lenient_validation
from .common import write_private_csv

__all__ = ["index_headers", "header_value"]

CHUNK = 2000  # files per worker task


def header_value(ds, keyword: str) -> str:
    """A header element as text: multi-valued elements joined with ``\\`` (as DICOM stores them); absent, ``""``."""
    value = ds.get(keyword, "")
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return "\\".join(str(v) for v in value)
    return "" if value is None else str(value).strip()


def _stat(path: str) -> str:
    st = Path(path).stat()
    return f"{st.st_size}:{st.st_mtime_ns}"


def _index_chunk(files: list[str], tags: tuple[tuple[str, str], ...], required: tuple[str, ...]) -> list[dict]:
    keywords = [keyword for _, keyword in tags]
    out = []
    with lenient_validation():  # RSNA's "ID_..." UIDs
        for f in files:
            row = {"file": f, "stat": _stat(f), **{column: "" for column, _ in tags}, "error": ""}
            try:
                ds = pydicom.dcmread(f, stop_before_pixels=True, specific_tags=keywords)
                row.update({column: header_value(ds, keyword) for column, keyword in tags})
            except Exception as e:  # noqa: BLE001 - recorded as a rejection
                row["error"] = f"unreadable DICOM header: {type(e).__name__}: {e}"
            missing = [keyword for column, keyword in tags if column in required and not row[column]]
            if missing and not row["error"]:
                row["error"] = (f"a DICOM file without {', '.join(missing)}: not an image of a series "
                                "(a DICOMDIR, a report?)")
            out.append(row)
    return out


def index_headers(files, index_path: Path, *, tags: dict[str, str], required: tuple[str, ...] = (),
                  workers: int = 2, desc: str = "index DICOM headers") -> pd.DataFrame:
    """One row per file: ``file``, ``stat`` (size and mtime), a column per ``tags`` item (column -> DICOM keyword,
    ``header_value``) and ``error``: empty for a readable header holding the ``required`` columns, else why the
    file cannot be used. Cached in ``index_path`` (private)."""
    files = sorted(str(f) for f in files)
    columns = ["file", "stat", *tags, "error"]
    if index_path.exists():
        cached = pd.read_csv(index_path, dtype=str, keep_default_na=False)
        if (list(cached.columns) == columns and list(cached["file"]) == files
                and list(cached["stat"]) == [_stat(f) for f in files]):
            return cached
    chunks = [files[i:i + CHUNK] for i in range(0, len(files), CHUNK)]
    index_chunk = functools.partial(_index_chunk, tags=tuple(tags.items()), required=tuple(required))
    rows = []
    with tqdm(total=len(files), desc=desc, unit="file") as bar:
        if workers > 1 and len(chunks) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                for part in pool.map(index_chunk, chunks):
                    rows += part
                    bar.update(len(part))
        else:
            for part in map(index_chunk, chunks):
                rows += part
                bar.update(len(part))
    index = pd.DataFrame(rows, columns=columns)
    index_path.parent.mkdir(parents=True, exist_ok=True)
    write_private_csv(index, index_path)  # original patient ids and UIDs: as private as linkage.csv
    return index

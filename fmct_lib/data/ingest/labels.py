"""The labels CSV of ``fmct ingest nifti``: read, checked and normalised, or refused with an error that names the
file, the column, the flag that names the column, the values and the rows.

The format (a sample is ``examples/labels.csv``; docs/guide.md, "Your own data"):

- a path column (``--path-col``, default ``path``): each volume's file, relative to ``--source`` or a bare name;
- a patient column (``--patient-col``, default ``patient_id``): all scans of a patient share a split;
- label columns, each named by ``--map COLUMN=TASK``: ``1``/``0``, ``yes``/``no``, ``y``/``n``, ``true``/``false``
  or ``positive``/``negative`` in any case (``1.0``/``0.0`` too, as spreadsheets write them), an empty cell where
  the label is unknown; anything else is refused;
- optionally a split column (``--split-col``): ``train``, ``val`` or ``test`` on every row, one split per patient;
- other columns are ignored.

Row numbers in errors are the file's as a spreadsheet shows them: the header is row 1.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..splits import SPLITS

__all__ = ["POSITIVE", "NEGATIVE", "read_labels", "parse_labels", "parse_splits", "source_relative", "read_text_table"]

POSITIVE = frozenset({"1", "1.0", "yes", "y", "true", "positive"})
NEGATIVE = frozenset({"0", "0.0", "no", "n", "false", "negative"})
ACCEPTED = "1/0, yes/no, y/n, true/false or positive/negative (any case)"
SHOWN = 5  # values, and rows per value, an error lists before "…"
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def source_relative(entry: str, source: Path) -> str:
    """A labels CSV's path as the path relative to ``source`` it names: ``\\`` read as ``/`` (a Windows
    spreadsheet's), an absolute path below ``source`` made relative, a trailing ``/`` dropped."""
    path = Path(str(entry).replace("\\", "/"))
    resolved = Path(source).resolve()
    if path.is_absolute() and path.resolve().is_relative_to(resolved):
        path = path.resolve().relative_to(resolved)
    return str(path)


def _rows(index) -> str:
    """Spreadsheet row numbers of table rows (the header is row 1), the first ``SHOWN`` of them."""
    rows = [str(i + 2) for i in index]
    return ("row " if len(rows) == 1 else "rows ") + ", ".join(rows[:SHOWN]) + (", …" if len(rows) > SHOWN else "")


def _offending(values: pd.Series, bad: pd.Series) -> str:
    """``'maybe' (rows 4, 9), 'unk' (row 12)`` for the rows where ``bad`` holds, by value."""
    groups = values[bad].groupby(values[bad], sort=False).groups
    parts = [f"{value!r} ({_rows(index)})" for value, index in list(groups.items())[:SHOWN]]
    return ", ".join(parts) + (f" and {len(groups) - SHOWN} more values" if len(groups) > SHOWN else "")


LABEL_RULE = f"A label is {ACCEPTED}; leave the cell empty where it is unknown (row 1 is the header)"


def _not_labels(values: pd.Series, *, file, column: str, flag: str) -> str | None:
    """What in one label column is no label (``'maybe' (rows 3, 6)``, with the file, column and option), or None."""
    text = values.fillna("").astype(str).str.strip().str.lower()
    bad = ~(text.isin(POSITIVE) | text.isin(NEGATIVE) | (text == ""))
    if not bad.any():
        return None
    return (f"{file}: column {column!r} ({flag}) holds values that are not labels: "
            f"{_offending(values.astype(str).str.strip(), bad)}")


def parse_labels(values: pd.Series, *, file, column: str, flag: str) -> pd.Series:
    """One label column as nullable 0/1 (``Int64``; missing where the cell is empty). ``values``: the column as
    read (strings, index = the table's row positions); ``flag`` names the option that chose it."""
    if problem := _not_labels(values, file=file, column=column, flag=flag):
        raise ValueError(f"{problem}. {LABEL_RULE}")
    text = values.fillna("").astype(str).str.strip().str.lower()
    positive, negative = text.isin(POSITIVE), text.isin(NEGATIVE)
    return pd.Series(pd.array([1 if p else (0 if n else pd.NA) for p, n in zip(positive, negative)], dtype="Int64"),
                     index=values.index)


def parse_splits(values: pd.Series, *, file, column: str) -> pd.Series:
    """The split column as ``train``/``val``/``test`` (any case, surrounding spaces ignored); anything else, an
    empty cell included, is refused with its rows."""
    text = values.fillna("").astype(str).str.strip().str.lower()
    bad = ~text.isin(SPLITS)
    if bad.any():
        raise ValueError(f"{file}: column {column!r} (--split-col) holds values that are not splits: "
                         f"{_offending(values.fillna('').astype(str).str.strip(), bad)}. Every row needs one of "
                         f"{', '.join(SPLITS)} (row 1 is the header)")
    return text


def _missing_columns_error(file, table: pd.DataFrame, wanted: dict[str, str], path_column: str,
                           path_flag: str) -> ValueError:
    """The error for columns the file lacks: each with the flag that named it, the file's own columns, and where
    the path column is missing and another column holds NIfTI file names, the ``--path-col`` that picks it."""
    missing = [f"no column {column!r} ({flag})" for column, flag in wanted.items() if column not in table.columns]
    text = f"{file}: " + ", ".join(missing) + f"; the file's columns are {', '.join(map(repr, table.columns))}"
    if path_column not in table.columns:
        names_files = [c for c in table.columns
                       if table[c].str.strip().str.lower().str.endswith(NIFTI_SUFFIXES).any()]
        if names_files:
            text += f". Column {names_files[0]!r} holds NIfTI file names: --path-col {names_files[0]}"
    if len(table.columns) == 1 and ";" in table.columns[0]:
        text += ". The header holds semicolons: save the file with commas as separators"
    return ValueError(text + f". Name the file's columns with {path_flag}, --patient-col and --map COLUMN=TASK")


def read_text_table(path) -> pd.DataFrame:
    """The labels CSV at ``path`` as text, as every reader of it takes it: each cell a string (an empty cell
    ``""``), spaces after a comma and a spreadsheet's byte-order mark dropped, column names stripped; an unreadable
    file is a ``ValueError`` naming it."""
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: not a readable CSV file (--labels): {e}") from e
    table.columns = [str(c).strip() for c in table.columns]
    return table


def read_labels(path, *, path_column: str = "path", patient_column: str | None = "patient_id",
                mapping: dict[str, str] | None = None, split_column: str | None = None,
                path_flag: str = "--path-col", what: str = "volume") -> pd.DataFrame:
    """The labels CSV as a checked table: ``path``, ``patient`` (strings; with ``patient_column=None`` there is no
    patient column and ``patient`` is empty), one ``Int64`` column per task of ``mapping`` (csv column → task) and,
    with ``split_column``, ``split``; the index is the row position in the file. ``path_column`` names each row's
    ``what`` (a volume's path; a DICOM ingester's study or series key, chosen by ``path_flag``). Refused
    (``ValueError`` naming the file, column, flag and rows): a missing column, an empty path or patient, a path
    listed twice, a value that is no label or no split, a patient in two splits."""
    mapping = dict(mapping or {})
    tasks = list(mapping.values())
    if len(set(tasks)) < len(tasks):
        raise ValueError(f"--map names a task twice: {tasks}; one label column per task")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such labels file (--labels)")
    table = read_text_table(path)
    wanted = {path_column: path_flag, **({patient_column: "--patient-col"} if patient_column else {}),
              **{column: f"--map {column}={task}" for column, task in mapping.items()}}
    if split_column:
        wanted[split_column] = "--split-col"
    if any(column not in table.columns for column in wanted):
        raise _missing_columns_error(path, table, wanted, path_column, path_flag)
    out = pd.DataFrame({"path": table[path_column].str.strip(),
                        "patient": table[patient_column].str.strip() if patient_column else ""})
    for column, flag in ((path_column, path_flag), (patient_column, "--patient-col")):
        empty = table[column].str.strip() == "" if column else pd.Series(False, index=table.index)
        if empty.any():
            raise ValueError(f"{path}: column {column!r} ({flag}) is empty in {_rows(out.index[empty])}; every row "
                             f"needs its {what}" + (" and its patient" if patient_column else ""))
    twice = out["path"].duplicated(keep=False)
    if twice.any():
        raise ValueError(f"{path}: column {path_column!r} ({path_flag}) lists a {what} more than once: "
                         f"{_offending(out['path'], twice)}; one row per {what}")
    flags = {column: f"--map {column}={task}" for column, task in mapping.items()}
    problems = [problem for column, flag in flags.items()  # every column's, at once (not one column a run)
                if (problem := _not_labels(table[column], file=path, column=column, flag=flag))]
    if problems:
        raise ValueError(f"{'; '.join(problems)}. {LABEL_RULE}")
    for column, task in mapping.items():
        out[task] = parse_labels(table[column], file=path, column=column, flag=flags[column])
    if split_column:
        out["split"] = parse_splits(table[split_column], file=path, column=split_column)
    if split_column and patient_column:  # without one, the caller knows the patients (DICOM: the headers) and checks
        per_patient = out.groupby("patient")["split"].nunique()
        crossing = out["patient"].isin(per_patient.index[per_patient > 1])
        if crossing.any():
            raise ValueError(f"{path}: column {split_column!r} (--split-col) puts one patient in several splits: "
                             f"{_offending(out['patient'], crossing)} ({patient_column!r}); all scans of a patient "
                             "must share a split")
    return out

"""The labels CSV of ``fmct ingest nifti`` (fmct_lib.data.ingest.labels): the usual label encodings, the errors that
name the file, column, flag and rows, the user's own split, and the committed samples under examples/."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmct_lib.cli import main as fmct
from fmct_lib.data.ingest import ingest_nifti
from fmct_lib.data.ingest.labels import read_labels
from fmct_lib.data.manifest import load_scans

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def write_volumes(src: Path, names: list[str]) -> None:
    """A small plausible CT volume (HU, 1 x 1 x 3 mm) per name."""
    for i, name in enumerate(names):
        data = np.random.default_rng(i).integers(-1000, 1000, (6, 5, 4)).astype(np.int16)
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(data, np.diag([1.0, 1.0, 3.0, 1.0])), src / name)


def run_cli(args: list[str]) -> tuple[int, str, str]:
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = fmct(args)
    return code, out.getvalue(), err.getvalue()


# ------------------------------------------------------------------------------------------------- values
def test_every_usual_encoding_reads_as_0_1_and_empty_as_unknown(tmp_path):
    positives = ["1", "yes", "Yes", "Y", "TRUE", "true", "positive", "Positive", " yes ", "1.0"]
    negatives = ["0", "no", "NO", "n", "False", "negative", "NEGATIVE", " 0", "0.0"]
    unknown = ["", "  "]
    values = positives + negatives + unknown
    lines = ["path,patient_id,bleed"] + [f"v{i}.nii.gz,P{i},{v}" for i, v in enumerate(values)]
    table = read_labels(write_csv(tmp_path / "labels.csv", "\n".join(lines) + "\n"), mapping={"bleed": "ich"})
    expected = [1] * len(positives) + [0] * len(negatives) + [None] * len(unknown)
    assert table["ich"].tolist() == pd.array(expected, dtype="Int64").tolist()
    assert str(table["ich"].dtype) == "Int64"


def test_values_that_are_no_label_are_refused_with_file_column_flag_values_and_rows(tmp_path):
    # rows as a spreadsheet numbers them (header = row 1): 'maybe' in rows 3 and 6, 'NA' in row 5
    labels = write_csv(tmp_path / "labels.csv", "path,patient_id,bleed\na.nii,P1,yes\nb.nii,P2,maybe\nc.nii,P3,no\n"
                                                "d.nii,P4,NA\ne.nii,P5,maybe\n")
    with pytest.raises(ValueError) as error:
        read_labels(labels, mapping={"bleed": "ich"})
    message = str(error.value)
    assert message.startswith(f"{labels}: column 'bleed' (--map bleed=ich) holds values that are not labels: "
                              "'maybe' (rows 3, 6), 'NA' (row 5). A label is 1/0, yes/no, y/n, true/false or "
                              "positive/negative (any case); leave the cell empty where it is unknown")
    # many offending rows: the first five of a value, then an ellipsis
    rows = "".join(f"v{i}.nii,P{i},2\n" for i in range(8))
    with pytest.raises(ValueError, match=r"'2' \(rows 2, 3, 4, 5, 6, …\)"):
        read_labels(write_csv(tmp_path / "many.csv", "path,patient_id,bleed\n" + rows), mapping={"bleed": "ich"})
    # two columns: both said at once (an audit fixed one column, ran again, and met the next)
    two = write_csv(tmp_path / "two.csv", "path,patient_id,bleed,sah\na.nii,P1,maybe,1\nb.nii,P2,no,unk\n")
    with pytest.raises(ValueError) as error:
        read_labels(two, mapping={"bleed": "ich", "sah": "sah"})
    assert str(error.value) == (
        f"{two}: column 'bleed' (--map bleed=ich) holds values that are not labels: 'maybe' (row 2); {two}: column "
        "'sah' (--map sah=sah) holds values that are not labels: 'unk' (row 3). A label is 1/0, yes/no, y/n, "
        "true/false or positive/negative (any case); leave the cell empty where it is unknown (row 1 is the header)")


def test_missing_columns_name_the_flags_and_the_columns_the_file_has(tmp_path):
    # the issue's natural file, written with spaces after the commas and a spreadsheet's byte-order mark
    labels = tmp_path / "bleeds.csv"
    labels.write_text("\ufefffilename, mrn, bleed\nct_1.nii.gz, M1, yes\n", encoding="utf-8")
    with pytest.raises(ValueError) as error:
        read_labels(labels, mapping={"bleed": "ich"})
    assert str(error.value) == (
        f"{labels}: no column 'path' (--path-col), no column 'patient_id' (--patient-col); the file's columns are "
        "'filename', 'mrn', 'bleed'. Column 'filename' holds NIfTI file names: --path-col filename. Name the file's "
        "columns with --path-col, --patient-col and --map COLUMN=TASK")
    with pytest.raises(ValueError, match=r"no column 'hemorrhage' \(--map hemorrhage=ich\); the file's columns are"):
        read_labels(labels, path_column="filename", patient_column="mrn", mapping={"hemorrhage": "ich"})
    semicolons = write_csv(tmp_path / "semi.csv", "path;patient_id;bleed\na.nii;P1;1\n")
    with pytest.raises(ValueError, match="The header holds semicolons"):
        read_labels(semicolons, mapping={"bleed": "ich"})


def test_empty_ids_repeated_volumes_and_bad_maps_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"column 'patient_id' \(--patient-col\) is empty in row 3"):
        read_labels(write_csv(tmp_path / "a.csv", "path,patient_id\na.nii,P1\nb.nii,\n"))
    with pytest.raises(ValueError, match=r"lists a volume more than once: 'a.nii' \(rows 2, 4\)"):
        read_labels(write_csv(tmp_path / "b.csv", "path,patient_id\na.nii,P1\nb.nii,P2\na.nii,P3\n"))
    with pytest.raises(ValueError, match="--map names a task twice"):
        read_labels(write_csv(tmp_path / "c.csv", "path,patient_id,x,y\na.nii,P1,1,0\n"),
                    mapping={"x": "ich", "y": "ich"})
    with pytest.raises(FileNotFoundError, match=r"no such labels file \(--labels\)"):
        read_labels(tmp_path / "absent.csv")
    with pytest.raises(ValueError, match=r"empty.csv: not a readable CSV file \(--labels\)"):
        read_labels(write_csv(tmp_path / "empty.csv", ""))


def test_split_values_and_patients_across_splits_are_refused_with_rows(tmp_path):
    ok = write_csv(tmp_path / "ok.csv", "path,patient_id,fold\na.nii,P1, Train\nb.nii,P1,train\nc.nii,P2,VAL\n")
    ok = read_labels(ok, split_column="fold")
    assert ok["split"].tolist() == ["train", "train", "val"]
    bad = write_csv(tmp_path / "bad.csv", "path,patient_id,fold\na.nii,P1,training\nb.nii,P2,\nc.nii,P3,test\n")
    with pytest.raises(ValueError, match=r"column 'fold' \(--split-col\) holds values that are not splits: "
                                         r"'training' \(row 2\), '' \(row 3\)\. "
                                         r"Every row needs one of train, val, test"):
        read_labels(bad, split_column="fold")
    crossing = write_csv(tmp_path / "cross.csv", "path,patient_id,fold\na.nii,P1,train\nb.nii,P2,val\nc.nii,P1,test\n")
    with pytest.raises(ValueError, match=r"puts one patient in several splits: 'P1' \(rows 2, 4\)"):
        read_labels(crossing, split_column="fold")


# ------------------------------------------------------------------------------------- through ingestion
@pytest.fixture()
def bleeds(tmp_path, isolated_roots):
    """The issue's case: 24 volumes of 24 patients, a labels file ``filename, mrn, bleed`` in yes/no (any case),
    two labels unknown, one volume not in the file and one file row without a volume."""
    src = tmp_path / "export"
    names = [f"ct_{i:02d}.nii.gz" for i in range(24)]
    write_volumes(src, names)
    values = ["Yes"] * 8 + ["no"] * 6 + ["N"] * 6 + ["", " "]  # 8 positive, 12 negative, 2 unknown: 22 rows
    rows = [f"{name}, MRN{i:03d}, {v}" for i, (name, v) in enumerate(zip(names, values))]
    rows.append("ct_99.nii.gz, MRN999, yes")  # no such volume
    labels = write_csv(tmp_path / "bleeds.csv", "filename, mrn, bleed\n" + "\n".join(rows) + "\n")
    return src, labels, isolated_roots.data


def test_a_yes_no_file_is_ingested_with_its_labels_and_an_honest_summary(bleeds):
    src, labels, root = bleeds
    # the natural file with the default column names: refused before anything is written, the flags named
    code, _, err = run_cli(["ingest", "nifti", "--name", "bleeds", "--source", str(src), "--labels", str(labels),
                            "--map", "bleed=ich", "--workers", "1"])
    assert code == 2 and "Traceback" not in err
    assert "no column 'path' (--path-col), no column 'patient_id' (--patient-col)" in err
    assert "the file's columns are 'filename', 'mrn', 'bleed'" in err and "--path-col filename" in err
    assert not (root / "bleeds").exists()

    code, out, err = run_cli(["ingest", "nifti", "--name", "bleeds", "--source", str(src), "--labels", str(labels),
                              "--path-col", "filename", "--patient-col", "mrn", "--map", "bleed=ich", "--workers", "1"])
    assert code == 0, err
    summary = json.loads(out)
    scans = load_scans("bleeds")
    link = pd.read_csv(root / "bleeds" / "linkage.csv", dtype=str).merge(scans[["scan_id", "ich", "split"]])
    ich = dict(zip(link["source"], link["ich"]))
    assert [ich[f"ct_{i:02d}.nii.gz"] for i in range(8)] == [1] * 8
    assert [ich[f"ct_{i:02d}.nii.gz"] for i in range(8, 20)] == [0] * 12
    assert all(pd.isna(ich[f"ct_{i:02d}.nii.gz"]) for i in range(20, 24))  # 2 empty cells, 2 volumes not listed
    # unlabelled: the two empty cells and the two volumes the file does not list (the old summary said 2 here,
    # counting only the volumes missing from the file; for a yes/no file it said 0 while every label was empty)
    assert summary["unlabelled"] == 4 and summary["not_in_labels"] == 2 and summary["labels_without_volume"] == 1
    by_split = summary["labels"]["ich"]
    assert sum(c["positive"] for c in by_split.values()) == 8 and sum(c["negative"] for c in by_split.values()) == 12
    # 24 patients → 19 / 3 / 2 (19.2, 2.4, 2.4: the one left over goes to val); positives 8 → 6 / 1 / 1
    assert summary["splits"] == {"train": 19, "val": 3, "test": 2}
    assert summary["split_source"] == "stratified by label, seed 0"
    assert [by_split[s]["positive"] for s in ("train", "val", "test")] == [6, 1, 1]
    assert f"1 row(s) of {labels} match no volume" in err
    # val and test hold 1 positive each: warned about, with the CI width for those counts
    assert "warning: bleeds test: 1 positive and 1 negative 'ich' scans, fewer than 10 positives and negatives" in err


def test_a_label_value_refused_through_the_cli_is_one_line_with_exit_status_2(bleeds, tmp_path):
    src, _, _ = bleeds
    labels = write_csv(tmp_path / "odd.csv", "filename,mrn,bleed\nct_00.nii.gz,M0,yes\nct_01.nii.gz,M1,probable\n")
    code, out, err = run_cli(["ingest", "nifti", "--name", "odd", "--source", str(src), "--labels", str(labels),
                              "--path-col", "filename", "--patient-col", "mrn", "--map", "bleed=ich"])
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and "column 'bleed' (--map bleed=ich)" in err and "'probable' (row 3)" in err


def test_the_users_split_column_is_kept_and_unlisted_volumes_go_to_the_pool(bleeds, tmp_path):
    src, _, root = bleeds
    # ct_00 … ct_19 listed, two scans per patient M0 … M9; ct_20 … ct_23 not listed
    fold = {0: "test", 5: "test", 1: "val", 2: "val"}  # the other six patients: train
    lines = [f"ct_{i:02d}.nii.gz,M{i // 2},{int(i % 3 == 0)},{fold.get(i // 2, 'train')}" for i in range(20)]
    labels = write_csv(tmp_path / "split.csv", "filename,mrn,bleed,fold\n" + "\n".join(lines) + "\n")
    summary = ingest_nifti(src, name="mysplit", labels=labels, mapping={"bleed": "ich"}, path_column="filename",
                           patient_column="mrn", split_column="fold", workers=1)
    link = pd.read_csv(root / "mysplit" / "linkage.csv", dtype=str).merge(load_scans("mysplit")[["scan_id", "split"]])
    split = dict(zip(link["source"], link["split"]))
    assert [split[f"ct_{i:02d}.nii.gz"] for i in range(20)] == [fold.get(i // 2, "train") for i in range(20)]
    assert [split[f"ct_{i:02d}.nii.gz"] for i in range(20, 24)] == ["pretrain"] * 4
    assert summary["split_source"] == "given"
    assert summary["splits"] == {"train": 12, "val": 4, "test": 4, "pretrain": 4}


def test_stratified_split_counts_patients_exactly_with_several_scans_each(bleeds, tmp_path):
    src, _, _ = bleeds
    # 12 patients of 2 scans, 4 positive. Patients: 9.6 / 1.2 / 1.2 → 10 / 1 / 1 (the one left over to train's .6).
    # The positives, the rarer value, go first, each where they are wanted most: of 3.2 / .4 / .4, three to train
    # (.2 left), the fourth to val (.4, a tie with test goes to the earlier split). The negatives want 6.4 / .8 / .8
    # with val full: six to train (.4 left), then test (.8), the last to train. Positives 3 / 1 / 0, negatives
    # 7 / 0 / 1: each within one patient of its quota
    lines = [f"ct_{i:02d}.nii.gz,M{i // 2},{int(i // 2 < 4)}" for i in range(24)]
    labels = write_csv(tmp_path / "pairs.csv", "filename,mrn,bleed\n" + "\n".join(lines) + "\n")
    ingest_nifti(src, name="pairs", labels=labels, mapping={"bleed": "ich"}, path_column="filename",
                 patient_column="mrn", workers=1, seed=3)
    scans = load_scans("pairs")
    per_patient = scans.groupby("patient_id").agg(split=("split", "first"), n=("split", "nunique"), ich=("ich", "max"))
    assert (per_patient["n"] == 1).all()
    assert per_patient["split"].value_counts().reindex(["train", "val", "test"]).tolist() == [10, 1, 1]
    assert per_patient.groupby("ich")["split"].value_counts().to_dict() == {
        (0, "train"): 7, (0, "test"): 1, (1, "train"): 3, (1, "val"): 1}


# ------------------------------------------------------------------------------ rows that nearly name a volume
def test_rows_writing_nii_for_nii_gz_are_refused_naming_rows_and_volumes_before_anything_is_written(bleeds, tmp_path):
    """The audit's file: every other row writes ``ct_01.nii`` for ``ct_01.nii.gz``. Ingested, each such volume was
    an unlabelled scan of a patient of its own, its patient's labelled scans perhaps in another split, and the
    only word was "12 row(s) match no volume"; now one line, exit status 2, naming the file, the count, the rows
    with their near volumes and the fix, and nothing is written."""
    src, _, root = bleeds
    names = [f"ct_{i:02d}.nii" + ("" if i % 2 else ".gz") for i in range(24)]
    labels = write_csv(tmp_path / "lab_half.csv", "filename,mrn,bleed\n"
                       + "".join(f"{name},M{i},{i % 3 == 0:d}\n" for i, name in enumerate(names)))
    code, out, err = run_cli(["ingest", "nifti", "--name", "half", "--source", str(src), "--labels", str(labels),
                              "--path-col", "filename", "--patient-col", "mrn", "--map", "bleed=ich", "--workers", "1"])
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith(f"fmct ingest nifti: error: {labels}: 12 row(s) of column 'filename' (--path-col) name no "
                          f"volume below {src} but nearly name one that no row names")
    assert ("row 3: 'ct_01.nii' -> volume 'ct_01.nii.gz'?; row 5: 'ct_03.nii' -> volume 'ct_03.nii.gz'?; "
            "row 7: 'ct_05.nii' -> volume 'ct_05.nii.gz'? and 9 more. Correct the CSV's path column") in err
    assert not (root / "half").exists()

    # every row so: the near matches are named, not "none of its rows names a volume"
    labels.write_text("filename,mrn,bleed\n" + "".join(f"ct_{i:02d}.nii,M{i},1\n" for i in range(24)))
    with pytest.raises(ValueError, match=r"24 row\(s\) .* row 2: 'ct_00.nii' -> volume 'ct_00.nii.gz'\?"):
        ingest_nifti(src, name="half", labels=labels, mapping={"bleed": "ich"}, path_column="filename",
                     patient_column="mrn", workers=1)
    assert not (root / "half").exists()


@pytest.mark.parametrize("written, volume", [("CT_05.NII.GZ", "ct_05.nii.gz"),    # case only
                                             ("ct_5.nii.gz", "ct_05.nii.gz"),     # leading zeros lost
                                             ("export/ct_05.nii.gz", "ct_05.nii.gz"),  # a leading folder
                                             ("Ct_005", "ct_05.nii.gz")])         # all at once, no extension
def test_a_row_naming_a_volume_up_to_case_zeros_or_a_folder_is_refused(bleeds, tmp_path, written, volume):
    src, _, root = bleeds
    lines = [f"{written if i == 5 else f'ct_{i:02d}.nii.gz'},M{i},{i % 2}" for i in range(20)]
    labels = write_csv(tmp_path / "near.csv", "filename,mrn,bleed\n" + "\n".join(lines) + "\n")
    with pytest.raises(ValueError) as error:
        ingest_nifti(src, name="near", labels=labels, mapping={"bleed": "ich"}, path_column="filename",
                     patient_column="mrn", workers=1)
    assert f"{labels}: 1 row(s) of column 'filename' (--path-col)" in str(error.value)
    assert f"row 7: {written!r} -> volume {volume!r}?" in str(error.value)
    assert not (root / "near").exists()


def test_a_row_matching_nothing_near_still_ingests_and_says_what_became_of_the_unlisted_volumes(bleeds):
    """The fixture's ``ct_99.nii.gz`` is no near match of ct_22 or ct_23 (the volumes no row names): ingested as
    before, the row named on stderr with what became of those two volumes, so the user can judge."""
    src, labels, root = bleeds
    code, out, err = run_cli(["ingest", "nifti", "--name", "bleeds", "--source", str(src), "--labels", str(labels),
                              "--path-col", "filename", "--patient-col", "mrn", "--map", "bleed=ich", "--workers", "1"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["labels_without_volume_rows"] == ["row 24: ct_99.nii.gz"]
    assert summary["not_in_labels_volumes"] == ["ct_22.nii.gz", "ct_23.nii.gz"]
    line = next(line for line in err.splitlines() if "match no volume" in line)
    assert line == (f"fmct ingest nifti: 1 row(s) of {labels} match no volume below {src}: row 24: ct_99.nii.gz; "
                    "the 2 volume(s) no row names (e.g. ct_22.nii.gz, ct_23.nii.gz) are kept as unlabelled scans, "
                    "each its own patient (its file), split 8:1:1 with the others, those in train read by "
                    "pretraining: where a row means one of them, correct its path (--path-col filename) and run "
                    "again, or that patient's scans can fall in different splits")
    assert len(load_scans("bleeds")) == 24

    # with the user's own split: the pool
    split = write_csv(labels.parent / "split.csv", "filename,mrn,bleed,fold\nct_00.nii.gz,M0,1,train\n"
                      "ct_01.nii.gz,M1,0,val\nct_02.nii.gz,M2,0,test\nnowhere.nii.gz,M9,1,train\n")
    code, out, err = run_cli(["ingest", "nifti", "--name", "pooled", "--source", str(src), "--labels", str(split),
                              "--path-col", "filename", "--patient-col", "mrn", "--map", "bleed=ich",
                              "--split-col", "fold", "--workers", "1"])
    assert code == 0, err
    assert ("the 21 volume(s) no row names (e.g. ct_03.nii.gz, ct_04.nii.gz, ct_05.nii.gz …) are kept as unlabelled "
            "scans, each its own patient (its file), in the unlabelled pretraining pool (split 'pretrain')") in err


# ------------------------------------------------------------------------------- acquisition metadata (--meta)
def meta_csv(path: Path, thickness: dict[int, str] | None = None) -> Path:
    """``filename, mrn, bleed, scanner, thickness_mm`` for ct_00 … ct_19 (the volumes are 1 x 1 x 3 mm): ct_03 has
    no scanner, ct_04 no thickness, ct_05 a thickness of 0.5 (cm written for 5 mm?), ``thickness`` overrides."""
    thickness = {4: "", 5: "0.5", **(thickness or {})}
    lines = [f"ct_{i:02d}.nii.gz,M{i},{int(i < 8)},{'' if i == 3 else ' GE MEDICAL SYSTEMS ' if i % 2 else 'SIEMENS'},"
             f"{thickness.get(i, '3')}" for i in range(20)]
    return write_csv(path, "filename,mrn,bleed,scanner,thickness_mm\n" + "\n".join(lines) + "\n")


def test_meta_copies_the_scanner_and_thickness_columns_into_the_scan_table(bleeds, tmp_path):
    """The audit's case: the CSV's ``scanner`` and ``thickness_mm`` become the scan table's ``manufacturer`` and
    ``slice_thickness_mm`` (what notebook 06 groups by); an empty cell keeps the default (no manufacturer, the
    thickness as the z-spacing), a thickness unlike the spacing is kept as given, counted and named."""
    src, _, root = bleeds
    labels = meta_csv(tmp_path / "meta.csv")
    code, out, err = run_cli(["ingest", "nifti", "--name", "meta", "--source", str(src), "--labels", str(labels),
                              "--path-col", "filename", "--patient-col", "mrn", "--map", "bleed=ich",
                              "--meta", "manufacturer=scanner", "slice_thickness_mm=thickness_mm", "--workers", "1"])
    assert code == 0, err
    summary = json.loads(out)
    scans = load_scans("meta")
    link = pd.read_csv(root / "meta" / "linkage.csv", dtype=str).merge(scans).set_index("source")
    maker = link["manufacturer"].fillna("").to_dict()
    thick = link["slice_thickness_mm"].to_dict()
    assert maker["ct_00.nii.gz"] == "SIEMENS" and maker["ct_01.nii.gz"] == "GE MEDICAL SYSTEMS"  # spaces stripped
    assert maker["ct_03.nii.gz"] == "" and maker["ct_22.nii.gz"] == ""   # an empty cell; a volume the CSV lacks
    assert thick["ct_00.nii.gz"] == 3.0 and thick["ct_05.nii.gz"] == 0.5   # as given, even unlike the spacing
    assert thick["ct_04.nii.gz"] == 3.0 and thick["ct_22.nii.gz"] == 3.0   # the z-spacing
    assert summary["meta_given"] == {"manufacturer": 19, "slice_thickness_mm": 19}
    assert summary["thickness_unlike_spacing"] == 1
    assert summary["thickness_unlike_spacing_scans"] == ["ct_05.nii.gz (row 7): 0.5 mm given, z-spacing 3 mm"]
    assert (f"warning: 1 scan(s) have a slice thickness in {labels} (--meta slice_thickness_mm=thickness_mm) more "
            "than 1.5 times their volume's z-spacing or under 1/1.5 of it: ct_05.nii.gz (row 7): 0.5 mm given, "
            "z-spacing 3 mm; kept as given") in err
    # what notebook 06 reads: two makes, one thickness bin besides the odd scan
    from fmct_lib.downstream.embeddings import protocol_labels
    protocol = protocol_labels(scans, [0.0, 1.5, 3.0, 5.01])
    assert protocol["scanner"].value_counts().to_dict() == {"SIEMENS": 10, "GE MEDICAL SYSTEMS": 9}

    # the rule's edges: 4.5 mm on 3 mm spacing is 1.5 times, not more; 2 mm is under 1/1.5 of it
    labels = meta_csv(tmp_path / "edges.csv", {5: "4.5", 6: "2", 7: "1.99"})
    summary = ingest_nifti(src, name="edges", labels=labels, mapping={"bleed": "ich"}, path_column="filename",
                           patient_column="mrn", meta={"slice_thickness_mm": "thickness_mm"}, workers=1)
    assert [s.split(" ")[0] for s in summary["thickness_unlike_spacing_scans"]] == ["ct_07.nii.gz"]
    assert "manufacturer" not in summary["meta_given"]
    assert load_scans("edges")["manufacturer"].isna().all()  # not asked for: left empty


@pytest.mark.parametrize("meta, message", [
    (["manufacturer=scannr"], "{labels}: no column 'scannr' (--meta manufacturer=scannr); the file's columns are "
                              "'filename', 'mrn', 'bleed', 'scanner', 'thickness_mm'"),
    (["split=bleed"], "--meta split=bleed: 'split' is not a column --meta sets; it sets the acquisition columns "
                      "manufacturer, slice_thickness_mm, kvp, convolution_kernel"),
    (["patient_id=mrn"], "'patient_id' is not a column --meta sets"),
    (["ich=bleed"], "'ich' is not a column --meta sets"),
    (["scanner=manufacturer"], "(the scan-table column comes first: --meta manufacturer=scanner?)"),
    (["slice_thickness_mm=scanner"], "{labels}: column 'scanner' (--meta slice_thickness_mm=scanner) holds values "
                                     "that are not positive numbers (in mm): 'SIEMENS' (rows 2, 4, 6, 8, 10, …)"),
    (["manufacturer=scanner", "manufacturer=mrn"], "--meta names 'manufacturer' twice"),
    (["manufacturer"], "--meta expects SCAN_COLUMN=CSV_COLUMN, got 'manufacturer'"),
])
def test_meta_naming_a_missing_column_or_a_column_it_may_not_set_is_refused_before_anything_is_written(
        bleeds, tmp_path, meta, message):
    src, _, root = bleeds
    labels = meta_csv(tmp_path / "meta.csv")
    code, out, err = run_cli(["ingest", "nifti", "--name", "refused", "--source", str(src), "--labels", str(labels),
                              "--path-col", "filename", "--patient-col", "mrn", "--map", "bleed=ich",
                              "--meta", *meta, "--workers", "1"])
    assert code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("fmct ingest nifti: error: ") and message.format(labels=labels) in err
    assert not (root / "refused").exists()


@pytest.mark.parametrize("value", ["5mm", "0", "-1.25", "nan", "5,0"])
def test_a_thickness_that_is_no_positive_number_is_refused_naming_its_rows(bleeds, tmp_path, value):
    src, _, root = bleeds
    labels = meta_csv(tmp_path / "meta.csv", {9: value, 12: value})
    if "," in value:  # a decimal comma: quoted, as a spreadsheet writes it
        labels.write_text(labels.read_text().replace(f",{value}\n", f',"{value}"\n'))
    code, out, err = run_cli(["ingest", "nifti", "--name", "refused", "--source", str(src), "--labels", str(labels),
                              "--path-col", "filename", "--patient-col", "mrn", "--map", "bleed=ich",
                              "--meta", "slice_thickness_mm=thickness_mm", "--workers", "1"])
    assert code == 2 and out == "" and err.count("\n") == 1
    assert (f"{labels}: column 'thickness_mm' (--meta slice_thickness_mm=thickness_mm) holds values that are not "
            f"positive numbers (in mm): {value!r} (rows 11, 14)") in err
    assert not (root / "refused").exists()
    with pytest.raises(ValueError, match="needs a labels CSV"):
        ingest_nifti(src, name="refused", meta={"manufacturer": "scanner"}, workers=1)


# ------------------------------------------------------------------------------ a task nothing can train on
def test_a_task_without_training_positives_is_warned_about_and_in_the_summary(bleeds, tmp_path):
    """The audit's case: ``edh`` positive only in val and test of the user's split ingested in silence, and
    ``fmct finetune --task edh`` later had nothing to train on; now stderr and ``untrainable_tasks`` name it."""
    src, _, _ = bleeds
    fold = {0: "val", 1: "val", 2: "test", 3: "test"}  # patients M0 … M3; the others train
    lines = [f"ct_{i:02d}.nii.gz,M{i},{int(i < 10)},{int(i < 4)},{fold.get(i, 'train')}" for i in range(20)]
    labels = write_csv(tmp_path / "edh.csv", "filename,mrn,bleed,edh,fold\n" + "\n".join(lines) + "\n")
    code, out, err = run_cli(["ingest", "nifti", "--name", "edh", "--source", str(src), "--labels", str(labels),
                              "--path-col", "filename", "--patient-col", "mrn", "--map", "bleed=ich", "edh=edh",
                              "--split-col", "fold", "--workers", "1"])
    assert code == 0, err
    summary = json.loads(out)
    assert summary["untrainable_tasks"] == {"edh": {"positive": 0, "negative": 16}}   # ich has both: not named
    assert ("fmct ingest nifti: warning: edh train: 0 positive and 16 negative 'edh' scans: no positives, nothing to "
            "fine-tune or probe 'edh' on (fmct finetune --task edh and the notebooks skip it); its positives are all "
            "in other splits (val 2, test 2): give some of their patients the train split (--split-col)") in err
    assert [line for line in err.splitlines() if "train:" in line and "'ich'" in line] == []
    # negatives only outside train: named the same way
    lines = [f"ct_{i:02d}.nii.gz,M{i},{int(i >= 4)},{fold.get(i, 'train')}" for i in range(20)]
    labels = write_csv(tmp_path / "all_positive.csv", "filename,mrn,bleed,fold\n" + "\n".join(lines) + "\n")
    summary = ingest_nifti(src, name="allpos", labels=labels, mapping={"bleed": "ich"}, path_column="filename",
                           patient_column="mrn", split_column="fold", workers=1)
    assert summary["untrainable_tasks"] == {"ich": {"positive": 16, "negative": 0}}


def test_a_stratified_split_with_both_classes_in_train_names_no_task(bleeds):
    src, labels, _ = bleeds
    summary = ingest_nifti(src, name="fine", labels=labels, mapping={"bleed": "ich"}, path_column="filename",
                           patient_column="mrn", workers=1)
    assert summary["untrainable_tasks"] == {}


# ------------------------------------------------------------------------------------------- the samples
def test_the_committed_samples_read_with_the_flags_their_readme_gives():
    table = read_labels(EXAMPLES / "labels.csv", mapping={"report_bleed": "ich", "report_sah": "sah",
                                                          "ehr_edema": "edema"})
    assert table["ich"].tolist() == pd.array([1, 0, 0, 1, 1, 0, None, 1], dtype="Int64").tolist()
    assert table.loc[table["path"] == "site_a/0004_ct_head.nii.gz", "patient"].item() == "P0003"
    bleeds = read_labels(EXAMPLES / "bleed_labels.csv", path_column="filename", patient_column="mrn",
                         mapping={"bleed": "ich"})
    assert bleeds["ich"].tolist() == pd.array([1, 0, 0, 1, 0, None, 0, 1], dtype="Int64").tolist()
    readme = (EXAMPLES / "README.md").read_text()
    assert "--path-col filename --patient-col mrn --map bleed=ich" in readme
    assert "--map report_bleed=ich report_sah=sah ehr_edema=edema" in readme

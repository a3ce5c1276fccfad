"""A hospital's DICOM export (`fmct ingest dicom`): any folder layout, series as scans, labels by accession,
study, series or folder, the paper's series filters, patients from the headers, refusals named."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset

from fmct_lib.cli import main as cli_main
from fmct_lib.data.dicom_write import write_dicom_series, write_enhanced_ct
from fmct_lib.data.ingest import ingest_dicom
from fmct_lib.data.ingest.dicom_export import PAPER_COHORT, SeriesFilter
from fmct_lib.data.ingest.headers import index_headers
from fmct_lib.data.manifest import load_scans, read_manifest, registry_files
from fmct_lib.data.splits import POOL_SPLIT

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
AFFINE = np.diag([0.5, 0.5, 1.0, 1.0])
# (patient, accession, series description, slices, writer quirks); each series is written in its own study folder
# <patient>/<accession>/ as IM<n> files without an extension, two series of ACC100 mixed in one folder
EXPORT = [
    ("MRN1", "ACC100", "Head 5mm", 12, {}),
    ("MRN1", "ACC100", "Bone", 14, {}),
    ("MRN1", "ACC101", "Head 5mm", 12, dict(add_localizer=True, jpeg_lossless=True)),  # as many PACS export
    ("MRN2", "ACC200", "Head 5mm", 12, {}),
    ("MRN2", "ACC200", "Scout", 5, {}),                         # fewer than 10 slices: refused
    ("MRN3", "ACC300", "Head +C", 12, dict(contrast_agent="IOHEXOL")),
    ("MRN4", "ACC400", "T1 axial", 12, dict(modality="MR")),    # not CT: refused
    ("", "ACC500", "Head 5mm", 12, {}),                         # no PatientID in the headers
]


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    """The export folder and, per series (description, accession), its truth: files, HU, study/series UIDs."""
    work = tmp_path_factory.mktemp("dicom_export")
    src = work / "export"
    rng = np.random.default_rng(5)
    truth = {}
    for number, (patient, accession, desc, n, quirks) in enumerate(EXPORT, start=1):
        hu = rng.integers(-1000, 1500, (16, 16, n)).astype(np.float32)
        written = write_dicom_series(hu, AFFINE, work / "written", flavour="cq500", patient_id=patient or "NOID",
                                     study_uid=pydicom.uid.generate_uid(entropy_srcs=[accession]),
                                     series_description=desc, series_number=number, accession_number=accession,
                                     **quirks)
        folder = src / (patient or "unknown") / accession
        folder.mkdir(parents=True, exist_ok=True)
        files = []
        for k, f in enumerate(written):
            ds = pydicom.dcmread(f)
            if not patient:
                del ds.PatientID
            files.append(folder / f"IM{number:02d}{k:04d}")
            ds.save_as(files[-1])
        header = pydicom.dcmread(files[0], stop_before_pixels=True)
        truth[(accession, desc)] = dict(patient=patient, hu=hu, files=files, study=str(header.StudyInstanceUID),
                                        series=str(header.SeriesInstanceUID), folder=f"{patient or 'unknown'}/{accession}")
    (src / "README.txt").write_text("exported by the PACS\n")
    hu = rng.integers(-1000, 1500, (16, 16, 11)).astype(np.float32)  # one multi-frame Enhanced CT object
    enhanced = write_enhanced_ct(hu, AFFINE, src / "MRN5" / "ACC600" / "IM0001", patient_id="MRN5",
                                 accession_number="ACC600", series_description="Head enhanced")
    broken = pydicom.dcmread(enhanced)  # and one whose frames have no functional groups
    broken.SeriesInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["broken"])
    broken.StudyInstanceUID, broken.AccessionNumber = pydicom.uid.generate_uid(entropy_srcs=["ACC601"]), "ACC601"
    del broken.PerFrameFunctionalGroupsSequence
    (src / "MRN5" / "ACC601").mkdir()
    broken.save_as(src / "MRN5" / "ACC601" / "IM0001", enforce_file_format=False)
    truth[("ACC600", "Head enhanced")] = dict(patient="MRN5", hu=hu, files=[enhanced], folder="MRN5/ACC600",
                                              series=str(pydicom.dcmread(enhanced).SeriesInstanceUID))
    truth["broken"] = dict(series=str(broken.SeriesInstanceUID))
    record = Dataset()  # a DICOM file that is no image: a DICOMDIR-like record without study and series UIDs
    record.file_meta = FileMetaDataset()
    record.file_meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    record.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.1.3.10"
    record.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
    record.preamble = b"\0" * 128
    record.FileSetID = "EXPORT"
    record.save_as(src / "DICOMDIR", enforce_file_format=True)
    return src, truth


def write_labels(path, rows, columns=("accession", "mrn", "bleed")):
    pd.DataFrame(rows, columns=list(columns)).to_csv(path, index=False)
    return path


@pytest.fixture()
def labels(tmp_path):
    return write_labels(tmp_path / "labels.csv", [("ACC100", "MRN1", "yes"), ("ACC101", "MRN1", "no"),
                                                  ("ACC200", "MRN2", "1"), ("ACC999", "MRN9", "0")])


def scans_by_series(name, env):
    scans = load_scans(name).set_index("scan_id")
    link = pd.read_csv(env / name / "linkage.csv", dtype=str).set_index("source")
    return scans, link


def test_export_end_to_end(export, labels, isolated_roots):
    src, truth = export
    summary = ingest_dicom(src, name="hosp", labels=labels, mapping={"bleed": "ich"}, workers=1)
    scans, link = scans_by_series("hosp", isolated_roots.data)
    rejects = pd.read_csv(isolated_roots.data / "hosp" / "rejects.csv")
    reasons = dict(zip(rejects["source"], rejects["reason"]))

    kept = {k: t for k, t in truth.items() if k not in {("ACC200", "Scout"), ("ACC400", "T1 axial"), "broken"}}
    assert summary["series"] == len(truth) and summary["scans"] == len(kept) == 7
    assert summary["not_in_labels"] == 3 and summary["no_patient_id"] == 1  # ACC300, ACC500, ACC600; ACC500
    assert summary["labels_without_volume"] == 1 and summary["labels_without_volume_rows"] == ["row 5: ACC999"]
    assert "modality 'MR', not CT" in reasons[truth[("ACC400", "T1 axial")]["series"]]
    assert "5 image(s), fewer than 10" in reasons[truth[("ACC200", "Scout")]["series"]]
    assert "11 frames but 0 per-frame functional groups" in reasons[truth["broken"]["series"]]
    assert "unreadable DICOM header" in reasons[str(src / "README.txt")]
    assert "without StudyInstanceUID, SeriesInstanceUID" in reasons[str(src / "DICOMDIR")]
    want = {"ACC100": 1, "ACC101": 0, "ACC200": 1}  # a study's row labels each of its series
    for (accession, desc), t in kept.items():
        row = scans.loc[link.loc[t["series"], "scan_id"]]
        assert (pd.isna(row["ich"]) if accession not in want else row["ich"] == want[accession]), (accession, desc)
        assert row["series_description"] == desc and row["contrast"] == int(accession == "ACC300")
        assert row["n_slices"] == t["hu"].shape[2]  # the localizer of ACC101 left out
        np.testing.assert_array_equal(np.asarray(nib.load(isolated_roots.data / "hosp" / row["path"]).dataobj),
                                      t["hu"])
    by_patient = scans.groupby("patient_id")["split"].nunique()
    assert by_patient.max() == 1 and scans["patient_id"].nunique() == 5  # MRN1's three series share a patient
    assert "MRN1" not in (isolated_roots.data / "hosp" / "scans.csv").read_text()
    manifest = read_manifest(registry_files()[-1]).set_index("name")
    assert manifest.loc["hosp", "tasks"] == "ich"
    assert oct(os.stat(isolated_roots.data / "hosp" / "dicom_index.csv").st_mode & 0o777) == "0o600"

    again = ingest_dicom(src, name="hosp", labels=labels, mapping={"bleed": "ich"}, workers=1)  # resumes
    assert again["scans"] == summary["scans"] and again["labels"] == summary["labels"]
    assert load_scans("hosp").equals(scans.reset_index()[load_scans("hosp").columns])


@pytest.mark.parametrize("match_on", ["study", "series", "folder"])
def test_other_keys_label_the_same_series(export, isolated_roots, tmp_path, match_on):
    src, truth = export
    key = {"study": "study", "series": "series", "folder": "folder"}[match_on]
    rows = [(truth[("ACC100", "Head 5mm")][key], "MRN1", "1"), (truth[("ACC101", "Head 5mm")][key], "MRN1", "0")]
    if match_on == "folder":  # a Windows path and an absolute path name the same folders
        rows = [(rows[0][0].replace("/", "\\"), *rows[0][1:]), (str(src / rows[1][0]), *rows[1][1:])]
    labels = write_labels(tmp_path / "keys.csv", rows, columns=("key", "mrn", "bleed"))
    ingest_dicom(src, name="hosp", labels=labels, mapping={"bleed": "ich"}, key_column="key", match_on=match_on,
                 workers=1)
    scans, link = scans_by_series("hosp", isolated_roots.data)
    labelled = {k: scans.loc[link.loc[t["series"], "scan_id"], "ich"] for k, t in truth.items()
                if t["series"] in link.index}
    expected_series = 1 if match_on == "series" else 2  # ACC100 has two series; a series key names one
    assert sum(v == 1 for v in labelled.values() if not pd.isna(v)) == expected_series
    assert labelled[("ACC101", "Head 5mm")] == 0


def test_wrong_key_kind_is_refused_naming_the_right_one(export, isolated_roots, tmp_path):
    src, truth = export
    labels = write_labels(tmp_path / "uids.csv", [(truth[("ACC100", "Head 5mm")]["study"], "MRN1", "1")])
    with pytest.raises(ValueError, match=r"none of its 1 rows names a series .* AccessionNumber .* --match-on study"):
        ingest_dicom(src, name="hosp", labels=labels, mapping={"bleed": "ich"}, workers=1)
    assert not (isolated_roots.data / "hosp" / "volumes").exists()  # refused before any volume is read
    nowhere = write_labels(tmp_path / "nowhere.csv", [("E0001", "MRN1", "1")])
    with pytest.raises(ValueError, match=r"row 2: E0001\); the source's AccessionNumber values are e.g. 'ACC100'"):
        ingest_dicom(src, name="hosp", labels=nowhere, mapping={"bleed": "ich"}, workers=1)


def test_per_study_keeps_the_largest_series(export, isolated_roots):
    src, truth = export
    summary = ingest_dicom(src, name="hosp", per_study=True, workers=1)
    rejects = pd.read_csv(isolated_roots.data / "hosp" / "rejects.csv")
    reasons = dict(zip(rejects["source"], rejects["reason"]))
    assert summary["scans"] == 6  # ACC100 keeps Bone (14 images), not Head 5mm (12)
    head, bone = truth[("ACC100", "Head 5mm")], truth[("ACC100", "Bone")]
    assert f"per-study mode keeps the largest ({bone['series']})" in reasons[head["series"]]
    _, link = scans_by_series("hosp", isolated_roots.data)
    assert bone["study"] in link.index  # the study is the scan's source


def test_drop_contrast_and_min_slices(export, isolated_roots):
    src, truth = export
    summary = ingest_dicom(src, name="hosp", keep=SeriesFilter(drop_contrast=True, min_slices=5), workers=1)
    rejects = pd.read_csv(isolated_roots.data / "hosp" / "rejects.csv")
    reasons = dict(zip(rejects["source"], rejects["reason"]))
    assert "contrast series" in reasons[truth[("ACC300", "Head +C")]["series"]]
    assert truth[("ACC200", "Scout")]["series"] not in reasons  # 5 slices pass --min-slices 5
    assert summary["scans"] == 7 and summary["unlabelled"] == 7 and summary["labels"] == {}


def test_split_column(export, isolated_roots, tmp_path):
    src, truth = export
    labels = write_labels(tmp_path / "split.csv", [("ACC100", "1", "test"), ("ACC200", "0", "train")],
                          columns=("accession", "bleed", "split"))
    ingest_dicom(src, name="hosp", labels=labels, mapping={"bleed": "ich"}, split_column="split", workers=1)
    scans, link = scans_by_series("hosp", isolated_roots.data)
    split = {k: scans.loc[link.loc[t["series"], "scan_id"], "split"] for k, t in truth.items() if t["series"] in link.index}
    assert split[("ACC100", "Head 5mm")] == split[("ACC100", "Bone")] == "test"
    assert split[("ACC101", "Head 5mm")] == "test"  # unlabelled, but MRN1's: with its patient, never in the pool
    assert split[("ACC200", "Head 5mm")] == "train" and split[("ACC300", "Head +C")] == POOL_SPLIT

    crossing = write_labels(tmp_path / "crossing.csv", [("ACC100", "1", "test"), ("ACC101", "0", "train")],
                            columns=("accession", "bleed", "split"))
    with pytest.raises(ValueError, match=r"one patient in several splits \(row 2 test, row 3 train; patient 'MRN1'"):
        ingest_dicom(src, name="hosp2", labels=crossing, mapping={"bleed": "ich"}, split_column="split", workers=1)


def test_header_index_is_read_again_when_a_file_changes(export, tmp_path):
    src, truth = export
    files = sorted(truth[("ACC200", "Head 5mm")]["files"])
    copies = []
    for f in files:
        copies.append(tmp_path / "src" / f.name)
        copies[-1].parent.mkdir(exist_ok=True)
        shutil.copy(f, copies[-1])
    tags = {"accession": "AccessionNumber", "series": "SeriesInstanceUID"}
    first = index_headers(copies, tmp_path / "index.csv", tags=tags, workers=1)
    assert set(first["accession"]) == {"ACC200"} and (first["error"] == "").all()
    ds = pydicom.dcmread(copies[0])
    ds.AccessionNumber = "ACC201"  # exported again under its name
    ds.save_as(copies[0])
    os.utime(copies[0], ns=(os.stat(copies[0]).st_atime_ns, os.stat(copies[0]).st_mtime_ns + 10**9))
    second = index_headers(copies, tmp_path / "index.csv", tags=tags, workers=1)
    assert second.set_index("file").loc[str(copies[0]), "accession"] == "ACC201"
    pd.testing.assert_frame_equal(index_headers(copies, tmp_path / "index.csv", tags=tags, workers=1), second)


def test_cli_dicom(export, labels, isolated_roots, capsys, tmp_path):
    src, _ = export
    assert cli_main(["ingest", "dicom", "--name", "hosp", "--source", str(src), "--labels", str(labels),
                     "--patient-col", "mrn", "--map", "bleed=ich", "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "5 refused" in err and "row(s) of" in err and "ACC999" in err  # README, DICOMDIR, MR, 5 slices, no groups
    assert "no PatientID" in err  # ACC500's series: warned, with the way out
    bad = write_labels(tmp_path / "bad.csv", [("ACC100", "MRN1", "maybe")])
    assert cli_main(["ingest", "dicom", "--name", "hosp", "--source", str(src), "--labels", str(bad),
                     "--patient-col", "mrn", "--map", "bleed=ich"]) == 2
    assert "'maybe' (row 2)" in capsys.readouterr().err


def test_the_committed_sample_with_its_readme_flags(isolated_roots, tmp_path, capsys):
    """examples/accession_labels.csv, ingested with the command examples/README.md gives, onto an export holding
    two of its studies (the other three rows are named as matching no series)."""
    examples = EXAMPLES
    flags = "--patient-col mrn --map bleed=ich sah=sah"
    assert flags in (examples / "README.md").read_text()
    rng = np.random.default_rng(6)
    for accession, mrn in [("E2019000413", "MRN-1042"), ("E2020001207", "MRN-1077")]:
        write_dicom_series(rng.integers(-1000, 1500, (16, 16, 10)).astype(np.float32), AFFINE, tmp_path / "pacs",
                           flavour="cq500", patient_id=f"hdr-{mrn}", accession_number=accession,
                           study_uid=pydicom.uid.generate_uid(entropy_srcs=[accession]))
    assert cli_main(["ingest", "dicom", "--name", "mybleeds", "--source", str(tmp_path / "pacs"), "--labels",
                     str(examples / "accession_labels.csv"), "--workers", "1", *flags.split()]) == 0
    assert "3 row(s) of" in capsys.readouterr().err
    scans = load_scans("mybleeds")
    assert sorted(zip(scans["ich"], scans["sah"])) == [(1, 0), (1, 1)]
    assert scans["patient_id"].nunique() == 2


def test_plane_column_and_filter(isolated_roots, tmp_path):
    """A sagittal reformat beside the axial series: both are scans with their plane; --plane axial keeps one and
    records the other's refusal."""
    src = _axial_and_sagittal(tmp_path, n_axial=12, n_sagittal=12)
    both = ingest_dicom(src, name="planes", workers=1)
    scans = load_scans("planes")
    assert both["scans"] == 2 and sorted(zip(scans["series_description"], scans["plane"])) == [
        ("Head 5mm", "axial"), ("Sag MPR", "sagittal")]
    axial = ingest_dicom(src, name="axial", keep=SeriesFilter(planes=("axial",)), workers=1)
    rejects = pd.read_csv(isolated_roots.data / "axial" / "rejects.csv")
    assert axial["scans"] == 1 and load_scans("axial")["plane"].tolist() == ["axial"]
    assert rejects["reason"].str.contains(r"sagittal slices \(--plane axial\)").sum() == 1
    with pytest.raises(ValueError, match="--plane takes axial, coronal, sagittal, got oblique"):
        ingest_dicom(src, name="bad", keep=SeriesFilter(planes=("oblique",)), workers=1)


# ---------------------------------------------------------------- a user's audit of the export path (2026-12-07)
def test_patient_col_names_every_series_of_that_header_patient(export, isolated_roots, tmp_path):
    """--patient-col: the CSV names MRN1's first study only; its unlisted study takes the same patient (one person,
    one split), and a header patient given two CSV patients is refused."""
    src, truth = export
    labels = write_labels(tmp_path / "one.csv", [("ACC100", "CSV-7", "1")])
    ingest_dicom(src, name="hosp", labels=labels, mapping={"bleed": "ich"}, patient_column="mrn", workers=1)
    scans, link = scans_by_series("hosp", isolated_roots.data)
    mrn1 = {scans.loc[link.loc[t["series"], "scan_id"], "patient_id"] for t in truth.values()
            if t.get("patient") == "MRN1"}
    assert len(mrn1) == 1  # ACC100's two series and ACC101's, unlisted
    originals = pd.read_csv(isolated_roots.data / "hosp" / "linkage.csv", dtype=str)["original_patient_id"]
    assert "CSV-7" in set(originals) and "MRN1" not in set(originals)
    two = write_labels(tmp_path / "two.csv", [("ACC100", "CSV-7", "1"), ("ACC101", "CSV-8", "0")])
    with pytest.raises(ValueError, match=r"rows 2 and 3 name two patients \('CSV-7', 'CSV-8'; --patient-col\)"):
        ingest_dicom(src, name="hosp2", labels=two, mapping={"bleed": "ich"}, patient_column="mrn", workers=1)


def test_labels_of_series_left_out_are_said_not_called_unmatched(export, isolated_roots, tmp_path):
    src, truth = export
    labels = write_labels(tmp_path / "cta.csv", [("ACC300", "MRN3", "1"), ("ACC100", "MRN1", "0")])
    summary = ingest_dicom(src, name="hosp", labels=labels, mapping={"bleed": "ich"},
                           keep=SeriesFilter(drop_contrast=True), workers=1)
    assert summary["labels_without_volume"] == 0 and summary["labels_of_left_out_series"] == 1
    assert summary["labels_of_left_out_series_rows"][0].startswith("row 2: series in MRN3/ACC300: contrast series")
    only = write_labels(tmp_path / "only.csv", [("ACC300", "MRN3", "1")])  # all of its rows left out: said, kept
    assert ingest_dicom(src, name="hosp3", labels=only, mapping={"bleed": "ich"}, keep=SeriesFilter(drop_contrast=True),
                        workers=1)["labels_of_left_out_series"] == 1


def test_per_study_takes_a_label_of_the_study_s_other_series(export, isolated_roots, tmp_path):
    src, truth = export
    head, bone = truth[("ACC100", "Head 5mm")], truth[("ACC100", "Bone")]
    labels = write_labels(tmp_path / "series.csv", [(head["series"], "MRN1", "1")], columns=("uid", "mrn", "bleed"))
    ingest_dicom(src, name="hosp", labels=labels, mapping={"bleed": "ich"}, key_column="uid", match_on="series",
                 per_study=True, workers=1)
    scans, link = scans_by_series("hosp", isolated_roots.data)
    assert scans.loc[link.loc[bone["study"], "scan_id"], "ich"] == 1  # the kept Bone series carries Head's label


def test_per_study_chooses_among_the_planes_kept(isolated_roots, tmp_path):
    """A sagittal reformat with more images than the axial series: --per-study --plane axial keeps the axial one
    (the plane filter comes first), where it used to keep the reformat and then refuse it."""
    src = _axial_and_sagittal(tmp_path, n_axial=12, n_sagittal=16)
    summary = ingest_dicom(src, name="both", per_study=True, keep=SeriesFilter(planes=("axial",)), workers=1)
    scans = load_scans("both")
    assert summary["scans"] == 1 and scans["plane"].tolist() == ["axial"]
    assert ingest_dicom(src, name="largest", per_study=True, workers=1)["scans"] == 1
    assert load_scans("largest")["plane"].tolist() == ["sagittal"]  # without --plane: the largest series


def test_symlinked_folders_are_followed_once(export, isolated_roots, tmp_path):
    src, _ = export
    linked = tmp_path / "cohort"
    linked.mkdir()
    (linked / "MRN1").symlink_to(src / "MRN1", target_is_directory=True)
    (linked / "again").symlink_to(linked, target_is_directory=True)  # a loop: walked once
    summary = ingest_dicom(linked, name="linked", workers=1)
    assert summary["scans"] == 3  # ACC100's two series and ACC101's


def test_a_series_split_over_two_folders_is_labelled_by_either(isolated_roots, tmp_path):
    rng = np.random.default_rng(8)
    files = write_dicom_series(rng.integers(-1000, 1500, (16, 16, 12)).astype(np.float32), AFFINE, tmp_path / "w",
                               flavour="cq500", patient_id="MRN1", accession_number="ACC1")
    src = tmp_path / "pacs"
    for k, f in enumerate(sorted(files)):
        part = src / "Lee" / "CT" / f"part{1 + k // 6}"
        part.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, part / f.name)
    labels = write_labels(tmp_path / "folders.csv", [("Lee/CT/part1/", "MRN1", "1")], columns=("folder", "mrn", "bleed"))
    summary = ingest_dicom(src, name="split", labels=labels, mapping={"bleed": "ich"}, key_column="folder",
                           match_on="folder", workers=1)
    assert summary["scans"] == 1 and load_scans("split")["ich"].tolist() == [1]
    assert load_scans("split")["n_slices"].tolist() == [12]


def test_small_refusals_name_the_right_flag_and_leave_nothing(export, isolated_roots, tmp_path):
    src, _ = export
    wrong = write_labels(tmp_path / "wrong.csv", [("ACC100", "MRN1", "1")], columns=("acc", "mrn", "bleed"))
    with pytest.raises(ValueError, match=r"no column 'accession' \(--key-col\).*Name the file's columns with --key-col"):
        ingest_dicom(src, name="hosp", labels=wrong, mapping={"bleed": "ich"}, workers=1)
    empty = tmp_path / "notdicom"
    empty.mkdir()
    (empty / "README.txt").write_text("no images here\n")
    with pytest.raises(FileNotFoundError, match="none of its 1 files is a DICOM image"):
        ingest_dicom(empty, name="nothing", workers=1)
    assert not (isolated_roots.data / "nothing").exists()
    zeros = write_labels(tmp_path / "zeros.csv", [("ACC100", "MRN1", "1"), ("123", "MRN9", "0")])
    padded = tmp_path / "padded"
    rng = np.random.default_rng(9)
    write_dicom_series(rng.integers(-1000, 1500, (16, 16, 12)).astype(np.float32), AFFINE, padded, flavour="cq500",
                       patient_id="MRN9", accession_number="000123")
    shutil.copytree(src / "MRN1", padded / "MRN1")
    summary = ingest_dicom(padded, name="zeros", labels=zeros, mapping={"bleed": "ich"}, workers=1)
    assert summary["labels_without_volume_rows"] == [
        "row 3: 123 (the export has 000123: leading zeros lost, as a spreadsheet drops them? keep the column as text)"]


def _axial_and_sagittal(tmp_path, n_axial: int, n_sagittal: int):
    """An export of one study: an axial series and a sagittal reformat (rows along P, columns along -S)."""
    rng = np.random.default_rng(7)
    src = tmp_path / "pacs"
    for desc, n in (("Head 5mm", n_axial), ("Sag MPR", n_sagittal)):
        files = write_dicom_series(rng.integers(-1000, 1500, (16, 16, n)).astype(np.float32), AFFINE,
                                   tmp_path / "written", flavour="cq500", patient_id="MRN1", series_description=desc,
                                   accession_number="ACC1", study_uid=pydicom.uid.generate_uid(entropy_srcs=["ACC1"]))
        (src / desc).mkdir(parents=True)
        for k, f in enumerate(sorted(files, key=lambda f: pydicom.dcmread(f).InstanceNumber)):
            ds = pydicom.dcmread(f)
            if desc == "Sag MPR":
                ds.ImageOrientationPatient, ds.ImagePositionPatient = [0, 1, 0, 0, 0, -1], [2.0 * k, 0, 0]
            ds.save_as(src / desc / f"IM{k:03d}")
    return src


def test_the_paper_cohort_filters(isolated_roots, tmp_path):
    """Slice thickness 0.5-5 mm and 70-150 kVp (the paper's cohort, ``PAPER_COHORT``) and a kernel pattern: refused
    from the headers before reading, and for an Enhanced CT object (its thickness in its functional groups) once read."""
    rng = np.random.default_rng(10)
    src = tmp_path / "pacs"
    series = {"thin": (1.0, 120.0, {}), "thick": (6.0, 120.0, {}), "hot": (1.0, 160.0, {}),
              "enhanced thick": (6.0, 120.0, {"enhanced": True})}
    for desc, (dz, kvp, how) in series.items():
        hu = rng.integers(-1000, 1500, (16, 16, 12)).astype(np.float32)
        affine = np.diag([0.5, 0.5, dz, 1.0])
        if how:
            write_enhanced_ct(hu, affine, src / desc / "IM0001", patient_id="MRN1", series_description=desc, kvp=kvp)
        else:
            write_dicom_series(hu, affine, src / desc, flavour="cq500", patient_id="MRN1", series_description=desc,
                               kvp=kvp)
    summary = ingest_dicom(src, name="paper", keep=PAPER_COHORT, workers=1)
    reasons = pd.read_csv(isolated_roots.data / "paper" / "rejects.csv")["reason"]
    assert summary["scans"] == 1 and load_scans("paper")["series_description"].tolist() == ["thin"]
    assert reasons.str.contains(r"slice thickness 6 mm outside 0.5-5 \(--thickness-mm\)").sum() == 2  # one once read
    assert reasons.str.contains(r"160 kVp outside 70-150 \(--kvp\)").sum() == 1
    with pytest.raises(FileNotFoundError, match=r"kernel: no scan to keep: 4 refused or left out, each with its "
                                                r"reason in .*rejects.csv \(e.g. "):  # the writer's kernel: STANDARD
        ingest_dicom(src, name="kernel", keep=SeriesFilter(kernel="^bone"), workers=1)
    assert pd.read_csv(isolated_roots.data / "kernel" / "rejects.csv")["reason"].str.contains(
        "kernel 'STANDARD' not matched by --kernel '\\^bone'").sum() == 4
    assert "kernel" not in set(read_manifest(registry_files()[-1])["name"])  # no empty dataset registered
    for bad in (dict(thickness_mm=(5.0, 0.5)), dict(kvp=(-1.0, 10.0)), dict(kernel="(")):
        with pytest.raises(ValueError, match="--thickness-mm|--kvp|--kernel"):
            SeriesFilter(**bad)

"""CQ500 ingestion end to end on the exact CQ500 tree (plus the real CQ500 slice shipped with pydicom)."""
from __future__ import annotations


import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest
from pydicom.data import get_testdata_file

from fmct_lib.data.dicom_write import cq500_series_folder, write_dicom_series
from fmct_lib.data.ingest import ingest_cq500
from fmct_lib.data.ingest.cq500 import is_contrast, read_cq500_labels
from fmct_lib.data.manifest import CQ500_FINDINGS, load_scans

# CQ500's reads.csv findings, in its order (R1:ICH ... R3:MidlineShift; qure.ai's file), and the task each one is
CQ500_READS = {"ICH": "ich", "IPH": "iph", "IVH": "ivh", "SDH": "sdh", "EDH": "edh", "SAH": "sah",
               "BleedLocation-Left": "bleed_left", "BleedLocation-Right": "bleed_right",
               "ChronicBleed": "chronic_bleed", "Fracture": "fracture", "CalvarialFracture": "calvarial_fracture", "OtherFracture": "other_fracture",
               "MassEffect": "mass_effect", "MidlineShift": "midline_shift"}
# patient -> [(series description, writer quirks)]
SERIES = {
    "CQ500-CT-0": [("5/5mm Plain", dict(j2k=True)), ("PRE CONTRAST THIN", dict(tilt_deg=-20.0))],
    "CQ500-CT-7": [("+C", dict(contrast_agent="IODINE")), ("Plain", dict(duplicate_slices=(2,), add_localizer=True))],
    "CQ500-CT-12": [("Plain", dict(modality="MR")), ("Plain", dict(drop_slices=(3,)))],
}


@pytest.fixture(scope="module")
def cq500_source(tmp_path_factory):
    src = tmp_path_factory.mktemp("cq500_src")
    rng = np.random.default_rng(2)
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    truth = {}
    for batch, (patient, series) in zip(["qct01", "qct01", "qct02"], SERIES.items()):
        for number, (desc, kw) in enumerate(series, start=1):
            hu = rng.integers(-1000, 1500, (32, 32, 6)).astype(np.float32)
            files = write_dicom_series(hu, affine, src / batch, flavour="cq500", patient_id=patient,
                                       series_description=desc, series_number=number, **kw)
            truth[str(files[0].parent.relative_to(src))] = dict(patient=patient, desc=desc, hu=hu, **kw)
    # the real CQ500 slice from pydicom's test data as a 3-slice series of its own patient
    real = src / "qct03" / cq500_series_folder("CQ500-CT-310", "5/5mm Plain")
    real.mkdir(parents=True)
    for k in range(3):
        ds = pydicom.dcmread(get_testdata_file("693_J2KI.dcm"))
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], 47.0 + 5 * k]
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=["693", str(k)])
        ds.save_as(real / f"CT{k:06d}.dcm")
    (src / "qct03" / "README.txt").write_text("stray file outside a patient folder")

    # reads.csv: 3 readers x 14 findings, random votes; patient 310 included, one listed patient absent. Its header
    # and what each finding means are written here from CQ500's own file, not from the code's READS_FINDINGS
    names = [*SERIES, "CQ500-CT-310", "CQ500-CT-99"]
    header = ["name", "Category"] + [f"R{r}:{f}" for r in (1, 2, 3) for f in CQ500_READS]
    votes = rng.integers(0, 2, (len(names), 3, len(CQ500_READS)))
    rows = [[n, "B1", *v.reshape(-1)] for n, v in zip(names, votes)]
    pd.DataFrame(rows, columns=header).to_csv(src / "reads.csv", index=False)
    majority = {n: {CQ500_READS[f]: int(v[:, i].sum() >= 2) for i, f in enumerate(CQ500_READS)}
                for n, v in zip(names, votes)}
    return src, truth, majority


@pytest.fixture()
def env(isolated_roots):
    return isolated_roots.data


def test_layout_matches_cq500(cq500_source):
    src, truth, _ = cq500_source
    assert "qct01/CQ500CT0 CQ500CT0/Unknown Study/CT 55mm Plain" in truth
    assert "qct01/CQ500CT7 CQ500CT7/Unknown Study/CT C" in truth
    assert "qct02/CQ500CT12 CQ500CT12/Unknown Study/CT Plain-2" in truth  # repeated description
    ds = pydicom.dcmread(next((src / "qct01/CQ500CT0 CQ500CT0/Unknown Study/CT 55mm Plain").iterdir()))
    assert ds.PatientID == "CQ500-CT-0" and ds.SeriesDescription == "5/5mm Plain"
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless


def test_majority_labels(cq500_source):
    src, _, majority = cq500_source
    labels = read_cq500_labels(src / "reads.csv")
    for name, want in majority.items():
        assert labels.loc[name, CQ500_FINDINGS].to_dict() == want


@pytest.mark.parametrize("description, contrast", [
    ("+C", True), ("C", True), ("C THIN", True), ("4cc sec 150cc D3D on", True), ("POST CONTRAST", True),
    ("PRE CONTRAST THIN", False), ("5/5mm Plain", False), ("55mm Plain", False), ("Plain 3mm", False),
    ("non contrast", False), ("CT 0.625mm", False),
    ("C-2", True),  # the second '+C' series of a patient: folder 'CT C-2' (it was kept by --drop-contrast)
])
def test_contrast_rule(description, contrast):
    assert is_contrast(description) == contrast


def test_ingest_cq500_end_to_end(cq500_source, env):
    src, truth, majority = cq500_source
    summary = ingest_cq500(src, workers=1)
    assert (summary["reads_without_series"], summary["reads_without_series_rows"]) == (1, ["CQ500-CT-99"])
    scans = load_scans("cq500").set_index("scan_id")
    link = pd.read_csv(env / "cq500" / "linkage.csv", dtype=str).set_index("source")
    rejects = pd.read_csv(env / "cq500" / "rejects.csv")
    reasons = dict(zip(rejects["source"], rejects["reason"]))

    mr = next(k for k, t in truth.items() if t.get("modality") == "MR")
    assert summary["scans"] == len(truth) - 1 + 1  # all but the MR series, plus the real one
    assert any("not CT" in r for s, r in reasons.items() if s == mr)
    assert any("README" in s or "outside" in r for s, r in reasons.items())
    assert scans.groupby("patient_id")["split"].nunique().max() == 1
    assert not any(p in (env / "cq500" / "scans.csv").read_text() for p in SERIES)

    for source, t in truth.items():
        if t.get("modality") == "MR":
            continue
        row = scans.loc[link.loc[source, "scan_id"]]
        assert {k: int(row[k]) for k in CQ500_FINDINGS} == majority[t["patient"]]
        assert row["series_description"] == t["desc"]  # from the header, '/' and '+' kept
        assert row["contrast"] == int(t["desc"] == "+C")
        assert row["manufacturer"] == "GE MEDICAL SYSTEMS" and row["category"] == "B1"
        assert row["slice_thickness_mm"] == 5.0  # SliceThickness tag
        data = np.asarray(nib.load(row["path"]).dataobj)
        if t.get("drop_slices"):  # the missing slice is interpolated between its neighbours
            assert row["has_gap"]
            np.testing.assert_array_equal(np.delete(data, 3, axis=2), np.delete(t["hu"], 3, axis=2))
            np.testing.assert_allclose(data[..., 3], (t["hu"][..., 2] + t["hu"][..., 4]) / 2, atol=0.5)
        elif not t.get("tilt_deg"):
            np.testing.assert_array_equal(data, t["hu"])
        if t.get("tilt_deg"):
            assert row["tilt_deg"] == pytest.approx(20.0, abs=1e-3)
    real = scans.loc[link.loc["qct03/CQ500CT310 CQ500CT310/Unknown Study/CT 55mm Plain", "scan_id"]]
    assert real["kvp"] == 140 and real["n_slices"] == 3
    assert {k: int(real[k]) for k in CQ500_FINDINGS} == majority["CQ500-CT-310"]
    img = nib.load(real["path"])
    assert img.shape == (512, 512, 3) and np.asarray(img.dataobj).min() == -3995


def test_drop_contrast(cq500_source, env):
    src, truth, _ = cq500_source
    ingest_cq500(src, workers=1, drop_contrast=True)
    scans = load_scans("cq500")
    assert (scans["contrast"] == 0).all() and len(scans) == len(truth) - 1
    rejects = pd.read_csv(env / "cq500" / "rejects.csv")
    assert rejects["reason"].str.contains("contrast series").sum() == 1


def test_drop_contrast_also_drops_what_only_the_header_calls_contrast(cq500_source, env, tmp_path):
    """A '+C' series in a folder whose name says nothing ('CT Series-9'): left out once its header is read (the
    scan table marked it contrast=1, and --drop-contrast kept it)."""
    import shutil
    src, truth, _ = cq500_source
    copy = tmp_path / "cq500"
    shutil.copytree(src, copy)
    contrast = next(k for k, t in truth.items() if t.get("desc") == "+C")
    (copy / contrast).rename((copy / contrast).with_name("CT Series-9"))
    ingest_cq500(copy, workers=1, drop_contrast=True)
    scans = load_scans("cq500")
    assert (scans["contrast"] == 0).all() and len(scans) == len(truth) - 1
    rejects = pd.read_csv(env / "cq500" / "rejects.csv")
    assert rejects["reason"].str.contains("contrast series by its DICOM header").sum() == 1


@pytest.mark.parametrize("description", ["POST FOSSA", "BONE POST", "C-SPINE", "Posterior fossa 2.5mm"])
def test_contrast_rule_has_no_false_positives_on_anatomy(description):
    assert not is_contrast(description)


@pytest.mark.parametrize("description", ["POST C", "Post-Contrast THIN", "C+", "CTA HEAD"])
def test_contrast_rule_still_finds_contrast(description):
    assert is_contrast(description)


def _reads(tmp_path, rows):
    header = ["name", "Category"] + [f"R{r}:{f}" for r in (1, 2, 3) for f in CQ500_READS]
    path = tmp_path / "reads.csv"
    pd.DataFrame([[name, "B1", *([vote] * 42)] for name, vote in rows], columns=header).to_csv(path, index=False)
    return path


def test_a_read_that_is_not_0_or_1_is_refused_naming_file_column_and_row(tmp_path):
    path = _reads(tmp_path, [("CQ500-CT-1", 0), ("CQ500-CT-2", 0)])
    table = pd.read_csv(path, dtype=str)
    for bad in ["2", "", "yes"]:
        table.loc[1, "R1:ICH"] = bad  # a single vote of 2 would have made a majority with one other reader
        table.to_csv(path, index=False)
        with pytest.raises(ValueError, match=rf"{path}: column 'R1:ICH' must be 0 or 1; 1 row\(s\) are not: "
                                             rf"row 3 \(CQ500-CT-2\): '{bad}'"):
            read_cq500_labels(path)


def test_a_patient_listed_twice_needs_the_same_reads(tmp_path):
    same = read_cq500_labels(_reads(tmp_path, [("CQ500-CT-1", 1), ("CQ500-CT-1", 1), ("CQ500-CT-2", 0)]))
    assert same.index.tolist() == ["CQ500-CT-1", "CQ500-CT-2"] and same.loc["CQ500-CT-1", "ich"] == 1
    with pytest.raises(ValueError, match=r"'CQ500-CT-1' is listed in rows 2, 3 with different reads"):
        read_cq500_labels(_reads(tmp_path, [("CQ500-CT-1", 0), ("CQ500-CT-1", 1), ("CQ500-CT-2", 0)]))

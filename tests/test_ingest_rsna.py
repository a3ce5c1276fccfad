"""RSNA ingestion end to end on files written in the exact RSNA layout, with the known quirks."""
from __future__ import annotations


import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmct_lib.cli import main as fmct
from fmct_lib.data.dicom_write import write_dicom_series
from fmct_lib.data.ingest import ingest_rsna
from fmct_lib.data.ingest.rsna import read_rsna_labels
from fmct_lib.data.manifest import RSNA_TASKS, load_scans, read_manifest

SUBTYPES = ["epidural", "intraparenchymal", "intraventricular", "subarachnoid", "subdural", "any"]
TASK_OF = dict(zip(SUBTYPES, ["edh", "iph", "ivh", "sah", "sdh", "ich"]))

# study -> writer quirks; a patient can have several studies
STUDIES = {
    "plain": dict(patient_id="ID_0000000a"),
    "tilted": dict(patient_id="ID_0000000a", tilt_deg=14.5),
    "wrap": dict(patient_id="ID_0000000b", wrong_intercept=True, multivalued_window=True),
    "corrupt": dict(patient_id="ID_0000000c", corrupt_slices=(2,)),
    "dup_scout": dict(patient_id="ID_0000000d", duplicate_slices=(1,), add_localizer=True, bits_stored=12),
    "mr": dict(patient_id="ID_0000000e", modality="MR"),
}


@pytest.fixture(scope="module")
def rsna_source(tmp_path_factory):
    """stage_2_train/ (flat) + stage_2_train.csv (long format with duplicated rows); returns truth."""
    src = tmp_path_factory.mktemp("rsna_src")
    images = src / "stage_2_train"
    rng = np.random.default_rng(1)
    affine = np.diag([0.5, 0.5, 5.0, 1.0])
    truth, rows = {}, []
    for n, (study, kw) in enumerate(STUDIES.items()):
        hu = rng.integers(-1000, 1500, (32, 32, 5)).astype(np.float32)
        files = write_dicom_series(hu, affine, images, flavour="rsna", study_uid=f"ID_{n:010x}", **kw)
        labels = {}
        for f in files:
            slice_labels = {s: int(rng.random() < 0.2) for s in SUBTYPES[:-1]}
            slice_labels["any"] = int(any(slice_labels.values()))
            labels[f.stem] = slice_labels
            rows += [(f"{f.stem}_{s}", slice_labels[s]) for s in SUBTYPES]
        truth[f"ID_{n:010x}"] = dict(hu=hu, affine=affine, files=files, labels=labels, **kw)
    # a second, smaller series in the first study (all-negative slices): per-study mode keeps the largest
    extra = write_dicom_series(rng.integers(-1000, 1500, (32, 32, 3)), affine, images, flavour="rsna",
                               patient_id="ID_0000000a", study_uid=f"ID_{0:010x}", series_number=2)
    rows += [(f"{f.stem}_{s}", 0) for f in extra for s in SUBTYPES]
    rows += rows[:12]  # duplicated rows, as in the stage-2 CSV
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(src / "stage_2_train.csv", index=False)
    (images / "ID_6431af929.dcm").write_bytes(b"DICM" + b"\0" * 40)  # unreadable header
    return src, truth


@pytest.fixture()
def env(isolated_roots):
    return isolated_roots.data, isolated_roots.manifest


def test_labels_are_deduplicated_long_format(rsna_source):
    src, truth = rsna_source
    labels = read_rsna_labels(src / "stage_2_train.csv")
    n_images = sum(len(t["files"]) for t in truth.values())
    assert len(labels) == n_images + 3 and list(labels.columns) == RSNA_TASKS
    some = next(iter(truth.values()))["labels"]
    for sop, lab in some.items():
        assert {TASK_OF[s]: v for s, v in lab.items()} == labels.loc[sop].to_dict()


def test_ingest_rsna_end_to_end(rsna_source, env):
    src, truth = rsna_source
    root, manifest = env
    before = read_manifest(manifest)
    summary = ingest_rsna(src, workers=2)
    scans = load_scans("rsna")
    linkage = pd.read_csv(root / "rsna" / "linkage.csv", dtype=str)
    rejects = pd.read_csv(root / "rsna" / "rejects.csv")
    by_study = dict(zip(linkage["source"], linkage["scan_id"]))

    # every study but the MR one becomes a scan; the MR study and the unreadable file are rejections
    mr_study = next(s for s, t in truth.items() if t.get("modality") == "MR")
    assert set(by_study) == set(truth) - {mr_study} and summary["scans"] == len(truth) - 1
    reasons = dict(zip(rejects["source"], rejects["reason"]))
    assert any("ID_6431af929.dcm" in s and "unreadable DICOM header" in r for s, r in reasons.items())
    assert any("not CT" in r for r in reasons.values())
    corrupt = truth[next(s for s, t in truth.items() if t.get("corrupt_slices"))]["files"][2]
    assert "undecodable pixel data" in reasons[str(corrupt)]
    assert sum("per-study mode keeps the largest" in r for r in reasons.values()) == 1

    # pseudonymous ids: no raw identifier anywhere in the scan table
    text = (root / "rsna" / "scans.csv").read_text()
    assert not any(t["patient_id"] in text or s in text for s, t in truth.items())
    assert scans.groupby("patient_id")["split"].nunique().max() == 1
    assert scans["patient_id"].nunique() == 4  # patients a (2 studies), b, c, d

    for study, scan_id in by_study.items():
        t, row = truth[study], scans.set_index("scan_id").loc[scan_id]
        expected = {TASK_OF[s]: max(lab[s] for lab in t["labels"].values()) for s in SUBTYPES}
        assert {k: int(row[k]) for k in RSNA_TASKS} == expected, study
        img = nib.load(row["path"])
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        data = np.asarray(img.dataobj)
        if not t.get("tilt_deg") and not t.get("corrupt_slices"):
            want = np.clip(t["hu"], -1000, 3095) if t.get("wrong_intercept") else t["hu"]
            want = np.clip(want, -1024, 3071) if t.get("bits_stored") == 12 else want
            np.testing.assert_array_equal(data, want)
            np.testing.assert_allclose(img.affine, t["affine"], atol=1e-5)
            assert row["spacing"] == "0.5,0.5,5"
    row = scans.set_index("scan_id").loc[by_study[next(s for s, t in truth.items() if t.get("tilt_deg"))]]
    assert row["tilt_deg"] == pytest.approx(14.5, abs=1e-3)
    assert row["slice_thickness_mm"] == pytest.approx(5 * np.cos(np.radians(14.5)), abs=1e-3)
    row = scans.set_index("scan_id").loc[by_study[next(s for s, t in truth.items() if t.get("add_localizer"))]]
    assert (row["n_duplicates_dropped"], row["n_localizers_dropped"]) == (1, 1)

    after = read_manifest(manifest)
    pd.testing.assert_frame_equal(before, after)  # rsna is a known row: untouched


def test_rerun_is_idempotent_and_resumes(rsna_source, env):
    src, _ = rsna_source
    root, _ = env
    assert fmct(["ingest", "rsna", "--source", str(src), "--workers", "1"]) == 0
    table = (root / "rsna" / "scans.csv").read_text()
    volumes = sorted((root / "rsna" / "volumes").glob("*.nii.gz"))
    mtimes = {p: p.stat().st_mtime_ns for p in volumes}
    volumes[0].unlink()  # as if the first run stopped before this one
    assert fmct(["ingest", "rsna", "--source", str(src), "--workers", "1"]) == 0
    assert (root / "rsna" / "scans.csv").read_text() == table
    assert volumes[0].exists()
    assert all(p.stat().st_mtime_ns == mtimes[p] for p in volumes[1:])  # not rewritten


def test_per_series_and_seeded_splits(rsna_source, env, tmp_path):
    src, truth = rsna_source
    root, _ = env
    ingest_rsna(src, per_series=True, workers=1, seed=0)
    assert len(load_scans("rsna")) == len(truth)  # the extra series is a scan of its own
    ingest_rsna(src, workers=1, seed=0, name="rsna_study")
    a = load_scans("rsna_study")
    ingest_rsna(src, workers=1, seed=0, root=tmp_path / "again", name="rsna")
    b = load_scans("rsna", root=tmp_path / "again")
    # same data, same seed -> same split per patient (pseudonyms may differ between data roots)
    link_a = pd.read_csv(root / "rsna_study" / "linkage.csv", dtype=str).merge(a[["scan_id", "split"]])
    link_b = pd.read_csv(tmp_path / "again" / "rsna" / "linkage.csv", dtype=str).merge(b[["scan_id", "split"]])
    split_a = dict(zip(link_a["original_patient_id"], link_a["split"]))
    split_b = dict(zip(link_b["original_patient_id"], link_b["split"]))
    assert split_a == split_b


def test_a_label_that_is_not_0_or_1_is_refused_naming_the_row(tmp_path):
    path = tmp_path / "stage_2_train.csv"
    for bad in ["2", "", "-1", "yes"]:
        path.write_text("ID,Label\n" + "".join(f"ID_aaa_{s},0\n" for s in SUBTYPES[:-1]) + f"ID_aaa_any,{bad}\n")
        with pytest.raises(ValueError, match=rf"{path}: column 'Label' must be 0 or 1; 1 row\(s\) are not: "
                                             rf"row 7 \(ID_aaa_any\): '{bad}'"):
            read_rsna_labels(path)


def test_unmatched_label_rows_and_unlabelled_images_are_reported(tmp_path, env):
    """Study 0 fully labelled (one positive image), study 1 with one image unlabelled (the others 0: unknown,
    not 0), study 2 with none; label rows of an image no file holds are counted too."""
    src = tmp_path / "src"
    rng = np.random.default_rng(0)
    rows, positive = [], {}
    for n in range(3):
        hu = rng.integers(-1000, 1500, (32, 32, 5)).astype(np.float32)
        files = write_dicom_series(hu, np.diag([0.5, 0.5, 5.0, 1.0]), src / "stage_2_train", flavour="rsna",
                                   study_uid=f"ID_{n:010x}", patient_id=f"ID_{n:08x}")
        labelled = {0: files, 1: files[1:], 2: []}[n]
        rows += [(f"{f.stem}_{s}", int(n == 0 and k == 2 and s in ("subdural", "any")))
                 for k, f in enumerate(labelled) for s in SUBTYPES]
    rows += [(f"ID_ffffffff0_{s}", 1) for s in SUBTYPES]
    pd.DataFrame(rows, columns=["ID", "Label"]).to_csv(src / "stage_2_train.csv", index=False)
    summary = ingest_rsna(src, workers=1)
    assert (summary["images_without_label"], summary["labels_without_image"]) == (6, 1)
    assert summary["labels_without_image_rows"] == ["ID_ffffffff0"]  # named, as a partial download needs
    link = pd.read_csv(env[0] / "rsna" / "linkage.csv", dtype=str)
    scans = link.merge(load_scans("rsna")).set_index("source")
    assert scans.loc[f"ID_{0:010x}", ["ich", "sdh", "edh"]].tolist() == [1, 1, 0]
    assert scans.loc[f"ID_{1:010x}", RSNA_TASKS].isna().all()  # 4 negative images of 5: unknown
    assert scans.loc[f"ID_{2:010x}", RSNA_TASKS].isna().all()
    assert summary["unlabelled"] == 2

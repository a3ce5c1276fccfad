"""NIfTI-folder ingestion (a hospital's own data): labels mapping, RAS, bad volumes, splits, manifest."""
from __future__ import annotations

import gzip
import struct

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from fmct_lib.cli import main as fmct
from fmct_lib.data.ingest import ingest_nifti
from fmct_lib.data.preprocess import load_volume
from fmct_lib.data.manifest import dataset_info, load_scans, read_manifest


@pytest.fixture()
def env(isolated_roots):
    return isolated_roots.data, isolated_roots.manifest


def save(img, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, path)
    return path


def las_volume(seed):
    data = np.random.default_rng(seed).integers(-1000, 1000, (6, 5, 4)).astype(np.int16)
    affine = np.diag([-0.8, 0.8, 3.0, 1.0])
    return nib.Nifti1Image(data, affine)


@pytest.fixture()
def hospital(tmp_path):
    """20 patients x 2 scans of good LAS volumes, a labels CSV, and one of each kind of bad volume."""
    src = tmp_path / "hospital"
    rows = []
    for p in range(20):
        for s in range(2):
            rel = f"p{p:02d}/scan{s}.nii.gz"
            save(las_volume(10 * p + s), src / rel)
            rows.append({"file": rel, "mrn": f"MRN{p:05d}", "dx_tumor": (p + s) % 2, "dx_edema": p % 3 == 0,
                         "note": "ignored"})
    bad = src / "bad"
    good_bytes = (src / "p00/scan0.nii.gz").read_bytes()
    (bad / "truncated.nii.gz").parent.mkdir(parents=True)
    (bad / "truncated.nii.gz").write_bytes(good_bytes[: len(good_bytes) // 2])
    with pytest.raises((EOFError, OSError)):  # the fixture's own check: a real truncation, not another fault
        gzip.decompress((bad / "truncated.nii.gz").read_bytes())
    nan = np.zeros((4, 4, 4), np.float32)
    nan[1, 2, 3] = np.nan
    save(nib.Nifti1Image(nan, np.eye(4)), bad / "nan.nii.gz")
    save(nib.Nifti1Image(np.zeros((4, 4), np.int16), np.eye(4)), bad / "flat2d.nii")
    save(nib.Nifti1Image(np.zeros((4, 4, 4, 3), np.int16), np.eye(4)), bad / "series4d.nii.gz")
    for name, dy in [("zero_spacing.nii", 0.0), ("negative_spacing.nii", -1.0)]:
        # nibabel refuses to write such headers, so patch the bytes: pixdim[2] (offset 84) and,
        # for zero spacing, the sform's second row (srow_y, offset 296) as well
        raw = bytearray(save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), bad / name).read_bytes())
        raw[84:88] = struct.pack("<f", dy)
        if dy == 0:
            raw[296:312] = struct.pack("<4f", 0, 0, 0, 0)
        (bad / name).write_bytes(bytes(raw))
    labels = tmp_path / "labels.csv"
    pd.DataFrame(rows).to_csv(labels, index=False)
    return src, labels, pd.DataFrame(rows)


@pytest.mark.parametrize("name, message", [  # the loader preprocessing uses too (tests/bad_inputs/)
    ("truncated.nii.gz", "truncated or corrupt gzip"), ("nan.nii.gz", "1 NaN or infinite voxel"),
    ("flat2d.nii", r"a 2-D image \(shape \(4, 4\)\)"), ("series4d.nii.gz", "a 4-D image"),
    ("zero_spacing.nii", "must be positive"), ("negative_spacing.nii", "must be positive"),
])
def test_bad_volumes_get_clear_errors(hospital, name, message):
    src, _, _ = hospital
    with pytest.raises(ValueError, match=rf"{name}: .*{message}"):
        load_volume(src / "bad" / name)


def test_ingest_nifti_end_to_end(hospital, env):
    src, labels, table = hospital
    root, manifest = env
    known_before = read_manifest(manifest)
    assert fmct(["ingest", "nifti", "--name", "hosp", "--source", str(src), "--labels", str(labels),
                 "--path-col", "file", "--patient-col", "mrn", "--map", "dx_tumor=tumor", "--map", "dx_edema=edema",
                 "--workers", "1"]) == 0   # --map repeated: every mapping kept
    scans = load_scans("hosp")
    assert len(scans) == 40
    rejects = pd.read_csv(root / "hosp" / "rejects.csv")
    assert len(rejects) == 6 and rejects["source"].str.startswith("bad/").all()

    link = pd.read_csv(root / "hosp" / "linkage.csv", dtype=str).set_index("source")
    text = (root / "hosp" / "scans.csv").read_text()
    assert "MRN" not in text and "p00" not in text  # pseudonymous
    for rec in table.itertuples():
        row = scans.set_index("scan_id").loc[link.loc[rec.file, "scan_id"]]
        assert (row["tumor"], row["edema"]) == (rec.dx_tumor, int(rec.dx_edema))
        img = nib.load(row["path"])
        want = nib.as_closest_canonical(nib.load(src / rec.file))
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        np.testing.assert_array_equal(np.asarray(img.dataobj), np.asarray(want.dataobj))
        np.testing.assert_allclose(img.affine, want.affine)
    assert scans.groupby("patient_id")["split"].nunique().max() == 1
    assert scans["patient_id"].nunique() == 20 and set(scans["split"]) <= {"train", "val", "test"}

    after = read_manifest(manifest)
    pd.testing.assert_frame_equal(after.iloc[: len(known_before)], known_before)
    assert dataset_info("hosp", manifest)["tasks"] == ["tumor", "edema"]


def test_splits_follow_the_seed(hospital, env, tmp_path):
    src, labels, _ = hospital
    mapping = {"dx_tumor": "tumor"}

    def split_by_mrn(root, seed):
        ingest_nifti(src, name="hosp", labels=labels, mapping=mapping, path_column="file",
                     patient_column="mrn", root=root, workers=1, seed=seed)
        link = pd.read_csv(root / "hosp" / "linkage.csv", dtype=str)
        merged = link.merge(load_scans("hosp", root=root)[["scan_id", "split"]])
        return dict(zip(merged["original_patient_id"], merged["split"]))

    a, b, c = split_by_mrn(tmp_path / "a", 0), split_by_mrn(tmp_path / "b", 0), split_by_mrn(tmp_path / "c", 1)
    assert a == b and a != c
    assert len(a) == 20


def test_mapping_errors_name_the_column(hospital, env):
    src, labels, _ = hospital
    with pytest.raises(ValueError, match=r"no column 'dx_missing' \(--map dx_missing=tumor\); the file's columns are "
                                         r"'file', 'mrn', 'dx_tumor', 'dx_edema', 'note'"):
        ingest_nifti(src, name="hosp", labels=labels, mapping={"dx_missing": "tumor"}, path_column="file",
                     patient_column="mrn")


def test_ones_own_scans_cannot_take_the_name_of_a_dataset_fmct_makes_otherwise(env, tmp_path):
    """An audit ingested a NIfTI folder as ``synthetic``: the notebooks ran on it as the synthetic cohort, and a later
    ``fmct synth`` replaced its scan table. A name the shipped registry gives a dataset made by another command is
    refused before anything is written; one made by this kind of command (the paper's private cohorts) is not."""
    from fmct_lib.data.ingest import ingest_dicom, ingest_rsna
    src = tmp_path / "src"
    for p in range(4):
        save(las_volume(p), src / f"p{p}.nii.gz")
    for name, made_by in (("synthetic", "fmct synth"), ("rsna", "fmct ingest rsna"), ("cq500", "fmct ingest cq500"),
                          ("Synthetic", "fmct synth")):  # one folder with synthetic's on macOS and Windows
        with pytest.raises(ValueError, match=rf"dataset name '{name}' is taken by a dataset fmct knows, made by "
                                             rf"`{made_by}`, not `fmct ingest nifti`: .* --name {name}_nifti"):
            ingest_nifti(src, name=name, workers=1)
        assert not (env[0] / name).exists()
    with pytest.raises(ValueError, match="'cq500' is taken .* made by `fmct ingest cq500`, not `fmct ingest rsna`"):
        ingest_rsna(tmp_path / "not_read", name="cq500")
    with pytest.raises(ValueError, match="'rsna' is taken .* not `fmct ingest dicom`"):
        ingest_dicom(tmp_path / "not_read", name="rsna")
    assert ingest_nifti(src, name="nyu_langone", workers=1)["scans"] == 4  # the paper's cohort, as a site ingests it


def test_a_refused_volume_no_row_names_is_not_counted_as_kept(env, tmp_path):
    """``not_in_labels`` counts the unlisted volumes kept as unlabelled scans: an unlisted file refused (in
    rejects.csv) is not one (an audit: 3 corrupt unlisted files were reported as 4 volumes "kept")."""
    src = tmp_path / "src"
    for p in range(3):
        save(las_volume(p), src / f"p{p}.nii.gz")
    (src / "junk.nii.gz").write_bytes(b"not a volume")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,patient_id,bleed\np0.nii.gz,a,1\np1.nii.gz,b,0\n")
    summary = ingest_nifti(src, name="mine", labels=labels, mapping={"bleed": "ich"}, workers=1)
    assert summary["not_in_labels"] == 1 and summary["not_in_labels_volumes"] == ["p2.nii.gz"]
    assert list(pd.read_csv(env[0] / "mine" / "rejects.csv")["source"]) == ["junk.nii.gz"]


def test_a_volume_filed_twice_is_found_and_said(env, tmp_path, capsys):
    """An audit filed a test scan's file again under another name: it went to training as another patient's, so the
    test split held a scan trained on, and nothing said so. Identical voxels are now counted and warned about,
    across resumed runs too (the digest is kept in each volume's sidecar)."""
    from fmct_lib.cli import main
    src = tmp_path / "src"
    for p in range(20):
        save(las_volume(p), src / f"p{p:02d}.nii.gz")
    (src / "copy_of_p03.nii.gz").write_bytes((src / "p03.nii.gz").read_bytes())
    (src / "p07_moved.nii.gz").write_bytes(b"")  # a file refused is no copy of anything
    nib.save(nib.Nifti1Image(np.asanyarray(nib.load(src / "p05.nii.gz").dataobj), np.diag([-0.8, 0.8, 3.0, 1.0])
                             @ np.array([[1, 0, 0, 9], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])),
             src / "p05_shifted.nii.gz")  # the same voxels at another position: still one volume filed twice
    summary = ingest_nifti(src, name="twice", workers=1)
    groups = summary["identical_volumes_groups"]
    assert summary["identical_volumes"] == 2 and all(len(g["scan_ids"]) == 2 and g["patients"] == 2 for g in groups)
    link = pd.read_csv(env[0] / "twice" / "linkage.csv", dtype=str).set_index("source")["scan_id"]
    assert {tuple(g["scan_ids"]) for g in groups} == {tuple(sorted(link[[a, b]])) for a, b in (
        ("p03.nii.gz", "copy_of_p03.nii.gz"), ("p05.nii.gz", "p05_shifted.nii.gz"))}
    assert main(["ingest", "nifti", "--name", "twice", "--source", str(src)]) == 0  # resumed: read from sidecars
    err = capsys.readouterr().err
    assert "warning: 2 volume(s) were filed more than once, voxel for voxel (e.g. " in err
    assert "remove the copies from" in err and "give each copy its scan's patient (--patient-col)" in err
    spans = [g for g in groups if len(g["splits"]) > 1]  # the splits said are the copies' own (a review: "test" was
    assert ("copies in more than one split" in err) == bool(spans)  # said whatever they were)
    assert not spans or f"e.g. {'/'.join(spans[0]['splits'])})" in err
    assert "_voxels" not in pd.read_csv(env[0] / "twice" / "scans.csv").columns  # bookkeeping, not a column


def test_a_rerun_that_accepts_more_patients_keeps_the_earlier_split(env, tmp_path):
    """Patients split in a first run stay in their split when a later run (a scan repaired, more data) adds
    patients; only the new ones are placed."""
    src = tmp_path / "src"

    def add(patients):
        for p in patients:
            save(las_volume(p), src / f"p{p:02d}.nii.gz")

    def split_of():
        link = pd.read_csv(env[0] / "grow" / "linkage.csv", dtype=str)
        merged = link.merge(load_scans("grow")[["scan_id", "split"]])
        return dict(zip(merged["original_patient_id"], merged["split"]))

    add(range(10))
    ingest_nifti(src, name="grow", workers=1)
    first = split_of()
    add(range(10, 20))
    summary = ingest_nifti(src, name="grow", workers=1)
    second = split_of()
    assert {p: second[p] for p in first} == first
    assert pd.Series(second).value_counts().to_dict() == {"train": 16, "val": 2, "test": 2}
    assert "10 patient(s) kept" in summary["split_source"]


def test_a_bare_name_matches_only_a_file_of_its_own(env, tmp_path):
    """``scan.nii.gz`` in the CSV while siteA/ and siteB/ both hold one: refused, naming the row and both files;
    ``siteA/scan.nii.gz`` never falls back to another folder's file of that name."""
    src = tmp_path / "src"
    for site in ("siteA", "siteB"):
        save(las_volume(0), src / site / "scan.nii.gz")
    labels = tmp_path / "labels.csv"
    labels.write_text("path,patient_id,bleed\nother.nii.gz,patZ,0\nscan.nii.gz,patA,1\n")
    with pytest.raises(ValueError, match=r"row 3: 'scan.nii.gz' names 2 files below the source: "
                                         r"siteA/scan.nii.gz, siteB/scan.nii.gz") as err:
        ingest_nifti(src, name="mine", labels=labels, mapping={"bleed": "ich"}, workers=1)
    assert str(labels) in str(err.value)

    labels.write_text("path,patient_id,bleed\nsiteC/scan.nii.gz,patC,1\nsiteA/scan.nii.gz,patA,0\n")
    summary = ingest_nifti(src, name="mine", labels=labels, mapping={"bleed": "ich"}, workers=1)
    assert (summary["not_in_labels"], summary["labels_without_volume"]) == (1, 1)
    assert summary["labels_without_volume_rows"] == ["row 2: siteC/scan.nii.gz"]
    link = pd.read_csv(env[0] / "mine" / "linkage.csv", dtype=str).merge(load_scans("mine"))
    assert dict(zip(link["source"], link["original_patient_id"])) == {"siteA/scan.nii.gz": "patA",
                                                                      "siteB/scan.nii.gz": "siteB/scan.nii.gz"}
    assert link.set_index("source")["ich"].isna().to_dict() == {"siteA/scan.nii.gz": False,
                                                                "siteB/scan.nii.gz": True}

    (src / "siteB" / "scan.nii.gz").rename(src / "siteB" / "unique.nii.gz")
    labels.write_text("path,patient_id,bleed\nsiteA/scan.nii.gz,patA,0\nunique.nii.gz,patB,1\n")
    summary = ingest_nifti(src, name="mine2", labels=labels, mapping={"bleed": "ich"}, workers=1)
    assert (summary["not_in_labels"], summary["labels_without_volume"]) == (0, 0)


def test_a_row_nearly_naming_several_volumes_is_unmatched_and_names_them(env, tmp_path):
    """``scan.nii`` while siteA/ and siteB/ each hold a ``scan.nii.gz`` no row names: no one near match to point
    to, so the row is unmatched as before (not refused), its near volumes named."""
    src = tmp_path / "src"
    for rel in ("siteA/scan.nii.gz", "siteB/scan.nii.gz", "siteA/other.nii.gz"):
        save(las_volume(0), src / rel)
    labels = tmp_path / "labels.csv"
    labels.write_text("path,patient_id,bleed\nsiteA/other.nii.gz,patO,0\nscan.nii,patS,1\n")
    summary = ingest_nifti(src, name="twice", labels=labels, mapping={"bleed": "ich"}, workers=1)
    assert summary["labels_without_volume_rows"] == [
        "row 3: scan.nii (nearly names 2 volumes no row names: siteA/scan.nii.gz, siteB/scan.nii.gz)"]
    assert summary["not_in_labels"] == 2


def test_symlinked_folders_are_followed_once_and_hidden_files_left_out(env, tmp_path):
    """A cohort linked together from an archive (a folder link, and a loop back to the source) ingests every
    volume once; macOS's ``._scan.nii.gz`` (AppleDouble metadata, not a volume) is no rejection."""
    archive, src = tmp_path / "archive", tmp_path / "cohort"
    save(las_volume(1), archive / "siteA" / "scan.nii.gz")
    save(las_volume(2), src / "siteB" / "scan.nii.gz")
    (src / "siteB" / "._scan.nii.gz").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    (src / "siteA").symlink_to(archive / "siteA", target_is_directory=True)
    (src / "again").symlink_to(src, target_is_directory=True)
    summary = ingest_nifti(src, name="linked", workers=1)
    assert (summary["scans"], summary["rejects"]) == (2, 0)
    sources = pd.read_csv(env[0] / "linked" / "linkage.csv", dtype=str)["source"]
    assert sorted(sources) == ["siteA/scan.nii.gz", "siteB/scan.nii.gz"]


def test_a_dataset_ingested_under_another_root_is_registered_in_that_root(tmp_path, monkeypatch):
    """`--root B` with $FMCT_DATA=A (no $FMCT_MANIFEST, as a user has it): B's registry lists the dataset, so
    pointing $FMCT_DATA at B (for `fmct cache`, the notebooks) finds it; A's registry is not touched."""
    from _support import tiny_nifti_folder
    labels = tiny_nifti_folder(tmp_path / "export", n_patients=2)
    a, b = tmp_path / "A", tmp_path / "B"
    monkeypatch.delenv("FMCT_MANIFEST", raising=False)
    monkeypatch.setenv("FMCT_DATA", str(a))
    assert fmct(["ingest", "nifti", "--name", "rooted", "--source", str(labels.parent / "volumes"),
                 "--labels", str(labels), "--map", "ich=ich", "--root", str(b), "--workers", "1"]) == 0
    assert (b / "datasets.csv").exists() and not (a / "datasets.csv").exists()
    monkeypatch.setenv("FMCT_DATA", str(b))
    assert dataset_info("rooted")["tasks"] == ["ich"]
    assert len(load_scans("rooted")) == 4


def test_windows_and_absolute_paths_in_the_labels_match_and_a_csv_matching_nothing_is_refused(env, tmp_path):
    """A spreadsheet's ``siteA\\scan.nii.gz`` and an absolute path below the source match their volumes; a CSV
    none of whose rows names a volume stops before anything is written, naming its rows and the volumes."""
    src = tmp_path / "src"
    for site in ("siteA", "siteB"):
        save(las_volume(0), src / site / "scan.nii.gz")
    labels = tmp_path / "labels.csv"
    labels.write_text(f"path,patient_id,bleed\nsiteA\\scan.nii.gz,patA,0\n{src / 'siteB' / 'scan.nii.gz'},patB,1\n")
    summary = ingest_nifti(src, name="mine", labels=labels, mapping={"bleed": "ich"}, workers=1)
    assert (summary["not_in_labels"], summary["labels_without_volume"]) == (0, 0)
    link = pd.read_csv(env[0] / "mine" / "linkage.csv", dtype=str).merge(load_scans("mine"))
    assert dict(zip(link["source"], link["original_patient_id"])) == {"siteA/scan.nii.gz": "patA",
                                                                      "siteB/scan.nii.gz": "patB"}

    labels.write_text("path,patient_id,bleed\nexport/a.nii.gz,patA,0\nexport/b.nii.gz,patB,1\n")
    with pytest.raises(ValueError, match=r"none of its 2 rows names a volume below .*row 2: export/a.nii.gz; "
                                         r"row 3: export/b.nii.gz; below it are e.g. siteA/scan.nii.gz"):
        ingest_nifti(src, name="nothing", labels=labels, mapping={"bleed": "ich"}, workers=1)
    assert not (env[0] / "nothing").exists()
    assert fmct(["ingest", "nifti", "--name", "nothing", "--source", str(src), "--labels", str(labels),
                 "--map", "bleed=ich", "--workers", "1"]) == 2


def test_a_source_exported_again_is_read_again_and_scans_no_longer_there_are_reported(env, tmp_path, capsys):
    """A re-run reads a volume whose file changed since (a repaired scan), not its old copy; scans of the
    earlier scans.csv that the source no longer holds leave the table, counted, named and said on stderr."""
    import os
    src = tmp_path / "src"
    for p in range(3):
        save(las_volume(p), src / f"p{p}.nii.gz")
    ingest_nifti(src, name="again", workers=1)

    def shapes():
        table = load_scans("again")
        return {s: nib.load(env[0] / "again" / p).shape for s, p in zip(table["scan_id"], table["path"])}

    before = shapes()
    assert set(before.values()) == {(6, 5, 4)}

    repaired = nib.Nifti1Image(np.random.default_rng(9).integers(-1000, 1000, (6, 5, 9)).astype(np.int16),
                               np.diag([-0.8, 0.8, 3.0, 1.0]))
    save(repaired, src / "p0.nii.gz")
    stat = (src / "p0.nii.gz").stat()
    os.utime(src / "p0.nii.gz", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # a later export
    (src / "p2.nii.gz").unlink()
    assert fmct(["ingest", "nifti", "--name", "again", "--source", str(src), "--workers", "1"]) == 0
    after = shapes()
    assert sorted(after.values()) == [(6, 5, 4), (6, 5, 9)]     # p0 read again (RAS: its 9 slices), p1 kept
    gone = sorted(set(before) - set(after))
    assert len(gone) == 1
    err = capsys.readouterr().err
    assert f"1 scan(s) of the earlier scans.csv are not in this run's and left the table (e.g. {gone[0]};" in err
    assert f"no longer in {src}" in err
    summary = ingest_nifti(src, name="again", workers=1)      # nothing changed since: nothing dropped, nothing read
    assert (summary["dropped"], summary["dropped_scan_ids"]) == (0, [])


def test_ingesting_again_with_other_label_columns_registers_them(tmp_path, monkeypatch):
    """First without labels, then with `--map bleed=ich`: the registry names `ich`, as the scan table does (it
    kept the first run's empty task list); the shipped data_manifest.csv is never written."""
    from _support import tiny_nifti_folder
    from fmct_lib.paths import manifest_path
    from fmct_lib.data.manifest import paper_tasks
    labels = tiny_nifti_folder(tmp_path / "export", n_patients=2)
    monkeypatch.delenv("FMCT_MANIFEST", raising=False)
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    shipped = manifest_path().read_bytes()
    volumes = str(labels.parent / "volumes")
    assert fmct(["ingest", "nifti", "--name", "later", "--source", volumes, "--workers", "1"]) == 0
    assert dataset_info("later")["tasks"] == []
    assert fmct(["ingest", "nifti", "--name", "later", "--source", volumes, "--labels", str(labels),
                 "--map", "ich=ich", "--workers", "1"]) == 0
    assert dataset_info("later")["tasks"] == ["ich"] and "ich" in load_scans("later").columns
    assert paper_tasks("later") == ["ich"]
    assert manifest_path().read_bytes() == shipped


def test_meta_given_in_a_later_run_fills_the_table_without_reading_the_volumes_again(hospital, env, tmp_path):
    """The hospital's export ingested first without its acquisition columns, then with ``--meta``: the resumed
    run (volumes not read again) sets manufacturer and kVp from the CSV; a run without ``--meta`` clears them."""
    src, _, table = hospital
    root, _ = env
    labels = tmp_path / "with_meta.csv"
    table.assign(vendor=["TOSHIBA" if i % 2 else "Philips" for i in range(len(table))],
                 kv=[120 if i % 3 else "" for i in range(len(table))]).to_csv(labels, index=False)
    base = ["ingest", "nifti", "--name", "hosp", "--source", str(src), "--labels", str(labels), "--path-col", "file",
            "--patient-col", "mrn", "--map", "dx_tumor=tumor", "--workers", "1"]
    assert fmct(base) == 0
    written = {p: p.stat().st_mtime_ns for p in (root / "hosp" / "volumes").glob("*.nii.gz")}
    assert fmct([*base, "--meta", "manufacturer=vendor", "kvp=kv"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (root / "hosp" / "volumes").glob("*.nii.gz")} == written
    scans = pd.read_csv(root / "hosp" / "linkage.csv", dtype=str).merge(load_scans("hosp")).set_index("source")
    assert list(load_scans("hosp").columns[:8]) == ["scan_id", "patient_id", "path", "split", "manufacturer",
                                                   "slice_thickness_mm", "spacing", "kvp"]
    assert scans.loc["p00/scan0.nii.gz", "manufacturer"] == "Philips"
    assert scans.loc["p00/scan1.nii.gz", "manufacturer"] == "TOSHIBA"
    assert pd.isna(scans.loc["p00/scan0.nii.gz", "kvp"]) and scans.loc["p00/scan1.nii.gz", "kvp"] == 120
    assert (scans["slice_thickness_mm"] == 3.0).all()   # not given: the z-spacing, as before
    assert fmct(base) == 0
    assert "kvp" not in load_scans("hosp").columns and load_scans("hosp")["manufacturer"].isna().all()


def test_a_second_ingestion_of_a_dataset_being_ingested_is_refused_at_once(env, tmp_path, capsys, monkeypatch):
    """Two ingestions of one name at once read every scan twice and the last ``scans.csv`` written held only its own
    view: the second is refused at once, naming the holder, and writes nothing; once the first is done the name is
    ingested as before, and a finished dataset is read while another ingestion holds the lock."""
    import os

    from fmct_lib.io import exclusive_lock
    src = tmp_path / "src"
    for p in range(2):
        save(las_volume(p), src / f"p{p}.nii.gz")
    dataset, lock = env[0] / "busy", env[0] / ".locks" / "busy.lock"
    with exclusive_lock(lock, what="another ingestion"):
        assert fmct(["ingest", "nifti", "--name", "busy", "--source", str(src), "--workers", "1"]) == 2
        err = capsys.readouterr().err
        assert f"dataset busy ({dataset}) is in use by another process (pid {os.getpid()} on host " in err
        assert len(err.strip().splitlines()) == 1
        assert not dataset.exists()
        assert "busy" not in set(read_manifest(env[1])["name"])
        # every ingester takes the lock first, before reading (indexing RSNA's headers is its longest part)
        from fmct_lib.data.ingest import ingest_cq500, ingest_dicom, ingest_rsna
        from fmct_lib.io import LockBusy
        for ingest in (ingest_rsna, ingest_cq500, ingest_dicom, ingest_nifti):
            with pytest.raises(LockBusy, match=r"dataset busy \("):
                ingest(tmp_path / "nowhere", name="busy")
    monkeypatch.setenv("HOME", str(tmp_path))
    summary = ingest_nifti("~/src", name="busy", workers=1)  # ~ is the home folder
    assert summary["scans"] == 2 and not lock.with_name("busy.lock.holder.json").exists()
    with exclusive_lock(lock, what="another ingestion"):
        assert len(load_scans("busy")) == 2

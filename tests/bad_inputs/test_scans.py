"""Bad scans, built at test time (NIfTI and DICOM), through the loader and through ingestion (issue 25).

Each case ends one way, and the same way wherever the scan is read: accepted, repaired with its reason,
flagged (``flags`` in ``scans.csv``) or refused with a message naming the file (``rejects.csv``; the
loader's ``PreprocessError``). ``docs/data_safety.md`` lists the cases; nothing here is a binary fixture.
Two batches (a NIfTI folder, a CQ500 tree) mix the bad scans with good ones: the command exits 0, keeps
every good scan and records every bad one, and the cache then refuses none of what ingestion accepted.
"""
from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pydicom
import pytest

from fmct_lib.cli import main as fmct
from fmct_lib.data.dicom import DicomSeriesError, read_dicom_series
from fmct_lib.data.dicom_write import cq500_series_folder, write_dicom_series
from fmct_lib.data.ingest.cq500 import READS_FINDINGS
from fmct_lib.data.preprocess import PreprocessError, PreprocessSpec, load_volume
from fmct_lib.paths import REPO_ROOT

STEP = 5.0                                   # mm: a whole head in a small array
AFFINE = np.diag([STEP, STEP, STEP, 1.0])
SMALL_SPEC = PreprocessSpec(name="paper", spacing=STEP, canvas=48, eval_crop=40, input_size=16)


def head(shape=(40, 44, 28), seed=0) -> np.ndarray:
    """A head CT in HU: air (-1000), a 1200 HU skull, 35 HU brain, noise; 200 x 220 x 140 mm."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[(np.arange(n) + 0.5) * STEP - n * STEP / 2 for n in shape], indexing="ij")
    r = np.sqrt(sum((x / a) ** 2 for x, a in zip(grid, (80.0, 95.0, 62.0))))
    hu = np.where(r < 0.9, 35.0, np.where(r < 1, 1200.0, -1000.0)) + rng.normal(0, 5, shape)
    return np.clip(np.rint(hu), -1024, 3000).astype(np.float32)


def save_nifti(path: Path, data, affine=AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), affine), path)
    return path


def rewrite(files, **tags) -> None:
    """Set DICOM attributes in place on every file (per-file values as callables of the index)."""
    for k, f in enumerate(files):
        ds = pydicom.dcmread(f)
        for key, value in tags.items():
            setattr(ds, key, value(k, ds) if callable(value) else value)
        ds.save_as(f)


def outcome_tables(dataset_dir: Path):
    """(flags by source, reject reason by source) of an ingested dataset."""
    scans = pd.read_csv(dataset_dir / "scans.csv", dtype=str, keep_default_na=False)
    link = pd.read_csv(dataset_dir / "linkage.csv", dtype=str, keep_default_na=False)
    rows = link.merge(scans, on=["scan_id", "patient_id"])
    flags = {r.source: set(filter(None, r.flags.split(";"))) for r in rows.itertuples()}
    rejects = pd.read_csv(dataset_dir / "rejects.csv", dtype=str, keep_default_na=False)
    return flags, dict(zip(rejects["source"], rejects["reason"]))


# ------------------------------------------------------------------------------------- NIfTI cases

def _sheared():
    a = AFFINE.copy()
    a[0, 2] = 0.3 * STEP  # x moves with z: a sheared grid
    return head(), a


def _skull_stripped():
    hu = head()
    return np.where((hu > -500) & (hu < 500), hu, 0.0).astype(np.float32), AFFINE


def _dense_centre():
    hu = head()
    return np.where((hu > 0) & (hu < 500), hu + 250, hu), AFFINE  # "brain" at 285 HU


# name -> (data, affine) or None for an empty file; expected: ("accepted", flags) or ("refused", message)
NIFTI_CASES = {
    "good.nii.gz": (lambda: (head(), AFFINE), ("accepted", set())),
    "good_las.nii.gz": (lambda: (head(seed=1)[::-1], np.diag([-STEP, STEP, STEP, 1.0])), ("accepted", set())),
    "offset.nii.gz": (lambda: ((head() + 1024).astype(np.int16), AFFINE), ("accepted", {"hu_offset_repaired"})),
    "sheared.nii.gz": (_sheared, ("accepted", {"sheared_affine"})),
    "partial.nii.gz": (lambda: (head()[..., 10:16], AFFINE), ("accepted", {"partial_coverage"})),
    "skull_stripped.nii.gz": (_skull_stripped, ("accepted", {"hu_no_air"})),
    "dense_centre.nii.gz": (_dense_centre, ("accepted", {"hu_brain_implausible"})),
    "single_slice.nii.gz": (lambda: (head()[..., 14:15], AFFINE), ("refused", r"2-D image \(shape \(40, 44, 1\)\)")),
    "empty.nii.gz": (None, ("refused", "empty file")),
    "all_air.nii.gz": (lambda: (np.full((40, 44, 28), -1000, np.int16), AFFINE), ("refused", "no voxel above -800")),
    "metres.nii.gz": (lambda: (head(), np.diag([0.005, 0.005, 0.005, 1.0])), ("refused", "spacing")),
    "raw_unsigned.nii.gz": (lambda: (head() + 32768, AFFINE), ("refused", "not a volume in HU")),
    "scaled_0_1.nii.gz": (lambda: ((head() + 1024) / 4024, AFFINE), ("refused", r"not in HU \(scaled to \[0, 1\]")),
    "z_scored.nii.gz": (lambda: ((head() - head().mean()) / head().std(), AFFINE), ("refused", "span only")),
    "nan.nii.gz": (lambda: (np.where(np.arange(28) == 3, np.nan, head()).astype(np.float32), AFFINE),
                   ("refused", "NaN")),
}


@pytest.fixture(scope="module")
def nifti_batch(tmp_path_factory):
    """Every NIfTI case in one folder, ingested once through the command line."""
    base = tmp_path_factory.mktemp("nifti_batch")
    src, root = base / "src", base / "data"
    for name, (build, _) in NIFTI_CASES.items():
        if build is None:
            (src / name).parent.mkdir(parents=True, exist_ok=True)
            (src / name).write_bytes(b"")
        else:
            save_nifti(src / name, *build())
    with contextlib.redirect_stderr(io.StringIO()) as err:
        code = fmct(["ingest", "nifti", "--name", "badnifti", "--source", str(src), "--root", str(root),
                     "--workers", "1"])
    return src, root, code, err.getvalue()


def test_nifti_batch_exits_0_keeps_every_good_scan_and_records_every_bad_one(nifti_batch):
    src, root, code, stderr = nifti_batch
    assert code == 0
    flags, rejects = outcome_tables(root / "badnifti")
    accepted = {n for n, (_, (kind, _)) in NIFTI_CASES.items() if kind == "accepted"}
    assert set(flags) == accepted
    assert set(rejects) == set(NIFTI_CASES) - accepted
    for name, reason in rejects.items():
        assert str(src / name) in reason  # names the file
    assert f"{len(rejects)} refused" in stderr and "rejects.csv" in stderr  # said, not only written
    assert f"{sum(bool(f) for f in flags.values())} of {len(flags)} scans repaired or flagged" in stderr


@pytest.mark.parametrize("name", sorted(NIFTI_CASES))
def test_nifti_case_ends_the_same_in_the_loader_and_in_ingestion(nifti_batch, name):
    src, root, _, _ = nifti_batch
    kind, expected = NIFTI_CASES[name][1]
    flags, rejects = outcome_tables(root / "badnifti")
    if kind == "refused":
        with pytest.raises(PreprocessError, match=expected) as err:
            load_volume(src / name)
        assert str(src / name) in str(err.value)
        assert rejects[name] == str(err.value)  # one loader: the same message in rejects.csv
    else:
        from fmct_lib.data.preprocess import load_checked
        assert set(load_checked(src / name).flags) == flags[name] == expected


def test_hu_offset_is_repaired_to_air_and_brain(nifti_batch):
    src, root, _, _ = nifti_batch
    with pytest.warns(UserWarning, match=r"offset\.nii\.gz: .*HU \+ 1024"):
        hu, _ = load_volume(src / "offset.nii.gz")
    np.testing.assert_array_equal(hu, head())
    scans = pd.read_csv(root / "badnifti" / "scans.csv", dtype=str, keep_default_na=False)
    link = pd.read_csv(root / "badnifti" / "linkage.csv", dtype=str).set_index("source")
    row = scans.set_index("scan_id").loc[link.loc["offset.nii.gz", "scan_id"]]
    stored = np.asarray(nib.load(root / "badnifti" / row["path"]).dataobj)
    np.testing.assert_array_equal(stored, head())  # air -1000, brain 35, as written before the offset


def test_skull_stripped_volume_is_not_mistaken_for_an_offset(nifti_batch):
    src, _, _, _ = nifti_batch
    hu, _ = load_volume(src / "skull_stripped.nii.gz")
    np.testing.assert_array_equal(hu, _skull_stripped()[0])


def test_the_cache_refuses_nothing_ingestion_accepted(nifti_batch, tmp_path):
    from fmct_lib.data.cache import build_cache, read_rejects
    _, root, _, _ = nifti_batch
    build_cache("badnifti", SMALL_SPEC, root=tmp_path / "cache", data_root=root, workers=1)
    assert read_rejects("badnifti", SMALL_SPEC, root=tmp_path / "cache").empty


def test_loader_thresholds_match_the_canvas():
    from fmct_lib.data.checks import HEAD_MIN_HU
    from fmct_lib.data.preprocess import HEAD_HU
    assert HEAD_MIN_HU == HEAD_HU  # a scan the loader accepts has a head the canvas can centre on


# ------------------------------------------------------------------------------------- DICOM cases

def _two_orientations(src, patient, desc):
    """6 axial slices and 5 slices at 25 degrees, all in one series."""
    hu = head()
    files = write_dicom_series(hu[..., 4:10], AFFINE, src, flavour="cq500", patient_id=patient,
                               series_description=desc)
    tilted = write_dicom_series(hu[..., 14:19], AFFINE, src.parent / "tmp_tilted", flavour="cq500",
                                patient_id=patient, series_description=desc, tilt_deg=25.0)
    ds0 = pydicom.dcmread(files[0])
    for k, f in enumerate(tilted):
        ds = pydicom.dcmread(f)
        ds.StudyInstanceUID, ds.SeriesInstanceUID = ds0.StudyInstanceUID, ds0.SeriesInstanceUID
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[patient, "tilted", str(k)])
        ds.save_as(files[0].parent / f"TILT{k:03d}.dcm")
    shutil.rmtree(src.parent / "tmp_tilted")
    return files


def _offset(src, patient, desc):
    files = write_dicom_series(head(), AFFINE, src, flavour="cq500", patient_id=patient, series_description=desc,
                               bits_stored=16)
    rewrite(files, RescaleIntercept="0", PixelRepresentation=0)  # raw HU + 1024 kept as HU
    return files


def _offset_12bit(src, patient, desc):
    files = write_dicom_series(head(), AFFINE, src, flavour="cq500", patient_id=patient, series_description=desc,
                               bits_stored=12)
    rewrite(files, RescaleIntercept="0")  # looks like the RSNA quirk, but the values are HU + 1024
    return files


def _zero_spacing(src, patient, desc):
    files = write_dicom_series(head(), AFFINE, src, flavour="cq500", patient_id=patient, series_description=desc)
    rewrite(files, PixelSpacing=["0", "5"])
    return files


def _no_spacing(src, patient, desc):
    files = write_dicom_series(head(), AFFINE, src, flavour="cq500", patient_id=patient, series_description=desc)
    for f in files:
        ds = pydicom.dcmread(f)
        del ds.PixelSpacing
        ds.save_as(f)
    return files


def _uneven(src, patient, desc):
    files = write_dicom_series(head(), AFFINE, src, flavour="cq500", patient_id=patient, series_description=desc)
    # slices 10.. move 2 mm up: one step of 7 mm among 5 mm steps (less than a gap)
    rewrite(files, ImagePositionPatient=lambda k, ds: [float(v) + (2.0 * (i == 2) if k >= 10 else 0.0)
                                                       for i, v in enumerate(ds.ImagePositionPatient)])
    return files


def _one_position(src, patient, desc):
    files = write_dicom_series(head()[..., :6], AFFINE, src, flavour="cq500", patient_id=patient,
                               series_description=desc)
    first = list(pydicom.dcmread(files[0]).ImagePositionPatient)
    rewrite(files, ImagePositionPatient=first)
    return files


def _empty(src, patient, desc):
    (src / cq500_series_folder(patient, desc)).mkdir(parents=True)
    return []


def _plain(**kw):
    return lambda src, patient, desc: write_dicom_series(head(seed=len(desc)), AFFINE, src, flavour="cq500",
                                                         patient_id=patient, series_description=desc, **kw)


# description -> (writer, expected); one patient per series
DICOM_CASES = {
    "Plain": (_plain(), ("accepted", set())),
    "Plain RSNA quirk": (_plain(wrong_intercept=True), ("accepted", {"rsna_intercept_repaired"})),
    "Offset": (_offset, ("accepted", {"hu_offset_repaired"})),
    "Uneven": (_uneven, ("accepted", {"uneven_spacing"})),
    "Tilted": (_plain(tilt_deg=15.0), ("accepted", {"gantry_tilt"})),
    "Gap": (_plain(drop_slices=(12,)), ("accepted", {"slice_gap"})),
    "Scout": (_plain(add_localizer=True), ("accepted", set())),
    "Corrupt slice": (_plain(corrupt_slices=(5,)), ("accepted", {"slices_skipped", "slice_gap"})),
    "Two orientations": (_two_orientations, ("refused", r"6 slices axial and 5 slices at 25° from axial")),
    "Zero spacing": (_zero_spacing, ("refused", r"CT000000\.dcm: PixelSpacing \(0, 5\)")),
    "No spacing": (_no_spacing, ("refused", r"CT000000\.dcm: no PixelSpacing")),
    "One position": (_one_position, ("refused", "all 6 slices share one position")),
    "Offset 12 bit": (_offset_12bit, ("refused", r"HU \+ 1024.*not the known storage error")),
    "Empty": (_empty, ("refused", "empty folder")),
}


@pytest.fixture(scope="module")
def cq500_batch(tmp_path_factory):
    """Every DICOM case as a CQ500 series (one patient each), plus reads.csv, ingested once."""
    base = tmp_path_factory.mktemp("cq500_batch")
    src, root = base / "src", base / "data"
    folders = {}
    for n, (desc, (write, _)) in enumerate(DICOM_CASES.items(), start=1):
        patient = f"CQ500-CT-{n}"
        write(src / "qct01", patient, desc)
        folders[desc] = src / "qct01" / cq500_series_folder(patient, desc)
    header = ["name", "Category"] + [f"R{r}:{f}" for r in (1, 2, 3) for f in READS_FINDINGS]
    rows = [[f"CQ500-CT-{n}", "B1", *[0] * (3 * len(READS_FINDINGS))] for n in range(1, len(DICOM_CASES) + 1)]
    pd.DataFrame(rows, columns=header).to_csv(src / "reads.csv", index=False)
    code = fmct(["ingest", "cq500", "--source", str(src), "--root", str(root), "--name", "badcq", "--workers", "1"])
    return src, root, folders, code


def test_cq500_batch_exits_0_keeps_every_good_series_and_records_every_bad_one(cq500_batch):
    src, root, folders, code = cq500_batch
    assert code == 0
    flags, rejects = outcome_tables(root / "badcq")
    source = {desc: str(folder.relative_to(src)) for desc, folder in folders.items()}
    for desc, (_, (kind, expected)) in DICOM_CASES.items():
        if kind == "accepted":
            assert flags[source[desc]] == expected, desc
        else:
            reason = rejects[source[desc]]
            assert str(folders[desc]) in reason and re.search(expected, reason), (desc, reason)
    assert len(flags) == sum(kind == "accepted" for _, (kind, _) in DICOM_CASES.values())
    corrupt = sorted(folders["Corrupt slice"].iterdir())[5]  # skipped, and said so by its own row
    assert rejects[str(corrupt)].startswith("slice skipped: undecodable pixel data")


@pytest.mark.parametrize("desc", [d for d, (_, (kind, _)) in DICOM_CASES.items() if kind == "refused"])
def test_dicom_refusal_names_the_series_and_the_problem(cq500_batch, desc):
    _, _, folders, _ = cq500_batch
    with pytest.raises(PreprocessError, match=DICOM_CASES[desc][1][1]) as err:
        load_volume(folders[desc])
    assert str(folders[desc]) in str(err.value)


def test_two_orientations_are_refused_by_the_reader_not_half_kept(cq500_batch):
    _, _, folders, _ = cq500_batch
    with pytest.raises(DicomSeriesError, match=r"2 orientations in one series: 6 slices axial and 5 slices at "
                                               r"25° from axial"):
        read_dicom_series(folders["Two orientations"])


def test_zero_pixel_spacing_is_a_clear_refusal(cq500_batch):
    _, _, folders, _ = cq500_batch
    with pytest.raises(DicomSeriesError, match=r"CT000000\.dcm: PixelSpacing \(0, 5\) mm must be positive"):
        read_dicom_series(folders["Zero spacing"])


def test_dicom_hu_offset_is_repaired_and_the_rsna_quirk_still_is(cq500_batch):
    _, _, folders, _ = cq500_batch
    with pytest.warns(UserWarning, match="HU \\+ 1024"):
        hu, _ = load_volume(folders["Offset"])
    np.testing.assert_array_equal(hu, head())  # air -1000, brain 35, skull 1200 again
    with pytest.warns(UserWarning, match="rsna_intercept_repaired"):
        hu, _ = load_volume(folders["Plain RSNA quirk"])
    np.testing.assert_array_equal(hu, np.clip(head(seed=len("Plain RSNA quirk")), -1000, 3095))


def test_a_single_scout_is_still_a_localizer(cq500_batch, tmp_path):
    _, _, folders, _ = cq500_batch
    scout = shutil.copytree(folders["Scout"], tmp_path / "scout")
    for f in scout.iterdir():  # without ImageType, as in RSNA files
        ds = pydicom.dcmread(f)
        del ds.ImageType
        ds.save_as(f)
    vol = read_dicom_series(scout)
    assert vol.meta["n_localizers_dropped"] == 1 and vol.meta["n_slices"] == 28


def test_the_cache_refuses_no_series_ingestion_accepted(cq500_batch, tmp_path):
    from fmct_lib.data.cache import build_cache, read_rejects
    _, root, _, _ = cq500_batch
    build_cache("badcq", SMALL_SPEC, root=tmp_path / "cache", data_root=root, workers=1)
    assert read_rejects("badcq", SMALL_SPEC, root=tmp_path / "cache").empty


# ------------------------------------------------------------------------------- the command line

@pytest.mark.parametrize("kind", ["rsna", "cq500", "nifti"])
@pytest.mark.parametrize("state", ["missing", "empty"])
def test_missing_or_empty_source_is_one_line_and_a_non_zero_exit(tmp_path, capsys, kind, state):
    source = tmp_path / "source"
    if state == "empty":
        source.mkdir()
    extra = ["--name", "mine"] if kind == "nifti" else []
    code = fmct(["ingest", kind, "--source", str(source), "--root", str(tmp_path / "data"), *extra])
    err = capsys.readouterr().err
    assert code != 0
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err and str(source) in err


# ------------------------------------------------------------------------------------- the document

def test_data_safety_doc_lists_every_outcome():
    from fmct_lib.data.checks import FLAGS
    text = (REPO_ROOT / "docs" / "data_safety.md").read_text()
    missing = [name for name in FLAGS if f"`{name}`" not in text]
    assert not missing, f"docs/data_safety.md does not list {missing}"
    for word in ["rejects.csv", "linkage.csv", ".pseudonym_key", "## Paths, locks, checkpoints and splits"]:
        assert word in text

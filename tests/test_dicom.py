"""DICOM series reader and writer: round trips, geometry, the RSNA/CQ500 quirks, real slices, bad input."""
from __future__ import annotations

import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from scipy import ndimage

from fmct_lib.data.dicom import DicomSeriesError, group_series, read_dicom_series
from fmct_lib.data.dicom_write import write_dicom_series


def phantom(shape=(32, 32, 6), seed=0):
    """Integer HU in [-1000, 2000] and an affine with a flipped x axis (LAS) and an offset."""
    hu = np.random.default_rng(seed).integers(-1000, 2000, shape).astype(np.float32)
    affine = np.diag([-0.5, 0.6, 2.0, 1.0])
    affine[:3, 3] = [10.0, -20.0, 30.0]
    return hu, affine


def canonical(hu, affine):
    img = nib.as_closest_canonical(nib.Nifti1Image(hu, affine))
    return np.asarray(img.dataobj), img.affine


@pytest.mark.parametrize("flavour, kwargs", [
    ("rsna", {}), ("rsna", {"bits_stored": 12}), ("rsna", {"multivalued_window": True}),
    ("cq500", {}), ("cq500", {"j2k": True}), ("cq500", {"jpeg_lossless": True}),
])
def test_round_trip_is_exact_in_ras(tmp_path, flavour, kwargs):
    hu, affine = phantom()
    if kwargs.get("bits_stored") == 12:
        hu = np.clip(hu, -1024, 3071)
    patient = "CQ500-CT-1" if flavour == "cq500" else None
    files = write_dicom_series(hu, affine, tmp_path, flavour=flavour, patient_id=patient, **kwargs)
    vol = read_dicom_series(files)
    want_hu, want_affine = canonical(hu, affine)  # nibabel's reorientation, independent of the reader
    assert vol.hu.dtype == np.float32
    np.testing.assert_array_equal(vol.hu, want_hu)
    np.testing.assert_allclose(vol.affine, want_affine, atol=1e-5)
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    assert vol.meta["n_slices"] == 6 and not vol.meta["has_gap"] and vol.meta["tilt_deg"] == 0
    if kwargs.get("j2k"):
        assert vol.meta["transfer_syntax"] == pydicom.uid.JPEG2000Lossless
    if kwargs.get("jpeg_lossless"):  # what many PACS exports use: decoded by GDCM (python-gdcm, a dependency)
        assert vol.meta["transfer_syntax"] == pydicom.uid.JPEGLosslessSV1
    if kwargs.get("multivalued_window"):
        assert vol.meta["window_center"] == 36.0


def test_rsna_layout_has_only_rsna_elements(tmp_path):
    hu, affine = phantom()
    files = write_dicom_series(hu, affine, tmp_path, flavour="rsna", patient_id="ID_00aa11bb")
    assert all(f.parent == tmp_path and f.name.startswith("ID_") and len(f.stem) == 12 for f in files)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(files[0])
        assert ds.SOPInstanceUID == files[0].stem and ds.PatientID == "ID_00aa11bb"
        for absent in ["SliceThickness", "InstanceNumber", "SliceLocation", "Manufacturer", "KVP", "ImageType"]:
            assert absent not in ds
    vol = read_dicom_series(tmp_path)
    assert vol.meta["slice_thickness_mm"] == pytest.approx(2.0)  # from IPP along the normal


def test_wrong_intercept_is_repaired(tmp_path):
    hu, affine = phantom()
    files = write_dicom_series(hu, affine, tmp_path, wrong_intercept=True)
    ds = pydicom.dcmread(files[0])
    assert (ds.BitsStored, ds.PixelRepresentation, float(ds.RescaleIntercept)) == (12, 0, 0.0)
    naive = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert naive.max() > 3000  # air/bone wrapped: a naive rescale is wrong
    vol = read_dicom_series(files)
    np.testing.assert_array_equal(vol.hu, canonical(np.clip(hu, -1000, 3095), affine)[0])


def test_known_lps_point_lands_on_its_voxel(tmp_path):
    """Pixel (row i, column j) of a file sits at IPP + j*dc*row_dir + i*dr*col_dir (LPS); in RAS the
    reader's affine must map that world point to the voxel holding the same HU."""
    hu, affine = phantom(seed=3)
    files = write_dicom_series(hu, affine, tmp_path, flavour="cq500", patient_id="CQ500-CT-2")
    vol = read_dicom_series(tmp_path)
    ds = pydicom.dcmread(files[4])
    i, j = 7, 21
    iop = np.array(ds.ImageOrientationPatient, float)
    dr, dc = map(float, ds.PixelSpacing)
    lps = np.array(ds.ImagePositionPatient, float) + j * dc * iop[:3] + i * dr * iop[3:]
    ras = np.r_[-lps[0], -lps[1], lps[2], 1.0]
    voxel = np.linalg.solve(vol.affine, ras)[:3]
    np.testing.assert_allclose(voxel, np.round(voxel), atol=1e-4)
    expected = ds.pixel_array[i, j] * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert vol.hu[tuple(np.round(voxel).astype(int))] == expected


def blob_volume():
    hu = np.full((40, 40, 24), -1000.0, np.float32)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    affine[:3, 3] = [-20.0, -20.0, -20.0]
    ijk = np.array([12, 25, 11])
    spot = np.zeros(hu.shape, np.float32)
    spot[tuple(ijk)] = 1
    hu += 3000 * ndimage.gaussian_filter(spot, 1.5) / ndimage.gaussian_filter(spot, 1.5).max()
    return hu, affine, (affine @ np.r_[ijk, 1])[:3]


def centroid_world(vol):
    weights = np.clip(vol.hu - 500, 0, None)
    return (vol.affine @ np.r_[ndimage.center_of_mass(weights), 1])[:3]


@pytest.mark.parametrize("tilt_deg", [14.5, -22.0])
@pytest.mark.parametrize("mode", ["resample", "shear"])
def test_gantry_tilt_keeps_a_known_point_in_place(tmp_path, tilt_deg, mode):
    hu, affine, point = blob_volume()
    write_dicom_series(hu, affine, tmp_path, flavour="cq500", patient_id="CQ500-CT-3", tilt_deg=tilt_deg)
    ds = pydicom.dcmread(sorted(tmp_path.rglob("*.dcm"))[0])
    assert abs(ds.ImageOrientationPatient[5]) > 0.2  # the slice planes really are tilted
    vol = read_dicom_series(next(tmp_path.rglob("CT Plain")), tilt=mode)
    assert vol.meta["tilt_deg"] == pytest.approx(abs(tilt_deg), abs=1e-3)
    assert vol.meta["sheared"] == (mode == "shear")
    cols = vol.affine[:3, :3] / np.linalg.norm(vol.affine[:3, :3], axis=0)
    off_diagonal = np.abs(cols.T @ cols - np.eye(3)).max()
    assert (off_diagonal > 0.1) if mode == "shear" else (off_diagonal < 1e-6)
    np.testing.assert_allclose(centroid_world(vol), point, atol=0.1)


def test_tilted_series_without_tilt_handling_would_misplace_the_point(tmp_path):
    """Guard for the test above: the naive stack (slices along the normal, no shift) is off by mm."""
    hu, affine, point = blob_volume()
    write_dicom_series(hu, affine, tmp_path, flavour="cq500", patient_id="CQ500-CT-3", tilt_deg=14.5)
    vol = read_dicom_series(next(tmp_path.rglob("CT Plain")), tilt="shear")
    naive = vol.affine.copy()
    normal = np.cross(naive[:3, 0], naive[:3, 1])
    naive[:3, 2] = normal / np.linalg.norm(normal) * np.linalg.norm(naive[:3, 2]) * np.cos(np.radians(14.5))
    vol.affine = naive
    assert np.linalg.norm(centroid_world(vol) - point) > 1.0


def test_duplicates_dropped_and_gaps_flagged_or_rejected(tmp_path):
    hu, affine = phantom(shape=(32, 32, 8))
    files = write_dicom_series(hu, affine, tmp_path / "dup", duplicate_slices=(2, 5))
    assert len(files) == 10
    vol = read_dicom_series(tmp_path / "dup")
    assert vol.meta["n_duplicates_dropped"] == 2
    np.testing.assert_array_equal(vol.hu, canonical(hu, affine)[0])

    write_dicom_series(hu, affine, tmp_path / "gap", drop_slices=(4,))
    vol = read_dicom_series(tmp_path / "gap")
    assert vol.meta["has_gap"] and vol.meta["n_gaps"] == 1 and vol.meta["max_gap_mm"] == pytest.approx(4.0)
    want = canonical(hu, affine)[0]
    assert vol.hu.shape == want.shape  # the missing slice is interpolated on the regular grid
    np.testing.assert_allclose(vol.hu[..., 4], (want[..., 3] + want[..., 5]) / 2, atol=1e-3)
    np.testing.assert_allclose(vol.affine, canonical(hu, affine)[1], atol=1e-5)
    with pytest.raises(DicomSeriesError, match="gap"):
        read_dicom_series(tmp_path / "gap", on_gap="reject")
    # the gap is an undecodable file left out: the refusal names it (only the skip list did, which is then lost)
    files = write_dicom_series(hu, affine, tmp_path / "broken")
    broken = sorted(files)[4]
    broken.write_bytes(broken.read_bytes()[:400])
    with pytest.raises(DicomSeriesError, match=rf"1 gap\(s\).*1 of its files could not be read and were left out, "
                                               rf"which may be the missing slices: {broken}"):
        read_dicom_series(tmp_path / "broken", on_gap="reject", on_bad_file="skip")


@pytest.mark.parametrize("flavour", ["rsna", "cq500"])
def test_localizer_in_series_is_dropped(tmp_path, flavour):
    hu, affine = phantom()
    patient = "CQ500-CT-4" if flavour == "cq500" else None
    files = write_dicom_series(hu, affine, tmp_path, flavour=flavour, patient_id=patient, add_localizer=True)
    vol = read_dicom_series(files)
    assert vol.meta["n_localizers_dropped"] == 1 and vol.meta["n_slices"] == 6
    np.testing.assert_array_equal(vol.hu, canonical(hu, affine)[0])
    with pytest.raises(DicomSeriesError, match="localizer"):
        read_dicom_series(files[-1:])


def test_corrupt_slice_rejected_or_skipped(tmp_path):
    hu, affine = phantom()
    files = write_dicom_series(hu, affine, tmp_path, corrupt_slices=(3,))
    with pytest.raises(DicomSeriesError, match=r"ID_\w+\.dcm: undecodable pixel data"):
        read_dicom_series(tmp_path)
    vol = read_dicom_series(tmp_path, on_bad_file="skip")
    assert [Path(f).name for f, _ in vol.meta["skipped_files"]] == [files[3].name]
    assert vol.meta["has_gap"]


def test_bad_inputs_get_clear_errors(tmp_path):
    with pytest.raises(DicomSeriesError, match="empty folder"):
        (tmp_path / "empty").mkdir()
        read_dicom_series(tmp_path / "empty")
    hu, affine = phantom()
    write_dicom_series(hu, affine, tmp_path / "mr", modality="MR")
    with pytest.raises(DicomSeriesError, match=r"mr.*modality 'MR', not CT"):
        read_dicom_series(tmp_path / "mr")
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.dcm").write_text("not a dicom file")
    with pytest.raises(DicomSeriesError, match=r"notes\.dcm: not a readable DICOM file"):
        read_dicom_series(tmp_path / "text")
    write_dicom_series(hu[..., :1], affine, tmp_path / "one")
    with pytest.raises(DicomSeriesError, match="single image slice"):
        read_dicom_series(tmp_path / "one")


def test_group_series_splits_studies_and_records_unreadable(tmp_path):
    hu, affine = phantom()
    a = write_dicom_series(hu, affine, tmp_path, patient_id="ID_aaaaaaaa")
    b = write_dicom_series(hu[..., :4], affine, tmp_path, patient_id="ID_bbbbbbbb")
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"\0" * 10)
    rejects = []
    groups = group_series([*a, *b, junk], rejects)
    assert sorted(len(v) for v in groups.values()) == [4, 6]
    assert rejects and rejects[0][0] == str(junk)
    with pytest.raises(DicomSeriesError, match="junk.dcm"):
        group_series([junk])
    with pytest.raises(DicomSeriesError, match="2 series"):
        read_dicom_series(tmp_path, on_bad_file="skip")


def _copies(ds_path, out_dir, n, step_lps):
    """``n`` copies of a real slice, moved by ``step_lps`` each, as one series (real pixel encoding)."""
    out_dir.mkdir(parents=True)
    for k in range(n):
        ds = pydicom.dcmread(ds_path)
        ds.ImagePositionPatient = [float(v) + k * s for v, s in zip(ds.ImagePositionPatient, step_lps)]
        ds.SOPInstanceUID = pydicom.uid.generate_uid(entropy_srcs=[str(ds_path), str(k)])
        ds.save_as(out_dir / f"CT{k:06d}.dcm")
    return pydicom.dcmread(ds_path)


def test_real_cq500_j2k_slice(tmp_path):
    src = Path(get_testdata_file("693_J2KI.dcm"))
    ds = _copies(src, tmp_path / "s", 3, (0, 0, 5.0))
    vol = read_dicom_series(tmp_path / "s")
    hu = pydicom.pixels.apply_rescale(ds.pixel_array, ds)  # pydicom's own Modality LUT
    assert hu.min() == -3995 and hu.max() == 1812  # datasets.md §3
    np.testing.assert_array_equal(vol.hu[..., 0], hu.T[::-1, ::-1])  # LPS (cols, rows) -> RAS flips x, y
    np.testing.assert_allclose(np.linalg.norm(vol.affine[:3, :3], axis=0), [0.478516, 0.478516, 5.0], atol=1e-6)
    assert vol.meta["patient_id"] == "CQ500-CT-310" and vol.meta["series_description"] == "5/5mm Plain"
    assert vol.meta["slice_thickness_mm"] == 5.0 and vol.meta["kvp"] == 140.0


def test_real_tilted_head_ct_slice(tmp_path):
    src = Path(get_testdata_file("J2K_pixelrep_mismatch.dcm"))
    ds = _copies(src, tmp_path / "s", 3, (0, 0, 5.0 / np.cos(np.radians(22))))  # table moves along z
    assert float(ds.GantryDetectorTilt) == -22.0
    for mode in ("resample", "shear"):
        vol = read_dicom_series(tmp_path / "s", tilt=mode)
        assert vol.meta["tilt_deg"] == pytest.approx(22.0, abs=0.1)
        assert vol.meta["window_center"] == 40.0  # multi-valued [40, 40, 40]
        assert vol.hu.min() == -2000  # intercept 0: raw values are HU
    assert vol.meta["sheared"]
    # slices step 5 mm / cos(22°) along z; along the normal that is 5 mm
    assert vol.meta["slice_step_mm"] == pytest.approx(5.0, abs=1e-3)


def test_real_series_with_a_gap_and_real_localizers(tmp_path):
    ct2 = Path(get_testdata_file("dicomdirtests/77654033/CT2/17106")).parent
    with pytest.raises(DicomSeriesError, match="gap"):
        read_dicom_series(ct2, on_gap="reject")
    vol = read_dicom_series(ct2)
    assert vol.meta["has_gap"] and vol.meta["slice_step_mm"] == pytest.approx(1.25, abs=0.01)
    scouts = Path(get_testdata_file("dicomdirtests/98892001/CT2N/6293")).parent
    with pytest.raises(DicomSeriesError, match="only localizer images"):
        read_dicom_series(scouts)
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_duplicate_position_with_other_pixels_is_refused_naming_both_files(tmp_path):
    """An identical copy of a slice is dropped; another image at the same position (a second reconstruction
    in the same series) is refused, never silently kept or dropped."""
    hu, affine = phantom(shape=(32, 32, 8))
    files = sorted(write_dicom_series(hu, affine, tmp_path / "s", flavour="cq500", patient_id="CQ500-CT-1"))
    ds = pydicom.dcmread(files[3])
    ds.save_as(tmp_path / "s" / "copy.dcm")  # the same pixels: a duplicate, dropped
    assert read_dicom_series(tmp_path / "s").meta["n_duplicates_dropped"] == 1
    other = ds.pixel_array.copy()
    other[:] = other.max()
    ds.PixelData = other.tobytes()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.save_as(tmp_path / "s" / "bone_recon.dcm")
    with pytest.raises(DicomSeriesError, match="same position") as err:
        read_dicom_series(tmp_path / "s")
    assert str(tmp_path / "s") in str(err.value) and "bone_recon.dcm" in str(err.value)
    assert files[3].name in str(err.value)


def _retag(files, **tags):
    for f in files:
        ds = pydicom.dcmread(f)
        for keyword, value in tags.items():
            if value is None:
                delattr(ds, keyword)
            else:
                setattr(ds, keyword, value)
        ds.save_as(f)


def test_missing_rescale_tags_are_flagged(tmp_path):
    hu, affine = phantom(shape=(32, 32, 6))
    files = write_dicom_series(hu, affine, tmp_path, flavour="cq500", patient_id="CQ500-CT-1")
    assert "rescale_missing" not in read_dicom_series(tmp_path).meta["flags"]
    _retag(files, RescaleSlope=None)  # slope 1 is what the files hold anyway: the HU stay right, but flagged
    vol = read_dicom_series(tmp_path)
    assert vol.meta["flags"]["rescale_missing"].startswith("6 of 6 slice(s)")
    np.testing.assert_array_equal(vol.hu, canonical(hu, affine)[0])


@pytest.mark.parametrize("tags", [{"RescaleIntercept": 0}, {"RescaleSlope": 2}, {"RescaleIntercept": None}])
def test_slices_differing_in_rescale_are_refused(tmp_path, tags):
    """Five slices decoded with intercept 0 in a -1024 series would sit 1024 HU too high: refused."""
    hu, affine = phantom(shape=(32, 32, 8))
    files = sorted(write_dicom_series(hu, affine, tmp_path, flavour="cq500", patient_id="CQ500-CT-1"))
    _retag(files[2:4], **tags)
    with pytest.raises(DicomSeriesError, match="differ in RescaleSlope/RescaleIntercept") as err:
        read_dicom_series(tmp_path)
    assert "in 6 slice(s)" in str(err.value) and "in 2 slice(s)" in str(err.value)
    assert files[2].name in str(err.value)


def test_an_enhanced_ct_object_reads_as_its_classic_series(tmp_path):
    """One multi-frame Enhanced CT file (geometry, rescale, kVp and kernel only in its functional groups) gives
    the volume, affine and header facts that the same series as one file per slice gives."""
    from fmct_lib.data.dicom_write import write_enhanced_ct
    hu, affine = phantom()
    classic = read_dicom_series(write_dicom_series(hu, affine, tmp_path / "classic", flavour="cq500",
                                                   patient_id="P1", kvp=100.0))
    path = write_enhanced_ct(hu, affine, tmp_path / "enhanced" / "IM0001", patient_id="P1", kvp=100.0)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert int(header.NumberOfFrames) == 6 and "ImagePositionPatient" not in header and "KVP" not in header
    enhanced = read_dicom_series(path)
    np.testing.assert_array_equal(enhanced.hu, classic.hu)
    np.testing.assert_allclose(enhanced.affine, classic.affine, atol=1e-6)
    for key in ("kvp", "convolution_kernel", "slice_thickness_mm", "pixel_spacing_mm", "n_slices", "rescale_intercept"):
        assert enhanced.meta[key] == classic.meta[key], key
    assert enhanced.meta["kvp"] == 100.0 and enhanced.meta["n_files"] == 1

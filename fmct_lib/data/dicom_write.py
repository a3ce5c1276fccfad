"""Writing a HU volume as a realistic CT DICOM series, in the RSNA or the CQ500 layout, quirks included.

Used by the ingestion tests (files written in the exact layouts of datasets.md §1-2) and, through
``synthetic.dicom.write_phantom_dicom``, to write a synthetic phantom as DICOM (the cohort itself is NIfTI).
The input is a 3-D HU array with its RAS affine (what a NIfTI holds, what ``read_dicom_series`` returns); the
output is one axial file per slice.

Flavours:

- ``"rsna"``: a flat folder of ``ID_<9 hex>.dcm`` files whose headers hold only the elements RSNA's
  files have (datasets.md §1.2: no SliceThickness, InstanceNumber, Manufacturer, ImageType, ...), UIDs
  of the form ``ID_<hex>``, BitsStored 16 (signed) or 12 (unsigned), intercept -1024.
- ``"cq500"``: ``CQ500CT<N> CQ500CT<N>/Unknown Study/CT <description>/CT000000.dcm`` under ``out_dir``
  (the description with ``/`` and ``+`` stripped, ``-2``, ``-3`` appended when repeated), PatientID
  ``CQ500-CT-<N>``, a full header (SeriesDescription, SliceThickness, Manufacturer, KVP, ...),
  14-bit signed pixels, optionally JPEG 2000 lossless (pylibjpeg-openjpeg; slices need >= 32 pixels) or JPEG
  Lossless Process 14 SV1 (GDCM), the compression many PACS exports use.

Quirks, each off by default: gantry tilt (the volume is resampled onto tilted slice planes stacked
along the table axis), the RSNA 12-bit wrong intercept (§1.3), multi-valued window tags, dropped
(missing) slices, duplicated slices, corrupt slices (short PixelData, like ``ID_6431af929.dcm``), a
localizer image in the series, another modality.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, JPEG2000Lossless
from pydicom.valuerep import DS
from scipy import ndimage

from .dicom import lenient_validation

__all__ = ["write_dicom_series", "write_enhanced_ct", "cq500_series_folder"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _hex(*parts, n: int) -> str:
    return hashlib.sha256("/".join(map(str, parts)).encode()).hexdigest()[:n]


def _uid(*parts) -> str:
    return pydicom.uid.generate_uid(entropy_srcs=[str(p) for p in parts])


def _ds(values) -> list:
    return [DS(float(v), auto_format=True) for v in values]


def cq500_series_folder(patient_id: str, series_description: str) -> Path:
    """``CQ500CT<N> CQ500CT<N>/Unknown Study/CT <description>`` relative to a batch folder."""
    patient = patient_id.replace("-", "")
    desc = series_description.replace("/", "").replace("+", "")
    return Path(f"{patient} {patient}") / "Unknown Study" / f"CT {desc}"


def _lps_stack(hu: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The volume permuted/flipped so voxel axes run along +L, +P, +S, and its LPS affine."""
    lps = LPS_TO_RAS @ np.asarray(affine, dtype=float)
    ornt = nib.orientations.io_orientation(lps)
    stack = nib.orientations.apply_orientation(np.asarray(hu), ornt)
    return stack, lps @ nib.orientations.inv_ornt_aff(ornt, np.asarray(hu).shape)


def _tilted(stack: np.ndarray, lps: np.ndarray, tilt_deg: float):
    """Resample onto slice planes tilted by ``tilt_deg`` about the row axis, stacked along the table axis.

    Returns the new stack, the in-plane unit vectors (row_dir, col_dir) and the IPP of each slice.
    """
    nx, ny, nz = stack.shape
    dc, dr = np.linalg.norm(lps[:3, 0]), np.linalg.norm(lps[:3, 1])
    row_dir, col_dir = lps[:3, 0] / dc, lps[:3, 1] / dr
    normal = np.cross(row_dir, col_dir)
    t = np.radians(tilt_deg)
    tilted_col = np.cos(t) * col_dir - np.sin(t) * normal  # e.g. IOP [1,0,0, 0,0.968,-0.250] for 14.5°
    centres = (lps @ np.stack([np.full(nz, (nx - 1) / 2), np.full(nz, (ny - 1) / 2), np.arange(nz), np.ones(nz)]))[:3].T
    ipps = centres - (nx - 1) / 2 * dc * row_dir - (ny - 1) / 2 * dr * tilted_col
    x, y, k = np.meshgrid(np.arange(nx), np.arange(ny), np.arange(nz), indexing="ij")
    world = ipps[k] + x[..., None] * dc * row_dir + y[..., None] * dr * tilted_col
    vox = np.linalg.solve(lps[:3, :3], (world - lps[:3, 3]).reshape(-1, 3).T)
    out = ndimage.map_coordinates(stack.astype(np.float32), vox, order=1, mode="constant", cval=float(stack.min()))
    return out.reshape(stack.shape), row_dir, tilted_col, ipps


def _encode(hu_slice: np.ndarray, flavour: str, bits_stored: int, wrong_intercept: bool):
    """Raw stored pixels and the (intercept, bits stored, pixel representation) that decode them."""
    hu = np.rint(hu_slice).astype(np.int32)
    if wrong_intercept:  # RSNA quirk: HU stored modulo 4096 as unsigned 12 bit with intercept 0
        return (np.clip(hu, -1000, 3095) % 4096).astype(np.uint16), 0.0, 12, 0
    if bits_stored == 12:
        return np.clip(hu + 1024, 0, 4095).astype(np.uint16), -1024.0, 12, 0
    lo, hi = -(2 ** (bits_stored - 1)), 2 ** (bits_stored - 1) - 1
    return np.clip(hu + 1024, lo, hi).astype(np.int16), -1024.0, bits_stored, 1


def write_dicom_series(hu, affine, out_dir, *, flavour: str = "rsna", patient_id: str | None = None,
                       study_uid: str | None = None, series_uid: str | None = None,
                       series_description: str | None = None, series_number: int = 1,
                       tilt_deg: float = 0.0, bits_stored: int | None = None, wrong_intercept: bool = False,
                       multivalued_window: bool = False, j2k: bool = False, drop_slices=(),
                       duplicate_slices=(), corrupt_slices=(), add_localizer: bool = False,
                       modality: str = "CT", manufacturer: str = "GE MEDICAL SYSTEMS", kvp: float = 120.0,
                       contrast_agent: str = "", accession_number: str = "", jpeg_lossless: bool = False) -> list[Path]:
    """Write ``hu`` (3-D, HU, RAS affine) as one DICOM file per axial slice; returns the paths written.

    ``drop_slices``, ``duplicate_slices`` and ``corrupt_slices`` are slice indices along the written
    stack (inferior to superior). ``out_dir`` is the flat image folder for RSNA and the batch folder
    (``qctXX``) for CQ500. Identifiers default to deterministic values derived from ``patient_id``.
    """
    if flavour not in ("rsna", "cq500"):
        raise ValueError(f"flavour must be 'rsna' or 'cq500', got {flavour!r}")
    hu = np.asarray(hu)
    if hu.ndim != 3:
        raise ValueError(f"expected a 3-D volume, got shape {hu.shape}")
    rsna = flavour == "rsna"
    bits_stored = bits_stored or (16 if rsna else 14)
    patient_id = patient_id or ("ID_" + _hex("patient", n=8) if rsna else "CQ500-CT-0")
    series_description = series_description if series_description is not None else ("" if rsna else "Plain")
    if rsna:
        study_uid = study_uid or "ID_" + _hex(patient_id, "study", n=10)
        series_uid = series_uid or "ID_" + _hex(patient_id, study_uid, series_number, n=10)
    else:
        study_uid = study_uid or _uid(patient_id, "study")
        series_uid = series_uid or _uid(patient_id, study_uid, series_description, series_number)

    stack, lps = _lps_stack(hu, affine)
    if jpeg_lossless and (rsna or j2k):
        raise ValueError("jpeg_lossless is a CQ500-flavour option, and one compression at a time (not with j2k)")
    if j2k and min(stack.shape[:2]) < 32:
        raise ValueError(f"JPEG 2000 encoding needs slices of at least 32x32 pixels, got {stack.shape[:2]}")
    dc, dr, dz = (float(np.linalg.norm(lps[:3, i])) for i in range(3))
    if tilt_deg:
        stack, row_dir, col_dir, ipps = _tilted(stack, lps, tilt_deg)
    else:
        row_dir, col_dir = lps[:3, 0] / dc, lps[:3, 1] / dr
        ipps = (lps @ np.stack([np.zeros(stack.shape[2]), np.zeros(stack.shape[2]),
                                np.arange(stack.shape[2]), np.ones(stack.shape[2])]))[:3].T

    folder = Path(out_dir)
    if not rsna:
        folder = _free_series_folder(folder / cq500_series_folder(patient_id, series_description), series_uid)
    folder.mkdir(parents=True, exist_ok=True)

    def header(sop_uid: str) -> Dataset:
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
        ds.file_meta.MediaStorageSOPInstanceUID = sop_uid
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.preamble = b"\0" * 128
        if not rsna:
            ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.Modality = modality
        if not rsna:
            ds.Manufacturer = manufacturer
            ds.SeriesDescription = series_description
            ds.PatientName = patient_id
        ds.PatientID = patient_id
        if not rsna:
            ds.SliceThickness = DS(dz, auto_format=True)
            ds.KVP = DS(kvp, auto_format=True)
            ds.ConvolutionKernel = "STANDARD"
            ds.GantryDetectorTilt = DS(tilt_deg, auto_format=True)
            if contrast_agent:
                ds.ContrastBolusAgent = contrast_agent
            if accession_number:
                ds.AccessionNumber = accession_number
        ds.StudyInstanceUID = study_uid
        ds.SeriesInstanceUID = series_uid
        ds.StudyID = ""
        if not rsna:
            ds.SeriesNumber = series_number
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated = 16
        ds.RescaleSlope = DS(1)
        window = ([36, 36], [80, 80]) if multivalued_window else (40, 80)
        ds.WindowCenter = _ds(window[0]) if multivalued_window else DS(window[0])
        ds.WindowWidth = _ds(window[1]) if multivalued_window else DS(window[1])
        return ds

    def pixels(ds: Dataset, image: np.ndarray, corrupt: bool, compress: bool) -> None:
        raw, intercept, bits, pixrep = _encode(image, flavour, bits_stored, wrong_intercept)
        ds.Rows, ds.Columns = raw.shape
        ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits - 1, pixrep
        ds.RescaleIntercept = DS(intercept)
        ds.PixelData = raw.tobytes()
        if compress:
            ds.compress(JPEG2000Lossless, raw, encoding_plugin="pylibjpeg")
        if corrupt:  # short PixelData: decoding raises, as for RSNA's ID_6431af929.dcm
            data = ds.PixelData if not compress else ds.PixelData[: len(ds.PixelData) // 3]
            ds.PixelData = data[: len(data) // 2]

    written: list[Path] = []
    order = [k for k in range(stack.shape[2]) if k not in set(drop_slices)]
    n_primary = len(order)
    order += [k for k in duplicate_slices if k in order]
    with lenient_validation():  # RSNA's "ID_..." UIDs are not valid UI values
        for n, k in enumerate(order):
            sop = ("ID_" + _hex(series_uid, n, n=9)) if rsna else _uid(series_uid, n)
            ds = header(sop)
            if not rsna:
                ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
                ds.InstanceNumber = n + 1
                ds.SliceLocation = DS(float(ipps[k] @ np.cross(row_dir, col_dir)), auto_format=True)
            ds.ImagePositionPatient = _ds(ipps[k])
            ds.ImageOrientationPatient = _ds([*row_dir, *col_dir])
            ds.PixelSpacing = _ds([dr, dc])
            pixels(ds, stack[:, :, k].T, corrupt=k in set(corrupt_slices) and n < n_primary, compress=j2k)
            written.append(_save(ds, folder, sop, n, rsna))
            if jpeg_lossless:
                _to_jpeg_lossless(written[-1])
        if add_localizer:  # a coronal scout in the same series (ImageType only where the flavour has it)
            sop = ("ID_" + _hex(series_uid, "localizer", n=9)) if rsna else _uid(series_uid, "localizer")
            ds = header(sop)
            if not rsna:
                ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
                ds.InstanceNumber = len(order) + 1
            ds.ImagePositionPatient = _ds(ipps[-1])
            ds.ImageOrientationPatient = _ds([*row_dir, *(-np.cross(row_dir, col_dir))])
            ds.PixelSpacing = _ds([dz, dc])
            pixels(ds, stack.mean(axis=1).T[::-1], corrupt=False, compress=False)
            written.append(_save(ds, folder, sop, len(order), rsna))
    return written


def write_enhanced_ct(hu, affine, path, **series) -> Path:
    """Write ``hu`` as one multi-frame Enhanced CT object (PS3.3 A.38), the geometry, rescale, kVp and kernel in its
    functional groups (each frame's position its own, the rest shared) and none of them at the top level, as a
    scanner that exports Enhanced CT writes them. ``series`` are ``write_dicom_series`` options (CQ500 flavour,
    no compression); returns ``path``."""
    import tempfile
    with tempfile.TemporaryDirectory() as tmp:
        files = write_dicom_series(hu, affine, tmp, flavour="cq500", **series)
        slices = [pydicom.dcmread(f) for f in files]
    first = slices[0]

    def group(**values) -> Dataset:
        item = Dataset()
        for keyword, value in values.items():
            setattr(item, keyword, value)
        return item

    shared = group(PixelMeasuresSequence=[group(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)],
                   PlaneOrientationSequence=[group(ImageOrientationPatient=first.ImageOrientationPatient)],
                   PixelValueTransformationSequence=[group(RescaleSlope=first.RescaleSlope,
                                                           RescaleIntercept=first.RescaleIntercept,
                                                           RescaleType="HU")],
                   CTXRayDetailsSequence=[group(KVP=first.KVP)],
                   CTReconstructionSequence=[group(ConvolutionKernel=first.ConvolutionKernel)])
    ds = Dataset()
    for elem in first:  # the series' attributes; the per-slice and functional-group ones go to the groups
        if elem.keyword not in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "SliceThickness",
                                "RescaleSlope", "RescaleIntercept", "KVP", "ConvolutionKernel", "InstanceNumber",
                                "SliceLocation", "PixelData"):
            ds.add(elem)
    ds.file_meta = first.file_meta
    ds.preamble = first.preamble
    sop = _uid(ds.SeriesInstanceUID, "enhanced")
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.EnhancedCTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = sop
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    ds.NumberOfFrames = len(slices)
    ds.SharedFunctionalGroupsSequence = [shared]
    ds.PerFrameFunctionalGroupsSequence = [group(PlanePositionSequence=[group(ImagePositionPatient=s.ImagePositionPatient)])
                                           for s in slices]
    ds.PixelData = b"".join(s.PixelData for s in slices)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=False)
    return path


def _free_series_folder(folder: Path, series_uid: str) -> Path:
    """``folder`` unless it already holds another series; then ``folder-2``, ``folder-3``, ..."""
    candidate, n = folder, 1
    while candidate.exists() and any(candidate.iterdir()):
        first = next(p for p in sorted(candidate.iterdir()) if p.is_file())
        if str(pydicom.dcmread(first, stop_before_pixels=True).SeriesInstanceUID) == series_uid:
            return candidate
        n += 1
        candidate = folder.with_name(f"{folder.name}-{n}")
    return candidate


def _to_jpeg_lossless(path: Path) -> None:
    """Re-encode a file as JPEG Lossless, Process 14 SV1 (what many PACS archive and export CT in), with GDCM."""
    import gdcm
    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise OSError(f"{path}: GDCM cannot read the file it is to re-encode")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.JPEGLosslessProcess14_1))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise OSError(f"{path}: GDCM could not re-encode it as JPEG Lossless")
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    writer.SetFileName(str(path))
    if not writer.Write():
        raise OSError(f"{path}: GDCM could not write it")


def _save(ds: Dataset, folder: Path, sop: str, n: int, rsna: bool) -> Path:
    path = folder / (f"{sop}.dcm" if rsna else f"CT{n:06d}.dcm")
    ds.save_as(path, enforce_file_format=False)
    return path

"""Reading a CT series from DICOM slices into one HU volume with a RAS affine (issue 3, "Ingestion").

A CT series arrives as one file per slice (or as one multi-frame Enhanced CT object, whose frames ``_frames`` turns
into slices: geometry, rescale, kVp and kernel from its functional groups). This module turns a folder (or a list of
files) into a ``DicomVolume``: HU values as float32 in RAS voxel order and the 4x4 RAS world affine in nibabel's
convention, plus the header facts the scan table keeps (``meta``).

What it handles, in order:

1. **Grouping** by StudyInstanceUID / SeriesInstanceUID (``group_series``).
2. **Rejections**: non-CT modalities, localizers (``ImageType`` LOCALIZER, or a lone image in another
   orientation, which is how a scout hides in RSNA files without ImageType), undecodable files (the
   known corrupt RSNA slice ``ID_6431af929.dcm`` has short PixelData). A series holding two stacks in
   two orientations is refused, naming both (``checks.check_orientations``); so is a zero or missing
   PixelSpacing.
3. **Order**: slices sorted by ImagePositionPatient projected on the slice normal (cross product of the
   two ImageOrientationPatient vectors); RSNA headers have no InstanceNumber or SliceThickness.
   A duplicate (same position, same pixels) is dropped; two different images at one position are
   refused as a mixed series, naming both files; a step larger than 1.5x the median step is a gap (flagged or
   rejected); a non-uniform stack is resampled linearly along the normal onto the median step
   (``checks.slice_steps``; flagged ``slice_gap`` / ``uneven_spacing``).
4. **Gantry tilt**: when the step between slices is not along the normal the stack is a shear. Either
   keep it exactly with a sheared affine (``tilt="shear"``) or shift each slice in-plane onto a
   rectilinear grid (``tilt="resample"``, as dcm2niix's ``_Tilt`` output).
5. **HU**: RescaleSlope/Intercept (first value of multi-valued tags; slope 1, intercept 0 where absent,
   flagged ``rescale_missing``; a series whose slices differ in them is refused), with the RSNA 12-bit
   wrong-intercept repair (datasets.md §1.3: BitsStored 12, PixelRepresentation 0, intercept > -100:
   raw + 1000 wrapped at 4096, intercept -1000; flagged ``rsna_intercept_repaired``). JPEG 2000 (CQ500)
   decodes through pydicom's plugins.

``meta["flags"]`` holds the series' flags and ``meta["rescale_intercept"]`` the intercept the values were
decoded with; the volume checks (``checks.check_scan``, HU scale included) run in the shared loader
``preprocess.load_checked``.

Voxel ``(x, y, z)`` of the LPS-ordered stack maps to DICOM patient coordinates (LPS) through
``IPP0 + x*dc*row_dir + y*dr*col_dir + z*step``; RAS world is LPS with x and y negated, and the array is
finally permuted/flipped to RAS voxel order with nibabel's orientation tools.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from scipy import ndimage

from .checks import DUPLICATE_MM, TILT_MIN_DEG, ScanError, check_orientations, slice_plane, slice_steps

__all__ = ["DicomSeriesError", "DicomVolume", "group_series", "read_dicom_series", "list_files", "lenient_validation",
           "header_number"]

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


@contextmanager
def lenient_validation():
    """Accept RSNA's ``ID_<hex>`` UIDs (invalid UI values) without a warning and a log line per file."""
    settings = pydicom.config.settings
    saved = settings.reading_validation_mode, settings.writing_validation_mode
    settings.reading_validation_mode = settings.writing_validation_mode = pydicom.config.IGNORE
    try:
        yield
    finally:
        settings.reading_validation_mode, settings.writing_validation_mode = saved


class DicomSeriesError(ScanError):
    """A DICOM series that cannot become a CT volume; the message names the folder or file and why."""


@dataclass
class DicomVolume:
    """A CT volume read from DICOM: HU, RAS affine and the header facts (see ``read_dicom_series``)."""

    hu: np.ndarray                     # float32 (X, Y, Z), RAS voxel order
    affine: np.ndarray                 # 4x4 voxel -> RAS world (mm), nibabel convention
    meta: dict = field(default_factory=dict)



def list_files(path_or_files) -> tuple[list[Path], str]:
    """The regular, non-hidden files of a folder (recursively) or the given list, and a label for messages."""
    if isinstance(path_or_files, (str, Path)):
        folder = Path(path_or_files)
        if not folder.exists():
            raise DicomSeriesError(f"{folder}: no such file or folder")
        if folder.is_file():
            return [folder], str(folder)
        files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not files:
            raise DicomSeriesError(f"{folder}: empty folder, no DICOM files")
        return files, str(folder)
    files = sorted(Path(p) for p in path_or_files)
    if not files:
        raise DicomSeriesError("no DICOM files given")
    label = str(files[0].parent) if len({f.parent for f in files}) == 1 else f"{len(files)} files"
    return files, label


def _first(ds, keyword: str, default=None):
    """The first value of a possibly multi-valued tag (RSNA window tags are sometimes ``[36, 36]``)."""
    value = ds.get(keyword, None)
    if value is None or value == "":
        return default
    if isinstance(value, (pydicom.multival.MultiValue, list, tuple)):
        return value[0] if len(value) else default
    return value


def header_number(value) -> float | None:
    """A header value as a number: the first of a multi-valued one written as text (``36\\36``); None where it is
    absent, not a number or not finite."""
    try:
        number = float(str(value).split("\\")[0]) if isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        return None
    return number if np.isfinite(number) else None


def group_series(files, rejects: list | None = None) -> dict[tuple[str, str], list[Path]]:
    """Group DICOM files by (StudyInstanceUID, SeriesInstanceUID), reading headers only.

    A file whose header cannot be read is appended to ``rejects`` as ``(path, reason)`` when a list is
    given, else raises ``DicomSeriesError``.
    """
    groups: dict[tuple[str, str], list[Path]] = {}
    for f in map(Path, files):
        try:
            with lenient_validation():
                ds = pydicom.dcmread(f, stop_before_pixels=True,
                                     specific_tags=["StudyInstanceUID", "SeriesInstanceUID"])
                key = (str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID))
        except Exception as e:  # noqa: BLE001 - any unreadable header is a rejection with its reason
            reason = f"unreadable DICOM header: {type(e).__name__}: {e}"
            if rejects is None:
                raise DicomSeriesError(f"{f}: {reason}") from e
            rejects.append((str(f), reason))
            continue
        groups.setdefault(key, []).append(f)
    return groups


def _is_localizer(ds) -> bool:
    image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
    return "LOCALIZER" in image_type


def _orientation(ds, label) -> np.ndarray:
    iop = ds.get("ImageOrientationPatient")
    if iop is None or len(iop) != 6 or ds.get("ImagePositionPatient") is None:
        raise DicomSeriesError(f"{label}: slice without ImagePositionPatient/ImageOrientationPatient")
    return np.asarray([float(v) for v in iop])


RESCALE_TAGS = ("RescaleSlope", "RescaleIntercept")


def _rescale(ds) -> tuple[float, float]:
    """RescaleSlope and RescaleIntercept (first values; 1 and 0 where absent)."""
    return float(_first(ds, "RescaleSlope", 1.0)), float(_first(ds, "RescaleIntercept", 0.0))


def _hu_slice(ds, raw: np.ndarray | None = None) -> tuple[np.ndarray, float, bool]:
    """Pixel values in HU (rows, columns), the intercept used, and whether the RSNA repair was applied. ``raw``: a
    frame's stored values where ``ds`` is one frame of a multi-frame object (``_frames``), else its pixel array."""
    raw = (ds.pixel_array if raw is None else raw).astype(np.int32)
    if raw.ndim != 2:
        raise ValueError(f"expected a single-frame 2-D slice, got pixel array of shape {raw.shape}")
    slope, intercept = _rescale(ds)
    repaired = (int(ds.get("BitsStored", 16)) == 12 and int(ds.get("PixelRepresentation", 0)) == 0
                and intercept > -100)
    if repaired:
        raw = raw + 1000
        raw[raw >= 4096] -= 4096
        intercept = -1000.0
    return (raw * slope + intercept).astype(np.float32), intercept, repaired


def _check_rescale(slices, label) -> dict:
    """``{"rescale_missing": note}`` when slices lack RescaleSlope/Intercept (slope 1, intercept 0 assumed);
    ``DicomSeriesError`` when the slices differ in them (one of the values is wrong, or two series are mixed;
    which cannot be told). Slices the RSNA repair decoded are left out of the comparison: their tags are the
    known wrong ones."""
    missing = sum(any(_first(s, tag) is None for tag in RESCALE_TAGS) for s in slices)
    compared = [(s, _rescale(s)) for s in slices if not s.rsna_repaired]
    counts = Counter(rescale for _, rescale in compared)
    if len(counts) > 1:
        common = counts.most_common(1)[0][0]
        odd = next(s.path for s, rescale in compared if rescale != common)
        parts = "; ".join(f"slope {a:g}, intercept {b:g} in {n} slice(s)" for (a, b), n in counts.most_common())
        raise DicomSeriesError(f"{label}: slices differ in RescaleSlope/RescaleIntercept ({parts}; e.g. {odd}): "
                               "a wrong tag or two series mixed; refused" + (
                                   f" ({missing} slice(s) lack the tags: slope 1, intercept 0 assumed)"
                                   if missing else ""))
    if missing:
        return {"rescale_missing": f"{missing} of {len(slices)} slice(s) without RescaleSlope/RescaleIntercept: "
                                   "slope 1, intercept 0 assumed"}
    return {}


# Functional groups of a multi-frame (Enhanced CT) object, PS3.3 C.7.6.16, and what each gives a frame.
FRAME_GROUPS = {"PlanePositionSequence": ["ImagePositionPatient"],
                "PlaneOrientationSequence": ["ImageOrientationPatient"],
                "PixelMeasuresSequence": ["PixelSpacing", "SliceThickness"],
                "PixelValueTransformationSequence": ["RescaleSlope", "RescaleIntercept"],
                "CTXRayDetailsSequence": ["KVP"], "CTReconstructionSequence": ["ConvolutionKernel"]}
FRAME_SEQUENCES = ("PixelData", "PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence", "NumberOfFrames")


def _frames(ds, path) -> list[tuple[pydicom.Dataset, np.ndarray, str]]:
    """A multi-frame (Enhanced CT) object as single-frame datasets ``(frame, stored values, label)``, each with the
    object's attributes and, from its functional groups (its own first, else the shared ones), the attributes
    ``FRAME_GROUPS`` names; a frame whose ``CTImageFrameTypeSequence`` says LOCALIZER takes that ``ImageType``."""
    n = int(ds.NumberOfFrames)
    per_frame = list(ds.get("PerFrameFunctionalGroupsSequence") or [])
    shared = (list(ds.get("SharedFunctionalGroupsSequence") or []) or [pydicom.Dataset()])[0]
    if len(per_frame) != n:
        raise DicomSeriesError(f"{path}: {n} frames but {len(per_frame)} per-frame functional groups")
    pixels = ds.pixel_array.reshape(n, int(ds.Rows), int(ds.Columns))
    top = {elem.tag: elem for elem in ds if elem.keyword not in FRAME_SEQUENCES}
    out = []
    for k, (groups, raw) in enumerate(zip(per_frame, pixels), start=1):
        frame = pydicom.Dataset(dict(top))  # a dict of its own: a Dataset keeps the mapping it is given
        frame.file_meta = ds.file_meta

        def item(sequence):
            found = next((g.get(sequence) for g in (groups, shared) if g.get(sequence)), None)
            return found[0] if found else pydicom.Dataset()

        for sequence, keywords in FRAME_GROUPS.items():
            values = item(sequence)
            for keyword in keywords:
                if keyword in values:
                    setattr(frame, keyword, values[keyword].value)
        frame_type = item("CTImageFrameTypeSequence").get("FrameType")
        if frame_type and "LOCALIZER" in [str(v).upper() for v in frame_type]:
            frame.ImageType = frame_type
        out.append((frame, raw, f"{path} frame {k}"))
    return out


def _images(ds, path) -> list[tuple[pydicom.Dataset, np.ndarray | None, str]]:
    """The images of a file: itself, or each frame of a multi-frame object (``_frames``)."""
    return _frames(ds, path) if int(ds.get("NumberOfFrames", 1) or 1) > 1 else [(ds, None, str(path))]


def _read_slices(files, on_bad_file):
    """Datasets with pixel data (a multi-frame object's frames each one), the files skipped (path, reason) and the
    localizers dropped."""
    good, skipped, localizers = [], [], 0

    def refuse(where, reason, e):
        if on_bad_file == "reject":
            raise DicomSeriesError(f"{where}: {reason}") from e
        skipped.append((str(where), reason))

    for f in files:
        try:
            ds = pydicom.dcmread(f)
        except Exception as e:  # noqa: BLE001
            refuse(f, f"not a readable DICOM file: {type(e).__name__}: {e}", e)
            continue
        modality = str(ds.get("Modality", "")).upper()
        if modality != "CT":
            raise DicomSeriesError(f"{f}: modality {modality or 'missing'!r}, not CT")
        if _is_localizer(ds):
            localizers += 1
            continue
        if "PixelData" not in ds:
            skipped.append((str(f), "no pixel data"))
            continue
        try:
            images = _images(ds, f)
        except DicomSeriesError:
            raise
        except Exception as e:  # noqa: BLE001 - e.g. truncated PixelData, missing J2K decoder
            refuse(f, f"undecodable pixel data: {type(e).__name__}: {e}", e)
            continue
        for image, raw, where in images:
            if _is_localizer(image):
                localizers += 1
                continue
            try:
                image.hu, image.intercept_used, image.rsna_repaired = _hu_slice(image, raw)
            except Exception as e:  # noqa: BLE001 - e.g. truncated PixelData, missing J2K decoder
                refuse(where, f"undecodable pixel data: {type(e).__name__}: {e}", e)
                continue
            image.path = where if raw is not None else f
            good.append(image)
    return good, skipped, localizers


def read_dicom_series(path_or_files, *, on_gap: str = "flag", tilt: str = "resample",
                      on_bad_file: str = "reject") -> DicomVolume:
    """Read one CT series (a folder or a list of files) into a ``DicomVolume``.

    on_gap: ``"flag"`` keeps a series with missing slices (``meta["has_gap"]``, the gap interpolated
        linearly along the normal) or ``"reject"`` raises ``DicomSeriesError``.
    tilt: ``"resample"`` shifts the slices of a gantry-tilted series onto a rectilinear grid;
        ``"shear"`` keeps the samples and writes the exact sheared affine (``meta["sheared"]``).
    on_bad_file: ``"reject"`` raises on an unreadable/undecodable file; ``"skip"`` drops it and lists it
        in ``meta["skipped_files"]`` as ``(path, reason)`` (what batch ingestion does).
    """
    if on_gap not in ("flag", "reject") or tilt not in ("resample", "shear") or on_bad_file not in ("reject", "skip"):
        raise ValueError(f"bad option: on_gap={on_gap!r}, tilt={tilt!r}, on_bad_file={on_bad_file!r}")
    files, label = list_files(path_or_files)
    with lenient_validation():
        try:
            return _assemble(files, label, on_gap, tilt, on_bad_file)
        except DicomSeriesError:
            raise
        except ScanError as e:  # a series check's refusal, as this reader's error
            raise DicomSeriesError(str(e)) from e


def _assemble(files, label, on_gap, tilt, on_bad_file) -> DicomVolume:
    slices, skipped, n_localizers = _read_slices(files, on_bad_file)
    if not slices:
        what = "only localizer images" if n_localizers else "no decodable CT image"
        raise DicomSeriesError(f"{label}: {what} among {len(files)} file(s)"
                               + (f"; first problem: {skipped[0][1]}" if skipped else ""))
    series = Counter((str(s.get("StudyInstanceUID", "")), str(s.get("SeriesInstanceUID", ""))) for s in slices)
    if len(series) > 1:
        raise DicomSeriesError(f"{label}: {len(series)} series mixed in one input; split them with group_series")

    # A lone image in another orientation is a scout without ImageType; a second stack is refused.
    iops = [_orientation(s, s.path) for s in slices]
    keep, n_scouts = check_orientations(iops, [[float(v) for v in s.ImagePositionPatient] for s in slices], label)
    n_localizers += n_scouts
    slices = [s for s, k in zip(slices, keep) if k]
    for s in slices:
        spacing = s.get("PixelSpacing")
        if spacing is None or len(spacing) != 2:
            raise DicomSeriesError(f"{s.path}: no PixelSpacing (two values: mm between rows, between columns)")
    shapes = Counter((s.hu.shape, tuple(float(v) for v in s.PixelSpacing)) for s in slices)
    if len(shapes) > 1:
        raise DicomSeriesError(f"{label}: slices differ in size or pixel spacing: {dict(shapes)}")
    if len(slices) < 2:
        raise DicomSeriesError(f"{label}: a single image slice is not a 3-D series"
                               + (f" ({n_localizers} localizer(s) dropped)" if n_localizers else ""))

    iop = np.mean([iop for iop, k in zip(iops, keep) if k], axis=0)
    row_dir, col_dir = iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:])
    normal = np.cross(row_dir, col_dir)
    dr, dc = (float(v) for v in slices[0].PixelSpacing)  # between rows, between columns
    if not (np.isfinite([dr, dc]).all() and dr > 0 and dc > 0):
        raise DicomSeriesError(f"{slices[0].path}: PixelSpacing ({dr:g}, {dc:g}) mm must be positive")
    positions = np.array([[float(v) for v in s.ImagePositionPatient] for s in slices])
    depth = positions @ normal
    order = np.lexsort((np.array([str(s.path) for s in slices]), depth))
    slices, positions, depth = [slices[i] for i in order], positions[order], depth[order]

    unique = np.concatenate([[True], np.diff(depth) > DUPLICATE_MM])
    if unique.sum() < 2:
        raise DicomSeriesError(f"{label}: all {len(unique)} slices share one position")
    kept = 0
    for i in range(1, len(slices)):  # a copy at a position already held is dropped; another image there is refused
        if unique[i]:
            kept = i
        elif not np.array_equal(slices[i].hu, slices[kept].hu):
            raise DicomSeriesError(f"{label}: {slices[kept].path} and {slices[i].path} lie at the same "
                                   f"position ({depth[i]:.2f} mm along the normal) with different pixels: two "
                                   "reconstructions mixed in one series; refused rather than keep one of them")
    n_duplicates = int((~unique).sum())
    slices, positions, depth = [s for s, u in zip(slices, unique) if u], positions[unique], depth[unique]

    rescale_flags = _check_rescale(slices, label)

    step, steps, gaps, uneven = slice_steps(depth)
    if gaps.any() and on_gap == "reject":
        unread = (f"; {len(skipped)} of its files could not be read and were left out, which may be the missing "
                  f"slices: {'; '.join(f'{f}: {why}' for f, why in skipped[:3])}" if skipped else "")
        raise DicomSeriesError(f"{label}: {int(gaps.sum())} gap(s) between slices, largest "
                               f"{steps.max():.2f} mm for a {step:.2f} mm step (missing slices?){unread}")

    # Gantry tilt: the in-plane offset of each slice grows linearly with depth (least squares).
    offsets = (positions - positions[0]) - np.outer(depth - depth[0], normal)
    shear = np.linalg.lstsq((depth - depth[0])[:, None], offsets, rcond=None)[0][0]  # mm in-plane per mm
    tilt_deg = float(np.degrees(np.arctan(np.linalg.norm(shear))))

    stack = np.stack([s.hu.T for s in slices], axis=-1)  # (columns, rows, slices) = (x, y, z)
    uniform = not (uneven or gaps.any())
    if not uniform:  # resample along the normal onto the median step (fills gaps linearly)
        n_new = int(round((depth[-1] - depth[0]) / step)) + 1
        target = depth[0] + step * np.arange(n_new)
        idx = np.interp(target, depth, np.arange(len(depth)))
        lo = np.clip(np.floor(idx).astype(int), 0, len(depth) - 2)
        w = (idx - lo).astype(np.float32)
        stack = stack[..., lo] * (1 - w) + stack[..., lo + 1] * w

    sheared = tilt_deg >= TILT_MIN_DEG and tilt == "shear"
    if tilt_deg >= TILT_MIN_DEG and tilt == "resample":
        fill = float(stack.min())
        for k in range(stack.shape[-1]):  # sample slice k at its in-plane offset from the normal line
            off = shear * step * k
            shift = ((off @ row_dir) / dc, (off @ col_dir) / dr)
            stack[..., k] = ndimage.shift(stack[..., k], shift, order=1, mode="constant", cval=fill)
    step_vec = step * (normal + shear) if sheared else step * normal

    lps = np.eye(4)
    lps[:3, 0], lps[:3, 1], lps[:3, 2], lps[:3, 3] = row_dir * dc, col_dir * dr, step_vec, positions[0]
    affine = LPS_TO_RAS @ lps
    ornt = nib.orientations.io_orientation(affine)
    hu = nib.orientations.apply_orientation(stack, ornt).astype(np.float32)
    affine = affine @ nib.orientations.inv_ornt_aff(ornt, stack.shape)

    flags = dict(rescale_flags)  # the series checks' findings (checks.FLAGS), with their numbers
    if any(s.rsna_repaired for s in slices):
        flags["rsna_intercept_repaired"] = "BitsStored 12, unsigned, intercept > -100: raw + 1000 wrapped at 4096"
    if tilt_deg >= TILT_MIN_DEG:
        flags["gantry_tilt"] = f"{tilt_deg:.2f}° gantry tilt, " + (
            "kept as a sheared affine" if sheared else "resampled onto a rectilinear grid")
    if uneven:
        even = steps[~gaps]
        flags["uneven_spacing"] = (f"slice steps {even.min():.3g}-{even.max():.3g} mm: resampled onto the "
                                   f"median step {step:.3g} mm")
    if gaps.any():
        flags["slice_gap"] = (f"{int(gaps.sum())} gap(s), largest {steps.max():.3g} mm for a {step:.3g} mm "
                              "step: interpolated")
    if skipped:
        flags["slices_skipped"] = f"{len(skipped)} file(s) left out (rows of rejects.csv)"
    first = slices[0]
    thickness = header_number(_first(first, "SliceThickness"))
    meta = {
        "source": label,
        "patient_id": str(first.get("PatientID", "")),
        "study_uid": str(first.get("StudyInstanceUID", "")),
        "series_uid": str(first.get("SeriesInstanceUID", "")),
        "series_description": str(first.get("SeriesDescription", "")),
        "series_number": str(first.get("SeriesNumber", "")),
        "manufacturer": str(first.get("Manufacturer", "")),
        "kvp": header_number(_first(first, "KVP")),
        "convolution_kernel": str(_first(first, "ConvolutionKernel", "")),
        "contrast_agent": str(first.get("ContrastBolusAgent", "") or ""),
        "transfer_syntax": str(first.file_meta.get("TransferSyntaxUID", "")) if hasattr(first, "file_meta") else "",
        "slice_thickness_mm": thickness if thickness else round(step, 4),
        "slice_step_mm": round(step, 4),
        "pixel_spacing_mm": (dr, dc),
        "window_center": header_number(_first(first, "WindowCenter")),
        "window_width": header_number(_first(first, "WindowWidth")),
        "n_slices": len(slices),
        "n_files": len(files),
        "n_duplicates_dropped": n_duplicates,
        "n_localizers_dropped": n_localizers,
        "has_gap": bool(gaps.any()),
        "n_gaps": int(gaps.sum()),
        "max_gap_mm": round(float(steps.max()), 4),
        "resampled_along_normal": not uniform,
        "tilt_deg": round(tilt_deg, 3),
        "plane": slice_plane(normal),  # of the slices, as acquired or reformatted
        "sheared": sheared,
        "skipped_files": skipped,
        "rescale_intercept": float(first.intercept_used),
        "flags": flags,
    }
    return DicomVolume(hu=hu, affine=affine, meta=meta)

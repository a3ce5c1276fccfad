"""Plausibility checks on every scan, DICOM or NIfTI: each repairs, flags or refuses (issue 25).

Nothing wrong passes in silence. A check either

- **repairs** a known storage error and records why (``REPAIRS``: a name in the scan's ``flags``),
- **flags** something to look at that the pipeline can still use (``FLAGS``: a name in ``flags``), or
- **refuses** the scan with :class:`ScanError`, whose message names the file and the problem (a row of
  ``rejects.csv`` at ingestion, the loader's error elsewhere).

:func:`check_scan` runs the volume checks (shape, spacing, grid, values, Hounsfield scale) on a loaded
volume; ``preprocess.load_checked``, the one loader that ingestion and preprocessing share, calls it, so
a file is accepted or refused once, with one message. The series checks of DICOM
(:func:`check_orientations`, :func:`slice_steps`) run where the slices are stacked (``dicom.py``).
``docs/data_safety.md`` tabulates every case.

The thresholds are standard CT physics: the Hounsfield scale puts air at -1000 and water at 0; brain is
20-45 HU, CSF 0-15, blood 40-90, cortical bone 700-3000.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["ScanError", "ScanRepaired", "CheckedScan", "REPAIRS", "FLAGS", "check_volume", "check_hu",
           "check_scan", "check_orientations", "describe_orientation", "slice_plane", "slice_steps", "join_flags",
           "HEAD_MIN_HU", "TILT_MIN_DEG", "SFORM_QFORM_ATOL_MM", "DUPLICATE_MM", "GAP_FACTOR"]

# --- the Hounsfield scale (standard CT physics) --------------------------------------------------------
AIR_HU = -1000.0                   # air, by definition of the scale
AIR_BAND = (-1100.0, -900.0)       # air as scanners measure it: -1000 with noise and calibration drift
SOFT_TISSUE_BAND = (0.0, 100.0)    # CSF 0-15, brain 20-45, blood 40-90 HU: where a head's centre lies
BONE_MAX_HU = 3000.0               # densest bone (cortical 700-3000); only metal lies above
PADDING_BELOW_HU = AIR_BAND[0]     # below air is no tissue: the padding outside the reconstruction circle
HEAD_MIN_HU = -800.0               # = preprocess.HEAD_HU, the lowest window edge: no voxel above it, no head
STORAGE_OFFSET_HU = 1024.0         # unsigned storage keeps HU + 1024, undone by RescaleIntercept -1024
HU_MIN_SPAN = 10.0                 # 1st to 99th percentile: CT noise alone (σ ≥ 5 HU) spans 23; [0, 1], z-scores < 10
CENTRE_FRACTION = 0.5              # the central box (middle half of each axis), brain in a head CT
LOW_PERCENTILE = 1.0               # the background: 1st percentile (a few odd voxels do not move it)
STATS_VOXELS = 2_000_000           # percentiles on a strided subsample of about this many voxels

# --- geometry -------------------------------------------------------------------------------------------
MIN_SLICES = 2                     # along every axis: fewer is a 2-D image
MIN_SPACING_MM = 0.05              # finer than any CT (head CT pixels 0.4-1 mm): a unit error (metres)
MAX_SPACING_MM = 20.0              # twice the thickest CT slices (10 mm): a unit error (cm, µm)
HEAD_MIN_EXTENT_MM = 100.0         # an adult head is ~140 mm wide, ~180 long, ~200 high: less is partial
TILT_MIN_DEG = 0.05                # axes this close to perpendicular are rectilinear (float rounding)
SFORM_QFORM_ATOL_MM = 0.01         # a NIfTI's sform and qform this close are one affine (float32 quaternion)

# --- DICOM series ---------------------------------------------------------------------------------------
ORIENTATION_ATOL = 2e-3            # direction cosines this close are one orientation
DUPLICATE_MM = 0.01                # positions closer than this along the normal are one position
GAP_FACTOR = 1.5                   # a step > 1.5x the median step is a gap (datasets.md §1.3)
STEP_RTOL, STEP_ATOL_MM = 0.01, 0.01   # steps within this of the median are uniform

# --- what is recorded in a scan's ``flags`` (semicolon-separated, in this order) -------------------------
REPAIRS = {
    "rsna_intercept_repaired": "RSNA 12-bit wrong intercept: raw + 1000 wrapped at 4096, intercept -1000",
    "hu_offset_repaired": "stored as HU + 1024 with intercept 0 (air at +24 HU): 1024 subtracted",
}
FLAGS = {
    **REPAIRS,
    "gantry_tilt": "gantry-tilted series: resampled onto a rectilinear grid, or kept with a sheared affine",
    "sheared_affine": "the voxel axes are not perpendicular (kept; preprocessing keeps the grid's directions)",
    "uneven_spacing": "uneven slice steps: resampled along the normal onto the median step",
    "slice_gap": "missing slices (a step > 1.5x the median): interpolated linearly",
    "rescale_missing": "DICOM slices without RescaleSlope/RescaleIntercept: slope 1, intercept 0 assumed",
    "slices_skipped": "unreadable or undecodable slices were left out (each is a row of rejects.csv)",
    "sform_qform_differ": "the NIfTI's sform and qform differ (same axis directions): the sform is used",
    "partial_coverage": f"less than {HEAD_MIN_EXTENT_MM:g} mm along an axis: not a whole head",
    "hu_no_air": "no air (near -1000 HU) in the field of view: cropped, skull-stripped or not in HU",
    "hu_brain_implausible": "the centre of the volume is not soft tissue (0-100 HU)",
}


class ScanError(ValueError):
    """A scan refused; the message names the file and the problem."""


class ScanRepaired(UserWarning):
    """A scan repaired on loading (the reason is in the message and in ``CheckedScan.flags``)."""


@dataclass
class CheckedScan:
    """A volume that passed the checks: HU (float32, repaired), its affine, what was flagged and why."""

    hu: np.ndarray
    affine: np.ndarray
    notes: dict = field(default_factory=dict)   # flag name -> the finding, with its numbers
    meta: dict = field(default_factory=dict)    # the reader's header facts (DICOM)

    @property
    def flags(self) -> tuple[str, ...]:
        """The repair and flag names, in ``FLAGS`` order."""
        return tuple(n for n in FLAGS if n in self.notes)


def join_flags(names) -> str:
    """``names`` as the ``flags`` column holds them: in ``FLAGS`` order, semicolon-separated."""
    names = set(names)
    unknown = names - set(FLAGS)
    if unknown:
        raise ValueError(f"unknown flags {sorted(unknown)}")
    return ";".join(n for n in FLAGS if n in names)


def _in(value: float, band: tuple[float, float]) -> bool:
    return bool(band[0] <= value <= band[1])


# ---------------------------------------------------------------------------------------------- volume

def check_volume(hu, affine, where: str) -> tuple[np.ndarray, np.ndarray, dict]:
    """Shape, affine, spacing and finite values: ``(hu float32, affine, {flag: note})`` or ``ScanError``."""
    hu = np.asarray(hu)
    if hu.ndim > 3 and all(s == 1 for s in hu.shape[3:]):
        hu = hu.reshape(hu.shape[:3])  # NIfTI's (X, Y, Z, 1)
    if hu.ndim == 2 or (hu.ndim == 3 and min(hu.shape) < MIN_SLICES):
        raise ScanError(f"{where}: a 2-D image (shape {hu.shape}); expected a 3-D volume of at least "
                        f"{MIN_SLICES} slices along each axis")
    if hu.ndim != 3:
        raise ScanError(f"{where}: a {hu.ndim}-D image (shape {hu.shape}); expected one 3-D volume")
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)):
        raise ScanError(f"{where}: the affine must be a finite 4x4 matrix, got {affine.tolist()}")
    zooms = np.linalg.norm(affine[:3, :3], axis=0)
    if np.any(zooms < 1e-6) or abs(np.linalg.det(affine[:3, :3])) < 1e-9:
        raise ScanError(f"{where}: zero voxel spacing {zooms.round(4).tolist()} (singular affine)")
    if np.any(zooms < MIN_SPACING_MM) or np.any(zooms > MAX_SPACING_MM):
        raise ScanError(f"{where}: voxel spacing {[float(f'{z:.4g}') for z in zooms]} mm is outside "
                        f"{MIN_SPACING_MM:g}-{MAX_SPACING_MM:g} mm: not a CT grid in millimetres (a unit error?)")
    hu = np.asarray(hu, dtype=np.float32)
    bad = ~np.isfinite(hu)
    if bad.any():
        raise ScanError(f"{where}: {int(bad.sum())} NaN or infinite voxel value(s)")

    found = {}
    axes = affine[:3, :3] / zooms
    cosines = np.abs(axes.T @ axes - np.eye(3)).max()
    shear_deg = float(np.degrees(np.arcsin(min(cosines, 1.0))))
    if shear_deg > TILT_MIN_DEG:
        found["sheared_affine"] = f"voxel axes {shear_deg:.2f}° from perpendicular"
    extent = zooms * np.asarray(hu.shape)
    if extent.min() < HEAD_MIN_EXTENT_MM:
        found["partial_coverage"] = (f"extent {[round(float(e)) for e in extent]} mm, less than "
                                     f"{HEAD_MIN_EXTENT_MM:g} mm along an axis")
    return hu, affine, found


def _sample(x: np.ndarray) -> np.ndarray:
    """A strided view of at most about ``STATS_VOXELS`` voxels (percentiles stay fast on 512² scans)."""
    step = max(1, int(np.ceil((x.size / STATS_VOXELS) ** (1 / 3))))
    return x[::step, ::step, ::step]


def hu_levels(hu: np.ndarray) -> tuple[float, float]:
    """``(background, centre)``: the 1st percentile of the voxels above padding, the median of the centre."""
    sample = _sample(hu)
    tissue = sample[sample >= PADDING_BELOW_HU]
    background = float(np.percentile(tissue, LOW_PERCENTILE)) if tissue.size else float("nan")
    box = tuple(slice(int(n * (1 - CENTRE_FRACTION) / 2), max(int(n * (1 - CENTRE_FRACTION) / 2) + 1,
                                                             int(np.ceil(n * (1 + CENTRE_FRACTION) / 2))))
                for n in hu.shape)
    centre = float(np.median(_sample(hu[box])))
    return background, centre


def check_hu(hu: np.ndarray, where: str, *, intercept: float | None = None, intercept_from: str = ""):
    """The Hounsfield scale: ``(hu, {flag: note})`` with the +1024 offset repaired, or ``ScanError``.

    ``intercept`` is the rescale intercept the values were decoded with (``None`` when unknown). A
    volume whose air sits at +24 and whose centre at brain + 1024 was stored as HU + 1024: with
    intercept 0 that is the known storage error (repaired), with any other intercept it is refused
    (``intercept_from`` says where that intercept came from, for the message).
    """
    background, centre = hu_levels(hu)
    found = {}
    if (_in(background - STORAGE_OFFSET_HU, AIR_BAND) and _in(centre - STORAGE_OFFSET_HU, SOFT_TISSUE_BAND)
            and not _in(centre, SOFT_TISSUE_BAND)):
        what = f"air at {background:+.0f} HU and the centre at {centre:.0f} HU: stored as HU + 1024"
        if intercept not in (None, 0):
            raise ScanError(f"{where}: {what}, but decoded with intercept {intercept:g}{intercept_from}: not "
                            "the known storage error (intercept 0), refused")
        hu = hu - np.float32(STORAGE_OFFSET_HU)
        background, centre = background - STORAGE_OFFSET_HU, centre - STORAGE_OFFSET_HU
        found["hu_offset_repaired"] = f"{what} with intercept 0; 1024 subtracted"
    if float(hu.max()) <= HEAD_MIN_HU:
        raise ScanError(f"{where}: no voxel above {HEAD_MIN_HU:g} HU (an empty or non-CT image?)")
    if not AIR_BAND[0] <= centre <= BONE_MAX_HU:
        raise ScanError(f"{where}: the centre of the volume is at {centre:.0f} HU, outside anything CT "
                        f"measures (air {AIR_HU:g} to bone {BONE_MAX_HU:g} HU): not a volume in HU")
    if not background <= AIR_BAND[1]:
        low, high = np.percentile(_sample(hu), [LOW_PERCENTILE, 99])
        span = float(high - low)
        if span < HU_MIN_SPAN:
            raise ScanError(f"{where}: no air, and its values span only {span:.3g} from the 1st to the 99th "
                            f"percentile (a CT's noise alone spans more than {HU_MIN_SPAN:g} HU): not in HU (scaled "
                            "to [0, 1], z-scored or attenuation values?); export the scan in Hounsfield units")
        found["hu_no_air"] = f"background at {background:.0f} HU; air is {AIR_HU:g}"
    if not _in(centre, SOFT_TISSUE_BAND):
        found["hu_brain_implausible"] = f"the centre at {centre:.0f} HU; brain is 20-45"
    return hu, found


def check_scan(hu, affine, where: str, *, intercept: float | None = None, flags=(),
               meta: dict | None = None) -> CheckedScan:
    """Every volume check on a loaded scan; ``flags`` found earlier (the DICOM series checks) are kept."""
    earlier = dict(flags) if isinstance(flags, dict) else {name: FLAGS[name] for name in flags}
    hu, affine, geometry = check_volume(hu, affine, where)
    rsna = " (set by the RSNA 12-bit repair, which wraps HU above 2071)" if "rsna_intercept_repaired" in earlier else ""
    hu, scale = check_hu(hu, where, intercept=intercept, intercept_from=rsna)
    return CheckedScan(hu=hu, affine=affine, notes={**earlier, **scale, **geometry}, meta=dict(meta or {}))


# --------------------------------------------------------------------------------------- DICOM series

def slice_plane(normal) -> str:
    """``axial``, ``coronal`` or ``sagittal``: the plane nearest to slices with this normal (LPS or RAS alike)."""
    return ("sagittal", "coronal", "axial")[int(np.argmax(np.abs(np.asarray(normal, dtype=float))))]


def describe_orientation(normal) -> str:
    """``axial``, ``coronal``, ``sagittal`` or ``at 25° from axial`` for a slice normal (LPS)."""
    normal = np.asarray(normal, dtype=float) / np.linalg.norm(normal)
    axis = int(np.argmax(np.abs(normal)))
    name = ("sagittal", "coronal", "axial")[axis]
    angle = float(np.degrees(np.arccos(min(1.0, abs(normal[axis])))))
    return name if angle < 0.5 else f"at {angle:.0f}° from {name}"


def _normal(iop: np.ndarray) -> np.ndarray:
    return np.cross(iop[:3] / np.linalg.norm(iop[:3]), iop[3:] / np.linalg.norm(iop[3:]))


def check_orientations(iops, positions, where: str) -> tuple[list[bool], int]:
    """Which slices form the series' one stack: ``(keep, n_scouts)``, or ``ScanError`` for two stacks.

    Slices are grouped by ImageOrientationPatient. A group at two or more positions along its normal
    is a stack; a group at one position is a scout (a localizer without ``ImageType``, as in RSNA
    files) and is dropped. Two stacks (e.g. 6 axial slices and 5 at 25°) are refused, naming both:
    keeping one would drop the other in silence.
    """
    groups: list[tuple[np.ndarray, list[int]]] = []
    for i, iop in enumerate(np.asarray(iops, dtype=float)):
        for rep, members in groups:
            if np.allclose(iop, rep, atol=ORIENTATION_ATOL):
                members.append(i)
                break
        else:
            groups.append((iop, [i]))
    positions = np.asarray(positions, dtype=float)
    stacks = []
    for rep, members in groups:
        depth = np.sort(positions[members] @ _normal(rep))
        if (np.diff(depth) > DUPLICATE_MM).any():
            stacks.append((rep, members))
    if len(stacks) > 1:
        stacks.sort(key=lambda g: -len(g[1]))
        parts = " and ".join(f"{len(m)} slices {describe_orientation(_normal(r))}" for r, m in stacks)
        raise ScanError(f"{where}: {len(stacks)} orientations in one series: {parts}; refused rather than "
                        "keep one stack and drop the others")
    members = set((stacks[0] if stacks else max(groups, key=lambda g: len(g[1])))[1])
    keep = [i in members for i in range(len(positions))]
    return keep, len(keep) - len(members)


def slice_steps(depth: np.ndarray) -> tuple[float, np.ndarray, np.ndarray, bool]:
    """Steps between sorted, distinct slice positions: ``(median step, steps, gaps, uneven)``.

    A gap is a step above ``GAP_FACTOR`` times the median; ``uneven`` is any other step off the median.
    """
    steps = np.diff(np.asarray(depth, dtype=float))
    step = float(np.median(steps))
    gaps = steps > GAP_FACTOR * step
    uneven = not np.allclose(steps[~gaps], step, rtol=STEP_RTOL, atol=STEP_ATOL_MM)
    return step, steps, gaps, uneven

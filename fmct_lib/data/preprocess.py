"""Preprocessing: one head CT in Hounsfield units to the encoder's input (paper Methods; DESIGN §4).

Named presets (``PRESETS``), one :class:`PreprocessSpec` each:

- ``paper``: reorient to RAS → resample to 1 mm isotropic with cubic splines → pad/crop to a 224³
  canvas centred on the head → (at model time) centre crop 192³ → windows (level, width) (40, 80),
  (80, 200), (600, 2800), each clipped and scaled to [0, 1] as channels → resize to 96³.
- ``reference``: the authors' training chain (reference_code_facts §5.2): RAS → 1 mm cubic → crop to
  the bounding box of HU > 0 → windows → resize to 96³ without keeping the aspect ratio → float16.
  For feeding the released weights the inputs they were trained on.
- ``ctfm``, ``merlin``: the chains the other CT foundation models were trained on, one channel each (paper,
  Methods "Baseline comparisons": "original preprocessing pipelines from the respective code repository
  were used for Merlin and CT-FM"); ``models.external`` feeds them to those models.

The chain runs in two stages, because the first is the expensive part and the second belongs on the
training device (DESIGN §4, "augment where the model runs"):

1. :func:`to_canvas` (cache builder, CPU workers): orientation, resampling and canvas, stored as int16
   HU (``paper``) or as the final float16 window stack (``reference``).
2. :func:`model_input` (any device, batched): crop, windows, resize.

Resampling is what MONAI's ``Spacing(mode=3)`` computes (SciPy's order-3 spline with the ``nearest``
boundary, output grid from MONAI's ``compute_shape_offset``), done separably: along each axis the spline
interpolation is a fixed linear map, built once with SciPy (``map_coordinates`` of an identity matrix,
so prefilter and boundary are exactly SciPy's), then applied to the volume as banded matrix products.
Orientation flips are folded into those matrices, so the full-resolution scan is never copied.
"""
from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .checks import REPAIRS, SFORM_QFORM_ATOL_MM, CheckedScan, ScanError, ScanRepaired, check_scan, check_volume

__all__ = [
    "AIR_HU", "CHAIN_VERSION", "HEAD_HU", "PAPER_WINDOWS", "PreprocessError", "PreprocessSpec", "paper_spec",
    "reference_spec", "ctfm_spec", "merlin_spec", "PRESETS", "preset_spec",
    "load_checked", "load_volume", "resample", "place_on_canvas", "to_canvas", "to_canvas_with_affine", "apply_windows",
    "model_input", "preprocess",
]

AIR_HU = -1024
PAPER_WINDOWS = ((40.0, 80.0), (80.0, 200.0), (600.0, 2800.0))  # (level, width), paper Methods
# The head's bounding box for centring the canvas: voxels above the lowest window edge (600 − 2800/2).
# Outside it every window is 0, so whether a scan's voxels there are kept or blanked to air cannot
# change the model input; air (−1000 ± noise) stays out, scalp, hair and partial volume stay in.
HEAD_HU = -800.0
# The version of the chain's code. Bump it when a change alters what a spec computes (the resampling, the canvas,
# the windows, the resize): the spec's hash and cache key change with it, so no cache folder, frozen feature or
# downstream run made by the old code is read again (pretraining runs and releases record the spec's fields only:
# pretrain afresh after a bump). Version 1 is not written into the digests (the caches and
# runs made before the version existed keep their names). tests/test_preprocess.py compares the chain's output
# with the one version 1 computed and fails, asking for the bump, when they differ.
CHAIN_VERSION = 1


class PreprocessError(ScanError):
    """A scan that cannot be preprocessed; the message names the file and the problem."""


@dataclass(frozen=True)
class PreprocessSpec:
    """One complete description of the chain; its :attr:`hash` names the cache folder.

    ``canvas`` set (``paper``): the resampled volume is padded with air or cropped to ``canvas``³,
    centred on the bounding box of ``HU > foreground_hu`` (the head); the model sees a centre crop of
    ``eval_crop``³ resized to ``input_size``³.
    ``canvas`` None (``reference``): the volume is cropped to that bounding box and resized to
    ``input_size``³ (aspect ratio not kept).
    ``dtype`` is the stored (cached) dtype; the model input is always float32.
    """

    name: str
    orientation: str = "RAS"
    spacing: float = 1.0                # isotropic target spacing, mm
    interp_order: int = 3               # spline order of the resampling (3 = cubic)
    foreground_hu: float = HEAD_HU      # head bounding box: voxels above this HU
    windows: tuple[tuple[float, float], ...] = PAPER_WINDOWS
    canvas: int | None = 224
    eval_crop: int | None = 192
    input_size: int = 96
    resize_mode: str = "area"           # torch interpolate mode of the final resize (MONAI Resize default)
    dtype: str = "int16"

    def __post_init__(self):
        # normalise so that equal chains hash equally whatever the number types (and JSON round trips)
        object.__setattr__(self, "spacing", float(self.spacing))
        object.__setattr__(self, "foreground_hu", float(self.foreground_hu))
        object.__setattr__(self, "windows", tuple((float(lv), float(w)) for lv, w in self.windows))
        if self.spacing <= 0:
            raise ValueError(f"spacing must be positive, got {self.spacing}")
        if not 0 <= self.interp_order <= 5:
            raise ValueError(f"interp_order must be a spline order 0..5, got {self.interp_order}")
        if any(w <= 0 for _, w in self.windows):
            raise ValueError(f"window widths must be positive: {self.windows}")
        if self.dtype not in ("int16", "float16", "float32"):
            raise ValueError(f"dtype must be int16, float16 or float32, got {self.dtype!r}")
        if self.canvas is not None:
            if self.eval_crop is None or not 0 < self.eval_crop <= self.canvas:
                raise ValueError(f"eval_crop must be in 1..canvas={self.canvas}, got {self.eval_crop}")
            if self.dtype != "int16":
                raise ValueError("a canvas stores HU: dtype must be int16")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["windows"] = [list(w) for w in self.windows]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "PreprocessSpec":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown PreprocessSpec fields {sorted(unknown)}")
        return cls(**d)

    @property
    def hash(self) -> str:
        """12 hex characters of SHA-256 over the canonical JSON of the fields and the chain's code version
        (``CHAIN_VERSION``, from 2 on): stable across runs and machines."""
        return _digest(_with_chain_version(self.to_dict()))

    def stored(self) -> dict:
        """The fields that decide what the cache stores, and the chain's code version (from 2 on). A canvas chain
        caches HU canvases and applies its windows, evaluation crop and resize when a volume is read, so those are
        left out; a chain without a canvas caches its final window stack, so every field counts."""
        d = self.to_dict()
        if self.canvas is not None:
            for field in ("windows", "eval_crop", "input_size", "resize_mode"):
                d.pop(field)
        return _with_chain_version(d)

    @property
    def cache_key(self) -> str:
        """The cache folder's name (``data.cache``): the digest of :meth:`stored`. Chains that differ only in what
        is applied on reading share one cache (Supp. Fig. 2's 33³ input reads the canvases of the 32³ input)."""
        return _digest(self.stored())


def _with_chain_version(fields: dict) -> dict:
    return fields if CHAIN_VERSION == 1 else {**fields, "chain_version": CHAIN_VERSION}


def _digest(fields: dict) -> str:
    return hashlib.sha256(json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:12]


def paper_spec(profile="paper") -> PreprocessSpec:
    """The paper's chain at a profile's geometry (spacing, canvas, eval crop, input size; DESIGN §5)."""
    from ..config import get_profile
    p = get_profile(profile)
    return PreprocessSpec(name="paper", spacing=p.spacing_mm, canvas=p.canvas, eval_crop=p.eval_crop,
                          input_size=p.input_size, foreground_hu=HEAD_HU, dtype="int16")


def reference_spec(profile="paper") -> PreprocessSpec:
    """The authors' training chain (reference_code_facts §5.2): bbox of HU > 0, stretch to S³, float16."""
    from ..config import get_profile
    p = get_profile(profile)
    return PreprocessSpec(name="reference", spacing=p.spacing_mm, canvas=None, eval_crop=None,
                          input_size=p.input_size, foreground_hu=0.0, dtype="float16")


def ctfm_spec(profile="paper") -> PreprocessSpec:
    """CT-FM's chain (Pai et al. 2025; ``experiments/fm`` of project-lighter/CT-FM) as near as a ``PreprocessSpec``
    allows, at a profile's geometry: SPL orientation, HU window [−1024, 2048] → [0, 1] (one channel), crop to
    the foreground (HU > 0), resize to the profile's input size, float16. Its pretraining voxels were
    3 × 1 × 1 mm (S, P, L): isotropic at the in-plane 1 mm here, scaled as the profile scales the paper's."""
    from ..config import get_profile
    p = get_profile(profile)
    return PreprocessSpec(name="ctfm", orientation="SPL", spacing=p.spacing_mm, interp_order=1, foreground_hu=0.0,
                          windows=((512.0, 3072.0),), canvas=None, eval_crop=None, input_size=p.input_size,
                          dtype="float16")


def merlin_spec(profile="paper") -> PreprocessSpec:
    """Merlin's chain (Blankemeier et al. 2024; ``merlin/data/monai_transforms.py``) as near as a
    ``PreprocessSpec`` allows: RAS, HU [−1000, 1000] → [0, 1] (one channel), a 224³ canvas at 1.5 mm (Merlin:
    224 × 224 × 160 at 1.5 × 1.5 × 3 mm), the whole canvas as the input. A coarser profile keeps the 336 mm
    field of view: its voxels grow as the profile's spacing grows from the paper's 1 mm."""
    from ..config import get_profile
    p = get_profile(profile)
    scale = p.spacing_mm / get_profile("paper").spacing_mm
    side = round(224 / scale)
    return PreprocessSpec(name="merlin", orientation="RAS", spacing=1.5 * scale, interp_order=1,
                          windows=((0.0, 2000.0),), canvas=side, eval_crop=side, input_size=side, dtype="int16")


PRESETS = {"paper": paper_spec, "reference": reference_spec, "ctfm": ctfm_spec, "merlin": merlin_spec}


def preset_spec(preset: str, profile="paper") -> PreprocessSpec:
    """The named preprocessing preset (``PRESETS``: ``paper``, ``reference``, ``ctfm``, ``merlin``) at a
    profile's geometry."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preprocessing preset {preset!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[preset](profile)


# ---------------------------------------------------------------------------------------------------
# loading and checks: the one loader ingestion and preprocessing share


def load_checked(src, affine=None, *, on_gap: str = "flag", tilt: str = "resample",
                 on_bad_file: str = "reject") -> CheckedScan:
    """Read a scan and run every check on it (``checks.check_scan``): the one loader of truth.

    ``src`` is a NIfTI path, a DICOM series (a folder, or a list of its files), or an array (numpy or
    torch) given with its 4x4 voxel-to-RAS-mm ``affine``. Returns the HU volume (float32, repaired where
    a known storage error was found), its affine, its flags with their reasons, and the DICOM header
    facts (``meta``). Raises :class:`PreprocessError` naming the file and the problem. ``on_gap``,
    ``tilt`` and ``on_bad_file`` go to ``dicom.read_dicom_series``.
    """
    meta: dict = {}
    if isinstance(src, (str, os.PathLike)):
        path = Path(src)
        if path.is_dir():
            hu, affine, meta = _read_dicom(path, on_gap=on_gap, tilt=tilt, on_bad_file=on_bad_file)
        elif path.is_file():
            hu, affine, meta = _read_nifti(path)
        else:
            raise PreprocessError(f"{path}: no such file or folder")
        where = str(path)
    elif isinstance(src, (list, tuple)) and src and all(isinstance(f, (str, os.PathLike)) for f in src):
        hu, affine, meta = _read_dicom(src, on_gap=on_gap, tilt=tilt, on_bad_file=on_bad_file)
        where = meta["source"]
    else:
        if affine is None:
            raise PreprocessError("an array needs its 4x4 affine (voxel to RAS mm)")
        hu = src.detach().cpu().numpy() if isinstance(src, torch.Tensor) else np.asarray(src)
        where = f"array of shape {hu.shape}"
    try:
        return check_scan(hu, affine, where, intercept=meta.get("rescale_intercept"),
                          flags=meta.get("flags", ()), meta=meta)
    except ScanError as e:
        raise PreprocessError(str(e)) from e


def load_volume(src, affine=None) -> tuple[np.ndarray, np.ndarray]:
    """Read a scan as (HU float32 3-D array, 4x4 voxel-to-RAS-mm affine), checked by :func:`load_checked`.

    A repair (``hu_offset_repaired``...) is applied and announced with a ``ScanRepaired`` warning naming
    the file; the flags are what ingestion records in ``scans.csv`` (``load_checked`` returns them).
    """
    scan = load_checked(src, affine)
    where = str(src) if isinstance(src, (str, os.PathLike)) else "scan"
    for name in scan.flags:
        if name in REPAIRS:
            warnings.warn(f"{where}: {name}: {scan.notes[name]}", ScanRepaired, stacklevel=2)
    return scan.hu, scan.affine


def load_label_map(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a NIfTI label map (a lesion mask: small integers, not HU) as (float32 3-D array, affine), with the
    geometry checks of a scan (``checks.check_volume``) and none of its HU checks."""
    path = Path(path)
    labels, affine, _ = _read_nifti(path)
    try:
        labels, affine, _ = check_volume(labels, affine, str(path))
    except ScanError as e:
        raise PreprocessError(str(e)) from e
    return labels, affine


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    import nibabel as nib
    from nibabel.openers import ImageOpener
    if path.stat().st_size == 0:
        raise PreprocessError(f"{path}: empty file (0 bytes), not a NIfTI image")
    try:
        with ImageOpener(str(path)) as f:
            raw = nib.Nifti1Header.from_fileobj(f, check=False)  # before nibabel "fixes" pixdim
        pixdim = np.asarray(raw["pixdim"][1:min(4, int(raw["dim"][0]) + 1)], dtype=float)
        img = nib.load(str(path))
        hu = np.asarray(img.dataobj, dtype=np.float32)
        intercept = img.header.get_slope_inter()[1]
    except Exception as e:  # noqa: BLE001 - truncated gzip, bad header, not a NIfTI: always name the file
        kind = "truncated or corrupt gzip" if path.name.endswith(".gz") else "unreadable NIfTI"
        raise PreprocessError(f"{path}: {kind} ({type(e).__name__}: {e})") from e
    if np.any(pixdim <= 0) or not np.all(np.isfinite(pixdim)):
        raise PreprocessError(f"{path}: voxel spacing (pixdim) {pixdim.tolist()} must be positive")
    meta = {"rescale_intercept": None if intercept is None or not np.isfinite(intercept) else float(intercept),
            "flags": _nifti_orientation(img, path)}
    return hu, np.asarray(img.affine, dtype=np.float64), meta


def _nifti_orientation(img, path: Path) -> dict:
    """The sform/qform check: refused without either (codes 0) or when they give different axis directions
    (a left-right flip: which one is right is unknown); flagged ``sform_qform_differ`` when they differ otherwise
    (nibabel, and so fmct, uses the sform)."""
    import nibabel as nib
    sform, s_code = img.get_sform(coded=True)
    qform, q_code = img.get_qform(coded=True)
    if not s_code and not q_code:
        raise PreprocessError(f"{path}: no orientation (sform_code and qform_code are both 0): which side is left "
                              "is unknown; refused. Set the sform or the qform of the file (e.g. with nibabel)")
    if not (s_code and q_code):
        return {}
    s_axes, q_axes = "".join(nib.aff2axcodes(sform)), "".join(nib.aff2axcodes(qform))
    if s_axes != q_axes:
        raise PreprocessError(f"{path}: the sform ({s_axes}) and the qform ({q_axes}) give different orientations: "
                              "which one is right is unknown; refused")
    differ = float(np.abs(sform[:3] - qform[:3]).max())
    if differ > SFORM_QFORM_ATOL_MM:
        return {"sform_qform_differ": f"sform and qform differ by up to {differ:.3g} mm per voxel or in the "
                                      f"origin (both {s_axes}); the sform is used"}
    return {}


def _read_dicom(src, **options) -> tuple[np.ndarray, np.ndarray, dict]:
    if isinstance(src, Path) and not any(p.is_file() for p in src.rglob("*")):
        raise PreprocessError(f"{src}: empty folder, no DICOM files to read")
    from .dicom import read_dicom_series
    try:
        series = read_dicom_series(src, **options)
    except Exception as e:  # the reader's own errors, re-raised with the folder named
        named = not isinstance(src, Path) or str(src) in str(e)  # a file list's label is in the message
        raise PreprocessError(str(e) if named else f"{src}: {e}") from e
    return np.asarray(series.hu, dtype=np.float32), np.asarray(series.affine, dtype=np.float64), series.meta


# ---------------------------------------------------------------------------------------------------
# stage 1: orientation, resampling, canvas


def _spline_matrix(n_in: int, step: float, order: int) -> np.ndarray:
    """(n_out, n_in) matrix of SciPy's order-``order`` spline resampling of one axis by ``step`` voxels.

    Output voxel k sits at input index k·step, n_out = round((n_in − 1) / step + 1) (NumPy's
    half-to-even rounding): MONAI's ``compute_shape_offset`` grid. Built by interpolating an identity
    matrix, so the spline prefilter and the ``nearest`` boundary are SciPy's own.
    """
    from scipy import ndimage
    n_out = int(np.round((n_in - 1) / step + 1.0))
    rows, cols = np.meshgrid(np.arange(n_out) * step, np.arange(n_in), indexing="ij")
    m = ndimage.map_coordinates(np.eye(n_in), [rows.ravel(), cols.ravel()], order=order, mode="nearest")
    return m.reshape(n_out, n_in)


def _banded_blocks(m: np.ndarray, rows_per_block: int = 32, tol: float = 1e-7):
    """Split a banded matrix into row blocks, each with the column range holding its weights > tol."""
    blocks = []
    for r0 in range(0, m.shape[0], rows_per_block):
        r1 = min(r0 + rows_per_block, m.shape[0])
        cols = np.flatnonzero(np.abs(m[r0:r1]).max(axis=0) > tol)
        c0, c1 = (int(cols[0]), int(cols[-1]) + 1) if cols.size else (0, 1)
        blocks.append((r0, r1, c0, c1, m[r0:r1, c0:c1]))
    return blocks


def _resample_axis(x: torch.Tensor, axis: int, m: np.ndarray) -> torch.Tensor:
    """``m`` applied along ``axis`` of a contiguous tensor as block-banded matrix products, no transposes."""
    shape = x.shape
    before, after = int(np.prod(shape[:axis])), int(np.prod(shape[axis + 1:]))
    x3 = x.reshape(before, shape[axis], after)
    blocks = _banded_blocks(m)
    if sum((r1 - r0) * (c1 - c0) for r0, r1, c0, c1, _ in blocks) > 0.5 * m.size:
        blocks = [(0, m.shape[0], 0, m.shape[1], m)]  # barely banded (e.g. few thick slices): one product
    out = x.new_empty((before, m.shape[0], after))
    for r0, r1, c0, c1, w in blocks:
        w = torch.as_tensor(w, dtype=x.dtype, device=x.device)
        if after == 1:  # last axis: rows of x times w.T
            out[:, r0:r1, 0] = x3[:, c0:c1, 0] @ w.T
        else:
            out[:, r0:r1, :] = torch.matmul(w, x3[:, c0:c1, :])
    return out.reshape(*shape[:axis], m.shape[0], *shape[axis + 1:])


def resample(hu, affine, spec: PreprocessSpec) -> tuple[torch.Tensor, np.ndarray]:
    """Reorient to ``spec.orientation`` and resample to ``spec.spacing`` mm: (float32 tensor, affine).

    Equals MONAI ``Orientation`` + ``Spacing(pixdim=spacing, mode=interp_order)`` (padding "border"),
    computed as three banded matrix products along the axes, the most-shrinking axis first. An oblique
    or sheared grid keeps its direction, as with MONAI's ``Spacing(diagonal=False)``; gantry tilt is
    resolved at ingestion. Runs on the device of ``hu`` when it is a tensor. The result may be a
    permuted (non-contiguous) view.
    """
    from nibabel import orientations as nio
    if not isinstance(hu, torch.Tensor) and min(np.asarray(hu).strides) <= 0:
        hu = np.ascontiguousarray(hu)
    x = torch.as_tensor(hu).float()
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nio.ornt_transform(nio.io_orientation(affine), nio.axcodes2ornt(tuple(spec.orientation)))
    out_affine = affine @ nio.inv_ornt_aff(ornt, x.shape)
    zooms = np.linalg.norm(out_affine[:3, :3], axis=0)
    steps = spec.spacing / zooms  # per output axis, in input voxels
    # axes in memory order, slowest first: a free view for C- or Fortran-ordered (nibabel) input
    memory_order = sorted(range(3), key=lambda a: -x.stride(a))
    x = x.permute(memory_order).contiguous()
    targets = [int(ornt[a, 0]) for a in memory_order]   # output axis of each tensor axis
    flips = [bool(ornt[a, 1] < 0) for a in memory_order]
    for axis in sorted(range(3), key=lambda k: -steps[targets[k]]):
        m = _spline_matrix(x.shape[axis], steps[targets[axis]], spec.interp_order)
        x = _resample_axis(x, axis, np.ascontiguousarray(m[:, ::-1]) if flips[axis] else m)
    out_affine = out_affine.copy()
    out_affine[:3, :3] = out_affine[:3, :3] * (spec.spacing / zooms)
    return x.permute([targets.index(j) for j in range(3)]), out_affine


def _bbox(x: torch.Tensor, threshold: float, where: str = "scan") -> list[tuple[int, int]]:
    """Inclusive (lo, hi) per axis of the voxels above ``threshold``."""
    mask = x > threshold
    plane = mask.any(dim=2)
    profiles = [plane.any(dim=1), plane.any(dim=0), mask.any(dim=1).any(dim=0)]
    box = []
    for hit in profiles:
        idx = torch.nonzero(hit).flatten()
        if idx.numel() == 0:
            raise PreprocessError(f"{where}: no voxel above {threshold:g} HU (an empty or non-CT image?)")
        box.append((int(idx[0]), int(idx[-1])))
    return box


def place_on_canvas(x: torch.Tensor, affine: np.ndarray, spec: PreprocessSpec,
                    where: str = "scan") -> tuple[torch.Tensor, np.ndarray]:
    """Pad with air / crop to ``spec.canvas``³, centred on the head's bounding box: (int16, affine).

    The head is the bounding box of HU > ``spec.foreground_hu``. The canvas is centred on it exactly
    as MONAI's ``CropForeground`` + ``ResizeWithPadOrCrop`` would (a longer side is cropped from
    ``m//2 − c//2``, a shorter one padded by ``(c − m)//2`` before), except that the scan's voxels
    outside the box are kept rather than blanked (with ``HEAD_HU`` this changes no model input).
    """
    c = spec.canvas
    starts = []
    for lo, hi in _bbox(x, spec.foreground_hu, where):
        m = hi - lo + 1
        starts.append(lo + m // 2 - c // 2 if m >= c else lo - (c - m) // 2)
    canvas = torch.full((c, c, c), AIR_HU, dtype=torch.int16, device=x.device)
    src, dst = [], []
    for s, n in zip(starts, x.shape):
        a, b = max(s, 0), min(s + c, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - s, a - s + max(0, b - a)))
    canvas[tuple(dst)] = x[tuple(src)].round().clamp_(-32768, 32767)
    canvas_affine = affine.copy()
    canvas_affine[:3, 3] = affine[:3, :3] @ np.asarray(starts, dtype=float) + affine[:3, 3]
    return canvas, canvas_affine


def to_canvas_with_affine(hu, affine, spec: PreprocessSpec,
                          where: str = "scan") -> tuple[torch.Tensor, np.ndarray]:
    """:func:`to_canvas` and the voxel-to-RAS (mm) affine of its output grid."""
    x, res_affine = resample(hu, affine, spec)
    if spec.canvas is not None:
        return place_on_canvas(x, res_affine, spec, where)
    box = _bbox(x, spec.foreground_hu, where)
    stack = apply_windows(x[tuple(slice(lo, hi + 1) for lo, hi in box)], spec.windows)
    size = spec.input_size
    out = F.interpolate(stack[None], size=(size,) * 3, mode=spec.resize_mode)[0]
    # output voxel k covers box voxels [k·m/S, (k+1)·m/S): its centre is at lo + (k + 0.5)·m/S − 0.5
    scale = np.array([(hi - lo + 1) / size for lo, hi in box])
    offset = np.array([lo for lo, _ in box]) + 0.5 * scale - 0.5
    out_affine = res_affine.copy()
    out_affine[:3, 3] = res_affine[:3, :3] @ offset + res_affine[:3, 3]
    out_affine[:3, :3] = res_affine[:3, :3] * scale
    return out.to(getattr(torch, spec.dtype)), out_affine


def to_canvas(hu, affine, spec: PreprocessSpec, where: str = "scan") -> torch.Tensor:
    """Stage 1, the cached form: int16 HU canvas (``paper``) or the final (K, S, S, S) stack (``reference``).

    ``reference``: crop to the bounding box of HU > 0 (reference_code_facts §5.2, table included),
    windows, then the resize to S³ without keeping the aspect ratio, stored as ``spec.dtype``.
    """
    return to_canvas_with_affine(hu, affine, spec, where)[0]


# ---------------------------------------------------------------------------------------------------
# stage 2: windows, crop, resize (batched, on the training device)


def apply_windows(hu: torch.Tensor, windows=PAPER_WINDOWS) -> torch.Tensor:
    """Window stack: (..., D, H, W) HU to (..., K, D, H, W) float32 in [0, 1].

    Window (level, width) maps [level − width/2, level + width/2] linearly to [0, 1] and clips
    (paper Methods; MONAI ``ScaleIntensityRange(clip=True)``).
    """
    hu = torch.as_tensor(hu)
    out = torch.empty((*hu.shape[:-3], len(windows), *hu.shape[-3:]), dtype=torch.float32, device=hu.device)
    for i, (level, width) in enumerate(windows):
        chan = out.select(-4, i)
        torch.sub(hu, level - width / 2, out=chan)  # int16 or float HU, no separate float copy
        chan.div_(width).clamp_(0.0, 1.0)
    return out


def model_input(canvas_batch: torch.Tensor, spec: PreprocessSpec) -> torch.Tensor:
    """Stage 2: cached canvases (B, C, C, C) to the encoder input (B, K, S, S, S) float32, K the windows.

    ``paper``: the centre ``eval_crop``³ crop (MONAI's ``CenterSpatialCrop``; fine-tuning augments with flips and
    an intensity shift only, Supplement B: ``downstream.training.augment_batch``), then windows, then the resize to
    ``input_size``³ (the paper's order: windows before the resize). ``reference``: the cached stack is already the
    input (cast only).
    """
    if spec.canvas is None:
        return canvas_batch.float()
    if canvas_batch.ndim == 3:
        canvas_batch = canvas_batch[None]
    c, k = canvas_batch.shape[-1], spec.eval_crop
    s = c // 2 - k // 2
    crops = canvas_batch[:, s:s + k, s:s + k, s:s + k]
    stack = apply_windows(crops, spec.windows)
    return F.interpolate(stack, size=(spec.input_size,) * 3, mode=spec.resize_mode)


def preprocess(src, spec: PreprocessSpec, affine=None) -> torch.Tensor:
    """The whole chain on one scan: (K, S, S, S) float32, K the windows (evaluation form, centre crop)."""
    hu, affine = load_volume(src, affine)
    where = str(src) if isinstance(src, (str, os.PathLike)) else "scan"
    return model_input(to_canvas(hu, affine, spec, where)[None], spec)[0]

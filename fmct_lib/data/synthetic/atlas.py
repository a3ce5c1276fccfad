"""Anatomy for the phantoms: fields derived from the MNI152 2009a templates inside the nilearn wheel.

The templates (``mni_icbm152_{t1,gm,wm}_tal_nlin_sym_09a_converted.nii.gz``, 1 mm, RAS, skull-stripped)
give grey- and white-matter probabilities. From them we derive, once per grid step, on a padded "head
grid" in MNI millimetres:

- ``gm``, ``wm``: tissue fractions (CSF is ``1 - gm - wm`` inside the brain);
- ``vent``: the lateral, third and fourth ventricles (deep CSF inside anatomical boxes);
- ``inner``: signed distance (mm) to a closed, hole-filled brain envelope, negative inside; the inner
  table of the skull is a level set of it;
- ``gap``: distance (mm) outside the real brain (fills the skull base below the envelope);
- ``vdist``: signed distance (mm) to the ventricles, used to inflate them (hydrocephalus, atrophy).

Building takes seconds at 3 mm and ~30 s at 1 mm, so the fields are cached as ``.npz`` in the user cache
directory (``$FMCT_CACHE_HOME``, default ``platformdirs.user_cache_dir("fmct")``, e.g. ``~/.cache/fmct``).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ...io import atomic_open

__all__ = ["Atlas", "GRID_MIN", "GRID_MAX", "load_atlas", "build_atlas", "atlas_cache_dir",
           "resample_axes", "upsample", "linear_weights"]

ATLAS_VERSION = 1                               # bump when the derivation below changes
GRID_MIN = np.array([-106.0, -132.0, -72.0])    # head grid corners, MNI mm (RAS)
GRID_MAX = np.array([106.0, 100.0, 104.0])
_MNI_ORIGIN = np.array([-98.0, -134.0, -72.0])  # world position of template voxel (0, 0, 0)
_FIELDS = ("gm", "wm", "vent", "inner", "gap", "vdist")

# Boxes (MNI mm, half-open) that contain the ventricular system; deep CSF inside them is ventricle.
_VENTRICLE_BOXES = {
    "lateral": dict(ax=(1.5, 22), y=(-55, 32), z=(-8, 34)),
    "temporal_horns": dict(ax=(20, 36), y=(-45, 2), z=(-30, 0)),
    "third": dict(ax=(0, 3), y=(-28, 2), z=(-8, 14)),
    "fourth": dict(ax=(0, 7), y=(-56, -36), z=(-42, -18)),
}


@dataclass(frozen=True)
class Atlas:
    """Anatomical fields on the head grid (float32, shape ``shape``, voxel (0,0,0) at ``GRID_MIN``)."""

    step: float
    gm: np.ndarray
    wm: np.ndarray
    vent: np.ndarray
    inner: np.ndarray
    gap: np.ndarray
    vdist: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        return self.gm.shape

    @property
    def affine(self) -> np.ndarray:
        aff = np.diag([self.step, self.step, self.step, 1.0])
        aff[:3, 3] = GRID_MIN
        return aff


def grid_shape(step: float) -> tuple[int, int, int]:
    return tuple(int(round(v)) + 1 for v in (GRID_MAX - GRID_MIN) / step)


def atlas_cache_dir() -> Path:
    """``$FMCT_CACHE_HOME`` or the platform's user cache directory for fmct (``paths.atlas_root``)."""
    from ...paths import atlas_root
    return atlas_root()


# ------------------------------------------------------------------------------------------ resampling

def linear_weights(positions: np.ndarray, n_in: int, outside_zero: bool) -> np.ndarray:
    """(len(positions), n_in) matrix of linear-interpolation weights at fractional ``positions``."""
    i0 = np.clip(np.floor(positions).astype(int), 0, max(n_in - 2, 0))
    frac = np.clip(positions - i0, 0.0, 1.0) if n_in > 1 else np.zeros_like(positions)
    mat = np.zeros((len(positions), n_in), np.float32)
    rows = np.arange(len(positions))
    mat[rows, i0] = 1 - frac
    if n_in > 1:
        mat[rows, i0 + 1] += frac
    if outside_zero:
        mat[(positions < -1e-6) | (positions > n_in - 1 + 1e-6)] = 0
    return mat


def resample_axes(a: np.ndarray, positions: list[np.ndarray], outside_zero: bool = True) -> np.ndarray:
    """Separable linear resampling: output index ``i`` along axis k reads input position ``positions[k][i]``.

    Three BLAS matrix products, far faster than ``map_coordinates`` for axis-aligned grids.
    """
    a = np.asarray(a, np.float32)
    m0, m1, m2 = (linear_weights(np.asarray(p, np.float64), n, outside_zero) for p, n in zip(positions, a.shape))
    out = (m0 @ a.reshape(a.shape[0], -1)).reshape(m0.shape[0], a.shape[1], a.shape[2])
    out = m1 @ out                      # broadcast over axis 0: (N0, N1, n2)
    return np.ascontiguousarray(out @ m2.T)


def upsample(a: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Trilinear resize mapping corner voxels onto corner voxels (for smooth, coarse fields)."""
    return resample_axes(a, [np.linspace(0, n_in - 1, n_out) for n_in, n_out in zip(a.shape, shape)],
                         outside_zero=False)


# ------------------------------------------------------------------------------------------ building

def _template_dir() -> Path:
    import nilearn
    return Path(nilearn.__file__).parent / "datasets" / "data"


def _load_template(kind: str) -> np.ndarray:
    import nibabel as nib
    path = _template_dir() / f"mni_icbm152_{kind}_tal_nlin_sym_09a_converted.nii.gz"
    if not path.exists():
        raise FileNotFoundError(f"{path}: MNI152 template not found; the nilearn wheel ships it "
                                "(pip install nilearn)")
    img = nib.load(path)
    if not np.allclose(img.affine[:3, 3], _MNI_ORIGIN) or not np.allclose(np.diag(img.affine)[:3], 1):
        raise ValueError(f"{path}: unexpected affine {img.affine.tolist()} (expected 1 mm RAS, origin "
                         f"{_MNI_ORIGIN.tolist()})")
    return np.asarray(img.dataobj, dtype=np.float32)


def _signed_distance(mask: np.ndarray, step: float) -> np.ndarray:
    """Euclidean signed distance in mm: negative inside ``mask``, positive outside."""
    return (ndi.distance_transform_edt(~mask, sampling=step)
            - ndi.distance_transform_edt(mask, sampling=step)).astype(np.float32)


def _ventricles(csf: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """Deep CSF (> 6 mm inside the brain) within the ventricle boxes, small specks removed (1 mm grid)."""
    depth = ndi.distance_transform_edt(brain)
    coords = np.ogrid[tuple(slice(0, n) for n in csf.shape)]
    x, y, z = (c + o for c, o in zip(coords, _MNI_ORIGIN))
    inside = np.zeros(csf.shape, bool)
    for box in _VENTRICLE_BOXES.values():
        inside |= ((np.abs(x) >= box["ax"][0]) & (np.abs(x) < box["ax"][1]) & (y > box["y"][0])
                   & (y < box["y"][1]) & (z > box["z"][0]) & (z < box["z"][1]))
    candidate = (csf > 0.5) & (depth > 6) & inside
    labels, n = ndi.label(candidate)
    sizes = ndi.sum(candidate, labels, np.arange(1, n + 1))
    return np.isin(labels, 1 + np.flatnonzero(sizes > 60)).astype(np.float32)


def build_atlas(step: float) -> Atlas:
    """Derive the fields from the templates and resample them onto the head grid at ``step`` mm."""
    t1, gm, wm = (_load_template(k) for k in ("t1", "gm", "wm"))
    gm, wm = gm / 255.0, wm / 255.0
    brain = t1 > 0
    vent = _ventricles(np.clip(1 - gm - wm, 0, 1) * brain, brain)
    vent = ndi.gaussian_filter(vent, 0.6)
    fields = [gm, wm, vent, brain.astype(np.float32)]
    if step > 1:   # anti-alias: the 1 mm voxel box widened to a `step` mm box
        sigma = np.sqrt((step ** 2 - 1) / 12.0)
        fields = [ndi.gaussian_filter(f, sigma) for f in fields]
    shape = grid_shape(step)
    positions = [GRID_MIN[k] + step * np.arange(shape[k]) - _MNI_ORIGIN[k] for k in range(3)]
    gm, wm, vent, brain_frac = (resample_axes(f, positions) for f in fields)

    # The inner table follows a closed, hole-filled envelope of the brain (bridges sulci and lobes).
    brain = brain_frac > 0.5
    radius = 7.0
    pad = int(np.ceil(radius / step)) + 2
    padded = np.pad(brain, pad)
    dilated = ndi.distance_transform_edt(~padded, sampling=step) <= radius
    closed = ndi.distance_transform_edt(dilated, sampling=step) > radius
    envelope = ndi.binary_fill_holes(closed[pad:-pad, pad:-pad, pad:-pad] | brain)
    for k in range(envelope.shape[2]):
        envelope[:, :, k] = ndi.binary_fill_holes(envelope[:, :, k])
    inner = ndi.gaussian_filter(_signed_distance(envelope, step), 1.0 / step)
    gap = ndi.distance_transform_edt(~brain, sampling=step).astype(np.float32)
    vdist = ndi.gaussian_filter(_signed_distance(vent > 0.5, step), 1.5 / step)
    return Atlas(step=float(step), gm=gm, wm=wm, vent=vent, inner=inner, gap=gap, vdist=vdist)


# ------------------------------------------------------------------------------------------ caching

def _cache_file(step: float) -> Path:
    return atlas_cache_dir() / f"mni152_atlas_v{ATLAS_VERSION}_{step:g}mm.npz"


@functools.lru_cache(maxsize=4)
def load_atlas(step: float = 1.0) -> Atlas:
    """The atlas at ``step`` mm: from memory, else from the disk cache, else built and cached (atomic)."""
    step = float(step)
    path = _cache_file(step)
    if path.exists():
        try:
            with np.load(path) as z:
                return Atlas(step=step, **{k: z[k].astype(np.float32) for k in _FIELDS})
        except (OSError, KeyError, ValueError) as err:   # a truncated or stale cache is rebuilt
            print(f"fmct: rebuilding atlas cache {path} ({err})")
    atlas = build_atlas(step)
    with atomic_open(path, "wb") as f:
        np.savez(f, **{k: getattr(atlas, k).astype(np.float16) for k in _FIELDS})
    # return what a later process will read, so in-process and cached results are identical
    return Atlas(step=step, **{k: getattr(atlas, k).astype(np.float16).astype(np.float32) for k in _FIELDS})

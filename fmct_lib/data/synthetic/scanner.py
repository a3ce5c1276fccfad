"""What a CT scanner makes of a phantom: kernel, slice profile, noise texture, HU offset, field of view.

Two "manufacturers" differ the way real vendors do, visibly enough to show up in embeddings:

- ``A``: a soft reconstruction kernel (Gaussian PSF), coarse, blotchy noise, no HU offset, 120/140 kVp,
  out-of-field padding -2000;
- ``B``: a sharp kernel (edge enhancement, overshoot at the tables), fine-grained noise, +4 HU offset in
  soft tissue, stronger cupping next to bone, 100/120 kVp, padding -3024.

Slices: each output slice averages the volume over a box of width ``slice_mm`` along z (the slice
sensitivity profile), slices are contiguous (spacing = thickness), so the affine's z voxel size is the
slice thickness (0.5-5 mm) while the in-plane spacing stays the phantom grid. Noise SD grows as
sqrt(5 mm / thickness) and as (120 kVp / kVp)^1.5; bone HU falls slightly with kVp.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .atlas import linear_weights

__all__ = ["Scanner", "SCANNERS", "acquire", "slice_profile_matrix"]


@dataclass(frozen=True)
class Scanner:
    name: str
    psf_mm: float          # in-plane Gaussian blur of the kernel
    sharpen: float         # unsharp-mask gain of the kernel (edge enhancement)
    noise_hu: float        # noise SD at 5 mm and 120 kVp
    grain: str             # "coarse" | "fine"
    hu_offset: float       # added to soft tissue
    cupping_hu: float      # beam-hardening rise next to bone
    padding_hu: float      # value outside the reconstruction circle
    kvps: tuple[int, ...]
    thickness_mm: tuple[float, ...]       # slice thicknesses this vendor's protocols use
    thickness_p: tuple[float, ...]


SCANNERS = {
    "A": Scanner("A", psf_mm=0.9, sharpen=0.0, noise_hu=3.0, grain="coarse", hu_offset=0.0,
                 cupping_hu=3.0, padding_hu=-2000.0, kvps=(120, 140),
                 thickness_mm=(5.0, 2.5, 1.25, 0.625), thickness_p=(0.5, 0.2, 0.2, 0.1)),
    "B": Scanner("B", psf_mm=0.5, sharpen=0.5, noise_hu=4.5, grain="fine", hu_offset=4.0,
                 cupping_hu=8.0, padding_hu=-3024.0, kvps=(100, 120),
                 thickness_mm=(5.0, 3.0, 1.0, 0.5), thickness_p=(0.45, 0.25, 0.2, 0.1)),
}


def slice_profile_matrix(n_in: int, step: float, slice_mm: float) -> np.ndarray:
    """(n_out, n_in) weights: output slice j averages the linear interpolant over a box of width
    ``slice_mm`` centred at ``j * slice_mm`` (z measured from the first input slice)."""
    n_out = int(np.floor((n_in - 1) * step / slice_mm + 1e-9)) + 1
    samples = max(1, int(np.ceil(4 * slice_mm / step)))
    offsets = (np.arange(samples) + 0.5) / samples - 0.5                  # within the box, in slices
    centres = np.arange(n_out) * slice_mm / step
    mat = np.zeros((n_out, n_in), np.float32)
    for o in offsets:
        pos = np.clip(centres + o * slice_mm / step, 0, n_in - 1)
        mat += linear_weights(pos, n_in, outside_zero=False)
    return mat / samples


def acquire(hu: np.ndarray, labels: np.ndarray, affine: np.ndarray, scanner: Scanner | str,
            slice_mm: float, kvp: int, rng: np.random.Generator, fov_mm: float = 250.0):
    """(int16 HU volume, uint8 label map, RAS affine with z voxel size ``slice_mm``)."""
    sc = SCANNERS[scanner] if isinstance(scanner, str) else scanner
    step = float(affine[0, 0])
    bone = hu > 300
    x = hu.copy()
    x[bone] = x[bone] * (1 + 0.003 * (120 - kvp))
    x = ndi.gaussian_filter(x, (sc.psf_mm / step, sc.psf_mm / step, 0))
    if sc.sharpen:
        soft = np.clip(x, -100, 200)            # edge enhancement with bounded overshoot at the tables
        x = x + sc.sharpen * (soft - ndi.gaussian_filter(soft, (1.0, 1.0, 0)))
    near_bone = ndi.uniform_filter(bone.astype(np.float32), max(3, int(round(8 / step))))
    x += sc.cupping_hu * np.clip(near_bone * 3, 0, 1) * (hu > -50) * (hu < 150)

    profile = slice_profile_matrix(hu.shape[2], step, slice_mm)
    x = np.tensordot(x, profile, axes=(2, 1))                      # (X, Y, n_out)
    # label of each output slice: the label nearest the slice centre, or a lesion anywhere in the slab
    nearest = labels[:, :, np.rint(np.arange(x.shape[2]) * slice_mm / step).astype(int).clip(0, hu.shape[2] - 1)]
    covered = np.tensordot((labels > 0) & (labels < 10), profile, axes=(2, 1)) >= 0.5
    lab_out = np.where(covered & ((nearest == 0) | (nearest >= 10)), _slab_max(labels, profile), nearest)
    # a lesion thinner than the slab spacing can fall between the sampled slices with less than half a slab's
    # coverage: it still is in the scan's labels, so it is kept where its slabs touch it (over background)
    drawn, kept = (np.bincount(v.ravel(), minlength=10)[1:10] > 0 for v in (labels, lab_out))
    for code in np.flatnonzero(drawn & ~kept) + 1:
        touched = np.tensordot(labels == code, profile, axes=(2, 1)) > 0
        lab_out[touched & ((lab_out == 0) | (lab_out >= 10))] = code

    noise = rng.standard_normal(x.shape).astype(np.float32)
    if sc.grain == "coarse":
        noise = ndi.gaussian_filter(noise, (max(1.2 / step, 0.7),) * 2 + (0,))
    else:
        noise = (ndi.gaussian_filter(noise, (0.3 / step,) * 2 + (0,))
                 - 0.7 * ndi.gaussian_filter(noise, (max(1.6 / step, 0.8),) * 2 + (0,)))
    noise *= sc.noise_hu * np.sqrt(5.0 / slice_mm) * (120.0 / kvp) ** 1.5 / (noise.std() + 1e-6)
    body = x > -500
    x = x + noise * body + sc.hu_offset * body * (x < 200)
    nx, ny = x.shape[:2]
    r = np.hypot((np.arange(nx)[:, None] - (nx - 1) / 2) * step, (np.arange(ny)[None, :] - (ny - 1) / 2) * step)
    x[r > fov_mm / 2] = sc.padding_hu
    lab_out[r > fov_mm / 2] = 0
    out_affine = affine.copy()
    out_affine[2, 2] = slice_mm
    return np.clip(np.rint(x), -3024, 3071).astype(np.int16), lab_out.astype(np.uint8), out_affine


def _slab_max(labels: np.ndarray, profile: np.ndarray) -> np.ndarray:
    """Largest lesion code among the input slices each output slab touches (codes < 10)."""
    lesion = np.where(labels < 10, labels, 0)
    out = np.zeros(labels.shape[:2] + (profile.shape[0],), np.uint8)
    for j in range(profile.shape[0]):
        touched = np.flatnonzero(profile[j] > 0)
        out[:, :, j] = lesion[:, :, touched].max(axis=2)
    return out

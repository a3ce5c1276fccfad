"""One subject: atlas anatomy, deformed and assembled into a noise-free HU volume with its lesions.

Steps (one backward map from each output voxel to the atlas, built on a 4 mm grid and upsampled):

1. geometry: random pose (pitch/roll/yaw, scale, shift) plus a smooth elastic field;
2. brain tissue additionally moves for ventricle enlargement (hydrocephalus, ADRD, age), atrophy (the
   brain shrinks inside a fixed skull) and the radial push of space-occupying lesions, which gives the
   midline shift (measured at the septum pellucidum);
3. HU: partial-volume mix of GM/WM/CSF, falx, benign calcifications, the lesions (``lesions.py``), then
   skull (tables and diploe, thickness varying), skull base, scalp, orbits and frontal sinus.

The result is on the head grid (``atlas.GRID_MIN``, isotropic ``step``); ``scanner.acquire`` turns it
into what a CT scanner writes.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .atlas import GRID_MIN, Atlas, load_atlas, upsample
from .lesions import (CONDITIONS, LABEL_CODES, VENTRICLE_CODE, Canvas, derive_labels, lesion_centres,
                      mass_effect_sources, paint_fracture, paint_lesions, rotation, sample_lesions,
                      smooth_noise)

__all__ = ["TISSUE_HU", "SubjectParams", "Phantom", "sample_subject", "render"]

# Nominal HU of normal tissue (subject jitter +-1.5 HU for brain tissue).
TISSUE_HU = dict(wm=27.0, gm=38.0, csf=6.0, skin=45.0, fat=-95.0, muscle=48.0, table=1650.0,
                 diploe=650.0, air=-1000.0, eye=8.0, lens=95.0, orbit_fat=-90.0, skull_base=1300.0,
                 falx=50.0)
_CENTRE = np.array([0.0, -18.0, 10.0])       # centre of the head (atlas mm): pose rotates about it
_SEPTUM = np.array([0.0, 8.0, 16.0])         # septum pellucidum (atlas mm), where midline shift is read


@dataclass
class SubjectParams:
    """Everything that defines one subject; ``seed`` drives the textures."""

    seed: int
    conditions: tuple[str, ...] = ()
    age: float = 55.0
    rotation_deg: tuple = (0.0, 0.0, 0.0)
    scale: tuple = (1.0, 1.0, 1.0)
    shift_mm: tuple = (0.0, 0.0, 0.0)
    elastic_mm: float = 2.0
    atrophy: float = 0.0              # 0 none .. 1 severe
    vent_inflate_mm: float = 0.0      # ventricle enlargement
    skull_mm: float = 6.5
    scalp_mm: float = 5.5
    scalp_fat: float = 0.3
    hu_wm: float = TISSUE_HU["wm"]
    hu_gm: float = TISSUE_HU["gm"]
    hu_csf: float = TISSUE_HU["csf"]
    lesions: dict = field(default_factory=dict)

    @property
    def csf_gap_mm(self) -> float:
        """Width of the CSF space between brain envelope and inner table (widens with atrophy)."""
        return 1.0 + 3.0 * self.atrophy

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Phantom:
    hu: np.ndarray            # float32, noise-free HU on the head grid
    labels: np.ndarray        # uint8 label map (lesions.LABEL_CODES, VENTRICLE_CODE)
    affine: np.ndarray        # RAS, isotropic step
    findings: dict            # task labels (1/0)
    midline_shift_mm: float
    tissue: dict              # gm, wm, vent fractions and `inner` distance (for checks and figures)


def sample_subject(seed: int, conditions=(), *, age: float | None = None,
                   lesion_overrides: dict | None = None) -> SubjectParams:
    """Draw a subject carrying ``conditions`` (names from ``lesions.CONDITIONS``)."""
    unknown = set(conditions) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"unknown conditions {sorted(unknown)}; known: {CONDITIONS}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    if age is None:
        age = float(rng.uniform(68, 92) if "adrd" in conditions else rng.uniform(18, 90))
    ageing = float(np.clip((age - 40) / 50, 0, 1))            # normal ageing, 0 at 40 y, 1 at 90 y
    p = SubjectParams(seed=int(seed), conditions=tuple(sorted(conditions)), age=round(age, 1))
    p.rotation_deg = tuple(float(v) for v in rng.normal(0, [5.0, 2.5, 3.0]))
    s = rng.normal(1.0, 0.04)
    p.scale = tuple(float(v) for v in s * rng.normal(1.0, 0.02, 3))
    p.shift_mm = tuple(float(v) for v in rng.normal(0, [2.0, 3.0, 3.0]))
    p.elastic_mm = float(rng.uniform(1.0, 3.0))
    p.atrophy = float(np.clip(0.45 * ageing + rng.normal(0, 0.08), 0, 0.55))
    p.vent_inflate_mm = float(np.clip(2.5 * ageing + rng.normal(0, 0.5), 0, 3.5))
    if "adrd" in conditions:      # beyond normal ageing; mild cases overlap with old normals
        p.atrophy = float(np.clip(p.atrophy + rng.uniform(0.2, 0.5), 0, 1))
        p.vent_inflate_mm = float(p.vent_inflate_mm + rng.uniform(1.5, 4.5))
    if "hydrocephalus" in conditions:   # big ventricles with effaced sulci, not atrophy
        p.atrophy = 0.0
        p.vent_inflate_mm = float(rng.uniform(6.0, 13.0))
    p.skull_mm = float(rng.uniform(5.0, 8.0))
    p.scalp_mm = float(rng.uniform(4.0, 7.0))
    p.scalp_fat = float(rng.uniform(0.0, 0.6))
    p.hu_wm, p.hu_gm, p.hu_csf = (float(TISSUE_HU[k] + rng.normal(0, 1.5)) for k in ("wm", "gm", "csf"))
    p.lesions = sample_lesions(conditions, rng)
    for name, values in (lesion_overrides or {}).items():
        p.lesions[name].update(values)
    return p


# ------------------------------------------------------------------------------------------ geometry

_COARSE_MM = 6.0                             # spacing of the grid the (smooth) deformation is built on


def _coarse_grid(shape, step):
    """Output-mm coordinates of a ~6 mm grid whose corners coincide with the output grid's corners."""
    cshape = tuple(int(np.ceil((n - 1) * step / _COARSE_MM)) + 1 for n in shape)
    axes = [np.linspace(GRID_MIN[i], GRID_MIN[i] + (shape[i] - 1) * step, cshape[i]) for i in range(3)]
    return np.meshgrid(*axes, indexing="ij"), cshape


def _sample(field_: np.ndarray, coords_mm, step: float, cval: float) -> np.ndarray:
    vox = np.stack([(coords_mm[i] - GRID_MIN[i]) / step for i in range(3)])
    return ndi.map_coordinates(field_, vox, order=1, mode="constant", cval=cval, prefilter=False)


def _backward_maps(p: SubjectParams, atlas: Atlas, centres: dict, rng):
    """Coarse backward maps (atlas mm per output point): ``base`` for skull/lesions, ``tissue`` for brain.

    Returns the maps, the pose matrix and the midline shift (mm, + = toward the patient's right).
    """
    step = atlas.step
    grid, cshape = _coarse_grid(atlas.shape, step)
    pose = rotation(p.rotation_deg) @ np.diag(p.scale)
    pts = np.stack([grid[i].ravel() - _CENTRE[i] - p.shift_mm[i] for i in range(3)])
    src = np.linalg.inv(pose) @ pts + _CENTRE[:, None]
    base = []
    for i in range(3):
        n = ndi.gaussian_filter(rng.standard_normal(cshape), 8.0 / _COARSE_MM)
        base.append(src[i].reshape(cshape) + p.elastic_mm * n / (n.std() + 1e-6))
    tissue = [b.copy() for b in base]

    if p.vent_inflate_mm > 0:   # sample closer to the ventricles along grad(vdist): they look larger
        vd = _sample(atlas.vdist, tissue, step, 80.0)
        grad = np.gradient(vd, *[a[1] - a[0] for a in (grid[0][:, 0, 0], grid[1][0, :, 0], grid[2][0, 0, :])])
        norm = np.sqrt(sum(g * g for g in grad)) + 1e-6
        push = p.vent_inflate_mm * np.exp(-np.clip(vd, 0, None) / 14.0) * (vd > -3)
        tissue = [t - push * g / norm for t, g in zip(tissue, grad)]
    if "hydrocephalus" in p.conditions:   # crowded sulci: the brain is slightly expanded
        tissue = [_CENTRE[i] + (tissue[i] - _CENTRE[i]) * 0.985 for i in range(3)]
    if p.atrophy > 0:                     # the brain shrinks inside a fixed skull
        tissue = [_CENTRE[i] + (tissue[i] - _CENTRE[i]) * (1 + 0.05 * p.atrophy) for i in range(3)]

    # space-occupying lesions push tissue radially; the push fades to 0 within 12 mm of the envelope
    depth_taper = np.clip(-_sample(atlas.inner, base, step, 50.0) / 12.0, 0, 1)
    shift_x = 0.0
    for c, peak_mm, sigma in mass_effect_sources(p.lesions, centres):
        gain = min(peak_mm / (sigma * np.exp(-0.5)), 0.6)     # g(r) * r peaks at r = sigma with peak_mm
        d = [tissue[i] - c[i] for i in range(3)]
        g = gain * np.exp(-0.5 * sum(v * v for v in d) / sigma ** 2) * depth_taper
        tissue = [tissue[i] - g * d[i] for i in range(3)]
        shift_x += gain * np.exp(-0.5 * np.sum((_SEPTUM - c) ** 2) / sigma ** 2) * (_SEPTUM[0] - c[0])
    return base, tissue, pose, float(shift_x)


# ------------------------------------------------------------------------------------------ render

def render(p: SubjectParams, atlas: Atlas | float = 1.0) -> Phantom:
    """The noise-free HU phantom of subject ``p`` on the atlas head grid (RAS, isotropic)."""
    atlas = atlas if isinstance(atlas, Atlas) else load_atlas(float(atlas))
    step, shape = atlas.step, atlas.shape
    seq = np.random.SeedSequence([p.seed, 2])
    rng, lesion_rng = (np.random.default_rng(s) for s in seq.spawn(2))
    centres = lesion_centres(p.lesions, atlas, p.csf_gap_mm)
    base_c, tissue_c, pose, mls = _backward_maps(p, atlas, centres, rng)

    # upsample the maps; smooth geometry is sampled at half resolution, tissue at full resolution but
    # only inside the brain envelope (a quarter of the grid; outside it the atlas holds no tissue)
    xyz = [upsample(b, shape) for b in base_c]
    half = tuple(max(8, (n + 1) // 2) for n in shape)
    half_xyz = [upsample(b, half) for b in base_c]
    inner, gap = (upsample(_sample(f, half_xyz, step, 60.0), shape) for f in (atlas.inner, atlas.gap))
    thick, scalp_w = (upsample(f, shape) for f in _layer_widths(p, half_xyz, step * (shape[0] - 1) / (half[0] - 1), rng))
    del half_xyz
    brain = inner < p.csf_gap_mm + 2 * step
    tissue_pts = [upsample(t, shape)[brain] for t in tissue_c]
    gm, wm, vent = (np.zeros(shape, np.float32) for _ in range(3))
    for out_, f in ((gm, atlas.gm), (wm, atlas.wm), (vent, atlas.vent)):
        out_[brain] = _sample(f, tissue_pts, step, 0.0)
    del tissue_pts
    if p.atrophy > 0:               # cortical thinning: grey matter near the surface becomes CSF
        gm = gm * np.clip((-inner - 2.5 * p.atrophy) / 3.0 + 0.5, 0.2, 1)
    csf = np.clip(1 - gm - wm, 0, 1)
    hu = (gm * p.hu_gm + wm * p.hu_wm + csf * p.hu_csf
          + smooth_noise(shape, step, 6.0, rng) * 1.2).astype(np.float32)
    labels = np.where(vent > 0.5, VENTRICLE_CODE, 0).astype(np.uint8)

    def to_output(c):
        return pose @ (np.asarray(c) - _CENTRE) + _CENTRE + np.asarray(p.shift_mm)

    cv = Canvas(step=step, hu=hu, labels=labels, atlas_xyz=xyz, gm=gm, wm=wm, vent=vent, inner=inner,
                csf_gap=p.csf_gap_mm, to_output=to_output, rng=lesion_rng, hu_csf=p.hu_csf)
    _paint_normal_structures(cv, rng)
    if "hydrocephalus" in p.conditions or "adrd" in p.conditions:   # periventricular low density
        bx = cv.box((0.0, -15.0, 12.0), 60)
        near = ndi.gaussian_filter((vent[bx] > 0.5).astype(np.float32), 3.0 / step) * (vent[bx] < 0.5)
        parenchyma = (gm[bx] + wm[bx]) > 0.5
        hu[bx] -= (6.0 if "hydrocephalus" in p.conditions else 4.0) * np.clip(near * 3, 0, 1) * parenchyma
    paint_lesions(cv, p.lesions, centres)
    out = _add_head(cv, p, gap, thick, scalp_w, rng, centres)
    findings = derive_labels(cv.labels, xyz[0], p.conditions, p.lesions, mls, step)
    return Phantom(hu=out, labels=cv.labels, affine=atlas.affine, findings=findings,
                   midline_shift_mm=round(abs(mls), 2), tissue=dict(gm=gm, wm=wm, vent=vent, inner=inner))


def _paint_normal_structures(cv: Canvas, rng) -> None:
    """Falx cerebri and (half of the time each) pineal and choroid-plexus calcifications."""
    bx = cv.box((0.0, -10.0, 40.0), 75)
    x = cv.local(bx)
    falx = (np.abs(x[0]) < max(0.8, 0.4 * cv.step)) & (cv.csf[bx] > 0.4) & (x[2] > 0) & (cv.inner[bx] < -3)
    cv.hu[bx] = np.where(falx, TISSUE_HU["falx"], cv.hu[bx])
    for centre, radius in (((0.0, -30.0, 2.0), 2.5), ((-22.0, -36.0, 14.0), 2.0), ((22.0, -36.0, 14.0), 2.0)):
        if rng.random() < 0.5:
            bx = cv.box(centre, radius)
            x = cv.local(bx)
            r2 = sum((x[i] - centre[i]) ** 2 for i in range(3))
            cv.hu[bx] = np.where(r2 < max(radius, 0.6 * cv.step) ** 2, 150.0 + 100 * rng.random(), cv.hu[bx])


def _layer_widths(p: SubjectParams, xyz, step: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Skull thickness (thin temporal squama, thick occiput) and scalp width (temporalis), in mm,
    on a grid of spacing ``step`` whose atlas coordinates are ``xyz``."""
    ax = np.abs(xyz[0])
    thick = p.skull_mm * (1 + 0.15 * smooth_noise(ax.shape, step, 15.0, rng))
    thick *= 1 - 0.35 * np.exp(-0.5 * ((ax - 62) / 12.0) ** 2) * np.exp(-0.5 * ((xyz[2] + 5) / 18.0) ** 2)
    thick *= 1 + 0.35 * np.clip((-xyz[1] - 70) / 30.0, 0, 1)
    scalp = p.scalp_mm * (1 + 0.8 * np.exp(-0.5 * ((ax - 60) / 10.0) ** 2)
                          * np.exp(-0.5 * ((xyz[2] - 5) / 15.0) ** 2) * (xyz[1] > -40))
    return thick.astype(np.float32), scalp.astype(np.float32)


def _add_head(cv: Canvas, p: SubjectParams, gap, thick, scalp_w, rng, centres) -> np.ndarray:
    """Skull (tables, diploe, fracture), skull base, scalp, orbits, frontal sinus around the brain."""
    step, shape, inner, xyz = cv.step, cv.hu.shape, cv.inner, cv.atlas_xyz
    sk_in = cv.csf_gap
    sk_out = sk_in + thick
    u = np.clip((inner - sk_in) / thick, 0, 1)                         # 0 inner table .. 1 outer table
    skull = (inner > sk_in) & (inner <= sk_out)
    grain = smooth_noise(shape, step, 2.0, rng)
    bone = TISSUE_HU["table"] + 120 * grain
    diploe_w = np.clip(1 - np.abs(u - 0.5) / 0.28, 0, 1) * np.clip((thick - 3.5) / 2, 0, 1)
    trabecular = rng.standard_normal(shape).astype(np.float32)
    if step < 1.5:                                  # finer than the voxel on coarse grids: white noise
        trabecular = ndi.gaussian_filter(trabecular, 0.7 / step)
        trabecular /= trabecular.std() + 1e-6
    bone = bone * (1 - diploe_w) + diploe_w * (TISSUE_HU["diploe"] + 200 * trabecular)
    if "fracture" in p.lesions:
        paint_fracture(cv, p.lesions["fracture"], centres["fracture"], bone, skull)
    base_bone = (inner <= sk_in) & (gap > 3.0) & (xyz[2] < -15)
    sc_out = sk_out + scalp_w
    v = np.clip((inner - sk_out) / scalp_w, 0, 1)
    fat_hu = TISSUE_HU["muscle"] * (1 - p.scalp_fat) + TISSUE_HU["fat"] * p.scalp_fat
    scalp_hu = np.where(v < 0.3, TISSUE_HU["muscle"], np.where(v < 0.75, fat_hu, TISSUE_HU["skin"]))
    # anti-aliased layers, each boundary ramped over one voxel
    f_icv = np.clip(0.5 + (sk_in - inner) / step, 0, 1)
    f_skull = np.clip(0.5 + (sk_out - inner) / step, 0, 1)
    f_head = np.clip(0.5 + (sc_out - inner) / step, 0, 1)
    brain = np.where(base_bone, TISSUE_HU["skull_base"] + 100 * grain, cv.hu)
    outside = f_head * scalp_hu + (1 - f_head) * TISSUE_HU["air"]
    out = (f_icv * brain + (1 - f_icv) * (f_skull * bone + (1 - f_skull) * outside)).astype(np.float32)

    for sx in (-31.0, 31.0):       # orbit: bony rim, retro-orbital fat, globe with sclera, lens
        g = np.array([sx, 56.0, -38.0]) + rng.normal(0, 1.0, 3)
        bx = cv.box(g, 22)
        x = cv.local(bx)
        rr = np.sqrt((x[0] - g[0]) ** 2 + ((x[1] - g[1] + 6) / 1.5) ** 2 + (x[2] - g[2]) ** 2)
        o, extra = out[bx], inner[bx] > sk_in
        o = np.where(extra & (rr < 18) & (rr >= 15.5), TISSUE_HU["table"] - 300, o)
        o = np.where(extra & (rr < 15.5), TISSUE_HU["orbit_fat"], o)
        rg = np.sqrt(sum((x[i] - g[i]) ** 2 for i in range(3)))
        o = np.where(rg < 12.0, np.where(rg > 11.0, 55.0, TISSUE_HU["eye"]), o)
        rl = np.sqrt((x[0] - g[0]) ** 2 + 4 * (x[1] - g[1] - 9.5) ** 2 + (x[2] - g[2]) ** 2)
        out[bx] = np.where(rl < 3.5, TISSUE_HU["lens"], o)
    sc = np.array([0.0, 60.0, 5.0]) + rng.normal(0, 2, 3)             # frontal sinus (air in the bone)
    bx = cv.box(sc, 16)
    x = cv.local(bx)
    rr = ((x[0] - sc[0]) / 13) ** 2 + ((x[1] - sc[1]) / 8) ** 2 + ((x[2] - sc[2]) / 10) ** 2
    out[bx] = np.where((rr < 1) & skull[bx] & (u[bx] > 0.15) & (u[bx] < 0.85), TISSUE_HU["air"] + 30, out[bx])
    # a voxel that is (partly) bone is not labelled as an intracranial lesion (or ventricle)
    cv.labels[((f_icv < 0.98) | base_bone) & (cv.labels != LABEL_CODES["fracture"])] = 0
    return out

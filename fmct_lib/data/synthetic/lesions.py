"""The conditions: their parameters, where they sit, how they are painted, and the labels they imply.

Lesions are defined in atlas coordinates (MNI mm), so they follow each subject's anatomy, and are
evaluated only inside a bounding box. Each painted lesion writes its integer code into the scan's label
map (``LABEL_CODES``; a later lesion overwrites an earlier one where they overlap, as it does in HU).

Intended HU (``HU_RANGES``) and sizes are drawn from ranges wide enough that some cases are hard: a
6 mm IPH at 55 HU, an isodense subacute SDH, thin-slice noise over a faint SAH.

Labels follow the paper's ten tasks (tumor, hydrocephalus, edema, adrd, iph, ivh, sdh, edh, sah and ich
as the union of the haemorrhage subtypes) and the CQ500 findings (bleed_left/right from the side of the
bleed, mass_effect, midline_shift, fracture, chronic_bleed).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from .atlas import GRID_MIN, Atlas, upsample

__all__ = ["CONDITIONS", "LABEL_CODES", "VENTRICLE_CODE", "HU_RANGES", "Canvas", "sample_lesions",
           "lesion_centres", "mass_effect_sources", "paint_lesions", "paint_fracture", "derive_labels"]

# The conditions a subject can carry (sampled); mass_effect / midline_shift / ich / sides are derived.
CONDITIONS = ("tumor", "hydrocephalus", "edema", "adrd", "iph", "ivh", "sdh", "edh", "sah", "fracture")

# Label-map codes (uint8). 1-8 are lesions, 10 is the ventricular system (anatomy, in every scan).
LABEL_CODES = {"iph": 1, "ivh": 2, "sdh": 3, "edh": 4, "sah": 5, "tumor": 6, "edema": 7, "fracture": 8}
VENTRICLE_CODE = 10
BLEEDS = ("iph", "ivh", "sdh", "edh", "sah")

# Intended HU of each lesion's own voxels (before scanner noise and partial volume).
HU_RANGES = {
    "iph": (50.0, 85.0),
    "ivh": (45.0, 75.0),
    "sdh_acute": (50.0, 80.0),
    "sdh_subacute": (32.0, 45.0),
    "sdh_chronic": (5.0, 24.0),
    "edh": (55.0, 85.0),
    "sah": (40.0, 70.0),
    "tumor": (30.0, 50.0),
    "edema_drop": (5.0, 14.0),       # HU removed from the parenchyma
}


@dataclass
class Canvas:
    """The render state lesions are painted into: HU, label map, and per-voxel atlas coordinates."""

    step: float
    hu: np.ndarray                     # float32 HU of the brain (skull added after lesions)
    labels: np.ndarray                 # uint8 label map
    atlas_xyz: list[np.ndarray]        # atlas mm (x, y, z) of each output voxel (subject geometry)
    gm: np.ndarray
    wm: np.ndarray
    vent: np.ndarray
    inner: np.ndarray                  # signed distance (mm) to the brain envelope (inner table = csf_gap)
    csf_gap: float
    to_output: Callable[[np.ndarray], np.ndarray]   # atlas mm -> output mm (the subject's pose)
    rng: np.random.Generator
    hu_csf: float = 6.0

    @property
    def csf(self) -> np.ndarray:
        return np.clip(1 - self.gm - self.wm, 0, 1)

    def box(self, centre, radius_mm: float) -> tuple[slice, slice, slice]:
        """Output-grid bounding box around atlas point ``centre`` (generous for the elastic field)."""
        c = self.to_output(np.asarray(centre, float))
        lo = np.floor((c - radius_mm - 8 - GRID_MIN) / self.step).astype(int)
        hi = np.ceil((c + radius_mm + 8 - GRID_MIN) / self.step).astype(int) + 1
        return tuple(slice(max(0, a), min(n, b)) for a, b, n in zip(lo, hi, self.hu.shape))

    def local(self, box) -> list[np.ndarray]:
        return [a[box] for a in self.atlas_xyz]

    def texture(self, box, sigma_mm: float, amplitude: float) -> np.ndarray:
        """Smooth unit-variance noise (correlation ~sigma_mm) times ``amplitude``, on the box."""
        return smooth_noise(tuple(s.stop - s.start for s in box), self.step, sigma_mm, self.rng) * amplitude

    def paint(self, name: str, box, weight: np.ndarray, value) -> None:
        """Blend ``value`` in with ``weight`` in [0,1]; voxels with weight > 0.5 get ``name``'s code."""
        self.hu[box] = self.hu[box] * (1 - weight) + weight * value
        self.labels[box] = np.where(weight > 0.5, LABEL_CODES[name], self.labels[box])


def smooth_noise(shape, step: float, sigma_mm: float, rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian random field, correlation length ~``sigma_mm``, built coarse and upsampled."""
    coarse_step = max(step, sigma_mm / 3.0)
    cshape = tuple(max(4, int(np.ceil(n * step / coarse_step)) + 1) for n in shape)
    noise = ndi.gaussian_filter(rng.standard_normal(cshape).astype(np.float32), sigma_mm / coarse_step,
                                mode="wrap")
    noise /= noise.std() + 1e-6
    return upsample(noise, shape)


def rotation(deg) -> np.ndarray:
    """Rotation matrix from angles (degrees) about x, y, z, applied in that order."""
    rx, ry, rz = np.deg2rad(deg)
    mx = np.array([[1, 0, 0], [0, np.cos(rx), -np.sin(rx)], [0, np.sin(rx), np.cos(rx)]])
    my = np.array([[np.cos(ry), 0, np.sin(ry)], [0, 1, 0], [-np.sin(ry), 0, np.cos(ry)]])
    mz = np.array([[np.cos(rz), -np.sin(rz), 0], [np.sin(rz), np.cos(rz), 0], [0, 0, 1]])
    return mz @ my @ mx


# --------------------------------------------------------------------------------------- parameters

def sample_lesions(conditions, rng: np.random.Generator) -> dict[str, dict]:
    """Per-condition parameters (atlas mm, HU), drawn from ranges that include hard cases."""
    side = float(rng.choice([-1.0, 1.0]))        # RAS: +1 = patient's right
    out: dict[str, dict] = {}
    u = rng.uniform
    if "iph" in conditions:
        deep = bool(rng.random() < 0.55)          # basal ganglia / thalamus, else lobar
        centre = ([side * u(18, 28), u(-20, 5), u(-2, 12)] if deep
                  else [side * u(28, 42), u(-50, 20), u(10, 42)])
        out["iph"] = dict(side=side, radius=u(4, 18), hu=u(*HU_RANGES["iph"]), elong=u(1.0, 1.7),
                          centre=centre, angles=list(u(-30, 30, 3)))
    if "ivh" in conditions:
        out["ivh"] = dict(hu=u(*HU_RANGES["ivh"]), level=u(-40, -12), cast=bool(rng.random() < 0.2))
    if "sdh" in conditions:
        stage = rng.choice(["acute", "subacute", "chronic"], p=[0.65, 0.12, 0.23])
        out["sdh"] = dict(side=side, stage=str(stage), thick=u(3, 16), extent=u(50, 85),
                          hu=u(*HU_RANGES[f"sdh_{stage}"]), y0=u(-35, 20), z0=u(8, 40))
    if "edh" in conditions:
        out["edh"] = dict(side=side, thick=u(6, 20), extent=u(20, 34), hu=u(*HU_RANGES["edh"]),
                          y0=u(-35, 15), z0=u(-5, 35))
    if "sah" in conditions:
        out["sah"] = dict(hu=u(*HU_RANGES["sah"]), diffuse=bool(rng.random() < 0.35), side=side,
                          extent=u(18, 32))
    if "tumor" in conditions:
        out["tumor"] = dict(side=side, radius=u(6, 22), hu=u(*HU_RANGES["tumor"]),
                            necrotic=bool(rng.random() < 0.4), calcified=bool(rng.random() < 0.25),
                            oedema_mm=float(rng.choice([0.0, u(6, 24)], p=[0.25, 0.75])),
                            centre=[side * u(20, 42), u(-45, 30), u(8, 42)], angles=list(u(-40, 40, 3)))
    if "edema" in conditions:
        oside = float(rng.choice([-1.0, 1.0]))
        out["edema"] = dict(side=oside, drop=u(*HU_RANGES["edema_drop"]), radius=u(14, 34),
                            centre=[oside * u(35, 50), u(-35, 25), u(0, 35)])
    if "fracture" in conditions:
        fside = side if ("edh" in conditions or rng.random() < 0.5) else -side
        edh = out.get("edh")
        y0, z0 = (edh["y0"] + u(-8, 8), edh["z0"] + u(-8, 8)) if edh and fside == side else (u(-40, 25), u(0, 50))
        out["fracture"] = dict(side=fside, y0=y0, z0=z0, length=u(18, 35), normal=list(rng.normal(0, 1, 3)))
    return out


def _surface_point(atlas: Atlas, side: float, y0: float, z0: float, depth: float) -> np.ndarray:
    """The point at ``(y0, z0)`` on one side where the envelope distance equals ``depth`` (atlas mm)."""
    iy = int(np.clip(round((y0 - GRID_MIN[1]) / atlas.step), 0, atlas.shape[1] - 1))
    iz = int(np.clip(round((z0 - GRID_MIN[2]) / atlas.step), 0, atlas.shape[2] - 1))
    xs = GRID_MIN[0] + atlas.step * np.arange(atlas.shape[0])
    ok = np.flatnonzero((atlas.inner[:, iy, iz] <= depth) & (xs * side > 0))
    if ok.size == 0:
        return np.array([side * 65.0, y0, z0])
    return np.array([xs[ok.max() if side > 0 else ok.min()], y0, z0])


def lesion_centres(lesions: dict, atlas: Atlas, csf_gap: float) -> dict[str, np.ndarray]:
    centres = {k: np.asarray(q["centre"], float) for k, q in lesions.items() if "centre" in q}
    for k in ("sdh", "edh", "fracture"):
        if k in lesions:
            q = lesions[k]
            centres[k] = _surface_point(atlas, q["side"], q["y0"], q["z0"], csf_gap)
    return centres


def mass_effect_sources(lesions: dict, centres: dict) -> list[tuple[np.ndarray, float, float]]:
    """(centre, peak push in mm, Gaussian width in mm) of each space-occupying lesion."""
    out = []
    if "iph" in lesions and lesions["iph"]["radius"] > 9:
        r = lesions["iph"]["radius"]
        out.append((centres["iph"], 0.45 * r, 1.5 * r))
    if "tumor" in lesions:
        q = lesions["tumor"]
        out.append((centres["tumor"], 0.5 * q["radius"] + 0.15 * q["oedema_mm"], 1.7 * q["radius"] + 5))
    if "sdh" in lesions and lesions["sdh"]["thick"] > 7:
        out.append((centres["sdh"], 0.6 * lesions["sdh"]["thick"], 30.0))
    if "edh" in lesions and lesions["edh"]["thick"] > 8:
        out.append((centres["edh"], 0.6 * lesions["edh"]["thick"], 24.0))
    if "edema" in lesions and lesions["edema"]["radius"] > 24:
        out.append((centres["edema"], 0.12 * lesions["edema"]["radius"], lesions["edema"]["radius"]))
    return out


# --------------------------------------------------------------------------------------- painting

def _ellipsoid_radius(cv: Canvas, box, centre, radii, angles) -> np.ndarray:
    """Normalised radius (1 on the surface) of a rotated ellipsoid at each voxel of ``box``."""
    x = cv.local(box)
    rot = rotation(angles)
    d = [x[i] - centre[i] for i in range(3)]
    return np.sqrt(sum((sum(rot[i, k] * d[k] for k in range(3)) / radii[i]) ** 2 for i in range(3)))


def _paint_edema(cv: Canvas, q, c) -> None:
    """Territorial vasogenic/cytotoxic oedema: lower density and loss of grey-white differentiation."""
    bx = cv.box(c, 1.5 * q["radius"])
    x = cv.local(bx)
    r = np.sqrt(((x[0] - c[0]) / (0.7 * q["radius"])) ** 2 + ((x[1] - c[1]) / q["radius"]) ** 2
                + ((x[2] - c[2]) / q["radius"]) ** 2) + cv.texture(bx, 6.0, 0.12)
    parenchyma = np.clip((cv.gm[bx] + cv.wm[bx]) * 2 - 1, 0, 1)
    w = np.clip((1 - r) / 0.15, 0, 1) * parenchyma
    h = cv.hu[bx]
    target = h - q["drop"] - 0.6 * np.clip(h - 27.0, 0, None)
    cv.paint("edema", bx, w, target)


def _paint_tumor(cv: Canvas, q, c) -> None:
    """Mass (iso- to hyperdense), optional necrosis and calcification, finger-like WM oedema."""
    radii = np.array([1.0, 1.15, 0.9]) * q["radius"]
    reach = radii.max() + 2 * q["oedema_mm"]
    bx = cv.box(c, reach)
    r = _ellipsoid_radius(cv, bx, c, radii, q["angles"]) + cv.texture(bx, 5.0, 0.07)
    inside = (cv.inner[bx] < cv.csf_gap).astype(np.float32)
    core = np.clip((1 - r) / 0.08, 0, 1) * inside
    if q["oedema_mm"] > 0:
        dist = np.maximum(r - 1, 0) * q["radius"]
        wm_like = np.clip(cv.wm[bx] * 1.6 - 0.3, 0, 1)
        oed = np.exp(-dist / (0.5 * q["oedema_mm"])) * (dist < 2 * q["oedema_mm"]) * wm_like
        oed = np.clip(oed * (1 + 0.4 * cv.texture(bx, 4.0, 1.0)), 0, 1) * (1 - core)
        cv.paint("edema", bx, oed, cv.hu[bx] - 12.0)
    value = q["hu"] + cv.texture(bx, 1.5, 2.5)
    if q["necrotic"]:
        value = np.where(r < 0.5, 16.0, value)
    if q["calcified"]:
        value = np.where((cv.texture(bx, 1.0, 1.0) > 2.0) & (r < 0.85), 260.0, value)
    cv.paint("tumor", bx, core, value)


def _paint_sah(cv: Canvas, q) -> None:
    """Blood in the subarachnoid CSF: one Sylvian fissure and its convexity, or the basal cisterns."""
    if q["diffuse"]:
        c = np.array([0.0, -5.0, -14.0])
        bx = cv.box(c, 70)
        x = cv.local(bx)
        region = np.exp(-0.5 * ((x[2] - c[2]) / 14.0) ** 2) * np.exp(-0.5 * (np.hypot(x[0], x[1] - c[1]) / 45.0) ** 2)
    else:
        c = np.array([q["side"] * 44.0, 4.0, 2.0])
        bx = cv.box(c, 2 * q["extent"])
        x = cv.local(bx)
        region = np.exp(-0.5 * sum((x[i] - c[i]) ** 2 for i in range(3)) / q["extent"] ** 2)
    # the CSF part of each sulcal / cisternal voxel in the region becomes blood (voxel HU rises by
    # csf * (blood - csf)); every voxel that changes is labelled
    sulcal = (cv.csf[bx] > 0.3) & (cv.vent[bx] < 0.3) & (cv.inner[bx] < cv.csf_gap - 0.5 * cv.step)
    w = ((region > 0.3) & sulcal).astype(np.float32)
    cv.paint("sah", bx, w, cv.hu[bx] + cv.csf[bx] * (q["hu"] - cv.hu_csf))


def _paint_ivh(cv: Canvas, q) -> None:
    """Blood in the ventricles: a dependent (posterior, supine) layer, or a complete cast."""
    bx = cv.box((0.0, -15.0, 10.0), 62)
    x = cv.local(bx)
    level = 90.0 if q["cast"] else q["level"]
    dependent = np.clip((level - x[1]) / 2.0, 0, 1)
    w = np.clip(cv.vent[bx] * 1.6 - 0.4, 0, 1) * dependent
    cv.paint("ivh", bx, w, q["hu"])


def _paint_iph(cv: Canvas, q, c) -> None:
    """An irregular ellipsoidal haematoma with a thin low-density perihaematomal rim."""
    radii = q["radius"] * np.array([1.0, q["elong"], 0.8])
    bx = cv.box(c, 1.6 * radii.max())
    r = _ellipsoid_radius(cv, bx, c, radii, q["angles"]) + cv.texture(bx, 4.0, 0.1)
    core = np.clip((1 - r) / 0.1, 0, 1) * (cv.inner[bx] < cv.csf_gap)
    parenchyma = np.clip((cv.gm[bx] + cv.wm[bx]) * 2 - 1, 0, 1)
    rim = np.clip((1.35 - r) / 0.15, 0, 1) * (1 - core) * parenchyma
    cv.hu[bx] -= 8.0 * rim
    cv.paint("iph", bx, core, q["hu"] + cv.texture(bx, 1.5, 2.0))


def _paint_extra_axial(cv: Canvas, name: str, q, c) -> None:
    """SDH (crescent, crosses sutures, stops at the falx) or EDH (biconvex lens) on the inner table."""
    bx = cv.box(c, q["extent"] + 6)
    x = cv.local(bx)
    rr = np.sqrt(sum((x[i] - c[i]) ** 2 for i in range(3)))
    falloff = np.clip(1 - (rr / q["extent"]) ** 2, 0, 1)
    if name == "sdh":
        profile = q["thick"] * falloff ** 0.8
        side_ok = (x[0] * q["side"]) > 2.5
    else:
        profile = q["thick"] * np.sqrt(falloff)
        side_ok = (x[0] * q["side"]) > 0
    depth = cv.csf_gap - cv.inner[bx]                    # mm inward from the inner table
    w = np.clip(np.minimum(depth + 0.5, profile - depth), 0, 1) * side_ok
    cv.paint(name, bx, w, q["hu"] + cv.texture(bx, 2.0, 2.0))


def paint_lesions(cv: Canvas, lesions: dict, centres: dict) -> None:
    """Paint every intracranial lesion; order sets what shows where lesions overlap."""
    if "edema" in lesions:
        _paint_edema(cv, lesions["edema"], centres["edema"])
    if "tumor" in lesions:
        _paint_tumor(cv, lesions["tumor"], centres["tumor"])
    if "sah" in lesions:
        _paint_sah(cv, lesions["sah"])
    if "ivh" in lesions:
        _paint_ivh(cv, lesions["ivh"])
    if "iph" in lesions:
        _paint_iph(cv, lesions["iph"], centres["iph"])
    for name in ("sdh", "edh"):
        if name in lesions:
            _paint_extra_axial(cv, name, lesions[name], centres[name])


def paint_fracture(cv: Canvas, q, c, bone: np.ndarray, skull: np.ndarray) -> None:
    """A planar crack (~1.5 mm, soft-tissue density) through the calvarium around ``c``."""
    bx = cv.box(c, q["length"])
    x = cv.local(bx)
    n = np.asarray(q["normal"], float)
    n /= np.linalg.norm(n)
    plane = np.abs(sum((x[i] - c[i]) * n[i] for i in range(3)))
    near = sum((x[i] - c[i]) ** 2 for i in range(3)) < q["length"] ** 2
    crack = skull[bx] & (plane < max(0.75, 0.5 * cv.step)) & near
    bone[bx] = np.where(crack, 40.0, bone[bx])
    cv.labels[bx] = np.where(crack, LABEL_CODES["fracture"], cv.labels[bx])


# --------------------------------------------------------------------------------------- labels

def derive_labels(labels_map: np.ndarray, atlas_x: np.ndarray, conditions, lesions: dict,
                  midline_shift_mm: float, step: float) -> dict[str, int]:
    """Task labels from what was actually painted (so a label always has its mask) plus global findings.

    Bleed side comes from the subject's own midline (atlas x = 0; RAS +x = right): a side is positive when
    at least a quarter of a bleed's voxels lie on it.
    """
    out = {}
    volume_ml = {}
    for name, code in LABEL_CODES.items():
        m = labels_map == code
        out[name] = int(m.any())
        volume_ml[name] = m.sum() * step ** 3 / 1000.0
        if name in BLEEDS and m.any():
            right = float((atlas_x[m] > 0).mean())
            out["bleed_right"] = max(out.get("bleed_right", 0), int(right >= 0.25))
            out["bleed_left"] = max(out.get("bleed_left", 0), int(right <= 0.75))
    out.setdefault("bleed_right", 0)
    out.setdefault("bleed_left", 0)
    out["hydrocephalus"] = int("hydrocephalus" in conditions)
    out["adrd"] = int("adrd" in conditions)
    out["ich"] = int(any(out[b] for b in BLEEDS))
    out["chronic_bleed"] = int(out["sdh"] == 1 and lesions.get("sdh", {}).get("stage") == "chronic")
    occupying = sum(volume_ml[k] for k in ("iph", "sdh", "edh", "tumor", "edema"))
    out["midline_shift"] = int(abs(midline_shift_mm) >= 3.0)
    out["mass_effect"] = int(abs(midline_shift_mm) >= 2.0 or occupying >= 25.0)
    return out

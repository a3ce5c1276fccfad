"""Synthetic phantoms: tissue and lesion HU inside their masks, lesion placement, scanner model, atlas cache.

Everything renders on the toy 3 mm grid; the atlas is built once per session into a temporary cache.
"""
from __future__ import annotations

from dataclasses import replace

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage as ndi

from fmct_lib.data.synthetic import atlas as atlas_mod
from fmct_lib.data.synthetic.cohort import plan_cohort, sample_conditions
from fmct_lib.data.synthetic.lesions import HU_RANGES, LABEL_CODES, VENTRICLE_CODE
from fmct_lib.data.synthetic.phantom import TISSUE_HU, render, sample_subject
from fmct_lib.data.synthetic.scanner import SCANNERS, acquire, slice_profile_matrix

STEP = 3.0


@pytest.fixture(scope="session")
def atlas(tmp_path_factory):
    """The 3 mm atlas, built once per session in a session-wide temporary cache."""
    cache = tmp_path_factory.getbasetemp() / "fmct_cache"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMCT_CACHE_HOME", str(cache))
        atlas_mod.load_atlas.cache_clear()  # an earlier test of the session may hold it in memory from elsewhere
        yield atlas_mod.load_atlas(STEP)


def _render(atlas, seed, conditions, **overrides):
    return render(sample_subject(seed, conditions, lesion_overrides=overrides), atlas)


def _median(hu, mask):
    assert mask.any(), "empty mask"
    return float(np.median(hu[mask]))


# ----------------------------------------------------------------------------------------- atlas

def test_atlas_cache_round_trip(atlas, tmp_path_factory):
    cache = tmp_path_factory.getbasetemp() / "fmct_cache"
    files = list(cache.glob(f"mni152_atlas_v*_{STEP:g}mm.npz"))
    assert len(files) == 1, files
    with np.load(files[0]) as z:
        for name in ("gm", "wm", "vent", "inner", "gap", "vdist"):
            np.testing.assert_array_equal(z[name].astype(np.float32), getattr(atlas, name))
    # anatomy: ~20 ml of ventricles, a cranial cavity of 1.5-2.2 l, ventricles deep inside the envelope
    voxel_ml = STEP ** 3 / 1000
    assert 10 < (atlas.vent > 0.5).sum() * voxel_ml < 40
    assert 1500 < (atlas.inner < 0).sum() * voxel_ml < 2200
    assert atlas.inner[atlas.vent > 0.5].max() < -10


def test_resample_axes_matches_map_coordinates():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((7, 9, 5)).astype(np.float32)
    pos = [np.linspace(0.2, 6.0, 11), np.linspace(-0.5, 7.5, 6), np.array([0.0, 1.5, 3.99])]
    grid = np.meshgrid(*pos, indexing="ij")
    expected = ndi.map_coordinates(a, grid, order=1, mode="constant", cval=0.0)
    inside = np.ones(grid[0].shape, bool)
    for g, n in zip(grid, a.shape):
        inside &= (g >= 0) & (g <= n - 1)
    got = atlas_mod.resample_axes(a, pos)
    np.testing.assert_allclose(got[inside], expected[inside], atol=1e-5)
    assert np.all(got[~inside] == 0)


# ----------------------------------------------------------------------------------------- HU

def test_normal_tissue_hu(atlas):
    ph = _render(atlas, 11, ())
    p = sample_subject(11, ())
    t = ph.tissue
    free = ph.labels == 0
    assert abs(_median(ph.hu, (t["wm"] > 0.95) & free) - p.hu_wm) < 2.5
    assert abs(_median(ph.hu, (t["gm"] > 0.8) & free) - (0.8 * p.hu_gm + 0.2 * p.hu_wm)) < 4
    vent = ph.labels == VENTRICLE_CODE
    csf = 1 - t["gm"] - t["wm"]
    assert abs(_median(ph.hu, vent & (csf > 0.9)) - p.hu_csf) < 3
    assert _median(ph.hu, vent) < p.hu_wm - 5                         # partial volume at 3 mm
    mid_skull = (t["inner"] > p.csf_gap_mm + 2) & (t["inner"] < p.csf_gap_mm + p.skull_mm - 2) & (ph.hu > -500)
    assert TISSUE_HU["diploe"] - 150 < _median(ph.hu, mid_skull) < TISSUE_HU["table"] + 100
    assert ph.hu[0, 0, -1] == TISSUE_HU["air"]
    assert ph.findings["ich"] == 0 and not ph.labels[ph.labels != VENTRICLE_CODE].any()


@pytest.mark.parametrize("name,overrides", [
    ("iph", dict(radius=12.0, hu=70.0)),
    ("ivh", dict(hu=60.0, cast=True)),
    ("sdh", dict(stage="acute", hu=65.0, thick=10.0)),
    ("sdh", dict(stage="chronic", hu=12.0, thick=10.0)),
    ("edh", dict(hu=72.0, thick=14.0)),
    ("tumor", dict(hu=42.0, radius=15.0, necrotic=False, calcified=False, oedema_mm=0.0)),
])
def test_lesion_hu_inside_mask(atlas, name, overrides):
    ph = _render(atlas, 21, (name,), **{name: overrides})
    mask = ph.labels == LABEL_CODES[name]
    stage = overrides.get("stage")
    lo, hi = HU_RANGES[f"sdh_{stage}" if stage else name]
    assert lo <= overrides["hu"] <= hi
    # partial volume pulls voxels at the lesion's edge toward the surroundings; its core keeps its HU
    med, core = _median(ph.hu, mask), np.percentile(ph.hu[mask], 90 if overrides["hu"] > 30 else 10)
    assert lo - 10 <= med <= hi + 5, (name, med)
    assert abs(core - overrides["hu"]) < 6, (name, core)
    assert ph.findings[name] == 1


def test_sah_and_edema_change_hu_against_lesion_free_twin(atlas):
    twin = _render(atlas, 31, ())
    sah = _render(atlas, 31, ("sah",), sah=dict(hu=65.0, diffuse=False, side=1.0, extent=28.0))
    m = sah.labels == LABEL_CODES["sah"]
    rise = sah.hu[m] - twin.hu[m]
    assert m.sum() >= 10 and np.median(rise) > 10
    assert np.median(sah.hu[m]) < 65.0                                # blood mixes with the sulcus
    np.testing.assert_array_equal(sah.hu[~m], twin.hu[~m])               # every changed voxel is labelled
    oed = _render(atlas, 31, ("edema",), edema=dict(drop=10.0, radius=20.0))
    m = oed.labels == LABEL_CODES["edema"]
    drop = twin.hu[m] - oed.hu[m]
    assert m.sum() >= 20 and np.median(drop) >= 9.0
    lo, hi = HU_RANGES["edema_drop"]
    assert lo <= 10.0 <= hi


# ----------------------------------------------------------------------------------------- placement

def test_ivh_inside_the_ventricles(atlas):
    ph = _render(atlas, 41, ("ivh",), ivh=dict(cast=False, level=-20.0))
    m = ph.labels == LABEL_CODES["ivh"]
    assert m.any()
    assert np.all(ph.tissue["vent"][m] > 0.3)
    # dependent layering: blood sits posterior (low y) in the supine patient
    world_y = ph.affine[1, 3] + STEP * np.argwhere(m)[:, 1]
    vent_y = ph.affine[1, 3] + STEP * np.argwhere(ph.tissue["vent"] > 0.5)[:, 1]
    assert world_y.mean() < vent_y.mean()


@pytest.mark.parametrize("name", ["sdh", "edh"])
def test_extra_axial_blood_lies_against_the_inner_table(atlas, name):
    ph = _render(atlas, 51, (name,), **{name: dict(thick=9.0)})
    m = ph.labels == LABEL_CODES[name]
    bone = ph.hu > 500
    assert not (m & bone).any()
    # every connected piece of the haematoma touches the skull within two voxels
    pieces, n = ndi.label(m)
    near_bone = ndi.binary_dilation(bone, iterations=2)
    for k in range(1, n + 1):
        assert (near_bone & (pieces == k)).any()
    # ... and none of it is deep in the brain
    assert ph.tissue["inner"][m].min() > -(9.0 + 3 * STEP)


def test_bleed_side_follows_the_mask(atlas):
    for seed, side in ((61, 1.0), (62, -1.0)):
        ph = _render(atlas, seed, ("iph",), iph=dict(side=side, centre=[side * 30.0, -10.0, 20.0], radius=8.0))
        m = ph.labels == LABEL_CODES["iph"]
        x_world = ph.affine[0, 3] + STEP * np.argwhere(m)[:, 0]
        head = ph.hu > -500
        x_mid = ph.affine[0, 3] + STEP * np.argwhere(head)[:, 0].mean()
        right = x_world.mean() > x_mid                                # RAS: +x is the patient's right
        assert right == (side > 0)
        assert ph.findings["bleed_right"] == int(right) and ph.findings["bleed_left"] == int(not right)


def test_fracture_is_a_crack_in_the_skull(atlas):
    ph = _render(atlas, 71, ("edh", "fracture"))
    m = ph.labels == LABEL_CODES["fracture"]
    assert m.any() and ph.findings["fracture"] == 1
    assert np.all(ph.hu[m] < 300)                                     # soft tissue inside the crack
    assert (ndi.binary_dilation(m) & (ph.hu > 1000)).sum() > m.sum()  # surrounded by bone


def test_mass_effect_shifts_the_midline(atlas):
    big = _render(atlas, 81, ("tumor",), tumor=dict(radius=20.0, oedema_mm=20.0, centre=[30.0, -5.0, 20.0]))
    small = _render(atlas, 81, ("iph",), iph=dict(radius=5.0))
    assert big.midline_shift_mm >= 3 and big.findings["midline_shift"] == 1 and big.findings["mass_effect"] == 1
    assert small.midline_shift_mm == 0 and small.findings["midline_shift"] == 0
    # the tissue itself moves, not only the recorded number: the ventricles (same subject without the tumour as
    # reference) shift away from the tumour (at +x) by about the recorded shift, and are not just overwritten
    none = _render(atlas, 81, ())
    x_big, x_none = (np.argwhere(ph.labels == VENTRICLE_CODE)[:, 0] * STEP for ph in (big, none))
    assert x_none.mean() - x_big.mean() >= 3.0, (x_none.mean(), x_big.mean())
    assert len(x_big) >= 0.9 * len(x_none)


def test_hydrocephalus_enlarges_the_ventricles(atlas):
    normal = _render(atlas, 91, (), )
    hydro = _render(atlas, 91, ("hydrocephalus",))
    vol = {k: (ph.labels == VENTRICLE_CODE).sum() * STEP ** 3 / 1000 for k, ph in (("n", normal), ("h", hydro))}
    assert vol["h"] > 2 * vol["n"], vol


def test_unknown_condition_is_rejected():
    with pytest.raises(ValueError, match="unknown conditions"):
        sample_subject(0, ("glioma",))


# ----------------------------------------------------------------------------------------- scanner

def _ideal(name):
    return replace(SCANNERS[name], psf_mm=0.0, sharpen=0.0, noise_hu=0.0, hu_offset=0.0, cupping_hu=0.0)


def test_slice_profile_matrix_by_hand():
    m = slice_profile_matrix(n_in=11, step=1.0, slice_mm=2.0)
    assert m.shape == (6, 11)
    np.testing.assert_allclose(m.sum(1), 1, atol=1e-6)
    # slice 2 is centred at z=4 and averages the linear interpolant over [3, 5]: weights 1/4, 1/2, 1/4
    np.testing.assert_allclose(m[2, 3:6], [0.25, 0.5, 0.25], atol=1e-6)


@pytest.mark.parametrize("slice_mm", [0.5, 1.25, 5.0])
def test_acquire_affine_and_partial_volume(slice_mm):
    shape = (20, 22, 40)
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-20.0, -22.0, -40.0)
    z_world = affine[2, 3] + 2.0 * np.arange(shape[2])
    ramp = np.broadcast_to(z_world, shape).astype(np.float32).copy()          # HU = world z (mm)
    labels = np.zeros(shape, np.uint8)
    vol, lab, aff = acquire(ramp, labels, affine, _ideal("A"), slice_mm, 120, np.random.default_rng(0),
                            fov_mm=1e4)
    assert vol.dtype == np.int16 and lab.shape == vol.shape
    assert aff[2, 2] == slice_mm and np.allclose(aff[:2, :2], affine[:2, :2]) and np.allclose(aff[:3, 3], affine[:3, 3])
    z_out = aff[2, 3] + slice_mm * np.arange(vol.shape[2])
    inner = (z_out > z_world[0] + slice_mm) & (z_out < z_world[-1] - slice_mm)
    # a box average of a linear ramp is the ramp at the box centre: world z is preserved
    np.testing.assert_allclose(vol[5, 5, inner], np.rint(z_out[inner]), atol=1)
    # partial volume: a 2 mm slab of 1000 HU seen through 5 mm slices keeps 2/5 of its contrast
    slab = np.zeros(shape, np.float32)
    slab[:, :, 20] = 1000.0                                                   # world z = 0, 2 mm thick
    vol, _, aff = acquire(slab, labels, affine, _ideal("A"), 5.0, 120, np.random.default_rng(0), fov_mm=1e4)
    assert abs(vol[5, 5].max() - 400) <= 45


def test_vendors_differ_in_noise_texture_and_offset(atlas):
    ph = _render(atlas, 101, ())
    wm_frac, _, _ = acquire(ph.tissue["wm"] * 1000, ph.labels, ph.affine, _ideal("A"), 5.0, 120,
                            np.random.default_rng(0))
    wm = wm_frac > 950
    stats = {}
    for v in ("A", "B"):
        vol, _, _ = acquire(ph.hu, ph.labels, ph.affine, v, 5.0, 120, np.random.default_rng(1))
        resid = vol.astype(np.float32) - ndi.uniform_filter(vol.astype(np.float32), (5, 5, 1))
        # lag-1 in-plane autocorrelation of the noise: coarse grain (A) > fine grain (B)
        r = resid[:, :, 5:-5]
        ac = np.corrcoef(r[1:, :][wm[1:, :, 5:-5]], r[:-1, :][wm[1:, :, 5:-5]])[0, 1]
        stats[v] = (np.median(vol[wm]), ac)
    assert stats["B"][0] - stats["A"][0] > 2                                  # vendor B's HU offset
    assert stats["A"][1] > stats["B"][1] + 0.1


# ----------------------------------------------------------------------------------------- cohort plan

def test_conditions_co_occur_as_in_real_data():
    rng = np.random.default_rng(0)
    prev = dict(iph=0.3, ivh=0.05, edh=0.2, fracture=0.05, hydrocephalus=0.3, adrd=0.3, sdh=0.2)
    draws = [set(sample_conditions(rng, prev)) for _ in range(4000)]
    def p(a, given=None, without=None):
        pool = [d for d in draws if (given is None or given in d) and (without is None or without not in d)]
        return np.mean([a in d for d in pool])
    assert p("ivh", given="iph") > 2 * p("ivh", without="iph")
    assert p("fracture", given="edh") > 0.6 > p("fracture", without="edh")
    assert p("adrd", given="hydrocephalus") == 0
    assert p("sah", given="sdh") > 0.15 > p("sah", without="sdh") - 0.1


def test_a_rate_outside_0_1_is_refused():
    from fmct_lib.data.synthetic.cohort import site_prevalence
    for rate in (7, -3):
        with pytest.raises(ValueError, match=r"rates must lie in \[0, 1\]"):
            site_prevalence("internal", {"iph": rate})


def test_a_lesion_thinner_than_the_slab_spacing_stays_in_the_mask(atlas):
    """Subject 604's small IPH falls between the 5 mm slices with less than half a slab's coverage; it is in the
    scan's labels, so its slabs keep it in the mask (it vanished from the mask before)."""
    ph = _render(atlas, 604, ("iph",))
    assert ph.findings["iph"] == 1
    for slice_mm in (5.0, 1.25):
        _, lab, _ = acquire(ph.hu, ph.labels, ph.affine, "A", slice_mm, 120, np.random.default_rng(0))
        assert (lab == LABEL_CODES["iph"]).any(), slice_mm
        assert set(np.unique(lab)) <= set(np.unique(ph.labels)), slice_mm   # no code that was not drawn


def test_sites_differ_and_are_patient_disjoint():
    plans = plan_cohort(dict(internal=600, external=600, pretrain=300), seed=3)
    by_site = {s: [pp for pp in plans if pp.site == s] for s in ("internal", "external", "pretrain")}
    for s, n in (("internal", 600), ("external", 600), ("pretrain", 300)):
        assert sum(len(pp.slices_mm) for pp in by_site[s]) == n
    frac_a = {s: np.mean([pp.manufacturer == "A" for pp in v]) for s, v in by_site.items()}
    assert frac_a["internal"] > 0.62 and frac_a["external"] < 0.38
    tumour = {s: np.mean(["tumor" in pp.conditions for pp in v]) for s, v in by_site.items()}
    assert tumour["external"] < tumour["internal"]
    ids = [set(pp.patient_id for pp in v) for v in by_site.values()]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    assert any(len(pp.slices_mm) == 2 for pp in plans)
    thick = {t for pp in plans for t in pp.slices_mm}
    assert min(thick) == 0.5 and max(thick) == 5.0
    # sizes of one site never change another site's patients
    again = plan_cohort(dict(internal=10, external=600, pretrain=5), seed=3)
    assert [pp for pp in again if pp.site == "external"] == by_site["external"]


def test_nifti_writer_is_reproducible_and_honest(tmp_path):
    from fmct_lib.data.synthetic.cohort import write_nifti
    affine = np.diag([3.0, 3.0, 5.0, 1.0])
    affine[:3, 3] = (-106, -132, -72)
    data = np.arange(24, dtype=np.int16).reshape(2, 3, 4)
    a = write_nifti(data, affine, tmp_path / "a.nii.gz")
    b = write_nifti(data, affine, tmp_path / "b.nii.gz")
    assert a.read_bytes() == b.read_bytes()
    img = nib.load(a)
    assert nib.aff2axcodes(img.affine) == ("R", "A", "S") and img.header.get_zooms() == (3.0, 3.0, 5.0)
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    assert not list(tmp_path.glob(".*.tmp"))


def test_condition_figure_writes_png_and_pdf(atlas, tmp_path):
    from fmct_lib.data.synthetic.figure import SHOWCASE, condition_figure
    png = condition_figure(tmp_path / "conditions", step=STEP)
    assert png == tmp_path / "conditions.png"
    assert png.stat().st_size > 10_000 and (tmp_path / "conditions.pdf").stat().st_size > 10_000
    import matplotlib.image as mpimg
    image = mpimg.imread(png)
    assert image.shape[1] > image.shape[0] * len(SHOWCASE) / 4       # one column per condition

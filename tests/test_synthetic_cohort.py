"""The synthetic cohort on disk: scan table, label <-> mask consistency, affines, determinism, resume, DICOM."""
from __future__ import annotations

import hashlib
import os

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from fmct_lib.data.manifest import PAPER_TASKS, load_scans
from fmct_lib.data.synthetic import generate_cohort, write_phantom_dicom
from fmct_lib.data.synthetic.lesions import BLEEDS, LABEL_CODES, VENTRICLE_CODE

PREVALENCE = {k: 0.35 for k in ("tumor", "hydrocephalus", "edema", "adrd", "iph", "ivh", "sdh", "edh", "sah",
                                "fracture")}
SIZES = dict(n_internal=9, n_external=3, n_pretrain=2)


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.getbasetemp()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMCT_CACHE_HOME", str(base / "fmct_cache"))
        mp.setenv("FMCT_MANIFEST", str(base / "manifest.csv"))
        mp.setenv("TQDM_DISABLE", "1")
        yield base


@pytest.fixture(scope="module")
def cohort(env):
    root = env / "data_a"
    df = generate_cohort("toy", root=root, seed=5, workers=1, prevalence=PREVALENCE, **SIZES)
    return root, df


def _load(root, rel):
    img = nib.load(root / "synthetic" / rel)
    return np.asarray(img.dataobj), img


def test_scan_table_columns_sites_and_splits(cohort):
    root, df = cohort
    table = load_scans("synthetic", root=root)
    assert len(table) == sum(SIZES.values())
    for col in ["scan_id", "patient_id", "path", "split", "manufacturer", "slice_thickness_mm", "spacing", "kvp",
                "site", "mask_path", "age", *PAPER_TASKS, "bleed_left", "bleed_right", "midline_shift",
                "mass_effect", "fracture"]:
        assert col in table.columns, col
    assert table.groupby("site").size().to_dict() == {"internal": 9, "external": 3, "pretrain": 2}
    assert table.groupby("patient_id")["split"].nunique().max() == 1
    assert set(table["manufacturer"]) <= {"A", "B"} and table["slice_thickness_mm"].between(0.5, 5).all()
    labeled = table[table.site != "pretrain"]
    assert labeled[PAPER_TASKS].notna().all().all()
    assert table.loc[table.site == "pretrain", PAPER_TASKS].isna().all().all()   # empty in the CSV
    # ich is the union of the haemorrhage subtypes
    assert (labeled["ich"] == labeled[list(BLEEDS)].max(axis=1)).all()
    raw = pd.read_csv(root / "synthetic" / "scans.csv", dtype=str, keep_default_na=False)
    assert (raw.loc[raw.site == "pretrain", "tumor"] == "").all()
    assert not raw["path"].str.startswith("/").any()                            # relative paths


def test_labels_match_masks(cohort):
    root, df = cohort
    seen = set()
    for _, row in df[df.site != "pretrain"].iterrows():
        mask, _ = _load(root, row.mask_path)
        for name, code in LABEL_CODES.items():
            assert int(row[name]) == int((mask == code).any()), (row.scan_id, name)
            seen.add(name) if row[name] == 1 else None
        assert (mask == VENTRICLE_CODE).any()
    assert {"iph", "sdh", "tumor", "edema"} <= seen


def test_bleed_side_matches_the_mask_side(cohort):
    root, df = cohort
    checked = 0
    for _, row in df[(df.site != "pretrain") & (df.ich == 1)].iterrows():
        if row.bleed_left == row.bleed_right:
            continue
        mask, img = _load(root, row.mask_path)
        vol, _ = _load(root, row.path)
        bleed = np.isin(mask, [LABEL_CODES[b] for b in BLEEDS])
        x = lambda m: (img.affine @ np.c_[np.argwhere(m), np.ones(m.sum())].T)[0]   # world x (RAS)
        midline = np.median(x((vol > 0) & (vol < 100)))
        assert (x(bleed).mean() > midline) == bool(row.bleed_right), row.scan_id
        checked += 1
    assert checked >= 2


def test_extra_axial_masks_touch_the_skull_and_ivh_is_ventricular(cohort):
    root, df = cohort
    for _, row in df[(df.site != "pretrain") & ((df.sdh == 1) | (df.edh == 1) | (df.ivh == 1))].iterrows():
        mask, _ = _load(root, row.mask_path)
        vol, _ = _load(root, row.path)
        bone = ndi.binary_dilation(vol > 400, iterations=2)
        for name in ("sdh", "edh"):
            if row[name] == 1:
                assert (bone & (mask == LABEL_CODES[name])).any(), (row.scan_id, name)
        if row.ivh == 1:   # IVH sits inside (or replaces) the ventricular system, near its label
            ivh = mask == LABEL_CODES["ivh"]
            near_vent = ndi.binary_dilation(mask == VENTRICLE_CODE, iterations=2)
            assert (ivh & near_vent).sum() >= 0.5 * ivh.sum(), row.scan_id


def test_affine_is_ras_with_the_stated_spacing(cohort):
    root, df = cohort
    for _, row in df.iterrows():
        vol, img = _load(root, row.path)
        mask, mimg = _load(root, row.mask_path)
        assert nib.aff2axcodes(img.affine) == ("R", "A", "S")
        assert vol.dtype == np.int16 and mask.dtype == np.uint8 and mask.shape == vol.shape
        np.testing.assert_allclose(img.affine, mimg.affine)
        zooms = tuple(float(z) for z in img.header.get_zooms())
        assert zooms == tuple(float(v) for v in row.spacing.split("x"))
        assert zooms[2] == row.slice_thickness_mm and zooms[0] == 3.0
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        # the head is upright: the orbits' fat is anterior and inferior, the vertex is narrow
        world = lambda m: (img.affine @ np.c_[np.argwhere(m), np.ones(m.sum())].T)[:3]
        head = vol > -500
        z = world(head)[2]
        assert (z > 80).sum() < (np.abs(z - 20) < 10).sum() * 0.5
        y = world((vol > 1000))[1]
        assert np.median(y) < 40                                                  # skull behind the face


def test_same_seed_same_bytes_any_worker_count(cohort, env):
    root_a, df_a = cohort
    small = dict(n_internal=2, n_external=1, n_pretrain=1)
    df_b = generate_cohort("toy", root=env / "data_b", seed=5, workers=2, prevalence=PREVALENCE, **small)
    assert len(df_b) == 4
    for rel in list(df_b["path"]) + list(df_b["mask_path"]):
        a = (root_a / "synthetic" / rel).read_bytes()
        b = (env / "data_b" / "synthetic" / rel).read_bytes()
        assert hashlib.sha256(a).digest() == hashlib.sha256(b).digest(), rel
    common = df_a.set_index("scan_id").loc[df_b["scan_id"]].reset_index()
    pd.testing.assert_frame_equal(common, df_b.reset_index(drop=True), check_dtype=False)


def test_resume_skips_finished_scans_and_refuses_another_config(cohort, env, capsys):
    root, df = cohort
    vol = root / "synthetic" / df["path"].iloc[0]
    before = vol.stat().st_mtime_ns
    again = generate_cohort("toy", root=root, seed=5, workers=1, prevalence=PREVALENCE, **SIZES)
    assert vol.stat().st_mtime_ns == before
    pd.testing.assert_frame_equal(again, df)
    # a run killed while writing one patient: its files are missing, a half-written volume is left; the rerun says
    # what it kept, writes that patient's scans as they were and removes the temporary file (an audit: it stayed)
    out = root / "synthetic"
    scans = df[df.patient_id == df.patient_id.iloc[0]].scan_id.tolist()
    volume = out / "volumes" / f"{scans[0]}.nii.gz"
    written = volume.read_bytes()
    for sid in scans:
        for sub, ext in (("meta", ".json"), ("volumes", ".nii.gz"), ("masks", ".nii.gz")):
            (out / sub / f"{sid}{ext}").unlink()
    half = out / "volumes" / f".{scans[0]}.nii.gz.k1ll3d_x.gz"  # atomic_open's temporary name
    half.write_bytes(written[:100])  # just written: under the cohort's lock no live writer's, so it goes at once
    # one generator at a time: while another holds the lock, finishing the cohort is refused at once, naming it
    from fmct_lib.data.manifest import dataset_lock
    from fmct_lib.io import LockBusy, exclusive_lock
    with exclusive_lock(dataset_lock("synthetic", root), what="another generator"):
        with pytest.raises(LockBusy, match=rf"synthetic cohort {out} is in use by another process \(pid {os.getpid()}"):
            generate_cohort("toy", root=root, seed=5, workers=1, prevalence=PREVALENCE, **SIZES)
    assert half.exists() and not volume.exists()
    capsys.readouterr()
    again = generate_cohort("toy", root=root, seed=5, workers=1, prevalence=PREVALENCE, **SIZES)
    assert (f"{len(df) - len(scans)} of {len(df)} scans were generated in an earlier run and are kept; generating "
            f"the other {len(scans)}") in "".join(capsys.readouterr())
    assert volume.read_bytes() == written and not half.exists()
    pd.testing.assert_frame_equal(again, df)
    with exclusive_lock(dataset_lock("synthetic", root), what="another generator"):  # complete: read at once
        pd.testing.assert_frame_equal(generate_cohort("toy", root=root, seed=5, workers=1, prevalence=PREVALENCE,
                                                      **SIZES), df)
    with pytest.raises(ValueError, match="cohort.json.*another configuration.*seed"):
        generate_cohort("toy", root=root, seed=6, workers=1, prevalence=PREVALENCE, **SIZES)
    from fmct_lib.cli import main
    assert main(["synth", "--profile", "toy", "--root", str(root), "--seed", "6"]) == 2


@pytest.mark.parametrize("flavour", ["rsna", "cq500"])
def test_dicom_round_trip(cohort, tmp_path, flavour):
    from fmct_lib.data import dicom
    root, df = cohort
    row = load_scans("synthetic", root=root).iloc[0]
    files = write_phantom_dicom(row, tmp_path, flavour)
    img = nib.load(row.path)
    assert len(files) == img.shape[2]
    back = dicom.read_dicom_series(files[0].parent)
    np.testing.assert_allclose(back.affine, img.affine, atol=1e-3)
    np.testing.assert_allclose(back.hu, np.asarray(img.dataobj), atol=0.5)


def test_the_pool_is_its_own_patients_seed_and_split_and_grows_in_place(env):
    """Issue 24: the unlabelled pool is disjoint by patient from every labelled split, drawn from its own seed,
    marked split 'pretrain' (read by pretraining only), and grows without touching the scans already there."""
    from fmct_lib.data.splits import POOL_SPLIT
    from fmct_lib.data.synthetic.cohort import plan_cohort
    from fmct_lib.train.trainer import pretraining_scan_ids

    root = env / "data_pool"
    sizes = dict(n_internal=6, n_external=2, n_pretrain=3)
    df = generate_cohort("toy", root=root, seed=5, workers=1, prevalence=PREVALENCE, **sizes)
    pool, labelled = df[df.site == "pretrain"], df[df.site != "pretrain"]
    assert (pool["split"] == POOL_SPLIT).all() and set(labelled["split"]) <= {"train", "val", "test"}
    assert not set(pool["patient_id"]) & set(labelled["patient_id"])
    # its own seed: another pool seed changes the pool's patients and nothing else
    a = plan_cohort(dict(internal=20, external=5, pretrain=20), seed=5, pool_seed=6)
    b = plan_cohort(dict(internal=20, external=5, pretrain=20), seed=5, pool_seed=7)
    pool_a, pool_b = ([p.subject_seed for p in plans if p.site == "pretrain"] for plans in (a, b))
    assert not set(pool_a) & set(pool_b)
    assert [p for p in a if p.site != "pretrain"] == [p for p in b if p.site != "pretrain"]
    # the default pool seed is not the labelled seed: pool patient i is not labelled patient i re-drawn
    default = plan_cohort(dict(internal=20, external=0, pretrain=20), seed=5)
    assert [p.subject_seed for p in default if p.site == "pretrain"] != \
        [p.subject_seed for p in plan_cohort(dict(internal=0, external=0, pretrain=20), seed=5, pool_seed=5)]
    # growing the pool keeps the scans there byte for byte and adds the new ones
    first = root / "synthetic" / pool["path"].iloc[0]
    stamp = first.stat().st_mtime_ns
    grown = generate_cohort("toy", root=root, seed=5, workers=1, prevalence=PREVALENCE, **{**sizes, "n_pretrain": 6})
    assert first.stat().st_mtime_ns == stamp and (grown.site == "pretrain").sum() == 6
    pd.testing.assert_frame_equal(grown[grown.site != "pretrain"].reset_index(drop=True),
                                  labelled.reset_index(drop=True))
    # pretraining reads the training split and the pool, never validation or test
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("FMCT_DATA", str(root))
        ids = set(pretraining_scan_ids("synthetic"))
    want = grown[grown.split.isin(["train", POOL_SPLIT]) & (grown.site != "external")]
    assert ids == set(want["scan_id"]) and ids >= set(grown.loc[grown.site == "pretrain", "scan_id"])

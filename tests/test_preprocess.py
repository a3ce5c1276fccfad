"""The preprocessing chain: geometry, cubic resampling, windows, the spec hash, bad inputs."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from fmct_lib.data import preprocess as preprocess_module
from fmct_lib.data.preprocess import (AIR_HU, PreprocessError, PreprocessSpec, apply_windows, load_volume,
                                 model_input, paper_spec, preprocess, reference_spec, resample, to_canvas,
                                 to_canvas_with_affine)

SMALL = PreprocessSpec(name="paper", spacing=1.0, canvas=40, eval_crop=32, input_size=16)


def smooth_field(shape, seed=0):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.normal(0, 300, shape), 2.0).astype(np.float32) * 10


def blob_volume(shape, affine, world_point, sigma_mm=2.5):
    """Air with a bright Gaussian blob centred on ``world_point`` (mm, RAS)."""
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 3)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    d2 = ((world - world_point) ** 2).sum(1).reshape(shape)
    return (AIR_HU + 2500 * np.exp(-d2 / (2 * sigma_mm ** 2))).astype(np.float32)


# --------------------------------------------------------------------------------------- geometry

LPS_ANISO = np.array([[-0.8, 0, 0, 30.0], [0, -0.9, 0, 12.0], [0, 0, 3.0, -40.0], [0, 0, 0, 1]])
PERMUTED = np.array([[0, 0, -2.5, 20.0], [0.7, 0, 0, -10.0], [0, -0.9, 0, 15.0], [0, 0, 0, 1]])


@pytest.mark.parametrize("affine,shape", [(LPS_ANISO, (48, 44, 16)), (PERMUTED, (50, 40, 20))])
def test_world_point_lands_on_its_voxel_after_ras_and_resampling(affine, shape):
    point = affine[:3, :3] @ (np.array(shape) / 2 + [3.3, -4.6, 1.4]) + affine[:3, 3]
    hu = blob_volume(shape, affine, point)
    canvas, canvas_affine = to_canvas_with_affine(hu, affine, SMALL)
    assert canvas.shape == (40, 40, 40) and canvas.dtype == torch.int16
    np.testing.assert_allclose(canvas_affine[:3, :3], np.eye(3), atol=1e-9)  # RAS, 1 mm
    peak = np.array(np.unravel_index(int(canvas.argmax()), canvas.shape))
    expected = np.linalg.solve(canvas_affine, np.append(point, 1))[:3]
    np.testing.assert_array_equal(peak, np.round(expected))
    weights = (canvas.float() - AIR_HU).clamp(min=0).numpy()
    centroid = np.array([(weights * g).sum() / weights.sum()
                         for g in np.meshgrid(*[np.arange(40)] * 3, indexing="ij")])
    np.testing.assert_allclose(canvas_affine[:3, :3] @ centroid + canvas_affine[:3, 3], point, atol=0.25)


def test_dicom_folder_reads_like_the_array(tmp_path):
    from fmct_lib.data.dicom_write import write_dicom_series
    affine = np.diag([0.8, 0.8, 2.5, 1.0])
    hu = np.round(blob_volume((24, 20, 10), affine, np.array([8.0, 7.0, 11.0])))
    write_dicom_series(hu, affine, tmp_path / "series")
    hu2, affine2 = load_volume(tmp_path / "series")
    np.testing.assert_allclose(affine2, affine, atol=1e-4)
    np.testing.assert_allclose(hu2, hu, atol=1.0)


# ----------------------------------------------------------------------------------- resampling

def test_cubic_resampling_matches_scipy_map_coordinates():
    hu = smooth_field((30, 26, 12))
    affine = np.diag([0.7, 0.9, 2.5, 1.0])
    spec = PreprocessSpec(name="t", spacing=1.1, canvas=None, eval_crop=None, dtype="float32")
    out, out_affine = resample(hu, affine, spec)
    steps = 1.1 / np.array([0.7, 0.9, 2.5])
    n_out = [int(np.round((n - 1) / s + 1)) for n, s in zip(hu.shape, steps)]
    grid = np.meshgrid(*[np.arange(n) * s for n, s in zip(n_out, steps)], indexing="ij")
    expected = ndimage.map_coordinates(hu.astype(np.float64), grid, order=3, mode="nearest")
    assert tuple(out.shape) == tuple(n_out)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-3 * np.abs(hu).max())
    np.testing.assert_allclose(out_affine, np.diag([1.1, 1.1, 1.1, 1.0]))
    # the same scan stored flipped (LPS) resamples to the same RAS grid
    flipped = np.ascontiguousarray(hu[::-1, ::-1])
    lps = affine @ np.array([[-1, 0, 0, 29], [0, -1, 0, 25], [0, 0, 1, 0], [0, 0, 0, 1.0]])
    out2, out_affine2 = resample(flipped, lps, spec)
    np.testing.assert_allclose(out_affine2, out_affine, atol=1e-9)
    np.testing.assert_allclose(out2.numpy(), out.numpy(), atol=1e-3)


def test_zoom_by_integer_factor_matches_scipy_zoom():
    hu = smooth_field((20, 22, 9), seed=1)
    spec = PreprocessSpec(name="t", spacing=0.5, canvas=None, eval_crop=None, dtype="float32")
    out, _ = resample(np.asfortranarray(hu), np.diag([1.0, 1.0, 1.0, 1.0]), spec)  # nibabel-like F order
    # zoom(grid_mode=False) puts output i at input i·(n − 1)/(m − 1): with m = 2n − 1 that is i / 2
    expected = ndimage.zoom(hu.astype(np.float64), [(2 * n - 1) / n for n in hu.shape], order=3,
                            mode="nearest", grid_mode=False)
    assert tuple(out.shape) == expected.shape == (39, 43, 17)
    np.testing.assert_allclose(out.numpy(), expected, atol=2e-3 * np.abs(hu).max())


def test_cubic_reproduces_a_quadratic_where_linear_cannot():
    z = np.arange(40, dtype=np.float64)
    hu = np.broadcast_to((z ** 2)[None, None, :], (4, 4, 40)).astype(np.float32).copy()
    affine = np.diag([1.0, 1.0, 1.0, 1.0])
    cubic = PreprocessSpec(name="t", spacing=0.7, canvas=None, eval_crop=None, dtype="float32")
    linear = PreprocessSpec(name="t", spacing=0.7, canvas=None, eval_crop=None, dtype="float32", interp_order=1)
    pos = np.arange(int(np.round(39 / 0.7 + 1))) * 0.7
    interior = (pos > 10) & (pos < 29)
    exact = pos[interior] ** 2
    c = resample(hu, affine, cubic)[0][1, 1].numpy()[interior]
    lin = resample(hu, affine, linear)[0][1, 1].numpy()[interior]
    np.testing.assert_allclose(c, exact, atol=1e-3)
    assert np.abs(lin - exact).max() > 0.05  # linear overestimates by t(1 − t)


# ---------------------------------------------------------------------------------------- windows

def test_windows_against_a_hand_computation():
    hu = torch.tensor([-1024, -800, -20, 0, 40, 80, 180, 2000, 3000], dtype=torch.int16).reshape(1, 1, 9)
    out = apply_windows(hu, ((40, 80), (80, 200), (600, 2800)))
    assert out.shape == (3, 1, 1, 9) and out.dtype == torch.float32
    expected = np.array([
        [0, 0, 0, 0, 0.5, 1, 1, 1, 1],                                   # [0, 80]
        [0, 0, 0, 0.1, 0.3, 0.5, 1, 1, 1],                               # [-20, 180]
        [0, 0, 780 / 2800, 800 / 2800, 840 / 2800, 880 / 2800, 980 / 2800, 1, 1],  # [-800, 2000]
    ])
    np.testing.assert_allclose(out[:, 0, 0].numpy(), expected, atol=1e-6)


def test_model_input_is_crop_then_windows_then_resize():
    g = torch.Generator().manual_seed(0)
    canvas = torch.randint(-1100, 1500, (2, 40, 40, 40), generator=g, dtype=torch.int16)
    out = model_input(canvas, SMALL)
    assert out.shape == (2, 3, 16, 16, 16) and out.dtype == torch.float32
    crop = canvas[:, 4:36, 4:36, 4:36]
    expected = F.avg_pool3d(apply_windows(crop, SMALL.windows), 2)  # 32 -> 16 area resize = 2x2x2 mean
    torch.testing.assert_close(out, expected)


def test_paper_chain_matches_the_monai_compose():
    """Our chain equals MONAI's Orientation/Spacing(mode=3)/CropForeground/pad/windows/crop/resize."""
    from monai.data import MetaTensor
    from monai.transforms import (CenterSpatialCrop, CropForeground, Orientation, Resize,
                                  ResizeWithPadOrCrop, ScaleIntensityRange, Spacing)
    affine = np.diag([-0.8, -0.9, 3.0, 1.0])
    point = np.array([-12.0, -15.0, 20.0])
    hu = blob_volume((70, 64, 16), affine, point, sigma_mm=6)
    hu[5:65, 25:40, 4:12] += 1500  # a slab: the head box is longer than the canvas along x only
    spec = PreprocessSpec(name="paper", spacing=1.0, canvas=41, eval_crop=32, input_size=16)
    img = MetaTensor(torch.from_numpy(hu)[None], affine=torch.from_numpy(affine))
    img = Spacing(pixdim=1.0, mode=3)(Orientation(axcodes="RAS", labels=None)(img))
    img = CropForeground(select_fn=lambda v: v > spec.foreground_hu, margin=0, allow_smaller=True)(img)
    img = ResizeWithPadOrCrop(41, value=AIR_HU)(img)
    img = torch.cat([ScaleIntensityRange(lv - w / 2, lv + w / 2, 0.0, 1.0, clip=True)(img)
                     for lv, w in spec.windows])
    expected = Resize((16, 16, 16), mode="area")(CenterSpatialCrop(32)(img))
    ours = preprocess(hu, spec, affine=affine)
    assert ours.shape == (3, 16, 16, 16)
    assert (ours - torch.as_tensor(expected)).abs().max() < 0.007  # int16 HU rounding: 0.5 / 80


def test_reference_chain_matches_the_authors_monai_transforms():
    from monai.data import MetaTensor
    from monai.transforms import CropForeground, Orientation, Resize, ScaleIntensityRange, Spacing
    affine = np.diag([0.9, -0.9, 2.0, 1.0])
    hu = blob_volume((40, 36, 14), affine, np.array([14.0, -12.0, 12.0]), sigma_mm=5)
    spec = PreprocessSpec(**{**reference_spec("toy").to_dict(), "spacing": 1.5})
    img = MetaTensor(torch.from_numpy(hu)[None], affine=torch.from_numpy(affine))
    img = Spacing(pixdim=1.5, mode=3)(Orientation(axcodes="RAS", labels=None)(img))
    img = CropForeground(margin=0)(img)  # default select: HU > 0
    img = torch.cat([ScaleIntensityRange(lv - w // 2, lv + w // 2, 0.0, 1.0, clip=True)(img)
                     for lv, w in spec.windows])
    expected = Resize((16, 16, 16))(img)  # MONAI default mode: area
    ours = to_canvas(hu, affine, spec)
    assert ours.shape == (3, 16, 16, 16) and ours.dtype == torch.float16
    assert (ours.float() - torch.as_tensor(expected)).abs().max() < 2e-3  # float16 storage
    torch.testing.assert_close(model_input(ours[None], spec), ours[None].float())


def test_preprocess_reads_a_nifti_like_the_array(tmp_path):
    affine = np.diag([-0.9, 0.9, 2.0, 1.0])
    hu = np.round(blob_volume((44, 40, 12), affine, np.array([-20.0, 18.0, 10.0]))).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "scan.nii.gz")
    torch.testing.assert_close(preprocess(tmp_path / "scan.nii.gz", SMALL), preprocess(hu, SMALL, affine))


# ------------------------------------------------------------------------------------------- spec

def test_spec_hash_is_stable_and_changes_with_the_chain():
    spec = paper_spec("paper")
    assert spec.hash == "5aa148469caa"  # pinned: a change renames every cache folder
    assert (spec.canvas, spec.eval_crop, spec.input_size, spec.spacing) == (224, 192, 96, 1.0)
    assert spec.windows == ((40, 80), (80, 200), (600, 2800))
    again = PreprocessSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and again.hash == spec.hash
    assert PreprocessSpec(**{**spec.to_dict(), "spacing": 1, "windows": [[40, 80], [80, 200], [600, 2800]]}).hash \
        == spec.hash  # number types do not matter
    changed = [spec.__class__(**{**spec.to_dict(), **c}) for c in (
        {"spacing": 1.5}, {"interp_order": 1}, {"windows": [[80, 200], [40, 80], [600, 2800]]},
        {"canvas": 200}, {"foreground_hu": 0.0})]
    hashes = {spec.hash, reference_spec().hash, paper_spec("toy").hash, *(c.hash for c in changed)}
    assert len(hashes) == 2 + 1 + len(changed)
    # the cache key: what a canvas chain stores (windows, crop and resize are applied on reading)
    assert spec.cache_key == "a75336beb321"  # pinned: a change renames every cache folder
    assert {c.cache_key for c in changed if c.windows == spec.windows} & {spec.cache_key} == set()
    on_reading = [spec.__class__(**{**spec.to_dict(), **c}) for c in (
        {"input_size": 80}, {"eval_crop": 160}, {"resize_mode": "trilinear"}, {"windows": [[40, 80]]})]
    assert {c.cache_key for c in on_reading} == {spec.cache_key} and spec.hash not in {c.hash for c in on_reading}
    stack = reference_spec()  # no canvas: the cache holds the final window stack, so every field counts
    assert replace(stack, input_size=80).cache_key != stack.cache_key == stack.hash
    with pytest.raises(ValueError, match="unknown"):
        PreprocessSpec.from_dict({**spec.to_dict(), "colour": "red"})
    with pytest.raises(ValueError, match="eval_crop"):
        PreprocessSpec(name="x", canvas=100, eval_crop=120)


def test_the_chains_code_version_renames_its_caches_and_runs(monkeypatch):
    """A bumped ``CHAIN_VERSION`` gives every spec another hash (runs, frozen features) and cache key (cache folder)
    and is written into the cache's ``spec.json``; version 1 leaves the names pinned above as they were."""
    spec, stack = paper_spec("paper"), reference_spec()
    names = {spec.hash, spec.cache_key, stack.hash, stack.cache_key}
    assert (spec.hash, spec.cache_key) == ("5aa148469caa", "a75336beb321") and "chain_version" not in spec.stored()
    monkeypatch.setattr(preprocess_module, "CHAIN_VERSION", 2)
    bumped = {spec.hash, spec.cache_key, stack.hash, stack.cache_key}
    assert len(bumped) == 3 and not bumped & names  # a window stack's cache key is its hash, bumped or not
    assert spec.stored()["chain_version"] == 2 and stack.stored()["chain_version"] == 2


CHAIN_GOLDEN = Path(__file__).parent / "assets" / f"preprocess_chain_v{preprocess_module.CHAIN_VERSION}.npz"
GOLDEN_SPECS = (PreprocessSpec("golden-canvas", canvas=40, eval_crop=32, input_size=16),
                PreprocessSpec("golden-stack", canvas=None, eval_crop=None, input_size=16, foreground_hu=0.0,
                               dtype="float16"),
                PreprocessSpec("golden-spl-linear", orientation="SPL", interp_order=1, windows=((512.0, 3072.0),),
                               canvas=None, eval_crop=None, input_size=16, foreground_hu=0.0, dtype="float16"))


def chain_outputs(folder: Path) -> dict[str, np.ndarray]:
    """A head (skull shell, brain, a bleed, noise) on a permuted, flipped grid of 0.9 × 0.8 × 4 mm, written as
    NIfTI and read back, through both stages of a canvas chain and through two window-stack chains (RAS and cubic as
    the authors', SPL and linear as CT-FM's)."""
    shape = (36, 40, 10)
    affine = np.array([[0, -0.8, 0, 16.0], [0.9, 0, 0, -14.0], [0, 0, 4.0, -18.0], [0, 0, 0, 1]])
    idx = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1)
    world = idx @ affine[:3, :3].T + affine[:3, 3]
    r = np.sqrt(((world / [15.0, 14.0, 17.0]) ** 2).sum(-1))
    hu = np.where(r < 0.85, 35.0, np.where(r < 1.0, 1000.0, -1000.0))
    hu[((world - [4.0, 3.0, 2.0]) ** 2).sum(-1) < 16] = 70.0
    hu = np.round(hu + np.random.default_rng(0).normal(0, 5, shape)).astype(np.int16)
    nib.save(nib.Nifti1Image(hu, affine), folder / "head.nii.gz")
    volume, read_affine = load_volume(folder / "head.nii.gz")
    canvas, canvas_affine = to_canvas_with_affine(volume, read_affine, GOLDEN_SPECS[0])
    stack, stack_affine = to_canvas_with_affine(volume, read_affine, GOLDEN_SPECS[1])
    other, other_affine = to_canvas_with_affine(volume, read_affine, GOLDEN_SPECS[2])  # CT-FM's kind of chain
    return {"canvas": canvas.numpy(), "canvas_affine": canvas_affine,
            "input": model_input(canvas[None], GOLDEN_SPECS[0])[0].numpy(),
            "stack": stack.float().numpy(), "stack_affine": stack_affine,
            "spl_linear": other.float().numpy(), "spl_linear_affine": other_affine}


def test_the_chain_computes_what_its_code_version_computed(tmp_path):
    """What the chain computes is keyed by ``CHAIN_VERSION`` (the spec's fields cannot say that the code changed):
    its output on a fixed scan is compared with what this version computed when it was made. When this fails because the chain was
    changed on purpose, bump ``CHAIN_VERSION`` in ``fmct_lib/data/preprocess.py`` and write the new outputs
    (``python tests/test_preprocess.py``). Tolerances: a canvas voxel may differ by 1 HU (the int16 rounding of the
    float spline on another CPU's kernels) in at most 0.1% of voxels; the model input of the recorded canvas by 1e-4
    and the stacks by 1e-3 of their [0, 1] range; a changed resampling, canvas placement, window or resize moves far
    more."""
    assert CHAIN_GOLDEN.exists(), f"{CHAIN_GOLDEN}: write the outputs of this CHAIN_VERSION (python {__file__})"
    golden, now = np.load(CHAIN_GOLDEN), chain_outputs(tmp_path)
    assert now["canvas"].shape == golden["canvas"].shape and now["stack"].shape == golden["stack"].shape
    off = np.abs(now["canvas"].astype(np.int32) - golden["canvas"])
    assert off.max() <= 1 and (off > 0).mean() <= 1e-3, (
        f"the canvas differs from this CHAIN_VERSION's (max {off.max()} HU, {(off > 0).mean():.2%} of voxels): "
        "bump CHAIN_VERSION if the chain changed on purpose")
    # the model input of the recorded canvas (of today's, it would move with the 1 HU allowed above)
    now["input"] = model_input(torch.from_numpy(golden["canvas"])[None], GOLDEN_SPECS[0])[0].numpy()
    for name, atol in (("input", 1e-4), ("stack", 1e-3), ("spl_linear", 1e-3), ("canvas_affine", 1e-6),
                       ("stack_affine", 1e-6), ("spl_linear_affine", 1e-6)):
        np.testing.assert_allclose(now[name], golden[name], atol=atol, rtol=0, err_msg=(
            f"{name} differs from this CHAIN_VERSION's: bump CHAIN_VERSION if the chain changed on purpose"))


# ------------------------------------------------------------------------------------- bad input

def _nifti(path, data, affine=np.eye(4)):
    nib.save(nib.Nifti1Image(data, affine), path)
    return path


def test_truncated_gzip_names_the_file(tmp_path):
    good = _nifti(tmp_path / "good.nii.gz", np.random.default_rng(0).normal(size=(20, 20, 20)).astype(np.float32))
    bad = tmp_path / "truncated.nii.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(PreprocessError, match=r"truncated\.nii\.gz.*truncated or corrupt gzip"):
        load_volume(bad)


def test_nan_values(tmp_path):
    data = np.zeros((6, 6, 6), np.float32)
    data[2, 3, 1] = np.nan
    with pytest.raises(PreprocessError, match=r"nan\.nii.*NaN"):
        load_volume(_nifti(tmp_path / "nan.nii", data))
    with pytest.raises(PreprocessError, match="NaN"):
        load_volume(data, affine=np.eye(4))


def test_2d_and_4d_images(tmp_path):
    with pytest.raises(PreprocessError, match=r"slice\.nii.*2-D image"):
        load_volume(_nifti(tmp_path / "slice.nii", np.zeros((8, 8), np.int16)))
    with pytest.raises(PreprocessError, match=r"one\.nii.*2-D image"):
        load_volume(_nifti(tmp_path / "one.nii", np.zeros((8, 8, 1), np.int16)))
    with pytest.raises(PreprocessError, match=r"series\.nii.*4-D image"):
        load_volume(_nifti(tmp_path / "series.nii", np.zeros((8, 8, 6, 3), np.int16)))
    noise = np.random.default_rng(0).integers(-1000, 1000, (8, 8, 6, 1)).astype(np.int16)
    hu, _ = load_volume(_nifti(tmp_path / "single.nii", noise))
    assert hu.shape == (8, 8, 6)  # a trailing singleton is just NIfTI's 4-D habit


def test_zero_and_negative_spacing(tmp_path):
    with pytest.raises(PreprocessError, match="zero voxel spacing"):
        load_volume(np.zeros((6, 6, 6)), affine=np.diag([1.0, 0.0, 1.0, 1.0]))
    flat = nib.Nifti1Image(np.zeros((6, 6, 6), np.int16), None)
    flat.set_sform(np.diag([1.0, 1.0, 0.0, 1.0]), code=2)  # a zero slice spacing in the sform
    nib.save(flat, tmp_path / "flat.nii")
    with pytest.raises(PreprocessError, match=r"flat\.nii.*zero voxel spacing"):
        load_volume(tmp_path / "flat.nii")
    img = nib.Nifti1Image(np.zeros((6, 6, 6), np.int16), None)
    img.header["pixdim"][1:4] = [0.5, -0.5, 2.0]
    nib.save(img, tmp_path / "negative.nii")
    with pytest.raises(PreprocessError, match=r"negative\.nii.*must be positive"):
        load_volume(tmp_path / "negative.nii")


def test_empty_folder_and_missing_path(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(PreprocessError, match=r"empty.*empty folder"):
        load_volume(tmp_path / "empty")
    with pytest.raises(PreprocessError, match=r"nowhere\.nii.*no such file"):
        load_volume(tmp_path / "nowhere.nii")


def test_an_image_without_head_is_rejected():
    with pytest.raises(PreprocessError, match="no voxel above"):
        to_canvas(np.full((10, 10, 10), AIR_HU, np.float32), np.eye(4), SMALL)


def _head_nifti(path, *, sform=None, qform=None):
    """A plausible head (air, soft-tissue centre) with the given (affine, code) sform and qform."""
    hu = np.full((60, 60, 40), AIR_HU, np.int16)
    hu[10:50, 10:50, 5:35] = 40
    img = nib.Nifti1Image(hu, np.eye(4))
    img.set_sform(*(sform or (None, 0)))
    img.set_qform(*(qform or (None, 0)))
    nib.save(img, path)
    return path


def test_nifti_without_orientation_is_refused_naming_the_file(tmp_path):
    from fmct_lib.data.preprocess import load_checked
    path = _head_nifti(tmp_path / "nocode.nii.gz")
    assert nib.load(path).header["sform_code"] == nib.load(path).header["qform_code"] == 0
    with pytest.raises(PreprocessError, match="no orientation") as err:
        load_checked(path)
    assert str(path) in str(err.value)
    assert load_checked(_head_nifti(tmp_path / "sform.nii.gz", sform=(np.diag([2.0, 2, 3, 1]), 1))).flags == ()
    assert load_checked(_head_nifti(tmp_path / "qform.nii.gz", qform=(np.diag([2.0, 2, 3, 1]), 1))).flags == ()


def test_nifti_sform_and_qform_disagreeing_are_refused_or_flagged(tmp_path):
    from fmct_lib.data.preprocess import load_checked
    ras, las = np.diag([2.0, 2, 3, 1]), np.diag([-2.0, 2, 3, 1])
    flipped = _head_nifti(tmp_path / "flipped.nii.gz", sform=(ras, 1), qform=(las, 1))
    with pytest.raises(PreprocessError, match=r"sform \(RAS\) and the qform \(LAS\)") as err:
        load_checked(flipped)
    assert str(flipped) in str(err.value)
    shifted = ras.copy()
    shifted[:3, 3] = [0.0, 0.0, 5.0]  # same directions, origin 5 mm apart: kept with the sform, flagged
    scan = load_checked(_head_nifti(tmp_path / "shifted.nii.gz", sform=(ras, 1), qform=(shifted, 1)))
    assert scan.flags == ("sform_qform_differ",) and "5 mm" in scan.notes["sform_qform_differ"]
    np.testing.assert_array_equal(scan.affine, ras)
    assert load_checked(_head_nifti(tmp_path / "same.nii.gz", sform=(ras, 1), qform=(ras, 1))).flags == ()


if __name__ == "__main__":  # write the chain's outputs for the current CHAIN_VERSION (see the test above)
    import tempfile
    with tempfile.TemporaryDirectory() as folder:
        if CHAIN_GOLDEN.exists():  # rewritten without a bump, the test would pass on a changed chain
            raise SystemExit(f"{CHAIN_GOLDEN} exists: bump CHAIN_VERSION for a new chain (or delete it on purpose)")
        np.savez_compressed(CHAIN_GOLDEN, **chain_outputs(Path(folder)))
        print(f"wrote {CHAIN_GOLDEN}")

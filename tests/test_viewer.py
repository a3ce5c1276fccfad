"""The attention viewer, driven programmatically (no browser): controls → rendered image."""
import io

import numpy as np
import pytest
import torch
from matplotlib import colormaps
from matplotlib.image import imread

from fmct_lib.config import get_profile
from fmct_lib.interpret import model_voxel_mm
from fmct_lib.interpret.attention import AttentionResult
from fmct_lib.interpret.viewer import AttentionViewer, display_slice
from fmct_lib.models.vit3d import vit_from_config

TOY = get_profile("toy")
S, P = TOY.model.img_size, TOY.model.patch_size


def phantom():
    """Three window channels with different content, so window presets are distinguishable."""
    z, y, x = np.meshgrid(*(np.linspace(-1, 1, S),) * 3, indexing="ij")
    r = np.sqrt(x**2 + y**2 + z**2)
    return np.stack([(r < 0.8) * 0.6, (r < 0.5) * 0.9 + 0.05 * x, (np.abs(r - 0.85) < 0.1) * 1.0]).astype(np.float32)


@pytest.fixture(scope="module")
def viewer():
    torch.manual_seed(0)
    volume = phantom()
    encoders = {"pretrained": vit_from_config(TOY.model), "finetuned": vit_from_config(TOY.model)}
    return AttentionViewer.from_encoders(volume, encoders, model_voxel_mm(TOY))


def decoded(png: bytes) -> np.ndarray:
    return np.round(imread(io.BytesIO(png))[..., :3] * 255).astype(np.uint8)


def test_display_orientation_is_radiological():
    vol = np.zeros((4, 5, 6))  # RAS: axis 0 → right, 1 → anterior, 2 → superior
    vol[3, 4, 2] = 1.0  # right, anterior
    axial = display_slice(vol, "axial", 2)
    assert axial.shape == (5, 4) and axial[0, 0] == 1.0  # anterior at the top, patient's right on the left
    vol[:] = 0
    vol[3, 1, 5] = 1.0  # right, superior
    coronal = display_slice(vol, "coronal", 1)
    assert coronal.shape == (6, 4) and coronal[0, 0] == 1.0
    vol[:] = 0
    vol[2, 4, 5] = 1.0  # anterior, superior
    sagittal = display_slice(vol, "sagittal", 2)
    assert sagittal.shape == (6, 5) and sagittal[0, 0] == 1.0


def test_slice_slider_changes_the_image_and_back(viewer):
    viewer.show.value, viewer.opacity.value = "attention", 0.5
    viewer.slice.value = 5
    before, shown = viewer.render(), viewer.images["pretrained"].value
    viewer.slice.value = 10
    after = viewer.render()
    assert not np.array_equal(before, after)
    assert viewer.images["pretrained"].value != shown  # the widget was redrawn by the observer
    np.testing.assert_array_equal(decoded(viewer.images["pretrained"].value), viewer.render_panel("pretrained"))
    viewer.slice.value = 5
    np.testing.assert_array_equal(viewer.render(), before)  # same controls, same picture


def test_opacity_zero_shows_exactly_the_windowed_slice(viewer):
    viewer.opacity.value, viewer.axis.value, viewer.slice.value = 0.0, "coronal", 7
    for window, channel in (("brain", 0), ("subdural", 1), ("bone", 2)):
        viewer.window.value = window
        gray = np.round(np.clip(display_slice(viewer.volume[channel], "coronal", 7), 0, 1) * 255).astype(np.uint8)
        expected = np.repeat(np.repeat(gray, viewer.zoom, 0), viewer.zoom, 1)
        panel = viewer.render_panel("finetuned")
        np.testing.assert_array_equal(panel, np.stack([expected] * 3, axis=-1))
    # with opacity 0 the layer, head and map type do not matter
    reference = viewer.render()
    viewer.layer.value, viewer.head.value, viewer.show.value = 0, 1, "distance"
    np.testing.assert_array_equal(viewer.render(), reference)
    viewer.layer.value, viewer.head.value, viewer.show.value = TOY.model.depth - 1, "mean", "attention"


def test_window_is_hidden_under_an_opaque_overlay(viewer):
    viewer.opacity.value, viewer.axis.value, viewer.slice.value = 1.0, "axial", 8
    viewer.window.value = "brain"
    brain = viewer.render()
    viewer.window.value = "bone"
    np.testing.assert_array_equal(viewer.render(), brain)
    viewer.opacity.value = 0.5
    assert not np.array_equal(viewer.render(), brain)


def test_layer_head_and_map_type_change_the_overlay(viewer):
    viewer.opacity.value, viewer.axis.value, viewer.slice.value = 1.0, "axial", 9
    viewer.show.value, viewer.layer.value, viewer.head.value = "attention", 0, "mean"
    images = {"layer 1": viewer.render()}
    viewer.layer.value = 1
    images["layer 2"] = viewer.render()
    viewer.head.value = 0
    images["layer 2 head 1"] = viewer.render()
    viewer.show.value = "distance"
    images["distance"] = viewer.render()
    viewer.layer.value = "mean"
    images["distance, mean"] = viewer.render()
    names = list(images)
    for a in range(len(names)):
        for b in range(a + 1, len(names)):
            assert not np.array_equal(images[names[a]], images[names[b]]), (names[a], names[b])
    assert "mean of layers" in viewer.info.value and "mm" in viewer.info.value


def test_axis_change_reslices(viewer):
    viewer.opacity.value, viewer.slice.value = 0.3, 8
    viewer.axis.value = "axial"
    axial = viewer.render()
    viewer.axis.value = "sagittal"
    assert viewer.slice.max == S - 1
    assert not np.array_equal(viewer.render(), axial)
    viewer.axis.value = "axial"


def crafted_result(target, value=1.0):
    """cls attends only to patch ``target``; distances increase along axis 0."""
    grid = (S // P,) * 3
    cls = np.zeros((1, 1, *grid), np.float32)
    cls[(0, 0, *target)] = value
    dist = np.broadcast_to(np.arange(grid[0], dtype=np.float32)[:, None, None] * 10, grid)[None, None].copy()
    return AttentionResult(cls_to_patch=cls, cls_to_prefix=np.full((1, 1), 1 - value, np.float32),
                           distance_mm=dist, patch_size=P, voxel_mm=(1.0, 1.0, 1.0))


def test_the_attended_patch_appears_where_it_is():
    target = (3, 0, 2)  # right-most patch in x, posterior-most in y, third in z
    view = AttentionViewer(phantom(), {"a": crafted_result(target), "b": crafted_result(target, 0.25)})
    view.opacity.value, view.axis.value, view.show.value = 1.0, "axial", "attention"
    view.slice.value = target[2] * P + 1  # inside the patch
    panel = view.render_panel("a")
    # where the block should be on screen: right → left columns, posterior → bottom rows
    expected = np.zeros((S, S), bool)
    expected[S - P:, :P] = True
    expected = np.repeat(np.repeat(expected, view.zoom, 0), view.zoom, 1)
    # all the attention on one patch: enrichment N there (the top of the shared scale), 0 elsewhere (its bottom)
    hot, cold = (colour("magma", v) for v in (1.0, 0.0))
    np.testing.assert_array_equal(np.all(panel == hot, axis=-1), expected)
    np.testing.assert_array_equal(np.all(panel == cold, axis=-1), ~expected)
    # enrichment counts the patches' share of the patch attention: the mass the cls token keeps does not matter
    np.testing.assert_array_equal(view.render_panel("b"), panel)
    # a slice outside the patch shows no hot block
    view.slice.value = (target[2] + 1) * P
    assert not np.any(np.all(view.render_panel("a") == hot, axis=-1))


def colour(cmap: str, value: float) -> np.ndarray:
    return np.round(np.array(colormaps[cmap](value)[:3]) * 255).astype(np.uint8)


def grid_result(cls_grid, distance=None):
    """One layer and head with the cls attention ``cls_grid`` (g, g, g) on the patches, 30 % kept on the cls token."""
    cls_grid = np.asarray(cls_grid, np.float32)
    cls = (0.7 * cls_grid / cls_grid.sum())[None, None]
    dist = np.full_like(cls, 10.0) if distance is None else np.asarray(distance, np.float32)[None, None]
    return AttentionResult(cls, np.full((1, 1), 0.3, np.float32), dist, P, (1.0, 1.0, 1.0))


def test_a_near_uniform_map_looks_uniform_on_the_shared_scale():
    """Attention is drawn as multiples of the uniform map on one log scale (1/N … N, magma), not stretched to
    each map's own maximum: a map within ±5 % of uniform stays at the scale's middle colour everywhere."""
    g = S // P
    wobble = 1.0 + 0.05 * np.random.default_rng(0).uniform(-1, 1, (g, g, g))
    view = AttentionViewer(phantom(), {"near uniform": grid_result(wobble), "uniform": grid_result(np.ones((g,) * 3))})
    view.opacity.value, view.show.value = 1.0, "attention"
    assert view.colour_range() == (1 / g**3, g**3)
    middle = np.broadcast_to(colour("magma", 0.5), (S * view.zoom, S * view.zoom, 3))
    np.testing.assert_array_equal(view.render_panel("uniform"), middle)
    near = view.render_panel("near uniform").astype(int)
    # ±5 % is ±0.006 of the log scale's width (log 1.05 / log 64²): a colour step or two of 256
    assert np.abs(near - colour("magma", 0.5).astype(int)).max() <= 4
    assert "log scale 1/64 → 64, the same for every panel" in view.info.value


def bar_strip(png: bytes) -> np.ndarray:
    """The colours along the middle row of a horizontal colour bar's strip, left to right, its outline left out."""
    image = decoded(png).astype(int)
    coloured = np.any(image != 255, axis=-1)
    middle = np.flatnonzero(coloured.mean(axis=1) > 0.8)
    row = middle[len(middle) // 2]
    columns = np.flatnonzero(coloured[row])
    return image[row, columns[0] + 2:columns[-1] - 2]


def nearest_in_colormap(pixels: np.ndarray, cmap: str) -> np.ndarray:
    """For each RGB pixel, the index (0…255) of the closest entry of ``cmap``."""
    lut = colormaps[cmap](np.linspace(0, 1, 256))[:, :3] * 255
    return np.argmin(((pixels[:, None, :] - lut[None]) ** 2).sum(-1), axis=1)


def test_colour_bar_shows_the_current_scale():
    view = AttentionViewer(phantom(), {"a": crafted_result((0, 0, 0))})
    for show, cmap in (("attention", "magma"), ("distance", "viridis")):
        view.show.value = show  # the observer redraws the bar
        strip = bar_strip(view.colour_bar.value)
        index = nearest_in_colormap(strip, cmap)
        assert len(strip) > 200, show
        assert index[0] <= 4 and index[-1] >= 251, (show, index[0], index[-1])  # the whole map, low to high
        assert np.all(np.diff(index) >= 0), show                                # left to right
        assert np.abs(strip - colormaps[cmap](index / 255)[:, :3] * 255).max() < 12  # and nothing but the map
    assert "0.0 → 30.0 mm" in view.info.value


def test_distance_panels_share_one_scale():
    near, far = crafted_result((0, 0, 0)), crafted_result((0, 0, 0))
    far = AttentionResult(far.cls_to_patch, far.cls_to_prefix, far.distance_mm * 2, P, far.voxel_mm)
    view = AttentionViewer(phantom(), {"near": near, "far": far})
    view.opacity.value, view.show.value, view.axis.value = 1.0, "distance", "coronal"
    a, b = view.render_panel("near"), view.render_panel("far")
    assert not np.array_equal(a, b)  # same map shape, twice the distance: different colours
    assert "0.0 → 60.0 mm" in view.info.value


def test_bad_inputs_are_refused():
    result = crafted_result((0, 0, 0))
    with pytest.raises(ValueError, match="model input"):
        AttentionViewer(phantom()[0], {"a": result})
    with pytest.raises(ValueError, match="covers"):
        AttentionViewer(phantom()[:, :8, :8, :8], {"a": result})
    with pytest.raises(ValueError, match="no attention"):
        AttentionViewer(phantom(), {})
    deeper = AttentionResult(np.concatenate([result.cls_to_patch] * 2), np.concatenate([result.cls_to_prefix] * 2),
                             np.concatenate([result.distance_mm] * 2), P, result.voxel_mm)
    with pytest.raises(ValueError, match="differ in"):
        AttentionViewer(phantom(), {"a": result, "b": deeper})
    # same volume, coarser patches (8 of 8 voxels instead of 64 of 4): the shared 1/N … N scale would mislead
    coarse = AttentionResult(np.ones((1, 1, 2, 2, 2), np.float32) / 8, result.cls_to_prefix * 0,
                             np.ones((1, 1, 2, 2, 2), np.float32), 2 * P, result.voxel_mm)
    with pytest.raises(ValueError, match=r"different patch grids \(\[8, 64\] patches\)"):
        AttentionViewer(phantom(), {"a": result, "b": coarse})


def test_layer_and_head_controls_are_numbered_from_one_and_open_on_the_last_layer():
    """3 layers × 2 heads: the labels are 1-based, their values the 0-based indices, and the viewer opens on the
    last layer (as Fig. 5 does), heads averaged."""
    g = S // P
    cls = np.random.default_rng(0).random((3, 2, g, g, g)).astype(np.float32) / g**3
    result = AttentionResult(cls, 1 - cls.sum(axis=(2, 3, 4)), np.full_like(cls, 10.0), P, (1.0, 1.0, 1.0))
    view = AttentionViewer(phantom(), {"a": result})
    assert view.layer.options == (("mean", "mean"), ("1", 0), ("2", 1), ("3", 2))
    assert view.head.options == (("mean", "mean"), ("1", 0), ("2", 1))
    assert (view.layer.value, view.head.value) == (2, "mean") and "layer 3, mean of heads" in view.info.value
    np.testing.assert_allclose(view.overlay_volume("a")[::P, ::P, ::P], cls[2].mean(0) / cls[2].mean(0).sum() * g**3,
                               rtol=1e-5)
    view.layer.value, view.head.value = 0, 1
    assert "layer 1, head 2" in view.info.value
    np.testing.assert_allclose(view.overlay_volume("a")[::P, ::P, ::P], cls[0, 1] / cls[0, 1].sum() * g**3, rtol=1e-5)


# -- lesion outline ---------------------------------------------------------------------------------
CYAN = np.array([0, 255, 255], np.uint8)


def lesion_case():
    """The 8 central patches hold 8·57 of the 8·57 + 56 = 512 units of attention; the lesion mask covers them."""
    g = S // P
    cls = np.ones((g, g, g))
    cls[1:3, 1:3, 1:3] = 57.0
    mask = np.zeros((S, S, S), bool)
    mask[P:3 * P, P:3 * P, P:3 * P] = True
    return grid_result(cls), mask


def head_in_front():
    """A model input whose head is the first three patch rows along x (only the bone window above its floor)."""
    volume = np.zeros((3, S, S, S), np.float32)
    volume[2, :3 * P] = 0.5
    return volume


def test_lesion_outline_is_drawn_on_every_panel_and_can_be_hidden():
    result, mask = lesion_case()
    view = AttentionViewer(phantom(), {"focal": result, "same": result}, mask=mask)
    assert view.outline.value and not view.outline.disabled
    assert view.axis.value == "axial" and view.slice.value == P  # opens on the slice with the most lesion
    z = view.zoom
    square = np.zeros((S * z, S * z), bool)  # the lesion's square on screen (symmetric, so the flips keep it)
    square[P * z:3 * P * z, P * z:3 * P * z] = True
    ring = square.copy()
    ring[P * z + 1:3 * P * z - 1, P * z + 1:3 * P * z - 1] = False  # its one-pixel border
    for opacity in (0.0, 0.5, 1.0):  # drawn over the image and the map alike
        view.opacity.value = opacity
        for name in ("focal", "same"):
            panel = view.render_panel(name)
            np.testing.assert_array_equal(np.all(panel == CYAN, axis=-1), ring)
    view.outline.value = False
    no_mask = AttentionViewer(phantom(), {"focal": result, "same": result})
    no_mask.opacity.value, no_mask.slice.value = 1.0, P
    np.testing.assert_array_equal(view.render(), no_mask.render())
    assert no_mask.outline.disabled and not no_mask.outline.value
    view.slice.value = 3 * P  # past the lesion: nothing to outline
    view.outline.value = True
    assert not np.any(np.all(view.render() == CYAN, axis=-1))


def test_caption_gives_the_lesion_enrichment_within_the_head():
    """Head: 48 patches; lesion: 8 of them, 456 of the head's 8·57 + 40 = 496 units (the air row's 16 units do not
    count): 456/496 ÷ 8/48 = 5.52×; a uniform map 1.00×."""
    result, mask = lesion_case()
    view = AttentionViewer(head_in_front(), {"focal": result, "uniform": grid_result(np.ones((S // P,) * 3))},
                           mask=mask)
    assert "lesion enrichment focal 5.52×, uniform 1.00×" in view.info.value
    with pytest.raises(ValueError, match="lesion mask has shape"):
        AttentionViewer(phantom(), {"focal": result}, mask=mask[:8])
    with pytest.raises(ValueError, match="not a label map"):
        AttentionViewer(phantom(), {"focal": result}, mask=2 * mask.astype(np.uint8))


def test_a_mask_partly_in_the_air_is_outlined_not_measured_and_the_caption_names_the_mask():
    """A lesion drawn loosely, past the head into the air: the viewer still opens and outlines it (it raised before,
    from the enrichment), and says why the enrichment is not given; ``mask_name`` says what the outline holds."""
    result, mask = lesion_case()
    loose = mask.copy()
    loose[3 * P:, P:3 * P, P:3 * P] = True  # rows beyond the head (head_in_front: the first three patch rows)
    view = AttentionViewer(head_in_front(), {"focal": result}, mask=loose, mask_name="lesions (edema+ich)")
    assert "lesions (edema+ich) enrichment not measured (" in view.info.value and "outside the head" in view.info.value
    assert np.any(np.all(view.render() == CYAN, axis=-1))
    named = AttentionViewer(head_in_front(), {"focal": result}, mask=mask, mask_name="lesions (ich)")
    assert "lesions (ich) enrichment focal 5.52×" in named.info.value


def test_caption_follows_the_chosen_head():
    """Head 1 is the focal map, head 2 uniform, each with 0.7 of the cls row on the patches; their mean holds
    0.35·(57 + 8)/512 on each lesion patch and 0.35·(1 + 8)/512 on each other head patch: 520/880 ÷ 8/48 = 3.55×."""
    focal, mask = lesion_case()
    uniform = grid_result(np.ones((S // P,) * 3))
    two_heads = AttentionResult(np.concatenate([focal.cls_to_patch, uniform.cls_to_patch], axis=1),
                                np.full((1, 2), 0.3, np.float32),
                                np.concatenate([focal.distance_mm, uniform.distance_mm], axis=1), P, focal.voxel_mm)
    view = AttentionViewer(head_in_front(), {"two heads": two_heads}, mask=mask)
    assert "lesion enrichment two heads 3.55×" in view.info.value
    view.head.value = 0
    assert "lesion enrichment two heads 5.52×" in view.info.value
    view.head.value = 1
    assert "lesion enrichment two heads 1.00×" in view.info.value


# -- from files ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A NIfTI head with a lesion, its mask, and a toy encoder saved as one of our checkpoints."""
    import nibabel as nib
    from test_interpret import lesion_scan
    from fmct_lib.models.checkpoints import save_checkpoint

    folder = tmp_path_factory.mktemp("viewer_files")
    hu, mask, affine = lesion_scan()
    nib.save(nib.Nifti1Image(hu, affine), folder / "scan.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), folder / "mask.nii.gz")
    torch.manual_seed(0)
    save_checkpoint(folder / "encoder.safetensors", vit_from_config(TOY.model), config={"model": TOY.model.to_dict()})
    return folder


def test_viewer_from_a_nifti_file_and_a_checkpoint(files):
    from fmct_lib.data.preprocess import paper_spec, preprocess
    from fmct_lib.interpret import compute_attention, load_scan_with_mask, mask_to_model_input
    from fmct_lib.interpret.viewer import viewer_from_files
    from fmct_lib.models.checkpoints import load_encoder

    view = viewer_from_files(files / "scan.nii.gz", files / "encoder.safetensors")  # toy: the encoder's 16³ input
    spec = paper_spec(TOY)
    expected = preprocess(files / "scan.nii.gz", spec)
    np.testing.assert_array_equal(view.volume, expected.numpy())
    reference = compute_attention(load_encoder(files / "encoder.safetensors"), expected, model_voxel_mm(TOY))
    assert list(view.results) == ["encoder.safetensors"]
    np.testing.assert_allclose(view.results["encoder.safetensors"].cls_to_patch, reference.cls_to_patch, rtol=1e-5)
    np.testing.assert_allclose(view.results["encoder.safetensors"].distance_mm, reference.distance_mm, rtol=1e-5)
    assert view.mask is None and view.outline.disabled

    with_mask = viewer_from_files(files / "scan.nii.gz", files / "encoder.safetensors", mask_path=files / "mask.nii.gz")
    _, labels = load_scan_with_mask(files / "scan.nii.gz", files / "mask.nii.gz", spec)
    lesion = mask_to_model_input(labels, spec)  # the fraction of each model voxel in the lesion
    np.testing.assert_array_equal(with_mask.lesion, lesion)
    np.testing.assert_array_equal(with_mask.mask, lesion > 0)
    assert with_mask.mask.any() and "lesion enrichment encoder.safetensors" in with_mask.info.value

    # the authors' chain: the head's box stretched to the input, voxel sizes per axis from its affine
    stretched = viewer_from_files(files / "scan.nii.gz", files / "encoder.safetensors", preset="reference")
    from fmct_lib.data.preprocess import reference_spec
    np.testing.assert_array_equal(stretched.volume, preprocess(files / "scan.nii.gz", reference_spec(TOY)).numpy())


@pytest.mark.parametrize("case, error, message", [
    ("missing scan", FileNotFoundError, r"nowhere\.nii\.gz: CT volume not found"),
    ("corrupt scan", ValueError, r"broken\.nii\.gz"),
    ("missing checkpoint", FileNotFoundError, r"nowhere\.safetensors"),
    ("corrupt checkpoint", ValueError, r"garbage\.pth"),
    ("wrong profile", ValueError, r"encoder\.safetensors: the encoder takes 16³ inputs, profile 'demo' makes 32³"),
    ("mask with the reference chain", ValueError, r"mask\.nii\.gz: a lesion mask needs the paper chain"),
    ("an external encoder's preset", ValueError, r"preset 'ctfm': the viewer shows this library's ViT on the paper "
                                                 r"chain or the authors' reference chain"),
])
def test_viewer_from_files_names_the_bad_file(files, tmp_path, case, error, message):
    from fmct_lib.interpret.viewer import viewer_from_files

    scan, checkpoint, kwargs = files / "scan.nii.gz", files / "encoder.safetensors", {}
    if case == "missing scan":
        scan = tmp_path / "nowhere.nii.gz"
    elif case == "corrupt scan":
        scan = tmp_path / "broken.nii.gz"
        scan.write_bytes((files / "scan.nii.gz").read_bytes()[:200])
    elif case == "missing checkpoint":
        checkpoint = tmp_path / "nowhere.safetensors"
    elif case == "corrupt checkpoint":
        checkpoint = tmp_path / "garbage.pth"
        checkpoint.write_bytes(b"not a checkpoint at all" * 10)
    elif case == "wrong profile":
        kwargs = {"profile": "demo"}
    elif case == "an external encoder's preset":
        kwargs = {"preset": "ctfm"}
    else:
        kwargs = {"preset": "reference", "mask_path": files / "mask.nii.gz"}
    with pytest.raises(error, match=message):
        viewer_from_files(scan, checkpoint, **kwargs)

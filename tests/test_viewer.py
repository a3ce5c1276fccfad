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
    hot, cold = (np.round(np.array(colormaps["jet"](v)[:3]) * 255).astype(np.uint8) for v in (1.0, 0.0))
    np.testing.assert_array_equal(np.all(panel == hot, axis=-1), expected)
    np.testing.assert_array_equal(np.all(panel == cold, axis=-1), ~expected)
    # each panel scaled to its own maximum: a map with a quarter of the mass looks the same
    np.testing.assert_array_equal(view.render_panel("b"), panel)
    # a slice outside the patch shows no hot block
    view.slice.value = (target[2] + 1) * P
    assert not np.any(np.all(view.render_panel("a") == hot, axis=-1))


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

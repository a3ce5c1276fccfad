"""Multi-crop and MAE views: shapes, ranges, exact resampling, flips and intensity transforms, row slicing."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import gaussian_filter

from fmct_lib.config import get_profile
from fmct_lib.data.augment import (AugmentConfig, ViewParams, draw_view_params, mae_view, multicrop_views,
                                   render_view)
from fmct_lib.data.preprocess import PAPER_WINDOWS, apply_windows


pytestmark = pytest.mark.usefixtures("one_thread")


def _canvases(n, c, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.rand(n, c, c, c, generator=g) * 1600 - 1000).to(torch.int16)


def _params(n, side, origin, flip=(False, False, False)):
    return ViewParams(side=torch.full((n,), side), origin=torch.tensor([origin] * n),
                      flip=torch.tensor([flip] * n), shift=torch.zeros(n), sigma=torch.zeros(n, 3),
                      gamma=torch.ones(n))


def test_multicrop_shapes_and_crop_ranges():
    p = get_profile("toy")
    cfg = AugmentConfig.from_profile(p)
    views = multicrop_views(_canvases(3, p.canvas), cfg, torch.Generator().manual_seed(0))
    assert len(views) == 5
    for v in views:
        assert v.shape == (3, 3, p.input_size, p.input_size, p.input_size) and v.dtype == torch.float32
    g = torch.Generator().manual_seed(1)
    for crop in (p.global_crop, p.local_crop):
        q = draw_view_params(4000, crop, cfg, g)
        assert q.side.min() == crop[0] and q.side.max() == crop[1]  # both ends are reached
        assert (q.origin >= 0).all() and (q.origin + q.side[:, None] <= p.canvas).all()
        assert (q.origin + q.side[:, None] == p.canvas).any()  # crops touch the far edge too
        assert 0.15 < q.flip.float().mean() < 0.25
        assert q.shift.abs().max() <= cfg.shift_offset and 0.4 < (q.shift != 0).float().mean() < 0.6
    paper = get_profile("paper")
    assert (paper.global_crop, paper.local_crop, paper.input_size) == ((112, 224), (64, 112), 96)


def test_view_equals_windowed_crop_when_side_equals_input():
    c, s = 20, 8
    canvases = _canvases(2, c)
    view = render_view(canvases, _params(2, s, (3, 5, 11)), s, PAPER_WINDOWS, supersample=1)
    expected = apply_windows(canvases[:, 3:3 + s, 5:5 + s, 11:11 + s])
    assert torch.allclose(view, expected, atol=1e-5)


def test_supersampled_view_is_an_area_resize_of_the_windowed_crop():
    c, s = 24, 6
    canvases = _canvases(2, c)
    view = render_view(canvases, _params(2, 2 * s, (1, 10, 4)), s, PAPER_WINDOWS, supersample=2)
    crop = canvases[:, 1:1 + 2 * s, 10:10 + 2 * s, 4:4 + 2 * s]
    expected = F.interpolate(apply_windows(crop), size=(s, s, s), mode="area")
    assert torch.allclose(view, expected, atol=1e-5)


def test_flips_fold_into_the_sampling_grid():
    canvases = _canvases(1, 20)
    plain = render_view(canvases, _params(1, 11, (2, 3, 4)), 8, supersample=2)
    flipped = render_view(canvases, _params(1, 11, (2, 3, 4), flip=(True, False, True)), 8, supersample=2)
    assert torch.allclose(flipped, plain.flip(2).flip(4), atol=1e-5)


def test_shift_gamma_and_smoothing_against_independent_formulas():
    canvases = _canvases(3, 16)
    base = render_view(canvases, _params(3, 12, (2, 2, 2)), 12, supersample=1)
    q = _params(3, 12, (2, 2, 2))
    q.shift = torch.tensor([0.05, 0.0, -0.1])
    q.gamma = torch.tensor([1.0, 0.5, 1.0])
    q.sigma = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.5, 0.8, 1.0]])
    out = render_view(canvases, q, 12, supersample=1)
    assert torch.allclose(out[0], base[0] + 0.05, atol=1e-6)
    x = base[1].numpy().astype(np.float64)
    lo, hi = x.min(), x.max()
    assert np.allclose(out[1].numpy(), lo + ((x - lo) / (hi - lo)) ** 0.5 * (hi - lo), atol=1e-5)
    sm = np.stack([gaussian_filter(base[2, k].numpy().astype(np.float64), sigma=(0.5, 0.8, 1.0), mode="nearest",
                                   radius=3) for k in range(3)])
    assert np.allclose(out[2].numpy() + 0.1, sm, atol=1e-5)


def test_rows_of_a_global_batch_match_the_full_batch():
    # what one process of two computes equals its half of what a single process computes
    p = get_profile("toy")
    cfg = AugmentConfig.from_profile(p)
    canvases = _canvases(4, p.canvas)
    full = multicrop_views(canvases, cfg, torch.Generator().manual_seed(3))
    half = multicrop_views(canvases[2:], cfg, torch.Generator().manual_seed(3), rows=slice(2, 4), global_batch=4)
    for a, b in zip(full, half):
        assert torch.allclose(a[2:], b, atol=1e-6)
    m_full = mae_view(canvases, cfg, torch.Generator().manual_seed(4))
    m_half = mae_view(canvases[:2], cfg, torch.Generator().manual_seed(4), rows=slice(0, 2), global_batch=4)
    assert torch.allclose(m_full[:2], m_half, atol=1e-6)


def test_bad_configuration_and_input():
    p = get_profile("toy")
    with pytest.raises(ValueError, match="global_crop"):
        AugmentConfig(canvas=37, input_size=16, global_crop=(19, 40), local_crop=(11, 19), local_input_size=16)
    with pytest.raises(ValueError, match="canvases"):
        render_view(torch.zeros(2, 8, 8, 9), _params(2, 4, (0, 0, 0)), 4)
    with pytest.raises(ValueError, match="parameters"):
        render_view(torch.zeros(3, 8, 8, 8), _params(2, 4, (0, 0, 0)), 4)
    assert AugmentConfig.from_profile(p).windows == PAPER_WINDOWS

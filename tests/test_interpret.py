"""Attention maps, attention distance (Eq. 1) and lesion overlap (fmct_lib.interpret)."""
import itertools
import math

import matplotlib.pyplot as plt
import nibabel as nib
import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist
from scipy.stats import wilcoxon

from fmct_lib.config import get_profile
from fmct_lib.interpret import (AttentionResult, attention_distance, compute_attention, enrichment, head_mask,
                                lesion_attention_table, lesion_shares, load_scan_with_mask, mask_to_canvas,
                                mask_to_model_input, model_voxel_mm, patch_attention_rows, patch_distance_matrix,
                                reduce_layers_heads, summarize_lesion_attention, uniform_attention_distance,
                                upsample_to_volume)
from fmct_lib.models.vit3d import vit_from_config
from fmct_lib.data.preprocess import apply_windows, model_input, paper_spec, preprocess, to_canvas

TOY = get_profile("toy")


@pytest.fixture(scope="module")
def toy_encoder():
    torch.manual_seed(0)
    return vit_from_config(TOY.model)


@pytest.fixture(scope="module")
def toy_volume():
    size = TOY.model.img_size
    return torch.rand(3, size, size, size, generator=torch.Generator().manual_seed(1))


def brute_force_distance(attn, grid, patch, voxel):
    """Eq. 1 by explicit loops, centres computed by hand from (i, j, k)."""
    cells = list(itertools.product(*(range(g) for g in grid)))  # last axis fastest, like the tokens
    centre = [[(c[a] + 0.5) * patch * voxel[a] for a in range(3)] for c in cells]
    out = np.zeros(len(cells))
    for i in range(len(cells)):
        for j in range(len(cells)):
            out[i] += attn[i, j] * math.dist(centre[i], centre[j])
    return out


# -- Eq. 1 -----------------------------------------------------------------------------------------

def test_attention_distance_matches_brute_force_loop():
    grid, patch, voxel = (2, 3, 4), 3, (2.0, 1.5, 0.7)  # anisotropic voxels catch axis mix-ups
    n = math.prod(grid)
    rng = np.random.default_rng(0)
    attn = rng.random((n, n))
    attn /= attn.sum(axis=1, keepdims=True)
    fast = attention_distance(torch.tensor(attn), patch_distance_matrix(grid, patch, voxel)).numpy()
    np.testing.assert_allclose(fast, brute_force_distance(attn, grid, patch, voxel), rtol=1e-10)


def test_attention_on_self_only_has_zero_distance():
    grid = (3, 3, 3)
    d = patch_distance_matrix(grid, 4, 2.0)
    np.testing.assert_array_equal(attention_distance(torch.eye(27, dtype=torch.float64), d).numpy(), 0.0)


def test_uniform_attention_gives_the_mean_pairwise_distance():
    grid, patch, voxel = (2, 3, 4), 2, 3.0
    n = math.prod(grid)
    per_patch = attention_distance(torch.full((n, n), 1.0 / n, dtype=torch.float64),
                                   patch_distance_matrix(grid, patch, voxel)).numpy()
    centres = np.array(list(itertools.product(*(range(g) for g in grid)))) * patch * voxel
    expected = pdist(centres).sum() * 2 / n**2  # mean over all N² ordered pairs, self pairs included
    assert per_patch.mean() == pytest.approx(expected, rel=1e-12)
    # along one row: the mean distance from that patch to all patches
    np.testing.assert_allclose(per_patch[0], np.linalg.norm(centres - centres[0], axis=1).mean())


def test_patch_rows_drop_prefix_and_renormalise():
    attn = torch.softmax(torch.randn(2, 3, 1 + 2 + 8, 1 + 2 + 8), dim=-1)  # cls + 2 registers + 8 patches
    rows = patch_attention_rows(attn, num_prefix_tokens=3)
    assert rows.shape == (2, 3, 8, 8)
    torch.testing.assert_close(rows.sum(-1), torch.ones(2, 3, 8))
    block = attn[..., 3:, 3:]
    torch.testing.assert_close(rows * block.sum(-1, keepdim=True), block)


def test_distance_matrix_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="distance matrix"):
        attention_distance(torch.ones(8, 8) / 8, patch_distance_matrix((3, 3, 3), 4, 1.0))


def test_model_voxel_follows_the_profile():
    assert model_voxel_mm("paper") == 2.0  # 192 mm at 1 mm resized to 96
    assert model_voxel_mm(TOY) == pytest.approx(TOY.spacing_mm * TOY.eval_crop / TOY.model.img_size)


# -- maps from a real encoder ----------------------------------------------------------------------

def test_compute_attention_on_toy_encoder(toy_encoder, toy_volume):
    voxel = model_voxel_mm(TOY)
    result = compute_attention(toy_encoder, toy_volume, voxel)
    grid = toy_encoder.patch_grid(toy_volume.shape[1:])
    L, H = TOY.model.depth, TOY.model.num_heads
    assert result.cls_to_patch.shape == (L, H, *grid) and result.distance_mm.shape == (L, H, *grid)
    # the cls row is a probability distribution over all tokens: patches + prefix sum to one
    np.testing.assert_allclose(result.cls_to_patch.sum(axis=(2, 3, 4)) + result.cls_to_prefix, 1.0, atol=1e-5)
    # the patch-only map sums to 1 - prefix mass, strictly below one
    assert np.all(result.cls_to_patch.sum(axis=(2, 3, 4)) < 1.0)

    # independent recomputation from get_attention: cls row and Eq. 1 by the brute-force loop
    attns = toy_encoder.get_attention(toy_volume[None])
    p = toy_encoder.num_prefix_tokens
    for layer in range(L):
        np.testing.assert_allclose(result.cls_to_patch[layer].reshape(H, -1), attns[layer][0, :, 0, p:].numpy(),
                                   rtol=1e-6)
    a = attns[1][0, 1, p:, p:].double().numpy()
    a /= a.sum(axis=1, keepdims=True)
    expected = brute_force_distance(a, grid, TOY.model.patch_size, (voxel,) * 3)
    np.testing.assert_allclose(result.distance_mm[1, 1].ravel(), expected, rtol=1e-5)

    # summaries: per-layer curve and the Fig. 5 volume (mean over heads and layers)
    np.testing.assert_allclose(result.mean_distance_per_layer(), result.distance_mm.mean(axis=(1, 2, 3, 4)), rtol=1e-6)
    volume = result.distance_map()
    assert volume.shape == tuple(toy_volume.shape[1:])
    assert volume[0, 0, 0] == pytest.approx(result.distance_mm[:, :, 0, 0, 0].mean(), rel=1e-6)
    # any distance is at most the largest centre-to-centre distance of the grid
    assert volume.max() <= patch_distance_matrix(grid, TOY.model.patch_size, voxel).max()


def test_compute_attention_refuses_nan_and_other_channels_and_warns_of_other_inputs(toy_encoder, toy_volume):
    """One NaN voxel made every map NaN with a normal caption; a 1-channel volume failed deep in a matrix
    product; raw HU and another input size gave plausible maps from inputs the encoder never saw."""
    nan = toy_volume.clone()
    nan[0, 1, 2, 3] = math.nan
    with pytest.raises(ValueError, match="the volume holds 1 NaN or infinite voxels"):
        compute_attention(toy_encoder, nan, 1.0)
    with pytest.raises(ValueError, match="the volume has 1 channels, the encoder takes 3"):
        compute_attention(toy_encoder, toy_volume[:1], 1.0)
    size = TOY.model.img_size
    with pytest.warns(UserWarning, match=rf"built for {size}³ inputs and this volume is {2 * size}×{2 * size}×"
                                         rf"{2 * size}: its position table is interpolated"):
        compute_attention(toy_encoder, torch.rand(3, 2 * size, 2 * size, 2 * size), 1.0)
    with pytest.warns(UserWarning, match=r"outside the windowed \[0, 1\] the encoder takes \(raw HU\?"):
        compute_attention(toy_encoder, toy_volume * 1500 - 1000, 1.0)


def test_the_figure_choice_is_checked_before_any_training():
    import pandas as pd
    from fmct_lib.interpret.figure import check_figure_choice
    scans = pd.DataFrame({"scan_id": ["a", "b", "c"], "site": ["internal", "internal", "external"],
                          "split": ["test", "train", "test"]})
    labelled = scans[scans["site"] == "internal"]
    check_figure_choice(scans, labelled, "a", -1, 4)
    check_figure_choice(scans, labelled, None, None, 4)
    with pytest.raises(ValueError, match=r"scan_id 'c' is not among the 2 labelled scans the notebook shows: the "
                                         r"dataset has it at site 'external', split 'test' \(choose its site"):
        check_figure_choice(scans, labelled, "c", -1, 4)
    with pytest.raises(ValueError, match="scan_id 'zz' .*: no scan of the dataset has that id"):
        check_figure_choice(scans, labelled, "zz", -1, 4)
    for layer in (4, -5):
        with pytest.raises(ValueError, match=rf"layer {layer}: the encoder has 4 layers"):
            check_figure_choice(scans, labelled, "a", layer, 4)


def test_compute_attention_rejects_a_batch_and_keeps_training_mode(toy_encoder, toy_volume):
    with pytest.raises(ValueError, match="one volume"):
        compute_attention(toy_encoder, toy_volume[None].repeat(2, 1, 1, 1, 1), 1.0)
    toy_encoder.train()
    compute_attention(toy_encoder, toy_volume, 1.0)
    assert toy_encoder.training
    toy_encoder.eval()


def test_patch_tokens_are_in_last_axis_fastest_order(toy_encoder):
    """The map's grid layout equals the token order of the encoder: light up one patch of the input and
    only the token at the expected flat index changes."""
    p, size = TOY.model.patch_size, TOY.model.img_size
    g = size // p
    i, j, k = 1, 3, 2
    x = torch.zeros(1, 3, size, size, size)
    x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p, k * p:(k + 1) * p] = 1.0
    with torch.no_grad():
        changed = (toy_encoder.patch_embed(x) - toy_encoder.patch_embed(torch.zeros_like(x))).abs().sum(-1)[0]
    assert torch.nonzero(changed).flatten().tolist() == [(i * g + j) * g + k]


class OnePatchEncoder(torch.nn.Module):
    """Stands in for the encoder: its cls token attends only to one patch, every patch to itself."""

    num_prefix_tokens = 1

    def __init__(self, grid, patch, target):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.grid, self.patch, self.target = grid, patch, target

    def patch_grid(self, shape):
        return tuple(s // self.patch for s in shape)

    def get_attention(self, x):
        n = math.prod(self.grid)
        attn = torch.zeros(1, 2, n + 1, n + 1)
        attn[:, :, 1:, 1:] = torch.eye(n)
        attn[:, :, 0, 1 + np.ravel_multi_index(self.target, self.grid)] = 1.0
        return [attn, attn]


class RandomAttentionEncoder(torch.nn.Module):
    """Stands in for the encoder: 3 layers × 2 heads of random softmax attention over cls + 1 register + patches
    (different numbers of layers and heads, so a swap of the two axes cannot go unnoticed)."""

    num_prefix_tokens = 2

    def __init__(self, grid, patch, layers=3, heads=2, uniform=False):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.grid, self.patch = grid, patch
        tokens = math.prod(grid) + self.num_prefix_tokens
        logits = torch.zeros if uniform else torch.randn
        self.attention = [torch.softmax(logits(1, heads, tokens, tokens, dtype=torch.float64), dim=-1).float()
                          for _ in range(layers)]

    def patch_grid(self, shape):
        return tuple(s // self.patch for s in shape)

    def get_attention(self, x):
        return self.attention


def test_a_chosen_layer_and_head_are_that_layer_and_head():
    torch.manual_seed(0)
    grid, patch = (2, 3, 2), 2
    encoder = RandomAttentionEncoder(grid, patch)
    result = compute_attention(encoder, torch.zeros(3, 4, 6, 4), 1.5)
    assert (result.num_layers, result.num_heads) == (3, 2)
    raw = np.stack([a[0, :, 0, 2:].numpy() for a in encoder.attention]).reshape(3, 2, *grid)  # (layer, head, grid)
    for layer, head in itertools.product(range(3), range(2)):
        hand = np.repeat(np.repeat(np.repeat(raw[layer, head], 2, 0), 2, 1), 2, 2)
        np.testing.assert_allclose(result.attention_map(layer, head), hand, rtol=1e-6)
        np.testing.assert_allclose(reduce_layers_heads(result.cls_to_patch, layer - 3, head - 2), raw[layer, head])
    np.testing.assert_allclose(reduce_layers_heads(result.cls_to_patch, None, 1), raw[:, 1].mean(0), rtol=1e-6)
    np.testing.assert_allclose(reduce_layers_heads(result.cls_to_patch, 2, None), raw[2].mean(0), rtol=1e-6)
    # Eq. 1 of layer 3, head 1, by the brute-force loop on the raw patch block
    block = encoder.attention[2][0, 0, 2:, 2:].double().numpy()
    expected = brute_force_distance(block / block.sum(1, keepdims=True), grid, patch, (1.5,) * 3)
    np.testing.assert_allclose(reduce_layers_heads(result.distance_mm, 2, 0).ravel(), expected, rtol=1e-5)


@pytest.mark.parametrize("layer, head, message", [
    (3, None, r"layer 3 does not exist: the encoder has 3 layers \(0…2"), (-4, 0, r"layer -4 does not exist"),
    (0, 2, r"head 2 does not exist: the encoder has 2 heads \(0…1")])
def test_a_layer_or_head_out_of_range_is_named(layer, head, message):
    encoder = RandomAttentionEncoder((2, 2, 2), 2)
    result = compute_attention(encoder, torch.zeros(3, 4, 4, 4), 1.0)
    with pytest.raises(ValueError, match=message):
        result.attention_map(layer, head)


def test_uniform_attention_distance_by_hand():
    assert uniform_attention_distance((2, 1, 1), 2, 3.0) == pytest.approx(6.0 * 2 / 4)  # centres 3 and 9 mm apart
    # four centres on a unit square: 8 ordered pairs at 1, 4 at √2, 4 self pairs at 0
    assert uniform_attention_distance((2, 2, 1), 1, 1.0) == pytest.approx((8 + 4 * math.sqrt(2)) / 16)
    # what Eq. 1 gives for an encoder whose every row is uniform over the patches (prefix columns dropped)
    encoder = RandomAttentionEncoder((2, 3, 4), 2, uniform=True)
    result = compute_attention(encoder, torch.zeros(3, 4, 6, 8), (1.0, 2.0, 0.5))
    assert result.uniform_distance() == pytest.approx(uniform_attention_distance((2, 3, 4), 2, (1.0, 2.0, 0.5)))
    np.testing.assert_allclose(result.mean_distance_per_layer(), result.uniform_distance(), rtol=1e-5)


@pytest.mark.parametrize("mode", ["nearest", "trilinear"])
def test_a_patch_map_lands_where_the_patch_is(mode):
    grid, patch, target = (3, 4, 5), 4, (1, 2, 3)  # an interior patch
    encoder = OnePatchEncoder(grid, patch, target)
    result = compute_attention(encoder, torch.zeros(3, *(g * patch for g in grid)), 1.0)
    np.testing.assert_array_equal(result.distance_mm, 0.0)  # self-only attention
    full = result.attention_map(layer=-1, head=None, mode=mode)
    assert full.shape == (12, 16, 20)
    block = tuple(slice(t * patch, (t + 1) * patch) for t in target)
    peak = np.argwhere(full == full.max())
    for axis, t in enumerate(target):  # the maximum lies inside the patch's voxels [t·p, (t+1)·p)
        assert peak[:, axis].min() >= t * patch and peak[:, axis].max() < (t + 1) * patch
    if mode == "nearest":  # exactly the footprint of the token, and nothing elsewhere
        expected = np.zeros_like(full)
        expected[block] = 1.0
        np.testing.assert_array_equal(full, expected)
    else:  # centred: symmetric around the patch centre (p even → a 2³ plateau at the centre voxels)
        assert peak.tolist() == [[a, b, c] for a in (5, 6) for b in (9, 10) for c in (13, 14)]


def test_upsampling_nearest_keeps_mass_and_trilinear_keeps_constants():
    rng = np.random.default_rng(0)
    grid_map = rng.random((2, 3, 4)).astype(np.float32)
    up = upsample_to_volume(grid_map, 3)
    assert up.sum() == pytest.approx(grid_map.sum() * 27, rel=1e-6)
    np.testing.assert_allclose(upsample_to_volume(np.full((2, 3, 4), 0.25), 3, "trilinear"), 0.25, rtol=1e-6)
    with pytest.raises(ValueError, match="upsampling mode"):
        upsample_to_volume(grid_map, 3, "cubic")


# -- lesion overlap --------------------------------------------------------------------------------

def test_head_is_where_any_window_is_above_its_floor():
    """Air (−1024) and air noise below −800 HU are outside; fat (−100 HU: only the bone window, floor −800, sees
    it) and brain are inside."""
    hu = torch.tensor([-1024.0, -900.0, -100.0, 40.0]).reshape(1, 1, 4)
    np.testing.assert_array_equal(head_mask(apply_windows(hu)), [[[False, False, True, True]]])
    with pytest.raises(ValueError, match="model input"):
        head_mask(np.zeros((4, 4, 4)))


def test_lesion_shares_count_the_head_only_hand_case():
    """Head: the 32 voxels of x < 2. Lesion: 4 voxels holding 3 of the head's 4 units of attention; 8 more
    units sit on air and do not count: attention share 3/4, chance share 4/32, enrichment 6 (the whole
    cube would say 3/12 ÷ 4/64 = 4)."""
    attention = np.zeros((4, 4, 4))
    attention[0, 0, 0], attention[1, 1, 1], attention[3, 3, 3] = 3.0, 1.0, 8.0
    head = np.zeros((4, 4, 4), bool)
    head[:2] = True
    lesion = np.zeros((4, 4, 4))
    lesion[0, :2, :2] = 1.0
    assert lesion_shares(attention, lesion, head) == (0.75, 0.125)
    lesion[1, 1, 1] = 0.5  # half of that voxel is lesion: half its attention and half its volume count
    share, chance = lesion_shares(attention, lesion, head)
    assert share == pytest.approx(3.5 / 4) and chance == pytest.approx(4.5 / 32)
    with pytest.raises(ValueError, match="same grid"):
        lesion_shares(attention, lesion[:2], head)
    with pytest.raises(ValueError, match="negative"):
        lesion_shares(-attention, lesion, head)
    with pytest.raises(ValueError, match="fractions"):
        lesion_shares(attention, 2 * lesion, head)
    lesion[3, 0, 0] = 1.0
    with pytest.raises(ValueError, match="outside the head"):
        lesion_shares(attention, lesion, head)


def head_and_lesions(scans=6, shape=(8, 8, 8)):
    """A head filling z < 6 of an (8, 8, 8) input and one 2×3×3 lesion per scan, moving along x."""
    head = np.zeros(shape, bool)
    head[:, :, :6] = True
    lesions = []
    for scan in range(scans):
        lesion = np.zeros(shape, bool)
        lesion[scan:scan + 2, 2:5, 1:4] = True
        lesions.append(lesion)
    return head, lesions


def test_a_lesion_blind_map_that_favours_the_head_is_at_chance():
    """The map that only knows tissue from air (1 on the head, 0.1 on air) scores 1× on any lesion; against the
    whole cube it scored 18/396.8 ÷ 18/512 = 1.29×. A map focused on the lesion scores above 1, by hand."""
    head, (lesion, *_) = head_and_lesions()
    tissue = np.where(head, 1.0, 0.1)
    share, chance = lesion_shares(tissue, lesion, head)
    assert share / chance == pytest.approx(1.0)
    focused = tissue + 4.0 * lesion  # 5 on the lesion's 18 voxels, 1 on the other 366 head voxels
    share, chance = lesion_shares(focused, lesion, head)
    assert share == pytest.approx(90 / 456) and chance == pytest.approx(18 / 384)
    assert share / chance == pytest.approx(90 / 456 * 384 / 18)  # 4.21


def test_lesion_table_and_summary_against_independent_computation():
    rng = np.random.default_rng(0)
    head, lesions = head_and_lesions()
    cases, expected, maps = [], [], []
    for scan, lesion in enumerate(lesions):
        blind = np.where(head, 1.0, 0.1)  # lesion-blind, prefers tissue
        focused = rng.random(head.shape) + 5.0 * lesion  # extra weight on the lesion, some mass on air too
        maps.append(focused / focused.sum())
        cases += [{"scan_id": f"s{scan}", "task": "ich", "model": "pretrained", "attention": blind,
                   "lesion": lesion, "head": head},
                  {"scan_id": f"s{scan}", "task": "ich", "model": "finetuned", "attention": focused,
                   "lesion": lesion, "head": head}]
        expected.append((focused[lesion].sum() / focused[head].sum()) / (lesion.sum() / head.sum()))
    # a scan whose lesion left nothing on the model grid: counted, not measured; its map is another scan's map
    cases.append({"scan_id": "outside", "task": "ich", "model": "finetuned", "attention": np.ones(head.shape),
                  "lesion": np.zeros(head.shape), "head": head})
    maps.append(np.full(head.shape, 1 / head.size))
    controls = []
    for scan, lesion in enumerate(lesions):  # the mean of the other scans' normalised maps, on this lesion
        other = np.mean([m for i, m in enumerate(maps) if i != scan], axis=0)
        controls.append((other[lesion].sum() / other[head].sum()) / (lesion.sum() / head.sum()))
    table = lesion_attention_table(cases)
    assert len(table) == 13
    lost = table.set_index("scan_id").loc["outside"]
    assert lost["lesion_voxels"] == 0 and np.isnan(lost["enrichment"])
    pre = table[table.model == "pretrained"]
    np.testing.assert_allclose(pre["enrichment"], 1.0)  # tissue-favouring but lesion-blind: chance
    np.testing.assert_allclose(pre["control_enrichment"], 1.0)
    np.testing.assert_allclose(pre["attention_on_head"], 384 / (384 + 12.8))
    np.testing.assert_allclose(pre["chance_share"], 18 / 384)
    fine = table[table.model == "finetuned"].set_index("scan_id").loc[[f"s{i}" for i in range(6)]]
    np.testing.assert_allclose(fine["enrichment"], expected)
    np.testing.assert_allclose(fine["control_enrichment"], controls)
    assert np.all(fine["enrichment"] > fine["control_enrichment"])

    summary = summarize_lesion_attention(table).set_index("model")
    assert summary.loc["finetuned", "n_scans"] == 6 and summary.loc["finetuned", "n_no_lesion"] == 1
    assert summary.loc["finetuned", "frac_above_chance"] == 1.0
    assert summary.loc["pretrained", "frac_above_chance"] == 0.0
    assert summary.loc["finetuned", "frac_above_control"] == 1.0
    assert summary.loc["finetuned", "median_control_enrichment"] == pytest.approx(np.median(controls))
    assert summary.loc["finetuned", "p_vs_control"] == pytest.approx(wilcoxon(expected, controls).pvalue)
    # the direction of the pairing: the median of the per-scan differences, not the difference of the medians
    assert summary.loc["finetuned", "median_difference_vs_control"] == pytest.approx(
        np.median(np.asarray(expected) - np.asarray(controls)))
    assert summary.loc["finetuned", "median_difference_vs_reference"] == pytest.approx(np.median(expected) - 1.0)
    assert np.isnan(summary.loc["pretrained", "p_vs_control"])  # own map = control on every scan
    assert np.isnan(summary.loc["pretrained", "p_vs_reference"])
    assert summary.loc["finetuned", "p_vs_reference"] == pytest.approx(wilcoxon(expected, np.ones(6)).pvalue)


def lesion_scan():
    """An off-centre "head" at 30 HU in a LAS grid (x flipped) with a block lesion at 1800 HU (label 2)."""
    rng = np.random.default_rng(0)
    hu = np.full((40, 36, 26), -1024, np.int16)
    hu[6:34, 5:31, 3:23] = 30 + rng.integers(-5, 5, size=(28, 26, 20))
    mask = np.zeros(hu.shape, np.uint8)
    mask[14:26, 12:25, 8:16] = 2  # half a model voxel thick on one side (toy profile)
    hu[mask > 0] = 1800
    affine = np.array([[-2.0, 0, 0, 10], [0, 2.0, 0, -5], [0, 0, 4.0, 3], [0, 0, 0, 1]])
    return hu, mask, affine


def test_lesion_mask_follows_the_image_to_the_model_input():
    """The lesion's voxels are the same through the image chain (preprocess) and the mask chain, and on the model
    grid the mask is averaged as the image is: the fraction of each model voxel that is lesion."""
    spec = paper_spec("toy")  # canvas 37, crop 32 from 2, input 16: each model voxel averages 2³ canvas voxels
    hu, mask, affine = lesion_scan()
    canvas = to_canvas(hu, affine, spec)
    canvas_mask = mask_to_canvas(hu, mask, affine, spec)
    assert canvas_mask.shape == (spec.canvas,) * 3 and set(np.unique(canvas_mask)) == {0, 2}
    np.testing.assert_array_equal(canvas_mask > 0, canvas.numpy() > 900)  # same voxels on the canvas
    fraction = mask_to_model_input(canvas_mask, spec)
    crop = (canvas_mask[2:34, 2:34, 2:34] > 0).reshape(16, 2, 16, 2, 16, 2).mean(axis=(1, 3, 5))  # by hand
    np.testing.assert_array_equal(fraction, crop)
    assert fraction.dtype == np.float32 and np.any((fraction > 0) & (fraction < 1))  # partial voxels at the edges
    # the image is averaged the same way: in the bone window (lesion bright) whole-lesion voxels are the brightest,
    # half-lesion voxels between them and lesion-free ones (tissue (30 + 800) / 2800 = 0.30 ± noise, air 0)
    image = model_input(canvas[None], spec)[0, 2].numpy()
    half = (fraction > 0) & (fraction < 1)
    assert image[fraction == 1].min() > image[half].max() and image[half].min() > 0.5 > image[fraction == 0].max()
    with pytest.raises(ValueError, match="canvas"):
        mask_to_model_input(canvas_mask[:-1], spec)


def test_a_lesion_smaller_than_a_model_voxel_keeps_its_weight():
    """One canvas voxel is 1/8 of a toy model voxel: kept with weight 1/8 where the nearest-neighbour resize
    sampled only every other canvas voxel and lost it."""
    spec = paper_spec("toy")
    for i in (10, 11):
        canvas_mask = np.zeros((spec.canvas,) * 3, np.uint8)
        canvas_mask[i, i, i] = 1
        fraction = mask_to_model_input(canvas_mask, spec)
        expected = np.zeros((16, 16, 16), np.float32)
        expected[(i - 2) // 2, (i - 2) // 2, (i - 2) // 2] = 1 / 8  # crop starts at 37 // 2 − 32 // 2 = 2
        np.testing.assert_array_equal(fraction, expected)


def test_load_scan_with_mask_from_nifti_files(tmp_path):
    spec = paper_spec("toy")
    hu, mask, affine = lesion_scan()
    nib.save(nib.Nifti1Image(hu, affine), tmp_path / "scan.nii.gz")
    nib.save(nib.Nifti1Image(mask, affine), tmp_path / "mask.nii.gz")
    image, labels = load_scan_with_mask(tmp_path / "scan.nii.gz", tmp_path / "mask.nii.gz", spec)
    torch.testing.assert_close(image, preprocess(tmp_path / "scan.nii.gz", spec))
    assert labels.dtype == np.uint8
    np.testing.assert_array_equal(labels, mask_to_canvas(hu, mask, affine, spec))  # the canvas label map
    lesion = mask_to_model_input(labels == 2, spec)
    assert image[2][lesion == 1].min() > 0.7 and image[2][lesion == 0].max() < 0.31  # bone window: lesion bright
    assert not lesion[~head_mask(image)].any()  # the lesion lies in the head
    nib.save(nib.Nifti1Image(mask[:, :, :-1], affine), tmp_path / "short.nii.gz")
    with pytest.raises(ValueError, match="short.nii.gz"):
        load_scan_with_mask(tmp_path / "scan.nii.gz", tmp_path / "short.nii.gz", spec)


# -- enrichment and Fig. 5 -------------------------------------------------------------------------

def test_enrichment_is_attention_over_the_uniform_share():
    uniform = np.full((2, 3, 4), 0.02)
    np.testing.assert_allclose(enrichment(uniform), 1.0, rtol=1e-6)  # whatever mass the cls token kept
    one = np.zeros((2, 3, 4))
    one[1, 2, 3] = 0.4
    expected = np.zeros((2, 3, 4))
    expected[1, 2, 3] = 24.0  # all on one of 24 patches
    np.testing.assert_allclose(enrichment(one), expected)
    with pytest.raises(ValueError, match="non-negative"):
        enrichment(-one)
    with pytest.raises(ValueError, match="no mass"):
        enrichment(np.zeros((2, 2, 2)))


def hand_made_result(cls_grid, patch=4, distance_mm=30.0):
    """One layer and head: cls attention ``cls_grid`` on the patches (30 % kept on the cls token), a constant
    attention distance."""
    cls = np.asarray(cls_grid, np.float32)
    cls = (0.7 * cls / cls.sum())[None, None]
    return AttentionResult(cls, np.full((1, 1), 0.3, np.float32), np.full_like(cls, distance_mm), patch, (2.0,) * 3)


def test_fig5_shows_enrichment_on_one_log_scale_and_prints_the_lesion_enrichment():
    """A hand-made map whose 8 lesion patches hold 456 units; the head is the first three patch rows (48 patches,
    496 units), the last row is air (16 units, not counted): enrichment 456/496 ÷ 8/48 = 5.52 (the whole cube
    would say 456/512 ÷ 8/64 = 7.125)."""
    from matplotlib.colors import LogNorm
    from fmct_lib.interpret import attention_figure, display_slice, lesion_enrichment

    focal = np.ones((4, 4, 4))
    focal[1:3, 1:3, 1:3] = 57.0
    mask = np.zeros((16, 16, 16), bool)
    mask[4:12, 4:12, 4:12] = True
    head = np.zeros((16, 16, 16), bool)
    head[:12] = True
    wobble = 1.0 + 0.05 * np.random.default_rng(0).uniform(-1, 1, (4, 4, 4))
    results = {"focal": hand_made_result(focal, distance_mm=60.0), "near uniform": hand_made_result(wobble)}
    assert lesion_enrichment(results["focal"], mask, head) == pytest.approx(456 / 496 * 6, rel=1e-6)
    near = wobble[1:3, 1:3, 1:3].sum() / wobble[:3].sum() * 6
    image = np.random.default_rng(1).random((16, 16, 16)).astype(np.float32)

    fig = attention_figure(image, results, index=6, mask=mask, head_mask=head, label="hand-made")
    attention_row, distance_row = fig.axes[1:3], fig.axes[4:6]  # [CT, focal, near] per row, then the colour bars
    assert [ax.get_title() for ax in attention_row] == [
        "focal\n5.52× chance in outline", f"near uniform\n{near:.2f}× chance in outline"]
    for ax, result in zip(attention_row, results.values()):
        ct, overlay = ax.get_images()
        np.testing.assert_array_equal(ct.get_array(), display_slice(image, "axial", 6))
        assert overlay.get_cmap().name == "magma"
        assert isinstance(overlay.norm, LogNorm) and (overlay.norm.vmin, overlay.norm.vmax) == (1 / 64, 64)
        np.testing.assert_allclose(overlay.get_array(),
                                   display_slice(result.enrichment_map(mode="trilinear"), "axial", 6), rtol=1e-6)
    # not stretched to each map's maximum: the near-uniform map stays within 5 % of 1, the middle of the scale
    near_values = attention_row[1].get_images()[1].get_array()
    assert np.abs(np.log(near_values)).max() < np.log(1.06)
    # distance: one linear range over both panels (30 and 60 mm), viridis
    for ax in distance_row:
        overlay = ax.get_images()[1]
        assert overlay.get_cmap().name == "viridis" and (overlay.norm.vmin, overlay.norm.vmax) == (30.0, 60.0)
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 2 and "attention ÷ uniform" in bars[0].get_ylabel() and "mm" in bars[1].get_ylabel()
    assert [t.get_text() for t in bars[0].get_yticklabels()] == ["1/64", "1/8", "1", "8", "64"]
    assert fig.axes[0].get_title().endswith("cyan outline:\nlesion")
    plt.close(fig)
    named = attention_figure(image, results, index=6, mask=mask, head_mask=head, mask_name="lesions (edema+ich)")
    assert named.axes[0].get_title().endswith("cyan outline:\nlesions (edema+ich)")  # what the outline holds
    plt.close(named)


def test_fig5_saves_the_slices_it_draws_beside_the_figure(tmp_path):
    """What the panels show, as arrays (``attention_slices``), written and read back (``plots.save_arrays``): the
    CT slice, each encoder's enrichment and distance slice, the outline; equal to what the figure's images hold."""
    from fmct_lib.interpret import attention_figure, display_slice
    from fmct_lib.interpret.figure import attention_slices
    from fmct_lib.report import plots

    focal = np.ones((4, 4, 4))
    focal[1:3, 1:3, 1:3] = 57.0
    results = {"focal": hand_made_result(focal, distance_mm=60.0), "flat": hand_made_result(np.ones((4, 4, 4)))}
    image = np.random.default_rng(1).random((16, 16, 16)).astype(np.float32)
    mask = np.zeros((16, 16, 16), bool)
    mask[4:12, 4:12, 4:12] = True
    drawn = attention_slices(image, results, index=6, mask=mask)
    assert sorted(drawn) == ["ct", "distance_mm flat", "distance_mm focal", "enrichment flat", "enrichment focal",
                             "outline"]
    np.testing.assert_array_equal(drawn["ct"], display_slice(image, "axial", 6))
    np.testing.assert_array_equal(drawn["outline"], display_slice(mask, "axial", 6).astype(float))
    assert np.allclose(drawn["enrichment flat"], 1.0) and np.allclose(drawn["distance_mm focal"], 60.0)
    fig = attention_figure(image, results, index=6, mask=mask, head_mask=mask | True)
    for ax, name in zip(fig.axes[1:3], results):  # the figure draws exactly these arrays
        np.testing.assert_array_equal(ax.get_images()[1].get_array(), drawn[f"enrichment {name}"])
    plt.close(fig)
    path = plots.save_arrays("fig5_test", drawn, root=tmp_path)
    assert path == tmp_path / "fig5_test_arrays.npz"
    with np.load(path) as back:  # plain arrays: no pickle needed to read them
        assert sorted(back.files) == sorted(drawn)
        for key, value in drawn.items():
            np.testing.assert_array_equal(back[key], value)
    with pytest.raises(TypeError, match="arrays must be numeric"):
        plots.save_arrays("bad", {"names": np.array(["a", "b"])}, root=tmp_path)


def test_fig5_refuses_inconsistent_inputs():
    from fmct_lib.interpret import attention_figure
    result = hand_made_result(np.ones((4, 4, 4)))
    image = np.zeros((16, 16, 16), np.float32)
    with pytest.raises(ValueError, match="covers"):
        attention_figure(image[:8], {"a": result}, index=2)
    with pytest.raises(ValueError, match="mask has shape"):
        attention_figure(image, {"a": result}, index=2, mask=np.zeros((8, 8, 8), bool))
    with pytest.raises(ValueError, match="needs the head mask"):
        attention_figure(image, {"a": result}, index=2, mask=np.zeros((16, 16, 16), bool))
    with pytest.raises(ValueError, match="patch grids differ"):
        attention_figure(image, {"a": result, "b": hand_made_result(np.ones((2, 2, 2)), patch=8)}, index=2)
    with pytest.raises(ValueError, match="outside"):
        attention_figure(image, {"a": result}, index=16)

"""Efficiency by architecture (fmct_lib.models.efficiency; Extended Data Fig. 5, Supplementary Fig. 2): the ViT's
analytic FLOPs against torch's own count, the patch-size cost law, the measured table and the notebooks'
conclusions. Timings are never asserted beyond an ordering that a 60-fold difference in work guarantees."""
from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from fmct_lib.config import ModelConfig, get_profile
from fmct_lib.models import efficiency
from fmct_lib.models.vit3d import vit_from_config
from fmct_lib.report import conclusions, paper

TINY = ModelConfig(img_size=16, patch_size=8, in_chans=3, embed_dim=24, depth=1, num_heads=2)
BIG = ModelConfig(img_size=16, patch_size=2, in_chans=3, embed_dim=96, depth=3, num_heads=4)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "forward+backward"])
def test_vit_flops_equal_torchs_flop_counter(backward, one_thread):
    """The analytic count against ``torch.utils.flop_counter`` on the model itself (attention on SDPA's math path,
    registers and a non-default MLP ratio included), and the attention term against a hand count."""
    cfg = ModelConfig(img_size=12, patch_size=4, in_chans=2, embed_dim=36, depth=2, num_heads=3, mlp_ratio=2.0,
                      num_register_tokens=2)
    torch.manual_seed(0)
    model = vit_from_config(cfg)
    analytic = efficiency.vit_flops(cfg, backward=backward)
    assert analytic["total"] == efficiency.counted_flops(model, torch.randn(1, 2, 12, 12, 12), backward=backward)
    assert analytic["tokens"] == 27 + 1 + 2
    forward = efficiency.vit_flops(cfg)
    assert forward["attention"] == 2 * (2 * 30 * 30 * 36) * 2          # depth × (QKᵀ + AV), 2 FLOPs per multiply-add
    assert forward["patch_embed"] == 2 * 27 * (2 * 4 ** 3) * 36
    assert forward["total"] == sum(v for k, v in forward.items() if k not in ("total", "tokens"))


def test_patch_cost_tokens_grow_as_s3_and_attention_as_s6():
    """Supplementary Section E at the paper's geometry: 512 patch tokens at 12³ and 216 at 16³ (the paper's values),
    attention's FLOPs s⁶ but for the cls token, the total of smaller patches between s³ and s⁶."""
    cfg = get_profile("paper").model
    cost = efficiency.patch_cost(cfg, [6, 8, 12, 16, 24]).set_index("patch_size")
    tokens = paper.paper_values_for("supp_fig2", metric="n_tokens").set_index("model")["value"]
    assert cost.loc[12, "grid"] ** 3 == tokens["fmct"] == 512 and cost.loc[16, "grid"] ** 3 == tokens["fmct_p16"] == 216
    assert cost.loc[16, "s"] == 0.75 and cost.loc[16, "tokens_ratio"] == pytest.approx(0.75 ** 3)
    for p, row in cost.iterrows():
        n0, n = 513, (96 / p) ** 3 + 1
        assert row["attention_ratio"] == pytest.approx((n / n0) ** 2)     # T² with T = patches + cls
        assert row["attention_ratio"] == pytest.approx(row["s6"], rel=0.03)        # s⁶ but for the cls token
        if row["s"] > 1:  # smaller patches: more than the tokens' s³, less than attention's s⁶
            assert row["s3"] < row["flops_ratio"] < row["s6"]
    assert cost.loc[12, "flops"] == efficiency.vit_flops(cfg)["total"]
    # the exponent paper.cost_exponent states is attention's: log(attention ratio) / log(s) → 6
    assert math.log(cost.loc[6, "attention_ratio"]) / math.log(cost.loc[6, "s"]) == pytest.approx(
        paper.paper_values_for("supp_fig2", metric="cost_exponent")["value"].item(), abs=0.01)


def test_dividing_patches_and_candidates():
    assert efficiency.dividing_patches(get_profile("paper").model) == [6, 8, 12, 16, 24, 32, 48]
    assert efficiency.dividing_patches(get_profile("demo").model) == [4, 8, 16]
    demo = {c.name: c for c in efficiency.candidates("demo")}
    assert list(demo) == ["vit", "vit_p11", "ctfm", "merlin", "resnet3d", "dinov3", "vjepa2"]
    assert (demo["vit"].input_size, demo["vit_p11"].input_size, demo["ctfm"].input_size) == (32, 33, 32)
    assert [c.name for c in efficiency.candidates("paper")][:2] == ["vit", "vit_p16"]
    assert efficiency.candidates("paper", ["vit_p16"])[0].input_size == 96
    with pytest.raises(ValueError, match="unknown architecture 'vit16'"):
        efficiency.candidates("toy", ["vit16"])


def test_measured_table_is_positive_and_orders_a_tiny_and_a_bigger_vit(one_thread):
    """Two ViTs whose work differs ~60-fold: every number positive, the bigger one slower and heavier, its
    forward+backward heavier than its forward, its peak above its weights and input; FLOPs as analytic."""
    table = efficiency.measure([efficiency.vit_candidate(TINY, "tiny"), efficiency.vit_candidate(BIG, "big")],
                               batch_size=2, repeats=3, device="cpu")
    assert len(table) == 4 and set(table["mode"]) == set(efficiency.MODES)
    assert {"architecture", "model", "params_m", "input_size", "batch_size", "mode", "seconds", "scans_per_s",
            "peak_memory_mb", "gflops_per_scan", "machine", "torch", "dtype", "memory"} <= set(table.columns)
    assert (table["batch_size"] == 2).all() and (table["dtype"] == "float32").all()
    assert table["machine"].str.contains("CPU").all() and (table["torch"] == torch.__version__).all()
    assert (table[["seconds", "scans_per_s", "gflops_per_scan"]] > 0).all().all()
    by = table.set_index(["architecture", "mode"])
    for mode in efficiency.MODES:
        assert by.loc[("big", mode), "scans_per_s"] < by.loc[("tiny", mode), "scans_per_s"]
        assert by.loc[("big", mode), "gflops_per_scan"] * 1e9 == pytest.approx(
            efficiency.vit_flops(BIG, backward=mode != "forward")["total"])
    if table["memory"].iloc[0].startswith("not measured"):
        pytest.skip("no Linux /proc: peak memory is not measured here")
    assert (table["peak_memory_mb"] > 0).all()
    weights_and_input = (sum(p.numel() for p in vit_from_config(BIG).parameters()) + 2 * 3 * 16 ** 3) * 4 / 2 ** 20
    big_train = by.loc[("big", "forward+backward"), "peak_memory_mb"]
    assert big_train > by.loc[("big", "forward"), "peak_memory_mb"] > by.loc[("tiny", "forward"), "peak_memory_mb"]
    assert big_train > by.loc[("tiny", "forward+backward"), "peak_memory_mb"]
    # backward keeps every block's activations: 3 blocks × 2 scans × 513 tokens × 96 wide, several tensors each
    assert big_train - weights_and_input > 3 * 2 * 513 * 96 * 4 * 4 / 2 ** 20
    ratios = efficiency.relative_to(table, "tiny").set_index(["architecture", "mode"])
    assert (ratios.loc["tiny", ["throughput_ratio", "memory_ratio"]] == 1).all().all()
    assert (ratios.loc["big", "throughput_ratio"] < 1).all() and (ratios.loc["big", "memory_ratio"] > 1).all()


# ------------------------------------------------------------------------------------------------ parameters
def _unbuildable(name="never"):
    """A candidate whose building fails the test: a refusal must come before anything is built or measured."""
    def build():
        raise AssertionError("built: the parameters should have been refused before this")
    return efficiency.Candidate(name, name, build, 16)


@pytest.fixture
def no_gpu(monkeypatch):
    """torch sees no CUDA GPU, whatever machine runs the test."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(repeats=0), "repeats must be a whole number ≥ 1, got 0"),
    (dict(batch_size=0), "batch_size must be a whole number ≥ 1, got 0"),
    (dict(warmup=-1), "warmup must be a whole number ≥ 0, got -1"),
    (dict(repeats=2.5), "repeats must be a whole number ≥ 1, got 2.5"),
    (dict(modes=("backward",)), "unknown mode"),
    (dict(device="cuda"), "device 'cuda' asked for, but no CUDA GPU is visible to this process; use device='cpu'"),
], ids=["repeats", "batch_size", "warmup", "fractional", "mode", "cuda"])
def test_measure_refuses_its_parameters_before_building_anything(kwargs, message, no_gpu):
    """Were: min() of an empty sequence (repeats 0), a reshape of 0 elements (batch 0), torch's "not compiled with
    CUDA" 8 frames deep in machine_name (cuda without a GPU)."""
    with pytest.raises(ValueError, match=re.escape(message)):
        efficiency.measure([_unbuildable()], **kwargs)
    with pytest.raises(ValueError, match="nothing to measure"):
        efficiency.measure([])


def test_pick_device(no_gpu):
    assert efficiency.pick_device(None) == torch.device("cpu") == efficiency.pick_device("cpu")
    with pytest.raises(ValueError, match=r"^device 'cuda:1' asked for, but no CUDA GPU is visible to this process; "
                                         r"use device='cpu'$"):
        efficiency.pick_device("cuda:1")
    with pytest.raises(ValueError, match="device 'gpu': not a device name"):
        efficiency.pick_device("gpu")
    with pytest.raises(ValueError, match="run on 'cpu' or 'cuda'"):
        efficiency.pick_device("meta")


def test_check_parameters_resolves_notebook_11s_parameters(no_gpu):
    """The defaults; vit, the reference of every ratio, always measured (was: every architecture measured, then
    relative_to's "no 'vit' rows in the table"); a name list given as one string (papermill -p)."""
    assert efficiency.check_parameters("toy") == (
        ["vit", "vit_p6", "ctfm", "merlin", "resnet3d", "dinov3", "vjepa2"], 16, [2, 4, 8], "cpu")
    settings = efficiency.check_parameters("toy", ["ctfm", "merlin"], patch_sizes=[8, 16], device="cpu")
    assert settings.architectures == ["vit", "ctfm", "merlin"] and settings.patch_sizes == [4, 8, 16]
    assert efficiency.check_parameters("toy", "ctfm", patch_sizes=2).architectures == ["vit", "ctfm"]
    assert efficiency.check_parameters("toy", "ctfm,vit").architectures == ["ctfm", "vit"]
    assert efficiency.check_parameters("demo", input_size=40).patch_sizes == [4, 5, 8, 10, 20]


@pytest.mark.parametrize("kwargs, message", [
    (dict(patch_sizes=[3]), "patch_sizes: 3 does not divide the input side 16; the patch sizes that do: 1, 2, 4, 8, "
                            "16 (default 2, 4, 8: at most 8× the profile's tokens)"),
    (dict(patch_sizes=[0]), "patch_sizes: 0 is not a whole number ≥ 1; the patch sizes that divide the input side "
                            "16: 1, 2, 4, 8, 16"),
    (dict(input_size=18), "input_size 18 is not a multiple of the toy profile's patch 4 (e.g. 16 or 20)"),
    (dict(architectures=["ctfm", "vit16"]), "unknown architecture 'vit16'"),
    (dict(repeats=0), "repeats must be a whole number ≥ 1, got 0"),
    (dict(batch_size=0), "batch_size must be a whole number ≥ 1, got 0"),
    (dict(device="cuda"), "device 'cuda' asked for, but no CUDA GPU is visible to this process; use device='cpu'"),
], ids=["patch", "patch0", "input_size", "architecture", "repeats", "batch_size", "cuda"])
def test_check_parameters_refuses_in_one_line(kwargs, message, no_gpu):
    """Was: a patch that does not divide the input refused only once the whole architecture table was measured."""
    with pytest.raises(ValueError, match=re.escape(message)) as refused:
        efficiency.check_parameters("toy", **kwargs)
    assert "\n" not in str(refused.value)


def _table(vit, other):
    """A relative_to table for the ViT and one other architecture: (scans/s, MiB) per mode."""
    rows = [{"architecture": a, "model": m, "mode": mode, "scans_per_s": s, "peak_memory_mb": mb, "machine": "X CPU",
             "dtype": "float32", "torch": "2.x", "batch_size": 1, "repeats": 3, "memory": "peak resident set rise"}
            for a, m, (s, mb) in (("vit", "3D ViT/12", vit), ("ctfm", "CT-FM", other)) for mode in efficiency.MODES]
    return efficiency.relative_to(pd.DataFrame(rows))


def test_efficiency_conclusion_states_the_ratios_and_the_papers_claim():
    cost = efficiency.patch_cost(get_profile("paper").model, [8, 12, 16]).assign(measured_ratio=[3.0, 1.0, 0.5])
    text = conclusions.efficiency_conclusion(_table((10.0, 100.0), (4.0, 300.0)), cost, stand_ins=False)
    assert "CT-FM 0.40×" in text and "CT-FM 3.00×" in text and "the fastest and the lightest" in text
    assert "(Extended Data Fig. 5): reproduced on this machine." in text
    slope = np.polyfit(np.log([1.5, 1.0, 0.75]), np.log([3.0, 1.0, 0.5]), 1)[0]
    assert f"measured forward time as s^{slope:.1f}" in text and "Paper: O(s^6)" in text
    assert f"attention is {cost.attention_flops[1] / cost.flops[1]:.0%} of the FLOPs" in text
    attention = np.polyfit(np.log(cost.s), np.log(cost.attention_ratio), 1)[0]
    assert f"attention's FLOPs as s^{attention:.1f}, → s^6 as the token count grows" in text and "exactly" not in text
    heavier = conclusions.efficiency_conclusion(_table((10.0, 100.0), (4.0, 50.0)), cost, stand_ins=True)
    assert "NOT the lightest" in heavier and "NOT reproduced on this machine: the other encoders here are randomly" \
        in heavier


def test_efficiency_conclusion_states_attentions_slope_from_the_table():
    """At the toy and demo geometry (64 patch tokens and the cls token at s = 1) attention's FLOPs grow 62.3-fold at
    s = 2 and 0.019-fold at s = 0.5: a slope of 5.8, not the s^6 the text stated "exactly" (T = patches + 1)."""
    cost = efficiency.patch_cost(get_profile("toy").model, [2, 4, 8]).assign(measured_ratio=[4.0, 1.0, 0.8])
    assert cost.attention_ratio.round(2).tolist() == [62.29, 1.0, 0.02]
    text = conclusions.efficiency_conclusion(_table((10.0, 100.0), (4.0, 300.0)), cost, stand_ins=True)
    assert "attention's FLOPs as s^5.8, → s^6 as the token count grows; the patch tokens as s^3)" in text
    assert "s^6 exactly" not in text


def test_patch_size_conclusion_compares_and_prices_the_two_patch_sizes():
    summary = pd.DataFrame({"task": "macro", "metric": "auroc", "model": ["patch 8", "patch 11"], "value": [0.8, 0.7]})
    comparison = pd.DataFrame([{"task": "macro", "metric": "auroc", "model_a": "patch 8", "model_b": "patch 11",
                                "p_value": 0.01, "ci_low": 0.02, "ci_high": 0.18}])
    cost = pd.DataFrame([{"architecture": a, "mode": "forward+backward", "tokens": t, "flops": f, "seconds": s,
                          "peak_memory_mb": m, "machine": "X CPU"}
                         for a, t, f, s, m in (("fine", 64, 4e9, 2.0, 100.0), ("coarse", 27, 1e9, 0.5, 40.0))])
    text = conclusions.patch_size_conclusion(summary, comparison, pd.DataFrame({"seed": [0]}), cost, fine="patch 8",
                                             coarse="patch 11", profile=get_profile("demo"))
    assert "patch 8 (0.800) beats patch 11 (0.700): +14.3% relative" in text and "p = 0.01" in text
    assert "tokens 0.42×, forward+backward FLOPs 0.25× (analytic), measured forward+backward time 0.25× and peak " \
           "memory 0.40×" in text
    assert "Every model trained by one rule" in text

"""The notebooks' shared helpers (fmct_lib.reproduce): task choice, dataset check, mask placement."""
from __future__ import annotations

import pandas as pd
import pytest

from fmct_lib import reproduce
from fmct_lib.config import get_profile
from fmct_lib.data.manifest import DatasetNotAvailable


def _scans():
    # test split: a has 2 positives, b has 1, c has none, d has no negatives
    return pd.DataFrame({
        "scan_id": [f"s{i}" for i in range(6)], "split": ["test"] * 4 + ["train"] * 2,
        "a": [1, 1, 0, 0, 1, 0], "b": [1, 0, 0, 0, 1, 1], "c": [0, 0, 0, 0, 1, 1], "d": [1, 1, 1, 1, 0, 0],
    })


def test_choose_tasks_keeps_tasks_with_an_auroc_and_limits_by_positives(monkeypatch, capsys):
    monkeypatch.setattr(reproduce, "dataset_info", lambda name: {"tasks": ["a", "b", "c", "d", "missing"]})
    unlimited = get_profile("demo").replace(max_tasks=0)
    assert reproduce.choose_tasks(_scans(), None, "x", unlimited) == ["a", "b"]
    out = capsys.readouterr().out
    assert "c (0 positive / 4 negative)" in out and "d (4 positive / 0 negative)" in out and "missing" in out
    one = unlimited.replace(max_tasks=1)
    assert reproduce.choose_tasks(_scans(), None, "x", one) == ["a"]  # the one with the most positives
    # an explicit list is never cut to max_tasks
    assert reproduce.choose_tasks(_scans(), ["b", "a"], "x", one) == ["b", "a"]
    with pytest.raises(ValueError, match="positive and a negative"):
        reproduce.choose_tasks(_scans(), ["c", "d"], "x", one)


def test_a_dataset_that_was_not_ingested_stops_with_its_ingest_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FMCT_DATA", str(tmp_path))
    with pytest.raises(DatasetNotAvailable, match="fmct ingest rsna --source DIR"):
        reproduce.start("rsna", "toy")


def test_start_points_the_runs_root_at_run_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FMCT_RUNS", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotAvailable):
        reproduce.start("cq500", "toy", run_dir=str(tmp_path / "mine"))
    from fmct_lib.paths import runs_root
    assert runs_root() == tmp_path / "mine"


def test_paper_counterparts():
    assert reproduce.paper_dataset("synthetic", "internal") == "nyu_langone"
    assert reproduce.paper_dataset("synthetic", "external") == "nyu_long_island"
    assert reproduce.paper_dataset("rsna") == "rsna"


def test_describe_comparison_says_plainly_when_the_paper_is_not_reproduced():
    assert reproduce.describe_comparison("ft", 0.8, "scratch", 0.64, 0.01, "0.852 vs 0.734") == (
        "ft (0.800) beats scratch (0.640): +25.0% relative, paired permutation p = 0.01. Paper: 0.852 vs 0.734.")
    assert "does NOT beat" in reproduce.describe_comparison("ft", 0.6, "scratch", 0.7)
    assert "relative" not in reproduce.describe_comparison("ft", 0.6, "scratch", 0.0)
    assert "not measurable" in reproduce.describe_comparison("ft", float("nan"), "scratch", 0.7)


def test_figure_names_keep_the_gallery_for_the_demo_run_only():
    assert reproduce.figure_name("fig2", "synthetic", "demo") == "fig2"
    assert reproduce.figure_name("fig2", "synthetic", "toy") == "fig2__synthetic_toy"
    assert reproduce.figure_name("fig2", "rsna", "demo") == "fig2__rsna_demo"
    longer = get_profile("demo").with_finetune_epochs(40)
    assert reproduce.figure_name("fig2", "synthetic", longer) == "fig2_40ep"
    assert reproduce.figure_name("fig2", "synthetic", longer.with_finetune_epochs(8)) == "fig2"
    assert reproduce.figure_name("fig2", "rsna", get_profile("toy").with_finetune_epochs(3)) == "fig2_3ep__rsna_toy"


def test_ensure_finetuned_is_the_same_model_whatever_ran_before(tmp_path, monkeypatch):
    """Fig. 5's fine-tuned encoder depends on its seed only, not on what the notebook's process did first."""
    import torch

    from fmct_lib import downstream
    from fmct_lib.config import ModelConfig
    from fmct_lib.data.manifest import write_scans
    from fmct_lib.models.checkpoints import load_checkpoint, save_checkpoint
    from fmct_lib.models.vit3d import vit_from_config
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    profile = get_profile("toy").replace(model=ModelConfig(img_size=16, patch_size=8, embed_dim=24, depth=1,
                                                           num_heads=2), finetune_subset=8, finetune_epochs=1)
    splits = ["train"] * 4 + ["val"] * 2 + ["test"]
    rows = [{"scan_id": f"s{i}", "patient_id": f"p{i}", "path": "x", "split": splits[i % 7], "manufacturer": "A",
             "slice_thickness_mm": 1.0, "spacing": "1,1,1", "ich": i % 2} for i in range(28)]
    write_scans(pd.DataFrame(rows), "toyset")
    vols = torch.rand(28, 3, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(downstream, "volume_source", lambda dataset, scans, spec, num_workers=0: (
        downstream.VolumeSource(vols[[int(s[1:]) for s in scans["scan_id"]]]), scans.reset_index(drop=True)))
    encoder = save_checkpoint(tmp_path / "pre" / "encoder.safetensors", vit_from_config(profile.model),
                              {"model": profile.model.to_dict()})
    weights = []
    for draws in (0, 5):
        monkeypatch.setenv("FMCT_RUNS", str(tmp_path / f"runs{draws}"))
        torch.rand(draws)  # the global RNG as another notebook cell may have left it
        path = reproduce.ensure_finetuned("toyset", "ich", encoder, profile, seed=3)
        weights.append(load_checkpoint(path)[0].state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    pretrained = load_checkpoint(encoder)[0].state_dict()
    assert not all(torch.equal(weights[0][k], pretrained[k]) for k in pretrained)  # it was trained

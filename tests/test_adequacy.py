"""Too few positives or negatives for a meaningful estimate (fmct_lib.evaluate.adequacy): the CI width it quotes,
the warning's threshold and words, and the warning as downstream runs record and issue it."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from fmct_lib.config import ModelConfig, get_profile
from fmct_lib.data import inputs
from fmct_lib.data.manifest import write_scans
from fmct_lib.downstream import VolumeSource, run_protocol, runs as runs_module
from fmct_lib.evaluate.adequacy import (MIN_PER_CLASS, adequacy_table, auroc_ci_halfwidth, class_count_warning,
                                        split_warning)


def test_the_ci_half_width_matches_a_simulation_of_hanley_and_mcneils_model():
    # Hanley & McNeil's variance is exact for exponential scores: negatives Exp(rate 1), positives Exp(rate 1/4)
    # give P(positive > negative) = 1 / (1 + 1/4) = 0.8. The spread of AUROC over 4,000 simulated studies of 10
    # positives and 40 negatives must match 1.96 × their standard error (Monte Carlo error of a SD: ~1.1%).
    rng = np.random.default_rng(0)
    n_pos, n_neg, n_sim = 10, 40, 4000
    pos = rng.exponential(4.0, (n_sim, n_pos))
    neg = rng.exponential(1.0, (n_sim, n_neg))
    aurocs = (pos[:, :, None] > neg[:, None, :]).mean(axis=(1, 2))
    assert abs(aurocs.mean() - 0.8) < 0.005
    assert auroc_ci_halfwidth(n_pos, n_neg) == pytest.approx(1.96 * aurocs.std(), rel=0.04)
    # the docstring's numbers: ±0.20 at 10 and 10, at least ±0.16 at 10 positives however many negatives
    assert round(auroc_ci_halfwidth(10, 10), 2) == 0.20
    assert 0.16 < auroc_ci_halfwidth(10, 10 ** 7) < 0.17
    assert np.isnan(auroc_ci_halfwidth(0, 40))


def test_the_warning_names_the_split_the_counts_and_the_width():
    assert MIN_PER_CLASS == 10
    assert class_count_warning(10, 10, where="hosp test", task="ich") == ""
    assert class_count_warning(2, 40, where="hosp test", task="ich") == (
        f"hosp test: 2 positive and 40 negative 'ich' scans, fewer than 10 positives: an AUROC of 0.8 measured on "
        f"them has a 95% CI of about ±{auroc_ci_halfwidth(2, 40):.2f} (Hanley & McNeil), too few for a meaningful "
        "estimate")
    assert "fewer than 10 negatives:" in class_count_warning(50, 9, where="x", task="ich")
    assert "fewer than 10 positives and negatives:" in class_count_warning(3, 3, where="x", task="ich")
    assert class_count_warning(0, 40, where="hosp val", task="sah") == (
        "hosp val: 0 positive and 40 negative 'sah' scans: no positives, AUROC and its CI are undefined")
    # labels as a split holds them: unknown labels are not counted
    assert split_warning([1, 0, np.nan, 1], where="x", task="ich").startswith("x: 2 positive and 1 negative")


def test_adequacy_table_counts_each_scan_once_per_task():
    # two models, two seeds on the same 12 scans: ich 10 positive / 2 negative, sah 6 / 6
    scans = pd.DataFrame({"scan_id": [f"s{i}" for i in range(12)], "ich": [1] * 10 + [0] * 2, "sah": [1, 0] * 6})
    predictions = pd.concat([scans.assign(task=task, label=scans[task], protocol=protocol, seed=seed,
                                          eval_dataset="hosp")
                             for task in ("ich", "sah") for protocol in ("finetune", "scratch") for seed in (0, 1)])
    table = adequacy_table(predictions)
    assert table[["task", "n_positive", "n_negative"]].values.tolist() == [["ich", 10, 2], ["sah", 6, 6]]
    assert table["warning"].str.startswith("hosp evaluation split: ").all()
    assert "fewer than 10 negatives:" in table["warning"][0]
    assert "fewer than 10 positives and negatives:" in table["warning"][1]


# ------------------------------------------------------------------------------------- in downstream runs
TOY = get_profile("toy").replace(model=ModelConfig(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2))


@pytest.fixture
def small_test_split(tmp_path, monkeypatch):
    """A dataset whose test split holds 12 positive and 18 negative 'ich' scans but 3 positive 'sah' scans;
    volumes in memory (positives brighter), as the downstream tests do."""
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    splits = ["train"] * 40 + ["val"] * 10 + ["test"] * 30
    ich = [i % 2 for i in range(50)] + [1] * 12 + [0] * 18
    sah = [i % 2 for i in range(50)] + [1] * 3 + [0] * 27
    table = pd.DataFrame({"scan_id": [f"s{i:03d}" for i in range(80)], "patient_id": [f"p{i:03d}" for i in range(80)],
                          "path": "x.nii.gz", "split": splits, "manufacturer": "A", "slice_thickness_mm": 1.0,
                          "spacing": "1,1,1", "ich": ich, "sah": sah})
    write_scans(table, "smallset")
    g = torch.Generator().manual_seed(0)
    size = TOY.input_size
    volumes = 0.3 + 0.05 * torch.randn(80, 3, size, size, size, generator=g)
    volumes[torch.tensor(ich, dtype=torch.bool)] += 0.3
    by_id = dict(zip(table["scan_id"], volumes))

    def fake_source(dataset, scans, spec, num_workers=0):
        return (VolumeSource(torch.stack([by_id[s] for s in scans["scan_id"]]), key="-".join(scans["scan_id"])),
                scans.reset_index(drop=True))
    for module in (inputs, runs_module):
        monkeypatch.setattr(module, "volume_source", fake_source)
    return tmp_path / "runs"


def test_a_run_on_a_small_test_split_records_and_warns_and_says_so_again_on_resume(small_test_split):
    root = small_test_split
    expected = class_count_warning(3, 27, where="smallset test", task="sah")
    with pytest.warns(UserWarning) as caught:
        predictions = run_protocol("smallset", "sah", "histogram", None, TOY, run_root=root, progress=False)
    assert expected in [str(w.message) for w in caught]
    assert (predictions["split_warning"] == expected).all()
    run_dir = next(p.parent for p in root.rglob("done") if "/sah/" in str(p))
    assert json.loads((run_dir / "config.json").read_text())["split_warning"] == expected
    assert (pd.read_csv(run_dir / "predictions.csv")["split_warning"] == expected).all()
    with pytest.warns(UserWarning, match="smallset test: 3 positive and 27 negative 'sah' scans"):
        again = run_protocol("smallset", "sah", "histogram", None, TOY, run_root=root, progress=False)
    pd.testing.assert_frame_equal(again, predictions, check_dtype=False)


def test_a_run_on_a_large_enough_test_split_records_no_warning(small_test_split, recwarn):
    predictions = run_protocol("smallset", "ich", "histogram", None, TOY, run_root=small_test_split, progress=False)
    assert (predictions["split_warning"] == "").all() and len(predictions) == 30
    assert not [w for w in recwarn if "'ich' scans" in str(w.message)]
    run_dir = next(small_test_split.rglob("done")).parent
    assert json.loads((run_dir / "config.json").read_text())["split_warning"] == ""


def test_a_figures_summary_carries_the_split_warning():
    """bootstrap_ci, the table every figure saves, says which tasks' evaluation split is too small (issue 26, 7)."""
    import numpy as np
    import pandas as pd

    from fmct_lib.evaluate import bootstrap_ci

    rng = np.random.default_rng(0)
    rows = []
    for task, n_pos in (("ich", 30), ("edh", 3)):          # 30 and 3 positives among 60 scans
        labels = np.r_[np.ones(n_pos), np.zeros(60 - n_pos)]
        rows += [{"scan_id": f"s{i}", "task": task, "label": y, "probability": (y + rng.random()) / 2, "seed": 0}
                 for i, y in enumerate(labels)]
    summary = bootstrap_ci(pd.DataFrame(rows), n_boot=10).set_index(["task", "metric"])
    assert summary.loc[("ich", "auroc"), "split_warning"] == ""
    assert "3 positive and 57 negative" in summary.loc[("edh", "auroc"), "split_warning"]
    assert summary.loc[("macro", "auroc"), "split_warning"] == "tasks with too few positives or negatives: edh"

"""The paper's values (fmct_lib.report.paper): sources, consistency and the filter the figures use."""
from __future__ import annotations

import pytest

from fmct_lib.report import paper


def test_paper_values_are_consistent_with_the_reported_relative_improvements():
    pv = paper.load_paper_values()
    for dataset, reported in (("nyu_langone", 16.07), ("nyu_long_island", 20.86), ("rsna", 12.01)):
        auc = pv[(pv.dataset == dataset) & (pv.metric == "auroc") & (pv.task == "macro")].set_index("model")
        computed = 100 * (auc.loc["finetune", "value"] / auc.loc["scratch", "value"] - 1)
        rel = pv[(pv.dataset == dataset) & (pv.metric == "relative_improvement_pct")]["value"].item()
        # the paper rounds the AUCs to 3 decimals, so the ratio of the rounded values is within ~0.02 %
        assert computed == pytest.approx(rel, abs=0.02), dataset


def test_paper_values_have_sources_and_plausible_values():
    pv = paper.load_paper_values()
    assert {("nyu_langone", 0.852), ("nyu_langone", 0.734), ("nyu_long_island", 0.904),
            ("nyu_long_island", 0.748), ("rsna", 0.923), ("rsna", 0.824), ("cq500", 0.863)} <= set(
        zip(pv.loc[pv.metric == "auroc", "dataset"], pv.loc[pv.metric == "auroc", "value"]))
    assert pv["source"].str.contains("Nat. Biomed. Eng. 2026").all()
    assert pv["quote"].str.len().gt(20).all()
    aucs = pv.loc[pv.metric == "auroc", "value"]
    assert aucs.between(0.5, 1.0).all()
    assert pv.loc[pv.model == "fewshot", "k"].notna().all()


def test_paper_values_reject_a_bad_relation(tmp_path):
    bad = paper.load_paper_values()
    bad.loc[0, "relation"] = "~"
    path = tmp_path / "pv.csv"
    bad.to_csv(path, index=False)
    with pytest.raises(ValueError, match="relation"):
        paper.load_paper_values(path)


def test_paper_values_for_filters():
    rows = paper.paper_values_for("fig1e", "rsna", "auroc")
    assert set(rows["dataset"]) == {"rsna"} and set(rows["metric"]) == {"auroc"}
    assert len(rows) == 2 + 5  # macro fine-tuned and scratch + the five "> 0.90" haemorrhage tasks

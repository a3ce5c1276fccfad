"""A figure's comparison table (fmct_lib.report.comparisons): the paper's values joined by model, task, metric
and K, each with the relation it is printed with."""
import numpy as np
import pandas as pd

from fmct_lib.report import comparisons, paper

PAPER_COLUMNS = ["paper_a", "paper_a_relation", "paper_b", "paper_b_relation", "paper_relative_pct",
                 "paper_relative_pct_relation", "paper_p", "paper_p_relation"]


def test_with_paper_joins_the_papers_numbers_for_the_same_pair_and_save_writes_them(tmp_path):
    ours = pd.DataFrame({"model_a": ["in-domain fine-tuned", "in-domain fine-tuned", "in-domain fine-tuned"],
                         "model_b": ["in-domain scratch", "in-domain scratch", "external validation"],
                         "task": ["macro", "ich", "macro"], "metric": ["auroc", "auroc", "auroc"],
                         "a": [0.8, 0.7, 0.8], "b": [0.7, 0.6, 0.75]})
    reported = paper.paper_values_for("fig1e", "nyu_long_island")
    table = comparisons.with_paper(ours, reported, {"in-domain fine-tuned": "finetune",
                                                    "in-domain scratch": "scratch"})
    # Fig. 1e, NYU Long Island (paper_values.csv): fine-tuned 0.904 vs scratch 0.748, +20.86% macro-AUC, P < 0.001
    assert table.loc[0, PAPER_COLUMNS].tolist() == [0.904, "=", 0.748, "=", 20.86, "=", 0.001, "<"]
    assert table.loc[1, ["paper_a", "paper_b", "paper_p"]].isna().all()   # the paper gives no per-task value here
    assert table.loc[2, ["paper_b", "paper_relative_pct", "paper_p"]].isna().all()  # nor one for external validation
    path = comparisons.save_comparison("fig_x", table, root=tmp_path)
    assert path.name == "fig_x_comparison.csv"
    pd.testing.assert_frame_equal(pd.read_csv(path), table, check_dtype=False)
    assert comparisons.with_paper(ours.iloc[:0], reported).columns[-8:].tolist() == PAPER_COLUMNS


def test_with_paper_keeps_the_printed_relation_of_a_bound():
    ours = pd.DataFrame({"model_a": ["fine-tuned"], "model_b": ["scratch"], "task": ["iph"], "metric": ["auroc"]})
    table = comparisons.with_paper(ours, paper.paper_values_for("fig1e", "rsna"), {"fine-tuned": "finetune"})
    assert table.loc[0, ["paper_a", "paper_a_relation"]].tolist() == [0.90, ">"]   # RSNA: "> 0.90", not 0.90


def test_with_paper_takes_the_ap_gain_and_ap_p_for_ap_rows():
    ours = pd.DataFrame({"model_a": ["FM-CT", "FM-CT"], "model_b": ["CT-FM", "CT-FM"], "task": ["macro", "macro"],
                         "metric": ["auroc", "ap"]})
    table = comparisons.with_paper(ours, paper.paper_values_for("ed_fig3"), {"FM-CT": "fmct", "CT-FM": "ct_fm"})
    # ED Fig. 3: FM-HCT over CT-FM +9.56% macro-AUROC, +44.60% macro-AP, both P < 0.001
    assert table.paper_relative_pct.tolist() == [9.56, 44.60]
    assert table.paper_p.tolist() == [0.001, 0.001] and table.paper_p_relation.tolist() == ["<", "<"]


def test_with_paper_matches_few_shot_values_only_at_their_k():
    ours = pd.DataFrame({"model_a": "pretrained", "model_b": "scratch", "task": "ivh", "metric": "auroc",
                         "k": ["8", "64", "all"]})
    table = comparisons.with_paper(ours, paper.paper_values_for("fig2", "rsna"), {"pretrained": "fewshot"})
    # Fig. 2: IVH on RSNA above 0.90 at K = 8; the paper prints no value at other K nor on all data
    assert table.loc[0, ["paper_a", "paper_a_relation"]].tolist() == [0.90, ">"]
    assert table.loc[1:, "paper_a"].isna().all()


def test_holm_adjust_equals_its_definition_and_a_hand_computed_case():
    from fmct_lib.evaluate import holm_adjust
    # hand: p = 0.01, 0.04, 0.03, NaN (m = 3): sorted 0.01·3 = 0.03, 0.03·2 = 0.06, 0.04·1 → max(0.06, 0.04) = 0.06
    np.testing.assert_allclose(holm_adjust([0.01, 0.04, 0.03, np.nan]), [0.03, 0.06, 0.06, np.nan])
    rng = np.random.default_rng(0)
    for _ in range(50):  # brute force: the step-down maximum over every smaller p
        p = rng.random(int(rng.integers(1, 12))) ** 3
        m, order = len(p), np.argsort(p)
        expected = np.empty(m)
        for i, idx in enumerate(order):
            expected[idx] = max(min(1.0, (m - j) * p[order[j]]) for j in range(i + 1))
        np.testing.assert_allclose(holm_adjust(p), expected)


def test_a_saved_comparison_adds_holm_within_each_metric(tmp_path):
    from fmct_lib.evaluate import holm_adjust
    table = pd.DataFrame({"task": ["ich", "sah", "macro", "ich", "sah", "macro"], "metric": ["auroc"] * 3 + ["ap"] * 3,
                          "difference": 0.1, "p_value": [0.001, 0.04, 0.02, 0.5, np.nan, 0.01], "n_perm": 1000})
    path = comparisons.save_comparison("fig_y", table, root=tmp_path)
    written = pd.read_csv(path)
    assert list(written.columns) == ["task", "metric", "difference", "p_value", "p_holm", "n_perm"]
    np.testing.assert_allclose(written.p_holm[:3], holm_adjust([0.001, 0.04, 0.02]))   # 0.003, 0.04, 0.04
    np.testing.assert_allclose(written.p_holm[3:], [0.5, np.nan, 0.02])  # AP, its own family of 2: 0.01·2, 0.5·1
    again = comparisons.with_holm(written)   # idempotent: a table read back is adjusted afresh, not twice
    pd.testing.assert_frame_equal(again, written)
    # a notebook's table is a concat of comparisons, its index repeated: adjusted all the same
    stacked = pd.concat([table.iloc[:3], table.iloc[:3]])
    np.testing.assert_allclose(comparisons.with_holm(stacked).p_holm, holm_adjust([0.001, 0.04, 0.02] * 2))

"""A figure's comparison table (fmct_lib.report.comparisons): the paper's values joined by model and task."""
import pandas as pd

from fmct_lib.report import comparisons, paper


def test_with_paper_joins_the_papers_numbers_for_the_same_pair_and_save_writes_them(tmp_path):
    ours = pd.DataFrame({"model_a": ["in-domain fine-tuned", "in-domain fine-tuned", "in-domain fine-tuned"],
                         "model_b": ["in-domain scratch", "in-domain scratch", "external validation"],
                         "task": ["macro", "ich", "macro"], "metric": ["auroc", "auroc", "auroc"],
                         "a": [0.8, 0.7, 0.8], "b": [0.7, 0.6, 0.75]})
    reported = paper.paper_values_for("fig1e", "nyu_long_island")
    table = comparisons.with_paper(ours, reported, {"in-domain fine-tuned": "finetune",
                                                    "in-domain scratch": "scratch"})
    # Fig. 1e, NYU Long Island (paper_values.csv): fine-tuned 0.904 vs scratch 0.748, +20.86% macro-AUC
    assert table.loc[0, ["paper_a", "paper_b", "paper_relative_pct"]].tolist() == [0.904, 0.748, 20.86]
    assert table.loc[1, ["paper_a", "paper_b"]].isna().all()   # the paper gives no per-task value here
    assert pd.isna(table.loc[2, "paper_b"])                     # nor one for external validation
    path = comparisons.save_comparison("fig_x", table, root=tmp_path)
    assert path.name == "fig_x_comparison.csv"
    pd.testing.assert_frame_equal(pd.read_csv(path), table, check_dtype=False)
    assert comparisons.with_paper(ours.iloc[:0], reported).columns[-3:].tolist() == [
        "paper_a", "paper_b", "paper_relative_pct"]

"""Where figures go and which of the paper's cohorts they are drawn beside (fmct_lib.report.naming)."""
from __future__ import annotations

from fmct_lib.config import get_profile
from fmct_lib.report import naming


def test_paper_counterparts():
    assert naming.paper_dataset("synthetic", "internal") == "nyu_langone"
    assert naming.paper_dataset("synthetic", "external") == "nyu_long_island"
    assert naming.paper_dataset("rsna") == "rsna"


def test_figure_names_keep_the_gallery_for_the_demo_run_only():
    assert naming.figure_name("fig2", "synthetic", "demo") == "fig2"
    assert naming.figure_name("fig2", "synthetic", "toy") == "fig2__synthetic_toy"
    assert naming.figure_name("fig2", "rsna", "demo") == "fig2__rsna_demo"
    longer = get_profile("demo").with_finetune_epochs(40)
    assert naming.figure_name("fig2", "synthetic", longer) == "fig2_40ep"
    assert naming.figure_name("fig2", "synthetic", longer.with_finetune_epochs(8)) == "fig2"
    assert naming.figure_name("fig2", "rsna", get_profile("toy").with_finetune_epochs(3)) == "fig2_3ep__rsna_toy"

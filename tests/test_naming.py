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
    patient = get_profile("demo").replace(finetune_patience=20)
    changed = naming.figure_name("fig2", "synthetic", patient)
    assert changed.startswith("fig2_") and len(changed) == len("fig2_") + 6  # never the gallery's name
    assert naming.figure_name("fig2", "synthetic", patient.replace(finetune_patience=15)) == "fig2"  # as demo again
    assert naming.figure_name("fig2", "synthetic", get_profile("demo").replace(finetune_max_epochs=9)) != changed
    assert naming.figure_name("fig2", "rsna", get_profile("toy").replace(finetune_patience=3)).endswith("__rsna_toy")


def test_an_encoder_tag_names_the_figure_even_for_the_gallerys_data_and_profile():
    assert naming.figure_name("fig2", "synthetic", "demo", tag="w-1a2b3c4d") == "fig2__synthetic_demo_w-1a2b3c4d"
    assert naming.figure_name("fig2", "rsna", "paper", tag="w-1a2b3c4d-reference") == (
        "fig2__rsna_paper_w-1a2b3c4d-reference")
    assert naming.figure_name("fig2", "rsna", "paper", tag=None) == "fig2__rsna_paper"


"""Comparing encoders (fmct_lib.report.encoders) and the conclusions of notebooks 09 and 10, on hand-made tables.

The predictions are built so that every statistic is known without computing it: a ``perfect`` model ranks every
positive above every negative (AUROC 1 on any resample), a ``constant`` one ties them all (0.5); the paired
difference of the two is then +0.5 on every bootstrap replicate, so its 95% CI is the single point +0.5.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

from fmct_lib.config import get_profile
from fmct_lib.evaluate import paired_comparison
from fmct_lib.models.external import ExternalRef
from fmct_lib.report import conclusions, encoders as compare, paper

PAPER_PROFILE = get_profile("paper")


def scored(patterns: dict[str, str]) -> pd.DataFrame:
    """Predictions of each ``model`` on 40 scans (20 negative, then 20 positive) for tasks ich and sdh, seed 0."""
    labels = np.repeat([0, 1], 20)
    scores = {"perfect": 0.1 + 0.8 * labels + 0.001 * np.arange(40), "constant": np.full(40, 0.5)}
    return pd.concat([pd.DataFrame({"model": model, "protocol": "finetune", "task": task, "seed": 0,
                                    "scan_id": [f"s{i}" for i in range(40)], "label": labels,
                                    "probability": scores[pattern], "stop_reason": "rule", "stopped_step": 30,
                                    "best_step": 20})
                      for model, pattern in patterns.items() for task in ("ich", "sdh")], ignore_index=True)


def test_model_grid_names_every_encoder_and_protocol():
    grid = compare.model_grid({"FM-CT": "enc.safetensors", "CT-FM": "ref"}, ["finetune", "linear"])
    assert grid == {"FM-CT finetune": ("enc.safetensors", "finetune"), "FM-CT linear": ("enc.safetensors", "linear"),
                    "CT-FM finetune": ("ref", "finetune"), "CT-FM linear": ("ref", "linear")}


def test_weights_summary_says_which_ran_randomly_initialised(tmp_path):
    folder = tmp_path / "ct_fm_feature_extractor"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes(b"not read here")
    encoders = {"FM-CT": tmp_path / "run" / "encoder.safetensors", "CT-FM": ExternalRef("ctfm", folder),
                "Merlin": ExternalRef("merlin"), "ResNet-50-3D": ExternalRef("resnet3d", seed=2)}
    lines, short = compare.weights_summary(encoders)
    assert short == "published weights: CT-FM; RANDOMLY INITIALISED: Merlin, ResNet-50-3D"
    lines = lines.splitlines()
    assert lines[0] == "FM-CT: this project's checkpoint run/encoder.safetensors"
    assert lines[1].startswith("CT-FM: published weights ct_fm_feature_extractor (sha256 ")
    assert lines[2] == "Merlin: RANDOMLY INITIALISED (seed 0), not Merlin's weights"
    assert lines[3] == "ResNet-50-3D: RANDOMLY INITIALISED (seed 2), not ResNet-50-3D's weights"
    assert lines[4].startswith("Merlin, ResNet-50-3D ran RANDOMLY INITIALISED, not with their publishers' weights")
    assert compare.weights_summary({"FM-CT": "a/encoder.safetensors"})[1] == "published weights: none"


def test_paired_comparisons_are_paired_comparison_on_the_common_tasks():
    predictions = scored({"FM-CT finetune": "perfect", "CT-FM finetune": "constant"})
    predictions = predictions[~((predictions.model == "CT-FM finetune") & (predictions.task == "sdh"))]
    table = compare.paired_comparisons(predictions, [("FM-CT finetune", "CT-FM finetune"),
                                                     ("FM-CT finetune", "Merlin finetune")], n_boot=20, n_perm=50)
    assert set(zip(table.model_a, table.model_b)) == {("FM-CT finetune", "CT-FM finetune")}  # Merlin: no runs
    assert set(table.task) == {"ich", "macro"}  # sdh only one of the two has
    pick = lambda m: predictions[(predictions.model == m) & (predictions.task == "ich")]  # noqa: E731
    expected = paired_comparison(pick("FM-CT finetune"), pick("CT-FM finetune"), n_boot=20, n_perm=50)
    pd.testing.assert_frame_equal(table.drop(columns=["model_a", "model_b"]), expected)
    macro = table.query("task == 'macro' and metric == 'auroc'").iloc[0]
    assert (macro.a, macro.b, macro.ci_low, macro.ci_high) == (1.0, 0.5, 0.5, 0.5)


def test_paper_statements_and_notes_read_the_papers_rows_in_either_order():
    ed3 = paper.paper_values_for("ed_fig3")
    assert compare.paper_statements(ed3, "fmct", "ct_fm") == compare.paper_statements(ed3, "ct_fm", "fmct") == (
        "FM-HCT vs CT-FM, macro-AUROC relative gain +9.56%; FM-HCT vs CT-FM, macro-AUROC P < 0.001; FM-HCT vs CT-FM, "
        "macro-AP relative gain +44.60%; FM-HCT vs CT-FM, macro-AP P < 0.001 (its four datasets)")
    assert compare.paper_statements(ed3, "fmct", "resnet3d") == ""
    notes = compare.paper_notes(ed3, "auroc")
    assert set(notes.model) == {"merlin_vs_fmct", "fmct_vs_ct_fm"} and set(notes.metric) == {
        "relative_improvement_pct", "p_value"}  # Merlin vs scratch is no comparison with FM-CT
    assert set(compare.paper_notes(paper.paper_values_for("ed_fig4"), "ap").value) == {15.54, 46.57, 26.25}


def test_pairs_are_turned_round_where_the_paper_compares_the_other_way():
    names = {"FM-CT finetune": "fmct", "CT-FM finetune": "ct_fm", "Merlin finetune": "merlin"}
    pairs = [("FM-CT finetune", "CT-FM finetune"), ("FM-CT finetune", "Merlin finetune"),
             ("FM-CT finetune", "ResNet-50-3D finetune"), ("FM-CT linear", "Merlin linear")]
    assert compare.as_the_paper_orders(pairs, names, paper.paper_values_for("ed_fig3")) == [
        ("FM-CT finetune", "CT-FM finetune"), ("Merlin finetune", "FM-CT finetune"),  # the paper: "Merlin ... lower"
        ("FM-CT finetune", "ResNet-50-3D finetune"), ("FM-CT linear", "Merlin linear")]


def test_other_encoders_conclusion_sets_each_comparison_beside_the_papers():
    predictions = scored({"FM-CT finetune": "perfect", "CT-FM finetune": "constant"})
    summary = pd.DataFrame({"task": "macro", "metric": "auroc", "model": ["FM-CT finetune", "CT-FM finetune"],
                            "value": [1.0, 0.5]})
    comparison = compare.paired_comparisons(predictions, [("FM-CT finetune", "CT-FM finetune")], n_boot=20, n_perm=50)
    p = comparison.query("task == 'macro' and metric == 'auroc'").p_value.item()
    retrieval = pd.DataFrame({"subtype": "mean", "metric": ["map", "p@1"] * 2, "model": ["FM-CT"] * 2 + ["CT-FM"] * 2,
                              "value": [0.2, 0.3, 0.1, 0.15]})  # the metrics and models in their table's order
    gallery = pd.DataFrame({"iph": [1, 0, 0, 0], "sdh": [1, 1, 0, 0]})  # prevalences 0.25 and 0.5: mean 0.375
    text = conclusions.other_encoders_conclusion(
        summary, comparison, predictions, weights="CT-FM: RANDOMLY INITIALISED (seed 0), not CT-FM's weights",
        paper=paper.paper_values_for("ed_fig3"), names={"FM-CT finetune": "fmct", "CT-FM finetune": "ct_fm"},
        profile=PAPER_PROFILE, retrieval=retrieval, gallery=gallery, subtypes=["iph", "sdh"])
    lines = text.splitlines()
    assert lines[0] == "- CT-FM: RANDOMLY INITIALISED (seed 0), not CT-FM's weights"
    assert lines[1] == "- Macro-AUROC: FM-CT finetune 1.000, CT-FM finetune 0.500."
    assert lines[2] == (f"- FM-CT finetune (1.000) beats CT-FM finetune (0.500): +100.0% relative, 95% CI of the "
                        f"difference +0.500 to +0.500, paired permutation p = {p:.3g}. Paper: FM-HCT vs CT-FM, "
                        "macro-AUROC relative gain +9.56%; FM-HCT vs CT-FM, macro-AUROC P < 0.001; FM-HCT vs CT-FM, "
                        "macro-AP relative gain +44.60%; FM-HCT vs CT-FM, macro-AP P < 0.001 (its four datasets).")
    assert lines[3].startswith("- Every model trained by one rule")
    assert "The 4 deep runs stopped at step 30–30" in lines[3]  # 2 models × 2 tasks
    assert lines[4] == ("- Retrieval, mean over subtypes: FM-CT mAP 0.200, P@1 0.300; CT-FM mAP 0.100, P@1 0.150 "
                        "(a random ranking scores about the prevalence, 0.375).")
    # retrieval alone (no task to train): no comparison lines
    alone = conclusions.other_encoders_conclusion(None, None, None, weights="w", names={}, profile=PAPER_PROFILE,
                                                  paper=paper.paper_values_for("ed_fig3"), retrieval=retrieval,
                                                  gallery=gallery, subtypes=["iph", "sdh"])
    assert alone.splitlines()[0] == "- w" and "Macro-AUROC" not in alone and "Retrieval, mean over" in alone


def test_modelling_choices_conclusion_names_the_papers_gain_and_a_tie():
    predictions = scored({"3D ViT": "constant", "DINOv3 + ABMIL": "constant"})
    summary = pd.DataFrame({"task": "macro", "metric": "auroc", "model": ["3D ViT", "DINOv3 + ABMIL"],
                            "value": [0.5, 0.5]})
    comparison = compare.paired_comparisons(predictions, [("3D ViT", "DINOv3 + ABMIL")], n_boot=20, n_perm=50)
    text = conclusions.modelling_choices_conclusion(summary, comparison, predictions, weights="DINOv3: random",
                                                    paper=paper.paper_values_for("ed_fig4"),
                                                    names={"3D ViT": "fmct", "DINOv3 + ABMIL": "dinov3_abmil"},
                                                    profile=PAPER_PROFILE)
    line = text.splitlines()[2]
    assert line.startswith("- 3D ViT (0.500) ties DINOv3 + ABMIL (0.500): +0.0% relative, 95% CI of the difference "
                           "+0.000 to +0.000 (contains 0), paired permutation p = 1.")
    assert line.endswith("Paper: FM-HCT vs DINOv3 + ABMIL, macro-AUROC relative gain +2.57%; FM-HCT vs DINOv3 + ABMIL, "
                         "macro-AP relative gain +15.54% (its four datasets).")


def test_embedding_grouping_skips_what_a_dataset_does_not_have():
    """Each attribute with more than k values and two kinds is measured (evaluate.neighbour_agreement); an absent,
    empty or constant one is left out, as on a dataset without acquisition columns (RSNA)."""
    from fmct_lib.evaluate import neighbour_agreement
    rng = np.random.default_rng(0)
    n = 40
    make = rng.choice(["A", "B"], n)
    table = pd.DataFrame({"manufacturer": make, "slice_thickness_mm": np.nan, "iph": rng.integers(0, 2, n),
                          "sah": rng.integers(0, 2, n), "kvp": 120.0})
    vectors = rng.normal(size=(n, 4)) + 3.0 * (make == "A")[:, None]
    table = pd.concat([table, pd.DataFrame(vectors, columns=[f"e{i}" for i in range(4)])], axis=1)
    grouping = compare.embedding_grouping(table, ["iph", "sah", "edh"], k=5)
    assert list(grouping) == ["scanner make", "haemorrhage (any subtype)"]  # thickness: no values
    assert grouping["scanner make"] == neighbour_agreement(vectors, make, k=5)
    bleed = table[["iph", "sah"]].max(axis=1)
    assert grouping["haemorrhage (any subtype)"] == neighbour_agreement(vectors, bleed, k=5)
    assert compare.embedding_grouping(table.drop(columns=["manufacturer", "iph", "sah"]), ["iph"], k=5) == {}


def test_09s_figures_are_named_by_encoders_that_are_not_its_defaults(tmp_path):
    """09's figures carry the encoders where they are not the notebook's defaults (a run with FM-CT alone, or with
    published weights, used to overwrite the default run's figures), and the defaults are the notebook's own."""
    import ast
    from pathlib import Path
    def defaults(notebook):  # the first assignment of each: the parameters cell's
        source = (Path(__file__).resolve().parents[1] / "notebooks" / "src" / f"{notebook}.py").read_text()
        found = {}
        for node in ast.parse(source).body:
            name = getattr(node.targets[0], "id", None) if isinstance(node, ast.Assign) else None
            if name in ("encoders", "protocols") and name not in found:
                found[name] = ast.literal_eval(node.value)
        return found
    assert defaults("09_other_encoders") == {"encoders": compare.DEFAULT_ENCODERS,
                                             "protocols": compare.DEFAULT_PROTOCOLS}
    assert defaults("10_modelling_choices") == {"encoders": compare.CHOICE_ENCODERS}
    assert compare.encoders_tag({"dinov3": None, "vjepa2": None}, compare.CHOICE_ENCODERS) == ""
    assert compare.encoders_tag(dict(compare.DEFAULT_ENCODERS)) == ""
    assert compare.encoders_tag({}) == "fmct-only"
    import hashlib
    weights = tmp_path / "CT-FM weights" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"some weights")
    digest = hashlib.sha256(b"some weights").hexdigest()[:8]  # two files of one name keep a figure each
    assert compare.encoders_tag({"ctfm": str(weights), "merlin": None}) == f"ctfm-model.safetensors-{digest}+merlin"
    assert compare.encoders_tag({"ctfm": str(tmp_path / "CT-FM weights")}) == "ctfm-CT-FM_weights"  # a folder

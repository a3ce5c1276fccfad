"""Every notebook on the data a user brings, not only on the synthetic cohort (issue 26, item 8).

RSNA's DICOM headers carry no Manufacturer tag, a hospital's NIfTI export carries no acquisition tags at all,
and neither has lesion masks. Each notebook asks ``interpret.parts`` what the dataset allows, runs that, and
states what it skipped and why. First the parts and the protocol helpers on small tables; then both notebooks
executed with papermill on the toy profile on the RSNA-layout and NIfTI-layout data that the ingestion tests
write (``tests/test_ingest_rsna.py``, ``tests/test_ingest_nifti.py``); last, every other notebook that takes a
dataset on the same data, each completing and stating what it skipped (01_pretrain on RSNA's three pretraining
scans stops, naming the cause).
"""
from __future__ import annotations

import re
import os
import shutil
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest

import test_ingest_nifti
import test_ingest_rsna
from test_notebooks import REPO, _execute

from fmct_lib.downstream.embeddings import performance_by_protocol, protocol_labels, separability
from fmct_lib.interpret.parts import attention_parts, embedding_parts, fewshot_parts, finetunable_tasks

BINS = [0.0, 1.5, 3.0, 5.01]  # 06_embeddings' default thickness_bins


def scan_table(n_per_split=(6, 2, 4), manufacturer=None, thickness=3.0, mask_path=None, labels=None):
    """A scan table with train / val / test rows; ``labels`` {task: one value per row}, default alternating 1/0."""
    splits = [s for s, n in zip(("train", "val", "test"), n_per_split) for _ in range(n)]
    n = len(splits)
    table = pd.DataFrame({"scan_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
                          "path": [f"v{i}.nii.gz" for i in range(n)], "split": splits,
                          "manufacturer": manufacturer if manufacturer is not None else [np.nan] * n,
                          "slice_thickness_mm": thickness})
    for task, values in (labels or {"ich": [i % 2 for i in range(n)]}).items():
        table[task] = values
    if mask_path is not None:
        table["mask_path"] = mask_path
    return table


# -- what a dataset allows ----------------------------------------------------------------------------------
def test_a_table_without_manufacturer_or_test_split_skips_those_parts_with_the_reason():
    table = scan_table(n_per_split=(5, 0, 0), thickness=[5.0, 4.84, 5.0, 5.0, 5.0])
    parts = embedding_parts("rsna", table, BINS)  # tasks: the paper's RSNA tasks; only ich is a column
    assert parts.runs("projection")
    assert parts.skipped["scanner"].startswith("no scan has a manufacturer")
    assert parts.skipped["thickness"] == ("fewer than two slice-thickness bins with at least 2 scans each "
                                          "((3.0, 5.01]: 5): nothing to separate")
    assert parts.skipped["by protocol"].startswith("no task has positive and negative scans in both the training "
                                                   "and the test split (ich: train 2 positive / 3 negative, test 0 "
                                                   "positive / 0 negative; iph: no such column")
    assert parts.tasks == ()
    text = str(parts)
    assert "runs    projection:" in text and "SKIPPED scanner:" in text and "why: no scan has a manufacturer" in text
    with pytest.raises(KeyError, match="no part 'scanners'"):
        parts.runs("scanners")


def test_a_table_with_two_scanners_and_thicknesses_runs_every_part():
    n = 12
    table = scan_table(manufacturer=["GE", "Siemens"] * (n // 2), thickness=[1.0, 1.0, 5.0, 5.0] * (n // 4))
    parts = embedding_parts("synthetic", table, BINS, tasks=["ich"])
    assert parts.skipped == {} and parts.tasks == ("ich",)
    # one scanner among the known ones, the others unknown: nothing to separate, and the count says so
    one = scan_table(manufacturer=["GE"] * 3 + [np.nan] * (n - 3))
    assert embedding_parts("synthetic", one, BINS, tasks=["ich"]).skipped["scanner"] == (
        "fewer than two manufacturers with at least 2 scans each (GE: 3; 9 scans unknown): nothing to separate")
    # two scanners among the test scans, but the one Siemens test scan is positive: no AUROC for it, so no
    # comparison by protocol (one thickness bin either); the separability of the scanners still runs
    by_split = scan_table(manufacturer=["GE", "Siemens"] * 4 + ["GE", "GE", "GE", "Siemens"], thickness=3.0)
    parts = embedding_parts("synthetic", by_split, BINS, tasks=["ich"])
    assert by_split.loc[by_split.split == "test", "ich"].tolist() == [0, 1, 0, 1]
    assert parts.runs("scanner") and parts.skipped["by protocol"] == (
        "fewer than two scanners, and fewer than two slice-thickness bins, whose test scans hold positive and "
        "negative scans of one of ['ich']: nothing to compare")
    by_split.loc[by_split.index[-2], "manufacturer"] = "Siemens"  # now Siemens has a negative test scan too
    assert embedding_parts("synthetic", by_split, BINS, tasks=["ich"]).runs("by protocol")


def test_the_per_protocol_part_is_judged_on_what_it_scores():
    """The audit's toy run: both sites together had two scanners with positive and negative test scans, so the part
    ran; the classifiers, trained and tested on the internal site only, scored one group ("ranges 0.250–0.250").
    ``scored`` (the study's site) and ``max_tasks`` (the profile's limit) make the check see what is scored."""
    n = 12
    table = scan_table(manufacturer=["GE", "Siemens"] * (n // 2),
                       labels={"ich": [i % 2 for i in range(8)] + [0, 1, 1, 0],
                               "sah": [i % 2 for i in range(8)] + [1, 1, 1, 0]})
    table["site"] = ["internal"] * 8 + ["internal", "internal", "external", "external"]  # test: s8–s11
    internal = table[table.site == "internal"]  # its test scans s8 (GE, ich 0), s9 (Siemens, ich 1): one class each
    assert embedding_parts("synthetic", table, BINS, tasks=["ich"]).runs("by protocol")
    parts = embedding_parts("synthetic", table, BINS, tasks=["ich"], scored=internal)
    assert parts.skipped["by protocol"].endswith("nothing to compare") and parts.runs("scanner")
    # the profile's limit keeps the tasks with the most test positives (sah 3, ich 2), as pipeline.choose_tasks does
    assert embedding_parts("synthetic", table, BINS, max_tasks=1).tasks == ("sah",)
    assert embedding_parts("synthetic", table, BINS, max_tasks=2).tasks == ("sah", "ich")  # the paper's order
    assert embedding_parts("synthetic", table, BINS, tasks=["ich", "sah"], max_tasks=1).tasks == ("ich", "sah")


def test_thickness_bins_are_checked_and_a_skip_says_where_the_thicknesses_lie():
    table = scan_table(thickness=[0.5, 1.0, 2.0, 5.0] * 3)
    for bins in ([3.0, 1.5, 0.0], [1.0], "thin", [0, 1, 1, 2]):
        with pytest.raises(ValueError, match=r"^thickness_bins "):
            embedding_parts("synthetic", table, bins, tasks=["ich"])
    parts = embedding_parts("synthetic", table, [10, 20], tasks=["ich"])
    assert parts.skipped["thickness"] == ("no slice thickness falls in the bins [10.0, 20.0] (the scans' range from "
                                          "0.5 to 5 mm; a bin holds (low, high])")


def test_attention_parts_need_trainable_tasks_for_fine_tuning_and_masks_for_the_lesion():
    table = scan_table()
    parts = attention_parts("synthetic", table, tasks=["ich"])
    assert parts.runs("attention") and parts.runs("fine-tuned") and parts.tasks == ("ich",)
    assert parts.skipped == {"lesion": "the scan table has no lesion masks (a mask_path column; the synthetic "
                                       "cohort has them)"}
    masked = scan_table(mask_path="masks/m.nii.gz")
    assert attention_parts("synthetic", masked, tasks=["ich"]).skipped == {}
    # tasks=[]: the pretrained encoder's maps alone (it meant every default task before: hours of fine-tuning)
    alone = attention_parts("synthetic", masked, tasks=[])
    assert alone.runs("attention") and alone.tasks == () and alone.skipped == {
        "fine-tuned": "no task asked for (tasks=[]): the pretrained encoder's maps alone",
        "lesion": "no fine-tuned encoder to compare with the pretrained one (see above)"}
    # a task without a lesion mask (ADRD): fine-tuned maps yes, lesion share no
    adrd = scan_table(mask_path="masks/m.nii.gz", labels={"adrd": [i % 2 for i in range(12)]})
    assert attention_parts("synthetic", adrd, tasks=["adrd"]).skipped["lesion"].startswith(
        "none of the tasks ['adrd'] is a lesion with a mask")
    # no positive in training: no fine-tuning, and no lesion comparison either
    no_positive = scan_table(mask_path="masks/m.nii.gz", labels={"ich": [0] * 6 + [0, 1] + [0, 1, 0, 1]})
    parts = attention_parts("synthetic", no_positive, tasks=["ich"])
    assert parts.tasks == () and parts.runs("attention")
    assert parts.skipped["fine-tuned"].endswith("(ich: train 0 positive / 6 negative, test 2 positive / 2 negative)")
    assert parts.skipped["lesion"].startswith("no fine-tuned encoder")


def test_scaling_parts_with_a_checkpoint_name_its_file_not_the_machines_path():
    # the figure's JSON records the skipped parts: an absolute path there was the machine's, not the figure's
    from fmct_lib.interpret.parts import scaling_parts
    parts, fractions = scaling_parts("synthetic", scan_table(), [0.1, 1.0], 4,
                                     checkpoint="/home/someone/runs/pretrain/x/encoder.safetensors")
    assert parts.skipped["pretraining"] == ("an encoder checkpoint was given (encoder.safetensors): no pretraining, "
                                            "so no fractions to compare; the probes run on the checkpoint")


def test_finetunable_tasks_counts_both_splits():
    table = scan_table(labels={"a": [1, 0] * 6, "b": [1] * 6 + [0] * 6, "c": [np.nan] * 12})
    kept, reasons = finetunable_tasks(table, ["a", "b", "c", "d"])
    assert kept == ("a",)
    assert reasons == {"b": "train 6 positive / 0 negative, test 0 positive / 4 negative",
                       "c": "train 0 positive / 0 negative, test 0 positive / 0 negative",
                       "d": "no such column in the scan table"}



def test_the_parts_of_02_to_05_and_08_on_small_tables():
    from fmct_lib.interpret.parts import retrieval_parts, scaling_parts, task_parts, transfer_parts
    table = scan_table()  # ich: 3 positive / 3 negative training scans, 2 / 2 test scans; one site, no subtypes
    assert task_parts("02_finetune", "synthetic", table, ["ich"]).skipped == {}
    # a task named that is not a column is refused (tests/test_task_checks.py); one that is, without a positive,
    # skips the part naming its counts (this asked for a missing column before the refusal existed)
    few = task_parts("04_fewshot", "synthetic", table.assign(edh=0), ["edh"])
    assert few.skipped == {"few-shot": "no task has positive and negative scans in both the training and the test "
                                       "split (edh: train 0 positive / 6 negative, test 0 positive / 4 negative)"}
    assert few.tasks == ()
    with pytest.raises(ValueError, match="task 'edh' is not a label column"):
        task_parts("04_fewshot", "synthetic", table, ["edh"])
    # one site and no target dataset: the in-domain models only; another dataset as the target: both
    alone = transfer_parts("hosp", table, source_rows=table, has_sites=False, target_dataset="hosp", tasks=["ich"])
    assert list(alone.skipped) == ["external validation"] and alone.runs("in-domain")
    assert alone.tasks_of("in-domain") == ("ich",) and alone.tasks_of("external validation") == ()
    both = transfer_parts("hosp", table, source_rows=table, has_sites=False, target_dataset="cq500", tasks=["ich"])
    assert both.skipped == {} and both.tasks_of("external validation") == both.tasks_of("in-domain") == ("ich",)
    # a target labelled for testing only (a small external set): external validation alone, on the tasks the
    # source trains (its training split) and the target tests (its test split)
    test_only = scan_table((0, 0, 4), labels={"ich": [1, 0, 1, 0], "sdh": [1, 0, 0, 0]})
    source = table.assign(sdh=0)  # no sdh positive to train on
    parts = transfer_parts("hosp", test_only, source_rows=source, has_sites=False, target_dataset="ext",
                           tasks=["ich", "sdh"])
    assert parts.tasks_of("external validation") == ("ich",) and parts.tasks_of("in-domain") == ()
    assert parts.skipped == {"in-domain": "no task has positive and negative scans in both the training and the "
                                          "test split (ich: train 0 positive / 0 negative, test 2 positive / 2 "
                                          "negative; sdh: train 0 positive / 0 negative, test 1 positive / 3 "
                                          "negative)"}
    nothing = transfer_parts("hosp", test_only, source_rows=table.assign(ich=0), has_sites=False,
                             target_dataset="ext", tasks=["ich"])
    assert nothing.skipped["external validation"] == (
        "no task has positive and negative scans in the source's training split and the target's test split "
        "(ich: source train 0 positive / 6 negative)")
    # the pool is the 6 training scans of 6 patients: a batch of 4 fits all of them, one of 8 none
    parts, fitting = scaling_parts("synthetic", table, [1.0], 4, tasks=["ich"])
    assert parts.skipped == {} and fitting == [1.0]
    parts, fitting = scaling_parts("synthetic", table, [1.0], 8, tasks=["ich"])
    assert fitting == [] and parts.skipped == {
        "pretraining": "fewer pretraining scans than one batch of 8 at every fraction (100%: 6)",
        "probes": "no pretrained encoder to probe (see pretraining)"}
    parts, _ = scaling_parts("synthetic", table, [1.0], 8, checkpoint="enc.safetensors", tasks=["ich"])
    assert list(parts.skipped) == ["pretraining"] and parts.runs("probes")
    # retrieval: a subtype needs two positive scans in the gallery
    table["sdh"] = [1] + [0] * 11
    table["ivh"] = [1, 1] + [0] * 10
    kept = retrieval_parts("x", table, ["sdh", "ivh"])
    assert kept.tasks == ("ivh",)  # a subtype asked for and left out is named, not dropped in silence
    assert kept.notes == ("left out, fewer than 2 positive scans to retrieve: sdh (1 positive scan)",)
    assert retrieval_parts("x", table.assign(edh=0), ["sdh", "edh"]).skipped["retrieval"].startswith(
        "no subtype label with at least 2 positive scans (sdh: 1, edh: 0)")
    assert retrieval_parts("x", table, "ivh").tasks == ("ivh",)  # one name, not its letters
    with pytest.raises(ValueError, match="'edh' is not a label column"):  # as tasks are: refused, not skipped
        retrieval_parts("x", table, ["sdh", "edh"])
    with pytest.raises(ValueError, match=r"subtypes \[\]: name at least one"):
        retrieval_parts("x", table, [])
    assert retrieval_parts("rsna", table.assign(iph=[1, 1] + [0] * 10)).notes  # the defaults: RSNA's others left out

@pytest.mark.parametrize("shots, error", [([0, 2], "0 is not a whole number of at least 1"),
                                          ([-1], "-1 is not a whole number"), ([2.5], "2.5 is not a whole number"),
                                          ([2, 2], "name each K once"), ([], "name each K once, at least one"),
                                          ("2,4", "a list of K, not text")])
def test_shots_that_are_no_k_shot_draw_are_refused(shots, error):
    """K = 0 and −1 passed as K-shot draws and 2.5 ran as K = 2 (an audit of 04's parameters)."""
    with pytest.raises(ValueError, match=re.escape(error)) as refused:
        fewshot_parts("synthetic", scan_table(), shots, ["ich"])
    assert str(refused.value).startswith(f"shots {shots!r}: ")
    assert fewshot_parts("synthetic", scan_table(), [3, 1.0], ["ich"])[1] == {"ich": (1, 3)}  # sorted, whole
    assert fewshot_parts("synthetic", scan_table(), 2, ["ich"])[1] == {"ich": (2,)}  # one K


def test_the_parts_of_09_and_10_on_small_tables():
    from fmct_lib.interpret.parts import other_encoder_parts, task_parts
    table = scan_table()  # ich: 3 positive / 3 negative training scans, 2 / 2 test scans
    table["sdh"] = [1, 1] + [0] * 10
    parts, subtypes = other_encoder_parts("synthetic", table, table.assign(edh=0), ["sdh", "edh"], tasks=["ich"])
    assert parts.skipped == {} and parts.tasks == ("ich",) and subtypes == ("sdh",)
    assert parts.notes == ("left out, fewer than 2 positive scans to retrieve: edh (0 positive scans)",)
    # tumor: a column without labels (a missing column is refused now: tests/test_task_checks.py)
    parts, subtypes = other_encoder_parts("hosp", table.assign(tumor=np.nan), table.drop(columns="sdh"), None,
                                          tasks=["tumor"])  # the default subtypes: none is a column of this gallery
    assert subtypes == () and parts.skipped == {
        "comparison": "no task has positive and negative scans in both the training and the test split (tumor: "
                      "train 0 positive / 0 negative, test 0 positive / 0 negative)",
        "retrieval": "no subtype label with at least 2 positive scans (iph: no such column, ivh: no such column, "
                     "sdh: no such column, edh: no such column, sah: no such column); retrieval needs the "
                     "haemorrhage subtypes (RSNA, CQ500, the synthetic cohort)"}
    assert task_parts("10_modelling_choices", "synthetic", table, ["ich"]).runs("comparison")
    assert not task_parts("10_modelling_choices", "synthetic", table.assign(edh=0), ["edh"]).runs("comparison")
    with pytest.raises(ValueError, match="not a label column"):  # a missing column: refused, not skipped
        task_parts("10_modelling_choices", "synthetic", table, ["edh"])


# -- the protocol helpers of 06 ------------------------------------------------------------------------------
def test_protocol_labels_mark_unknown_values():
    table = pd.DataFrame({"manufacturer": ["GE", None, "  ", "Siemens"], "slice_thickness_mm": [1.0, 2.0, np.nan, 9.0]})
    labels = protocol_labels(table, BINS)
    assert labels["scanner"].tolist()[0::3] == ["GE", "Siemens"] and labels["scanner"][1:3].isna().all()
    assert labels["slice thickness (mm)"][:2].tolist() == ["(0.0, 1.5]", "(1.5, 3.0]"]
    assert pd.isna(labels["slice thickness (mm)"][2])  # unknown
    # above the last edge: a bin of its own (an audit's 5.08-5.50 mm scans were called "unknown" and left out)
    assert labels["slice thickness (mm)"][3] == "(5.01, inf]"
    assert protocol_labels(table[[]], BINS)["scanner"].isna().all()  # a table without the columns


def test_separability_drops_unknown_rows_and_singleton_groups():
    rng = np.random.default_rng(0)
    groups = np.array(["A"] * 10 + ["B"] * 6 + ["C"] + [None] * 3, dtype=object)
    vectors = rng.normal(size=(len(groups), 4))
    vectors[groups == "B", 0] += 20.0  # B lies far away on the first axis: perfectly separable
    accuracy, chance, p = separability(vectors, pd.Series(groups), seed=0, n_permutations=19)
    assert len(accuracy) == 5 and np.all(accuracy == 1.0)  # k = min(5, 6 B rows); C (1 row) and None left out
    assert chance == pytest.approx(10 / 16)
    assert p == pytest.approx(1 / 20)  # no shuffling of 16 labels separates as well: the smallest p of 19
    with pytest.raises(ValueError, match="two groups"):
        separability(vectors, pd.Series(["A"] * 19 + ["B"]))


def test_separability_p_is_the_share_of_shuffled_labels_that_do_as_well():
    """The permutation p against a brute-force loop over the same shufflings (scikit-learn's generator). It replaced
    "5 points above the largest group's share", which called 12 of 100 shufflings of 120 scans' labels separable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.utils import check_random_state

    rng = np.random.default_rng(3)
    vectors = rng.normal(size=(40, 3))
    labels = pd.Series(np.where(vectors[:, 0] + rng.normal(scale=4.0, size=40) > 0, "GE", "Siemens"))
    accuracy, _, p = separability(vectors, labels, seed=4, n_permutations=30)
    folds = StratifiedKFold(n_splits=5, shuffle=True, random_state=4)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    shuffler = check_random_state(4)  # permutation_test_score's shuffling: one generator, 30 draws in turn
    null = [cross_val_score(model, vectors, labels.to_numpy()[shuffler.permutation(40)], cv=folds).mean()
            for _ in range(30)]
    assert p == pytest.approx((1 + sum(n >= accuracy.mean() for n in null)) / 31)
    assert 1 / 31 < p < 1  # neither extreme: the test discriminates on this weak signal


def test_performance_by_protocol_is_the_bootstrap_within_each_group():
    from fmct_lib.evaluate import bootstrap_ci
    rng = np.random.default_rng(1)
    n = 40
    predictions = pd.DataFrame({"scan_id": [f"s{i}" for i in range(n)], "task": "ich",
                                "label": np.tile([0, 1], n // 2), "probability": rng.random(n),
                                "protocol": "finetune", "seed": 0})
    scanner = pd.Series(["GE"] * 20 + ["Siemens"] * 16 + [np.nan] * 4, index=predictions.scan_id)
    table = performance_by_protocol(predictions, {"scanner": scanner}, n_boot=20, seed=3)
    assert sorted(table.group.unique()) == ["scanner: GE", "scanner: Siemens"]
    ge = table[(table.group == "scanner: GE") & (table.task == "macro") & (table.metric == "auroc")].iloc[0]
    expected = bootstrap_ci(predictions.iloc[:20], n_boot=20, seed=3)
    expected = expected[(expected.task == "macro") & (expected.metric == "auroc")].iloc[0]
    assert (ge.value, ge.ci_low, ge.ci_high, ge.n_scans) == (expected.value, expected.ci_low, expected.ci_high, 20)
    assert performance_by_protocol(predictions, {"scanner": scanner[:0]}, n_boot=20).empty
    # a second task whose Siemens scans are all negative: Siemens has no SAH row, so no macro (a mean of ICH alone
    # would not compare with GE's mean of ICH and SAH); GE's macro is the mean of both
    sah = predictions.assign(task="sah", label=[1, 0] * 10 + [0] * 20)
    both = performance_by_protocol(pd.concat([predictions, sah]), {"scanner": scanner}, n_boot=20, seed=3)
    macro = both[(both.task == "macro") & (both.metric == "auroc")].set_index("group")
    assert macro.loc["scanner: Siemens", ["value", "ci_low", "ci_high"]].isna().all()
    assert macro.loc["scanner: Siemens", "reason"].startswith("no positive and negative scans of sah in this group")
    assert not both[(both.group == "scanner: Siemens") & (both.task == "sah")].shape[0]
    per_task = both[(both.group == "scanner: GE") & (both.metric == "auroc") & (both.task != "macro")]
    assert macro.loc["scanner: GE", "value"] == pytest.approx(per_task["value"].mean())


# -- the notebooks on RSNA-layout and NIfTI-layout data ------------------------------------------------------
@pytest.fixture(scope="module")
def user_data(tmp_path_factory):
    """The ingestion tests' RSNA folder (5 scans of 4 patients, no Manufacturer tag) and hospital NIfTI export
    (40 scans of 20 patients, tasks tumor and edema), ingested into roots of their own, which the kernels inherit,
    and a toy encoder checkpoint: the notebooks start from it as a user starts from released weights (pretraining
    is 01_pretrain's test; RSNA's toy training split, 4 scans, is one pretraining batch)."""
    import torch
    from fmct_lib.config import get_profile
    from fmct_lib.data.ingest import ingest_nifti, ingest_rsna
    from fmct_lib.models.checkpoints import save_checkpoint
    from fmct_lib.models.vit3d import vit_from_config

    base = tmp_path_factory.mktemp("user_roots")
    patch = pytest.MonkeyPatch()
    for var in ("FMCT_DATA", "FMCT_CACHE", "FMCT_RUNS", "FMCT_FIGURES"):
        patch.setenv(var, str(base / var.removeprefix("FMCT_").lower()))
    shutil.copy(REPO / "data_manifest.csv", base / "data_manifest.csv")
    patch.setenv("FMCT_MANIFEST", str(base / "data_manifest.csv"))
    patch.setenv("MPLBACKEND", "Agg")
    patch.delenv("FMCT_PSEUDONYM_KEY", raising=False)
    try:
        rsna_source, _ = test_ingest_rsna.rsna_source.__wrapped__(tmp_path_factory)
        ingest_rsna(rsna_source, workers=1)
        hospital, labels, _ = test_ingest_nifti.hospital.__wrapped__(tmp_path_factory.mktemp("hospital"))
        ingest_nifti(hospital, name="hosp", labels=labels, mapping={"dx_tumor": "tumor", "dx_edema": "edema"},
                     path_column="file", patient_column="mrn", workers=1)
        torch.manual_seed(0)
        toy = get_profile("toy").model
        checkpoint = save_checkpoint(base / "toy_encoder" / "encoder.safetensors", vit_from_config(toy),
                                     config={"model": toy.to_dict()})
        yield checkpoint
    finally:
        patch.undo()


def outputs(notebook) -> list[str]:
    """The text every code cell printed or displayed, one string per cell."""
    return ["".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.outputs)
            for cell in notebook.cells if cell.cell_type == "code"]


@pytest.mark.notebook
@pytest.mark.parametrize("dataset, notebook", [("rsna", "06_embeddings"), ("rsna", "07_attention"),
                                               ("hosp", "06_embeddings"), ("hosp", "07_attention")])
def test_notebook_runs_on_a_users_dataset_and_states_what_it_skipped(user_data, tmp_path, dataset, notebook):
    from fmct_lib.data.manifest import load_scans

    scans = load_scans(dataset)
    parts = (embedding_parts(dataset, scans, BINS) if notebook == "06_embeddings"
             else attention_parts(dataset, scans))
    # what neither dataset has, whatever its split: a manufacturer, two thickness bins, lesion masks
    expected_skips = {"06_embeddings": ["scanner", "thickness"], "07_attention": ["lesion"]}[notebook]
    assert set(expected_skips) <= set(parts.skipped), parts

    out = tmp_path / f"{notebook}_{dataset}.ipynb"
    _execute(REPO / "notebooks" / f"{notebook}.ipynb", out, dataset=dataset, profile="toy",
             checkpoint=str(user_data))
    texts = outputs(nbformat.read(out, as_version=4))
    assert any(str(parts) in t for t in texts), f"the notebook did not print the parts:\n{parts}"
    conclusion = texts[-1]
    assert "Skipped on this dataset: " in conclusion
    for part, why in parts.skipped.items():
        assert f"{part} ({why})" in conclusion, (part, conclusion)
    if notebook == "06_embeddings":
        assert "Scanner: not measured on this dataset" in conclusion
    figures = Path(os.environ["FMCT_FIGURES"])
    figure = {"06_embeddings": "suppfig10_embeddings", "07_attention": "fig5_attention"}[notebook]
    name = f"{figure}__{dataset}_toy_{checkpoint_tag(user_data)}"  # a checkpoint's figures are named after it
    if notebook == "07_attention" or parts.runs("projection"):
        assert (figures / f"{name}.png").exists()
        assert "skipped" in (figures / f"{name}.json").read_text()
    if notebook == "07_attention":  # the viewer is shown
        assert any("VBox" in t for t in texts)


@pytest.mark.notebook
@pytest.mark.parametrize("notebook, dataset, figure", [("06_embeddings", "rsna", "suppfig10_embeddings"),
                                                       ("05_scaling", "hosp", "fig4_scaling_auroc")])
def test_a_notebook_runs_on_the_reference_preprocessing_with_a_checkpoint(user_data, tmp_path, monkeypatch, notebook,
                                                                          dataset, figure):
    """Issue 26, item 9: ``-p preset reference -p checkpoint FILE`` (the authors' weights' route) runs a notebook
    on the authors' chain: the cache of the reference spec is built, and the figure's configuration records the
    preset and that spec's hash (the paper chain's cache is not needed). 05 with a checkpoint pretrains nothing:
    its one encoder's probes, named after the file and the preset."""
    import json

    from fmct_lib.data.preprocess import paper_spec, reference_spec
    figures = tmp_path / "figures"
    monkeypatch.setenv("FMCT_FIGURES", str(figures))  # this run's figure alone, beside the paper-chain runs above
    out = tmp_path / f"{notebook}_reference.ipynb"
    _execute(REPO / "notebooks" / f"{notebook}.ipynb", out, dataset=dataset, profile="toy", preset="reference",
             checkpoint=str(user_data))
    name = f"{figure}__{dataset}_toy_{checkpoint_tag(user_data)}-reference"
    config = json.loads((figures / f"{name}.json").read_text())["config"]
    reference = reference_spec("toy")
    assert config["preset"] == "reference" and config["spec"] == reference.hash != paper_spec("toy").hash
    assert (Path(os.environ["FMCT_CACHE"]) / dataset / reference.hash).is_dir()
    if notebook == "05_scaling":  # the checkpoint's probes alone: one row per evaluation, no fraction compared
        data = pd.read_csv(figures / f"{name}.csv")
        assert set(data.method) == {"checkpoint"} and set(data.fraction) == {1.0}


def checkpoint_tag(path) -> str:
    """What a study started from the checkpoint ``path`` adds to its figures' names: file name and sha256."""
    import hashlib
    return f"{Path(path).name.split('.')[0]}-{hashlib.sha256(Path(path).read_bytes()).hexdigest()[:8]}"


# -- every other notebook that takes a dataset, on the same data -------------------------------------------
# the smallest settings on the toy profile; the encoder is the fixture's checkpoint where a notebook takes one
SMALL = {"00_data": {}, "01_pretrain": {}, "02_finetune": {"protocols": ["finetune", "linear"], "n_seeds": 1},
         "03_transfer": {"n_seeds": 1},
         "04_fewshot": {"shots": [2], "resamples": 1, "compare_scratch": False, "n_seeds": 1},
         "05_scaling": {"methods": ["dino"], "fractions": [0.5, 1.0]}, "08_retrieval": {"ks": [1]},
         "09_other_encoders": {"encoders": {"ctfm": None}, "protocols": ["linear"], "n_seeds": 1, "ks": [1]},
         "10_modelling_choices": {"vit_protocol": "linear", "n_seeds": 1},
         "12_patch_size": {"protocol": "linear", "n_seeds": 1}}  # pretrains both of its encoders on the dataset
TAKES_CHECKPOINT = {"02_finetune", "03_transfer", "04_fewshot", "08_retrieval", "09_other_encoders",
                    "10_modelling_choices"}
# on RSNA's 4 training scans (3 patients; one batch of 4) pretraining on part of them is refused, naming the cause
RSNA_SMALL = {"01_pretrain": {"fraction": 0.5}, "05_scaling": {"fractions": [0.5, 0.75]}}
# (dataset, notebook) -> the parts it skips, and the start of each reason; RSNA's toy folder has 5 scans of
# 4 patients (3 in the pretraining pool, no test split with both classes), the hospital export 40 scans, no subtypes
EXPECTED_SKIPS = {
    ("rsna", "02_finetune"): {"comparison": "no task has positive and negative scans in both"},
    ("rsna", "03_transfer"): {"external validation": "'rsna' has no sites (a site column) to transfer between",
                              "in-domain": "no task has positive and negative scans in both"},
    ("rsna", "04_fewshot"): {"few-shot": "no task has positive and negative scans in both"},
    ("rsna", "05_scaling"): {"pretraining": "fewer pretraining scans than one batch of 4 at every fraction (50%: ",
                             "probes": "no task has positive and negative scans in both"},
    ("hosp", "03_transfer"): {"external validation": "'hosp' has no sites (a site column) to transfer between"},
    ("hosp", "08_retrieval"): {"retrieval": "no subtype label with at least 2 positive scans (iph: no such column"},
    ("rsna", "09_other_encoders"): {"comparison": "no task has positive and negative scans in both"},
    ("hosp", "09_other_encoders"): {"retrieval": "no subtype label with at least 2 positive scans (iph: no such "
                                                 "column"},
    ("rsna", "10_modelling_choices"): {"comparison": "no task has positive and negative scans in both"},
    ("rsna", "12_patch_size"): {"comparison": "no task has positive and negative scans in both"},
}

NOTHING_MEASURED = {("rsna", "02_finetune"), ("rsna", "03_transfer"), ("rsna", "04_fewshot"), ("rsna", "05_scaling"),
                    ("hosp", "08_retrieval"), ("rsna", "10_modelling_choices"),
                    ("rsna", "12_patch_size")}  # every part skipped


@pytest.mark.notebook
@pytest.mark.parametrize("notebook", sorted(SMALL))
@pytest.mark.parametrize("dataset", ["rsna", "hosp"])
def test_every_notebook_completes_on_a_users_dataset_and_states_what_it_skipped(user_data, tmp_path, dataset,
                                                                                notebook):
    params = dict(SMALL[notebook], **(RSNA_SMALL.get(notebook, {}) if dataset == "rsna" else {}), dataset=dataset,
                  profile="toy")
    if notebook in TAKES_CHECKPOINT:
        params["checkpoint"] = str(user_data)
    out = tmp_path / f"{notebook}_{dataset}.ipynb"
    if (dataset, notebook) == ("rsna", "01_pretrain"):  # nothing else to do: it fails, naming the cause
        with pytest.raises(pytest.fail.Exception, match=r"[23] pretraining scans are fewer than one global batch of 4"):
            _execute(REPO / "notebooks" / f"{notebook}.ipynb", out, **params)
        return
    _execute(REPO / "notebooks" / f"{notebook}.ipynb", out, **params)
    texts = outputs(nbformat.read(out, as_version=4))
    expected = EXPECTED_SKIPS.get((dataset, notebook), {})
    printed = [t for t in texts if "what this dataset allows" in t]
    if notebook in {"00_data", "01_pretrain"}:  # no parts: they need scans only
        assert not printed
        return
    assert len(printed) == 1, texts
    for part, why in expected.items():
        assert f"SKIPPED {part}:" in printed[0] and f"why: {why}" in printed[0], (part, printed[0])
    assert printed[0].count("SKIPPED") == len(expected), printed[0]
    conclusion = texts[-1]
    if expected:
        assert "Skipped on this dataset: " in conclusion
        for part, why in expected.items():
            assert f"{part} ({why}" in conclusion, (part, conclusion)
    else:
        assert "Skipped on this dataset" not in conclusion
    nothing = (dataset, notebook) in NOTHING_MEASURED
    assert ("Nothing measured on this dataset." in conclusion) == nothing, conclusion


@pytest.mark.notebook
def test_a_transfer_to_a_dataset_labelled_for_testing_only_is_external_validation_alone(user_data, tmp_path,
                                                                                         tmp_path_factory):
    """03 with ``target_dataset``: trained on the hospital export, tested on a second export of the same hospital
    (``hosp2``) whose labels CSV puts every patient in the test split (``--split-col``), as a small external set
    is: external validation runs (it used to be skipped with the in-domain models, which need the target's
    training split), nothing is compared, and the conclusion says so; the figure carries the target in its name,
    so a run with another target (or none) keeps its own."""
    from fmct_lib.data.ingest import ingest_nifti
    hospital, _, rows = test_ingest_nifti.hospital.__wrapped__(tmp_path_factory.mktemp("hospital2"))
    labels = tmp_path / "labels_test_only.csv"
    rows.assign(split="test").to_csv(labels, index=False)
    ingest_nifti(hospital, name="hosp2", labels=labels, mapping={"dx_tumor": "tumor", "dx_edema": "edema"},
                 path_column="file", patient_column="mrn", split_column="split", workers=1)
    out = tmp_path / "03_to_hosp2.ipynb"
    _execute(REPO / "notebooks" / "03_transfer.ipynb", out, dataset="hosp", target_dataset="hosp2", profile="toy",
             n_seeds=1, checkpoint=str(user_data))
    text = "\n".join(outputs(nbformat.read(out, as_version=4)))
    assert "runs    external validation" in text and "SKIPPED in-domain" in text
    assert "External validation (the model fine-tuned on the source, tested on the target): macro-AUROC" in text
    name = f"fig1fg_transfer_to_hosp2__hosp_toy_{checkpoint_tag(user_data)}"
    figures = Path(os.environ["FMCT_FIGURES"])
    assert (figures / f"{name}.png").exists() and not (figures / f"{name}_comparison.csv").exists()
    assert set(pd.read_csv(figures / f"{name}.csv")["model"]) == {"external validation"}
    assert '"target_dataset": "hosp2"' in (figures / f"{name}.json").read_text()

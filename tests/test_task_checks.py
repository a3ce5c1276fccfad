"""What a user asks for by task name and by shots, checked before anything runs (a user audit on the toy profile
with a NIfTI dataset of tasks ich and sah, sah with 5 training positives).

1. 04_fewshot with ``shots: [32]`` crashed deep in matplotlib: the parts said "runs few-shot", every K-shot run was
   skipped for lack of positives and the figure had no curve. A K now runs for a task only where its training split
   holds K positive and K negative scans (``downstream.training.fewshot_draw`` draws K of each); the parts name the
   (task, K) pairs left out, and skip the part, saying why, when none is left.
2. A task name that is not a label column (``tasks: [bleed]``) read as a data problem ("no such column", "0
   positive / 0 negative") or, in ``fmct finetune``, started workers and exited 1. It is now refused up front: a
   ``ValueError`` naming the dataset's tasks and the one meant (the notebooks: the parts and ``Study.tasks``), one
   line and exit status 2 on the command line.
3. ``fmct finetune --task ich,bleed`` printed ich's AUROC as the macro and exited 0: refused as in 2.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmct_lib.interpret.parts import check_tasks, fewshot_parts, label_columns, task_parts
from test_notebooks_datasets import outputs, user_data  # noqa: F401  (user_data: the notebook test's fixture)


def myhosp(n_train=20, n_val=4, n_test=8) -> pd.DataFrame:
    """The audit's dataset in miniature: ich 10 positive / 10 negative training scans, sah 5 / 15; both with
    positives and negatives in the test split; bookkeeping columns of a real table beside them."""
    splits = ["train"] * n_train + ["val"] * n_val + ["test"] * n_test
    n = len(splits)
    return pd.DataFrame({
        "scan_id": [f"s{i}" for i in range(n)], "patient_id": [f"p{i}" for i in range(n)],
        "path": [f"v{i}.nii.gz" for i in range(n)], "split": splits, "manufacturer": np.nan,
        "slice_thickness_mm": 3.0, "spacing": "1x1x3", "site": "internal", "kvp": 120, "mask_path": np.nan,
        "ich": [i % 2 for i in range(n)],
        "sah": [1] * 5 + [0] * (n_train - 5) + [0] * n_val + [i % 2 for i in range(n_test)]})


# -- 2, 3: unknown task names ---------------------------------------------------------------------------------
def test_the_label_columns_are_the_binary_columns_other_than_the_bookkeeping():
    table = myhosp().assign(empty=np.nan, age=[40.5] * 32, bleed_left=0)
    assert label_columns(table) == ["ich", "sah", "empty", "bleed_left"]  # not kvp, site, mask_path, age
    # what ingestion adds beside them holds only 0/1 or nothing on a plain export (a NIfTI folder's empty flags; a
    # DICOM export's gap, duplicate, localizer, tilt and contrast columns): bookkeeping, never a task (an audit:
    # `--task flags` was offered and accepted)
    ingested = table.assign(flags=np.nan, has_gap=0, n_duplicates_dropped=0, n_localizers_dropped=0, tilt_deg=0.0,
                            contrast=0, n_slices=1, plane=np.nan, kvp=np.nan)
    assert label_columns(ingested) == ["ich", "sah", "empty", "bleed_left"]


def test_a_task_that_is_not_a_label_column_is_refused_naming_the_tasks_and_the_one_meant():
    table = myhosp()
    assert check_tasks(table, ["ich", "sah"], "myhosp") == ["ich", "sah"]
    assert check_tasks(table, "ich", "myhosp") == ["ich"]  # one name, not its letters
    with pytest.raises(ValueError) as err:
        check_tasks(table, ["bleed"], "myhosp")
    assert str(err.value) == "task 'bleed' is not a label column of the scan table of dataset 'myhosp' (its tasks: ich, sah)"
    with pytest.raises(ValueError, match=r"^task 'bleed' is not .* \(its tasks: ich, sah\)$"):
        check_tasks(table, ["ich", "bleed"], "myhosp")  # the audit's item 3: not ich alone
    with pytest.raises(ValueError, match=r"task 'ichh' is not .*; did you mean 'ich'\?$"):
        check_tasks(table, ["ichh"], "myhosp")
    with pytest.raises(ValueError, match=r"tasks 'SAH', 'split' are not label columns .*; did you mean 'sah' for "
                                         r"'SAH'\?$"):
        check_tasks(table, ["ich", "SAH", "split"], "myhosp")  # a bookkeeping column is no task either


def test_the_parts_refuse_an_unknown_task_but_report_a_task_without_positives():
    table = myhosp()
    with pytest.raises(ValueError, match="task 'bleed' is not a label column .* 'myhosp'"):
        task_parts("04_fewshot", "myhosp", table, ["bleed"])
    with pytest.raises(ValueError, match="task 'bleed' is not a label column"):
        task_parts("02_finetune", "myhosp", table, ["ich", "bleed"])
    with pytest.raises(ValueError, match="task 'bleed' is not a label column"):
        fewshot_parts("myhosp", table, [2], ["bleed"])
    # a task that exists but has no positive is a data problem: skipped, with its counts, as before
    parts = task_parts("02_finetune", "myhosp", table.assign(sah=0), ["sah"])
    assert parts.skipped == {"comparison": "no task has positive and negative scans in both the training and the "
                                           "test split (sah: train 0 positive / 20 negative, test 0 positive / 8 "
                                           "negative)"}


def test_the_study_refuses_an_unknown_task_before_choosing_any(tmp_path, capsys):
    from fmct_lib.config import get_profile
    from fmct_lib.pipeline import Study
    study = Study("myhosp", get_profile("toy"), myhosp(), tmp_path, 0, "dino", None)
    assert study.tasks(["ich", "sah"]) == ["ich", "sah"]
    with pytest.raises(ValueError, match=r"task 'bleed' is not a label column of the scan table of dataset "
                                         r"'myhosp' \(its tasks: ich, sah\)"):
        study.tasks(["ich", "bleed"])
    assert "left out, no AUROC" not in capsys.readouterr().out  # refused, not reported as a data problem
    # a task without test positives is still a data problem, reported as such
    with pytest.raises(ValueError, match="none of"):
        Study("myhosp", get_profile("toy"), myhosp().assign(sah=0), tmp_path, 0, "dino", None).tasks(["sah"])
    assert "left out, no AUROC on the test split: sah (0 positive / 8 negative)" in capsys.readouterr().out


@pytest.mark.parametrize("task", ["bleed", "ich,bleed"])
def test_fmct_finetune_refuses_an_unknown_task_in_one_line_with_status_2_before_any_run(isolated_roots, tmp_path,
                                                                                         capsys, task):
    from fmct_lib.cli import main
    from fmct_lib.data.manifest import write_scans
    write_scans(myhosp(), "myhosp")  # no volumes: the refusal comes before the cache would be built
    run_root = tmp_path / "downstream"
    code = main(["finetune", "--dataset", "myhosp", "--profile", "toy", "--task", task, "--protocol", "histogram",
                 "--run-root", str(run_root)])
    captured = capsys.readouterr()
    assert code == 2, captured
    assert captured.err == ("fmct finetune: error: task 'bleed' is not a label column of the scan table of dataset "
                            "'myhosp' (its tasks: ich, sah)\n")
    assert captured.out == "" and not run_root.exists()
    # the evaluation dataset is checked too
    write_scans(myhosp().drop(columns="sah"), "other")
    assert main(["finetune", "--dataset", "myhosp", "--eval-dataset", "other", "--profile", "toy", "--task", "sah",
                 "--protocol", "histogram", "--run-root", str(run_root)]) == 2
    assert "task 'sah' is not a label column of the scan table of dataset 'other' (its tasks: ich)" in \
        capsys.readouterr().err


# -- 1: shots against the training positives ----------------------------------------------------------------
def test_a_k_runs_for_a_task_only_where_it_has_k_positive_and_k_negative_training_scans():
    table = myhosp()  # ich 10 / 10, sah 5 / 15 training scans
    parts, shots_of = fewshot_parts("myhosp", table, [8, 2, 16], ["ich", "sah"])
    assert parts.runs("few-shot") and parts.tasks == ("ich", "sah")
    assert shots_of == {"ich": (2, 8), "sah": (2,)}
    assert parts.notes == ("ich left out at K = 16: 10 positive / 10 negative training scans, and K shots need K of "
                           "each", "sah left out at K = 8, 16: 5 positive / 15 negative training scans, and K shots "
                                   "need K of each")
    assert "  note: sah left out at K = 8, 16" in str(parts)
    # K negatives are needed too: ich with 10 positives but 4 negatives runs at K = 2 only
    fewer = table.copy()
    fewer.loc[fewer.index[:20:2][:6], "ich"] = 1  # 6 of the 10 training negatives become positives
    assert fewshot_parts("myhosp", fewer, [2, 8], ["ich"])[1] == {"ich": (2,)}
    # a task with no K left is left out; the scans the cache rejected are not counted as shots
    parts, shots_of = fewshot_parts("myhosp", table, [8], ["ich", "sah"])
    assert shots_of == {"ich": (8,)} and parts.tasks == ("ich",)
    # and the note says so: it said "left out at K = 8" while sah left the all-data comparison as well (an audit)
    assert parts.notes == ("sah left out at every K, so also from the all-data runs: 5 positive / 15 negative "
                           "training scans, and K shots need K of each",)
    rejected = table.loc[(table.split == "train") & (table.ich == 1), "scan_id"][:3]
    assert fewshot_parts("myhosp", table, [8], ["ich"], rejected=rejected)[1] == {}


def test_with_no_task_at_any_k_the_few_shot_part_is_skipped_saying_why():
    parts, shots_of = fewshot_parts("myhosp", myhosp(), [32], ["ich", "sah"])
    assert shots_of == {} and parts.tasks == ()
    assert parts.skipped == {"few-shot": "no task has K positive and K negative training scans for any K of shots "
                                         "[32] (ich: 10 positive / 10 negative; sah: 5 positive / 15 negative); pass "
                                         "smaller shots (-y \"shots: [...]\")"}
    # without a task that has positives and negatives in both splits, the reason is task_parts'
    parts, _ = fewshot_parts("myhosp", myhosp().assign(ich=0, sah=0), [2], ["ich", "sah"])
    assert parts.skipped["few-shot"].startswith("no task has positive and negative scans in both the training and "
                                                "the test split (ich: train 0 positive / 20 negative")


@pytest.mark.notebook
def test_04_skips_the_few_shot_part_when_no_task_has_k_shots(user_data, tmp_path):  # noqa: F811
    """The audit's crash: ``-y "shots: [32]"`` on a dataset without 32 training positives of any task. The
    hospital export of the notebook tests (tumor and edema, 40 scans) has fewer than 64 positives of each: the
    notebook completes, printing the skip and its reason, and trains nothing."""
    import os
    from pathlib import Path

    import nbformat

    from fmct_lib.data.manifest import load_scans
    from test_notebooks import REPO, _execute
    expected, _ = fewshot_parts("hosp", load_scans("hosp"), [64])
    why = expected.skipped["few-shot"]
    assert why.startswith("no task has K positive and K negative training scans for any K of shots [64]")
    out = tmp_path / "04_fewshot_hosp.ipynb"
    before = set(Path(os.environ["FMCT_RUNS"]).rglob("predictions.csv"))
    _execute(REPO / "notebooks" / "04_fewshot.ipynb", out, dataset="hosp", profile="toy", shots=[64], n_seeds=1,
             checkpoint=str(user_data))
    texts = outputs(nbformat.read(out, as_version=4))
    assert any(str(expected) in t for t in texts), texts
    assert texts[-1].endswith(f"Nothing measured on this dataset.\n\nSkipped on this dataset: few-shot ({why})\n")
    assert set(Path(os.environ["FMCT_RUNS"]).rglob("predictions.csv")) == before  # nothing trained

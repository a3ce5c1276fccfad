"""Bad inputs (#25): encoder checkpoints of every kind through the one entry point and the command line, and
degenerate splits (a task without positives in train, val or test) through the sweeps and ``fmct finetune``.

Everything is built at test time: the authors' layout from the key listing in ``tests/assets``, a pickle whose
unpickling would run code, truncated and empty files, a scan table of in-memory volumes.
"""
import json
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from fmct_lib import pipeline
from fmct_lib.cli import main as fmct
from fmct_lib.config import ModelConfig, get_profile
from fmct_lib.data import inputs
from fmct_lib.data.manifest import write_scans
from fmct_lib.downstream import VolumeSource, embeddings as embed_module, run_protocol, run_sweep, runs as runs_module
from fmct_lib.evaluate import bootstrap_ci, paired_permutation_test, task_metrics
from fmct_lib.models.checkpoints import (CheckpointError, checkpoint_format, load_encoder, load_reference_checkpoint,
                                         save_checkpoint)
from fmct_lib.models.vit3d import vit_from_config

LISTING = Path(__file__).resolve().parents[1] / "assets" / "fmhct_vit_b_state_dict.tsv"
TOY = get_profile("toy")
SMALL = ModelConfig(img_size=16, patch_size=4, embed_dim=24, depth=2, num_heads=2)


def authors_state(path: Path = LISTING, seed: int = 0) -> dict:
    """Random half-precision tensors with exactly the keys and shapes of the authors' released encoder."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for line in path.read_text().splitlines()[1:]:
        key, shape = line.split("\t")
        state[key] = (torch.randn(*[int(s) for s in shape.strip("[]").split(",")], generator=g) * 0.02).half()
    return state


class Payload:
    """Unpickling it would create ``marker`` (with code execution allowed)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The authors' file (bare state dict, ``torch.save``), the same without its last block, a pickle that would
    run code, a truncated and an empty file, one of ours and a foreign file with a lying suffix."""
    d = tmp_path_factory.mktemp("checkpoints")
    state = authors_state()
    torch.save(state, d / "model_weights.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("blocks.11.")}, d / "short.pth")
    small = {"cls_token": torch.zeros(1, 1, 24)}
    torch.save({"state_dict": small, "payload": Payload(d / "pwned")}, d / "evil.pth")
    torch.save(small, d / "whole.pth")
    whole = (d / "whole.pth").read_bytes()
    (d / "truncated.pth").write_bytes(whole[:len(whole) // 2])
    (d / "empty.pth").write_bytes(b"")
    (d / "notes.pth").write_text("not a checkpoint\n")
    ours = save_checkpoint(d / "ours.safetensors", vit_from_config(SMALL), {"model": SMALL.to_dict()})
    (d / "ours_renamed.pth").write_bytes(ours.read_bytes())
    (d / "ours_truncated.safetensors").write_bytes(ours.read_bytes()[:-64])
    return d


# ------------------------------------------------------------------------------------------- checkpoints
def test_formats_are_told_apart_by_content(files):
    assert checkpoint_format(files / "model_weights.pth") == "torch"
    assert checkpoint_format(files / "ours_renamed.pth") == "safetensors"  # the suffix does not decide
    torch.save({"a": torch.zeros(1)}, files / "legacy.pt", _use_new_zipfile_serialization=False)
    assert checkpoint_format(files / "legacy.pt") == "pickle"
    assert load_encoder(files / "ours_renamed.pth").config.depth == SMALL.depth


def test_the_authors_pth_loads_strictly_through_the_entry_point(files):
    enc = load_encoder(files / "model_weights.pth")
    assert enc.config.depth == 12 and enc.config.embed_dim == 768 and enc.load_report.loaded == 138
    state = torch.load(files / "model_weights.pth", weights_only=True)
    torch.testing.assert_close(enc.pos_embed, state["patch_embedding.position_embeddings"].float())


def test_a_pickle_that_would_run_code_is_refused_with_the_real_reason(files):
    with pytest.raises(CheckpointError) as refused:
        load_encoder(files / "evil.pth")
    message = str(refused.value)
    assert "evil.pth" in message and "weights_only=True" in message
    assert "Unsupported global" in message and "open" in message  # torch's own reason, not only its advice
    assert not (files / "pwned").exists()  # the payload never ran


@pytest.mark.parametrize("name, problem", [
    ("truncated.pth", "damaged PyTorch file"), ("empty.pth", "empty file"),
    ("notes.pth", "not a checkpoint"), ("ours_truncated.safetensors", "damaged safetensors file"),
])
def test_damaged_and_foreign_files_are_refused_naming_the_file(files, name, problem):
    with pytest.raises(CheckpointError, match=problem) as refused:
        load_encoder(files / name)
    assert str(refused.value).startswith(str(files / name))


def test_a_checkpoint_without_its_last_block_is_refused_where_vit_b_is_expected(files):
    with pytest.raises(CheckpointError, match=r"short.pth: is not ViT-B: depth 11 \(expected 12\); missing") as e:
        load_encoder(files / "short.pth")  # the authors' layouts are expected to be ViT-B
    assert "blocks.11.attn.qkv.weight" in str(e.value) and "blocks.11.norm2.bias" in str(e.value)
    with pytest.raises(CheckpointError, match="missing"):
        load_reference_checkpoint(files / "short.pth", expect="ViT-B")
    # ours carry their configuration; asked for another architecture, the difference is named
    with pytest.raises(CheckpointError, match=r"depth 2 \(expected 3\); missing \['blocks.2"):
        load_encoder(files / "ours.safetensors", expect=dict(depth=3))
    assert load_encoder(files / "ours.safetensors", expect=SMALL).config == SMALL


# ------------------------------------------------------------------------------------ a small scan table
def volumes(labels, size, seed=0):
    """Noise volumes; positives carry a bright cube (so the models have something to learn)."""
    g = torch.Generator().manual_seed(seed)
    x = 0.3 + 0.05 * torch.randn(len(labels), 3, size, size, size, generator=g)
    for i, y in enumerate(labels):
        if y:
            x[i, :, 2:2 + size // 3, 2:2 + size // 3, 2:2 + size // 3] += 0.6
    return x


@pytest.fixture
def world(tmp_path, monkeypatch):
    """``make(no_ich_positives_in=split)``: the dataset ``bad`` (40 scans; tasks ich and sdh, 8:2:2 splits)
    with the cache replaced by in-memory volumes, and the runs root."""
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(pipeline, "ensure_cache", lambda *a, **k: None)

    def make(no_ich_positives_in=None):
        rows = [{"scan_id": f"s{i:03d}", "patient_id": f"p{i:03d}", "path": "x.nii.gz",
                 "split": (["train"] * 6 + ["val"] * 2 + ["test"] * 2)[i % 10], "manufacturer": "A",
                 "slice_thickness_mm": 1.0, "spacing": "1,1,1", "kvp": 120, "site": "internal",
                 "ich": int(i % 3 == 0), "sdh": int(i % 2 == 0)} for i in range(40)]
        table = pd.DataFrame(rows)
        table.loc[table["split"] == no_ich_positives_in, "ich"] = 0
        write_scans(table, "bad")
        labels = dict(zip(table["scan_id"], table["ich"] | table["sdh"]))

        def fake_source(dataset, scans, spec, num_workers=0):
            x = volumes([labels[s] for s in scans["scan_id"]], spec.input_size)
            return VolumeSource(x), scans.reset_index(drop=True)
        for module in (inputs, runs_module, embed_module):
            monkeypatch.setattr(module, "volume_source", fake_source)
        return table
    return make, tmp_path / "runs"


def finetune(root, *args):
    return fmct(["finetune", "--dataset", "bad", "--profile", "toy", "--run-root", str(root), *args])


# ----------------------------------------------------------------------------- checkpoints, command line
def test_the_authors_pth_embeds_through_the_command_line(world, files, tmp_path, capsys):
    make, _ = world
    make()
    out = tmp_path / "e.csv"
    code = fmct(["embed", "--dataset", "bad", "--encoder", str(files / "model_weights.pth"), "--profile", "paper",
                 "--filter", "scan_id=s009", "--out", str(out)])
    assert code == 0 and "1 embeddings of dimension 768" in capsys.readouterr().out


@pytest.mark.parametrize("name, problem", [
    ("evil.pth", "refused by torch.load"), ("empty.pth", "empty file"), ("truncated.pth", "damaged PyTorch file"),
    ("short.pth", "is not ViT-B"), ("missing.pth", "checkpoint not found"),
])
@pytest.mark.parametrize("command", ["embed", "finetune"])
def test_a_refused_encoder_is_one_line_and_a_nonzero_exit(world, files, tmp_path, capsys, command, name, problem):
    make, root = world
    make()
    path = str(files / name)
    args = (["embed", "--dataset", "bad", "--profile", "toy", "--out", str(tmp_path / "e.npz")] if command == "embed"
            else ["finetune", "--dataset", "bad", "--profile", "toy", "--task", "ich", "--protocol", "linear",
                  "--run-root", str(root)])
    assert fmct([*args, "--encoder", path]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"fmct {command}: error: {path}: ") and problem in err
    assert "Traceback" not in err and not (files / "pwned").exists()
    assert not root.exists() and not (tmp_path / "e.npz").exists()  # nothing ran


def test_finetune_without_a_needed_encoder_or_with_an_unfitting_one_says_so(world, files, capsys):
    make, root = world
    make()
    assert finetune(root, "--task", "ich", "--protocol", "linear") == 2
    assert "protocol 'linear' needs --encoder" in capsys.readouterr().err
    assert finetune(root, "--task", "ich", "--protocol", "linear", "--encoder", str(files / "model_weights.pth")) == 2
    assert "takes 96³ inputs" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ degenerate splits
def test_no_positives_in_train_skips_that_run_and_the_sweep_goes_on(world, capsys):
    make, root = world
    make(no_ich_positives_in="train")
    assert finetune(root, "--task", "ich,sdh", "--protocol", "histogram") == 0
    out = capsys.readouterr().out
    assert ("skipped ich histogram k=None seed=0: bad train: no positive 'ich' scans (0 positive, 24 negative): "
            "nothing to train on") in out
    assert "sdh" in out and "macro" in out
    # every run of a deep protocol too, before its encoder or inputs are used
    ckpt = save_checkpoint(root.parent / "enc.safetensors", vit_from_config(TOY.model), {"model": TOY.model.to_dict()})
    with pytest.warns(UserWarning, match="no positive 'ich' scans"):
        result = run_sweep("bad", ["ich"], ["linear", "fewshot"], str(ckpt), TOY, shots=(2,), resamples=1,
                           run_root=root, progress=False)
    assert result.empty and {s["protocol"] for s in result.attrs["skipped"]} == {"linear", "finetune"}
    assert all("bad train: no positive 'ich'" in s["reason"] for s in result.attrs["skipped"])


def test_nothing_evaluated_exits_nonzero_listing_the_reasons(world, capsys):
    make, root = world
    make(no_ich_positives_in="train")
    assert finetune(root, "--task", "ich", "--protocol", "histogram") == 1
    out = capsys.readouterr().out
    assert "skipped ich histogram" in out and "nothing could be evaluated" in out


def test_no_positives_in_test_is_skipped_with_its_reason_not_a_bare_nan(world, capsys):
    make, root = world
    make(no_ich_positives_in="test")
    assert finetune(root, "--task", "ich,sdh", "--protocol", "histogram") == 0
    out = capsys.readouterr().out
    assert "skipped ich histogram k=None seed=0: bad test: no positive 'ich' scans (0 positive, 8 negative)" in out
    assert "NaN" not in out
    assert finetune(root, "--task", "ich", "--protocol", "histogram") == 1
    assert "nothing could be evaluated" in capsys.readouterr().out


def test_no_positives_in_val_warns_and_the_run_records_it(world):
    make, root = world
    make(no_ich_positives_in="val")
    ckpt = save_checkpoint(root.parent / "enc.safetensors", vit_from_config(TOY.model), {"model": TOY.model.to_dict()})
    for protocol in ("histogram", "finetune"):
        with pytest.warns(UserWarning, match="bad val: no positive 'ich' scans .*: no validation AUROC"):
            preds = run_protocol("bad", "ich", protocol, str(ckpt), TOY, run_root=root, progress=False)
        assert len(preds) == 8
    configs = {json.loads(p.read_text())["signature"]["protocol"]: json.loads(p.read_text())
               for p in root.rglob("config.json")}
    assert configs["histogram"]["choice"]["val_auroc"] is None            # C not chosen on validation
    assert configs["finetune"]["stopping"]["reason"] == "cap: no validation AUROC"  # no epoch chosen


# ------------------------------------------------------------------------------------- undefined metrics
def one_class_predictions(seed=0):
    """Two models' predictions on 30 scans: ``ich`` has no positive, ``sdh`` no negative, ``edema`` both."""
    rng = np.random.default_rng(seed)
    rows = [{"scan_id": f"s{i:02d}", "task": task, "label": label(i), "probability": float(rng.random())}
            for i in range(30) for task, label in (("ich", lambda i: 0), ("sdh", lambda i: 1),
                                                    ("edema", lambda i: int(i % 3 == 0)))]
    a = pd.DataFrame(rows)
    return a, a.assign(probability=rng.random(len(a)))


def test_undefined_metrics_carry_their_reason_through_the_statistics():
    a, b = one_class_predictions()
    table = task_metrics(a).set_index("task")
    assert table.loc["ich", "reason"] == "no positives" and np.isnan(table.loc["ich", ["auroc", "ap"]]).all()
    assert table.loc["sdh", "reason"] == "no negatives" and table.loc["sdh", "ap"] == 1.0
    assert table.loc["edema", "reason"] == "" and table.loc["macro", "auroc"] == table.loc["edema", "auroc"]
    assert table.loc["macro", "reason"] == ("mean over the other tasks; undefined for ich (no positives), "
                                            "sdh (no negatives)")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # said by the reason, not by a RuntimeWarning
        ci = bootstrap_ci(a, n_boot=20).set_index(["task", "metric"])
        test = paired_permutation_test(a, b, n_perm=50).set_index(["task", "metric"])
    for summary in (ci, test):
        assert summary.loc[("ich", "auroc"), "reason"] == summary.loc[("ich", "ap"), "reason"] == "no positives"
        assert summary.loc[("sdh", "auroc"), "reason"] == "no negatives" and summary.loc[("sdh", "ap"), "reason"] == ""
        assert summary.loc[("macro", "ap"), "reason"] == "mean over the other tasks; undefined for ich (no positives)"
    assert np.isnan(test.loc[("ich", "auroc"), "p_value"]) and np.isfinite(test.loc[("edema", "auroc"), "p_value"])


def test_the_summary_shows_an_undefined_auroc_with_its_reason(world, monkeypatch, capsys):
    """A finished run read back (made before one-class test sets were skipped) still has a one-class test set."""
    from fmct_lib import downstream
    make, root = world
    table = make()
    # the dataset labels edema too, so the command takes the task (an unknown task is refused: test_task_checks)
    write_scans(table.assign(edema=[int(i % 3 == 0) for i in range(len(table))]), "bad")
    a, _ = one_class_predictions()
    a = a.assign(protocol="histogram", seed=0, k=pd.array([None] * len(a), dtype="Int64"))
    both = pd.concat([a, a[a.task == "ich"].assign(protocol="scratch")])  # scratch: no AUROC defined at all
    monkeypatch.setattr(downstream, "run_sweep", lambda *args, **kwargs: both)
    assert finetune(root, "--task", "ich,sdh,edema", "--protocol", "histogram", "--protocol", "scratch") == 0
    out = capsys.readouterr().out
    assert "undefined (no positives in test)" in out and "undefined (no negatives in test)" in out
    assert "NaN" not in out and "macro: mean over the tasks with an AUROC" in out
    assert out.splitlines()[-2].split()[-1] == "undefined" and "skipped" in out  # scratch's macro; edema not run
    monkeypatch.setattr(downstream, "run_sweep", lambda *args, **kwargs: a[a.task == "ich"])
    assert finetune(root, "--task", "ich", "--protocol", "histogram") == 1
    assert "nothing could be evaluated" in capsys.readouterr().out

"""The pipeline (fmct_lib.pipeline): the notebooks' set-up, task choice, the stages it builds and what it refuses."""
from __future__ import annotations

import re
from pathlib import Path
import numpy as np
import pandas as pd
import pytest

from fmct_lib import pipeline
from fmct_lib.data import manifest
from fmct_lib.config import get_profile
from fmct_lib.data.manifest import DatasetNotAvailable


def _scans():
    # test split: a has 2 positives, b has 1, c has none, d has no negatives
    return pd.DataFrame({
        "scan_id": [f"s{i}" for i in range(6)], "split": ["test"] * 4 + ["train"] * 2,
        "a": [1, 1, 0, 0, 1, 0], "b": [1, 0, 0, 0, 1, 1], "c": [0, 0, 0, 0, 1, 1], "d": [1, 1, 1, 1, 0, 0],
    })


def test_choose_tasks_keeps_tasks_with_an_auroc_and_limits_by_positives(monkeypatch, capsys):
    monkeypatch.setattr(manifest, "dataset_info", lambda name: {"tasks": ["a", "b", "c", "d", "missing"]})
    unlimited = get_profile("demo").replace(max_tasks=0)
    assert pipeline.choose_tasks(_scans(), None, "x", unlimited) == ["a", "b"]
    out = capsys.readouterr().out
    assert "c (0 positive / 4 negative)" in out and "d (4 positive / 0 negative)" in out and "missing" in out
    one = unlimited.replace(max_tasks=1)
    assert pipeline.choose_tasks(_scans(), None, "x", one) == ["a"]  # the one with the most positives
    # an explicit list is never cut to max_tasks
    assert pipeline.choose_tasks(_scans(), ["b", "a"], "x", one) == ["b", "a"]
    with pytest.raises(ValueError, match="positive and a negative"):
        pipeline.choose_tasks(_scans(), ["c", "d"], "x", one)


def test_a_dataset_that_was_not_ingested_stops_with_its_ingest_command(tmp_path, monkeypatch):
    monkeypatch.setenv("FMCT_DATA", str(tmp_path))
    with pytest.raises(DatasetNotAvailable, match="fmct ingest rsna --source DIR"):
        pipeline.start("rsna", "toy")


def test_start_gives_a_study_whose_runs_root_is_run_dir_and_writes_no_environment(tmp_path, monkeypatch):
    import os
    built = []
    table = pd.DataFrame({"scan_id": ["a", "b"], "site": ["internal", "external"], "split": ["test", "test"]})
    monkeypatch.setattr(pipeline, "ensure_dataset", lambda dataset, profile: table)
    monkeypatch.setattr(pipeline, "ensure_cache", lambda dataset, profile, preset: built.append((dataset, preset)))
    monkeypatch.setenv("FMCT_RUNS", str(tmp_path / "elsewhere"))
    before = dict(os.environ)
    study = pipeline.start("synthetic", "toy", run_dir=str(tmp_path / "mine"), seed=3, site="internal")
    assert dict(os.environ) == before
    assert study.runs == tmp_path / "mine" and built == [("synthetic", "paper")]  # the cache is a stage start builds
    assert study.method == get_profile("toy").pretrain_method and study.seed == 3
    assert study.site_filter == {"site": "internal"} and list(study.labelled["scan_id"]) == ["a"]
    assert pipeline.start("synthetic", "toy").runs == tmp_path / "elsewhere"
    no_sites = table.drop(columns="site")
    monkeypatch.setattr(pipeline, "ensure_dataset", lambda dataset, profile: no_sites)
    assert pipeline.start("synthetic", "toy", site="internal").site_filter is None

    from fmct_lib import downstream
    from fmct_lib.data.preprocess import paper_spec
    calls = []
    monkeypatch.setattr(downstream, "run_sweep", lambda **kw: calls.append(kw))
    study.sweep(["ich"], ["finetune"], "enc.safetensors", n_seeds=2)
    study.sweep(["ich"], ["finetune"], "enc.safetensors", dataset="other", train_filter=None)
    assert calls[0] == {"dataset": "synthetic", "profile": study.profile, "seed": 3, "train_filter": {"site": "internal"},
                        "run_root": tmp_path / "mine" / "downstream", "spec": paper_spec("toy"), "tasks": ["ich"],
                        "protocols": ["finetune"], "encoder": "enc.safetensors", "n_seeds": 2}
    assert calls[1]["dataset"] == "other" and calls[1]["train_filter"] is None


def test_an_external_encoder_caches_the_evaluated_scans_not_the_unlabelled_pool(tmp_path, monkeypatch):
    """External encoders are evaluated, never pretrained here: their preset's cache leaves the pool out."""
    from fmct_lib.models.external import ExternalRef
    table = pd.DataFrame({"scan_id": ["a", "b", "c", "d"], "site": ["internal", "external", "pretrain", "pretrain"],
                          "split": ["train", "test", "pretrain", "pretrain"]})
    built = []
    monkeypatch.setattr(pipeline, "ensure_dataset", lambda dataset, profile: table)
    monkeypatch.setattr(pipeline, "ensure_cache", lambda dataset, profile, preset, scans=None: built.append(
        (preset, scans)))
    study = pipeline.start("synthetic", "toy", run_dir=str(tmp_path))
    ref = study.external("resnet3d")
    assert isinstance(ref, ExternalRef) and ref.weights is None
    assert built == [("paper", None), (ref.preset, ["a", "b"])]  # the study's own chain keeps the pool


def test_pretraining_refuses_a_missing_cache_with_the_command_that_builds_it(tmp_path, monkeypatch):
    """Only the pipeline builds the cache; pretraining on a dataset without one names ``fmct cache``."""
    from fmct_lib.data.manifest import write_scans
    from fmct_lib.paths import StageMissing
    from fmct_lib.train import pretrain
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FMCT_CACHE", str(tmp_path / "cache"))
    rows = [{"scan_id": f"s{i}", "patient_id": f"p{i}", "path": "x.nii.gz", "split": "train", "manufacturer": "A",
             "slice_thickness_mm": 1.0, "spacing": "1,1,1"} for i in range(4)]
    write_scans(pd.DataFrame(rows), "toyset")
    with pytest.raises(StageMissing, match="fmct cache --dataset toyset"):
        pretrain(method="mae", dataset="toyset", profile="toy", run_dir=tmp_path / "run")
    assert not (tmp_path / "cache" / "toyset").exists() or not any((tmp_path / "cache" / "toyset").rglob("*.npy"))


def test_ensure_finetuned_is_the_same_model_whatever_ran_before(tmp_path, monkeypatch):
    """Fig. 5's fine-tuned encoder depends on its seed only, not on what the notebook's process did first."""
    import torch

    from fmct_lib import downstream
    from fmct_lib.config import ModelConfig
    from fmct_lib.downstream import runs
    from fmct_lib.data.manifest import write_scans
    from fmct_lib.models.checkpoints import load_checkpoint, read_checkpoint_config, save_checkpoint
    from fmct_lib.models.vit3d import vit_from_config
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    profile = get_profile("toy").replace(model=ModelConfig(img_size=16, patch_size=8, embed_dim=24, depth=1,
                                                           num_heads=2), finetune_subset=8, finetune_max_epochs=1,
                                                           finetune_patience=1)
    splits = ["train"] * 4 + ["val"] * 2 + ["test"]
    rows = [{"scan_id": f"s{i}", "patient_id": f"p{i}", "path": "x", "split": splits[i % 7], "manufacturer": "A",
             "slice_thickness_mm": 1.0, "spacing": "1,1,1", "ich": i % 2} for i in range(28)]
    write_scans(pd.DataFrame(rows), "toyset")
    vols = torch.rand(28, 3, 16, 16, 16, generator=torch.Generator().manual_seed(0))
    monkeypatch.setattr(runs, "volume_source", lambda dataset, scans, spec, num_workers=0: (
        downstream.VolumeSource(vols[[int(s[1:]) for s in scans["scan_id"]]]), scans.reset_index(drop=True)))
    encoder = save_checkpoint(tmp_path / "pre" / "encoder.safetensors", vit_from_config(profile.model),
                              {"model": profile.model.to_dict()})
    weights = []
    for draws in (0, 5):
        monkeypatch.setenv("FMCT_RUNS", str(tmp_path / f"runs{draws}"))
        torch.rand(draws)  # the global RNG as another notebook cell may have left it
        path = pipeline.ensure_finetuned("toyset", "ich", encoder, profile, seed=3)
        weights.append(load_checkpoint(path)[0].state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    pretrained = load_checkpoint(encoder)[0].state_dict()
    assert not all(torch.equal(weights[0][k], pretrained[k]) for k in pretrained)  # it was trained
    # the kept encoder is not reused under other training settings (here another patience): fine-tuned again
    assert read_checkpoint_config(path)["hparams"]["patience"] == 1
    again = pipeline.ensure_finetuned("toyset", "ich", encoder, profile.replace(finetune_patience=3), seed=3)
    assert again == path and read_checkpoint_config(again)["hparams"]["patience"] == 3
    # the same weights elsewhere (a released copy, a moved checkout) give the same model without training;
    # other weights at the same path (a re-released encoder) are fine-tuned again
    import shutil
    copy = tmp_path / "released" / "pre" / "encoder.safetensors"
    copy.parent.mkdir(parents=True)
    shutil.copy(encoder, copy)
    monkeypatch.setattr(runs, "volume_source", lambda *a, **k: pytest.fail("trained again"))
    same = pipeline.ensure_finetuned("toyset", "ich", copy, profile.replace(finetune_patience=3), seed=3)
    assert load_checkpoint(same)[0].state_dict().keys() == weights[0].keys()
    assert read_checkpoint_config(same)["pretrained"] == read_checkpoint_config(again)["pretrained"]
    torch.manual_seed(1)
    save_checkpoint(copy, vit_from_config(profile.model), {"model": profile.model.to_dict()})

    def reads_volumes(*a, **k):
        raise RuntimeError("trained again")
    monkeypatch.setattr(runs, "volume_source", reads_volumes)
    with pytest.raises(RuntimeError, match="trained again"):
        pipeline.ensure_finetuned("toyset", "ich", copy, profile.replace(finetune_patience=3), seed=3)
    # training labels corrected since (an audit: the kept encoder was returned as it was): fine-tuned again
    monkeypatch.setattr(runs, "volume_source", lambda dataset, scans, spec, num_workers=0: (
        downstream.VolumeSource(vols[[int(s[1:]) for s in scans["scan_id"]]]), scans.reset_index(drop=True)))
    before = load_checkpoint(again)[0].state_dict()
    write_scans(pd.DataFrame([{**r, "ich": 1 - r["ich"] if r["split"] == "train" else r["ich"]} for r in rows]),
                "toyset")
    with pytest.warns(UserWarning, match="training or validation rows or labels changed"):
        relabelled = pipeline.ensure_finetuned("toyset", "ich", encoder, profile.replace(finetune_patience=3), seed=3)
    assert relabelled == again
    assert not all(torch.equal(before[k], v) for k, v in load_checkpoint(relabelled)[0].state_dict().items())


def test_an_encoder_barely_pretrained_on_ones_own_dataset_is_warned_about(tmp_path, monkeypatch):
    """An audit's notebook on 21 scans of its own pretrained its encoder 3 steps and compared it with scratch as
    "pretrained" in silence. Under FEW_PRETRAINING_STEPS optimiser steps a dataset's own encoder is warned about;
    the synthetic cohort (sized per profile, its toy runs a few steps) is not."""
    import json
    import warnings
    import fmct_lib.train

    def fake_pretrain(steps):
        def pretrain(**kw):
            Path(kw["run_dir"]).mkdir(parents=True, exist_ok=True)
            (Path(kw["run_dir"]) / "config.json").write_text(json.dumps({"run": {"total_steps": steps, "n_scans": 21}}))
            return kw["run_dir"]
        return pretrain
    monkeypatch.setattr(pipeline, "ensure_cache", lambda dataset, profile, preset="paper": None)
    monkeypatch.setattr(fmct_lib.train, "pretrain", fake_pretrain(3))
    with pytest.warns(UserWarning, match=r"pretrained 3 steps on 21 scans of 'mine', too few .* \(checkpoint="):
        pipeline.ensure_pretrained("vicreg", "mine", "demo", runs=tmp_path / "a", afresh=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pipeline.ensure_pretrained("vicreg", "synthetic", "toy", runs=tmp_path / "b", afresh=True)
        monkeypatch.setattr(fmct_lib.train, "pretrain", fake_pretrain(pipeline.FEW_PRETRAINING_STEPS))
        pipeline.ensure_pretrained("vicreg", "mine", "demo", runs=tmp_path / "c", afresh=True)


def test_ensure_pretrained_starts_from_the_released_encoder_unless_asked_to_pretrain_afresh(tmp_path, monkeypatch,
                                                                                            capsys):
    """A released encoder (encoders/, train/release.py) is used, its sha256 checked, unless ``afresh`` or
    ``FMCT_PRETRAIN=1``; ``start(afresh=...)`` reaches ``Study.encoder``; one printed line says which."""
    import fmct_lib.train
    from _support import InMemoryVolumes
    from fmct_lib.data.preprocess import paper_spec
    from fmct_lib.train import pretrain_on
    from fmct_lib.train.release import release_run, sha256_of

    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FMCT_ENCODERS", str(tmp_path / "encoders"))
    monkeypatch.delenv("FMCT_PRETRAIN", raising=False)
    run = pretrain_on(InMemoryVolumes(8, 37), method="mae", profile="toy", run_dir=tmp_path / "run", batch_size=4,
                      max_steps=1, progress=False, meta={"dataset": "synthetic", "fraction": 1.0},
                      preprocess=paper_spec("toy").to_dict())
    released = release_run(run) / "encoder.safetensors"
    assert released == tmp_path / "encoders" / "synthetic_mae_f1_toy_s0" / "encoder.safetensors"
    pretrained = []
    monkeypatch.setattr(fmct_lib.train, "pretrain", lambda **kw: pretrained.append(kw) or kw["run_dir"])
    monkeypatch.setattr(pipeline, "ensure_cache", lambda dataset, profile, preset="paper": None)

    assert pipeline.ensure_pretrained("mae", "synthetic", "toy") == released and not pretrained
    line = capsys.readouterr().out
    assert line == f"encoder: released {released} (sha256 {sha256_of(released)[:12]}…)\n"

    def pretrains(**kwargs) -> str:
        before = len(pretrained)
        path = pipeline.ensure_pretrained("mae", "synthetic", "toy", runs=tmp_path / "runs", **kwargs)
        assert len(pretrained) == before + 1
        assert path == tmp_path / "runs" / "pretrain" / "synthetic_mae_f1_toy_s0" / "encoder.safetensors"
        return capsys.readouterr().out

    assert "pretraining afresh" in pretrains(afresh=True)
    monkeypatch.setenv("FMCT_PRETRAIN", "1")
    assert "pretraining afresh (FMCT_PRETRAIN=1" in pretrains()
    assert pipeline.ensure_pretrained("mae", "synthetic", "toy", afresh=False) == released  # the argument wins
    monkeypatch.setenv("FMCT_PRETRAIN", "0")
    assert pipeline.ensure_pretrained("mae", "synthetic", "toy") == released
    monkeypatch.setenv("FMCT_PRETRAIN", "yes")
    with pytest.raises(ValueError, match="FMCT_PRETRAIN='yes'"):
        pipeline.ensure_pretrained("mae", "synthetic", "toy")
    monkeypatch.delenv("FMCT_PRETRAIN")
    # nothing released for this seed; a release made for another model does not serve a profile of the same name
    pipeline.ensure_pretrained("mae", "synthetic", "toy", seed=1, runs=tmp_path / "runs")
    out = capsys.readouterr().out
    assert f"no released encoder under {tmp_path / 'encoders'}" in out and "a typo?" not in out
    # a mistyped FMCT_ENCODERS (a folder that does not exist) is said so before pretraining starts
    monkeypatch.setenv("FMCT_ENCODERS", str(tmp_path / "encodres"))
    pipeline.ensure_pretrained("mae", "synthetic", "toy", seed=1, runs=tmp_path / "runs")
    assert (f"no released encoder under {tmp_path / 'encodres'} (FMCT_ENCODERS names a folder that does not exist: "
            "a typo?)") in capsys.readouterr().out
    monkeypatch.setenv("FMCT_ENCODERS", str(tmp_path / "encoders"))
    from fmct_lib.config import ModelConfig
    wider = get_profile("toy").replace(model=ModelConfig(img_size=16, patch_size=4, embed_dim=96, depth=2, num_heads=2))
    pipeline.ensure_pretrained("mae", "synthetic", wider, runs=tmp_path / "runs")
    assert "has another model than profile 'toy'" in capsys.readouterr().out

    # start(afresh=...) is carried by the Study to every encoder it asks for; its default is $FMCT_PRETRAIN
    table = pd.DataFrame({"scan_id": ["a"], "split": ["test"]})
    monkeypatch.setattr(pipeline, "ensure_dataset", lambda dataset, profile: table)
    study = pipeline.start("synthetic", "toy", run_dir=str(tmp_path / "runs"), afresh=True)
    study.encoder("mae")
    assert study.afresh and "pretraining afresh" in capsys.readouterr().out
    assert pipeline.start("synthetic", "toy").encoder("mae") == released
    monkeypatch.setenv("FMCT_PRETRAIN", "1")
    assert pipeline.start("synthetic", "toy").afresh


def test_the_reference_preset_needs_a_checkpoint_and_reaches_every_run_embedding_and_fine_tuned_encoder(
        tmp_path, monkeypatch):
    """``start(preset=...)``: the authors' ``reference`` chain is for their weights, so without ``checkpoint`` it
    stops before building anything, naming the fix; with one, the study builds that chain's cache, starts from the
    checkpoint whatever method is asked for, and hands the chain to every sweep, few-shot run, embedding, other
    dataset and fine-tuned encoder (stored apart from the paper chain's)."""
    from types import SimpleNamespace

    from fmct_lib import downstream
    from fmct_lib.config import ModelConfig
    from fmct_lib.data.preprocess import paper_spec, reference_spec
    from fmct_lib.models.checkpoints import load_checkpoint
    from fmct_lib.models.vit3d import vit_from_config
    built = []
    table = pd.DataFrame({"scan_id": ["a"], "split": ["test"]})
    monkeypatch.setattr(pipeline, "ensure_dataset", lambda dataset, profile: built.append(dataset) or table)
    monkeypatch.setattr(pipeline, "ensure_cache", lambda dataset, profile, preset: built.append((dataset, preset)))

    with pytest.raises(ValueError, match=r"preset 'reference' is the preprocessing the authors' released weights "
                                         r"were trained on: pass their file as checkpoint .*pretraining with the "
                                         r"reference preset is not offered"):
        pipeline.start("synthetic", "toy", preset="reference")
    with pytest.raises(ValueError, match="unknown preprocessing preset 'Reference'"):
        pipeline.start("synthetic", "toy", preset="Reference", checkpoint="model_weights.pth")
    with pytest.raises(FileNotFoundError, match="checkpoint .*model_weights.pth does not exist"):
        pipeline.start("synthetic", "toy", preset="reference", checkpoint=str(tmp_path / "model_weights.pth"))
    assert built == []  # refused before the dataset or a cache was touched
    with pytest.raises(ValueError, match="pass their file as checkpoint"):  # a Study made by hand is held to it too
        pipeline.Study("synthetic", get_profile("toy"), table, tmp_path, 0, "dino", None, spec=reference_spec("toy"))
    assert pipeline.start("synthetic", "toy").spec == paper_spec("toy")  # the default

    from fmct_lib.models.checkpoints import save_checkpoint
    from fmct_lib.train.release import sha256_of
    weights = tmp_path / "authors" / "model_weights.pth"  # told by content: an fmct file under the authors' name
    save_checkpoint(weights, vit_from_config(get_profile("toy").model),
                    {"model": get_profile("toy").model.to_dict(), "method": "mae"})
    larger = save_checkpoint(tmp_path / "demo.safetensors", vit_from_config(get_profile("demo").model),
                             {"model": get_profile("demo").model.to_dict()})
    built.clear()
    with pytest.raises(ValueError, match=r"demo.safetensors: the encoder takes 32³ inputs, but profile 'toy' makes "
                                         r"16³ ones; pass the profile it was made for \(-p profile demo\)"):
        pipeline.start("synthetic", "toy", checkpoint=str(larger))
    assert built == []  # refused before the dataset or a cache was touched
    study = pipeline.start("synthetic", "toy", run_dir=str(tmp_path / "runs"), preset="reference",
                           checkpoint=str(weights))
    reference = reference_spec("toy")
    assert built == ["synthetic", ("synthetic", "reference")] and study.spec == reference
    assert study.encoder() == study.encoder("dino", fraction=0.3) == weights  # never a pretraining run
    assert study.method == "mae"  # what the checkpoint records, not the profile's default (dino)
    # its figures are its own: never the gallery's, nor another checkpoint's or chain's
    tag = f"model_weights-{sha256_of(weights)[:8]}-reference"
    assert study.encoder_tag == tag and study.figure_name("fig1e") == f"fig1e__synthetic_toy_{tag}"
    on_demo = pipeline.start("synthetic", "demo", checkpoint=str(larger))
    assert on_demo.figure_name("fig1e") == f"fig1e__synthetic_demo_demo-{sha256_of(larger)[:8]}"
    assert pipeline.start("synthetic", "demo").figure_name("fig1e") == "fig1e"  # the gallery's, as before
    # the checkpoint's recorded method is the study's: another one beside it would name the wrong method
    with pytest.raises(ValueError, match=r"model_weights.pth was pretrained with 'mae', not method 'dino': leave "
                                         r"method unset \(None\)"):
        pipeline.start("synthetic", "toy", preset="reference", checkpoint=str(weights), method="dino")
    assert pipeline.start("synthetic", "toy", preset="reference", checkpoint=str(weights), method="mae").method == "mae"

    calls = {}
    for name in ("run_sweep", "fewshot_sweep", "embed"):
        monkeypatch.setattr(downstream, name, lambda *args, _name=name, **kw: calls.setdefault(_name, kw))
    study.sweep(["ich"], ["finetune"], weights)
    study.fewshot(["ich"], "finetune", weights, shots=[2])
    study.embed(weights, scans=table)
    assert {name: kw["spec"] for name, kw in calls.items()} == {n: reference for n in ("run_sweep", "fewshot_sweep",
                                                                                       "embed")}
    study.other("cq500")
    assert built[-2:] == ["cq500", ("cq500", "reference")]

    tiny = ModelConfig(img_size=16, patch_size=8, embed_dim=24, depth=1, num_heads=2)
    trained = []
    monkeypatch.setattr(downstream, "run_protocol", lambda *args, **kw: trained.append(kw) or (
        None, SimpleNamespace(encoder=vit_from_config(tiny))))
    on_reference = study.finetuned("ich", weights)
    on_paper = pipeline.ensure_finetuned("synthetic", "ich", weights, "toy", runs=tmp_path / "runs")
    assert [kw["spec"] for kw in trained] == [reference, paper_spec("toy")]
    finetuned = tmp_path / "runs" / "finetuned" / "toy"
    assert on_reference == (finetuned / f"reference-{reference.hash}" / "authors" / "synthetic" / "ich" / "seed0"
                            / "encoder.safetensors")
    assert on_paper == finetuned / "authors" / "synthetic" / "ich" / "seed0" / "encoder.safetensors"
    assert load_checkpoint(on_reference)[1]["preprocess"] == reference.to_dict()


def test_a_study_with_other_settings_never_writes_the_gallerys_figures(tmp_path):
    """Another method, site or seed, or a notebook's own setting, names the figure: a second run with other
    settings used to overwrite the first's (and, under ``make reproduce``, the gallery's); the defaults keep the
    gallery's name."""
    demo = get_profile("demo")
    table = pd.DataFrame({"scan_id": ["a", "b"], "site": ["internal", "external"]})

    def study(method="vicreg", site="internal", seed=0):
        return pipeline.Study("synthetic", demo, table, tmp_path, seed, method, {"site": site})
    assert demo.pretrain_method == "vicreg" and study().figure_name("fig1e") == "fig1e"
    assert study().figure_name("fig1e", "", "") == "fig1e"  # a notebook's settings at their defaults
    assert study("mae").figure_name("fig1e") == "fig1e__synthetic_demo_mae"
    assert study("mae").figure_name("fig_pretrain_mae", method=False) == "fig_pretrain_mae"  # 01 names it itself
    assert study(site="external").figure_name("fig2") == "fig2__synthetic_demo_site-external"
    assert study("dino", "external", 2).figure_name("fig2") == "fig2__synthetic_demo_dino_site-external_seed2"
    assert study().figure_name("fig1fg", "internal-to-internal") == "fig1fg__synthetic_demo_internal-to-internal"
    no_sites = pipeline.Study("rsna", demo, table.drop(columns="site"), tmp_path, 0, "vicreg", None)
    assert no_sites.figure_name("fig1e") == "fig1e__rsna_demo" and no_sites.settings_tag() is None
    # site=None on a table with sites reads every site: an audit found it wrote the internal site's figure
    every_site = pipeline.Study("synthetic", demo, table, tmp_path, 0, "vicreg", None)
    assert every_site.figure_name("fig1e") == "fig1e__synthetic_demo_site-all"
    assert every_site.settings_tag(site=False) is None  # 03, 08: they choose (or read) the sites themselves


def test_00s_example_scan_is_checked_before_any_work():
    """An audit: a misspelt example_scan failed with a pandas KeyError after the cohort's figure was written."""
    scans = pd.DataFrame({"scan_id": ["SYNI00031-S1", "SYNI00032-S1", "SYNE00027-S1"]})
    assert pipeline.check_scan_id("example_scan", None, scans) is None
    assert pipeline.check_scan_id("example_scan", "SYNE00027-S1", scans) == "SYNE00027-S1"
    with pytest.raises(ValueError, match="example_scan 'SYNE0027-S1': no scan of the dataset has that id; close: "
                                         "SYNE00027-S1"):
        pipeline.check_scan_id("example_scan", "SYNE0027-S1", scans)
    with pytest.raises(ValueError, match=r"example_scan 5: no scan of the dataset has that id \(its ids look like "):
        pipeline.check_scan_id("example_scan", 5, scans)
    with pytest.raises(ValueError, match=r"example_scan 'x': no scan of the dataset has that id \(it has no scans\)"):
        pipeline.check_scan_id("example_scan", "x", scans.iloc[:0])


def test_a_run_dirs_figures_are_written_beside_its_runs(tmp_path, monkeypatch):
    """An audit: ``run_dir`` moved the runs but the figures went to ``$FMCT_RUNS/figures`` under the default name,
    where they could replace another study's. ``Study.figures`` is ``$FMCT_FIGURES``, else ``<run_dir>/figures``."""
    table = pd.DataFrame({"scan_id": ["a", "b"], "site": ["internal", "external"], "split": ["test", "test"]})
    monkeypatch.setattr(pipeline, "ensure_dataset", lambda dataset, profile: table)
    monkeypatch.setattr(pipeline, "ensure_cache", lambda dataset, profile, preset: None)
    monkeypatch.setenv("FMCT_RUNS", str(tmp_path / "runs"))
    monkeypatch.delenv("FMCT_FIGURES")
    assert pipeline.start("synthetic", "toy", run_dir=str(tmp_path / "mine")).figures == tmp_path / "mine" / "figures"
    assert pipeline.start("synthetic", "toy").figures == tmp_path / "runs" / "figures"
    monkeypatch.setenv("FMCT_FIGURES", str(tmp_path / "gallery"))  # make reproduce's gallery: where it says
    assert pipeline.start("synthetic", "toy", run_dir=str(tmp_path / "mine")).figures == tmp_path / "gallery"


def test_a_notebooks_seed_flags_share_and_encoders_are_checked_before_any_work(tmp_path):
    """01 and 09 as a user ran them: seed -1 ran to the end, 1.5 failed in the training loop after its run folder
    was made; ``-r patient_disjoint no`` read as True; fraction '0.5' failed in a format code; an encoder typo, a
    list or a missing weights file failed after FM-CT had pretrained. Each is now one line naming the parameter."""
    for seed in (-1, 1.5, "abc", True):
        with pytest.raises(ValueError, match=f"seed {seed!r}: a whole number of at least 0"):
            pipeline.start("synthetic", "toy", seed=seed)
    assert pipeline.check_seed(np.int64(3)) == 3 and pipeline.check_seed(2.0) == 2  # 11 checks its seed with it
    assert pipeline.flag("patient_disjoint", np.bool_(True)) is True and pipeline.flag("x", False) is False
    for value in ("no", 1, None):
        with pytest.raises(ValueError, match=f"patient_disjoint {value!r}: True or False"):
            pipeline.flag("patient_disjoint", value)
    assert pipeline.fraction("fraction", 1) == 1.0 and pipeline.fraction("fraction", np.float64(0.1)) == 0.1
    for value in (0, 1.5, -0.1, "0.5", True):
        with pytest.raises(ValueError, match=rf"fraction {value!r}: a share of the pretraining pool in \(0, 1\]"):
            pipeline.fraction("fraction", value)
    weights = tmp_path / "ctfm.safetensors"
    weights.write_bytes(b"")
    assert pipeline.check_encoders({"ctfm": str(weights), "merlin": None}) == {"ctfm": str(weights), "merlin": None}
    assert pipeline.check_encoders({}) == {}
    with pytest.raises(ValueError, match="encoders: 'ctfn' is not an external encoder here; choose from ctfm, merlin"):
        pipeline.check_encoders({"ctfn": None})
    with pytest.raises(ValueError, match="'dinov' is not an external encoder here; choose from dinov3, vjepa2$"):
        pipeline.check_encoders({"dinov": None}, known=["dinov3", "vjepa2"])  # 10 ran it, random, in silence
    with pytest.raises(ValueError, match=r"encoders \['ctfm'\]: a mapping of encoder name to its weights"):
        pipeline.check_encoders(["ctfm"])
    with pytest.raises(FileNotFoundError, match="encoders: the weights of 'merlin', .*nothing.pt, do not exist"):
        pipeline.check_encoders({"merlin": str(tmp_path / "nothing.pt")})


def test_a_notebooks_method_protocol_and_site_names_are_checked_before_any_work():
    """05, 10 and 12 call check_choices right after start: a typo used to fail after the first encoders had
    pretrained (05's 'dnio' after MAE; 12's 'finetun' after its p-variant), an unknown external site was ignored,
    and 10's vit_protocol 'scratch' was reported as the pretrained 3D ViT."""
    scans = pd.DataFrame({"scan_id": ["a", "b", "c"], "site": ["internal", "external", "pretrain"]})
    pipeline.check_choices(methods=["mae", "dino"], protocols=["linear"], site=("external", "synthetic", scans))
    with pytest.raises(ValueError, match="unknown method 'dnio'; the known methods are dino, mae"):
        pipeline.check_choices(methods=["mae", "dnio"])
    with pytest.raises(ValueError, match="methods is empty: name at least one of dino"):
        pipeline.check_choices(methods=[])
    for protocol in ("scratch", "histogram", "finetun"):
        with pytest.raises(ValueError, match=f"protocol '{protocol}': an encoder's classifier here is trained by one "
                                             "of finetune, linear, attentive, abmil"):
            pipeline.check_choices(protocols=[protocol])
    pipeline.check_choices(protocols=["abmil"])  # every registered protocol with an encoder (it was refused)
    with pytest.raises(ValueError, match="site 'externl' is not a labelled site of 'synthetic'; its labelled sites "
                                         "are external, internal"):
        pipeline.check_choices(site=("externl", "synthetic", scans))
    with pytest.raises(ValueError, match="site 'external' asked for, but 'myhosp' has no sites"):
        pipeline.check_choices(site=("external", "myhosp", scans.drop(columns="site")))


@pytest.mark.parametrize("value", [0, -1, 2.5, True, "3"])
def test_a_count_parameter_that_is_not_a_whole_number_of_at_least_1_is_refused(value):
    """n_seeds = 0 meant the profile's default in silence; −1 trained nothing; 2.5 failed deep in a sweep."""
    from fmct_lib.pipeline import count
    with pytest.raises(ValueError, match=rf"^n_seeds {re.escape(repr(value))}: a whole number of at least 1, or None "
                                         r"for the profile's \(3\)$"):
        count("n_seeds", value, 3)


def test_a_count_parameter_takes_the_default_for_none():
    from fmct_lib.pipeline import count
    assert count("n_seeds", None, 3) == 3 and count("resamples", 2, 5) == 2 and count("resamples", 4.0, 5) == 4


def test_03s_sites_are_two_labelled_sites_of_the_table():
    """source_site = target_site trained and tested in-domain and read a difference of 0 against itself; a typo
    failed with KeyError 'task' after every in-domain model had trained (a review of 03's parameters)."""
    scans = pd.DataFrame({"scan_id": ["a", "b", "c"], "site": ["internal", "external", "pretrain"]})
    sites = pipeline.transfer_sites
    assert sites("synthetic", scans, "synthetic", "internal", "external") == ({"site": "internal"},
                                                                              {"site": "external"})
    assert sites("synthetic", scans, "synthetic", "external", "internal") == ({"site": "external"},
                                                                              {"site": "internal"})
    with pytest.raises(ValueError, match="source_site and target_site are both 'internal': nothing is transferred"):
        sites("synthetic", scans, "synthetic", "internal", "internal")
    for source, target in (("internl", "external"), ("internal", "pretrain")):
        with pytest.raises(ValueError, match="is not a labelled site of 'synthetic'; its labelled sites are external, "
                                             "internal"):
            sites("synthetic", scans, "synthetic", source, target)


def test_03_trains_on_the_source_site_when_testing_on_another_dataset():
    """An audit of 03: with another target_dataset the transferred model trained on every site of the synthetic
    cohort pooled, while the figure recorded source_site 'internal'. The source's site holds whatever the target;
    the target dataset is read whole (its target_site, a site of the source's table, is not applied)."""
    scans = pd.DataFrame({"scan_id": ["a", "b", "c"], "site": ["internal", "external", "pretrain"]})
    assert pipeline.transfer_sites("synthetic", scans, "hosp", "internal", "external") == ({"site": "internal"}, None)
    assert pipeline.transfer_sites("synthetic", scans, "hosp", "external", "anything") == ({"site": "external"}, None)
    with pytest.raises(ValueError, match="site 'internl' is not a labelled site of 'synthetic'"):
        pipeline.transfer_sites("synthetic", scans, "hosp", "internl", "external")
    no_sites = scans.drop(columns="site")  # a hospital's export: nothing to filter, on either side
    assert pipeline.transfer_sites("hosp", no_sites, "hosp2", "internal", "external") == (None, None)
    assert pipeline.transfer_sites("hosp", no_sites, "hosp", "internal", "external") == (None, None)


@pytest.mark.parametrize("protocols, error", [
    ([], "name at least one of finetune"), (None, "name at least one of"),
    (["finetune", "linaer"], "'linaer' is not a protocol here; choose from finetune"),
    (["fewshot"], "'fewshot' is not a protocol here; choose from finetune, linear, attentive, abmil, scratch, "
                  "histogram"),  # and any protocol registered since (docs/extending.md)
    (["finetune", "scratch", "scratch"], "name each protocol once")])
def test_02s_protocols_are_checked_before_any_work(protocols, error):
    """A name given once was read letter by letter (papermill -p protocols scratch drew an empty figure), [] and
    None failed after the encoder was built, 'fewshot' after every K-shot run, a repeated name drew twice."""
    with pytest.raises(ValueError, match=re.escape(f"protocols {protocols!r}: {error}")):
        pipeline.check_protocols(protocols)


def test_02s_protocols_one_name_is_a_list_of_one():
    assert pipeline.check_protocols("scratch") == ["scratch"]
    assert pipeline.check_protocols(("finetune", "linear")) == ["finetune", "linear"]


def test_no_tasks_is_refused_not_read_as_the_default():
    """tasks=[] trained the default tasks in 02 and 03 (07's [] means the pretrained maps alone, 08's [] is refused)."""
    from fmct_lib.interpret.parts import candidate_tasks
    scans = pd.DataFrame({"scan_id": list("abcd"), "split": ["train", "train", "test", "test"], "ich": [1, 0, 1, 0]})
    with pytest.raises(ValueError, match=r"^tasks \[\]: name at least one task, or None for the dataset's \(tumor, "):
        candidate_tasks("synthetic", [], scans)
    assert candidate_tasks("synthetic", "ich", scans) == ["ich"]
    study = pipeline.Study("synthetic", get_profile("toy"), scans, Path("runs"), 0, "dino", None)
    with pytest.raises(ValueError, match=r"^tasks \[\]: name at least one task"):
        study.tasks([])
    assert study.tasks(None) == ["ich"]  # the default: the paper's tasks this table has, with test labels

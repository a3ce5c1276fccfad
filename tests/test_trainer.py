"""The training loop: data order, run configuration, kill-and-resume equality, an end-to-end toy run;
the method registry (a new method is one class and one registry line) and the cache ``pretrain`` reads."""
import json
import math
import os
import re
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fmct_lib.data.augment import mae_view
from fmct_lib.models.checkpoints import CheckpointError, load_checkpoint
from fmct_lib.models.vit3d import vit_from_config
from fmct_lib.config import get_profile
from fmct_lib.ssl.dino import DINOConfig
from fmct_lib.train import METHODS, get_method, pretrain_on, pretraining_scan_ids, run_config
from fmct_lib.train.loop import STATE_FILE, epoch_permutation, micro_batches
from _support import InMemoryVolumes, tiny_pretrain_dataset


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def volumes():
    return InMemoryVolumes(8, 37)


def test_micro_batches_partition_the_permutation():
    n, seed = 25, 5  # global batch 12: two steps per epoch, one scan left over
    lists = [micro_batches(n, seed, 1, 0, 2, 3, 2, r, 2) for r in range(2)]  # b=3, 2 processes, accum 2
    assert all(len(x) == 4 and all(len(b) == 3 for b in x) for x in lists)
    perm = epoch_permutation(n, seed, 1).tolist()
    # step s, micro m: rows [(s·2 + m)·6, +6) of the permutation; process r takes its 3 of them
    for s in range(2):
        for m in range(2):
            start = (s * 2 + m) * 6
            assert lists[0][s * 2 + m] + lists[1][s * 2 + m] == perm[start:start + 6]
    assert epoch_permutation(n, seed, 1).tolist() != epoch_permutation(n, seed, 2).tolist()  # reshuffled
    assert micro_batches(n, seed, 1, 1, 2, 3, 2, 0, 2) == lists[0][2:]  # resuming mid-epoch


def test_run_config_scales_lr_and_schedules():
    cfg = run_config("dino", "toy", n_scans=40, world_size=2, batch_size=4, accum_steps=2)
    assert cfg["global_batch"] == 16 and cfg["steps_per_epoch"] == 2 and cfg["total_steps"] == 4
    assert cfg["lr"] == pytest.approx(3e-4 * 16 / 256)
    assert cfg["warmup_steps"] == 2 and cfg["freeze_last_layer_steps"] == 2  # 1 of 2 epochs
    mae = run_config("mae", "paper", n_scans=10_000, batch_size=64, max_steps=1000)
    assert mae["lr"] == pytest.approx(1.5e-3 * 64 / 256) and mae["warmup_steps"] == 50  # 5% of steps
    # a profile may set its own rate per 256 scans (small batches, short schedules); the other method keeps the paper's
    fast = get_profile("toy").replace(pretrain_base_lr={"dino": 8e-3})
    assert run_config("dino", fast, n_scans=40, batch_size=16)["lr"] == pytest.approx(8e-3 * 16 / 256)
    assert run_config("mae", fast, n_scans=40, batch_size=16)["lr"] == pytest.approx(1.5e-3 * 16 / 256)
    # and its own number of epochs per method: the schedule (warm-up, frozen prototypes) follows
    longer = get_profile("toy").replace(pretrain_epochs_by_method={"dino": 4})
    dino = run_config("dino", longer, n_scans=40, batch_size=4)
    assert dino["total_steps"] == 4 * 10 and dino["warmup_steps"] == 10 and dino["freeze_last_layer_steps"] == 10
    assert run_config("mae", longer, n_scans=40, batch_size=4)["total_steps"] == 2 * 10  # toy's 2 epochs
    demo = get_profile("demo")
    # the demo pool (train split of 1,500 internal + 300 pretraining scans, ~1,440): 9 epochs of 90 steps
    assert demo.pretrain_method == "vicreg" and run_config("mae", demo, n_scans=1440)["total_steps"] == 9 * 90
    assert run_config("mae", demo, n_scans=1440)["lr"] == pytest.approx(1e-3)  # peak 1e-3 at batch 16
    with pytest.raises(ValueError, match="fewer than one global batch"):
        run_config("dino", "toy", n_scans=3)
    with pytest.raises(ValueError, match="unknown method"):
        run_config("simclr", "toy", n_scans=30)


# run_config's output, pinned: config.json must not change unnoticed, or existing run directories would no longer
# resume (``_check_or_write_config``). Last deliberate change: DINO's schedules set in epochs (issue 24), which
# replaced ``warmup_teacher_temp_fraction`` by ``warmup_teacher_temp_epochs`` (the toy profile's step counts kept).
PINNED_RUN_CONFIG = {
    "dino": {'accum_steps': 1, 'base_lr': 0.0003, 'batch_size': 4, 'betas': [0.9, 0.95], 'checkpoint_every': 10,
             'dino': {'centre_momentum': 0.9, 'clip_grad': 3.0, 'freeze_last_layer_epochs': 1,
                      'momentum_teacher': 0.996, 'n_global_crops': 2, 'n_local_crops': 3, 'student_temp': 0.1,
                      'teacher_temp': 0.07, 'warmup_teacher_temp': 0.04, 'warmup_teacher_temp_epochs': 0.6},
             'freeze_last_layer_steps': 10, 'global_batch': 4, 'lr': 4.6875e-06, 'method': 'dino',
             'min_lr': 4.6875e-09, 'n_scans': 40, 'seed': 0, 'steps_per_epoch': 10, 'teacher_temp_warmup_steps': 6,
             'total_steps': 20, 'warmup_steps': 10, 'weight_decay': 0.05, 'world_size': 1},
    "mae": {'accum_steps': 1, 'base_lr': 0.0015, 'batch_size': 4, 'betas': [0.9, 0.95], 'checkpoint_every': 10,
            'global_batch': 4, 'lr': 2.34375e-05, 'mask_ratio': 0.75, 'method': 'mae', 'min_lr': 2.34375e-08,
            'n_scans': 40, 'norm_pix_loss': False, 'seed': 0, 'steps_per_epoch': 10, 'total_steps': 20,
            'warmup_steps': 1, 'weight_decay': 0.05, 'world_size': 1},
    "dino_options": {'accum_steps': 2, 'base_lr': 0.0003, 'batch_size': 4, 'betas': [0.9, 0.95], 'checkpoint_every': 7,
                     'dino': {'centre_momentum': 0.9, 'clip_grad': 3.0, 'freeze_last_layer_epochs': 1,
                              'momentum_teacher': 0.996, 'n_global_crops': 2, 'n_local_crops': 2, 'student_temp': 0.1,
                              'teacher_temp': 0.04, 'warmup_teacher_temp': 0.04, 'warmup_teacher_temp_epochs': 0.6},
                     'freeze_last_layer_steps': 2, 'global_batch': 16, 'lr': 1.875e-05, 'method': 'dino',
                     'min_lr': 1.875e-08, 'n_scans': 40, 'seed': 3, 'steps_per_epoch': 2,
                     'teacher_temp_warmup_steps': 1, 'total_steps': 4, 'warmup_steps': 2, 'weight_decay': 0.05,
                     'world_size': 2},
    "mae_options": {'accum_steps': 1, 'base_lr': 0.0015, 'batch_size': 4, 'betas': [0.9, 0.95], 'checkpoint_every': 25,
                    'global_batch': 4, 'lr': 2.34375e-05, 'mask_ratio': 0.75, 'method': 'mae', 'min_lr': 2.34375e-08,
                    'n_scans': 100, 'norm_pix_loss': True, 'seed': 0, 'steps_per_epoch': 25, 'total_steps': 33,
                    'warmup_steps': 2, 'weight_decay': 0.05, 'world_size': 1},
}


def test_run_config_is_pinned():
    assert run_config("dino", "toy", n_scans=40) == PINNED_RUN_CONFIG["dino"]
    assert run_config("mae", "toy", n_scans=40) == PINNED_RUN_CONFIG["mae"]
    ref = {"n_local_crops": 2, "teacher_temp": 0.04}  # the authors' code (reference_code_facts §3.1)
    # a dict (laid over the profile's values) or the method's own options object (complete as it is)
    for options in (ref, DINOConfig(**ref, warmup_teacher_temp_epochs=0.6)):
        assert run_config("dino", "toy", n_scans=40, world_size=2, batch_size=4, accum_steps=2, seed=3,
                          checkpoint_every=7, options=options) == PINNED_RUN_CONFIG["dino_options"]
    assert run_config("mae", "toy", n_scans=100, batch_size=4, max_steps=33,
                      options={"norm_pix_loss": True}) == PINNED_RUN_CONFIG["mae_options"]


def _final_state(run_dir):
    return torch.load(run_dir / STATE_FILE, weights_only=True)


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, volumes, capsys):
    kwargs = dict(method="dino", profile="toy", seed=1, batch_size=2, max_steps=6, checkpoint_every=2,
                  progress=False, device="cpu")
    full = pretrain_on(volumes, run_dir=tmp_path / "full", **kwargs)

    def crash_after_step_3(step, row):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        pretrain_on(volumes, run_dir=tmp_path / "killed", on_step=crash_after_step_3, **kwargs)
    assert _final_state(tmp_path / "killed")["step"] == 2  # step 3 is lost and redone
    capsys.readouterr()
    pretrain_on(volumes, run_dir=tmp_path / "killed", **{**kwargs, "progress": True})
    assert f"pretrain dino: resumed at step 2 of 6 from {tmp_path / 'killed'}" in "".join(capsys.readouterr())

    a, b = _final_state(full), _final_state(tmp_path / "killed")
    assert a["step"] == b["step"] == 6
    for part in ("student", "teacher"):
        for k, v in a["task"][part].items():
            assert torch.allclose(v, b["task"][part][k], atol=1e-6, rtol=0), (part, k)
    assert torch.allclose(a["task"]["centre"], b["task"]["centre"], atol=1e-6)
    rows_a = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows_b] == list(range(1, 7))
    assert [r["loss"] for r in rows_a] == pytest.approx([r["loss"] for r in rows_b], abs=1e-6)
    enc_a = load_file(str(full / "encoder.safetensors"))
    enc_b = load_file(str(tmp_path / "killed" / "encoder.safetensors"))
    assert all(torch.allclose(enc_a[k], enc_b[k], atol=1e-6) for k in enc_a)
    # the same weights bit for bit (one machine), so the same file, whose sha256 names it in runs, caches and figures
    assert (full / "encoder.safetensors").read_bytes() == (tmp_path / "killed" / "encoder.safetensors").read_bytes()


def test_a_run_stopped_after_k_steps_keeps_its_schedules_and_resumes_to_the_uninterrupted_run(tmp_path, volumes):
    """``stop_after`` (the provenance test's replay of a run's first steps) ends a call early without shortening
    the run: its steps are the full run's, and resumed it ends where the full run ends."""
    kwargs = dict(method="dino", profile="toy", seed=1, batch_size=2, max_steps=6, checkpoint_every=4,
                  progress=False, device="cpu")
    full = pretrain_on(volumes, run_dir=tmp_path / "full", **kwargs)
    stopped = pretrain_on(volumes, run_dir=tmp_path / "stopped", stop_after=3, **kwargs)
    assert _final_state(stopped)["step"] == 3  # saved at the stop, though not a checkpoint step
    assert not (stopped / "done").exists() and not (stopped / "encoder.safetensors").exists()
    rows_full = pd.read_csv(full / "metrics.csv")
    rows_stopped = pd.read_csv(stopped / "metrics.csv")
    assert list(rows_stopped["step"]) == [1, 2, 3]
    # the learning rate, momentum and teacher temperature follow the run's 6 steps, not 3
    for column in ("loss", "lr", "momentum", "teacher_temp"):
        assert list(rows_stopped[column]) == pytest.approx(list(rows_full[column][:3]), rel=1e-6), column
    pretrain_on(volumes, run_dir=stopped, **kwargs)
    a, b = _final_state(full), _final_state(stopped)
    assert a["step"] == b["step"] == 6
    for part in ("student", "teacher"):
        for k, v in a["task"][part].items():
            assert torch.allclose(v, b["task"][part][k], atol=1e-6, rtol=0), (part, k)
    assert list(pd.read_csv(stopped / "metrics.csv")["loss"]) == pytest.approx(list(rows_full["loss"]), abs=1e-6)
    enc_a, enc_b = load_file(str(full / "encoder.safetensors")), load_file(str(stopped / "encoder.safetensors"))
    assert all(torch.allclose(enc_a[k], enc_b[k], atol=1e-6) for k in enc_a)


def test_mae_resume_equals_an_uninterrupted_run(tmp_path, volumes):
    kwargs = dict(method="mae", profile="toy", seed=2, batch_size=4, max_steps=4, checkpoint_every=1,
                  progress=False, device="cpu")
    full = pretrain_on(volumes, run_dir=tmp_path / "full", **kwargs)

    def crash(step, row):
        if step == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        pretrain_on(volumes, run_dir=tmp_path / "killed", on_step=crash, **kwargs)
    pretrain_on(volumes, run_dir=tmp_path / "killed", **kwargs)
    a, b = _final_state(full)["task"]["mae"], _final_state(tmp_path / "killed")["task"]["mae"]
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def test_toy_run_end_to_end(tmp_path, volumes):
    run_dir = pretrain_on(volumes, method="dino", profile="toy", run_dir=tmp_path / "run", batch_size=4,
                          progress=False, device="cpu", meta={"dataset": "memory", "fraction": 1.0})
    config = json.loads((run_dir / "config.json").read_text())
    total = config["run"]["total_steps"]
    assert total == 2 * 2  # toy: 2 epochs of 8 scans in batches of 4
    metrics = pd.read_csv(run_dir / "metrics.csv")
    assert list(metrics["step"]) == list(range(1, total + 1))
    assert metrics[["loss", "lr", "momentum", "teacher_entropy", "kl_to_uniform", "centre_norm",
                    "throughput"]].notna().all().all()
    assert (metrics["momentum"].diff().dropna() > 0).all()  # cosine ramp towards 1
    assert (run_dir / "done").exists()
    encoder, enc_config = load_checkpoint(run_dir / "encoder.safetensors")
    assert enc_config["method"] == "dino" and enc_config["dataset"] == "memory"
    state = _final_state(run_dir)
    teacher_backbone = {k[len("backbone."):]: v for k, v in state["task"]["teacher"].items()
                        if k.startswith("backbone.")}
    assert all(torch.equal(encoder.state_dict()[k], teacher_backbone[k]) for k in teacher_backbone)
    assert encoder(torch.rand(1, 3, 16, 16, 16)).shape == (1, 48)
    # a finished run is returned as is
    stamp = (run_dir / "encoder.safetensors").stat().st_mtime_ns
    assert pretrain_on(volumes, method="dino", profile="toy", run_dir=run_dir, batch_size=4, progress=False,
                       meta={"dataset": "memory", "fraction": 1.0}) == run_dir
    assert (run_dir / "encoder.safetensors").stat().st_mtime_ns == stamp
    # ... also when only downstream settings changed since: pretraining does not read them
    downstream = get_profile("toy").replace(finetune_patience=9, fewshot_resamples=2, n_bootstrap=7)
    assert pretrain_on(volumes, method="dino", profile=downstream, run_dir=run_dir, batch_size=4, progress=False,
                       meta={"dataset": "memory", "fraction": 1.0}) == run_dir
    # a finished run made with another configuration is refused, not returned as if it were this one
    with pytest.raises(ValueError, match=r"another configuration \(run.batch_size: 4 → 2; run.total_steps: 4 → 8; "
                                         r"run.freeze_last_layer_steps: 2 → 4; .*start over in it \(fmct pretrain "
                                         r"--restart; pretrain\(resume=False\)\)"):
        pretrain_on(volumes, method="dino", profile="toy", run_dir=run_dir, batch_size=2, progress=False,
                    meta={"dataset": "memory", "fraction": 1.0})
    assert (run_dir / "encoder.safetensors").stat().st_mtime_ns == stamp
    # and so is an unfinished one: a different configuration in the same directory is never mixed
    (run_dir / "done").unlink()
    with pytest.raises(ValueError, match="another configuration"):
        pretrain_on(volumes, method="dino", profile="toy", run_dir=run_dir, batch_size=2, progress=False)
    # how often it checkpoints is no part of what it computes: another --checkpoint-every resumes it
    (run_dir / "done").write_text("{}")
    assert pretrain_on(volumes, method="dino", profile="toy", run_dir=run_dir, batch_size=4, progress=False,
                       checkpoint_every=1, meta={"dataset": "memory", "fraction": 1.0}) == run_dir


def test_pretraining_set_is_train_split_internal_and_nested(tmp_path, monkeypatch):
    monkeypatch.setenv("FMCT_DATA", str(tmp_path))
    rows = []
    for i in range(60):
        rows.append({"scan_id": f"scan{i}", "patient_id": f"p{i // 2}", "path": f"x{i}.nii",
                     "split": "train" if i < 40 else ("val" if i < 50 else "test"),
                     "manufacturer": "A", "slice_thickness_mm": 1.0, "spacing": "1,1,1",
                     "site": "external" if 30 <= i < 40 else "internal"})
    (tmp_path / "cohort").mkdir()
    pd.DataFrame(rows).to_csv(tmp_path / "cohort" / "scans.csv", index=False)
    full = pretraining_scan_ids("cohort", 1.0, seed=0)
    assert sorted(full) == sorted(f"scan{i}" for i in range(30))
    small, mid = set(pretraining_scan_ids("cohort", 0.1, 0)), set(pretraining_scan_ids("cohort", 0.3, 0))
    assert small < mid < set(full)
    # whole patients: both scans of a patient go together
    assert all({f"scan{2 * (int(s[4:]) // 2)}", f"scan{2 * (int(s[4:]) // 2) + 1}"} <= mid for s in mid)


TINY_CLI = ["pretrain", "--method", "mae", "--dataset", "tiny", "--profile", "toy", "--steps", "2",
            "--batch-size", "2", "--workers", "0", "--no-progress"]


def test_cli_pretrains_a_dataset_through_the_cache(isolated_roots, monkeypatch):
    import fmct_lib.pipeline as pipeline
    from fmct_lib.cli import main
    from fmct_lib.data.cache import build_cache
    from fmct_lib.data.preprocess import paper_spec

    tiny_pretrain_dataset(isolated_roots.data / "tiny")
    built = []

    def ensure_cache(dataset, profile):  # pipeline.ensure_cache, in this process (CI's two cores)
        built.append((dataset, profile))
        return build_cache(dataset, paper_spec(profile), workers=1)

    monkeypatch.setattr(pipeline, "ensure_cache", ensure_cache)
    assert main(TINY_CLI) == 0
    assert built == [("tiny", "toy")]  # one process: the command line builds the cache first
    run_dir = isolated_roots.runs / "pretrain" / "tiny_mae_f1_toy_s0_steps2"
    assert (run_dir / "done").exists()
    _, config = load_checkpoint(run_dir / "encoder.safetensors")
    assert config["dataset"] == "tiny" and config["fraction"] == 1.0 and config["method"] == "mae"
    assert config["preprocess"] == paper_spec("toy").to_dict()
    assert config["n_scans"] == 5 and config["n_rejected"] == 1  # the unreadable scan is skipped, not fatal


def test_pretrain_reads_the_cache_and_never_builds_it(isolated_roots, monkeypatch, capsys):
    from fmct_lib.cli import main
    from fmct_lib.data.cache import build_cache, read_index
    from fmct_lib.data.preprocess import paper_spec
    from fmct_lib.paths import StageMissing
    from fmct_lib.train import pretrain

    tiny_pretrain_dataset(isolated_roots.data / "tiny")
    spec = paper_spec("toy")
    args = dict(method="mae", dataset="tiny", profile="toy", max_steps=2, batch_size=2, num_workers=0,
                progress=False)
    with pytest.raises(StageMissing, match="fmct cache --dataset tiny"):  # no cache at all (read_index)
        pretrain(**args)
    build_cache("tiny", spec, scans=["s0", "s1", "s2"], workers=1)  # 3 of the 6 pretraining scans
    with pytest.raises(StageMissing, match=r"lacks 3 of the 6 pretraining scans.*\n    fmct cache --dataset tiny "
                                           r"--profile toy$"):
        pretrain(**args)
    # under torchrun (WORLD_SIZE > 1) the command line leaves the cache alone and says which command builds it
    monkeypatch.setenv("WORLD_SIZE", "2")
    capsys.readouterr()
    assert main(TINY_CLI) == 2   # one line on stderr, not a traceback
    err = capsys.readouterr().err
    assert err.startswith("fmct pretrain: error: ") and "fmct cache --dataset tiny --profile toy" in err
    monkeypatch.setenv("FMCT_TRACEBACK", "1")   # the exception itself, for debugging
    with pytest.raises(StageMissing, match="fmct cache --dataset tiny --profile toy"):
        main(TINY_CLI)
    assert sorted(read_index("tiny", spec)["scan_id"]) == ["s0", "s1", "s2"]
    assert not (isolated_roots.runs / "pretrain").exists()


def test_reference_code_crop_count_is_an_option(tmp_path, volumes):
    run_dir = pretrain_on(volumes, method="dino", profile="toy", run_dir=tmp_path / "ref", batch_size=4,
                          max_steps=1, progress=False, options={"n_local_crops": 2, "teacher_temp": 0.04})
    config = json.loads((run_dir / "config.json").read_text())
    assert config["augment"]["n_local"] == 2 and config["run"]["dino"]["teacher_temp"] == 0.04
    with pytest.raises(ValueError, match="'dino' has no option 'norm_pix_loss'; its options are n_global_crops"):
        run_config("dino", "toy", n_scans=30, options={"norm_pix_loss": True})
    with pytest.raises(ValueError, match="options of method 'mae' are a dict or a MAEOptions"):
        run_config("mae", "toy", n_scans=30, options=DINOConfig())


@dataclass(frozen=True)
class TinyOptions:
    scale: float = 1.0


class TinyMethod:
    """A whole pretraining method for the registry: shrink the cls token of one MAE view (no paper behind it)."""

    name, base_lr, Options, exported = "tiny", 1e-3, TinyOptions, "the encoder"
    warmup_steps = staticmethod(lambda profile, steps_per_epoch, total_steps: 0)
    run_entries = staticmethod(lambda options, total_steps, steps_per_epoch: {"scale": options.scale})
    crops = staticmethod(lambda run: {"n_local": 0})

    def __init__(self, profile, augment, run):
        self.augment, self.scale = augment, run["scale"]
        self.vit = vit_from_config(profile.model)

    @property
    def model(self):
        return self.vit

    def to(self, device):
        self.vit.to(device)
        return self

    def micro_step(self, model, canvases, generator, rows, global_batch, step, autocast):
        view = mae_view(canvases, self.augment, generator, rows, global_batch)
        with autocast():
            return self.scale * model(view).pow(2).mean()

    def before_optimizer(self, step):
        pass

    def after_step(self, step):
        return {}

    def state_dict(self):
        return {"vit": self.vit.state_dict()}

    def load_state_dict(self, state):
        self.vit.load_state_dict(state["vit"])

    def encoder(self):
        return self.vit


def test_a_new_method_is_one_class_and_one_registry_line(tmp_path, volumes, monkeypatch):
    from safetensors import safe_open
    monkeypatch.setitem(METHODS, "tiny", TinyMethod)
    run_dir = pretrain_on(volumes, method="tiny", profile="toy", run_dir=tmp_path / "tiny", batch_size=4,
                          max_steps=2, progress=False, device="cpu", options={"scale": 0.5})
    config = json.loads((run_dir / "config.json").read_text())
    run = config["run"]
    assert run["method"] == "tiny" and run["scale"] == 0.5 and run["warmup_steps"] == 0
    assert run["lr"] == pytest.approx(1e-3 * 4 / 256)
    assert config["augment"]["n_local"] == 0  # the method's crops
    rows = pd.read_csv(run_dir / "metrics.csv")
    assert list(rows["step"]) == [1, 2] and rows["loss"].notna().all()
    encoder, enc_config = load_checkpoint(run_dir / "encoder.safetensors")
    assert enc_config["method"] == "tiny" and encoder(torch.rand(1, 3, 16, 16, 16)).shape == (1, 48)
    with safe_open(str(run_dir / "encoder.safetensors"), "pt") as f:
        assert f.metadata()["exported"] == "the encoder"
    with pytest.raises(ValueError, match="'tiny' has no option 'n_local_crops'; its options are scale"):
        run_config("tiny", "toy", n_scans=8, options={"n_local_crops": 2})


def test_the_registry_drives_the_command_line(monkeypatch, capsys):
    from fmct_lib.cli import build_parser, main
    from fmct_lib.cli.pretrain import parse_options

    def method_choices():
        parser = build_parser(load="pretrain")
        sub = next(a for a in parser._actions if a.dest == "command").choices["pretrain"]
        return next(a for a in sub._actions if a.dest == "method").choices

    registered = list(METHODS)  # the paper's two and our control first; a method a user adds after them
    assert method_choices() == registered and registered[:3] == ["dino", "mae", "vicreg"]
    with pytest.raises(ValueError, match="unknown method 'simclr'; the known methods are dino, mae, vicreg"):
        get_method("simclr")
    monkeypatch.setitem(METHODS, "tiny", TinyMethod)
    assert method_choices() == [*registered, "tiny"]
    args = build_parser(load="pretrain").parse_args(["pretrain", "--method", "tiny", "--option", "scale=0.5"])
    assert parse_options(args.method, args.options) == {"scale": 0.5}
    # --option KEY=VALUE: the value takes the type of the option's default
    assert parse_options("dino", [("n_local_crops", "2"), ("teacher_temp", "0.04")]) == \
        {"n_local_crops": 2, "teacher_temp": 0.04}
    assert parse_options("mae", [("norm_pix_loss", "true")]) == {"norm_pix_loss": True}
    with pytest.raises(ValueError, match="expected true or false"):
        parse_options("mae", [("norm_pix_loss", "maybe")])
    # before any work is done (the dataset is not even looked for): one line, exit 2
    assert main(["pretrain", "--method", "dino", "--option", "norm_pix_loss=true", "--dataset", "nowhere"]) == 2
    assert "'dino' has no option 'norm_pix_loss'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        build_parser(load="pretrain").parse_args(["pretrain", "--option", "no-equals-sign"])


def test_dino_with_sinkhorn_centring_and_koleo_trains_and_logs_them(tmp_path, volumes):
    run_dir = pretrain_on(volumes, method="dino", profile="toy", run_dir=tmp_path / "v2", batch_size=4, max_steps=2,
                          progress=False, device="cpu", options={"centring": "sinkhorn", "koleo_weight": 0.1})
    config = json.loads((run_dir / "config.json").read_text())["run"]["dino"]
    assert config["centring"] == "sinkhorn" and config["koleo_weight"] == 0.1
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["step"] > 0]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) and r["koleo"] > 0 for r in steps)
    # the logged entropy is that of the Sinkhorn targets: between 0 and ln K
    assert all(0 < r["teacher_entropy"] <= math.log(get_profile("toy").dino_out_dim) + 1e-6 for r in steps)


def test_no_pretraining_code_reads_a_downstream_setting():
    """``Profile.pretraining_dict`` leaves ``DOWNSTREAM_FIELDS`` out of a pretraining run's record; that is only
    honest while no pretraining code reads them (a new reader must take its field off the list)."""
    import re
    from dataclasses import fields
    from pathlib import Path

    import fmct_lib.train
    from fmct_lib.config import DOWNSTREAM_FIELDS, Profile
    assert DOWNSTREAM_FIELDS < {f.name for f in fields(Profile)}
    demo = get_profile("demo")
    assert demo.replace(finetune_patience=99).pretraining_dict() == demo.pretraining_dict()
    assert demo.replace(pretrain_epochs=99).pretraining_dict() != demo.pretraining_dict()
    for source in Path(fmct_lib.train.__file__).parent.rglob("*.py"):
        read = set(re.findall(r"\.(\w+)", source.read_text())) & DOWNSTREAM_FIELDS
        assert not read, f"{source} reads {sorted(read)}"


# ------------------------------------------------------------------------------------ resume, robustly
RESUMABLE = dict(method="mae", profile="toy", seed=2, batch_size=4, max_steps=4, checkpoint_every=1, progress=False,
                 device="cpu")


def _mae_weights_equal(a, b):
    a, b = _final_state(a)["task"]["mae"], _final_state(b)["task"]["mae"]
    return all(torch.equal(a[k], b[k]) for k in a)


def test_resume_on_a_gpu_reads_the_saved_rng_states_onto_the_cpu(tmp_path, volumes, monkeypatch):
    """On a GPU the run's device is ``cuda:N``, and ``torch.load(map_location=<that device>)`` once moved the saved
    RNG states there, where ``torch.set_rng_state`` refuses them. Here the device is the CPU, so any
    ``torch.device`` given to ``torch.load`` as the location is sent to ``meta`` instead, standing in for the GPU."""
    full = pretrain_on(volumes, run_dir=tmp_path / "full", **RESUMABLE)
    resumed = pretrain_on(volumes, run_dir=tmp_path / "resumed", stop_after=2, **RESUMABLE)
    load = torch.load

    def load_as_on_a_gpu(f, map_location=None, **kwargs):
        return load(f, map_location="meta" if isinstance(map_location, torch.device) else map_location, **kwargs)

    monkeypatch.setattr(torch, "load", load_as_on_a_gpu)
    pretrain_on(volumes, run_dir=resumed, **RESUMABLE)
    monkeypatch.undo()
    assert _final_state(resumed)["step"] == 4 and _mae_weights_equal(full, resumed)


def test_a_damaged_resume_state_is_an_error_naming_it_and_the_way_out(tmp_path, volumes):
    run_dir = pretrain_on(volumes, run_dir=tmp_path / "run", stop_after=1, **RESUMABLE)
    state = run_dir / STATE_FILE
    whole = state.read_bytes()
    for damaged in (whole[:len(whole) // 2], b""):  # cut short (a full disk, a torn copy), empty
        state.write_bytes(damaged)
        with pytest.raises(CheckpointError, match=rf"^{re.escape(str(state))}: .*--restart"):
            pretrain_on(volumes, run_dir=run_dir, **RESUMABLE)
    pretrain_on(volumes, run_dir=run_dir, resume=False, **RESUMABLE)  # the way out it names
    assert _final_state(run_dir)["step"] == 4


def test_a_metrics_line_cut_short_at_the_end_is_dropped_on_resume(tmp_path, volumes):
    """A kill in the middle of appending a row leaves its line cut short, past the last checkpoint: the resumed run
    drops it (with a warning) and logs what the uninterrupted run logs. A bad line before the last one is damage,
    not an interrupted write: an error naming the file and the line."""
    full = pretrain_on(volumes, run_dir=tmp_path / "full", **RESUMABLE)
    run_dir = pretrain_on(volumes, run_dir=tmp_path / "torn", stop_after=2, **RESUMABLE)
    log = run_dir / "metrics.jsonl"
    with open(log, "a") as f:
        f.write('{"step": 3, "epoch": 1, "lo')
    with pytest.warns(UserWarning, match=rf"{re.escape(str(log))}: dropped line 3, the last, cut short"):
        pretrain_on(volumes, run_dir=run_dir, **RESUMABLE)
    rows = lambda d: [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert [r["step"] for r in rows(run_dir)] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows(run_dir)] == [r["loss"] for r in rows(full)]

    lines = log.read_text().splitlines()
    log.write_text("\n".join([lines[0], "{not json", *lines[1:]]) + "\n")
    (run_dir / "done").unlink()
    with pytest.raises(ValueError, match=rf"{re.escape(str(log))}, line 2: not a metrics row"):
        pretrain_on(volumes, run_dir=run_dir, **RESUMABLE)


def test_the_done_marker_is_written_atomically(tmp_path, volumes, monkeypatch):
    """The marker that makes ``pretrain`` skip a run appears whole or not at all: by a rename, like every other
    file of the run directory."""
    renamed, replace = [], os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: (renamed.append(os.path.basename(dst)), replace(src, dst))[1])
    run_dir = pretrain_on(volumes, run_dir=tmp_path / "run", **dict(RESUMABLE, max_steps=1))
    assert "done" in renamed and json.loads((run_dir / "done").read_text())["steps"] == 1


def test_a_koleo_run_logs_its_koleo_term_in_both_logs(tmp_path, volumes):
    run = pretrain_on(volumes, run_dir=tmp_path / "koleo", method="dino", profile="toy", seed=1, batch_size=2,
                      max_steps=2, options={"koleo_weight": 0.1}, progress=False, device="cpu")
    jsonl = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    csv = pd.read_csv(run / "metrics.csv").set_index("step")
    logged = [r for r in jsonl if "koleo" in r]
    assert len(logged) == 2 and all(math.isfinite(r["koleo"]) for r in logged)
    assert csv.loc[[1, 2], "koleo"].tolist() == pytest.approx([r["koleo"] for r in logged])


def test_a_run_saved_without_loss_scaling_resumes_where_the_device_needs_it(tmp_path, volumes, monkeypatch):
    """A run saved on a CPU (or a bf16 GPU) holds an empty scaler state; resumed on an fp16 GPU (a V100, a T4),
    where the loss is scaled, it starts a fresh scaler instead of failing. Loss scaling stands in for the GPU."""
    import contextlib
    from fmct_lib.train import loop
    kwargs = dict(method="mae", profile="toy", seed=1, batch_size=2, progress=False, device="cpu")
    run = pretrain_on(volumes, run_dir=tmp_path / "run", max_steps=4, stop_after=2, **kwargs)
    assert torch.load(run / STATE_FILE, weights_only=True)["scaler"] == {}
    monkeypatch.setattr(loop, "autocast_for", lambda device: (contextlib.nullcontext, True))
    pretrain_on(volumes, run_dir=tmp_path / "run", max_steps=4, **kwargs)
    assert torch.load(run / STATE_FILE, weights_only=True)["scaler"]["scale"] > 0  # scaled from step 3 on


def test_a_resume_on_fewer_gpus_restores_the_random_states_they_have(monkeypatch):
    """A state saved on a machine with 2 GPUs restores GPU 0's generator on a machine with 1 (torch's
    ``set_rng_state_all`` would index a second GPU that is not there); CUDA stands in by monkeypatching."""
    from fmct_lib.train import loop
    generator = torch.Generator().manual_seed(0)
    state = loop._rng_state(generator)
    state["cuda"] = [torch.zeros(16, dtype=torch.uint8), torch.ones(16, dtype=torch.uint8)]
    restored = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, device="cuda": restored.append((int(s[0]), device)))
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: restored.extend((int(s[0]), i) for i, s in
                                                                                         enumerate(states)))
    loop._set_rng_state(state, generator)
    assert restored == [(0, 0)]


def test_cli_no_monitor_skips_the_validation_score(isolated_roots, monkeypatch):
    """``--no-monitor``: no kNN score at step 0 or any epoch end (under torchrun rank 0 computes it while every
    other process waits); by default the log has the monitor's step-0 row."""
    import fmct_lib.pipeline as pipeline
    from fmct_lib.cli import main
    from fmct_lib.data.cache import build_cache
    from fmct_lib.data.preprocess import paper_spec

    tiny_pretrain_dataset(isolated_roots.data / "tiny")
    monkeypatch.setattr(pipeline, "ensure_cache", lambda d, p: build_cache(d, paper_spec(p), workers=1))
    logged = {}
    for flags in ([], ["--no-monitor"]):
        run_dir = isolated_roots.runs / f"run{len(flags)}"
        assert main([*TINY_CLI, "--run-dir", str(run_dir), *flags]) == 0
        logged[tuple(flags)] = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert logged[()][0]["step"] == 0 and "knn_auroc" in logged[()][0]  # the monitor's row before the first step
    assert [r["step"] for r in logged[("--no-monitor",)]] == [1, 2]
    assert not any("knn_auroc" in r for r in logged[("--no-monitor",)])

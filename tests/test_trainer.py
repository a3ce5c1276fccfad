"""The training loop: data order, run configuration, kill-and-resume equality, an end-to-end toy run."""
import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from fmct_lib.models.checkpoints import load_checkpoint
from fmct_lib.config import get_profile
from fmct_lib.train import pretrain_on, pretraining_scan_ids, run_config
from fmct_lib.train.loop import STATE_FILE, epoch_permutation, micro_batches
from _support import InMemoryVolumes


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
    assert demo.pretrain_method == "mae" and run_config("mae", demo, n_scans=1440)["total_steps"] == 9 * 90
    assert run_config("mae", demo, n_scans=1440)["lr"] == pytest.approx(1e-3)  # peak 1e-3 at batch 16
    with pytest.raises(ValueError, match="fewer than one global batch"):
        run_config("dino", "toy", n_scans=3)
    with pytest.raises(ValueError, match="unknown method"):
        run_config("simclr", "toy", n_scans=30)


def _final_state(run_dir):
    return torch.load(run_dir / STATE_FILE, weights_only=True)


def test_kill_and_resume_equals_an_uninterrupted_run(tmp_path, volumes):
    kwargs = dict(method="dino", profile="toy", seed=1, batch_size=2, max_steps=6, checkpoint_every=2,
                  progress=False, device="cpu")
    full = pretrain_on(volumes, run_dir=tmp_path / "full", **kwargs)

    def crash_after_step_3(step, row):
        if step == 3:
            raise KeyboardInterrupt("simulated kill")

    with pytest.raises(KeyboardInterrupt):
        pretrain_on(volumes, run_dir=tmp_path / "killed", on_step=crash_after_step_3, **kwargs)
    assert _final_state(tmp_path / "killed")["step"] == 2  # step 3 is lost and redone
    pretrain_on(volumes, run_dir=tmp_path / "killed", **kwargs)

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
    assert pretrain_on(volumes, method="dino", profile="toy", run_dir=run_dir, batch_size=4, progress=False) == run_dir
    assert (run_dir / "encoder.safetensors").stat().st_mtime_ns == stamp
    # a different configuration in the same directory is refused, not silently mixed
    (run_dir / "done").unlink()
    with pytest.raises(ValueError, match="different configuration"):
        pretrain_on(volumes, method="dino", profile="toy", run_dir=run_dir, batch_size=2, progress=False)


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


def test_cli_pretrains_a_dataset_through_the_cache(tmp_path, isolated_roots):
    import nibabel as nib
    import numpy as np

    from fmct_lib.cli import main
    from fmct_lib.data.cache import build_cache
    from fmct_lib.preprocess import paper_spec

    folder = tmp_path / "data" / "tiny"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(6):
        hu = np.full((24, 24, 12), -1000, np.int16)
        hu[4:20, 4:20, 2:10] = rng.integers(0, 80, (16, 16, 8))  # a "head" of soft tissue
        nib.save(nib.Nifti1Image(hu, np.diag([4.0, 4.0, 8.0, 1.0])), folder / f"s{i}.nii")
        rows.append({"scan_id": f"s{i}", "patient_id": f"p{i}", "path": f"s{i}.nii",
                     "split": "test" if i == 5 else "train", "manufacturer": "A", "slice_thickness_mm": 8.0,
                     "spacing": "4,4,8"})
    rows.append({**rows[0], "scan_id": "broken", "patient_id": "p9", "path": "missing.nii", "split": "train"})
    pd.DataFrame(rows).to_csv(folder / "scans.csv", index=False)
    build_cache("tiny", paper_spec("toy"), workers=1)  # in-process here; pretrain finds it built

    assert main(["pretrain", "--method", "mae", "--dataset", "tiny", "--profile", "toy", "--steps", "2",
                 "--batch-size", "2", "--workers", "0", "--no-progress"]) == 0
    run_dir = tmp_path / "runs" / "pretrain" / "tiny_mae_f1_toy_s0_steps2"
    assert (run_dir / "done").exists()
    _, config = load_checkpoint(run_dir / "encoder.safetensors")
    assert config["dataset"] == "tiny" and config["fraction"] == 1.0 and config["method"] == "mae"
    assert config["preprocess"] == paper_spec("toy").to_dict()
    assert config["n_scans"] == 5 and config["n_rejected"] == 1  # the unreadable scan is skipped, not fatal


def test_reference_code_crop_count_is_an_option(tmp_path, volumes):
    from fmct_lib.ssl.dino import DINOConfig
    run_dir = pretrain_on(volumes, method="dino", profile="toy", run_dir=tmp_path / "ref", batch_size=4,
                          max_steps=1, progress=False, dino=DINOConfig(n_local_crops=2, teacher_temp=0.04))
    config = json.loads((run_dir / "config.json").read_text())
    assert config["augment"]["n_local"] == 2 and config["run"]["dino"]["teacher_temp"] == 0.04
    with pytest.raises(ValueError, match="MAE option"):
        run_config("dino", "toy", n_scans=30, norm_pix_loss=True)

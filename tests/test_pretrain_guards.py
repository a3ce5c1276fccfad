"""What a pretraining run refuses, so that nothing wrong passes in silence: a diverged loss, another set of
scans under a run, a stale cache entry, numbers out of range; and what it cleans up after a kill."""
import math
import os

import pytest
import torch

from fmct_lib.cli import main
from fmct_lib.models.checkpoints import CheckpointError, load_encoder
from fmct_lib.ssl.dino import DINOConfig
from fmct_lib.ssl.health import representation_health
from fmct_lib.train import get_method, pretrain_on, run_config
from fmct_lib.train.loop import STATE_FILE, TrainingDiverged
from _support import InMemoryVolumes, tiny_pretrain_dataset

pytestmark = pytest.mark.usefixtures("one_thread")

RUN = dict(method="mae", profile="toy", batch_size=2, progress=False, device="cpu")
TINY_CLI = ["pretrain", "--method", "mae", "--dataset", "tiny", "--profile", "toy", "--steps", "2",
            "--batch-size", "2", "--workers", "0", "--no-progress"]


@pytest.fixture(scope="module")
def volumes():
    return InMemoryVolumes(6, 37)


def test_a_loss_that_is_not_finite_stops_the_run_before_it_is_applied_or_saved(tmp_path, volumes, monkeypatch):
    """Step 3's loss is NaN: the run stops there with one message naming the step and the last resume state
    (step 2), which keeps the weights of step 2; no encoder, no ``done``. It used to train on and export NaN."""
    mae = get_method("mae")
    micro_step = mae.micro_step

    def nan_from_step_3(self, model, canvases, generator, rows, n, step, autocast):
        loss = micro_step(self, model, canvases, generator, rows, n, step, autocast)
        return loss * math.nan if step >= 2 else loss  # ``step`` counts from 0

    monkeypatch.setattr(mae, "micro_step", nan_from_step_3)
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=rf"{run_dir}: pretraining diverged: the loss of step 3 is nan "
                                               rf"\(not finite\).*holds step 2, before it"):
        pretrain_on(volumes, run_dir=run_dir, max_steps=6, checkpoint_every=1, **RUN)
    state = torch.load(run_dir / STATE_FILE, weights_only=True)
    assert state["step"] == 2
    assert all(torch.isfinite(v).all() for v in state["task"]["mae"].values() if v.is_floating_point())
    assert not (run_dir / "encoder.safetensors").exists() and not (run_dir / "done").exists()

    with pytest.raises(TrainingDiverged, match="no resume state was written"):  # diverged before the first one
        pretrain_on(volumes, run_dir=tmp_path / "early", max_steps=6, checkpoint_every=5, **RUN)


def test_the_health_signals_of_features_that_are_not_finite_are_nan_not_a_crash():
    z = torch.randn(8, 16)
    assert all(math.isfinite(v) for v in representation_health(z).values())
    z[3, 2] = math.nan
    assert all(math.isnan(v) for v in representation_health(z).values())  # svdvals raised on it before


def test_an_encoder_file_with_nan_weights_or_a_resume_state_is_refused(tmp_path, volumes):
    run_dir = pretrain_on(volumes, run_dir=tmp_path / "run", max_steps=2, checkpoint_every=1, **RUN)
    load_encoder(run_dir / "encoder.safetensors")  # a good one loads
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open
    with safe_open(str(run_dir / "encoder.safetensors"), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(str(run_dir / "encoder.safetensors"))
    tensors["blocks.0.attn.qkv.weight"][0, 0] = math.nan
    save_file(tensors, str(tmp_path / "nan.safetensors"), metadata=metadata)
    with pytest.raises(CheckpointError, match=r"nan.safetensors: 1 of its \d+ tensors hold NaN or infinite values "
                                              r"\(\['blocks.0.attn.qkv.weight'\]\): the training that wrote it diverged"):
        load_encoder(tmp_path / "nan.safetensors")
    torch.save(torch.load(run_dir / STATE_FILE, weights_only=True), tmp_path / "state_last.pt")
    with pytest.raises(CheckpointError, match=r"the resume state of an fmct pretraining run \(step 2\), not an "
                                              r"encoder"):
        load_encoder(tmp_path / "state_last.pt")


def test_a_run_is_never_resumed_or_reused_on_another_set_of_scans(tmp_path, volumes):
    ids = [f"s{i}" for i in range(len(volumes))]
    run_dir = pretrain_on(volumes, run_dir=tmp_path / "run", max_steps=2, scan_ids=ids, **RUN)
    assert (run_dir / "scans.txt").read_text().split() == ids
    assert pretrain_on(volumes, run_dir=run_dir, max_steps=2, scan_ids=ids[::-1], **RUN) == run_dir  # same set
    changed = ids[:-1] + ["s9"]  # one scan re-ingested as another, the count unchanged
    with pytest.raises(ValueError, match=r"scans.txt: the run trained on other scans than the dataset gives now "
                                         r"\(1 no longer there, e.g. \['s5'\]; 1 new, e.g. \['s9'\]\).*--restart"):
        pretrain_on(volumes, run_dir=run_dir, max_steps=2, scan_ids=changed, **RUN)
    (run_dir / "done").unlink()  # unfinished: resuming on the new set is refused too
    with pytest.raises(ValueError, match="other scans than the dataset gives now"):
        pretrain_on(volumes, run_dir=run_dir, max_steps=2, scan_ids=changed, **RUN)
    pretrain_on(volumes, run_dir=run_dir, max_steps=2, scan_ids=changed, resume=False, **RUN)  # started over
    assert (run_dir / "scans.txt").read_text().split() == changed
    # a finished run made before scans.txt existed is reused as it was
    (run_dir / "scans.txt").unlink()
    assert pretrain_on(volumes, run_dir=run_dir, max_steps=2, scan_ids=ids, **RUN) == run_dir
    assert not (run_dir / "scans.txt").exists()


def test_a_scan_reingested_since_it_was_cached_is_not_pretrained_on(isolated_roots):
    """torchrun's processes only read the cache; a volume changed under its scan id must be cached again first
    (it used to train on the old canvas in silence)."""
    import nibabel as nib
    import numpy as np
    from fmct_lib.data.cache import build_cache, stale_scans
    from fmct_lib.data.preprocess import paper_spec
    from fmct_lib.paths import StageMissing
    from fmct_lib.train import pretrain

    folder = isolated_roots.data / "tiny"
    tiny_pretrain_dataset(folder)
    spec = paper_spec("toy")
    build_cache("tiny", spec, workers=1)
    assert stale_scans("tiny", spec, ["s0", "s1", "broken"]) == []
    image = nib.load(folder / "s1.nii")
    hu = np.asarray(image.dataobj).copy()
    hu[8:12, 8:12, 4:6] = 70  # a bleed added on export again
    nib.save(nib.Nifti1Image(hu, image.affine), folder / "s1.nii")
    os.utime(folder / "s1.nii", ns=(1, 1))  # another mtime, whatever the clock's resolution
    assert stale_scans("tiny", spec, ["s0", "s1", "broken"]) == ["s1"]
    with pytest.raises(StageMissing, match=r"1 of the pretraining scans changed since they were cached \(re-ingested; "
                                           r"e.g. \['s1'\]\).*\n    fmct cache --dataset tiny --profile toy$"):
        pretrain(method="mae", dataset="tiny", profile="toy", max_steps=2, batch_size=2, num_workers=0,
                 progress=False)
    build_cache("tiny", spec, workers=1)  # fmct cache does it again
    assert stale_scans("tiny", spec, ["s1"]) == []


def test_a_damaged_cache_file_is_named_with_the_way_out(isolated_roots):
    from fmct_lib.data.cache import CachedVolumes, build_cache, cache_dir
    from fmct_lib.data.preprocess import paper_spec

    tiny_pretrain_dataset(isolated_roots.data / "tiny")
    spec = paper_spec("toy")
    build_cache("tiny", spec, scans=["s0"], workers=1)
    canvas = next(cache_dir("tiny", spec).glob("*.npy"))
    canvas.write_bytes(canvas.read_bytes()[:200])  # a half-copied cache
    with pytest.raises(ValueError, match=rf"{canvas}: the cached canvas of scan s0 cannot be read .*delete it and "
                                         rf"run `fmct cache` again"):
        CachedVolumes("tiny", spec, scan_ids=["s0"])[0]


@pytest.mark.parametrize("flag, value, message", [
    ("--steps", "-5", "expected a whole number of at least 1, got -5"),
    ("--steps", "0", "expected a whole number of at least 1, got 0"),  # was the profile's default, in silence
    ("--batch-size", "0", "at least 1"), ("--accum-steps", "0", "at least 1"),
    ("--checkpoint-every", "x", "expected a whole number, got 'x'"), ("--workers", "-1", "at least 0"),
])
def test_the_command_line_refuses_counts_out_of_range(flag, value, message, capsys):
    args = list(TINY_CLI)
    if flag in args:
        args[args.index(flag) + 1] = value
    else:
        args += [flag, value]
    with pytest.raises(SystemExit) as stop:
        main(args)
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_the_library_refuses_counts_out_of_range():
    for name in ("batch_size", "accum_steps", "max_steps", "checkpoint_every"):
        with pytest.raises(ValueError, match=rf"{name} must be at least 1 \(or None: the default\), got 0"):
            run_config("mae", "toy", n_scans=8, **{name: 0})


@pytest.mark.parametrize("options, message", [
    ({"teacher_temp": 0.0}, "teacher_temp must be above 0"),   # divides by 0: NaN from the first step
    ({"n_global_crops": 1}, "n_global_crops must be at least 2"),
    ({"momentum_teacher": 1.5}, "momentum_teacher must be at least 0 and at most 1"),
])
def test_dino_options_outside_their_range_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        DINOConfig(**options)
    DINOConfig(clip_grad=0.0, n_local_crops=0)  # DINO's "no clipping", global crops alone: allowed


def test_a_run_directory_in_use_and_a_missing_gpu_are_one_line_each(isolated_roots, capsys, monkeypatch):
    import fmct_lib.pipeline as pipeline
    from fmct_lib.data.cache import build_cache
    from fmct_lib.data.preprocess import paper_spec
    from fmct_lib.io import LOCK_FILE, exclusive_lock
    tiny_pretrain_dataset(isolated_roots.data / "tiny")
    monkeypatch.setattr(pipeline, "ensure_cache",  # in this process (CI's two cores)
                        lambda dataset, profile: build_cache(dataset, paper_spec(profile), workers=1))
    run_dir = isolated_roots.runs / "held"
    run_dir.mkdir(parents=True)
    with exclusive_lock(run_dir / LOCK_FILE, what="test", wait=0):
        assert main(TINY_CLI + ["--run-dir", str(run_dir)]) == 2
    last = capsys.readouterr().err.splitlines()[-1]  # after the cache's progress bar
    assert last.startswith("fmct pretrain: error: run directory") and "in use by another process" in last
    if not torch.cuda.is_available():
        assert main(TINY_CLI + ["--device", "cuda"]) == 2
        assert "no CUDA GPU is visible" in capsys.readouterr().err


def test_a_temporary_checkpoint_left_by_a_kill_is_removed_when_the_run_resumes(tmp_path, volumes):
    run_dir = pretrain_on(volumes, run_dir=tmp_path / "run", max_steps=1, **RUN)
    leftover = run_dir / f".{STATE_FILE}.k1ll3d.pt"  # what atomic_path leaves behind a SIGKILL
    leftover.write_bytes(b"\0" * 1000)
    keep = run_dir / "notes.pt"
    keep.write_bytes(b"mine")
    pretrain_on(volumes, run_dir=run_dir, max_steps=1, **RUN)
    assert not leftover.exists() and keep.exists()

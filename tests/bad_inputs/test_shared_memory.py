"""Loader workers without room in shared memory (a container's 64 MB /dev/shm): the run stops before its
first step, saying what it needs and how to give it, instead of a worker dying of a bus error."""
import pytest

from fmct_lib.data import shared_memory
from fmct_lib.data.inputs import VolumeSource

from _support import InMemoryVolumes

ITEM = 37 ** 3 * 2  # one 37³ int16 canvas of InMemoryVolumes: 101,306 bytes


def _free(monkeypatch, n_bytes):
    monkeypatch.setattr(shared_memory, "shared_memory_free", lambda folder=shared_memory.SHARED_MEMORY: n_bytes)


def test_pretraining_that_cannot_fit_its_batches_stops_before_the_first_step(tmp_path, monkeypatch, one_thread):
    from fmct_lib.train import pretrain_on
    need = 5 * 2 * ITEM  # 2 workers x 2 batches read ahead + the one in use, of 2 canvases: 1,013,060 bytes
    _free(monkeypatch, need - 1)
    with pytest.raises(ValueError) as refused:
        pretrain_on(InMemoryVolumes(8, 37), method="mae", profile="toy", batch_size=2, max_steps=2,
                    num_workers=2, run_dir=tmp_path / "run", progress=False, device="cpu")
    message = " ".join(str(refused.value).split())
    assert f"pretrain mae ({tmp_path / 'run'})" in message
    assert "with --workers 2, up to 5 batches of 0.2 MB (1.0 MB in all) wait in shared memory" in message
    assert "/dev/shm has 1.0 MB free" in message
    # one worker needs 3 batches (607,836 bytes), which fit; --shm-size rounds the need up to whole GB
    assert "docker run --shm-size=1g" in message and "--workers 1;" in message
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


def test_exactly_enough_room_and_no_workers_pass():
    shared_memory.check_room_for_batches(InMemoryVolumes(4, 37), 2, 0, "no workers")  # nothing in shared memory
    free = shared_memory.shared_memory_free()
    if free is not None:  # Linux: the real /dev/shm holds a toy run's batches
        shared_memory.check_room_for_batches(InMemoryVolumes(4, 37), 2, 2, "this machine")


def test_the_boundary_is_every_batch_in_flight(monkeypatch):
    volumes = InMemoryVolumes(4, 37)
    for workers in (1, 2, 4):
        need = (2 * workers + 1) * 3 * ITEM
        _free(monkeypatch, need)
        shared_memory.check_room_for_batches(volumes, 3, workers, "fits")
        _free(monkeypatch, need - 1)
        with pytest.raises(ValueError, match=rf"with --workers {workers}, up to {2 * workers + 1} batches"):
            shared_memory.check_room_for_batches(volumes, 3, workers, "one byte short")


def test_downstream_reading_through_workers_is_checked_too(monkeypatch):
    _free(monkeypatch, 100)
    source = VolumeSource(InMemoryVolumes(4, 37), num_workers=1)
    with pytest.raises(ValueError, match=r"reading volumes: with --workers 1, up to 3 batches of 0.3 MB .*"
                                         r"\(--workers 0; 0 reads in the main process\)"):
        next(source.batches(range(4), 3))
    assert next(VolumeSource(InMemoryVolumes(4, 37)).batches(range(4), 3)).shape == (3, 37, 37, 37)


def test_torchruns_processes_on_one_machine_share_its_shared_memory(monkeypatch):
    """Under torchrun each of LOCAL_WORLD_SIZE processes has its own workers, all in one /dev/shm: room for one
    process's batches is not room for eight (an 8-GPU run passed the check and died of a bus error)."""
    volumes = InMemoryVolumes(4, 37)
    one_process = 5 * 3 * ITEM  # 2 workers: 5 batches of 3 canvases
    _free(monkeypatch, one_process)
    shared_memory.check_room_for_batches(volumes, 3, 2, "one process")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(ValueError) as refused:
        shared_memory.check_room_for_batches(volumes, 3, 2, "eight processes")
    message = str(refused.value)
    assert "with --workers 2 in each of the 8 processes on this machine, up to 40 batches" in message
    assert "(12.2 MB in all)" in message and "--workers 0;" in message  # 8 × 3 batches do not fit either
    _free(monkeypatch, 8 * one_process)
    shared_memory.check_room_for_batches(volumes, 3, 2, "eight processes")  # exactly enough
    _free(monkeypatch, 8 * one_process - 1)
    with pytest.raises(ValueError, match="--workers 1;"):  # one worker each: 8 × 3 batches fit
        shared_memory.check_room_for_batches(volumes, 3, 2, "one byte short")
    shared_memory.check_room_for_batches(volumes, 3, 2, "given", processes=1)  # an explicit count wins

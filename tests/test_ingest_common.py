"""The shared ingestion loop: a dead worker costs only its own scan, a re-run with other reader options reads again."""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import time
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import nibabel as nib
import numpy as np

from fmct_lib.data.ingest.common import Job, run_jobs
from fmct_lib.data.pool import run_surviving


def square_or_die(x):
    """A task that kills its own process on ``"die"`` (as the kernel's OOM killer would)."""
    if x == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.1)
    return x * x


def test_a_task_that_kills_its_worker_fails_alone():
    tasks = [(3,), ("die",), (4,), (5,), (6,)]
    outcomes = dict(run_surviving(square_or_die, tasks, workers=2, mp_context=mp.get_context("fork")))
    assert {t: outcomes[t] for t in [(3,), (4,), (5,), (6,)]} == {(3,): 9, (4,): 16, (5,): 25, (6,): 36}
    assert isinstance(outcomes[("die",)], BrokenProcessPool)
    assert isinstance(dict(run_surviving(square_or_die, [("x",)], workers=2))[("x",)], TypeError)


calls = []


def cube_reader(inputs, *, scale=1):
    """A reader for ``run_jobs``: a 3-D int16 volume, after a while; dies at once on ``"die"``."""
    if inputs == "die":
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(0.1)  # still pending when the killer dies
    calls.append(inputs)
    data = np.full((2, 2, 2), int(inputs) * scale, np.int16)
    return data, np.eye(4), {"manufacturer": "", "_notes": {}}, []


def _scale2(inputs):
    return cube_reader(inputs, scale=2)


def test_run_jobs_survives_a_dead_worker_and_rejects_only_its_scan(tmp_path):
    jobs = [Job(source_key=f"s{i}", patient=f"p{i}", inputs=str(i)) for i in range(6)]
    jobs.insert(1, Job(source_key="killer", patient="pk", inputs="die"))
    rows, rejects = run_jobs(jobs, cube_reader, tmp_path, workers=2)
    assert sorted(r["_source"] for r in rows) == [f"s{i}" for i in range(6)]
    assert len(rejects) == 1 and rejects[0][0] == "killer" and "died" in rejects[0][1]


def test_a_rerun_with_other_reader_options_reads_the_scans_again(tmp_path):
    jobs = [Job(source_key="a", patient="p", inputs="3")]
    calls.clear()
    run_jobs(jobs, cube_reader, tmp_path, options={"scale": 1}, workers=1)
    run_jobs(jobs, cube_reader, tmp_path, options={"scale": 1}, workers=1)
    assert calls == ["3"]  # resumed: read once
    rows, _ = run_jobs(jobs, _scale2, tmp_path, options={"scale": 2}, workers=1)
    assert calls == ["3", "3"]
    sidecar = json.loads((tmp_path / rows[0]["path"]).with_suffix("").with_suffix(".json").read_text())
    assert sidecar["options"] == {"scale": 2}
    assert np.asarray(nib.load(tmp_path / rows[0]["path"]).dataobj).max() == 6


def test_a_rerun_says_what_it_kept_and_removes_a_killed_writers_temporary_files(tmp_path, capsys):
    """An audit: after 8 ``kill -9`` of an ingestion, 4 half-written volumes (``.<scan>.nii.gz.<random>.nii.gz``,
    ~1.4 MB each) stayed in ``volumes/`` for good, and a rerun did not say it resumed. The temporary files of the
    scans a run is about to write go; another scan's (a writer of its own) stay."""
    import tempfile

    from fmct_lib.data.ingest.common import pseudonym, pseudonym_key
    jobs = [Job(source_key=f"s{i}", patient=f"p{i}", inputs=str(i)) for i in range(3)]
    rows, _ = run_jobs(jobs[:1], cube_reader, tmp_path, workers=1)
    volumes, to_read = tmp_path / "volumes", pseudonym("s1", pseudonym_key(tmp_path), "S")  # as run_jobs names it
    killed = {}
    for name, suffix in ((f"{to_read}.nii.gz", ".nii.gz"), (f"{to_read}.json", ".json"),
                         (rows[0]["path"].removeprefix("volumes/"), ".nii.gz")):  # s0's: done, not read again
        fd, killed[name] = tempfile.mkstemp(dir=volumes, prefix=f".{name}.", suffix=suffix)
        os.close(fd)
    for path in killed.values():  # no lock is held: a temporary file goes once it is idle (LEFTOVER_IDLE_S)
        os.utime(path, (time.time() - 3600,) * 2)
    fd, live = tempfile.mkstemp(dir=volumes, prefix=f".{to_read}.nii.gz.", suffix=".nii.gz")  # a live writer's
    os.close(fd)
    capsys.readouterr()
    run_jobs(jobs, cube_reader, tmp_path, workers=1, desc="ingest toy")
    assert "ingest toy: 1 of 3 scans were done in an earlier run and are kept; reading the other 2" in "".join(
        capsys.readouterr())
    assert sorted(volumes.glob(".*")) == sorted([Path(killed[rows[0]["path"].removeprefix("volumes/")]), Path(live)])

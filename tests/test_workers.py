"""Pool workers end with the process that started them (``fmct_lib.workers``): a parent killed outright (a
notebook's kernel restarted) leaves no worker computing on, orphaned."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

PARENT = textwrap.dedent("""
    import os, sys, time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context
    from fmct_lib.workers import watch_parent

    if __name__ == "__main__":
        options = dict(initializer=watch_parent, initargs=(os.getpid(),)) if sys.argv[1] == "watched" else {}
        pool = ProcessPoolExecutor(1, mp_context=get_context(sys.argv[2]), **options)
        print(pool.submit(os.getpid).result(), flush=True)
        time.sleep(1.5)  # longer than the watch's poll: a worker that wrongly ended would break the pool here
        assert pool.submit(os.getpid).result()
        pool.submit(time.sleep, 120)  # a long task: the worker is busy when its parent dies
        time.sleep(120)
""")


def _alive(pid: int) -> bool:
    """Whether ``pid`` still runs (a zombie, exited but not yet reaped, does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _orphan(tmp_path, mode: str, context: str = "spawn") -> int:
    """Start a parent whose one pool worker (``context``: how the pool starts it) is busy, kill the parent with
    SIGKILL; the worker's pid."""
    script = tmp_path / "parent.py"
    script.write_text(PARENT)
    parent = subprocess.Popen([sys.executable, str(script), mode, context], stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
    worker = int(parent.stdout.readline())
    time.sleep(2.5)  # the pool has outlived the watch's first polls, and the long task has reached the worker
    assert parent.poll() is None, "the pool broke while its owner was alive"
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    return worker


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("context", ["spawn", "fork", "forkserver"])
def test_a_watched_worker_ends_when_its_parent_is_killed(tmp_path, context):
    """Whatever starts the worker: under "forkserver" (Python 3.14's default on Linux) its direct parent is the fork
    server, not the pool's owner, and the worker must neither end at once nor outlive the owner."""
    worker = _orphan(tmp_path, "watched", context)
    deadline = time.monotonic() + 10
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(worker), "the orphaned worker is still running"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_an_unwatched_worker_would_run_on(tmp_path):
    """The control: without the watch the same orphan is still busy seconds later (what the watch is for)."""
    worker = _orphan(tmp_path, "bare")
    try:
        time.sleep(3)
        assert _alive(worker)
    finally:
        os.kill(worker, signal.SIGKILL)


def test_an_interrupted_pool_cancels_its_queued_tasks():
    """An audit: Ctrl-C in ``fmct synth`` or a sweep in worker processes left ``with ProcessPoolExecutor(...)``,
    which waits for every queued task, so the cohort ran on to its last scan (178 of 180) and the sweep to its last
    run. ``cancelling_pool`` cancels what is queued; the tasks running finish."""
    from concurrent.futures import as_completed
    from multiprocessing import get_context

    from fmct_lib.data.pool import cancelling_pool
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        with cancelling_pool(2, mp_context=get_context("spawn")) as pool:
            futures = [pool.submit(time.sleep, 0.2) for _ in range(40)]  # 4 s of work on 2 workers
            next(as_completed(futures))
            raise KeyboardInterrupt
    assert sum(f.cancelled() for f in futures) >= 30 and all(f.done() for f in futures)
    assert time.monotonic() - started < 3.5
    with cancelling_pool(2, mp_context=get_context("spawn")) as pool:  # left normally: every task runs
        futures = [pool.submit(abs, -i) for i in range(5)]
    assert [f.result() for f in futures] == [0, 1, 2, 3, 4]

"""Worker processes that end with the process that started them.

fmct runs its long work in process pools: the downstream sweeps, the replays of the released encoders, the
synthetic cohort, the preprocessing cache and ingestion. A parent killed outright (a notebook's kernel restarted,
a job cancelled with SIGKILL) cannot stop its workers: they would compute on, orphaned, until their task ended (a
downstream run: minutes of every core), beside whatever the user starts next. Each pool's initializer calls
``watch_parent``, which ends its worker within a second of the parent's death.
"""
from __future__ import annotations

import os
import threading
import time

__all__ = ["watch_parent", "init_worker"]


def watch_parent(parent: int, poll_s: float = 1.0) -> None:
    """Start a daemon thread that ends this process (``os._exit``) once the process ``parent`` (the pool's owner)
    is gone: this process was handed to another parent, or ``parent`` no longer exists. Both, because the pool's
    owner is not always the direct parent: a "forkserver" pool (Python 3.14's default on Linux) is started by the
    fork server."""
    started_by = os.getppid()

    def alive() -> bool:
        if os.getppid() != started_by:
            return False
        if os.name == "nt":  # os.kill(pid, 0) would terminate the process on Windows
            return True
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return False
        except PermissionError:  # exists, owned by another user: not ours to judge
            pass
        return True

    def watch():
        while alive():
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="fmct-parent-watch", daemon=True).start()


def init_worker(parent: int, threads: int | None = None) -> None:
    """A pool worker's set-up: the watch on ``parent`` and, where given, its share of torch's threads."""
    watch_parent(parent)
    if threads is not None:
        import torch
        torch.set_num_threads(threads)

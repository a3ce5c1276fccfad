"""A process pool that outlives a dead worker (ingestion and the cache build both run one).

A worker killed mid-scan (out of memory, a crash in a decoder) breaks a ``ProcessPoolExecutor``: every task not
yet done fails with ``BrokenProcessPool``, whichever killed it. ``run_surviving`` runs those tasks again in a
fresh pool, and, when a pool breaks before finishing any task, each alone in a pool of its own, so only a task
that kills its own pool fails. One bad scan never stops the batch or takes the scans beside it along.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

__all__ = ["cancelling_pool", "run_surviving"]


@contextlib.contextmanager
def cancelling_pool(workers: int, **pool_options) -> Iterator[ProcessPoolExecutor]:
    """A ``ProcessPoolExecutor`` for the block whose queued tasks are cancelled when the block is left by an
    exception (Ctrl-C, Jupyter's "interrupt kernel"): leaving ``with ProcessPoolExecutor(...)`` waits for every
    task submitted, so an interrupted cohort or sweep ran on to its end (hours at the demo scale). Jupyter's
    interrupt reaches this process alone: the tasks running finish and are kept. A terminal's Ctrl-C reaches the
    workers too: the tasks running stop, their files never written (every write is atomic), and are done again
    by the next run."""
    pool = ProcessPoolExecutor(workers, **pool_options)
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def run_surviving(fn: Callable, tasks: list[tuple], *, workers: int, **pool_options) -> Iterator[tuple[tuple, object]]:
    """``(task, outcome)`` for every task (a tuple of ``fn``'s arguments): ``fn(*task)``'s result, or the exception
    it raised; ``BrokenProcessPool`` for a task whose worker died when it ran alone. ``pool_options`` go to
    ``ProcessPoolExecutor`` (``mp_context``, ``initializer``...). Within a pool, outcomes come in task order."""
    pending, alone = list(tasks), False
    while pending:
        failed = []
        for batch in ([[task] for task in pending] if alone else [pending]):
            pool = ProcessPoolExecutor(min(workers, len(batch)), **pool_options)
            try:
                futures = [pool.submit(fn, *task) for task in batch]
                for task, future in zip(batch, futures):
                    try:
                        outcome = future.result()
                    except BrokenProcessPool as e:
                        if not alone:
                            failed.append(task)
                            continue
                        outcome = e
                    except Exception as e:  # noqa: BLE001 - the caller records it against its task
                        outcome = e
                    yield task, outcome
            finally:
                pool.shutdown(cancel_futures=True)
        alone = len(failed) == len(pending)  # a pool that broke before finishing anything: one task at a time
        pending = failed

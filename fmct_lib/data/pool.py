"""A process pool that outlives a dead worker (ingestion and the cache build both run one).

A worker killed mid-scan (out of memory, a crash in a decoder) breaks a ``ProcessPoolExecutor``: every task not
yet done fails with ``BrokenProcessPool``, whichever killed it. ``run_surviving`` runs those tasks again in a
fresh pool, and, when a pool breaks before finishing any task, each alone in a pool of its own, so only a task
that kills its own pool fails. One bad scan never stops the batch or takes the scans beside it along.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

__all__ = ["run_surviving"]


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

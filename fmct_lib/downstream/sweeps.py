"""Sweeps: many downstream runs at once, finished ones read back (Fig. 1e's protocols × tasks × seeds; Fig. 2's
K-shot draws). A run that cannot be made from the data (``ProtocolSkipped``: a training or evaluation split
without positives or negatives, too few shots, no label column) is warned about and recorded with its reason,
and the sweep goes on.

On a CPU the runs that train an encoder (fine-tuned, scratch, few-shot) go to ``sweep_workers()`` processes
at once, each with its share of the cores (``bench/parallel_runs.py`` measures this against one process using
every core); the frozen protocols run first in the calling process, where their encoder's features are
computed once and cached for every seed."""
from __future__ import annotations

import os
import warnings
from concurrent.futures import as_completed
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context

import pandas as pd
import torch

from ..config import get_profile
from ..data.inputs import ProtocolSkipped
from ..data.pool import cancelling_pool
from ..progress import tqdm
from ..workers import init_worker
from .protocols import get_protocol
from .runs import run_protocol

__all__ = ["run_sweep", "fewshot_sweep", "sweep_workers"]

WORKERS_ENV = "FMCT_WORKERS"


def sweep_workers(device: str | None = None) -> int:
    """Processes a sweep trains its encoder runs in: ``$FMCT_WORKERS`` when set; else 1 on a GPU (one model
    fills it) and 2 on a CPU with at least 2 cores (two one-thread runs side by side train faster than one
    two-thread run after the other once runs last more than a few epochs: ``bench/parallel_runs.py``)."""
    if os.environ.get(WORKERS_ENV):
        return max(1, int(os.environ[WORKERS_ENV]))
    if (device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda"):
        return 1
    return min(2, os.cpu_count() or 1)


def run_sweep(dataset: str, tasks, protocols, encoder, profile, shots=None, resamples=None,
              eval_dataset: str | None = None, run_root=None, seed: int = 0, train_filter: dict | None = None,
              eval_filter: dict | None = None, hparams: dict | None = None, eval_split: str = "test",
              device: str | None = None, num_workers: int = 0, progress: bool = True,
              n_seeds: int = 1, spec=None, workers: int | None = None) -> pd.DataFrame:
    """Run every (task, protocol) and concatenate the predictions; finished runs are read back, not redone.

    Each (task, protocol) is trained ``n_seeds`` times, with seeds ``seed … seed + n_seeds − 1`` (the
    statistics report a model trained with several seeds as their mean). ``"fewshot"`` in ``protocols``
    expands to full fine-tuning with K ∈ ``shots`` (default ``profile.fewshot_shots``) × ``resamples``
    (default ``profile.fewshot_resamples``; resample r uses seed ``seed + r``) plus the all-data
    fine-tuning runs (the paper's star, ``n_seeds`` of them). Runs that cannot be made from the
    data (``ProtocolSkipped``) are warned about and listed in ``result.attrs["skipped"]``. ``spec`` is the
    preprocessing (default: the profile's paper chain). ``workers``: processes for the runs that train an
    encoder (default ``sweep_workers()``).
    """
    profile = get_profile(profile)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    protocols = [protocols] if isinstance(protocols, str) else list(protocols)
    runs = []
    for task in tasks:
        for protocol in protocols:
            if protocol == "fewshot":
                protocol = "finetune"
                runs += _kshot_runs(task, protocol, profile, shots, resamples, seed)
            runs += [(task, protocol, None, seed + s) for s in range(n_seeds)]
    return _run_all(runs, dataset, encoder, profile, progress=progress, eval_dataset=eval_dataset,
                    eval_split=eval_split, run_root=run_root, hparams=hparams, train_filter=train_filter,
                    eval_filter=eval_filter, device=device, num_workers=num_workers, spec=spec, workers=workers)


def fewshot_sweep(dataset: str, tasks, protocol: str, encoder, profile, shots=None, resamples=None, seed: int = 0,
                  n_seeds: int = 1, progress: bool = True, **kwargs) -> pd.DataFrame:
    """Fig. 2 for any protocol: ``protocol`` trained on K-shot draws (K ∈ ``shots`` × ``resamples``, resample
    r with seed ``seed + r``, so every protocol sees the same draws) and on all training data (``n_seeds``
    seeds, the stars). ``run_sweep(..., ["fewshot"])`` is this with ``"finetune"``. ``kwargs`` go to
    ``run_protocol`` (``train_filter``, ``run_root``, ``hparams`` …); skipped runs as in ``run_sweep``."""
    profile = get_profile(profile)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    runs = [run for task in tasks for run in _kshot_runs(task, protocol, profile, shots, resamples, seed)]
    runs += [(task, protocol, None, seed + s) for task in tasks for s in range(n_seeds)]
    return _run_all(runs, dataset, encoder, profile, progress=progress, **kwargs)


def _kshot_runs(task: str, protocol: str, profile, shots, resamples, seed: int) -> list[tuple]:
    """(task, protocol, K, seed + r) for K in ``shots`` and r < ``resamples`` (default: the profile's)."""
    shots = profile.fewshot_shots if shots is None else shots
    resamples = profile.fewshot_resamples if resamples is None else resamples
    return [(task, protocol, k, seed + r) for k in shots for r in range(resamples)]


def _run_all(runs, dataset: str, encoder, profile, progress: bool = True, workers: int | None = None,
             **kwargs) -> pd.DataFrame:
    """``run_protocol`` for each (task, protocol, k, seed) of ``runs`` (duplicates once), predictions
    concatenated in the order of ``runs``; ``ProtocolSkipped`` runs are warned about and listed in
    ``result.attrs["skipped"]``. With ``workers`` > 1 (default ``sweep_workers``) the runs that train an encoder
    run in that many processes, each with its share of this process's threads."""
    runs = list(dict.fromkeys(runs))
    workers = sweep_workers(kwargs.get("device")) if workers is None else max(1, int(workers))
    pooled = [r for r in runs if not get_protocol(_protocol_name(r[1])).frozen] if workers > 1 else []
    outcomes = {}
    with tqdm(total=len(runs), desc="downstream runs", disable=not progress) as bar:
        for run in runs:  # here: the frozen protocols (features cached once for all seeds), or every run
            if run not in pooled:
                outcomes[run] = _run_one(run, dataset, encoder, profile, kwargs)
                bar.update()
        if pooled:
            workers = min(workers, len(pooled))
            threads = max(1, torch.get_num_threads() // workers)
            with cancelling_pool(workers, mp_context=get_context("spawn"), initializer=init_worker,
                                 initargs=(os.getpid(), threads)) as pool:
                futures = {pool.submit(_run_one, run, dataset, encoder, profile, kwargs): run for run in pooled}
                for future in as_completed(futures):
                    try:
                        outcomes[futures[future]] = future.result()
                    except BrokenProcessPool as e:
                        raise RuntimeError(
                            f"a worker process of the sweep died ({e}). Runs finished so far are kept and are read "
                            "back next time. If this is a script, its top-level code must sit under "
                            "`if __name__ == \"__main__\":` (worker processes are spawned and import the script); "
                            f"otherwise see the error above it, or set {WORKERS_ENV}=1 to train in this process") from e
                    bar.update()
    tables, skipped = [], []
    for (task, protocol, k, run_seed) in runs:
        outcome = outcomes[task, protocol, k, run_seed]
        if isinstance(outcome, str):
            warnings.warn(f"skipped {task}/{protocol}/k={k}/seed={run_seed}: {outcome}")
            skipped.append({"task": task, "protocol": protocol, "k": k, "seed": run_seed, "reason": outcome})
        else:
            tables.append(outcome)
    result = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    result.attrs["skipped"] = skipped
    return result


def _protocol_name(protocol: str) -> str:
    return "finetune" if protocol == "fewshot" else protocol


def _run_one(run: tuple, dataset: str, encoder, profile, kwargs: dict):
    """One run's predictions, or the reason it was skipped (a string: it crosses process boundaries)."""
    task, protocol, k, run_seed = run
    try:
        return run_protocol(dataset, task, protocol, encoder, profile, k_shot=k, seed=run_seed, progress=False,
                            **kwargs)
    except ProtocolSkipped as e:
        return str(e)

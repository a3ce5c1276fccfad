"""Sweeps: many downstream runs at once, finished ones read back (Fig. 1e's protocols × tasks × seeds; Fig. 2's
K-shot draws). A run that cannot be made from the data (``ProtocolSkipped``: a training or evaluation split
without positives or negatives, too few shots, no label column) is warned about and recorded with its reason,
and the sweep goes on."""
from __future__ import annotations

import warnings

import pandas as pd
from ..progress import tqdm

from ..config import get_profile
from ..data.inputs import ProtocolSkipped
from .runs import run_protocol

__all__ = ["run_sweep", "fewshot_sweep"]


def run_sweep(dataset: str, tasks, protocols, encoder, profile, shots=None, resamples=None,
              eval_dataset: str | None = None, run_root=None, seed: int = 0, train_filter: dict | None = None,
              eval_filter: dict | None = None, hparams: dict | None = None, eval_split: str = "test",
              device: str | None = None, num_workers: int = 0, progress: bool = True,
              n_seeds: int = 1, spec=None) -> pd.DataFrame:
    """Run every (task, protocol) and concatenate the predictions; finished runs are read back, not redone.

    Each (task, protocol) is trained ``n_seeds`` times, with seeds ``seed … seed + n_seeds − 1`` (the
    statistics report a model trained with several seeds as their mean). ``"fewshot"`` in ``protocols``
    expands to full fine-tuning with K ∈ ``shots`` (default ``profile.fewshot_shots``) × ``resamples``
    (default ``profile.fewshot_resamples``; resample r uses seed ``seed + r``) plus the all-data
    fine-tuning runs (the paper's star, ``n_seeds`` of them). Runs that cannot be made from the
    data (``ProtocolSkipped``) are warned about and listed in ``result.attrs["skipped"]``. ``spec`` is the
    preprocessing (default: the profile's paper chain).
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
                    eval_filter=eval_filter, device=device, num_workers=num_workers, spec=spec)


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


def _run_all(runs, dataset: str, encoder, profile, progress: bool = True, **kwargs) -> pd.DataFrame:
    """``run_protocol`` for each (task, protocol, k, seed) of ``runs`` (duplicates once), predictions
    concatenated; ``ProtocolSkipped`` runs are warned about and listed in ``result.attrs["skipped"]``."""
    tables, skipped = [], []
    for task, protocol, k, run_seed in tqdm(list(dict.fromkeys(runs)), desc="downstream runs", disable=not progress):
        try:
            tables.append(run_protocol(dataset, task, protocol, encoder, profile, k_shot=k, seed=run_seed,
                                       progress=False, **kwargs))
        except ProtocolSkipped as e:
            warnings.warn(f"skipped {task}/{protocol}/k={k}/seed={run_seed}: {e}")
            skipped.append({"task": task, "protocol": protocol, "k": k, "seed": run_seed, "reason": str(e)})
    result = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()
    result.attrs["skipped"] = skipped
    return result

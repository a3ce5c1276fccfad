"""``pretrain``: self-supervised pretraining as one library call (the CLI and the notebooks call it).

A run directory holds ``config.json``, ``scans.txt`` (the scans it trains on), ``metrics.jsonl`` / ``metrics.csv``
(one row per step), ``state_last.pt`` (resume state), ``encoder.safetensors`` (our checkpoint format,
``models/checkpoints``) and a ``done`` marker. Calling ``pretrain`` on a finished run returns at once if it was made
with the same configuration and scans (another configuration or set of scans in the directory is an error naming
what differs, never silently reused; how often it checkpoints may change); on an interrupted one it
continues exactly where the last checkpoint left off (``loop.py``). A run holds its directory's lock
(``.lock``, taken by rank 0) while it trains: a second process on a directory in use fails at once with
``LockBusy`` naming the holder, instead of resuming from the first one's checkpoint and mixing their logs.

Schedules are set in epochs (DINO's warm-up, teacher-temperature warm-up and frozen prototypes) or as the
paper states them (MAE: the first 5% of the steps), converted to steps by each method (``train/methods``);
``max_steps`` ends a run early and the cosine decays follow its length. What differs between methods lives
in ``train/methods``, never here.

``pretrain`` reads the preprocessing cache and never builds it: ``fmct cache`` or ``pipeline.ensure_cache``
does, before (DESIGN §2: the pipeline alone builds a missing stage).
"""
from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd
import torch
from torch.utils.data import Dataset

from ..config import get_profile
from ..data.augment import AugmentConfig
from ..data.preprocess import paper_spec
from ..io import LOCK_FILE, LockBusy, atomic_write_text, exclusive_lock, remove_leftovers
from ..models.checkpoints import save_checkpoint
from ..paths import StageMissing, runs_root
from .distributed import DistInfo, all_reduce_mean, barrier, setup
from .loop import DONE_FILE, STATE_FILE, train
from .methods import get_method, method_options

__all__ = ["pretrain", "pretrain_on", "run_config", "pretraining_scan_ids", "default_run_dir"]

log = logging.getLogger(__name__)

ENCODER_FILE = "encoder.safetensors"
SCANS_FILE = "scans.txt"


def run_config(method: str, profile, n_scans: int, world_size: int = 1, *, seed: int = 0,
               batch_size: int | None = None, accum_steps: int = 1, max_steps: int | None = None,
               checkpoint_every: int | None = None, options=None) -> dict:
    """Every number the optimisation depends on, as a JSON-able dict (stored as ``config.json["run"]``).

    ``options``: the method's options, a dict or its options object (``train/methods``)."""
    for name, value in (("batch_size", batch_size), ("accum_steps", accum_steps), ("max_steps", max_steps),
                        ("checkpoint_every", checkpoint_every)):
        if value is not None and value < 1:
            raise ValueError(f"{name} must be at least 1 (or None: the default), got {value!r}")
    profile = get_profile(profile)
    Method = get_method(method)
    options = method_options(Method, options, profile)
    b = profile.pretrain_batch_size if batch_size is None else batch_size
    global_batch = b * world_size * accum_steps
    steps_per_epoch = n_scans // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"{n_scans} pretraining scans are fewer than one global batch of {global_batch} "
                         f"(batch {b} × {world_size} processes × {accum_steps} accumulation steps); lower batch_size "
                         "or pretrain on more scans (a larger fraction of the pool)")
    epochs = profile.epochs_for(method)
    total = epochs * steps_per_epoch if max_steps is None else max_steps
    base_lr = profile.pretrain_base_lr.get(method, Method.base_lr)
    lr = base_lr * global_batch / 256
    cfg = {
        "method": method, "seed": seed, "n_scans": n_scans, "world_size": world_size,
        "batch_size": b, "accum_steps": accum_steps, "global_batch": global_batch,
        "steps_per_epoch": steps_per_epoch, "total_steps": total,
        "base_lr": base_lr, "lr": lr, "min_lr": lr * 1e-3, "warmup_steps": Method.warmup_steps(profile, steps_per_epoch, total),
        "weight_decay": 0.05, "betas": [0.9, 0.95],
        "checkpoint_every": max(1, min(steps_per_epoch, 500)) if checkpoint_every is None else checkpoint_every,
    }
    cfg.update(Method.run_entries(options, total, steps_per_epoch))
    return cfg


def default_run_dir(dataset: str, method: str, fraction: float, profile: str, seed: int,
                    max_steps: int | None = None) -> Path:
    name = f"{dataset}_{method}_f{fraction:g}_{profile}_s{seed}" + (f"_steps{max_steps}" if max_steps else "")
    return runs_root() / "pretrain" / name


def _flat(config: dict, prefix: str = "") -> dict:
    """``{"run": {"lr": 1}}`` → ``{"run.lr": 1}``."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# how often the run saves its resume state changes nothing it computes: a run may resume with another
_NOT_COMPARED = {"run.checkpoint_every"}
# named first where they differ: the settings a user gives (the learning rate, the steps per epoch follow from them)
_GIVEN = {f"run.{k}" for k in ("method", "seed", "n_scans", "world_size", "batch_size", "accum_steps", "total_steps")}
START_OVER = ("start over in it (fmct pretrain --restart; pretrain(resume=False)), or use another run directory "
              "(--run-dir; run_dir=); a notebook can start from a finished run's encoder instead "
              "(-p checkpoint RUN_DIR/encoder.safetensors)")


def _check_or_write_config(run_dir: Path, config: dict, dist_info: DistInfo, fresh: bool) -> None:
    path = run_dir / "config.json"
    text = json.dumps(config, indent=2, sort_keys=True)
    if path.exists() and not fresh:
        old, new = _flat(json.loads(path.read_text())), _flat(json.loads(text))
        keys = sorted(set(old) | set(new), key=lambda k: (k not in _GIVEN, k))  # what was given, then what follows
        diff = [f"{k}: {old.get(k, '(none)')!r} → {new.get(k, '(none)')!r}" for k in keys
                if k not in _NOT_COMPARED and old.get(k, "(none)") != new.get(k, "(none)")]
        if diff:
            raise ValueError(f"{path}: the run directory holds a run with another configuration ("
                             f"{'; '.join(diff[:8])}{f'; and {len(diff) - 8} more' if len(diff) > 8 else ''}); "
                             f"{START_OVER}")
        return
    if dist_info.is_main:
        atomic_write_text(path, text)


def _check_or_write_scans(run_dir: Path, scan_ids: list[str], dist_info: DistInfo, fresh: bool) -> None:
    """``scans.txt``: the scans the run trains on, one per line. Resuming or reusing the run with another set
    (scans re-ingested, added, rejected) is refused; a finished run made before the file existed is left as it is."""
    path = run_dir / SCANS_FILE
    if path.exists() and not fresh:
        before, now = set(path.read_text().split()), set(scan_ids)
        if before != now:
            left, joined = sorted(before - now), sorted(now - before)
            raise ValueError(
                f"{path}: the run trained on other scans than the dataset gives now ({len(left)} no longer there, "
                f"e.g. {left[:3]}; {len(joined)} new, e.g. {joined[:3]}), and resuming or reusing it would mix "
                f"the two; {START_OVER}")
        return
    if dist_info.is_main and (fresh or not (run_dir / DONE_FILE).exists()):
        atomic_write_text(path, "".join(f"{s}\n" for s in scan_ids))


@contextlib.contextmanager
def _holding_run_dir(run_dir: Path, dist_info: DistInfo):
    """Rank 0 holds the run directory's lock for the block; when another process holds it, every rank fails."""
    with contextlib.ExitStack() as held:
        busy = None
        if dist_info.is_main:
            try:
                held.enter_context(exclusive_lock(run_dir / LOCK_FILE, what=f"run directory {run_dir}", wait=0))
            except LockBusy as e:
                busy = e
        flag = all_reduce_mean(torch.tensor([float(busy is not None)], device=dist_info.device))
        if busy is not None:
            raise busy
        if float(flag[0]) > 0:
            raise LockBusy(f"run directory {run_dir} is in use by another process (rank 0 could not lock it)")
        yield


def pretrain_on(dataset: Dataset, *, method: str, profile, run_dir, seed: int = 0, resume: bool = True,
                max_steps: int | None = None, device=None, progress: bool = True, batch_size: int | None = None,
                accum_steps: int = 1, checkpoint_every: int | None = None, num_workers: int = 0,
                options=None, on_step=None, meta: dict | None = None, preprocess: dict | None = None,
                monitor=None, stop_after: int | None = None, scan_ids: list[str] | None = None) -> Path:
    """Pretrain on any Dataset whose items are ``{"scan_id", "volume": int16 HU canvas (C, C, C)}``.

    ``method`` is a name in ``train.methods.METHODS``; ``options`` its options, a dict or the method's
    options object: for DINO the fields of ``DINOConfig`` (e.g. the authors' code: ``{"n_local_crops": 2,
    "teacher_temp": 0.04}``, reference_code_facts §3.1), for MAE ``norm_pix_loss`` (normalised-pixel target).

    ``meta`` (dataset, fraction, …) is stored in ``config.json`` and in the exported encoder's
    configuration, with ``preprocess`` (the ``PreprocessSpec`` dict of the volumes). ``monitor``: see
    ``loop.train`` (``pretrain`` passes a ``KnnMonitor`` on the dataset's validation split). ``stop_after``:
    return once the run has done that many steps, resumable and not exported (``loop.train``); the schedules
    keep the run's total length. ``scan_ids``: the scans ``dataset`` holds, kept in ``scans.txt`` so that a run is
    never resumed or reused on another set (``pretrain`` passes them).
    """
    profile = get_profile(profile)
    Method = get_method(method)
    run_dir = Path(run_dir)
    dist_info = setup(device)
    run_dir.mkdir(parents=True, exist_ok=True)
    with _holding_run_dir(run_dir, dist_info):
        if dist_info.is_main:  # a run killed while writing left a temporary file (as large as its checkpoint)
            for name in (STATE_FILE, ENCODER_FILE, DONE_FILE, SCANS_FILE, "config.json", "metrics.csv"):
                for path in remove_leftovers(run_dir / name):
                    log.info("removed %s, left by a run killed while writing it", path)
        if not resume and dist_info.is_main:
            for name in (STATE_FILE, DONE_FILE, "metrics.jsonl", "metrics.csv", ENCODER_FILE, SCANS_FILE):
                (run_dir / name).unlink(missing_ok=True)
        barrier()
        run = run_config(method, profile, len(dataset), dist_info.world_size, seed=seed, batch_size=batch_size,
                         accum_steps=accum_steps, max_steps=max_steps, checkpoint_every=checkpoint_every,
                         options=options)
        windows = (preprocess or {}).get("windows") or AugmentConfig.windows
        augment = AugmentConfig.from_profile(profile, windows=windows, **Method.crops(run))
        config = {"run": run, "augment": asdict(augment), "profile": profile.pretraining_dict(), "meta": meta or {},
                  "preprocess": preprocess}
        config = json.loads(json.dumps(config))  # canonical JSON types (tuples → lists)
        _check_or_write_config(run_dir, config, dist_info, fresh=not resume)
        if scan_ids is not None:
            _check_or_write_scans(run_dir, [str(s) for s in scan_ids], dist_info, fresh=not resume)
        if resume and (run_dir / DONE_FILE).exists():  # finished with this very configuration (checked above)
            return run_dir

        torch.manual_seed(seed)  # model initialisation; later randomness comes from the saved generators
        task = Method(profile, augment, run)
        steps_done = train(task, dataset, run, run_dir, dist_info, resume=resume, num_workers=num_workers,
                           progress=progress, on_step=on_step, monitor=monitor, stop_after=stop_after)
        if steps_done < run["total_steps"]:  # stopped early: resumable, not finished
            return run_dir

        if dist_info.is_main:
            encoder = task.encoder()
            save_checkpoint(run_dir / ENCODER_FILE, encoder,
                            config={"model": encoder.config.to_dict(), "method": method, "profile": profile.name,
                                    "seed": seed, "preprocess": preprocess, **(meta or {})},
                            metadata={"exported": Method.exported})
            atomic_write_text(run_dir / DONE_FILE, json.dumps({"steps": run["total_steps"], "finished": time.time()}))
        barrier()
    return run_dir


def pretraining_scan_ids(dataset: str, fraction: float = 1.0, seed: int = 0,
                         scans: pd.DataFrame | None = None) -> list[str]:
    """The pretraining set: the training split and the unlabelled pool (split ``pretrain``), external sites
    excluded, a nested patient subsample (Fig. 4's fractions). Validation and test scans never enter it.
    ``scans``: the dataset's scan table (default: read from the data root)."""
    from ..data.manifest import load_scans
    from ..data.splits import POOL_SPLIT, subsample_patients
    scans = load_scans(dataset) if scans is None else scans
    scans = scans[scans["split"].isin(["train", POOL_SPLIT])]
    if "site" in scans.columns:
        scans = scans[scans["site"] != "external"]
    if scans.empty:
        raise ValueError(f"dataset {dataset!r} has no training scans to pretrain on")
    keep = subsample_patients(scans["patient_id"], fraction, seed)
    return scans.loc[scans["patient_id"].astype(str).isin(keep), "scan_id"].astype(str).tolist()


def pretrain(method: str = "dino", dataset: str = "synthetic", profile: str = "demo", fraction: float = 1.0,
             run_dir=None, seed: int = 0, resume: bool = True, max_steps: int | None = None, device=None,
             progress: bool = True, *, batch_size: int | None = None, accum_steps: int = 1,
             checkpoint_every: int | None = None, num_workers: int = 2, options=None, monitor: bool = True) -> Path:
    """Self-supervised pretraining of the encoder on a dataset's cached volumes; returns the run directory.

    ``method`` a name in ``train.methods.METHODS``: "dino" (the paper's final model), "mae", "vicreg", ...
    ``fraction`` of the training patients is used (nested subsamples for the scaling study, Fig. 4).
    ``batch_size`` is per process (default: the profile's); the global batch is ``batch_size × processes ×
    accum_steps``. Under ``torchrun`` every process calls this with the same arguments. The exported
    ``encoder.safetensors`` is the method's (DINO: the TEACHER backbone, as in DINO; MAE: the encoder).
    ``options``: see ``pretrain_on``. ``monitor``: log the validation kNN AUROC of the frozen encoder before
    the first step and after every epoch (``train/monitor.py``; labels are read for that alone).

    The volumes are read from the cache of the profile's paper chain, which must hold every pretraining
    scan (or list it in its ``rejects.csv``); otherwise ``StageMissing`` names the ``fmct cache`` command.
    """
    from ..data.cache import CachedVolumes, cache_dir, read_index, stale_scans
    from ..data.manifest import load_scans
    profile_name = get_profile(profile).name
    method_options(method, options)  # an unknown method or option fails before anything is read
    run_dir = Path(run_dir) if run_dir else default_run_dir(dataset, method, fraction, profile_name, seed, max_steps)
    spec = paper_spec(profile)
    scans = load_scans(dataset)  # read once: the pretraining set, the cache's freshness, the monitor's labels
    wanted = pretraining_scan_ids(dataset, fraction, seed, scans=scans)
    cached = set(read_index(dataset, spec)["scan_id"].astype(str))  # StageMissing when there is no cache
    folder = cache_dir(dataset, spec)
    rejects = folder / "rejects.csv"
    rejected = set(pd.read_csv(rejects, dtype=str, keep_default_na=False)["scan_id"]) if rejects.exists() else set()
    missing = [s for s in wanted if s not in cached and s not in rejected]
    if missing:
        raise StageMissing(
            f"{folder}: the cache lacks {len(missing)} of the {len(wanted)} pretraining scans "
            f"(e.g. {missing[:3]}). Build it with:\n    fmct cache --dataset {dataset} --profile {profile_name}")
    scan_ids = [s for s in wanted if s in cached]  # rejected scans are listed in the cache's rejects.csv
    stale = stale_scans(dataset, spec, scan_ids, scans=scans)
    if stale:  # torchrun's processes only read the cache: a re-ingested scan must not train from its old canvas
        raise StageMissing(
            f"{folder}: {len(stale)} of the pretraining scans changed since they were cached (re-ingested; e.g. "
            f"{stale[:3]}). Rebuild them with:\n    fmct cache --dataset {dataset} --profile {profile_name}")
    is_main = setup(device).is_main
    if len(scan_ids) < len(wanted) and is_main:
        log.warning("%d of %d pretraining scans were rejected by preprocessing (see %s)",
                    len(wanted) - len(scan_ids), len(wanted), rejects)
    volumes = CachedVolumes(dataset, spec, scan_ids=scan_ids)
    watch = None
    if monitor and is_main and not (resume and (run_dir / DONE_FILE).exists()):
        from .monitor import KnnMonitor, monitor_tasks
        watch = KnnMonitor(dataset, scans, monitor_tasks(dataset, scans), spec, seed)
        if watch.unscored:
            log.warning(watch.unscored)
    return pretrain_on(volumes, method=method, profile=profile, run_dir=run_dir, seed=seed, resume=resume,
                       max_steps=max_steps, device=device, progress=progress, batch_size=batch_size,
                       accum_steps=accum_steps, checkpoint_every=checkpoint_every, num_workers=num_workers,
                       options=options, monitor=watch, scan_ids=scan_ids,
                       meta={"dataset": dataset, "fraction": fraction, "n_scans": len(scan_ids),
                             "n_rejected": len(wanted) - len(scan_ids)},
                       preprocess=spec.to_dict())

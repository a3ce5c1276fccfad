"""Downstream protocols (paper, Methods "Fine tuning and probing", "Few-shot"; Fig. 1e–g, Fig. 2).

One binary classifier per task on the encoder, trained and evaluated separately per task:

- ``finetune``: pretrained encoder + linear head on the cls token, all weights trained.
- ``linear``: frozen pretrained encoder, linear head on the cls token (``models.heads.LinearHead``).
- ``attentive``: frozen pretrained encoder, learned-query attention pooling over all tokens.
- ``scratch``: randomly initialised encoder + linear head, all weights trained, with the paper's
  hyper-parameter sweep (``profile.scratch_grid``) chosen by validation AUROC; the choice is recorded
  (``config.json["choice"]``).
- few-shot (``k_shot=K``, or ``protocol="fewshot"``): K positives and K negatives drawn without replacement
  from the training split, full fine-tuning with the same settings; resamples differ by ``seed``.
- ``histogram``: no deep model, a reference (not in the paper): logistic regression on the histogram of
  each windowed input channel (``baselines``), on the same training rows or K-shot draw; its C is chosen
  by validation AUROC and recorded as ``choice``.

Training (``finetuning.fit``): AdamW, LR ``profile.finetune_lr_encoder`` (paper 1e-5) encoder / 1e-3 head, linear
warm-up over the first 10% of steps then cosine to 0 (per step), weight decay 0.01 and gradient clipping
at 1.0 (the authors' CLI values; the paper does not give them), two-class softmax cross-entropy, at most
``profile.finetune_epochs`` epochs on a class-balanced draw (with replacement) of
``profile.finetune_subset`` scans per epoch — for few-shot too, drawn from its 2K scans (the paper: "the
same hyperparameter settings"; the authors' code instead passes the 2K scans once per epoch).
Augmentation on the input batch as the authors' downstream code: flips with p = 0.1 per axis (never
left-right for lateralised tasks) and an intensity offset in ±0.1 with p = 0.5. After every epoch the
model is scored on the validation split; the epoch with the best validation AUROC is kept and evaluated
(the authors' code does this; the paper says "a maximum of 10 epochs"). Without a two-class validation
set the last epoch is kept.

External validation (Fig. 1f–g): ``train_filter``/``eval_filter`` select rows of the scan tables by
column values, e.g. ``train_filter={"site": "internal"}, eval_filter={"site": "external"}`` trains on the
internal site's training split and tests on the external site's test split; ``{"site": "external"}``
for both is in-domain fine-tuning on the external site. ``eval_dataset`` tests on another dataset. The
external-validation model is the internal run's own classifier: a run on all training data keeps its
classifier (``trained/`` beside the runs), and a run that differs from it only in its evaluation loads it
instead of training again.

Every run writes ``predictions.csv`` (scan_id, task, protocol, seed, k, probability, label, dataset,
eval_dataset, train_filter, eval_filter), ``config.json`` and a ``done`` marker into its run directory,
and returns at once when the marker exists (resume). Embeddings for retrieval, t-SNE/UMAP and probes
come from ``embeddings.embed`` (``fmct embed``).
"""
from __future__ import annotations

import hashlib
import itertools
import json
import warnings
from collections import OrderedDict
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .config import get_profile
from .finetuning import (HParams, ProtocolSkipped, VolumeSource, augment_batch, balanced_draw, fewshot_draw, fit,
                         predict)
from .io import atomic_write_text
from .models.heads import Classifier, build_head

__all__ = [
    "HParams", "VolumeSource", "ProtocolSkipped", "PROTOCOLS", "fit", "predict", "augment_batch",
    "balanced_draw", "fewshot_draw", "load_encoder", "run_protocol", "run_sweep", "fewshot_sweep",
    "read_predictions",
]

PROTOCOLS = ("finetune", "linear", "attentive", "scratch", "histogram")
FROZEN = {"linear": True, "attentive": True, "finetune": False, "scratch": False}
HEAD = {"linear": "linear", "attentive": "attentive", "finetune": "linear", "scratch": "linear"}
ENCODER_FREE = ("scratch", "histogram")  # protocols that never read the encoder argument
PROTOCOL_COLUMNS = ["manufacturer", "slice_thickness_mm", "kvp", "site"]
IN_MEMORY_BYTES = 1 << 30  # model inputs of a run's split are held in memory up to this size (float32)
HELD_BYTES = 2 << 30       # in-memory inputs kept for the next runs of this process (a sweep, a notebook)
_HELD: "OrderedDict[tuple, torch.Tensor]" = OrderedDict()


# ------------------------------------------------------------------------------------- data access
def load_encoder(path):
    """An encoder from one of our checkpoints, or from the authors' released layouts."""
    from .models.checkpoints import CheckpointError, load_checkpoint, load_reference_checkpoint
    try:
        return load_checkpoint(path)[0]
    except CheckpointError:
        return load_reference_checkpoint(path)


def prepare_cache(dataset: str, scans: pd.DataFrame, spec) -> None:
    """Build the preprocessing cache of ``dataset`` for these rows where it is missing (one call, so one
    worker pool, per dataset and run)."""
    from .data.cache import build_cache
    if len(scans):
        build_cache(dataset, spec, scans=list(scans["scan_id"].drop_duplicates()))


def volume_source(dataset: str, scans: pd.DataFrame, spec, num_workers: int = 0):
    """Cached model inputs for the rows of ``scans`` → ``(VolumeSource, rows)``. Scans the cache rejected
    (see ``prepare_cache``) are left out with a warning; the rows returned say which remain. Where the
    inputs of all rows fit in ``IN_MEMORY_BYTES`` (toy and demo profiles) they are computed once and held
    as one tensor (the inputs are deterministic: augmentation runs on the batch), else read per batch.
    Such a tensor is kept for later calls with the same scans of the same cache build (up to
    ``HELD_BYTES``, least recently used first out), so the runs of a sweep make their inputs once."""
    from functools import partial

    from .data.cache import CachedVolumes, cache_dir, read_index
    from .preprocess import model_input
    cached = set(read_index(dataset, spec)["scan_id"].astype(str)) if len(scans) else set()
    kept = scans[scans["scan_id"].astype(str).isin(cached)].reset_index(drop=True)
    if len(kept) < len(scans):
        warnings.warn(f"{dataset}: {len(scans) - len(kept)} scan(s) are not in the cache (rejected by "
                      f"preprocessing, see rejects.csv) and are left out")
    data = CachedVolumes(dataset, spec, scan_ids=list(kept["scan_id"]))
    source = VolumeSource(data, to_input=partial(model_input, spec=spec), num_workers=num_workers)
    if len(kept) * 4 * 3 * spec.input_size ** 3 <= IN_MEMORY_BYTES:  # small profiles: inputs made once
        index = cache_dir(dataset, spec).resolve() / "index.csv"
        stat = index.stat() if index.exists() else None
        key = (str(index), stat and (stat.st_mtime_ns, stat.st_size), spec.hash, tuple(kept["scan_id"].astype(str)))
        if key not in _HELD:
            _HELD[key] = torch.cat(list(source.batches(range(len(kept)), 32)))
            while len(_HELD) > 1 and sum(x.numel() * x.element_size() for x in _HELD.values()) > HELD_BYTES:
                _HELD.popitem(last=False)
        _HELD.move_to_end(key)
        source = VolumeSource(_HELD[key])
    return source, kept


def _select(scans: pd.DataFrame, filt: dict | None, split: str | None, task: str | None,
            where: str) -> pd.DataFrame:
    """Rows matching ``filt`` (column → value or list of values) and ``split``, with a known ``task`` label."""
    if task is not None and task not in scans.columns:
        raise ProtocolSkipped(f"{where}: no label column {task!r}")
    for column, value in (filt or {}).items():
        if column not in scans.columns:
            raise ValueError(f"{where}: filter column {column!r} is not in the scan table")
        values = value if isinstance(value, (list, tuple, set)) else [value]
        scans = scans[scans[column].astype(str).isin([str(v) for v in values])]
    if split is not None:
        scans = scans[scans["split"] == split]
    return (scans[scans[task].notna()] if task is not None else scans).reset_index(drop=True)


def _filter_tag(filt: dict | None) -> str:
    return ",".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                    for k, v in sorted((filt or {}).items()))


def _encoder_tag(encoder) -> str:
    if encoder is None:
        return "none"
    p = Path(encoder)
    return p.parent.name if p.stem in ("encoder", "model", "checkpoint") else p.stem


# --------------------------------------------------------------------------------------- protocols
def run_protocol(dataset: str = "synthetic", task: str = "ich", protocol: str = "finetune", encoder=None,
                 profile="demo", train_scans: pd.DataFrame | None = None, eval_dataset: str | None = None,
                 eval_split: str = "test", k_shot: int | None = None, seed: int = 0, run_dir=None,
                 hparams: dict | None = None, train_filter: dict | None = None, eval_filter: dict | None = None,
                 spec=None, device: str | None = None, progress: bool = True, run_root=None,
                 num_workers: int = 0, return_model: bool = False):
    """Train one protocol on one task and predict the evaluation split → the predictions table
    (``(predictions, classifier)`` with ``return_model``; the classifier is None for ``histogram``).

    ``train_scans`` replaces the training split (rows of a scan table). ``eval_filter`` defaults to
    ``train_filter`` when evaluating on the same dataset. ``hparams`` overrides ``HParams`` fields.
    ``spec`` is the preprocessing (default ``preprocess.paper_spec(profile)``; ``reference_spec`` for the
    authors' weights). The run directory is ``run_dir``, else
    ``<run_root or runs/downstream>/<default_run_name(...)>``.

    The classifier of a run on all training data is kept (``trained_model_path``) and reused by every run
    that differs from it only in what it is evaluated on (external validation, Fig. 1f–g; attention, Fig. 5).
    """
    profile = get_profile(profile)
    if protocol == "fewshot":
        if not k_shot:
            raise ValueError("protocol 'fewshot' needs k_shot")
        protocol = "finetune"
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; choose one of {PROTOCOLS} or 'fewshot'")
    if protocol not in ENCODER_FREE and encoder is None:
        raise ValueError(f"protocol {protocol!r} needs a pretrained encoder checkpoint (encoder=PATH)")
    eval_dataset = eval_dataset or dataset
    if eval_filter is None and eval_dataset == dataset:
        eval_filter = train_filter
    hp = HParams.from_profile(profile, **(hparams or {}))
    if spec is None:
        from .preprocess import paper_spec
        spec = paper_spec(profile)
    if any(side in task for side in ("left", "right")):
        hp = replace(hp, flip_axes=tuple(a for a in hp.flip_axes if a != 0))  # axis 0 is left-right (RAS)
    signature = {
        "dataset": dataset, "task": task, "protocol": protocol,
        "encoder": str(encoder) if encoder and protocol not in ENCODER_FREE else None,
        "profile": profile.name, "spec": spec.hash, "eval_dataset": eval_dataset, "eval_split": eval_split,
        "k": k_shot, "scratch_grid": profile.scratch_grid if protocol == "scratch" else None,
        "seed": seed, "train_filter": train_filter, "eval_filter": eval_filter, "hparams": asdict(hp),
        "train_scans": None if train_scans is None else hashlib.sha256(
            ",".join(sorted(map(str, train_scans["scan_id"]))).encode()).hexdigest()[:12],
    }
    from .paths import runs_root
    run_root = Path(run_root or runs_root() / "downstream")
    run_dir = Path(run_dir or run_root / default_run_name(signature))
    model_file = trained_model_path(signature, run_root) if protocol != "histogram" and not k_shot else None
    if (run_dir / "done").exists():
        stored = json.loads((run_dir / "config.json").read_text())["signature"]
        if _as_stored(signature) != {**stored, **_no_encoder(stored)}:
            raise ValueError(f"{run_dir} holds a finished run with other settings; choose another run_dir")
        if not return_model:
            return read_predictions(run_dir / "predictions.csv")
        if protocol == "histogram" or (model_file is not None and model_file.exists()):
            model = None if protocol == "histogram" else _load_trained(model_file, signature, encoder, profile)[0]
            return read_predictions(run_dir / "predictions.csv"), model
        # a finished run whose classifier was not kept (K-shot, or older than kept classifiers): train it again

    from .data.manifest import load_scans
    table = load_scans(dataset)
    train = (train_scans.reset_index(drop=True) if train_scans is not None
             else _select(table, train_filter, "train", task, f"{dataset} train"))
    train = train[train[task].notna()].reset_index(drop=True)
    val = _select(table, train_filter, "val", task, f"{dataset} val")
    test = _select(load_scans(eval_dataset) if eval_dataset != dataset else table, eval_filter, eval_split,
                   task, f"{eval_dataset} {eval_split}")
    if test.empty:
        raise ProtocolSkipped(f"no {eval_split} scans with a {task!r} label in {eval_dataset} {eval_filter or ''}")
    if eval_dataset == dataset:
        prepare_cache(dataset, pd.concat([train, val, test]), spec)
    else:
        prepare_cache(dataset, pd.concat([train, val]), spec)
        prepare_cache(eval_dataset, test, spec)
    train_source, train = volume_source(dataset, train, spec, num_workers)
    test_source, test = volume_source(eval_dataset, test, spec, num_workers)
    val_source, val = volume_source(dataset, val, spec, num_workers) if len(val) else (None, val)
    train_indices = None
    if k_shot:
        train_indices = fewshot_draw(train[task].to_numpy(), k_shot, np.random.default_rng(seed))
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    fit_args = dict(train=train_source, train_labels=train[task].to_numpy(int),
                    val=val_source, val_labels=val[task].to_numpy(int),
                    train_indices=train_indices, device=device, progress=progress)

    torch.manual_seed(seed)
    model, grid_results, chosen, history = None, None, None, []
    if protocol == "histogram":
        probs, chosen = _histogram_baseline(fit_args, test_source, hp.batch_size)
    elif model_file is not None and model_file.exists():
        model, kept = _load_trained(model_file, signature, encoder, profile)
        history, chosen, grid_results = kept["history"], kept["choice"], kept["scratch_grid"]
    elif protocol == "scratch":
        model, history, chosen, grid_results = _scratch_sweep(profile, hp, seed, fit_args)
    else:
        encoder_model = load_encoder(encoder)
        if encoder_model.config.img_size != spec.input_size:
            raise ValueError(f"{encoder}: the encoder takes {encoder_model.config.img_size}³ inputs but the "
                             f"preprocessing makes {spec.input_size}³ (profile {profile.name!r})")
        model = Classifier(encoder_model, build_head(HEAD[protocol], encoder_model))
        history = fit(model, hp=hp, frozen=FROZEN[protocol], seed=seed, **fit_args)
    if model_file is not None and not model_file.exists():
        _save_trained(model_file, model, protocol, {"signature": training_signature(signature), "history": history,
                                                    "choice": chosen, "scratch_grid": grid_results})
    if model is not None:
        probs = predict(model, test_source, hp.batch_size, device=device)
    predictions = pd.DataFrame({
        "scan_id": test["scan_id"].astype(str), "task": task, "protocol": protocol, "seed": seed,
        "k": pd.array([k_shot or None] * len(test), dtype="Int64"), "probability": probs,
        "label": test[task].to_numpy(int),
        "dataset": dataset, "eval_dataset": eval_dataset, "train_filter": _filter_tag(train_filter),
        "eval_filter": _filter_tag(eval_filter)})
    config = {"signature": signature, "history": history, "n_train": len(train), "n_val": len(val),
              "n_eval": len(test), "train_scan_ids": None if train_indices is None
              else list(train["scan_id"].iloc[train_indices].astype(str)),
              "choice": chosen, "scratch_grid": grid_results, "spec": spec.to_dict()}
    atomic_write_text(run_dir / "predictions.csv", predictions.to_csv(index=False))
    atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2, default=str))
    atomic_write_text(run_dir / "done", "")
    return (predictions, model) if return_model else predictions


# -------------------------------------------------------------------------------- trained classifiers
EVAL_KEYS = ("eval_dataset", "eval_split", "eval_filter")


def training_signature(signature: dict) -> dict:
    """A run's signature without what it is evaluated on: runs with equal ones train the same classifier."""
    return {k: v for k, v in signature.items() if k not in EVAL_KEYS}


def trained_model_path(signature: dict, run_root) -> Path:
    """``<run_root>/trained/<default_run_name without the evaluation>/model.safetensors``."""
    return Path(run_root) / "trained" / default_run_name(signature, evaluation=False) / "model.safetensors"


def _save_trained(path: Path, model: Classifier, protocol: str, config: dict) -> None:
    """The classifier's weights (only the head's where the encoder was frozen: it is the pretrained one)."""
    from .models.checkpoints import save_checkpoint
    save_checkpoint(path, model.head if FROZEN[protocol] else model, config)


def _load_trained(path: Path, signature: dict, encoder, profile) -> tuple[Classifier, dict]:
    """The classifier kept at ``path``, which must have been trained with ``signature``'s training part (as a
    finished run directory must hold the run asked for: two encoders in folders of one name share a path)."""
    from safetensors.torch import load_file

    from .models.checkpoints import read_checkpoint_config
    from .models.vit3d import vit_from_config
    kept = read_checkpoint_config(path)
    if kept["signature"] != _as_stored(training_signature(signature)):
        raise ValueError(f"{path} holds a classifier trained with other settings; move it away or choose another "
                         f"run_root")
    protocol = signature["protocol"]
    encoder_model = vit_from_config(profile.model) if protocol == "scratch" else load_encoder(encoder)
    model = Classifier(encoder_model, build_head(HEAD[protocol], encoder_model))
    (model.head if FROZEN[protocol] else model).load_state_dict(load_file(str(path)))
    return model, kept


def _as_stored(signature: dict) -> dict:
    """``signature`` as it reads back from JSON (tuples as lists), to compare with a stored one."""
    return json.loads(json.dumps(signature))


def _no_encoder(signature: dict) -> dict:
    """Runs of encoder-free protocols stored before their signature dropped the (unused) encoder still match."""
    return {"encoder": None} if signature.get("protocol") in ENCODER_FREE else {}


def read_predictions(path) -> pd.DataFrame:
    """A run's ``predictions.csv`` with the dtypes ``run_protocol`` returns (k as nullable integer)."""
    df = pd.read_csv(path, dtype={"scan_id": str, "k": "Int64", "train_filter": str, "eval_filter": str})
    return df.fillna({"train_filter": "", "eval_filter": ""})


def _histogram_baseline(fit_args: dict, test: VolumeSource, batch_size: int) -> tuple[np.ndarray, dict]:
    """The ``histogram`` protocol: fit ``baselines.fit_histogram_classifier`` on the training rows (or the
    K-shot draw), choose its C on validation, predict ``test``."""
    from .baselines import fit_histogram_classifier, window_histograms

    def features(source, indices=None):
        indices = range(len(source)) if indices is None else indices
        return np.concatenate([window_histograms(x) for x in source.batches(indices, 4 * batch_size)])

    train, labels, rows = fit_args["train"], np.asarray(fit_args["train_labels"]), fit_args["train_indices"]
    rows = np.arange(len(labels)) if rows is None else np.asarray(rows)
    val = fit_args["val"]
    model, chosen = fit_histogram_classifier(features(train, rows), labels[rows],
                                             None if val is None else features(val), fit_args["val_labels"])
    return model.predict_proba(features(test))[:, 1].astype(np.float64), chosen


def _scratch_sweep(profile, hp: HParams, seed: int, fit_args: dict):
    """Train a random-init ViT per grid point (lr for all weights, weight decay, epochs, optimiser) and keep
    the one with the best validation AUROC (paper: "hyperparameter sweeps ... report the best")."""
    from .models.vit3d import vit_from_config
    grid = profile.scratch_grid or {}
    keys = list(grid)
    results, best = [], None
    for values in itertools.product(*(grid[k] for k in keys)):
        point = dict(zip(keys, values))
        lr = point.get("lr", hp.lr_head)
        trial_hp = replace(hp, lr_encoder=lr, lr_head=lr, weight_decay=point.get("weight_decay", hp.weight_decay),
                           epochs=point.get("epochs", hp.epochs), optimizer=point.get("optimizer", hp.optimizer))
        torch.manual_seed(seed)
        encoder = vit_from_config(profile.model)
        model = Classifier(encoder, build_head("linear", encoder))
        history = fit(model, hp=trial_hp, frozen=False, seed=seed, **fit_args)
        val_auc = max((h.get("val_auroc", float("nan")) for h in history), default=float("nan"),
                      key=lambda v: -np.inf if not np.isfinite(v) else v)
        results.append({**point, "val_auroc": val_auc})
        if best is None or (np.isfinite(val_auc) and not val_auc <= best[0]):
            best = (val_auc if np.isfinite(val_auc) else -np.inf, model, history, point)
    _, model, history, chosen = best
    return model, history, chosen, results


def default_run_name(signature: dict, evaluation: bool = True) -> str:
    """``<profile>/<encoder>/<train data>__<eval data>/<task>/<protocol>[-k<K>]/seed<seed>[-<hparams hash>]``
    (without ``__<eval data>`` where ``evaluation`` is false: the name of the trained classifier)."""
    s = signature
    train = s["dataset"] + (f"[{_filter_tag(s['train_filter'])}]" if s["train_filter"] else "")
    if s["train_scans"]:
        train += f"[scans={s['train_scans']}]"
    tested = s["eval_dataset"] + (f"[{_filter_tag(s['eval_filter'])}]" if s["eval_filter"] else "")
    defaults = asdict(HParams.from_profile(s["profile"]))
    tuned = {k: v for k, v in s["hparams"].items() if k != "flip_axes" and defaults.get(k) != v}
    from .preprocess import paper_spec
    if s["spec"] != paper_spec(s["profile"]).hash:
        tuned["spec"] = s["spec"]
    if s.get("scratch_grid") and s["scratch_grid"] != get_profile(s["profile"]).scratch_grid:
        tuned["scratch_grid"] = s["scratch_grid"]
    suffix = "-" + hashlib.sha256(json.dumps(tuned, sort_keys=True).encode()).hexdigest()[:8] if tuned else ""
    encoder = s["protocol"] if s["protocol"] in ENCODER_FREE else _encoder_tag(s["encoder"])
    protocol = s["protocol"] + (f"-k{s['k']}" if s["k"] else "")
    data = f"{train}__{tested}-{s['eval_split']}" if evaluation else train
    return f"{s['profile']}/{encoder}/{data}/{s['task']}/{protocol}/seed{s['seed']}{suffix}"


def run_sweep(dataset: str, tasks, protocols, encoder, profile, shots=None, resamples=None,
              eval_dataset: str | None = None, run_root=None, seed: int = 0, train_filter: dict | None = None,
              eval_filter: dict | None = None, hparams: dict | None = None, eval_split: str = "test",
              device: str | None = None, num_workers: int = 0, progress: bool = True,
              n_seeds: int = 1) -> pd.DataFrame:
    """Run every (task, protocol) and concatenate the predictions; finished runs are read back, not redone.

    Each (task, protocol) is trained ``n_seeds`` times, with seeds ``seed … seed + n_seeds − 1`` (the
    statistics report a model trained with several seeds as their mean). ``"fewshot"`` in ``protocols``
    expands to full fine-tuning with K ∈ ``shots`` (default ``profile.fewshot_shots``) × ``resamples``
    (default ``profile.fewshot_resamples``; resample r uses seed ``seed + r``) plus the all-data
    fine-tuning runs (the paper's star, ``n_seeds`` of them). Runs that cannot be made from the
    data (``ProtocolSkipped``) are warned about and listed in ``result.attrs["skipped"]``.
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
                    eval_filter=eval_filter, device=device, num_workers=num_workers)


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

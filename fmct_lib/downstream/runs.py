"""One downstream run: a protocol trained on one task and its predictions on the evaluation split.

Training (``fit``): AdamW, LR ``profile.finetune_lr_encoder`` (paper 1e-5) encoder / 1e-3 head, a one-epoch
linear warm-up then cosine to 0 at the cap (per step), weight decay 0.01 and gradient clipping at 1.0 (the
authors' CLI values; the paper does not give them), two-class softmax cross-entropy, epochs of a class-balanced
draw (with replacement) of ``profile.finetune_draws(dataset)`` scans (paper: 5,000; 500 on CQ500) — for few-shot too, drawn from its 2K scans (the
paper: "the same hyperparameter settings"; the authors' code instead passes the 2K scans once per epoch).
Augmentation on the input batch as the authors' downstream code: flips with p = 0.1 per axis (never left-right
for lateralised tasks) and an intensity offset in ±0.1 with p = 0.5. Every model, pretrained or not, trains by
one convergence rule: after every epoch it is scored on the validation split, the best state is kept, and it
stops when the validation AUROC has not improved for ``profile.finetune_patience`` epochs, never past
``profile.finetune_max_epochs`` (the paper: "a maximum of 10 epochs"; the authors' code keeps the best epoch).
Where and why it stopped is in the run's ``config.json["stopping"]`` and in its predictions' ``stop_reason``,
``stopped_step``, ``best_step`` and ``best_val_auroc`` columns. Without a two-class validation split the model
trains to the cap and the last state is kept. An evaluation split with fewer than 10 positive or negative scans
is warned about (``evaluate.adequacy``), and the warning is the run's ``split_warning`` (column and config entry).

External validation (Fig. 1f–g): ``train_filter``/``eval_filter`` select rows of the scan tables by column
values, e.g. ``train_filter={"site": "internal"}, eval_filter={"site": "external"}`` trains on the internal
site's training split and tests on the external site's test split; ``{"site": "external"}`` for both is
in-domain fine-tuning on the external site. ``eval_dataset`` tests on another dataset.

The encoder is our checkpoint (or the authors'), a path, or another foundation model, a
``models.external.ExternalRef``: its run's preprocessing is its own preset (a ``spec`` of another is refused),
its signature names it ``external:<identity>`` (its weights' sha256, or ``random`` and the seed), and its run
directory ``<profile>/<identity>/…``.

Our own (or the authors') checkpoint enters the signature by its weights, not by where it lies:
``<run folder>@<sha256[:16]>`` (``checkpoint_signature``), and its run directory ``<profile>/<run folder>-<sha256[:8]>/…``.
A moved checkout, or a released copy of a pretraining run, finds the same runs; other weights at the same path
(a re-released encoder) never do.

A run's identity is its signature (every setting it depends on; a scratch run's architecture where it is not its
profile name's own, ``_own_architecture``); its directory name is made from it. Every
run writes ``predictions.csv`` (scan_id, task, protocol, seed, k, probability, label, dataset, eval_dataset,
train_filter, eval_filter), ``config.json`` and a ``done`` marker, and returns at once when the marker exists
(resume) and its predictions' scans and labels are still the evaluation rows of the scan table, the digest
of its training and validation rows it recorded (``reuse.training_rows``) is still theirs, and what else it was made
from (``reuse.reuse_record``: the versions of its volumes, a scratch model's architecture, the frozen features' version)
is unchanged; where any is not (a scan added or withdrawn, a label corrected, a volume re-ingested under its id),
it warns, saying what changed, and runs again in its
directory, and a kept classifier trained otherwise is trained again. A run on all
training data keeps its classifier (``trained/`` beside the runs), and a run that differs from it only in what it
is evaluated on loads it instead of training again.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..config import get_profile, is_whole_number
from ..data.inputs import ProtocolSkipped, select_rows, volume_source
from ..evaluate.adequacy import split_warning
from ..io import LOCK_FILE, atomic_write_text, exclusive_lock
from ..models.external import ExternalRef
from ..models.external.reference import EXTERNAL_PREFIX
from ..models.heads import Classifier
from ..precision import precision_name
from .features import encoder_id
from .training import HParams, fewshot_draw
from .protocols import Protocol, TrainingJob, build_classifier, get_protocol, trained_classifier
from .reuse import (evaluation_changes, kept_classifier, kshot_draw, record_changes, reuse_record, scan_table,
                    train_rows, training_part, training_rows)

__all__ = ["run_protocol", "default_run_name", "training_signature", "trained_model_path", "read_predictions",
           "checkpoint_signature"]

EVAL_KEYS = ("eval_dataset", "eval_split", "eval_filter")


def run_protocol(dataset: str = "synthetic", task: str = "ich", protocol: str = "finetune", encoder=None,
                 profile="demo", train_scans: pd.DataFrame | None = None, eval_dataset: str | None = None,
                 eval_split: str = "test", k_shot: int | None = None, seed: int = 0, run_dir=None,
                 hparams: dict | None = None, train_filter: dict | None = None, eval_filter: dict | None = None,
                 spec=None, device: str | None = None, progress: bool = True, run_root=None,
                 num_workers: int = 0, return_model: bool = False):
    """Train one protocol on one task and predict the evaluation split → the predictions table
    (``(predictions, classifier)`` with ``return_model``; the classifier is None without a deep model).

    ``protocol`` is a name in ``PROTOCOLS`` or ``"fewshot"`` (fine-tuning on a ``k_shot`` draw: K positives
    and K negatives from the training split, the draw set by ``seed``). ``train_scans`` replaces the training
    split (rows of a scan table). ``eval_filter`` defaults to ``train_filter`` when evaluating on the same
    dataset. ``hparams`` overrides ``HParams`` fields. ``encoder`` is a checkpoint path or an ``ExternalRef``.
    ``spec`` is the preprocessing (default ``paper_spec(profile)``, or an external encoder's own preset, the only
    one it accepts; ``reference_spec`` for the authors' weights); its cache must have been built
    (``fmct_lib.pipeline``). The run directory is ``run_dir``, else
    ``<run_root or runs/downstream>/<default_run_name(...)>``.
    """
    profile = get_profile(profile)
    if encoder is not None and not isinstance(encoder, ExternalRef):
        encoder = str(Path(encoder).expanduser())  # ~ is the home folder
    # K = 0 trained on all the data under the all-data run's folder, recorded as k 0, and barred the real one
    if k_shot is not None and not is_whole_number(k_shot, least=1):
        raise ValueError(f"k_shot {k_shot!r}: a whole number of at least 1 (None: all training data)")
    k_shot = None if k_shot is None else int(k_shot)  # 8.0 is K = 8, and its run is named so
    if protocol == "fewshot":
        if not k_shot:
            raise ValueError("protocol 'fewshot' needs k_shot")
        protocol = "finetune"
    proto = get_protocol(protocol)
    if proto.needs_encoder and encoder is None:
        raise ValueError(f"protocol {protocol!r} needs a pretrained encoder checkpoint (encoder=PATH)")
    eval_dataset = eval_dataset or dataset
    if eval_filter is None and eval_dataset == dataset:
        eval_filter = train_filter
    hp = HParams.from_profile(profile, dataset, **(hparams or {}))
    external = isinstance(encoder, ExternalRef) and proto.needs_encoder
    if spec is None:
        from ..data.preprocess import paper_spec
        spec = encoder.spec(profile) if external else paper_spec(profile)
    if external:
        encoder.check_spec(spec, profile)
    if any(side in task for side in ("left", "right")):  # never flip the left-right axis (RAS, SPL: by the letters)
        across = next(i for i, letter in enumerate(spec.orientation) if letter in "LR")
        hp = replace(hp, flip_axes=tuple(a for a in hp.flip_axes if a != across))
    signature = {
        "dataset": dataset, "task": task, "protocol": protocol,
        "encoder": ((encoder.signature if external else checkpoint_signature(encoder)) if encoder and proto.needs_encoder
                    else None),
        "profile": profile.name, "spec": spec.hash, "eval_dataset": eval_dataset, "eval_split": eval_split,
        "k": k_shot, "scratch_grid": profile.scratch_grid if proto.scratch_grid else None,
        "seed": seed, "train_filter": train_filter, "eval_filter": eval_filter, "hparams": asdict(hp),
        "train_scans": None if train_scans is None else hashlib.sha256(
            ",".join(sorted(map(str, train_scans["scan_id"]))).encode()).hexdigest()[:12],
        **_own_architecture(proto, profile),
    }
    from ..paths import runs_root
    run_root = Path(run_root or runs_root() / "downstream")
    run_dir = Path(run_dir or run_root / default_run_name(signature, profile=profile))
    model_file = trained_model_path(signature, run_root, profile) if proto.head is not None and not k_shot else None
    where = f"{eval_dataset} {eval_split}" + (f" [{_filter_tag(eval_filter)}]" if eval_filter else "")
    stale = False
    if (run_dir / "done").exists():
        stored_config = json.loads((run_dir / "config.json").read_text())
        stored = {**stored_config["signature"], **_no_encoder(stored_config["signature"])}
        if _as_stored(signature) != stored:
            raise ValueError(f"{run_dir} holds a finished run with other settings "
                             f"({_differences(stored, _as_stored(signature))}); choose another run_dir")
        finished = read_predictions(run_dir / "predictions.csv")
        evaluation = evaluation_changes(signature, spec, finished)
        recorded = stored_config.get("training_rows")
        rows_changed = bool(recorded) and recorded != training_rows(signature, train_scans, default=recorded)
        said = {"eval_images"} if evaluation else set()  # other rows have other volumes: said once, as rows
        if rows_changed:
            said.add("training_images")
        changes = [evaluation] + (["training or validation rows or labels changed"] if rows_changed else [])
        changes += record_changes(stored_config.get("reuse_record") or {},
                                   reuse_record(signature, proto, profile, spec, train_scans, device), said)
        changes = ", ".join(filter(None, changes))
        drawn = stored_config.get("train_scan_ids")
        if k_shot and drawn and (today := kshot_draw(signature, spec, train_scans)) is not None and today != drawn:
            changes = ", ".join(filter(None, [changes, f"the K-shot draw from today's training rows differs in "
                                                       f"{len(set(today) ^ set(drawn))} scan(s)"]))
        if changes:
            import warnings
            warnings.warn(f"{run_dir}: changed since this run finished ({changes}); running it again", stacklevel=2)
            stale = True
        elif not return_model:
            return _with_split_warning(finished, task, where)
        elif proto.head is None or (model_file is not None and model_file.exists()):
            model = None if proto.head is None else _load_trained(model_file, signature, proto, encoder, profile)[0]
            return _with_split_warning(finished, task, where), model
        # a finished run whose classifier was not kept (K-shot, or older than kept classifiers): train it again

    # one process per run directory: a second one fails at once (LockBusy names the holder)
    with exclusive_lock(run_dir / LOCK_FILE, what=f"run directory {run_dir}", wait=0):
        try:
            job, train, val, test, test_source = _training_job(signature, proto, profile, hp, spec, encoder,
                                                               train_scans, device, progress, num_workers,
                                                               run_root / "features")
        except ProtocolSkipped:  # today's rows cannot make this run (one class left): its old one is no longer it
            if stale:
                (run_dir / "done").unlink(missing_ok=True)
            raise
        torch.manual_seed(seed)
        rows = training_rows(signature, train_scans)
        record = reuse_record(signature, proto, profile, spec, train_scans, job.device)
        kept = kept_classifier(model_file, signature, rows, record)
        if kept is not None:
            model, kept = _load_trained(model_file, signature, proto, encoder, profile)
            trained = trained_classifier(model, job, kept["history"], kept["stopping"], kept["choice"], kept["scratch_grid"])
        else:
            trained = proto.train(job)
        if model_file is not None and kept is None:
            _save_trained(model_file, trained.model, proto, {"signature": training_signature(signature),
                                                             "history": trained.history, "stopping": trained.stopping,
                                                             "choice": trained.choice, "scratch_grid": trained.grid,
                                                             "training_rows": rows,
                                                             "reuse_record": training_part(record)})
        predictions = pd.DataFrame({
            "scan_id": test["scan_id"].astype(str), "task": task, "protocol": protocol, "seed": seed,
            "k": pd.array([k_shot or None] * len(test), dtype="Int64"), "probability": trained.predict(test_source),
            "label": test[task].to_numpy(int),
            "dataset": dataset, "eval_dataset": eval_dataset, "train_filter": _filter_tag(train_filter),
            "eval_filter": _filter_tag(eval_filter), **_stopping_columns(trained.stopping, len(test))})
        predictions = _with_split_warning(predictions, task, where)
        config = {"signature": signature, "history": trained.history, "stopping": trained.stopping,
                  "n_train": len(train), "n_val": len(val),
                  "n_eval": len(test), "train_scan_ids": None if job.train_indices is None
                  else list(train["scan_id"].iloc[job.train_indices].astype(str)),
                  "choice": trained.choice, "scratch_grid": trained.grid, "spec": spec.to_dict(),
                  "device": job.device, "precision": precision_name(job.device), "training_rows": rows,
                  "reuse_record": record,
                  "split_warning": predictions["split_warning"].iloc[0],
                  **({"external_encoder": encoder.to_dict()} if external else {})}
        if stale:  # unfinished until its new predictions are written (a failure before keeps the finished run)
            (run_dir / "done").unlink(missing_ok=True)
        atomic_write_text(run_dir / "predictions.csv", predictions.to_csv(index=False))
        atomic_write_text(run_dir / "config.json", json.dumps(config, indent=2, default=str))
        atomic_write_text(run_dir / "done", "")
        return (predictions, trained.model) if return_model else predictions


def _with_split_warning(predictions: pd.DataFrame, task: str, where: str) -> pd.DataFrame:
    """``predictions`` with the ``split_warning`` column (``evaluate.adequacy.split_warning`` of its labels; ``""``
    where the evaluation split has 10 or more of each class), issued as a warning where there is one."""
    warning = split_warning(predictions["label"], where=where, task=task)
    if warning:
        import warnings
        warnings.warn(warning, stacklevel=3)
    return predictions.assign(split_warning=warning)


def _stopping_columns(stopping: dict | None, n: int) -> dict:
    """Where and why the run's model stopped, as columns of its ``n`` predictions (empty without a deep model)."""
    s = stopping or {}
    return {"stop_reason": s.get("reason", ""),
            **{k: pd.array([s.get(k)] * n, dtype="Int64") for k in ("stopped_step", "best_step")},
            "best_val_auroc": float(s["best_val_auroc"]) if s.get("best_val_auroc") is not None else np.nan}


def _training_job(signature: dict, proto: Protocol, profile, hp: HParams, spec, encoder, train_scans, device,
                  progress: bool, num_workers: int, feature_cache: Path):
    """The run's rows (training, validation, evaluation) and their cached inputs, as a ``TrainingJob`` plus
    the evaluation rows and their source."""
    s = signature
    dataset, task, eval_dataset = s["dataset"], s["task"], s["eval_dataset"]
    table = scan_table(dataset)  # read once while unchanged (the reuse checks read it too)
    train = train_rows(signature, train_scans)
    val = select_rows(table, s["train_filter"], "val", task, f"{dataset} val")
    test = select_rows(scan_table(eval_dataset), s["eval_filter"],
                       s["eval_split"], task, f"{eval_dataset} {s['eval_split']}")
    if test.empty:
        raise ProtocolSkipped(f"no {s['eval_split']} scans with a {task!r} label in {eval_dataset} "
                              f"{s['eval_filter'] or ''}")
    train_source, train = volume_source(dataset, train, spec, num_workers)
    test_source, test = volume_source(eval_dataset, test, spec, num_workers)
    val_source, val = volume_source(dataset, val, spec, num_workers) if len(val) else (None, val)
    _check_classes(task, train=(train, f"{dataset} train", s["train_filter"]),
                   test=(test, f"{eval_dataset} {s['eval_split']}", s["eval_filter"]),
                   val=(val, f"{dataset} val", s["train_filter"]))
    train_indices = None
    if s["k"]:
        train_indices = fewshot_draw(train[task].to_numpy(), s["k"], np.random.default_rng(s["seed"]))
    job = TrainingJob(profile=profile, hp=hp, seed=s["seed"], encoder=encoder, input_size=spec.input_size,
                      train=train_source, train_labels=train[task].to_numpy(int), val=val_source,
                      val_labels=val[task].to_numpy(int), train_indices=train_indices,
                      device=device or ("cuda" if torch.cuda.is_available() else "cpu"), progress=progress,
                      feature_cache=feature_cache)
    return job, train, val, test, test_source


def _check_classes(task: str, **splits) -> None:
    """A run needs both classes of ``task`` in its training and evaluation rows (else ``ProtocolSkipped``, with
    the reason); a validation split without both is warned about: nothing can be chosen on it, and the run
    records that (its model trains to the cap, the histogram reference keeps its largest C).
    ``splits``: name → (rows, where, filter)."""
    import warnings
    for name, (rows, where, filt) in splits.items():
        y = rows[task].to_numpy(float)
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        if n_pos and n_neg:
            continue
        lack = (f"{where}{f' [{_filter_tag(filt)}]' if filt else ''}: no {'positive' if not n_pos else 'negative'} "
                f"{task!r} scans ({n_pos} positive, {n_neg} negative)")
        if name == "val":
            warnings.warn(f"{lack}: no validation AUROC, nothing is chosen on validation")
        else:
            raise ProtocolSkipped(f"{lack}: {'nothing to train on' if name == 'train' else 'AUROC is undefined'}")


# ------------------------------------------------------------------------------------------ run identity
def default_run_name(signature: dict, evaluation: bool = True, profile=None) -> str:
    """``<profile>/<encoder>/<train data>__<eval data>/<task>/<protocol>[-k<K>]/seed<seed>[-<hparams hash>]``
    (without ``__<eval data>`` where ``evaluation`` is false: the name of the trained classifier). The hash
    names the settings that differ from the named profile's; ``profile``: the ``Profile`` of a name that
    ``config.PROFILES`` does not know (its own name tells its runs apart)."""
    s = signature
    train = s["dataset"] + (f"[{_filter_tag(s['train_filter'])}]" if s["train_filter"] else "")
    if s["train_scans"]:
        train += f"[scans={s['train_scans']}]"
    try:
        named = get_profile(s["profile"])
    except ValueError:
        if profile is None:
            raise
        named = profile
    defaults = asdict(HParams.from_profile(named, s["dataset"]))
    tuned = {k: v for k, v in s["hparams"].items() if k != "flip_axes" and defaults.get(k) != v}
    from ..data.preprocess import paper_spec
    if s["spec"] != paper_spec(named).hash:
        tuned["spec"] = s["spec"]
    if s.get("scratch_grid") and s["scratch_grid"] != named.scratch_grid:
        tuned["scratch_grid"] = s["scratch_grid"]
    if s.get("model"):
        tuned["model"] = s["model"]
    suffix = "-" + hashlib.sha256(json.dumps(tuned, sort_keys=True).encode()).hexdigest()[:8] if tuned else ""
    encoder = _encoder_tag(s["encoder"]) if get_protocol(s["protocol"]).needs_encoder else s["protocol"]
    protocol = s["protocol"] + (f"-k{s['k']}" if s["k"] else "")
    if evaluation:
        tested = s["eval_dataset"] + (f"[{_filter_tag(s['eval_filter'])}]" if s["eval_filter"] else "")
        data = f"{train}__{tested}-{s['eval_split']}"
    else:
        data = train
    return f"{s['profile']}/{encoder}/{data}/{s['task']}/{protocol}/seed{s['seed']}{suffix}"


def _own_architecture(proto: Protocol, profile) -> dict:
    """``{"model": …}`` where the protocol trains a random-init ViT (scratch) of another architecture than the
    named profile's own (a profile changed with ``replace(model=…)``, or one not in ``PROFILES``), for the
    signature; else nothing (the architecture is the profile name's, as in runs made before it was recorded)."""
    if proto.needs_encoder or proto.head is None:
        return {}
    try:
        own = get_profile(profile.name).model
    except ValueError:
        own = None
    return {} if profile.model == own else {"model": profile.model.to_dict()}


def training_signature(signature: dict) -> dict:
    """A run's signature without what it is evaluated on: runs with equal ones train the same classifier."""
    return {k: v for k, v in signature.items() if k not in EVAL_KEYS}


def _filter_tag(filt: dict | None) -> str:
    return ",".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, (list, tuple)) else v}"
                    for k, v in sorted((filt or {}).items()))


def checkpoint_signature(path) -> str:
    """A checkpoint as a run's signature names it: its run folder (or the file's stem) and the first 16 hex digits
    of its sha256 (``downstream.features.encoder_id``), ``synthetic_vicreg_f1_demo_s0@5fc3dcc82914d338``."""
    p = Path(path).expanduser()
    name = p.parent.name if p.stem in ("encoder", "model", "checkpoint") else p.stem
    return f"{name}@{encoder_id(p)}"


def _encoder_tag(encoder) -> str:
    """The encoder's part of a run name: an external encoder's identity, else our checkpoint's run folder (or the
    file's stem) and the first 8 hex digits of its sha256."""
    if encoder is None:
        return "none"
    if encoder.startswith(EXTERNAL_PREFIX):
        return encoder.removeprefix(EXTERNAL_PREFIX)
    name, sha = encoder.rsplit("@", 1)
    return f"{name}-{sha[:8]}"


def _as_stored(signature: dict) -> dict:
    """``signature`` as it reads back from JSON (tuples as lists), to compare with a stored one."""
    return json.loads(json.dumps(signature))


def _differences(stored: dict, now: dict) -> str:
    """``"hparams.patience 10 there, 15 here; seed 0 there, 1 here"``: the settings two signatures differ in."""
    def flat(d, prefix=""):
        out = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
        return out
    a, b = flat(stored), flat(now)
    return "; ".join(f"{k} {a.get(k)!r} there, {b.get(k)!r} here" for k in sorted(a.keys() | b.keys())
                     if a.get(k) != b.get(k))


def _no_encoder(signature: dict) -> dict:
    """Runs of encoder-free protocols stored before their signature dropped the (unused) encoder still match."""
    return {"encoder": None} if not get_protocol(signature["protocol"]).needs_encoder else {}


def read_predictions(path) -> pd.DataFrame:
    """A run's ``predictions.csv`` with the dtypes ``run_protocol`` returns (k and steps as nullable integers)."""
    df = pd.read_csv(path, dtype={"scan_id": str, "k": "Int64", "train_filter": str, "eval_filter": str,
                                  "stop_reason": str, "stopped_step": "Int64", "best_step": "Int64",
                                  "split_warning": str})
    return df.fillna({"train_filter": "", "eval_filter": "", "stop_reason": "", "split_warning": ""})


# ------------------------------------------------------------------------------------ kept classifiers
def trained_model_path(signature: dict, run_root, profile=None) -> Path:
    """``<run_root>/trained/<default_run_name without the evaluation>/model.safetensors``."""
    return (Path(run_root) / "trained" / default_run_name(signature, evaluation=False, profile=profile)
            / "model.safetensors")


def _save_trained(path: Path, model: Classifier, proto: Protocol, config: dict) -> None:
    """The classifier's weights (only the head's where the encoder was frozen: it is the pretrained one)."""
    from ..models.checkpoints import save_checkpoint
    save_checkpoint(path, model.head if proto.frozen else model, config)


def _load_trained(path: Path, signature: dict, proto: Protocol, encoder, profile) -> tuple[Classifier, dict]:
    """The classifier kept at ``path``, which must have been trained with ``signature``'s training part (as a
    finished run directory must hold the run asked for: two encoders in folders of one name share a path)."""
    from safetensors.torch import load_file

    from ..models.checkpoints import read_checkpoint_config
    kept = read_checkpoint_config(path)
    if kept["signature"] != _as_stored(training_signature(signature)):
        raise ValueError(f"{path} holds a classifier trained with other settings "
                         f"({_differences(kept['signature'], _as_stored(training_signature(signature)))}); "
                         f"move it away or choose another "
                         f"run_root")
    model = build_classifier(proto, encoder, profile)
    (model.head if proto.frozen else model).load_state_dict(load_file(str(path)))
    return model, kept

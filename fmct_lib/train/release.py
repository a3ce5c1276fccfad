"""Released encoders: a finished pretraining run published in the repository, and the proof of where it came from.

As the paper's authors publish their weights, this project publishes the demo's pretrained encoders
(``make pretrain``: ``tools/release_encoders.py``); ``pipeline.ensure_pretrained`` starts from them. The
release root is ``$FMCT_ENCODERS`` (default: the checkout's ``encoders/``, committed). Each encoder has a
folder named as its run directory (``default_run_dir(...).name``, e.g. ``synthetic_dino_f1_demo_s0``) with

- ``encoder.safetensors``, ``config.json`` and ``metrics.csv``: the run's weights, configuration and log
  (loss and health signals per step, the validation kNN AUROC at step 0 and every epoch);
- ``release.json``: the weights' sha256, the steps, the minutes they took (the sum of the logged step
  times), the machine (CPU model, cores, torch version, platform), the dates, and the synthetic cohort's
  generating record (``cohort.json``: sizes, seeds, grid).

``MODEL_CARD.md`` beside them (``write_model_card``) says what they are, how they were made and what they
score. ``replay_first_steps`` re-runs the first optimiser steps of a release from its ``config.json`` and
seed, generating and preprocessing only the scans those steps read (``tests/test_provenance.py`` compares the
losses with the released log).
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import fields
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

from ..config import ModelConfig, Profile, get_profile
from ..io import atomic_path, atomic_write_json, atomic_write_text
from ..models.checkpoints import load_checkpoint
from ..paths import encoders_root
from ..workers import watch_parent
from .loop import DONE_FILE, micro_batches
from .methods import get_method
from .trainer import ENCODER_FILE, default_run_dir, pretrain_on, pretraining_scan_ids, run_config

__all__ = ["encoders_root", "final_signal", "teacher_left_uniform", "release_name", "release_run", "released_encoder",
           "verify_release", "list_releases", "write_model_card", "replay_first_steps", "replay_many", "ReleaseCorrupt", "RELEASE_FILE", "CARD_FILE"]

RELEASE_FILE = "release.json"
CARD_FILE = "MODEL_CARD.md"
COPIED_FILES = (ENCODER_FILE, "config.json", "metrics.csv")  # from the run directory, as they are


class ReleaseCorrupt(RuntimeError):
    """A released encoder whose files do not match its ``release.json`` (tampered with, or half copied)."""


def final_signal(folder, column: str = "teacher_entropy") -> float | None:
    """The mean of a logged signal (default: the DINO teacher's output entropy) over the last 10% of the logged
    steps of a pretraining run or release ``folder`` (its ``metrics.csv``); None where it logged none (another
    method, or no log)."""
    log = Path(folder) / "metrics.csv"
    if not log.exists():
        return None
    metrics = pd.read_csv(log)
    values = metrics[column].dropna() if column in metrics else pd.Series(dtype=float)
    return float(values.tail(max(1, len(values) // 10)).mean()) if len(values) else None


def teacher_left_uniform(teacher_entropy: float, kl_to_uniform: float, out_dim: int) -> bool:
    """Whether a DINO teacher (its ``final_signal`` values) escaped both collapses: each scan's output below
    99% of the uniform entropy ln K (not uniform), and the mean output's KL to uniform below ln K / 2 (not the
    same prototype for every scan, where the entropy is 0 and the KL ln K)."""
    uniform = math.log(out_dim)
    return teacher_entropy < 0.99 * uniform and kl_to_uniform < 0.5 * uniform


def release_name(dataset: str, method: str, fraction: float, profile, seed: int) -> str:
    """The folder name of a release: its run directory's (``synthetic_dino_f1_demo_s0``)."""
    return default_run_dir(dataset, method, fraction, get_profile(profile).name, seed).name


def sha256_of(path) -> str:
    """The sha256 of a file, in hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _machine() -> dict:
    """The machine this process runs on: CPU model, cores, GPU, torch version and threads, platform."""
    from ..models.efficiency import cpu_name
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "platform": platform.platform(), "python": platform.python_version()}


def _cohort_record(dataset: str) -> dict | None:
    """The generating record (``cohort.json``) of a generated dataset, None for an ingested one."""
    from ..data.manifest import scan_table_path
    path = scan_table_path(dataset).parent / "cohort.json"
    return json.loads(path.read_text()) if path.exists() else None


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(seconds))


def release_run(run_dir, dest_root=None) -> Path:
    """Copy the finished pretraining run ``run_dir`` into its release folder under ``dest_root`` (default
    ``encoders_root()``) and write its ``release.json`` (last: a folder without it is an unfinished copy).
    Run it on the machine that trained (``tools/release_encoders.py`` does): the record names this machine."""
    run_dir = Path(run_dir)
    if not (run_dir / DONE_FILE).exists():
        raise ValueError(f"{run_dir}: the run has not finished (no {DONE_FILE!r} marker); finish it first "
                         "(pretraining resumes where it stopped)")
    load_checkpoint(run_dir / ENCODER_FILE)  # an encoder that loads, its weights finite (CheckpointError if not)
    config = json.loads((run_dir / "config.json").read_text())
    run, meta = config["run"], config.get("meta") or {}
    if "dataset" not in meta or "fraction" not in meta:
        raise ValueError(f"{run_dir / 'config.json'}: meta lacks the dataset and fraction; only runs made by "
                         "train.pretrain (fmct pretrain, the notebooks) can be released")
    metrics = pd.read_csv(run_dir / "metrics.csv")
    missing = sorted(set(range(1, run["total_steps"] + 1)) - set(metrics["step"]))
    if missing:
        raise ValueError(f"{run_dir / 'metrics.csv'}: the log lacks steps {missing[:5]} of "
                         f"1..{run['total_steps']}; a release carries the whole log")
    name = release_name(meta["dataset"], run["method"], meta["fraction"], config["profile"]["name"], run["seed"])
    folder = Path(dest_root or encoders_root()) / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RELEASE_FILE).unlink(missing_ok=True)
    for file in COPIED_FILES:
        with atomic_path(folder / file) as tmp:
            shutil.copyfile(run_dir / file, tmp)
    steps = metrics[metrics["step"] > 0]
    finished = json.loads((run_dir / DONE_FILE).read_text()).get("finished")
    record = {
        "name": name, "method": run["method"], "dataset": meta["dataset"], "fraction": meta["fraction"],
        "profile": config["profile"]["name"], "seed": run["seed"],
        "sha256": sha256_of(folder / ENCODER_FILE), "bytes": (folder / ENCODER_FILE).stat().st_size,
        "files": {file: sha256_of(folder / file) for file in COPIED_FILES},
        "steps": run["total_steps"],
        "step_minutes": round(float((run["global_batch"] / steps["throughput"]).sum()) / 60, 2),
        "finished": _iso(finished) if finished else None, "released": _iso(time.time()),
        "machine": _machine(), "cohort": _cohort_record(meta["dataset"]),
    }
    atomic_write_json(folder / RELEASE_FILE, record)
    return folder


def verify_release(folder) -> dict:
    """The ``release.json`` of the release ``folder`` once the sha256 of each of its files (the weights, the
    run's ``config.json`` and its ``metrics.csv``, which the card reads) matches it; else ``ReleaseCorrupt``
    naming the file."""
    folder = Path(folder)
    record_path, weights = folder / RELEASE_FILE, folder / ENCODER_FILE
    if not record_path.exists():
        raise ReleaseCorrupt(f"{record_path} is missing: {folder} is an unfinished release (a copy stopped "
                             "half way?); release it again (make pretrain) or delete the folder")
    record = json.loads(record_path.read_text())
    if not weights.exists():
        raise ReleaseCorrupt(f"{weights} is missing, though {record_path} lists it")
    actual = sha256_of(weights)
    if actual != record["sha256"]:
        raise ReleaseCorrupt(f"{weights}: sha256 {actual[:16]}… does not match {record['sha256'][:16]}… in "
                             f"{record_path} (the file was changed or copied half way); restore it "
                             "(git checkout encoders/) or rebuild it (make pretrain)")
    if set(record.get("files", {})) != set(COPIED_FILES):
        raise ReleaseCorrupt(f"{record_path} gives no sha256 for each of {', '.join(COPIED_FILES)} (a release "
                             "made before they were recorded?); release it again (make pretrain)")
    for file, expected in record["files"].items():
        path = folder / file
        if file == ENCODER_FILE and expected == record["sha256"]:
            continue  # the weights: hashed above
        if not path.exists():
            raise ReleaseCorrupt(f"{path} is missing, though {record_path} lists it")
        if sha256_of(path) != expected:
            raise ReleaseCorrupt(f"{path}: sha256 does not match {expected[:16]}… in {record_path} (the file was "
                                 "changed); restore it (git checkout encoders/) or rebuild it (make pretrain)")
    return record


def released_encoder(dataset: str, method: str, fraction: float, profile, seed: int, root=None) -> Path | None:
    """The released weights of (dataset, method, fraction, profile, seed), None when there is no release;
    ``ReleaseCorrupt`` when they do not match their ``release.json``."""
    folder = Path(root or encoders_root()) / release_name(dataset, method, fraction, profile, seed)
    if not folder.exists():
        return None
    verify_release(folder)
    return folder / ENCODER_FILE


def list_releases(root=None) -> list[Path]:
    """The release folders under ``root`` (default ``encoders_root()``), by name."""
    root = Path(root or encoders_root())
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.is_dir() and any((p / f).exists() for f in (RELEASE_FILE, ENCODER_FILE)))


# ------------------------------------------------------------------------------------------- model card
def _knn(metrics: pd.DataFrame) -> tuple[float, float]:
    """The validation kNN AUROC at step 0 (the random encoder) and at the last scored step (NaN without)."""
    scored = metrics.dropna(subset=["knn_auroc"]) if "knn_auroc" in metrics else metrics.iloc[:0]
    start = scored.loc[scored["step"] == 0, "knn_auroc"]
    return (float(start.iloc[0]) if len(start) else float("nan"),
            float(scored["knn_auroc"].iloc[-1]) if len(scored) and scored["step"].iloc[-1] > 0 else float("nan"))


def _fmt(x: float) -> str:
    """A score with 3 decimals, ``n/a`` for NaN (a run without the kNN monitor)."""
    return "n/a" if x != x else f"{x:.3f}"


def _recipe(config: dict) -> str:
    """A release's recipe in one line: the model, the data count, the schedule and the method's own entries."""
    run, model = config["run"], config["profile"]["model"]
    method_entries = {k: v for k, v in run.items() if k not in {
        "method", "seed", "n_scans", "world_size", "batch_size", "accum_steps", "global_batch", "steps_per_epoch",
        "total_steps", "base_lr", "lr", "min_lr", "warmup_steps", "weight_decay", "betas", "checkpoint_every"}}
    return (f"ViT {model['img_size']}³ input, patch {model['patch_size']}, width {model['embed_dim']}, depth "
            f"{model['depth']}, {model['num_heads']} heads; {run['n_scans']} scans, global batch "
            f"{run['global_batch']}, {run['total_steps'] // run['steps_per_epoch']} epochs = {run['total_steps']} "
            f"steps; AdamW, peak LR "
            f"{run['lr']:.3g} (base {run['base_lr']:g} per 256), warm-up {run['warmup_steps']} steps, cosine to "
            f"{run['min_lr']:.3g}, weight decay {run['weight_decay']}; {json.dumps(method_entries, sort_keys=True)}")


def write_model_card(root=None, downstream: pd.DataFrame | None = None, targets: pd.DataFrame | None = None) -> Path:
    """Write ``MODEL_CARD.md`` under ``root`` (default ``encoders_root()``) from every release there, and
    ``downstream``, where given: the test-split scores of the encoders (the macro rows of notebook 05's
    ``fig4_scaling_auroc.csv``: ``task``, ``metric``, ``value``, ``ci_low``, ``ci_high``, ``method``,
    ``fraction``, ``evaluation``); ``targets``, where given: what the encoders were required to reach and what
    they reached, one row each (``target``, ``ours``, ``against``, ``p_value``, ``met``)."""
    root = Path(root or encoders_root())
    releases = [(verify_release(f), json.loads((f / "config.json").read_text()), pd.read_csv(f / "metrics.csv"))
                for f in list_releases(root)]
    if not releases:
        raise ValueError(f"{root}: no released encoder to describe")
    lines = [
        "# Model card: fmct's released demonstration encoders", "",
        f"Written by `write_model_card` (`fmct_lib/train/release.py`; `make pretrain` runs it) from each "
        f"encoder's `{RELEASE_FILE}`, `config.json` and `metrics.csv`. Do not edit by hand.", "",
        "## What they are", "",
        "3-D vision transformers for head CT, pretrained self-supervised with this repository's code "
        "(`fmct_lib.train.pretrain`: DINO, the paper's final method; MAE; VICReg, a batch-robust control not in "
        "the paper) on the synthetic cohort, at the profile's size. The notebooks start from them "
        "(`make reproduce`); `make reproduce PRETRAIN=1` (or `FMCT_PRETRAIN=1`) pretrains afresh instead.", "",
        "**Intended use:** demonstration of the FM-CT reproduction on synthetic data, and a test of this code. "
        "**Not for clinical use:** they have never seen a real patient's scan, and their scores below are on "
        "synthetic phantoms.", "",
        "## Data", "",
    ]
    cohorts = {json.dumps(r["cohort"], sort_keys=True) for r, _, _ in releases}
    for text in sorted(cohorts):
        cohort = json.loads(text)
        if cohort is None:
            lines.append("- a dataset without a generating record (ingested, not generated)")
            continue
        sizes = cohort["sizes"]
        lines.append(f"- the synthetic cohort (`fmct_lib/data/synthetic`, generator version "
                     f"{cohort['generator_version']}): {sizes['internal']} internal, {sizes['external']} external "
                     f"and {sizes['pretrain']} unlabelled pool scans on a {cohort['grid_mm']:g} mm phantom grid; "
                     f"seed {cohort['seed']} (labelled sites), pool seed {cohort['pool_seed']}")
    lines += ["- pretraining reads the internal training split and the unlabelled pool (never validation, test "
              "or the external site), a nested patient subsample at fractions below 1 (Fig. 4)", "",
              "## Encoders and what they score", "",
              "Validation kNN macro-AUROC of the frozen encoder (k = 20, `fmct_lib/train/monitor.py`) at step 0 "
              "(the random encoder) and at the end of pretraining.", "",
              "| encoder | method | fraction | scans | steps | kNN AUROC step 0 | kNN AUROC end | sha256 |",
              "|---|---|---|---|---|---|---|---|"]
    for record, config, metrics in releases:
        start, end = _knn(metrics)
        lines.append(f"| {record['name']} | {record['method']} | {record['fraction']:g} | {config['run']['n_scans']} "
                     f"| {record['steps']} | {_fmt(start)} | {_fmt(end)} | `{record['sha256']}` |")
    if downstream is not None and len(downstream):
        rows = downstream[(downstream["task"] == "macro") & (downstream["metric"] == "auroc")]
        lines += ["", "Downstream, on the test split (notebook 05, Fig. 4): a linear probe on each frozen encoder, "
                  "macro-AUROC with its 95% bootstrap CI.", "",
                  "| method | fraction | evaluation | macro-AUROC [95% CI] |", "|---|---|---|---|"]
        lines += [f"| {r.method} | {r.fraction:g} | {r.evaluation} | {r.value:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}] |"
                  for r in rows.sort_values(["method", "fraction"]).itertuples(index=False)]
    if targets is not None and len(targets):
        lines += ["", "Targets (issue 24), on the test split unless said; measured by the notebooks and "
                  "`tools/probe_encoders.py` (`figures/*_comparison.csv`, `docs/measurements/`):", "",
                  "| target | ours | against | p | met |", "|---|---|---|---|---|"]
        lines += [f"| {r.target} | {r.ours} | {r.against} | {'' if pd.isna(r.p_value) else f'{r.p_value:.3g}'} | "
                  f"{'yes' if r.met else '**no**'} |" for r in targets.itertuples(index=False)]
        if not targets["met"].all():
            lines += ["", "Where a target is not met, the notebooks measure why: 05 reads DINO's teacher entropy from "
                      "each run's log, 08 what the embedding groups scans by (`evaluate.neighbour_agreement`); "
                      "`docs/results.md` and `docs/experiments.md` give the numbers and every recipe tried."]
    lines += ["", "## Recipe", ""]
    lines += [f"- **{record['name']}** (seed {record['seed']}): {_recipe(config)}" for record, config, _ in releases]
    lines += ["", "## Compute", "",
              "Minutes: the sum of the logged step times (the kNN evaluations excluded); at the median step: the "
              "median step time × the steps, what a machine to itself takes (the sum also holds the stalls of a "
              "shared machine: its longest step is given).", "",
              "| encoder | steps | minutes | at the median step | longest step (s) | finished | machine |",
              "|---|---|---|---|---|---|---|"]
    steady = {}
    for record, config, metrics in releases:
        m = record["machine"]
        machine = (f"{m['cpu']}, {m['cores']} cores{', ' + m['gpu'] if m['gpu'] else ''}; torch {m['torch']} "
                   f"({m['torch_threads']} threads); {m['platform']}")
        seconds = config["run"]["global_batch"] / metrics.loc[metrics["step"] > 0, "throughput"]
        steady[record["name"]] = float(seconds.median()) * record["steps"] / 60
        lines.append(f"| {record['name']} | {record['steps']} | {record['step_minutes']:g} | "
                     f"{steady[record['name']]:.2f} | {seconds.max():.0f} | {record['finished']} | {machine} |")
    lines += ["", f"Together: {sum(r['step_minutes'] for r, _, _ in releases):.1f} minutes of steps "
                  f"({sum(steady.values()):.1f} at the median step).",
              "", "## Provenance", "",
              "`tests/test_provenance.py` (in `make test`) re-runs the first 3 optimiser steps of every encoder "
              "here from its `config.json` and seed, generating only the scans those steps read, and compares "
              "the losses with its `metrics.csv`, and the configuration this code derives with its `config.json`; "
              "it checks each file's sha256 against `release.json`, the weights' against this card, and this "
              "card against what the committed releases and figures give. Step 1 runs at learning rate 0 (the "
              "warm-up), so step 3 is the first loss after an update: the replay checks the data, views, model, "
              "loss, configuration and the optimiser's first update, to a relative 1e-4 (an optimiser that does "
              "not step moves step 3 by 5.5e-3, plain SGD by 3.4e-4; a faithful replay by 1.8e-7). It does not "
              "tie the released weights to the run's last step: their sha256 ties them to this card, and re-scored "
              "with the run's kNN monitor they gave each log's last score exactly (checked by hand, 2026-12-07; "
              "it needs the cohort's cache, which `make test` does not build).", ""]
    return atomic_write_text(root / CARD_FILE, "\n".join(lines))


# ------------------------------------------------------------------------------------------------ replay
def _recorded_profile(recorded: dict) -> Profile:
    """The profile a run recorded (``config.json["profile"]``) on the current definition of its name: a value
    changed since (a downstream setting) or a field added since does not change what a replay trains."""
    current = get_profile(recorded["name"])
    changes = {}
    for f in fields(Profile):
        if f.name == "name" or f.name not in recorded:
            continue
        value = recorded[f.name]
        if f.name == "model":
            value = ModelConfig(**value)
        elif isinstance(getattr(current, f.name), tuple):
            value = tuple(value)  # JSON wrote the tuple as a list
        changes[f.name] = value
    return current.replace(**changes)


class _FirstStepVolumes(Dataset):
    """The pretraining list, in order, with only the canvases of the replayed steps; reading another is an error."""

    def __init__(self, scan_ids: list[str], canvases: dict[int, torch.Tensor], steps: int):
        self.scan_ids, self.canvases, self.steps = scan_ids, canvases, steps

    def __len__(self) -> int:
        return len(self.scan_ids)

    def __getitem__(self, i: int) -> dict:
        if i not in self.canvases:
            raise LookupError(f"the replay prepared the scans of the first {self.steps} steps only, and index {i} "
                              f"({self.scan_ids[i]}) was read: the data order differs from loop.micro_batches")
        return {"scan_id": self.scan_ids[i], "volume": self.canvases[i]}


def _first_step_indices(n: int, seed: int, steps: int, steps_per_epoch: int, batch_size: int,
                        accum_steps: int) -> list[int]:
    """The dataset indices that the first ``steps`` optimiser steps of a one-process run read
    (``loop.micro_batches``)."""
    read = set()
    for step in range(steps):
        epoch, within = divmod(step, steps_per_epoch)
        this_step = micro_batches(n, seed, epoch, within, steps_per_epoch, batch_size, 1, 0, accum_steps)[:accum_steps]
        read.update(i for batch in this_step for i in batch)
    return sorted(read)


def _prepare_patient(plan, grid_mm: float, spec, wanted: set[str]) -> dict[str, np.ndarray]:
    """Render one planned patient as ``generate_cohort`` does and preprocess its ``wanted`` scans as the cache
    does (``_build_patient``, ``cache._process_scan``), in a temporary folder; canvases by scan id."""
    from ..data.cache import _process_scan
    from ..data.synthetic.cohort import _build_patient
    canvases = {}
    with tempfile.TemporaryDirectory(prefix="fmct_replay_") as tmp:
        out = Path(tmp)
        for row in _build_patient(plan, out, grid_mm):
            if row["scan_id"] in wanted:
                result = _process_scan(row["scan_id"], str(out / row["path"]), spec, out)
                if "file" not in result:
                    raise ValueError(f"scan {row['scan_id']} could not be preprocessed: {result['reason']}")
                canvases[row["scan_id"]] = np.load(out / result["file"])
    return canvases


def _canvases(rows: pd.DataFrame, cohort: dict, spec, cache: dict) -> dict[str, torch.Tensor]:
    """The preprocessed canvases of the scans ``rows`` (``scan_id``, ``patient_id``) of the synthetic cohort
    ``cohort`` (``_prepare_patient``). ``cache`` keeps them (and the cohort's plan) between calls."""
    from ..data.synthetic.cohort import plan_cohort
    key = json.dumps({k: v for k, v in cohort.items() if k != "sizes"}, sort_keys=True) + spec.hash
    todo = rows[[(key, s) not in cache for s in rows["scan_id"]]]
    if len(todo):
        plan_key = ("plan", json.dumps(cohort, sort_keys=True))
        if plan_key not in cache:
            cache[plan_key] = {pp.patient_id: pp for pp in plan_cohort(
                cohort["sizes"], cohort["seed"], cohort["prevalence"]["internal"], cohort["pool_seed"])}
        for patient, group in todo.groupby("patient_id", sort=True):
            canvases = _prepare_patient(cache[plan_key][patient], float(cohort["grid_mm"]), spec, set(group["scan_id"]))
            cache.update({(key, scan_id): torch.from_numpy(c) for scan_id, c in canvases.items()})
    return {s: cache[key, s] for s in rows["scan_id"]}


def replay_first_steps(folder, steps: int = 2, *, seed: int | None = None, cache: dict | None = None) -> list[float]:
    """The losses of the first ``steps`` optimiser steps of the release ``folder``'s pretraining, re-run on this
    machine's CPU from its ``config.json`` and seed (``seed``: another seed, everything else the same).

    The synthetic cohort is deterministic: the pretraining list comes from its plan (``planned_scan_table``
    with the generating record in ``release.json``), the indices the first steps read from
    ``loop.micro_batches``, and only those scans are generated and preprocessed. The run keeps its total length
    (``stop_after``), so the schedules are those of the released run. With the release's own seed, the
    configuration the replay derives must equal the released ``config.json`` (else ``ValueError`` naming the
    keys). ``cache``: a dict shared between calls that keeps the prepared scans."""
    from ..data.preprocess import PreprocessSpec
    from ..data.synthetic.cohort import GENERATOR_VERSION, planned_scan_table
    folder = Path(folder)
    config = json.loads((folder / "config.json").read_text())
    record = json.loads((folder / RELEASE_FILE).read_text())
    run, meta, cohort = config["run"], config["meta"], record.get("cohort")
    if cohort is None or cohort.get("generator_version") != GENERATOR_VERSION:
        raise ValueError(f"{folder / RELEASE_FILE}: a replay needs the synthetic cohort's generating record of "
                         f"generator version {GENERATOR_VERSION}; it has {cohort and cohort.get('generator_version')}")
    if run["world_size"] != 1:
        raise ValueError(f"{folder / 'config.json'}: run with {run['world_size']} processes; a replay runs one")
    profile = _recorded_profile(config["profile"])
    if float(profile.synth_grid_mm) != float(cohort["grid_mm"]):
        raise ValueError(f"{folder / RELEASE_FILE}: cohort grid {cohort['grid_mm']} mm, profile {profile.name!r} "
                         f"generates at {profile.synth_grid_mm} mm")
    cache = {} if cache is None else cache
    sizes = cohort["sizes"]
    table_key = ("table", json.dumps(cohort, sort_keys=True))
    if table_key not in cache:
        cache[table_key] = planned_scan_table(
            profile, cohort["seed"], cohort["prevalence"]["internal"], n_internal=sizes["internal"],
            n_external=sizes["external"], n_pretrain=sizes["pretrain"], pool_seed=cohort["pool_seed"])
    table = cache[table_key]
    faithful = seed is None or seed == run["seed"]
    seed = run["seed"] if seed is None else seed
    scan_ids = pretraining_scan_ids(meta["dataset"], meta["fraction"], seed, scans=table)
    if faithful and (len(scan_ids) != run["n_scans"] or meta.get("n_rejected")):
        raise ValueError(f"{folder / 'config.json'}: pretrained on {run['n_scans']} scans ({meta.get('n_rejected')} "
                         f"rejected by preprocessing); the cohort's plan gives {len(scan_ids)}")
    stored = run[run["method"]] if isinstance(run.get(run["method"]), dict) else run  # DINO, VICReg: a dict
    options = {f.name: stored[f.name] for f in fields(get_method(run["method"]).Options) if f.name in stored}
    kwargs = dict(method=run["method"], profile=profile, seed=seed, max_steps=run["total_steps"],
                  batch_size=run["batch_size"], accum_steps=run["accum_steps"],
                  checkpoint_every=run["checkpoint_every"], options=options)
    order = run_config(n_scans=len(scan_ids), **kwargs)
    indices = _first_step_indices(len(scan_ids), seed, steps, order["steps_per_epoch"], run["batch_size"],
                                  run["accum_steps"])
    rows = table.set_index("scan_id").loc[[scan_ids[i] for i in indices]].reset_index()
    canvases = _canvases(rows, cohort, PreprocessSpec.from_dict(config["preprocess"]), cache)
    volumes = _FirstStepVolumes(scan_ids, {i: canvases[scan_ids[i]] for i in indices}, steps)
    with tempfile.TemporaryDirectory(prefix="fmct_replay_run_") as tmp:
        run_dir = pretrain_on(volumes, run_dir=Path(tmp) / "run", resume=False, device="cpu", progress=False,
                              num_workers=0, meta=meta, preprocess=config["preprocess"], monitor=None,
                              stop_after=steps, **kwargs)
        replayed = json.loads((run_dir / "config.json").read_text())
        logged = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    if faithful:
        differ = sorted(k for k in set(config) | set(replayed) if k != "profile" and config.get(k) != replayed.get(k))
        differ += [f"profile.{k}" for k, v in config["profile"].items() if replayed["profile"].get(k) != v]
        if differ:
            raise ValueError(f"{folder / 'config.json'}: this code derives another configuration from it "
                             f"(differs in {differ})")
    return [r["loss"] for r in logged if 1 <= r["step"] <= steps]


def _replay_group(jobs: list[tuple[Path, int, int | None]]) -> list[list[float]]:
    """``replay_first_steps`` of each (folder, steps, seed) in this process, one thread, sharing the scans."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the processes share the cores
    try:
        cache: dict = {}
        return [replay_first_steps(folder, steps, seed=seed, cache=cache) for folder, steps, seed in jobs]
    finally:
        torch.set_num_threads(threads)


def replay_many(jobs: list[tuple[Path, int, int | None]], workers: int | None = None) -> list[list[float]]:
    """``replay_first_steps(folder, steps, seed=seed)`` of each job, in the jobs' order, in ``workers`` processes
    (default: the CPU count). Jobs that read the same scans (the same cohort, fraction and seed) run in one
    process, which prepares those scans once."""
    groups: dict[str, list[int]] = {}
    for i, (folder, _, seed) in enumerate(jobs):
        config = json.loads((Path(folder) / "config.json").read_text())
        cohort = json.loads((Path(folder) / RELEASE_FILE).read_text()).get("cohort")
        key = json.dumps([cohort, config["meta"].get("fraction"), config["run"]["seed"] if seed is None else seed,
                          config["preprocess"]], sort_keys=True)
        groups.setdefault(key, []).append(i)
    order = sorted(groups.values(), key=lambda g: -sum(jobs[i][1] for i in g))  # the largest groups first
    batches = [[jobs[i] for i in g] for g in order]
    workers = min(workers or os.cpu_count() or 1, len(batches))
    if workers > 1:
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=watch_parent,
                                 initargs=(os.getpid(),)) as pool:
            results = list(pool.map(_replay_group, batches))
    else:
        results = [_replay_group(batch) for batch in batches]
    losses: list = [None] * len(jobs)
    for group, result in zip(order, results):
        for i, value in zip(group, result):
            losses[i] = value
    return losses

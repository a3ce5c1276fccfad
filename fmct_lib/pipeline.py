"""The pipeline: the one place that builds a missing stage, and the set-up every notebook starts with.

A stage is a dataset's scan table (the synthetic cohort is generated; any other dataset is ingested by the
user), its preprocessing cache, a pretrained encoder and a fine-tuned classifier. ``ensure_*`` returns the
stage, building it only when it is missing (each builder resumes), so any notebook runs alone and
``make reproduce`` runs them in order without recomputing. Everything below this module only reads a stage
and, where it is missing, raises ``StageMissing`` naming the command that builds it.

``start`` is a notebook's first cell: it returns a :class:`Study` (dataset, profile, scan table, runs root,
seed, pretraining method, site) whose methods are the calls the notebooks share.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .config import Profile, get_profile
from .data.manifest import PAPER_TASKS, dataset_info, is_available, load_scans, scan_table_path
from .paths import runs_root

__all__ = ["Study", "start", "ensure_dataset", "ensure_cache", "ensure_pretrained", "ensure_finetuned",
           "choose_tasks"]


@dataclass(frozen=True)
class Study:
    """What a notebook works on: ``dataset`` at ``profile`` with its scan table ``scans``, runs under ``runs``,
    seed ``seed``, the pretraining ``method``, and ``site_filter`` (``{"site": site}`` where the scan table has
    sites, else None) selecting the labelled rows it trains and tests on."""

    dataset: str
    profile: Profile
    scans: pd.DataFrame
    runs: Path
    seed: int
    method: str
    site_filter: dict | None

    @property
    def labelled(self) -> pd.DataFrame:
        """The rows of the study's site (all rows without sites)."""
        if self.site_filter is None:
            return self.scans
        return self.scans[self.scans["site"] == self.site_filter["site"]]

    def tasks(self, tasks: list[str] | None = None, rows: pd.DataFrame | None = None, split: str = "test") -> list[str]:
        """``choose_tasks`` on ``rows`` (default: the labelled rows)."""
        return choose_tasks(self.labelled if rows is None else rows, tasks, self.dataset, self.profile, split)

    def encoder(self, method: str | None = None, fraction: float = 1.0, checkpoint: str | None = None) -> Path:
        """The pretrained encoder to start from (``ensure_pretrained``; default method: the study's)."""
        return ensure_pretrained(method or self.method, self.dataset, self.profile, fraction=fraction, seed=self.seed,
                                 checkpoint=checkpoint, runs=self.runs)

    def finetuned(self, task: str, encoder: Path) -> Path:
        """The encoder of the study's fine-tuned classifier on ``task`` (``ensure_finetuned``)."""
        return ensure_finetuned(self.dataset, task, encoder, self.profile, self.site_filter, self.seed, runs=self.runs)

    def other(self, dataset: str) -> pd.DataFrame:
        """The scan table of another dataset the study evaluates on, with its cache built."""
        scans = ensure_dataset(dataset, self.profile)
        ensure_cache(dataset, self.profile)
        return scans

    def sweep(self, tasks, protocols, encoder, **kwargs) -> pd.DataFrame:
        """``run_sweep`` on the study's dataset, profile, seed, site and runs root (``kwargs`` override them:
        ``dataset``, ``train_filter``, ``eval_filter``, ``n_seeds`` …)."""
        from .downstream import run_sweep
        return run_sweep(tasks=tasks, protocols=protocols, encoder=encoder, **self._run_args(kwargs))

    def fewshot(self, tasks, protocol, encoder, **kwargs) -> pd.DataFrame:
        """``fewshot_sweep`` with the study's settings, as ``sweep``."""
        from .downstream import fewshot_sweep
        return fewshot_sweep(tasks=tasks, protocol=protocol, encoder=encoder, **self._run_args(kwargs))

    def _run_args(self, overrides: dict) -> dict:
        return {"dataset": self.dataset, "profile": self.profile, "seed": self.seed, "train_filter": self.site_filter,
                "run_root": self.runs / "downstream", **overrides}


def start(dataset: str, profile: str | Profile, *, run_dir: str | None = None, seed: int = 0,
          method: str | None = None, site: str | None = None) -> Study:
    """A notebook's first cell: the dataset (generated for ``synthetic``, else stopping with the ingest command
    when it has not been ingested) and its cache, as a :class:`Study`. ``run_dir`` is the runs root (default
    ``$FMCT_RUNS`` or ``runs/``); ``method`` defaults to the profile's; ``site`` restricts training and testing
    to one site where the table has sites."""
    p = get_profile(profile)
    scans = ensure_dataset(dataset, p)
    ensure_cache(dataset, p)
    runs = Path(run_dir).expanduser().resolve() if run_dir else runs_root()
    site_filter = {"site": site} if site and "site" in scans else None
    return Study(dataset, p, scans, runs, seed, method or p.pretrain_method, site_filter)


def ensure_dataset(dataset: str, profile: str | Profile) -> pd.DataFrame:
    """The scan table of ``dataset``. The synthetic cohort is generated at the profile's size when it is
    missing (seed 0: the cohort is data, not an experiment); any other dataset raises
    ``DatasetNotAvailable`` naming its ingest command."""
    p = get_profile(profile)
    if dataset == "synthetic":
        if not is_available("synthetic"):
            from .data.synthetic.cohort import generate_cohort
            generate_cohort(p)
        cohort = scan_table_path("synthetic").parent / "cohort.json"
        sizes = json.loads(cohort.read_text()).get("sizes", {}) if cohort.exists() else {}
        wanted = {"internal": p.synth_internal, "external": p.synth_external, "pretrain": p.synth_pretrain}
        if sizes and sizes != wanted:
            print(f"note: the synthetic cohort under {cohort.parent} was generated with sizes {sizes}, "
                  f"not profile {p.name!r}'s {wanted}; using it as it is")
    return load_scans(dataset)


def ensure_cache(dataset: str, profile: str | Profile, preset: str = "paper", *, scans: list[str] | None = None,
                 workers: int | None = None, retry_rejected: bool = False) -> Path:
    """Preprocess every scan of ``dataset`` (or the ``scans`` ids) into the cache of the profile's ``preset``
    chain (``paper`` or the authors' ``reference``); scans already cached, or rejected unless
    ``retry_rejected``, are skipped. ``workers`` processes (default: the CPU count). Returns the cache folder."""
    from .data.cache import build_cache
    from .data.preprocess import preset_spec
    return build_cache(dataset, preset_spec(preset, get_profile(profile)), scans=scans, workers=workers,
                       retry_rejected=retry_rejected)


def ensure_pretrained(method: str, dataset: str, profile: str | Profile, fraction: float = 1.0,
                      seed: int = 0, checkpoint: str | None = None, runs: Path | None = None) -> Path:
    """The encoder checkpoint to start from: ``checkpoint`` when given, else the pretraining run of
    (method, dataset, profile, fraction, seed) under the runs root ``runs`` — resumed or run to completion
    (its cache built first) if it is not done."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    from .train import pretrain
    from .train.trainer import default_run_dir
    p = get_profile(profile)
    ensure_cache(dataset, p)
    run_dir = Path(runs or runs_root()) / "pretrain" / default_run_dir(dataset, method, fraction, p.name, seed).name
    run = pretrain(method=method, dataset=dataset, profile=p, fraction=fraction, seed=seed, run_dir=run_dir)
    return Path(run) / "encoder.safetensors"


def ensure_finetuned(dataset: str, task: str, encoder: Path, profile: str | Profile,
                     train_filter: dict | None = None, seed: int = 0, runs: Path | None = None) -> Path:
    """The encoder of the ``finetune`` run on ``task`` (the classifier of Fig. 1e's run with this seed, reused
    where that run kept it), saved as ``<runs>/finetuned/<profile>/<encoder run>/<dataset>[filter]/<task>/
    seed<seed>/encoder.safetensors``; the attention figures compare it with the pretrained encoder (Fig. 5)."""
    from .downstream import run_protocol
    from .models.checkpoints import save_checkpoint
    p = get_profile(profile)
    runs = Path(runs or runs_root())
    tag = ",".join(f"{k}={v}" for k, v in sorted((train_filter or {}).items()))
    out = (runs / "finetuned" / p.name / Path(encoder).parent.name / (dataset + (f"[{tag}]" if tag else ""))
           / task / f"seed{seed}" / "encoder.safetensors")
    if out.exists():
        return out
    _, classifier = run_protocol(dataset, task, "finetune", str(encoder), p, train_filter=train_filter, seed=seed,
                                 progress=False, return_model=True, run_root=runs / "downstream")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out, classifier.encoder, config={"model": classifier.encoder.config.to_dict(), "task": task,
                                                     "dataset": dataset, "train_filter": train_filter,
                                                     "pretrained": str(encoder), "seed": seed})
    return out


def choose_tasks(scans: pd.DataFrame, tasks: list[str] | None, dataset: str, profile: str | Profile,
                 split: str = "test") -> list[str]:
    """The tasks a notebook evaluates: ``tasks`` (default: the paper's ten tasks among the dataset's, else
    all the dataset's tasks in the manifest) that have at least one positive and one negative in ``split``
    of ``scans`` (so an AUROC exists). Without an explicit list, at most ``profile.max_tasks`` of them
    (those with the most positives; a compute limit of the small profiles). What is left out is printed."""
    p = get_profile(profile)
    explicit = bool(tasks)
    if not explicit:  # the paper's ten tasks where the dataset has them (not, e.g., CQ500's extra findings)
        known = dataset_info(dataset)["tasks"]
        tasks = [t for t in known if t in PAPER_TASKS] or known
    held_out = scans[scans["split"] == split]
    positives, dropped = {}, []
    for task in tasks:
        labels = pd.to_numeric(held_out[task], errors="coerce") if task in held_out else pd.Series(dtype=float)
        n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
        if min(n_pos, n_neg) >= 1:
            positives[task] = n_pos
        else:
            dropped.append(f"{task} ({n_pos} positive / {n_neg} negative)")
    if dropped:
        print(f"left out, no AUROC on the {split} split: {', '.join(dropped)}")
    kept = list(positives)
    if not explicit and p.max_tasks and len(kept) > p.max_tasks:
        top = sorted(kept, key=lambda t: -positives[t])[:p.max_tasks]
        kept = [t for t in kept if t in top]
        print(f"profile {p.name!r} evaluates at most {p.max_tasks} tasks: {', '.join(kept)} "
              f"(pass tasks=[...] for others)")
    if not kept:
        raise ValueError(f"none of {tasks} has both a positive and a negative scan in the {split} split")
    return kept

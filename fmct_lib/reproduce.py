"""What several notebooks need: find a dataset (or make the synthetic one), its cache and a pretrained
encoder, reusing earlier runs and computing whatever is missing — so any notebook runs alone and
``make reproduce`` runs them in order without recomputing.

Every function here is a thin composition of library calls; the work happens in ``fmct_lib.data``,
``fmct_lib.train`` and ``fmct_lib.downstream``.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd

from .config import PROFILES, Profile, get_profile
from .data.manifest import PAPER_TASKS, dataset_info, is_available, load_scans, scan_table_path

__all__ = ["start", "ensure_dataset", "ensure_cache", "ensure_pretrained", "ensure_finetuned", "choose_tasks",
           "paper_dataset", "figure_name", "describe_comparison"]

# Which of the paper's cohorts a site of ours stands in for, when drawing the paper's values beside ours.
# The synthetic internal site plays NYU Langone (pretraining institution, fine-tuning, held-out test) and the
# external site NYU Long Island (another hospital: external validation and in-domain fine-tuning).
_PAPER_COUNTERPART = {("synthetic", "internal"): "nyu_langone", ("synthetic", "external"): "nyu_long_island"}


def start(dataset: str, profile: str | Profile, run_dir: str | None = None,
          finetune_epochs: int | None = None) -> tuple[Profile, pd.DataFrame]:
    """The first cell of every notebook: point the runs root at ``run_dir`` (if given) and return the
    profile (with ``finetune_epochs`` for every downstream model, if given) and the dataset's scan table —
    generated for ``synthetic``, else loaded, stopping with the ingest command when it has not been ingested."""
    if run_dir:
        os.environ["FMCT_RUNS"] = str(Path(run_dir).expanduser().resolve())
    p = get_profile(profile)
    if finetune_epochs:
        p = p.with_finetune_epochs(finetune_epochs)
    return p, ensure_dataset(dataset, p)


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


def ensure_cache(dataset: str, profile: str | Profile):
    """Preprocess every scan of ``dataset`` into the cache for the profile's paper chain (scans already
    cached are skipped) and return the build report."""
    from .data.cache import build_cache
    from .preprocess import paper_spec
    return build_cache(dataset, paper_spec(get_profile(profile)))


def ensure_pretrained(method: str, dataset: str, profile: str | Profile, fraction: float = 1.0,
                      seed: int = 0, checkpoint: str | None = None) -> Path:
    """The encoder checkpoint to start from: ``checkpoint`` when given, else the pretraining run of
    (method, dataset, profile, fraction, seed) — resumed or run to completion if it is not done."""
    if checkpoint:
        path = Path(checkpoint).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"checkpoint {path} does not exist")
        return path
    from .train import pretrain
    ensure_cache(dataset, profile)
    run = pretrain(method=method, dataset=dataset, profile=get_profile(profile), fraction=fraction, seed=seed)
    return Path(run) / "encoder.safetensors"


def ensure_finetuned(dataset: str, task: str, encoder: Path, profile: str | Profile,
                     train_filter: dict | None = None, seed: int = 0) -> Path:
    """The encoder of the ``finetune`` run on ``task`` (the classifier of Fig. 1e's run with this seed, reused
    where that run kept it), saved as ``<runs>/finetuned/<profile>/<encoder run>/<dataset>[filter]/<task>/
    seed<seed>/encoder.safetensors``; the attention figures compare it with the pretrained encoder (Fig. 5)."""
    from .downstream import run_protocol
    from .models.checkpoints import save_checkpoint
    from .paths import runs_root
    p = get_profile(profile)
    tag = ",".join(f"{k}={v}" for k, v in sorted((train_filter or {}).items()))
    out = (runs_root() / "finetuned" / p.name / Path(encoder).parent.name / (dataset + (f"[{tag}]" if tag else ""))
           / task / f"seed{seed}" / "encoder.safetensors")
    if out.exists():
        return out
    _, classifier = run_protocol(dataset, task, "finetune", str(encoder), p, train_filter=train_filter, seed=seed,
                                 progress=False, return_model=True)
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


def paper_dataset(dataset: str, site: str | None = None) -> str:
    """The paper's cohort that ``dataset`` (and ``site``) corresponds to, for drawing the paper's values."""
    return _PAPER_COUNTERPART.get((dataset, site), dataset)


def figure_name(base: str, dataset: str, profile: str | Profile) -> str:
    """``base`` for the committed gallery (synthetic cohort, ``demo`` profile), else ``base__<dataset>_<profile>``,
    so a run on other data or at another size never overwrites the gallery's figures; a profile whose
    fine-tuning epochs differ from its namesake's adds ``_<epochs>ep`` to ``base``."""
    p = get_profile(profile)
    named = PROFILES.get(p.name)
    if named is not None and p.finetune_epochs != named.finetune_epochs:
        base = f"{base}_{p.finetune_epochs}ep"
    return base if (dataset, p.name) == ("synthetic", "demo") else f"{base}__{dataset}_{p.name}"


def describe_comparison(name_a: str, a: float, name_b: str, b: float, p_value: float | None = None,
                        paper: str | None = None) -> str:
    """One honest sentence: which of two numbers is higher, by how much (relative, as the paper reports
    it), with the p-value, and what the paper found for the same comparison."""
    if pd.isna(a) or pd.isna(b):
        return f"{name_a} vs {name_b}: not measurable on this run (a metric is undefined)."
    verb = "beats" if a > b else ("ties" if a == b else "does NOT beat")
    text = f"{name_a} ({a:.3f}) {verb} {name_b} ({b:.3f})"
    if b > 0:
        text += f": {100.0 * (a - b) / b:+.1f}% relative"
    if p_value is not None and not pd.isna(p_value):
        text += f", paired permutation p = {p_value:.3g}"
    text += "."
    if paper:
        text += f" Paper: {paper}."
    return text

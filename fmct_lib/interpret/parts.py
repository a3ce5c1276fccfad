"""Which parts of each notebook (02-10, 12) a dataset allows, and why the others are skipped.

Not every dataset carries what every analysis needs: RSNA's DICOM headers have no Manufacturer tag, a NIfTI
export has no acquisition tags at all, only the synthetic cohort has lesion masks, and a small cohort may have
no task with positive and negative scans in both the training and the test split. A notebook asks
:func:`embedding_parts` or :func:`attention_parts` first, prints the answer, runs the parts that can run and
skips the others; the reasons are printed with it.

A task asked for by name that is not a label column of the scan table is a typo, not a data problem:
:func:`check_tasks` refuses it (a ``ValueError`` naming the dataset's tasks and the one meant) before any part
is weighed; a task that exists but lacks positives is a data problem, reported as the reason a part is skipped.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..config import is_whole_number
from ..data.ingest.common import INGESTION_COLUMNS
from ..data.manifest import SCAN_COLUMNS
from ..downstream.embeddings import protocol_labels
from .lesion import MASKED_TASKS

__all__ = ["Parts", "candidate_tasks", "label_columns", "check_tasks", "finetunable_tasks", "fewshot_parts", "embedding_parts", "attention_parts", "task_parts",
           "transfer_parts", "scaling_parts", "EMBEDDING_PARTS", "ATTENTION_PARTS", "TASK_PARTS", "TRANSFER_PARTS",
           "SCALING_PARTS", "retrieval_parts", "RETRIEVAL_PARTS", "other_encoder_parts", "ENCODER_PARTS"]

# part -> what it is, in each notebook's order
EMBEDDING_PARTS = {
    "projection": "2-D projection (t-SNE / UMAP) of the frozen embeddings (Supp. Fig. 10)",
    "scanner": "scanner manufacturer predicted from the embedding",
    "thickness": "slice-thickness bin predicted from the embedding",
    "by protocol": "fine-tuned classifiers scored per scanner and per slice-thickness bin (Supp. Fig. 11)",
}
ATTENTION_PARTS = {
    "attention": "attention and attention-distance maps of the pretrained encoder, and the viewer (Fig. 5)",
    "fine-tuned": "the same for encoders fine-tuned per task",
    "lesion": "the head's attention share on the lesion against the lesion's share of the head (lesion masks)",
}
# the notebooks whose one part is trained and scored per task: 02, 04, 10 and 12
TASK_PARTS = {
    "02_finetune": {"comparison": "fine-tuned, scratch, probe and histogram models per task, with CIs and tests "
                                  "(Fig. 1e)"},
    "04_fewshot": {"few-shot": "K-shot fine-tuning curves against training on all data (Fig. 2)"},
    "10_modelling_choices": {"comparison": "the 3-D ViT against DINOv3 + ABMIL, DINOv3 mean pooling and V-JEPA 2 on "
                                           "the same input, per task, with CIs and tests (Extended Data Fig. 4)"},
    "12_patch_size": {"comparison": "the encoder with the profile's patches against the same with coarser patches, "
                                    "each pretrained and trained per task, with CIs and tests (Supplementary Fig. 2)"},
}
ENCODER_PARTS = {
    "comparison": "FM-CT against other CT foundation models and ResNet-50-3D, each fine-tuned and probed per task, "
                  "with CIs and tests (Fig. 1f, Extended Data Fig. 3)",
    "retrieval": "all-vs-all retrieval with each encoder's embedding: mAP and Precision@K (Fig. 3, Extended Data "
                 "Fig. 6)",
}
TRANSFER_PARTS = {
    "external validation": "a model fine-tuned on the source site (or dataset) tested on the target (Fig. 1f)",
    "in-domain": "fine-tuned, scratch and histogram models trained and tested on the target (Fig. 1e, g)",
}
SCALING_PARTS = {
    "pretraining": "encoders pretrained on each fraction of the pretraining pool",
    "probes": "each encoder's downstream classifiers scored per task (Fig. 4)",
}
RETRIEVAL_PARTS = {"retrieval": "all-vs-all retrieval of scans sharing a subtype: mAP and precision@k (Fig. 3)"}
MIN_RETRIEVABLE = 2  # a query needs another scan of its subtype to find
MIN_PROJECTED = 3  # t-SNE needs more scans than its perplexity (at least 2)
MIN_PER_GROUP = 2  # cross-validated separability needs two scans of each group


@dataclass(frozen=True)
class Parts:
    """The parts of ``notebook`` and whether ``dataset`` allows them: ``reasons`` maps each part to None (it runs)
    or to why it is skipped; ``tasks`` are the tasks with positive and negative scans in both the training and
    the test split (what a fine-tuned classifier needs)."""

    notebook: str
    dataset: str
    reasons: dict[str, str | None]
    descriptions: dict[str, str]
    tasks: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what a running part leaves out, and why (printed after the parts)
    part_tasks: dict[str, tuple[str, ...]] = field(default_factory=dict)  # a part's own tasks, where they differ

    def tasks_of(self, part: str) -> tuple[str, ...]:
        """The tasks ``part`` can run on: its own where the notebook's parts need different splits (03's external
        validation: the source's training and the target's test split), else ``tasks``; () where it is skipped."""
        if not self.runs(part):
            return ()
        return self.part_tasks.get(part, self.tasks)

    def runs(self, part: str) -> bool:
        """Whether ``part`` runs on this dataset."""
        if part not in self.reasons:
            raise KeyError(f"{self.notebook} has no part {part!r}; its parts: {list(self.reasons)}")
        return self.reasons[part] is None

    @property
    def skipped(self) -> dict[str, str]:
        """part -> why it is skipped."""
        return {part: reason for part, reason in self.reasons.items() if reason is not None}

    def __str__(self) -> str:
        lines = [f"{self.notebook} on {self.dataset!r}: what this dataset allows"]
        for part, reason in self.reasons.items():
            state = "runs   " if reason is None else "SKIPPED"
            lines.append(f"  {state} {part}: {self.descriptions[part]}"
                         + ("" if reason is None else f"\n            why: {reason}"))
        lines += [f"  note: {note}" for note in self.notes]
        return "\n".join(lines)


def candidate_tasks(dataset: str, tasks: list[str] | None = None, scans: pd.DataFrame | None = None) -> list[str]:
    """The tasks a notebook considers: ``tasks`` (one name or a list), else the paper's for the dataset
    (``data.manifest.paper_tasks``, as ``pipeline.choose_tasks`` picks them). With ``scans``, a task asked for
    that is not a label column of them is refused (``check_tasks``); the paper's tasks are not checked (those the
    table lacks are reported as skipped)."""
    from ..data.manifest import paper_tasks
    if tasks is not None and not isinstance(tasks, str) and not list(tasks):
        raise ValueError(f"tasks []: name at least one task, or None for the dataset's "
                         f"({', '.join(paper_tasks(dataset))})")
    if not tasks:
        return paper_tasks(dataset)
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    return tasks if scans is None else check_tasks(scans, tasks, dataset)


# columns every scan table may carry that are not labels, whatever their values
NOT_LABELS = frozenset({*SCAN_COLUMNS, *INGESTION_COLUMNS, "site", "series"})  # bookkeeping, never a task


def label_columns(scans: pd.DataFrame) -> list[str]:
    """The label (task) columns of the scan table ``scans``: the columns other than its bookkeeping
    (``NOT_LABELS``, ``*_path``) whose known values are all 0 or 1 (a column without any known value counts: a
    task without labels in these rows)."""
    labels = []
    for column in scans.columns:
        if column in NOT_LABELS or str(column).endswith("_path"):
            continue
        known = scans[column].dropna()
        values = pd.to_numeric(known, errors="coerce")
        if values.notna().all() and values.isin([0, 1]).all():
            labels.append(column)
    return labels


def check_tasks(scans: pd.DataFrame, tasks, dataset: str) -> list[str]:
    """``tasks`` (one name or a list), or a ``ValueError`` when one of them is not a label column of the scan
    table ``scans`` of ``dataset`` (``label_columns``): it names the unknown tasks, the dataset's tasks and, where
    one is close (``difflib``), the task meant. Whether a task has positives is not checked here."""
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    labels = label_columns(scans)
    unknown = [t for t in tasks if t not in labels]
    if not unknown:
        return tasks
    meant = {}
    for task in unknown:
        close = difflib.get_close_matches(str(task), labels, n=1, cutoff=0.6) or difflib.get_close_matches(
            str(task).lower(), labels, n=1, cutoff=0.6)
        if close:
            meant[task] = close[0]
    what = (f"task {unknown[0]!r} is not a label column" if len(unknown) == 1
            else f"tasks {', '.join(map(repr, unknown))} are not label columns")
    hint = ("" if not meant else f"; did you mean {next(iter(meant.values()))!r}?" if len(unknown) == 1
            else "; did you mean " + ", ".join(f"{m!r} for {t!r}" for t, m in meant.items()) + "?")
    raise ValueError(f"{what} of the scan table of dataset {dataset!r} (its tasks: {', '.join(labels) or 'none'})"
                     + hint)


def finetunable_tasks(scans: pd.DataFrame, tasks: list[str], splits: tuple[str, ...] = ("train", "test")
                      ) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the tasks of ``tasks`` with positive and negative scans in each of ``splits`` of ``scans`` (default: the
    ``train`` and the ``test`` split), {every other task: its counts, as the reason})."""
    kept, reasons = [], {}
    for task in tasks:
        if task not in scans:
            reasons[task] = "no such column in the scan table"
            continue
        counts = {}
        for split in splits:
            labels = pd.to_numeric(scans.loc[scans["split"] == split, task], errors="coerce")
            counts[split] = (int((labels == 1).sum()), int((labels == 0).sum()))
        if all(min(c) > 0 for c in counts.values()):
            kept.append(task)
        else:
            reasons[task] = ", ".join(f"{s} {p} positive / {n} negative" for s, (p, n) in counts.items())
    return tuple(kept), reasons


def _no_task_reason(tasks: list[str], reasons: dict[str, str]) -> str:
    counts = "; ".join(f"{t}: {r}" for t, r in reasons.items())
    return (f"no task has positive and negative scans in both the training and the test split ({counts})"
            if tasks else "the dataset has no task (label column) in the manifest")


def _separable_reason(labels: pd.Series, what: str, missing: str) -> str | None:
    """Why a cross-validated prediction of ``labels`` (NaN = unknown) cannot run, or None."""
    known = labels.dropna()
    if known.empty:
        return missing
    counts = known.value_counts()
    usable = counts[counts >= MIN_PER_GROUP]
    if len(usable) < 2:
        listed = ", ".join(f"{k}: {v}" for k, v in counts.items())
        return (f"fewer than two {what}s with at least {MIN_PER_GROUP} scans each ({listed}"
                f"{f'; {labels.isna().sum()} scans unknown' if labels.isna().any() else ''}): nothing to separate")
    return None


def _comparable_protocols(scans: pd.DataFrame, labels: dict[str, pd.Series], tasks) -> list[str]:
    """The protocols (``protocol_labels``' names) with at least two groups whose test scans hold a positive and a
    negative scan of one of ``tasks``: where an AUROC per group, and so a comparison, exists."""
    test = scans["split"] == "test"
    comparable = []
    for name, group_of in labels.items():
        groups = scans[test].groupby(group_of[test])  # unknown (NaN) groups left out
        scorable = sum(any({0, 1} <= set(pd.to_numeric(g[t], errors="coerce").dropna()) for t in tasks)
                       for _, g in groups)
        if scorable >= 2:
            comparable.append(name)
    return comparable


def check_thickness_bins(thickness_bins) -> list[float]:
    """06's ``thickness_bins`` as floats: at least two edges, strictly increasing (else a ``ValueError`` naming the
    parameter: ``pd.cut``'s own message does not)."""
    try:
        edges = [float(b) for b in thickness_bins]
    except (TypeError, ValueError):
        raise ValueError(f"thickness_bins {thickness_bins!r}: a list of bin edges in mm, "
                         f"e.g. [0, 1.5, 3, 5.01]") from None
    if len(edges) < 2 or any(b <= a for a, b in zip(edges, edges[1:])):
        raise ValueError(f"thickness_bins {thickness_bins!r}: at least two edges in mm, strictly increasing "
                         f"(e.g. [0, 1.5, 3, 5.01])")
    return edges


def most_positive_tasks(rows: pd.DataFrame, tasks, limit: int | None, split: str = "test") -> list[str]:
    """``tasks`` in their order, at most ``limit`` of them (None: all): those with the most positive scans in
    ``split`` of ``rows`` (a small profile's compute limit, ``Profile.max_tasks``; ``pipeline.choose_tasks``)."""
    tasks = list(tasks)
    if not limit or len(tasks) <= limit:
        return tasks
    held_out = rows[rows["split"] == split]
    positives = {t: int((pd.to_numeric(held_out[t], errors="coerce") == 1).sum()) for t in tasks}
    top = sorted(tasks, key=lambda t: -positives[t])[:limit]
    return [t for t in tasks if t in top]


def embedding_parts(dataset: str, scans: pd.DataFrame, thickness_bins, tasks: list[str] | None = None, *,
                    scored: pd.DataFrame | None = None, max_tasks: int | None = None) -> Parts:
    """The parts of ``06_embeddings`` that the labelled rows ``scans`` of ``dataset`` allow (``tasks``: as the
    notebook's parameter; ``thickness_bins``: the bin edges in mm). The per-protocol part is judged on what it
    scores: the rows its classifiers train and test on (``scored``: the study's site; default ``scans``) and the
    tasks it trains, at most ``max_tasks`` where ``tasks`` is not given (the profile's limit); ``tasks`` of the
    returned parts are those."""
    edges = check_thickness_bins(thickness_bins)
    labels = protocol_labels(scans, edges)
    candidates = candidate_tasks(dataset, tasks, scans)
    scored = scans if scored is None else scored
    trainable, task_reasons = finetunable_tasks(scored, candidates)
    trainable = tuple(most_positive_tasks(scored, trainable, None if tasks else max_tasks))
    thickness_missing = "no scan has a slice thickness"
    known = pd.to_numeric(scans.get("slice_thickness_mm", pd.Series(dtype=float)), errors="coerce").dropna()
    if len(known):
        thickness_missing = (f"no slice thickness falls in the bins {edges} (the scans' range from {known.min():g} to "
                             f"{known.max():g} mm; a bin holds (low, high])")
    reasons: dict[str, str | None] = {
        "projection": None if len(scans) >= MIN_PROJECTED else
        f"{len(scans)} labelled scans; a 2-D projection needs at least {MIN_PROJECTED}",
        "scanner": _separable_reason(labels["scanner"], "manufacturer",
                                     "no scan has a manufacturer (the DICOM Manufacturer tag: RSNA's headers carry "
                                     "none; for NIfTI, `fmct ingest nifti --meta manufacturer=<CSV column>`)"),
        "thickness": _separable_reason(labels["slice thickness (mm)"], "slice-thickness bin", thickness_missing),
    }
    if not trainable:
        reasons["by protocol"] = _no_task_reason(candidates, task_reasons)
    elif not _comparable_protocols(scored, protocol_labels(scored, edges), trainable):
        reasons["by protocol"] = ("fewer than two scanners, and fewer than two slice-thickness bins, whose test scans "
                                  f"hold positive and negative scans of one of {list(trainable)}: nothing to compare")
    else:
        reasons["by protocol"] = None
    return Parts("06_embeddings", dataset, reasons, EMBEDDING_PARTS, trainable)


def attention_parts(dataset: str, scans: pd.DataFrame, tasks: list[str] | None = None) -> Parts:
    """The parts of ``07_attention`` that the labelled rows ``scans`` of ``dataset`` allow (``tasks``: as the
    notebook's parameter; ``[]`` asks for no fine-tuned encoder). Lesion masks are the ``mask_path`` column (the
    synthetic cohort's)."""
    if tasks is not None and not list(tasks):  # tasks=[]: the pretrained encoder's maps alone, nothing fine-tuned
        candidates, trainable = [], ()
        no_task = "no task asked for (tasks=[]): the pretrained encoder's maps alone"
    else:
        candidates = candidate_tasks(dataset, tasks, scans)
        trainable, task_reasons = finetunable_tasks(scans, candidates)
        no_task = None if trainable else _no_task_reason(candidates, task_reasons)
    reasons: dict[str, str | None] = {
        "attention": None if len(scans) else "the dataset has no labelled scans",
        "fine-tuned": no_task,
    }
    masked = [t for t in trainable if t in MASKED_TASKS]
    if "mask_path" not in scans or not scans["mask_path"].fillna("").astype(str).str.strip().any():
        reasons["lesion"] = "the scan table has no lesion masks (a mask_path column; the synthetic cohort has them)"
    elif not trainable:
        reasons["lesion"] = "no fine-tuned encoder to compare with the pretrained one (see above)"
    elif not masked:
        reasons["lesion"] = f"none of the tasks {list(trainable)} is a lesion with a mask ({', '.join(MASKED_TASKS)})"
    else:
        reasons["lesion"] = None
    return Parts("07_attention", dataset, reasons, ATTENTION_PARTS, trainable)


def task_parts(notebook: str, dataset: str, scans: pd.DataFrame, tasks: list[str] | None = None) -> Parts:
    """The one part of ``02_finetune``, ``04_fewshot``, ``10_modelling_choices`` or ``12_patch_size``: it runs when a
    task of ``tasks`` (as the notebook's parameter) has positive and negative scans in both the training and the
    test split of ``scans``."""
    descriptions = TASK_PARTS[notebook]
    candidates = candidate_tasks(dataset, tasks, scans)
    trainable, task_reasons = finetunable_tasks(scans, candidates)
    reason = None if trainable else _no_task_reason(candidates, task_reasons)
    return Parts(notebook, dataset, {part: reason for part in descriptions}, descriptions, trainable)


def check_shots(shots) -> list[int]:
    """04's ``shots`` (one K or a list), sorted: whole numbers K ≥ 1, each once; else a one-line ``ValueError``
    naming ``shots`` (K = 0 or −1 used to pass as a K-shot draw, 2.5 to run as K = 2)."""
    if isinstance(shots, str):
        raise ValueError(f"shots {shots!r}: a list of K, not text (papermill: -y \"shots: [8, 32]\")")
    listed = [shots] if isinstance(shots, (int, float)) else list(shots)
    for k in listed:
        if not is_whole_number(k):
            raise ValueError(f"shots {shots!r}: {k!r} is not a whole number of at least 1 (K positive and K "
                             f"negative training scans per draw)")
    if not listed or len(set(map(int, listed))) < len(listed):
        raise ValueError(f"shots {shots!r}: name each K once, at least one (or None for the profile's)")
    return sorted(int(k) for k in listed)


def fewshot_parts(dataset: str, scans: pd.DataFrame, shots, tasks: list[str] | None = None,
                  rejected=()) -> tuple[Parts, dict[str, tuple[int, ...]]]:
    """(the part of ``04_fewshot``, {task: the K of ``shots`` it runs at}). A K-shot draw is K positive and K
    negative training scans (``downstream.training.fewshot_draw``), so a task runs at K only where the
    ``train`` split of ``scans`` (the study's labelled rows) holds K of each, not counting the scans the cache
    ``rejected`` (their ids: the runs leave them out); a task runs at all where it also has positive and negative
    scans in both splits (``task_parts``) and at least one K. The (task, K) pairs left out are the parts'
    ``notes``; with none left the part is skipped, saying why (each task's training counts)."""
    descriptions = TASK_PARTS["04_fewshot"]
    shots = check_shots(shots)
    candidates = candidate_tasks(dataset, tasks, scans)
    trainable, task_reasons = finetunable_tasks(scans, candidates)
    if not trainable:
        reason = _no_task_reason(candidates, task_reasons)
        return Parts("04_fewshot", dataset, {"few-shot": reason}, descriptions, ()), {}
    train = scans[(scans["split"] == "train") & ~scans["scan_id"].astype(str).isin({str(r) for r in rejected})]
    plan, counts, notes = {}, {}, []
    for task in trainable:
        labels = pd.to_numeric(train[task], errors="coerce")
        counts[task] = n_pos, n_neg = int((labels == 1).sum()), int((labels == 0).sum())
        kept = tuple(k for k in shots if k <= min(n_pos, n_neg))
        left_out = [k for k in shots if k not in kept]
        if kept:
            plan[task] = kept
        if left_out:  # at every K: the task is left out of the whole study, its all-data runs too
            at = f"K = {', '.join(map(str, left_out))}" if kept else "every K, so also from the all-data runs"
            notes.append(f"{task} left out at {at}: {n_pos} positive / {n_neg} negative training scans, and K shots "
                         f"need K of each")
    if not plan:
        listed = "; ".join(f"{t}: {p} positive / {n} negative" for t, (p, n) in counts.items())
        reason = (f"no task has K positive and K negative training scans for any K of shots {shots} ({listed}); "
                  f"pass smaller shots (-y \"shots: [...]\")")
        return Parts("04_fewshot", dataset, {"few-shot": reason}, descriptions, ()), {}
    if task_reasons:
        notes.append("left out, no positive and negative scans in both splits: "
                     + "; ".join(f"{t} ({r})" for t, r in task_reasons.items()))
    return Parts("04_fewshot", dataset, {"few-shot": None}, descriptions, tuple(plan), tuple(notes)), plan


def transfer_parts(dataset: str, target_rows: pd.DataFrame, *, source_rows: pd.DataFrame, has_sites: bool,
                   target_dataset: str, tasks: list[str] | None = None) -> Parts:
    """The parts of ``03_transfer``: external validation needs a source and a target (two sites of ``dataset``,
    ``has_sites``, or a ``target_dataset`` other than ``dataset``) and a task with positive and negative scans in
    the training split of the source's rows ``source_rows`` and the test split of the target's rows
    ``target_rows`` (a target with test labels only is validated on); the in-domain models need a task with
    positive and negative scans in both splits of ``target_rows``. ``tasks_of`` gives each part's tasks."""
    candidates = candidate_tasks(target_dataset, tasks, target_rows)
    trainable, task_reasons = finetunable_tasks(target_rows, candidates)
    in_domain = None if trainable else _no_task_reason(candidates, task_reasons)
    transferable: tuple[str, ...] = ()
    if not has_sites and target_dataset == dataset:
        external = (f"{dataset!r} has no sites (a site column) to transfer between and no target_dataset was given "
                    "(-p target_dataset NAME tests on another ingested dataset)")
    else:
        on_source, source_reasons = finetunable_tasks(source_rows, candidates, splits=("train",))
        on_target, target_reasons = finetunable_tasks(target_rows, candidates, splits=("test",))
        transferable = tuple(t for t in on_source if t in on_target)
        sides = (("source", source_reasons), ("target", target_reasons))
        counts = "; ".join(f"{t}: " + ", ".join(f"{side} {why[t]}" for side, why in sides if t in why)
                           for t in candidates if t not in transferable)
        external = None if transferable else (
            f"no task has positive and negative scans in the source's training split and the target's test split "
            f"({counts})" if candidates else "the dataset has no task (label column) in the manifest")
    return Parts("03_transfer", dataset, {"external validation": external, "in-domain": in_domain},
                 TRANSFER_PARTS, trainable, part_tasks={"external validation": transferable})


def scaling_parts(dataset: str, scans: pd.DataFrame, fractions, batch_size: int, *, checkpoint: str | None = None,
                  seed: int = 0, tasks: list[str] | None = None) -> tuple[Parts, list[float]]:
    """(the parts of ``05_scaling``, the fractions whose pretraining set holds at least one batch of
    ``batch_size`` scans). Pretraining is skipped with a ``checkpoint`` (one encoder, no fractions to compare) or
    when no fraction has a batch; the probes run on the checkpoint or the encoders that are pretrained."""
    from ..data.splits import POOL_SPLIT, subsample_patients
    pool = scans[scans["split"].isin(["train", POOL_SPLIT])]
    if "site" in pool.columns:
        pool = pool[pool["site"] != "external"]
    sizes = {f: int(pool["patient_id"].astype(str).isin(subsample_patients(pool["patient_id"], f, seed)).sum())
             if len(pool) else 0 for f in fractions}
    fitting = [f for f in fractions if sizes[f] >= batch_size]
    if checkpoint:
        pretraining = (f"an encoder checkpoint was given ({Path(checkpoint).name}): no pretraining, so no fractions to "
                       "compare; the probes run on the checkpoint")
    elif not fitting:
        pretraining = ("fewer pretraining scans than one batch of " f"{batch_size} at every fraction ("
                       + ", ".join(f"{f:.0%}: {n}" for f, n in sizes.items()) + ")")
    else:
        pretraining = None
        if len(fitting) < len(fractions):
            print("fractions left out, fewer pretraining scans than one batch of "
                  f"{batch_size}: " + ", ".join(f"{f:.0%} ({sizes[f]})" for f in fractions if f not in fitting))
    candidates = candidate_tasks(dataset, tasks, scans)
    trainable, task_reasons = finetunable_tasks(scans, candidates)
    if not trainable:
        probes = _no_task_reason(candidates, task_reasons)
    elif pretraining and not checkpoint:
        probes = "no pretrained encoder to probe (see pretraining)"
    else:
        probes = None
    parts = Parts("05_scaling", dataset, {"pretraining": pretraining, "probes": probes}, SCALING_PARTS, trainable)
    return parts, fitting


def retrieval_parts(dataset: str, gallery: pd.DataFrame, subtypes: list[str] | None = None) -> Parts:
    """The part of ``08_retrieval``: it runs when a subtype of ``subtypes`` (default: the dataset's,
    ``data.manifest.retrieval_subtypes``) has at least two positive scans in ``gallery`` (the scans searched);
    ``tasks`` holds those subtypes, and a note names each subtype asked for that is left out. A subtype asked for
    that is not a label column is refused (``check_tasks``), as is an empty list."""
    from ..data.manifest import retrieval_subtypes
    if subtypes is not None and not isinstance(subtypes, str) and not list(subtypes):
        raise ValueError("subtypes []: name at least one subtype label, or None for the dataset's "
                         f"({', '.join(retrieval_subtypes(dataset))})")
    asked = subtypes is not None
    subtypes = candidate_tasks(dataset, subtypes, gallery) if asked else retrieval_subtypes(dataset)
    counts = {s: int((pd.to_numeric(gallery[s], errors="coerce") == 1).sum()) if s in gallery else None
              for s in subtypes}
    kept = tuple(s for s, n in counts.items() if n is not None and n >= MIN_RETRIEVABLE)
    listed = ", ".join(f"{s}: {'no such column' if n is None else n}" for s, n in counts.items())
    reason = None if kept else (f"no subtype label with at least {MIN_RETRIEVABLE} positive scans ({listed}); "
                                "retrieval needs the haemorrhage subtypes (RSNA, CQ500, the synthetic cohort)")
    left_out = [f"{s} ({'no such column' if n is None else f'{n} positive scan' + ('s' if n != 1 else '')})"
                for s, n in counts.items() if s not in kept]
    notes = (f"left out, fewer than {MIN_RETRIEVABLE} positive scans to retrieve: {', '.join(left_out)}",) \
        if kept and left_out else ()
    return Parts("08_retrieval", dataset, {"retrieval": reason}, RETRIEVAL_PARTS, kept, notes)


def other_encoder_parts(dataset: str, scans: pd.DataFrame, gallery: pd.DataFrame, subtypes: list[str] | None,
                        tasks: list[str] | None = None) -> tuple[Parts, tuple[str, ...]]:
    """(the parts of ``09_other_encoders``, the subtypes retrieval can use): the comparison needs a task of
    ``tasks`` with positive and negative scans in both splits of the labelled rows ``scans``, the retrieval a
    subtype of ``subtypes`` with two positive scans in ``gallery`` (as ``retrieval_parts``)."""
    candidates = candidate_tasks(dataset, tasks, scans)
    trainable, task_reasons = finetunable_tasks(scans, candidates)
    retrieval = retrieval_parts(dataset, gallery, subtypes)
    reasons = {"comparison": None if trainable else _no_task_reason(candidates, task_reasons),
               "retrieval": retrieval.reasons["retrieval"]}
    return Parts("09_other_encoders", dataset, reasons, ENCODER_PARTS, trainable, retrieval.notes), retrieval.tasks

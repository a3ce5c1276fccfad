"""Which parts of the embeddings (06) and attention (07) notebooks a dataset allows, and why the others are skipped.

Not every dataset carries what every analysis needs: RSNA's DICOM headers have no Manufacturer tag, a NIfTI
export has no acquisition tags at all, only the synthetic cohort has lesion masks, and a small cohort may have
no task with positive and negative scans in both the training and the test split. A notebook asks
:func:`embedding_parts` or :func:`attention_parts` first, prints the answer, runs the parts that can run and
skips the others; the reasons are printed with it.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ..downstream.embeddings import protocol_labels
from .lesion import MASKED_TASKS

__all__ = ["Parts", "candidate_tasks", "finetunable_tasks", "embedding_parts", "attention_parts",
           "EMBEDDING_PARTS", "ATTENTION_PARTS"]

# part -> what it is, in each notebook's order
EMBEDDING_PARTS = {
    "projection": "2-D projection (t-SNE / UMAP) of the frozen embeddings (Supp. Fig. 11)",
    "scanner": "scanner manufacturer predicted from the embedding",
    "thickness": "slice-thickness bin predicted from the embedding",
    "by protocol": "fine-tuned classifiers scored per scanner and per slice-thickness bin (Supp. Fig. 12)",
}
ATTENTION_PARTS = {
    "attention": "attention and attention-distance maps of the pretrained encoder, and the viewer (Fig. 5)",
    "fine-tuned": "the same for encoders fine-tuned per task",
    "lesion": "attention share on the lesion against the lesion's share of the volume (lesion masks)",
}
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
        return "\n".join(lines)


def candidate_tasks(dataset: str, tasks: list[str] | None = None) -> list[str]:
    """The tasks a notebook considers: ``tasks``, else the paper's ten among the dataset's tasks in the
    manifest, else all of them (as ``pipeline.choose_tasks`` picks them)."""
    from ..data.manifest import PAPER_TASKS, dataset_info
    if tasks:
        return list(tasks)
    known = dataset_info(dataset)["tasks"]
    return [t for t in known if t in PAPER_TASKS] or known


def finetunable_tasks(scans: pd.DataFrame, tasks: list[str]) -> tuple[tuple[str, ...], dict[str, str]]:
    """(the tasks of ``tasks`` with positive and negative scans in both the ``train`` and the ``test`` split of
    ``scans``, {every other task: its counts, as the reason})."""
    kept, reasons = [], {}
    for task in tasks:
        if task not in scans:
            reasons[task] = "no such column in the scan table"
            continue
        counts = {}
        for split in ("train", "test"):
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


def embedding_parts(dataset: str, scans: pd.DataFrame, thickness_bins, tasks: list[str] | None = None) -> Parts:
    """The parts of ``06_embeddings`` that the labelled rows ``scans`` of ``dataset`` allow (``tasks``: as the
    notebook's parameter; ``thickness_bins``: the bin edges in mm)."""
    labels = protocol_labels(scans, thickness_bins)
    candidates = candidate_tasks(dataset, tasks)
    trainable, task_reasons = finetunable_tasks(scans, candidates)
    reasons: dict[str, str | None] = {
        "projection": None if len(scans) >= MIN_PROJECTED else
        f"{len(scans)} labelled scans; a 2-D projection needs at least {MIN_PROJECTED}",
        "scanner": _separable_reason(labels["scanner"], "manufacturer",
                                     "no scan has a manufacturer (the DICOM Manufacturer tag: RSNA's headers and "
                                     "NIfTI files carry none)"),
        "thickness": _separable_reason(labels["slice thickness (mm)"], "slice-thickness bin",
                                       "no scan has a slice thickness"),
    }
    if not trainable:
        reasons["by protocol"] = _no_task_reason(candidates, task_reasons)
    elif not _comparable_protocols(scans, labels, trainable):
        reasons["by protocol"] = ("fewer than two scanners, and fewer than two slice-thickness bins, whose test scans "
                                  f"hold positive and negative scans of one of {list(trainable)}: nothing to compare")
    else:
        reasons["by protocol"] = None
    return Parts("06_embeddings", dataset, reasons, EMBEDDING_PARTS, trainable)


def attention_parts(dataset: str, scans: pd.DataFrame, tasks: list[str] | None = None) -> Parts:
    """The parts of ``07_attention`` that the labelled rows ``scans`` of ``dataset`` allow (``tasks``: as the
    notebook's parameter). Lesion masks are the ``mask_path`` column (the synthetic cohort's)."""
    candidates = candidate_tasks(dataset, tasks)
    trainable, task_reasons = finetunable_tasks(scans, candidates)
    reasons: dict[str, str | None] = {
        "attention": None if len(scans) else "the dataset has no labelled scans",
        "fine-tuned": None if trainable else _no_task_reason(candidates, task_reasons),
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

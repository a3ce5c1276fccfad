"""The paper's reported values, each with its source and a verbatim quote (``paper_values.csv``).

Zhu et al., Nat. Biomed. Eng. 2026: every number its text and legends print for Fig. 1e–g (macro-AUCs, the
relative gains and P values of fine-tuned over scratch, RSNA's per-task "> 0.90", the n behind the CIs), Fig. 2
(IVH at K = 8 on RSNA), Fig. 3 (the retrieval gains over Google CT, the n), Extended Data Figs 3–4 (the
other foundation models and modelling choices), Supplementary Fig. 2 (512 against 216 patch tokens, the O(s⁶) cost)
and the GPU it ran on. The per-task AUCs and APs, the curves of Fig. 2 and every value of Fig. 4 and Extended Data
Fig. 5 (throughput and memory by architecture) are drawn in the paper's figures without being printed, so they are
not here.

A row is one value: ``figure`` (``fig1e``, ``ed_fig3``, …), ``dataset`` (the paper's cohort; ``four_datasets``
for a value over the four downstream datasets), ``task`` (``macro`` for the mean over tasks; empty for a count),
``metric``, ``model`` (one model, or ``a_vs_b`` for a comparison; ``fmct`` is the paper's model), ``k``
(few-shot K), ``relation`` (``=``, ``>`` or ``<`` as printed), ``value``, ``source`` (section, paragraph,
figure and panel) and ``quote`` (the sentence, verbatim). The metrics:

- ``auroc``; ``n_scans``: the scans a CI was computed from
- ``relative_improvement_pct``, ``ap_relative_improvement_pct``: macro-AUROC / macro-AP of ``a`` relative to
  ``b``, in %; ``retrieval_map_relative_improvement_pct`` the same for retrieval mAP
- ``p_value``, ``ap_p_value``: the paired permutation test of ``a`` against ``b`` on macro-AUROC / macro-AP
- ``n_tokens``: the ViT's patch tokens per scan; ``cost_exponent``: k of the O(s^k) cost growth in the patch-size
  reduction factor s; ``gpu_memory_gb``: the memory of the GPU the experiments ran on (dataset ``model_design``)

They are always shown as the paper's, with the paper's dataset named: on the synthetic cohort they are a
reference point, not a target.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["PAPER_VALUES_PATH", "PAPER_DATASET_NAMES", "PAPER_METRIC_NAMES", "PAPER_MODEL_NAMES",
           "load_paper_values", "paper_values_for", "describe_paper_value"]

PAPER_VALUES_PATH = Path(__file__).with_name("paper_values.csv")
PAPER_DATASET_NAMES = {
    "nyu_langone": "NYU Langone", "nyu_long_island": "NYU Long Island", "rsna": "RSNA", "cq500": "CQ500",
    "four_datasets": "its four datasets", "model_design": "its model design",
}
PAPER_METRIC_NAMES = {
    "auroc": "AUROC", "n_scans": "scans", "relative_improvement_pct": "macro-AUROC relative gain",
    "ap_relative_improvement_pct": "macro-AP relative gain",
    "retrieval_map_relative_improvement_pct": "retrieval mAP relative gain",
    "p_value": "macro-AUROC P", "ap_p_value": "macro-AP P", "n_tokens": "patch tokens",
    "gpu_memory_gb": "GB of GPU memory",
}
PAPER_MODEL_NAMES = {
    "fmct": "FM-HCT", "finetune": "fine-tuned", "fewshot": "few-shot", "google_ct": "Google CT", "merlin": "Merlin",
    "ct_fm": "CT-FM", "dinov3_abmil": "DINOv3 + ABMIL", "dinov3_mean_pooling": "DINOv3 mean pooling",
    "vjepa2": "VJEPA2", "fmct_p16": "FM-HCT with 16³ patches", "a100": "NVIDIA A100",
}


def load_paper_values(path: Path | str | None = None) -> pd.DataFrame:
    """The paper-reported numbers with their source (figure, section, verbatim quote)."""
    path = Path(path) if path else PAPER_VALUES_PATH
    df = pd.read_csv(path, dtype={"k": "Int64"})
    required = {"figure", "dataset", "task", "metric", "model", "relation", "value", "source"}
    missing = required - set(df.columns)
    if missing:
        raise ValueError(f"{path}: paper values lack columns {sorted(missing)}")
    bad = df[~df["relation"].isin(["=", ">", "<"])]
    if not bad.empty:
        raise ValueError(f"{path}: relation must be '=', '>' or '<' (row {bad.index[0] + 2})")
    return df


def paper_values_for(figure: str | None = None, dataset: str | None = None, metric: str | None = None,
                     *, paper: pd.DataFrame | None = None) -> pd.DataFrame:
    """Rows of the paper's values matching the given figure / dataset / metric (None = any)."""
    df = load_paper_values() if paper is None else paper
    keep = pd.Series(True, index=df.index)
    for column, wanted in (("figure", figure), ("dataset", dataset), ("metric", metric)):
        if wanted is not None:
            keep &= df[column] == wanted
    return df[keep].reset_index(drop=True)


def describe_paper_value(row) -> str:
    """One row of the paper's values as a line of a figure's legend, e.g. ``paper (RSNA): FM-HCT vs Google CT,
    retrieval mAP relative gain +2.21%`` or ``paper (NYU Langone): fine-tuned vs scratch, macro-AUROC P < 0.001``."""
    dataset = PAPER_DATASET_NAMES.get(row["dataset"], row["dataset"])
    model, task, metric = row["model"], row["task"], row["metric"]
    who = " vs ".join(PAPER_MODEL_NAMES.get(m, m) for m in model.split("_vs_")) + ", " if isinstance(model, str) else ""
    relation = "" if row["relation"] == "=" else f"{row['relation']} "
    if metric == "n_scans":
        return f"paper ({dataset}): n = {row['value']:,.0f} scans"
    if metric == "cost_exponent":
        return f"paper: cost grows as O(s^{row['value']:g}) in the patch-size reduction factor s"
    if metric in ("n_tokens", "gpu_memory_gb"):
        return f"paper: {who}{row['value']:,.0f} {PAPER_METRIC_NAMES[metric]}"
    scope = ("" if not isinstance(task, str) else ("macro-" if metric in ("auroc", "ap") else "") if task == "macro"
             else f"{task.upper()} ")
    number = f"{row['value']:+.2f}%" if metric.endswith("_pct") else f"{row['value']:g}"
    shots = f" at K = {row['k']}" if "k" in row and pd.notna(row["k"]) else ""
    return f"paper ({dataset}): {who}{scope}{PAPER_METRIC_NAMES.get(metric, metric)} {relation}{number}{shots}"

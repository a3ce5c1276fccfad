"""Comparing encoders and modelling choices (paper, Fig. 1f, Extended Data Figs 3, 4 and 6; notebooks 09 and 10).

What the two notebooks need beyond a sweep (``pipeline.Study.sweep_models``): which encoders ran with their
publisher's weights and which randomly initialised (``weights_summary``, said in every figure title and
conclusion), the grid of (encoder, protocol) models (``model_grid``), the paired comparisons of the project's
encoder against each other model (``paired_comparisons``, in the paper's order: ``as_the_paper_orders``), the
paper's names for ours (``PAPER_KEYS``), the paper's statements about a pair (``paper_statements``,
``paper_notes``), and retrieval per encoder
(``retrieval_by_model``).
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ..downstream.embeddings import embedding_vectors
from ..evaluate import neighbour_agreement, paired_comparison, retrieval_summary, retrieve_all_vs_all
from ..models.external import ExternalRef
from .paper import PAPER_DATASET_NAMES, describe_paper_value

__all__ = ["PAPER_KEYS", "MODELLING_CHOICES", "DEFAULT_ENCODERS", "DEFAULT_PROTOCOLS", "CHOICE_ENCODERS",
           "encoders_tag", "model_grid",
           "weights_summary", "paired_comparisons", "as_the_paper_orders", "paper_statements", "paper_notes",
           "retrieval_by_model", "embedding_grouping"]

# our labels of the encoders and modelling choices → the paper's model keys (``paper_values.csv``)
PAPER_KEYS = {"FM-CT": "fmct", "3D ViT": "fmct", "CT-FM": "ct_fm", "Merlin": "merlin",
              "DINOv3 + ABMIL": "dinov3_abmil", "DINOv3 mean pooling": "dinov3_mean_pooling", "V-JEPA 2": "vjepa2"}

# The paper's alternative modelling choices (Results, "Comparison to alternative modelling choices"; Extended Data
# Fig. 4), each an external encoder and the protocol that pools its tokens: DINOv3 on the axial slices with ABMIL
# over the slices, DINOv3 with the mean of the slices (its first token) under a linear head, and V-JEPA 2 reading
# the slices as frames under an attentive probe (V-JEPA 2's own evaluation head). Frozen encoders: the heads train
# on cached tokens, as multiple-instance learning on a 2-D model's features does.
MODELLING_CHOICES = {"DINOv3 + ABMIL": ("dinov3", "abmil"), "DINOv3 mean pooling": ("dinov3", "linear"),
                     "V-JEPA 2": ("vjepa2", "attentive")}


# 09's defaults (its parameters cell; a test holds the two equal): the external encoders, randomly initialised
# where no weights are given, and the frozen protocols (fine-tuning the 3-D CNNs takes hours on a CPU)
DEFAULT_ENCODERS = {"ctfm": None, "merlin": None, "resnet3d": None}
DEFAULT_PROTOCOLS = ["linear", "attentive"]
# 10's (its parameters cell; the same test): the 2-D models of the modelling choices, randomly initialised
CHOICE_ENCODERS = {"dinov3": None, "vjepa2": None}


def encoders_tag(encoders: dict, defaults: dict = DEFAULT_ENCODERS) -> str:
    """What names 09's (10's: ``defaults=CHOICE_ENCODERS``) figures where its ``encoders`` are not the defaults:
    each name, with its weights' file name and the first 8 hex digits of its sha256 where it has a weights file
    (as ``Study.encoder_tag`` names a checkpoint), or its folder's name (``ctfm-model.safetensors-1a2b3c4d+merlin``;
    ``fmct-only`` for none), so a run with other encoders or weights never overwrites another's figures; "" at the
    defaults."""
    if encoders == defaults:
        return ""
    return "+".join(name + (f"-{_weights_name(Path(weights))}" if weights else "")
                    for name, weights in encoders.items()) or "fmct-only"


def _weights_name(path: Path) -> str:
    """A weights file's name and sha256 prefix, or a model folder's name, safe in a file name."""
    from ..train.release import sha256_of
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", path.name)[:40]
    return f"{name}-{sha256_of(path)[:8]}" if path.is_file() else name


def model_grid(encoders: dict, protocols) -> dict[str, tuple]:
    """``"<encoder> <protocol>"`` → (encoder, protocol) for every encoder of ``encoders`` (label → encoder) and
    every protocol, encoders first: the models of Fig. 1f, each encoder trained the same ways."""
    return {f"{label} {protocol}": (encoder, protocol) for label, encoder in encoders.items() for protocol in protocols}


def weights_summary(encoders: dict) -> tuple[str, str]:
    """(one line per encoder of ``encoders``, label → checkpoint path or ``ExternalRef``, saying what it ran with;
    a short form for a figure's title): which external encoders had their publisher's weights and which were
    randomly initialised, and the checkpoint of ours."""
    published = [label for label, e in encoders.items() if isinstance(e, ExternalRef) and not e.random]
    random = [label for label, e in encoders.items() if isinstance(e, ExternalRef) and e.random]
    short = (f"published weights: {', '.join(published) or 'none'}"
             + (f"; RANDOMLY INITIALISED: {', '.join(random)}" if random else ""))
    lines = [f"{label}: " + (e.describe().split(": ", 1)[1] if isinstance(e, ExternalRef)
                             else f"this project's checkpoint {Path(e).parent.name}/{Path(e).name}")
             for label, e in encoders.items()]
    if random:
        lines.append(f"{', '.join(random)} ran RANDOMLY INITIALISED, not with their publishers' weights: what they "
                     "score here says nothing about those models (docs/other_encoders.md says where the weights are)")
    return "\n".join(lines), short


def paired_comparisons(predictions: pd.DataFrame, pairs, n_boot: int, n_perm: int, seed: int = 0) -> pd.DataFrame:
    """``evaluate.paired_comparison`` of model a against model b (column ``model``) for each (a, b) of ``pairs``,
    on the tasks both were trained on, as one table with ``model_a`` and ``model_b``; a pair with a model that has
    no predictions (every run skipped) is left out."""
    tables = []
    for a, b in pairs:
        pa, pb = predictions[predictions.model == a], predictions[predictions.model == b]
        common = set(pa["task"]) & set(pb["task"])
        if common:
            tables.append(paired_comparison(pa[pa.task.isin(common)], pb[pb.task.isin(common)], n_boot=n_boot,
                                            n_perm=n_perm, seed=seed).assign(model_a=a, model_b=b))
    return pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(
        columns=["task", "metric", "a", "b", "difference", "ci_low", "ci_high", "p_value", "model_a", "model_b"])


def as_the_paper_orders(pairs, names: dict[str, str], paper: pd.DataFrame) -> list[tuple[str, str]]:
    """``pairs`` (model a, model b), each turned round where ``paper`` compares the two the other way round
    (``merlin_vs_fmct``: Merlin against FM-CT), so that our difference and the paper's relative gain beside it
    (``comparisons.with_paper``) have the same sign convention; ``names`` maps our models to the paper's keys."""
    models = set(paper["model"])
    out = []
    for a, b in pairs:
        ka, kb = names.get(a), names.get(b)
        turned = ka and kb and f"{kb}_vs_{ka}" in models and f"{ka}_vs_{kb}" not in models
        out.append((b, a) if turned else (a, b))
    return out


def paper_statements(paper: pd.DataFrame, key_a: str, key_b: str) -> str:
    """The paper's values (rows of ``paper_values.csv``) comparing the paper's models ``key_a`` and ``key_b``, in
    either order, in one phrase: ``describe_paper_value`` of each without its ``paper (<dataset>)`` prefix, then
    the datasets (``""`` where the paper has none)."""
    pair = paper[paper["model"].isin([f"{key_a}_vs_{key_b}", f"{key_b}_vs_{key_a}"])]
    if pair.empty:
        return ""
    said = "; ".join(describe_paper_value(row).split(": ", 1)[1] for _, row in pair.iterrows())
    datasets = ", ".join(PAPER_DATASET_NAMES.get(d, d) for d in dict.fromkeys(pair["dataset"]))
    return f"{said} ({datasets})"


def paper_notes(paper: pd.DataFrame, metric: str) -> pd.DataFrame:
    """The rows of ``paper`` that compare the paper's model (``fmct``) with another on ``metric`` (``auroc`` or
    ``ap``): the relative gains and P values a figure's panel of that metric lists in its legend."""
    names = {"auroc": ("relative_improvement_pct", "p_value"), "ap": ("ap_relative_improvement_pct", "ap_p_value")}
    return paper[paper["metric"].isin(names[metric]) & paper["model"].str.contains("fmct")].reset_index(drop=True)


def retrieval_by_model(tables: dict, subtypes, ks, n_boot: int, seed: int = 0,
                       patient_disjoint: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    """All-vs-all retrieval (``evaluate.retrieve_all_vs_all``) with each model's embeddings (``tables``: label →
    ``downstream.embed`` table): (the per-query table, its ``retrieval_summary``), both with a column ``model``.
    ``patient_disjoint`` leaves a query's other scans (its ``patient_id``) out of its ranking; the paper leaves
    out only the query."""
    per_query, summaries = [], []
    for label, table in tables.items():
        vectors = embedding_vectors(table)[0]
        q = retrieve_all_vs_all(vectors, table[list(subtypes)], ks=tuple(ks), scan_ids=table["scan_id"],
                                groups=table["patient_id"] if patient_disjoint else None)
        per_query.append(q.assign(model=label))
        summaries.append(retrieval_summary(q, n_boot=n_boot, seed=seed).assign(model=label))
    return pd.concat(per_query, ignore_index=True), pd.concat(summaries, ignore_index=True)


def embedding_grouping(table: pd.DataFrame, subtypes, k: int = 10) -> dict[str, tuple[float, float]]:
    """What an embedding (a ``downstream.embed`` table) groups scans by: ``evaluate.neighbour_agreement`` for the
    scanner make, the slice thickness and bleeding (positive for any of ``subtypes``), each where more than ``k``
    scans have a value and not all the same one (a dataset without them says nothing)."""
    vectors = embedding_vectors(table)[0]
    columns = [c for c in subtypes if c in table]
    bleed = table[columns].apply(pd.to_numeric, errors="coerce").max(axis=1) if columns else None
    attributes = {"scanner make": table.get("manufacturer"), "slice thickness": table.get("slice_thickness_mm"),
                  "haemorrhage (any subtype)": bleed}
    return {label: neighbour_agreement(vectors, values, k=k) for label, values in attributes.items()
            if values is not None and values.notna().sum() > k and values.dropna().nunique() > 1}

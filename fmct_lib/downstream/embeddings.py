"""Frozen-encoder embeddings as a table (retrieval, Fig. 3; t-SNE/UMAP and protocol probes, Supp. Fig. 11).

``embed`` runs an encoder over a dataset's cached inputs (``data.inputs``, as the protocols read them) and returns
one row per scan: ids, split, the protocol columns, the labels, then the cls vector ``e0 … e{D-1}``;
``write_embeddings`` / ``read_embeddings`` keep it as ``.csv`` or ``.npz`` (``fmct embed``).

Supp. Figs. 10–11 ask whether the embedding separates acquisition protocols and whether fine-tuned classifiers
score alike across them: ``protocol_labels`` gives each scan's scanner and slice-thickness bin (NaN where the
scan table does not know it: RSNA has no manufacturer, a NIfTI export neither), ``separability`` the
cross-validated accuracy of predicting one from the embedding, ``performance_by_protocol`` the metrics per group.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from ..progress import tqdm

from ..config import get_profile
from ..data.inputs import ACQUISITION_COLUMNS, VolumeSource, select_rows, volume_source
from ..io import atomic_path, atomic_write_text
from ..models.external import ExternalRef
from ..precision import infer
from .protocols import encoder_module

__all__ = ["embed", "write_embeddings", "read_embeddings", "embedding_vectors", "protocol_labels", "separability",
           "performance_by_protocol"]


@torch.no_grad()
def embed(dataset: str, encoder, profile="demo", *, scans: pd.DataFrame | None = None, split: str | None = None,
          filter: dict | None = None, spec=None, batch_size: int | None = None, out=None, device: str | None = None,
          progress: bool = True, source: VolumeSource | None = None) -> pd.DataFrame:
    """Frozen-encoder cls embeddings as a table: ``scan_id, patient_id, split``, the protocol columns
    (manufacturer, slice_thickness_mm, kvp, site — those the scan table has), the label columns, then the
    vector as ``e0 … e{D-1}`` (an external encoder's global token). ``encoder`` is a checkpoint path, an encoder
    module or an ``ExternalRef``, whose inputs are its own preset (``spec`` defaults to it; another is refused).
    Written to ``out`` (``.csv`` or ``.npz``, see ``write_embeddings``) when given.
    """
    from ..data.manifest import CQ500_FINDINGS, PAPER_TASKS, RSNA_TASKS, dataset_info, load_scans
    profile = get_profile(profile)
    table = select_rows(scans if scans is not None else load_scans(dataset), filter, split, None, dataset)
    if isinstance(encoder, ExternalRef):
        spec = spec or encoder.spec(profile)
        encoder.check_spec(spec, profile)
    model = encoder_module(encoder, profile) if isinstance(encoder, (str, os.PathLike, ExternalRef)) else encoder
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device).eval()
    if source is None:
        if spec is None:
            from ..data.preprocess import paper_spec
            spec = paper_spec(profile)
        size = getattr(getattr(model, "config", None), "img_size", spec.input_size)  # our ViT; external: checked above
        if size != spec.input_size:
            raise ValueError(f"{encoder if isinstance(encoder, (str, os.PathLike)) else 'the encoder'}: takes {size}³ "
                             f"inputs, but the {spec.name} preprocessing of profile {profile.name!r} makes "
                             f"{spec.input_size}³ ones; use the profile the encoder was made for")
        source, table = volume_source(dataset, table, spec)
    batch_size = batch_size or profile.finetune_batch_size
    vectors = infer(model, tqdm(source.batches(range(len(table)), batch_size, device), total=-(-len(table) // batch_size),
                                desc=f"embed {dataset}", disable=not progress), device)
    vectors = torch.cat(vectors).numpy() if vectors else np.zeros((0, model.embed_dim), np.float32)
    try:
        tasks = dataset_info(dataset)["tasks"]
    except (KeyError, FileNotFoundError):
        tasks = []
    labels = [c for c in dict.fromkeys(tasks + PAPER_TASKS + RSNA_TASKS + CQ500_FINDINGS) if c in table.columns]
    meta = [c for c in ["scan_id", "patient_id", "split", *ACQUISITION_COLUMNS] if c in table.columns]
    result = pd.concat([table[meta + labels].reset_index(drop=True),
                        pd.DataFrame(vectors, columns=[f"e{i}" for i in range(vectors.shape[1])])], axis=1)
    if out is not None:
        write_embeddings(result, out)
    return result


def write_embeddings(table: pd.DataFrame, path) -> Path:
    """Write an embeddings table atomically: ``.csv`` (one column per dimension) or ``.npz`` (the vectors
    as one float32 matrix ``embeddings`` plus one array per other column)."""
    path = Path(path)
    vec = [c for c in table.columns if c.startswith("e") and c[1:].isdigit()]
    if path.suffix == ".csv":
        atomic_write_text(path, table.to_csv(index=False))
    elif path.suffix == ".npz":
        arrays = {"embeddings": table[vec].to_numpy(np.float32)}
        for c in table.columns.difference(vec, sort=False):
            col = table[c]
            arrays[c] = (pd.to_numeric(col).to_numpy(float) if pd.api.types.is_numeric_dtype(col)
                         else np.asarray(col.astype(str), dtype=str))
        with atomic_path(path) as tmp:
            np.savez(tmp, **arrays)
    else:
        raise ValueError(f"{path}: embeddings are written as .csv or .npz")
    return path


def read_embeddings(path) -> pd.DataFrame:
    """Read back ``write_embeddings``' file as the same table."""
    path = Path(path)
    if path.suffix == ".csv":
        return pd.read_csv(path, dtype={"scan_id": str, "patient_id": str})
    if path.suffix != ".npz":
        raise ValueError(f"{path}: expected a .csv or .npz embeddings file")
    with np.load(path, allow_pickle=False) as f:
        vectors = f["embeddings"]
        meta = pd.DataFrame({k: f[k] for k in f.files if k != "embeddings"})
    return pd.concat([meta, pd.DataFrame(vectors, columns=[f"e{i}" for i in range(vectors.shape[1])])], axis=1)


def embedding_vectors(table: pd.DataFrame) -> tuple[np.ndarray, pd.DataFrame]:
    """(the vectors ``e0 … e{D-1}`` as an (N, D) array, the other columns)."""
    vec = [c for c in table.columns if c.startswith("e") and c[1:].isdigit()]
    return table[vec].to_numpy(), table.drop(columns=vec)


def protocol_labels(table: pd.DataFrame, thickness_bins) -> dict[str, pd.Series]:
    """Each row's ``scanner`` (the manufacturer) and ``slice thickness (mm)`` bin (``pd.cut`` with the edges
    ``thickness_bins``, e.g. ``"(1.5, 3.0]"``; a thickness above the last edge is a bin of its own, ``"(5.01, inf]"``,
    not unknown), as strings on ``table``'s index; NaN where unknown (a column the table lacks, an empty value, a
    thickness at or below the first edge)."""
    unknown = pd.Series(np.nan, index=table.index, dtype=object)
    scanner = unknown
    if "manufacturer" in table:
        scanner = table["manufacturer"].map(lambda v: (str(v).strip() or np.nan) if pd.notna(v) else np.nan)
    thickness = unknown
    if "slice_thickness_mm" in table:
        edges = [*thickness_bins, *([np.inf] if thickness_bins[-1] < np.inf else [])]
        bins = pd.cut(pd.to_numeric(table["slice_thickness_mm"], errors="coerce"), edges)
        thickness = bins.astype(str).where(bins.notna(), np.nan).astype(object)
    return {"scanner": scanner, "slice thickness (mm)": thickness}


SEPARABILITY_PERMUTATIONS = 100  # the smallest p is 1/101 ≈ 0.01: enough to call p < 0.05


def separability(vectors: np.ndarray, labels: pd.Series, seed: int = 0, min_per_group: int = 2,
                 n_permutations: int = SEPARABILITY_PERMUTATIONS):
    """How well ``labels`` (one per row of ``vectors``; NaN = unknown) are predicted from the embedding:
    (the folds' accuracies of a standardised logistic regression, stratified k-fold with k = min(5, the smallest
    group), the chance accuracy = the largest group's share, the permutation p: the share of ``n_permutations``
    shufflings of the labels whose mean accuracy reaches the observed one, scikit-learn's
    ``permutation_test_score`` with the same folds; Ojala & Garriga 2010). Rows with unknown labels and groups
    with fewer than ``min_per_group`` rows are left out; at least two groups must remain. Beating the
    largest group's share by a margin is no test: on 120 scans, 12 of 100 shuffled labels beat it by 5 points."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score, permutation_test_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    labels = pd.Series(labels).reset_index(drop=True)
    counts = labels.value_counts()
    keep = labels.isin(counts[counts >= min_per_group].index).to_numpy()
    y = labels[keep].astype(str)
    if y.nunique() < 2:
        raise ValueError(f"separability needs two groups of at least {min_per_group} rows, got {counts.to_dict()}")
    folds = StratifiedKFold(n_splits=min(5, int(y.value_counts().min())), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    x = np.asarray(vectors)[keep]
    accuracy = cross_val_score(model, x, y, cv=folds)
    _, _, p = permutation_test_score(model, x, y, cv=folds, n_permutations=n_permutations, random_state=seed)
    return accuracy, float(y.value_counts(normalize=True).max()), float(p)


def performance_by_protocol(predictions: pd.DataFrame, groups: dict[str, pd.Series], n_boot: int,
                            seed: int = 0) -> pd.DataFrame:
    """``evaluate.bootstrap_ci`` of ``predictions`` (``scan_id, task, label, …``) within each protocol group:
    ``groups`` maps a protocol's name to each scan's group (a Series indexed by ``scan_id``; NaN = unknown, left
    out). Only the tasks with both labels in a group count there; a group that lacks one of ``predictions``' tasks
    so has no macro (NaN, its ``reason`` naming the tasks missing): a mean over fewer tasks would not compare with
    the other groups' macros. Columns: ``bootstrap_ci``'s plus ``group`` (``"<protocol>: <value>"``), ``by`` (the
    protocol) and ``n_scans``."""
    from ..evaluate import bootstrap_ci
    from ..evaluate.stats import without_macro

    tasks = set(predictions["task"])
    parts = []
    for name, group_of in groups.items():
        grouped = predictions.assign(_group=predictions["scan_id"].map(group_of)).dropna(subset=["_group"])
        for value, g in grouped.groupby("_group"):
            usable = g.groupby("task")["label"].agg(lambda s: s.nunique() == 2)
            g = g[g.task.isin(usable[usable].index)].drop(columns="_group")
            if len(g):
                table = bootstrap_ci(g, n_boot=n_boot, seed=seed)
                missing = sorted(tasks - set(g["task"]))
                if missing:
                    table = without_macro(table, ["value", "mean", "ci_low", "ci_high"],
                                          f"no positive and negative scans of {', '.join(missing)} in this group: a "
                                          "macro over the other tasks would not compare")
                parts.append(table.assign(group=f"{name}: {value}", by=name, n_scans=g.scan_id.nunique()))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(
        columns=["task", "metric", "value", "ci_low", "ci_high", "group", "by", "n_scans"])

"""Does the model attend to the lesion? A measured version of the paper's qualitative claim.

The paper (Results, "Visual interpretation") reports that the attention maps "attend to correct disease
locations in the majority of cases". On the synthetic cohort the lesion masks are known, so for each scan,
task and encoder (pretrained or fine-tuned) we measure

- ``attention_share``: the fraction of the attention map's mass that falls inside the lesion mask, and
- ``volume_share``: the fraction of the model-input volume the mask occupies,

and their ratio ``enrichment`` (1 = the attention is no more on the lesion than a uniform map would be).
The map and the mask must live on the same grid: the model input. :func:`mask_to_canvas` and
:func:`mask_to_model_input` take a lesion label map there along the image's own path
(``preprocess.to_canvas`` then ``preprocess.model_input``), with nearest neighbours so labels stay labels;
:func:`load_scan_with_mask` does both for one scan of the synthetic cohort (``scans.csv``: ``path``,
``mask_path``; label codes in ``data.synthetic.lesions.LABEL_CODES``).
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy.stats import wilcoxon

from ..data.synthetic.lesions import BLEEDS, LABEL_CODES

# the tasks whose lesions the synthetic label maps hold: one code each, ``ich`` any bleed
MASKED_TASKS = (*LABEL_CODES, "ich")


def task_mask(labels: np.ndarray, tasks) -> np.ndarray:
    """The voxels of a label map (codes ``LABEL_CODES``) that belong to the lesions of ``tasks`` (a task or a
    list; ``ich`` is every bleed)."""
    tasks = [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = sorted(set(tasks) - set(MASKED_TASKS))
    if unknown:
        raise ValueError(f"no lesion mask for tasks {unknown}; masks exist for {list(MASKED_TASKS)}")
    codes = {LABEL_CODES[b] for t in tasks for b in (BLEEDS if t == "ich" else (t,))}
    return np.isin(labels, sorted(codes))

__all__ = ["MASKED_TASKS", "task_mask", "load_case", "load_scan_with_mask", "mask_to_canvas", "mask_to_model_input",
           "attention_share_in_mask",
           "lesion_attention_table", "summarize_lesion_attention"]


def mask_to_canvas(hu, mask, affine, spec) -> np.ndarray:
    """A lesion label map on the scan's own grid → the scan's canvas (``preprocess.to_canvas``).

    The mask goes through the image's orientation and resampling with nearest neighbours
    (``interp_order=0``) and is placed with the offsets the image's head bounding box gives, so canvas
    voxel (i, j, k) of the mask lies under canvas voxel (i, j, k) of the image. Outside the scan: label 0.
    """
    from ..data.preprocess import place_on_canvas, resample

    if spec.canvas is None:
        raise ValueError(f"spec {spec.name!r} has no canvas (the reference chain stretches the head's box); "
                         "lesion overlap is defined for the paper chain")
    hu, mask = np.asarray(hu), np.asarray(mask)
    if hu.shape != mask.shape:
        raise ValueError(f"mask shape {mask.shape} differs from the scan's {hu.shape}")
    image, image_affine = resample(hu, affine, spec)
    labels, _ = resample(mask.astype(np.float32), affine, replace(spec, interp_order=0))
    _, canvas_affine = place_on_canvas(image, image_affine, spec)
    starts = np.rint(np.linalg.solve(image_affine[:3, :3], canvas_affine[:3, 3] - image_affine[:3, 3]))
    c = spec.canvas
    canvas = np.zeros((c, c, c), dtype=mask.dtype)
    src, dst = [], []
    for s, n in zip(starts.astype(int), labels.shape):
        a, b = max(s, 0), min(s + c, n)
        src.append(slice(a, max(a, b)))
        dst.append(slice(a - s, a - s + max(0, b - a)))
    canvas[tuple(dst)] = np.rint(labels[tuple(src)].numpy()).astype(mask.dtype)
    return canvas


def mask_to_model_input(canvas_mask: np.ndarray, spec) -> np.ndarray:
    """A canvas-space label map → model-input space, as ``preprocess.model_input`` treats the image: the
    same centre crop of ``spec.eval_crop``³ (start ``c//2 − k//2``), then a resize to ``spec.input_size``³
    with nearest neighbours (``nearest-exact``: each output voxel takes the label at its centre, inside the
    block the image's ``area`` resize averages). Labels are preserved; the dtype is kept."""
    canvas_mask = np.asarray(canvas_mask)
    k = spec.eval_crop
    if spec.canvas is None or canvas_mask.shape != (spec.canvas,) * 3:
        raise ValueError(f"mask of shape {canvas_mask.shape} is not a {spec.canvas}³ canvas of spec {spec.name!r}")
    s = spec.canvas // 2 - k // 2
    cropped = canvas_mask[s:s + k, s:s + k, s:s + k]
    t = torch.from_numpy(np.ascontiguousarray(cropped).astype(np.float32))[None, None]
    resized = F.interpolate(t, size=(spec.input_size,) * 3, mode="nearest-exact")[0, 0].numpy()
    return resized.astype(canvas_mask.dtype)


def load_scan_with_mask(volume_path, mask_path, spec) -> tuple[torch.Tensor, np.ndarray]:
    """One synthetic scan and its lesion label map, both in model-input space:
    (image (3, S, S, S) float32 as ``preprocess.preprocess`` makes it, labels (S, S, S) uint8).

    The mask must share the volume's grid (same shape and affine), as the synthetic cohort writes it.
    """
    from ..data.preprocess import PreprocessError, load_volume, model_input, to_canvas

    hu, affine = load_volume(volume_path)
    labels, mask_affine = load_volume(mask_path)
    if labels.shape != hu.shape or not np.allclose(mask_affine, affine, atol=1e-4):
        raise PreprocessError(f"{mask_path}: the mask's grid (shape {labels.shape}) is not the grid of "
                              f"{volume_path} (shape {hu.shape}) or their affines differ")
    image = model_input(to_canvas(hu, affine, spec, str(volume_path))[None], spec)[0]
    canvas_labels = mask_to_canvas(hu, np.rint(labels).astype(np.uint8), affine, spec)
    return image, mask_to_model_input(canvas_labels, spec)


def load_case(row: Mapping, spec, folder) -> tuple[torch.Tensor, np.ndarray | None]:
    """One scan-table row as (model input (3, S, S, S), its lesion label map on the same grid or None): the
    label map where the row has a ``mask_path`` (relative to the scan table's ``folder``), else None."""
    from ..data.preprocess import preprocess

    mask_path = row.get("mask_path")
    if isinstance(mask_path, str) and mask_path.strip():
        return load_scan_with_mask(row["path"], Path(folder) / mask_path, spec)
    return preprocess(row["path"], spec), None


def attention_share_in_mask(attention: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    """(share of the attention mass inside ``mask``, share of the volume inside ``mask``).

    ``attention`` is a non-negative map on the same grid as ``mask`` (for instance
    ``AttentionResult.attention_map()``, nearest-upsampled so every voxel carries its patch's weight).
    """
    attention = np.asarray(attention, dtype=np.float64)
    mask = np.asarray(mask).astype(bool)
    if attention.shape != mask.shape:
        raise ValueError(f"attention map {attention.shape} and mask {mask.shape} are not on the same grid")
    if attention.min() < 0:
        raise ValueError("attention map has negative values; pass attention probabilities, not a display map")
    total = attention.sum()
    if total <= 0:
        raise ValueError("attention map has no mass")
    return float(attention[mask].sum() / total), float(mask.mean())


def lesion_attention_table(cases: Iterable[Mapping]) -> pd.DataFrame:
    """One row per case. Each case is a mapping with ``scan_id``, ``task``, ``model`` (e.g. ``pretrained``
    / ``finetuned``), ``attention`` (map) and ``mask`` (boolean lesion mask on the same grid).

    Columns: ``scan_id, task, model, attention_share, volume_share, enrichment``. Cases whose mask is empty
    are skipped (no lesion to attend to).
    """
    rows = []
    for case in cases:
        share, volume = attention_share_in_mask(case["attention"], case["mask"])
        if volume == 0:
            continue
        rows.append({"scan_id": case["scan_id"], "task": case["task"], "model": case["model"],
                     "attention_share": share, "volume_share": volume, "enrichment": share / volume})
    columns = ["scan_id", "task", "model", "attention_share", "volume_share", "enrichment"]
    return pd.DataFrame(rows, columns=columns)


def summarize_lesion_attention(table: pd.DataFrame, reference: str = "pretrained") -> pd.DataFrame:
    """Per task and model: number of scans, mean attention share, mean volume share, median enrichment,
    the fraction of scans whose attention share exceeds their volume share, and — for every model other
    than ``reference`` — the two-sided Wilcoxon signed-rank p-value of its enrichment against the
    reference model's on the same scans (NaN with fewer than two paired scans)."""
    rows = []
    for (task, model), group in table.groupby(["task", "model"], sort=True):
        row = {"task": task, "model": model, "n_scans": len(group),
               "attention_share": group["attention_share"].mean(),
               "volume_share": group["volume_share"].mean(),
               "median_enrichment": group["enrichment"].median(),
               "frac_above_chance": float((group["attention_share"] > group["volume_share"]).mean()),
               "p_vs_reference": np.nan}
        if model != reference:
            ref = table[(table["task"] == task) & (table["model"] == reference)]
            paired = group.merge(ref, on="scan_id", suffixes=("", "_ref"))
            differences = paired["enrichment"] - paired["enrichment_ref"]
            if len(paired) >= 2 and np.any(differences != 0):
                row["p_vs_reference"] = float(wilcoxon(paired["enrichment"], paired["enrichment_ref"]).pvalue)
        rows.append(row)
    return pd.DataFrame(rows)

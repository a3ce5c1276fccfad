"""Does the model attend to the lesion? A measured version of the paper's qualitative claim.

The paper (Results, "Visual interpretation") reports that the attention maps "attend to correct disease
locations in the majority of cases". On the synthetic cohort the lesion masks are known, so for each scan,
task and encoder (pretrained or fine-tuned) we measure, **within the head** (:func:`head_mask`),

- ``attention_share``: the share of the attention the map puts on the head that falls inside the lesion,
- ``chance_share``: the lesion's share of the head's voxels, what a map spread evenly over the head gives,

and their ratio ``enrichment`` (1 = no more on the lesion than on any other part of the head). The head is
the reference, not the whole input cube: about half the cube is air, which every encoder learns to ignore,
so against the cube's volume any map that merely prefers tissue looks lesion-seeking (about 2× on any
lesion). What a lesion-blind map of the same encoder scores is measured too: ``control_enrichment`` scores
the scan's lesion with the mean map of the *other* scans (:func:`lesion_attention_table`), and the paired
test compares each scan's own map with it.

The map and the masks live on one grid, the model input. :func:`mask_to_canvas` and
:func:`mask_to_model_input` take a lesion mask there along the image's own path (``preprocess.to_canvas``,
then the crop and the ``area`` resize of ``preprocess.model_input``): the lesion becomes, like the image,
the *fraction* of each model voxel it covers, so a lesion smaller than a model voxel is kept (with its
weight) rather than rounded away. :func:`load_scan_with_mask` loads one scan of the synthetic cohort
(``scans.csv``: ``path``, ``mask_path``; label codes in ``data.synthetic.lesions.LABEL_CODES``).
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

__all__ = ["MASKED_TASKS", "task_mask", "head_mask", "load_case", "load_scan_with_mask", "mask_to_canvas",
           "mask_to_model_input", "lesion_shares", "lesion_attention_table", "summarize_lesion_attention"]


def head_mask(volume) -> np.ndarray:
    """The head on the model-input grid: the voxels of the model input (K, S, S, S) where any window is above
    its floor (boolean (S, S, S)).

    Taken from the model input itself, so every caller (table, figure, viewer) gets the same head. On the
    paper chain the lowest window floor is the bone window's, 600 − 2800/2 = −800 HU, which is ``HEAD_HU``, the
    threshold preprocessing centres the head with: a model voxel is head when some of the canvas voxels it
    averages are above −800 HU (brain, CSF, blood, bone, scalp), air when all are below (air, pad)."""
    volume = volume.detach().cpu().numpy() if torch.is_tensor(volume) else np.asarray(volume)
    if volume.ndim != 4:
        raise ValueError(f"expected the model input (K, S, S, S), got shape {volume.shape}")
    return volume.max(axis=0) > 0


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
    """A canvas-space mask (non-zero = inside) → the fraction of each model-input voxel it covers, float32 in
    [0, 1]: the same centre crop of ``spec.eval_crop``³ (start ``c//2 − k//2``) and ``area`` resize to
    ``spec.input_size``³ as ``preprocess.model_input`` applies to the image. A lesion smaller than a model
    voxel keeps its weight instead of vanishing (a nearest-neighbour resize drops most of them)."""
    canvas_mask = np.asarray(canvas_mask)
    k = spec.eval_crop
    if spec.canvas is None or canvas_mask.shape != (spec.canvas,) * 3:
        raise ValueError(f"mask of shape {canvas_mask.shape} is not a {spec.canvas}³ canvas of spec {spec.name!r}")
    s = spec.canvas // 2 - k // 2
    cropped = canvas_mask[s:s + k, s:s + k, s:s + k] != 0
    t = torch.from_numpy(np.ascontiguousarray(cropped, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(spec.input_size,) * 3, mode=spec.resize_mode)[0, 0].numpy()


def load_scan_with_mask(volume_path, mask_path, spec) -> tuple[torch.Tensor, np.ndarray]:
    """One synthetic scan and its lesion label map: (model input (3, S, S, S) float32 as
    ``preprocess.preprocess`` makes it, the label map on the scan's canvas (C, C, C) uint8).

    Select a task's lesions on the canvas (:func:`task_mask`), then take them to the model input
    (:func:`mask_to_model_input`). The mask must share the volume's grid (same shape and affine), as the
    synthetic cohort writes it.
    """
    from ..data.preprocess import PreprocessError, load_label_map, load_volume, model_input, to_canvas

    hu, affine = load_volume(volume_path)
    labels, mask_affine = load_label_map(mask_path)
    if labels.shape != hu.shape or not np.allclose(mask_affine, affine, atol=1e-4):
        raise PreprocessError(f"{mask_path}: the mask's grid (shape {labels.shape}) is not the grid of "
                              f"{volume_path} (shape {hu.shape}) or their affines differ")
    image = model_input(to_canvas(hu, affine, spec, str(volume_path))[None], spec)[0]
    return image, mask_to_canvas(hu, np.rint(labels).astype(np.uint8), affine, spec)


def load_case(row: Mapping, spec, folder) -> tuple[torch.Tensor, np.ndarray | None]:
    """One scan-table row as (model input (3, S, S, S), its lesion label map on the canvas or None): the
    label map where the row has a ``mask_path`` (relative to the scan table's ``folder``), else None."""
    from ..data.preprocess import preprocess

    mask_path = row.get("mask_path")
    if isinstance(mask_path, str) and mask_path.strip():
        return load_scan_with_mask(row["path"], Path(folder) / mask_path, spec)
    return preprocess(row["path"], spec), None


def lesion_shares(attention: np.ndarray, lesion: np.ndarray, head: np.ndarray) -> tuple[float, float]:
    """(attention share, chance share) of a lesion, within the head.

    ``attention``: a non-negative map on the model-input grid (``AttentionResult.attention_map()``, each voxel
    carrying its patch's weight); ``lesion``: the fraction of each voxel inside the lesion
    (:func:`mask_to_model_input`; a boolean mask is fractions 0 and 1); ``head``: :func:`head_mask`. With
    weights ``l`` (lesion) and ``h`` (head) per voxel,

        attention share = Σ a·l / Σ a·h,    chance share = Σ l / Σ h,

    so the attention the map puts on air counts for nothing, and a map spread evenly over the head has
    attention share = chance share. (0, 0) for an empty lesion. A lesion outside the head is an error (the
    mask does not belong to this image).
    """
    attention = np.asarray(attention, dtype=np.float64)
    lesion = np.asarray(lesion, dtype=np.float64)
    head = np.asarray(head).astype(bool)
    if not attention.shape == lesion.shape == head.shape:
        raise ValueError(f"attention map {attention.shape}, lesion {lesion.shape} and head {head.shape} are not "
                         "on the same grid")
    if attention.min() < 0:
        raise ValueError("attention map has negative values; pass attention probabilities, not a display map")
    if lesion.min() < 0 or lesion.max() > 1:
        raise ValueError(f"lesion weights must be fractions in [0, 1], got {lesion.min():.3g} … {lesion.max():.3g}")
    if lesion[~head].any():
        raise ValueError(f"{lesion[~head].sum():.3g} lesion voxels lie outside the head (all windows at their "
                         "floor): the mask does not match the image")
    on_head = attention[head].sum()
    if on_head <= 0:
        raise ValueError("attention map has no mass on the head")
    return float((attention * lesion).sum() / on_head), float(lesion.sum() / head.sum())


def lesion_attention_table(cases: Iterable[Mapping]) -> pd.DataFrame:
    """One row per case. Each case is a mapping with ``scan_id``, ``task``, ``model`` (e.g. ``pretrained`` /
    ``fine-tuned``), ``attention`` (map), ``lesion`` (voxel fractions or boolean) and ``head``
    (:func:`head_mask`), all on the model-input grid.

    Columns
    - ``lesion_voxels``: the lesion's size on the model grid (sum of its fractions); 0 when nothing of it is
      left in the model input (outside the crop): those rows are kept, their shares NaN, so they can be counted;
    - ``attention_on_head``: the share of the map's whole mass on the head (the rest is on air);
    - ``attention_share``, ``chance_share``, ``enrichment`` = their ratio: :func:`lesion_shares`; ``chance_share``
      is the chance level (1× enrichment);
    - ``control_enrichment``: the scan's lesion and head scored with the mean of the maps (each normalised to
      sum one) of the other scans of the same task and model, a lesion-blind map of the same encoder: what a
      map scores that knows where lesions and tissue usually are, but not where this scan's lesion is (nor this
      head's exact shape, so a map that only follows each scan's anatomy sits a little above its control).
      NaN with no other scan.
    """
    cases = list(cases)
    unit = lambda c: np.asarray(c["attention"], np.float64) / np.sum(c["attention"])  # noqa: E731
    sums: dict = {}  # (task, model) and (task, model, scan_id) -> [sum of unit maps, count]
    for case in cases:
        for key in ((case["task"], case["model"]), (case["task"], case["model"], case["scan_id"])):
            total = sums.setdefault(key, [0.0, 0])
            total[0], total[1] = total[0] + unit(case), total[1] + 1
    rows = []
    for case in cases:
        own, head = unit(case), np.asarray(case["head"], bool)
        row = {"scan_id": case["scan_id"], "task": case["task"], "model": case["model"],
               "lesion_voxels": float(np.sum(case["lesion"])), "attention_on_head": float(own[head].sum()),
               "attention_share": np.nan, "chance_share": np.nan, "enrichment": np.nan, "control_enrichment": np.nan}
        if row["lesion_voxels"] > 0:
            share, chance = lesion_shares(own, case["lesion"], head)
            row.update(attention_share=share, chance_share=chance, enrichment=share / chance)
            group, n = sums[case["task"], case["model"]]
            scan, n_scan = sums[case["task"], case["model"], case["scan_id"]]
            if n > n_scan:  # the mean map of the other scans (clipped: the subtraction may round below 0)
                others = np.clip(group - scan, 0.0, None) / (n - n_scan)
                control, _ = lesion_shares(others, case["lesion"], head)
                row["control_enrichment"] = control / chance
        rows.append(row)
    columns = ["scan_id", "task", "model", "lesion_voxels", "attention_on_head", "attention_share", "chance_share",
               "enrichment", "control_enrichment"]
    return pd.DataFrame(rows, columns=columns)


def _paired_p(a: pd.Series, b: pd.Series) -> float:
    """Two-sided Wilcoxon signed-rank p of paired values; NaN with fewer than two pairs or no difference."""
    keep = a.notna() & b.notna()
    a, b = a[keep], b[keep]
    if len(a) < 2 or not np.any(a.to_numpy() != b.to_numpy()):
        return np.nan
    return float(wilcoxon(a, b).pvalue)


def summarize_lesion_attention(table: pd.DataFrame, reference: str = "pretrained") -> pd.DataFrame:
    """Per task and model, from :func:`lesion_attention_table`:

    - ``n_scans``: scans with a lesion on the model grid; ``n_no_lesion``: scans whose lesion left nothing there;
    - ``attention_share``, ``chance_share`` (means), ``median_enrichment``, ``median_control_enrichment``;
    - ``frac_above_chance``: the share of scans with enrichment > 1;
    - ``frac_above_control``: the share of scans whose own map scores their lesion higher than the other scans'
      mean map does, ``median_difference_vs_control``, the median over scans of that paired difference (own minus
      control; its sign, not the two columns' medians, says which way the pairing goes), and ``p_vs_control``,
      the two-sided Wilcoxon signed-rank p of that pairing: does the map follow *this* scan's lesion, beyond where
      the encoder looks anyway?
    - ``median_difference_vs_reference`` and ``p_vs_reference``, for every model other than ``reference``: the
      same of its enrichment against the ``reference`` model's on the same scans.
    """
    rows = []
    for (task, model), group in table.groupby(["task", "model"], sort=True):
        measured = group[group["lesion_voxels"] > 0]
        controlled = measured.dropna(subset=["control_enrichment"])
        row = {"task": task, "model": model, "n_scans": len(measured), "n_no_lesion": len(group) - len(measured),
               "attention_share": measured["attention_share"].mean(), "chance_share": measured["chance_share"].mean(),
               "median_enrichment": measured["enrichment"].median(),
               "median_control_enrichment": measured["control_enrichment"].median(),
               "frac_above_chance": float((measured["enrichment"] > 1).mean()) if len(measured) else np.nan,
               "frac_above_control": float((controlled["enrichment"] > controlled["control_enrichment"]).mean())
               if len(controlled) else np.nan,
               "median_difference_vs_control": (measured["enrichment"] - measured["control_enrichment"]).median(),
               "p_vs_control": _paired_p(measured["enrichment"], measured["control_enrichment"]),
               "median_difference_vs_reference": np.nan, "p_vs_reference": np.nan}
        if model != reference:
            ref = table[(table["task"] == task) & (table["model"] == reference)]
            paired = measured.merge(ref, on="scan_id", suffixes=("", "_ref"))
            row["median_difference_vs_reference"] = (paired["enrichment"] - paired["enrichment_ref"]).median()
            row["p_vs_reference"] = _paired_p(paired["enrichment"], paired["enrichment_ref"])
        rows.append(row)
    return pd.DataFrame(rows)

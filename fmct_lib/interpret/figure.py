"""Fig. 5: attention and attention distance of several encoders on one slice, on shared, honest scales.

Attention is shown as **enrichment** (``attention.enrichment``: each patch's share of the cls token's patch
attention times the number of patches N), so 1 means "what a uniform map gives every patch". Every panel uses
the same perceptually uniform colour map (magma) on the same fixed logarithmic range, ``1/N … N`` (N is the
largest value a map can reach: all its attention on one patch), with one colour bar: a near-uniform map looks
uniform, and a focal one looks focal. Each panel's title gives the measured lesion enrichment, in 3-D, where a
mask is given: the share of the head's attention inside the lesion over the lesion's share of the head
(``lesion.lesion_shares``; air does not count), as "× chance".

Attention distance (Eq. 1, mean of layers and heads) shares one mm range across its panels (viridis), with
its own colour bar. The lesion mask, where there is one, is outlined in every panel.
"""
from __future__ import annotations

from collections.abc import Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.cm import ScalarMappable
from matplotlib.colors import LogNorm, Normalize

from .attention import AttentionResult
from .lesion import lesion_shares

__all__ = ["AXES", "display_slice", "ENRICHMENT_CMAP", "DISTANCE_CMAP", "OUTLINE_COLOUR", "enrichment_norm",
           "enrichment_ticks", "lesion_enrichment", "figure_scan", "check_figure_choice", "attention_slices",
           "attention_figure"]

ENRICHMENT_CMAP = "magma"      # perceptually uniform, dark = little attention, light = much
DISTANCE_CMAP = "viridis"
OUTLINE_COLOUR = "#00ffff"     # cyan: apart from every colour of magma and from the grey CT
OVERLAY_ALPHA = 0.6           # the map over the CT; the colour bars show the map's own colours
PRINT_WIDTH_IN = 175 / 25.4    # within a double column (183 mm) with its margins; all type 6 pt or more
# view -> the RAS axis held fixed
AXES: dict[str, int] = {"sagittal": 0, "coronal": 1, "axial": 2}


def display_slice(volume: np.ndarray, axis: str, index: int) -> np.ndarray:
    """Slice ``index`` of a RAS-ordered 3-D array along view ``axis``, oriented radiologically: patient's right on
    the image's left; anterior up in axial slices, superior up in coronal and sagittal ones; anterior on the
    left in sagittal slices."""
    plane = np.take(volume, index, axis=AXES[axis])  # the two remaining axes, in RAS order
    return np.flip(plane.T, axis=(0, 1))


def enrichment_norm(num_patches: int) -> LogNorm:
    """The fixed enrichment scale of every attention panel: logarithmic, ``1/N … N`` (1 = uniform, in the middle)."""
    if num_patches < 2:
        raise ValueError(f"an enrichment scale needs at least 2 patches, got {num_patches}")
    return LogNorm(vmin=1.0 / num_patches, vmax=float(num_patches))


def enrichment_ticks(num_patches: int) -> tuple[list[float], list[str]]:
    """Colour-bar ticks of ``enrichment_norm``: the powers of 8 inside ``1/N … N`` and both ends ("1/64" … "64")."""
    powers = [8.0 ** k for k in range(-8, 9) if 1.0 / num_patches < 8.0 ** k < num_patches]
    ticks = [1.0 / num_patches, *powers, float(num_patches)]
    return ticks, [f"{t:g}" if t >= 1 else f"1/{1 / t:g}" for t in ticks]


def lesion_enrichment(result: AttentionResult, lesion: np.ndarray, head_mask: np.ndarray, layer: int | None = -1,
                      head: int | None = None) -> float:
    """The lesion enrichment of the cls attention of ``layer`` and attention ``head`` (``None``: mean) of one scan:
    the share of the head's attention on the lesion over the lesion's share of the head
    (``lesion.lesion_shares``). ``lesion``: voxel fractions or a boolean mask, ``head_mask``: ``lesion.head_mask``
    of the model input, both on the model-input grid. NaN for an empty lesion."""
    if not np.any(lesion):
        return float("nan")
    share, chance = lesion_shares(result.attention_map(layer, head), lesion, head_mask)
    return share / chance


def figure_scan(scans: pd.DataFrame, tasks) -> str:
    """The scan Fig. 5 shows by default: the test scan positive for most of ``tasks`` (the first in table order
    among equals); where the table has no test split, the same among all its scans."""
    pool = scans[scans["split"] == "test"]
    pool = scans if pool.empty else pool
    if pool.empty:
        raise ValueError("figure_scan: the scan table is empty")
    positives = pool[list(tasks)].apply(pd.to_numeric, errors="coerce").eq(1).sum(axis=1) if tasks else 0
    return str(pool.assign(n=positives).sort_values("n", ascending=False, kind="stable")["scan_id"].iloc[0])


def check_figure_choice(scans: pd.DataFrame, labelled: pd.DataFrame, scan_id: str | None, layer: int | None,
                        depth: int) -> None:
    """Refuse, before any model is trained, a ``scan_id`` that ``labelled`` (the study's rows) lacks, saying where
    it is if the dataset has it elsewhere (another site, the unlabelled pool), and a ``layer`` outside the
    encoder's ``depth`` (``None``: mean of layers; negative counts from the last)."""
    if scan_id is not None and str(scan_id) not in set(labelled["scan_id"].astype(str)):
        other = scans[scans["scan_id"].astype(str) == str(scan_id)]
        if other.empty:
            where = "no scan of the dataset has that id"
        else:
            row = other.iloc[0]
            site = f"site {row['site']!r}, " if "site" in other and pd.notna(row["site"]) else ""
            where = f"the dataset has it at {site}split {row['split']!r} (choose its site with site=)"
        raise ValueError(f"scan_id {scan_id!r} is not among the {len(labelled)} labelled scans the notebook shows: "
                         f"{where}")
    if layer is not None and not -depth <= layer < depth:
        raise ValueError(f"layer {layer}: the encoder has {depth} layers (0 … {depth - 1}, or -1 for the last; None: "
                         f"the mean of layers)")


def attention_slices(image: np.ndarray, results: Mapping[str, AttentionResult], *, index: int, axis: str = "axial",
                     layer: int | None = -1, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """The 2-D arrays ``attention_figure`` draws, as it draws them (``display_slice`` orientation), to be saved
    beside the figure: ``ct`` (the image's slice), per encoder ``enrichment <name>`` (cls attention ÷ uniform,
    trilinear on the voxel grid) and ``distance_mm <name>`` (Eq. 1, mean of layers and heads), and ``outline``
    (1 inside the mask) where a mask is given."""
    drawn = {"ct": display_slice(np.asarray(image, dtype=np.float32), axis, index)}
    for name, result in results.items():
        drawn[f"enrichment {name}"] = display_slice(result.enrichment_map(layer=layer, mode="trilinear"), axis, index)
        drawn[f"distance_mm {name}"] = display_slice(result.distance_map(mode="trilinear"), axis, index)
    if mask is not None:
        drawn["outline"] = display_slice(np.asarray(mask) > 0, axis, index).astype(float)
    return drawn


def attention_figure(image: np.ndarray, results: Mapping[str, AttentionResult], *, index: int, axis: str = "axial",
                     layer: int | None = -1, mask: np.ndarray | None = None, head_mask: np.ndarray | None = None,
                     label: str = "", window: tuple[float, float] = (0.0, 1.0), mask_name: str = "lesion") -> plt.Figure:
    """Fig. 5 for one slice: the CT, then one column per encoder in ``results``; row 1 the cls attention of
    ``layer`` (``None``: mean of layers; heads averaged) as enrichment, row 2 the attention distance (Eq. 1,
    mean of layers and heads). ``image`` is one window channel of the model input (S, S, S), RAS order, shown
    within ``window``; ``mask`` a lesion mask (voxel fractions or boolean) on the same grid, outlined where
    non-zero, its enrichment (:func:`lesion_enrichment`, needs the ``head_mask`` of the model input) in the
    titles ("× chance in outline"), the outline named ``mask_name`` in the first panel (say which lesions it holds:
    "lesions (edema+ich)"); ``label`` names the scan.
    Slices are oriented by :func:`display_slice`."""
    image = np.asarray(image, dtype=np.float32)
    if not results:
        raise ValueError("attention_figure: no attention results to draw")
    if axis not in AXES:
        raise ValueError(f"attention_figure: unknown view {axis!r}; choose one of {list(AXES)}")
    patches = {r.num_patches for r in results.values()}
    if len(patches) > 1:
        raise ValueError(f"attention_figure: the encoders' patch grids differ ({sorted(patches)} patches); "
                         "their enrichment scales would differ")
    for name, result in results.items():
        if result.volume_shape != image.shape:
            raise ValueError(f"attention_figure: attention of {name!r} covers {result.volume_shape}, the image is "
                             f"{image.shape}")
    if mask is not None and np.shape(mask) != image.shape:
        raise ValueError(f"attention_figure: the mask has shape {np.shape(mask)}, the image {image.shape}")
    if mask is not None and np.shape(head_mask) != image.shape:
        raise ValueError(f"attention_figure: a lesion mask needs the head mask of the model input on the image's "
                         f"grid {image.shape}, got {'none' if head_mask is None else np.shape(head_mask)}")
    if not 0 <= index < image.shape[AXES[axis]]:
        raise ValueError(f"attention_figure: {axis} slice {index} is outside 0…{image.shape[AXES[axis]] - 1}")

    n = patches.pop()
    drawn = attention_slices(image, results, index=index, axis=axis, layer=layer, mask=mask)
    attention_panels, distance_panels = {}, {}
    for name, result in results.items():
        title = name
        if mask is not None:
            value = lesion_enrichment(result, mask, head_mask, layer)
            title += "\noutline: no voxels" if np.isnan(value) else f"\n{value:.2f}× chance in outline"
        attention_panels[title] = drawn[f"enrichment {name}"]
        distance_panels[name] = drawn[f"distance_mm {name}"]
    ct, outline = drawn["ct"], drawn.get("outline")
    depth = next(iter(results.values())).num_layers
    layer_name = "mean of layers" if layer is None else f"layer {layer % depth + 1}"

    ncols = 1 + len(results)
    width_in = min(PRINT_WIDTH_IN, 1.45 * ncols + 1.3)
    fig, axes = plt.subplots(2, ncols, figsize=(width_in, 2 * (width_in - 1.3) / ncols + 0.9), squeeze=False,
                             layout="constrained")

    def draw_row(row: int, first_title: str, panels: dict, cmap: str, norm):
        """The CT, then each map over it, the lesion outline on all, and the row's colour bar (returned)."""
        axes[row, 0].imshow(ct, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
        axes[row, 0].set_title(first_title, fontsize=7)
        for ax, (title, values) in zip(axes[row, 1:], panels.items()):
            ax.imshow(ct, cmap="gray", vmin=window[0], vmax=window[1], interpolation="nearest")
            ax.imshow(values, cmap=cmap, norm=norm, alpha=OVERLAY_ALPHA, interpolation="nearest")
            ax.set_title(title, fontsize=7)
        for ax in axes[row]:
            ax.set_axis_off()
            if outline is not None and outline.any():
                ax.contour(outline, levels=[0.5], colors=OUTLINE_COLOUR, linewidths=0.8)
        bar = fig.colorbar(ScalarMappable(norm, cmap), ax=axes[row].tolist(), shrink=0.9, pad=0.02)
        bar.ax.tick_params(labelsize=6)
        return bar

    first = f"{label}\n{axis} {index}; cls attention, {layer_name}"
    first += f"\ncyan outline:\n{mask_name}" if mask is not None else ""
    bar = draw_row(0, first.strip(), attention_panels, ENRICHMENT_CMAP, enrichment_norm(n))
    ticks, tick_labels = enrichment_ticks(n)
    bar.set_ticks(ticks, labels=tick_labels)
    bar.set_label(f"attention ÷ uniform (log; {n}: one patch)", fontsize=6)
    low, high = min(float(d.min()) for d in distance_panels.values()), max(float(d.max()) for d in distance_panels.values())
    bar = draw_row(1, "attention distance\n(mean of layers and heads)", distance_panels, DISTANCE_CMAP,
                   Normalize(low, high))
    bar.set_label("distance (mm), Eq. 1", fontsize=6)
    return fig

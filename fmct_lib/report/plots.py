"""The figure styles of the paper, with the paper's reported values drawn beside ours.

Every plotting function takes a tidy DataFrame (one row per bar / point, with ``value``, ``ci_low``,
``ci_high`` where a CI exists) and returns a matplotlib ``Figure``; :func:`save_figure` writes it to
``figures/<name>.{png,pdf,csv,json}`` with the data behind it and the configuration it ran with.

- :func:`metric_bars`     per-task bars with 95% CIs (Fig. 1e–g, Fig. 3, Supp. Fig. 11 by protocol)
- :func:`fewshot_curves`  AUC/AP against K with resample bands, stars for full-data training (Fig. 2)
- :func:`band_lines`      lines with CI bands, e.g. DINO vs MAE against pretraining fraction (Fig. 4)
- :func:`embedding_scatter` 2-D embedding coloured by scanner and by slice thickness (Supp. Fig. 10–11)
- :func:`attention_grid`  CT slice with attention overlays, one column per encoder/task (Fig. 5)

Paper values (``report.paper``) are always labelled as the paper's, with the paper's dataset named: on the
synthetic cohort they are a reference point, not a target.
"""
from __future__ import annotations

import dataclasses
import json
import math
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..io import atomic_path
from ..paths import REPO_ROOT, cache_root, data_root, figures_root, runs_root
from .paper import PAPER_DATASET_NAMES

__all__ = [
    "MODEL_COLOURS", "save_figure", "save_figure_data", "metric_bars", "fewshot_curves", "band_lines", "embedding_scatter", "attention_grid",
]

# One colour per model / protocol across all figures, so a reader learns them once.
MODEL_COLOURS = {
    "scratch": "#8c8c8c", "finetune": "#1f77b4", "linear": "#ff7f0e", "attentive": "#2ca02c",
    "fewshot": "#1f77b4", "dino": "#1f77b4", "mae": "#d62728", "pretrained": "#9467bd",
    "external": "#ff7f0e", "in_domain": "#1f77b4", "histogram": "#bcbd22",
    "in-domain histogram": "#bcbd22",
}
PAPER_MARKER = dict(marker="D", color="black", markersize=6, markerfacecolor="white", markeredgewidth=1.5,
                    linestyle="none", zorder=5)


# --------------------------------------------------------------------------------------- paper labels
def _paper_label(row) -> str:
    name = PAPER_DATASET_NAMES.get(row["dataset"], row["dataset"])
    rel = "" if row["relation"] == "=" else f"{row['relation']} "
    return f"paper ({name}): {rel}{row['value']:g}"


# --------------------------------------------------------------------------------------- saving
def _jsonable(obj):
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (np.integer, np.floating, np.bool_)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"config value of type {type(obj).__name__} is not JSON-serialisable: {obj!r}")


def _atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves half a file."""
    with atomic_path(path) as tmp:
        write(tmp)


def save_figure(fig: plt.Figure, name: str, data: pd.DataFrame, config: dict,
                root: Path | str | None = None, dpi: int = 150) -> dict[str, Path]:
    """Write ``<root>/<name>.png``, ``.pdf`` (the figure), ``.csv`` (the data drawn) and ``.json``
    (``config`` plus when it was written). Root defaults to ``$FMCT_FIGURES``. Returns the four paths."""
    root, text = _check_figure_args(name, data, config, root)
    paths = {ext: root / f"{name}.{ext}" for ext in ("png", "pdf")}
    _atomic_write(paths["png"], lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))
    _atomic_write(paths["pdf"], lambda p: fig.savefig(p, format="pdf", bbox_inches="tight"))
    return {**paths, **_write_data_and_config(root, name, data, text)}


def save_figure_data(name: str, data: pd.DataFrame, config: dict, root: Path | str | None = None) -> dict[str, Path]:
    """The ``.csv`` and ``.json`` of :func:`save_figure`, for a figure whose PNG/PDF another function wrote."""
    root, text = _check_figure_args(name, data, config, root)
    return _write_data_and_config(root, name, data, text)


def _portable(value):
    """``value`` with every absolute path written relative to the root it lies in (``<runs>/pretrain/…``, also
    ``<data>``, ``<cache>``, ``<figures>``, ``<repo>``, ``<home>``), or as ``<elsewhere>/<file name>``: a figure's
    configuration never records the machine's absolute paths."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if not (isinstance(value, str) and value.startswith("/")):
        return value
    path = Path(value)
    roots = {"runs": runs_root(), "data": data_root(), "cache": cache_root(), "figures": figures_root(),
             "repo": REPO_ROOT, "home": Path.home()}
    for name, root in roots.items():
        for base in dict.fromkeys((Path(root).expanduser(), Path(root).expanduser().resolve())):
            if path.is_relative_to(base) and base != Path("/"):
                return f"<{name}>/{path.relative_to(base).as_posix()}"
    return f"<elsewhere>/{path.name}"


def _check_figure_args(name, data, config, root) -> tuple[Path, str]:
    if not name or any(c in name for c in "/\\") or name.startswith("."):
        raise ValueError(f"figure name {name!r} must be a plain file stem (no folders, not hidden)")
    if not isinstance(data, pd.DataFrame):
        raise TypeError(f"figure {name!r}: data must be a pandas DataFrame, got {type(data).__name__}")
    if not isinstance(config, dict):
        raise TypeError(f"figure {name!r}: config must be a dict, got {type(config).__name__}")
    meta = {"figure": name, "written_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "config": _portable(json.loads(json.dumps(config, default=_jsonable)))}  # fail before writing anything
    text = json.dumps(meta, indent=2, sort_keys=True)
    root = Path(root) if root else figures_root()
    root.mkdir(parents=True, exist_ok=True)
    return root, text


def _write_data_and_config(root: Path, name: str, data: pd.DataFrame, text: str) -> dict[str, Path]:
    paths = {"csv": root / f"{name}.csv", "json": root / f"{name}.json"}
    _atomic_write(paths["csv"], lambda p: data.to_csv(p, index=False))
    _atomic_write(paths["json"], lambda p: Path(p).write_text(text + "\n"))
    return paths


# --------------------------------------------------------------------------------------- bars
def _colour(key, i: int) -> str:
    return MODEL_COLOURS.get(str(key), matplotlib.colormaps["tab10"](i % 10))


def _ci_errors(df: pd.DataFrame, value: str) -> np.ndarray | None:
    if not {"ci_low", "ci_high"} <= set(df.columns):
        return None
    low = (df[value] - df["ci_low"]).clip(lower=0).fillna(0)
    high = (df["ci_high"] - df[value]).clip(lower=0).fillna(0)
    return np.vstack([low.to_numpy(float), high.to_numpy(float)])


def metric_bars(df: pd.DataFrame, *, x: str = "task", hue: str = "model", value: str = "value",
                ylabel: str = "AUROC", title: str | None = None, paper: pd.DataFrame | None = None,
                order: list | None = None, hue_order: list | None = None, ylim: tuple | None = (0.0, 1.0),
                points: pd.DataFrame | None = None, ax: plt.Axes | None = None) -> plt.Figure:
    """Grouped bars (one group per ``x``, one bar per ``hue``) with 95% CI whiskers.

    ``paper`` rows (columns ``task``, ``model``, ``value``, ``relation``, ``dataset``) whose task and
    model match a bar are drawn on it as open diamonds and named in the legend as the paper's.
    ``points`` (columns ``x``, ``hue``, ``value``) are single runs behind a bar, e.g. its training seeds,
    drawn on it as small black dots.
    """
    missing = {x, hue, value} - set(df.columns)
    if missing:
        raise ValueError(f"metric_bars: data lacks columns {sorted(missing)}")
    order = list(order) if order is not None else list(dict.fromkeys(df[x]))
    hue_order = list(hue_order) if hue_order is not None else list(dict.fromkeys(df[hue]))
    fig, ax = _fig_ax(ax, figsize=(max(4.0, 0.55 * len(order) * max(1, len(hue_order)) + 1.5), 3.6))
    width = 0.8 / max(1, len(hue_order))
    positions = {}
    for j, level in enumerate(hue_order):
        part = df[df[hue] == level].set_index(x).reindex(order)
        xs = np.arange(len(order)) + (j - (len(hue_order) - 1) / 2) * width
        ax.bar(xs, part[value].to_numpy(float), width * 0.95, yerr=_ci_errors(part, value),
               color=_colour(level, j), label=str(level), capsize=2, error_kw=dict(lw=0.8))
        positions.update({(t, level): xp for t, xp in zip(order, xs)})
    if points is not None and len(points):
        at = [positions.get((t, h)) for t, h in zip(points[x], points[hue])]
        keep = [a is not None for a in at]
        ax.scatter([a for a in at if a is not None], points.loc[keep, value].to_numpy(float), s=7, color="black",
                   zorder=3, label="single runs (seeds)")
    if paper is not None and len(paper):
        for _, row in paper.iterrows():
            xp = positions.get((row["task"], row["model"]))
            if xp is None:
                continue
            ax.plot([xp], [row["value"]], label=_paper_label(row) + f" ({row['model']})", **PAPER_MARKER)
            if row["relation"] == ">":
                ax.annotate("", xy=(xp, row["value"] + 0.05), xytext=(xp, row["value"]),
                            arrowprops=dict(arrowstyle="->", lw=1))
    ax.set_xticks(np.arange(len(order)))
    ax.set_xticklabels([str(t).upper() if x == "task" else str(t) for t in order], rotation=45, ha="right")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        lows = df["ci_low"] if "ci_low" in df else df[value]
        bottom = min(ylim[0], float(np.nanmin(lows))) if len(df) else ylim[0]
        ax.set_ylim(max(0.0, math.floor(bottom * 10) / 10) if ylim[0] > 0 else ylim[0], ylim[1])
    if title:
        ax.set_title(title)
    ax.legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y", alpha=0.3)
    return fig


# --------------------------------------------------------------------------------------- lines
def band_lines(df: pd.DataFrame, *, x: str, hue: str, value: str = "value", facet: str | None = None,
               xlabel: str | None = None, ylabel: str = "AUROC", logx: bool = False,
               paper: pd.DataFrame | None = None, ncols: int = 4, sharey: bool = True,
               ylim: tuple | None = (0.0, 1.0)) -> plt.Figure:
    """Mean lines with 95% CI bands (``ci_low``/``ci_high``), one line per ``hue``, one panel per
    ``facet`` (a ``macro`` panel last): Fig. 4 (DINO vs MAE against the pretraining fraction). ``paper``
    rows with a ``facet`` value and ``x`` are drawn as open diamonds labelled as the paper's. ``ylim``
    bounds the axis (bands of a few resamples can reach past the metric's range)."""
    missing = {x, hue, value} - set(df.columns) | ({facet} - set(df.columns) if facet else set())
    if missing:
        raise ValueError(f"band_lines: data lacks columns {sorted(missing)}")
    facets = sorted(dict.fromkeys(df[facet]), key=lambda f: f == "macro") if facet else [None]
    fig, axes = _facets(len(facets), ncols, sharey=sharey)
    for ax, f in zip(axes, facets):
        part = df if f is None else df[df[facet] == f]
        for j, level in enumerate(dict.fromkeys(part[hue])):
            line = part[part[hue] == level].sort_values(x)
            colour = _colour(level, j)
            ax.plot(line[x], line[value], "o-", color=colour, label=str(level), ms=4)
            if {"ci_low", "ci_high"} <= set(line.columns):
                ax.fill_between(line[x].to_numpy(float), line["ci_low"].to_numpy(float),
                                line["ci_high"].to_numpy(float), color=colour, alpha=0.2, lw=0)
        if paper is not None and len(paper) and facet in paper.columns:
            for _, row in paper[paper[facet] == f].iterrows():
                ax.plot([row[x]], [row["value"]], label=_paper_label(row), **PAPER_MARKER)
        if logx:
            ax.set_xscale("log", base=2)
            ticks = sorted(part[x].unique())
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
        ax.set_title("" if f is None else (str(f).upper() if facet == "task" else str(f)), fontsize=9)
        ax.set_xlabel(xlabel or x)
        ax.grid(alpha=0.3)
        if ylim is not None:
            ax.set_ylim(*ylim)
    axes[0].set_ylabel(ylabel)
    _shared_legend(fig, axes)
    return fig


def fewshot_curves(df: pd.DataFrame, *, full: pd.DataFrame | None = None, value: str = "value",
                   ylabel: str = "AUROC", paper: pd.DataFrame | None = None, ncols: int = 5,
                   ylim: tuple | None = (0.0, 1.0)) -> plt.Figure:
    """Fig. 2: the metric against K (positives = negatives = K) with the resamples' CI band, one panel per
    task, one line per ``model``; ``full`` (task, model, value[, ci_low, ci_high]) is training on all
    data, drawn as stars right of the largest K. ``paper`` rows (task, k, value, relation) are drawn as
    open diamonds labelled as the paper's."""
    missing = {"task", "model", "k", value} - set(df.columns)
    if missing:
        raise ValueError(f"fewshot_curves: data lacks columns {sorted(missing)}")
    fig = band_lines(df, x="k", hue="model", value=value, facet="task", xlabel="K (shots per class)",
                     ylabel=ylabel, logx=True, ncols=ncols, ylim=ylim)
    axes = [a for a in fig.axes if a.get_visible()]
    tasks = sorted(dict.fromkeys(df["task"]), key=lambda t: t == "macro")
    x_full = 2 * df["k"].max()
    for ax, task in zip(axes, tasks):
        if full is not None:
            models = list(dict.fromkeys(df.loc[df["task"] == task, "model"]))
            for j, (_, row) in enumerate(full[full["task"] == task].iterrows()):
                j = models.index(row["model"]) if row["model"] in models else j
                ax.plot([x_full], [row[value]], marker="*", ms=11, color=_colour(row["model"], j),
                        markeredgecolor="black", linestyle="none", label=f"{row['model']}, all data")
            ticks = sorted(df["k"].unique()) + [x_full]
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks[:-1]] + ["all"])
        if paper is not None and len(paper):
            for _, row in paper[paper["task"] == task].iterrows():
                ax.plot([row["k"]], [row["value"]], label=_paper_label(row) + f" at K={row['k']}",
                        **PAPER_MARKER)
    for legend in fig.legends:
        legend.remove()
    _shared_legend(fig, axes)
    return fig


# --------------------------------------------------------------------------------------- embeddings
def embedding_scatter(df: pd.DataFrame, *, x: str = "x", y: str = "y",
                      color_by: tuple[str, ...] = ("manufacturer", "slice_thickness_mm"),
                      highlight: str | None = None, title: str | None = None) -> plt.Figure:
    """A 2-D embedding (t-SNE / UMAP), one panel per column in ``color_by``: categorical columns get a
    legend, numeric ones a colour bar. ``highlight`` (a 1/0 column, e.g. a task's label) draws its
    positives with a black edge, the paper's "all vs positive cases" comparison (Supp. Fig. 10)."""
    missing = {x, y, *color_by} - set(df.columns) | ({highlight} - set(df.columns) if highlight else set())
    if missing:
        raise ValueError(f"embedding_scatter: data lacks columns {sorted(missing)}")
    fig, axes = plt.subplots(1, len(color_by), figsize=(4.2 * len(color_by), 3.8), squeeze=False)
    for ax, column in zip(axes[0], color_by):
        values = df[column]
        if pd.api.types.is_numeric_dtype(values) and values.nunique() > 6:
            sc = ax.scatter(df[x], df[y], c=values, cmap="viridis", s=10, lw=0)
            fig.colorbar(sc, ax=ax, label=column)
        else:
            for j, level in enumerate(sorted(values.dropna().unique(), key=str)):
                part = df[values == level]
                ax.scatter(part[x], part[y], s=10, lw=0, color=matplotlib.colormaps["tab10"](j % 10),
                           label=str(level))
            ax.legend(title=column, fontsize=7, frameon=False, markerscale=1.5)
        if highlight:
            pos = df[df[highlight] == 1]
            ax.scatter(pos[x], pos[y], s=14, facecolors="none", edgecolors="black", lw=0.6,
                       label=f"{highlight} positive")
        ax.set_title(f"coloured by {column}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------- attention
def attention_grid(rows: list[dict], *, alpha: float = 0.5, cmap: str = "jet",
                   window: tuple[float, float] = (0.0, 1.0)) -> plt.Figure:
    """Fig. 5: one row per scan/slice; the first column is the CT slice (``image``, 2-D, displayed
    within ``window``), then one column per entry of ``overlays`` ({title: 2-D map}), each overlaid on
    the slice. An optional ``mask`` (2-D bool) is outlined in white; ``label`` names the row. Arrays are
    display-ready (first row at the top), e.g. from ``interpret.viewer.display_slice``."""
    if not rows:
        raise ValueError("attention_grid: no rows to draw")
    ncols = 1 + max(len(r["overlays"]) for r in rows)
    fig, axes = plt.subplots(len(rows), ncols, figsize=(2.2 * ncols, 2.3 * len(rows)), squeeze=False)
    for i, row in enumerate(rows):
        image = np.asarray(row["image"], float)
        for ax in axes[i]:
            ax.axis("off")
        axes[i, 0].imshow(image, cmap="gray", vmin=window[0], vmax=window[1])
        axes[i, 0].set_title(row.get("label", "CT"), fontsize=8)
        for j, (name, overlay) in enumerate(row["overlays"].items(), start=1):
            overlay = np.asarray(overlay, float)
            if overlay.shape != image.shape:
                raise ValueError(f"attention_grid: overlay {name!r} has shape {overlay.shape}, "
                                 f"the slice {image.shape}")
            ax = axes[i, j]
            ax.imshow(image, cmap="gray", vmin=window[0], vmax=window[1])
            ax.imshow(overlay, cmap=cmap, alpha=alpha)
            if row.get("mask") is not None and np.any(row["mask"]):
                ax.contour(np.asarray(row["mask"], float), levels=[0.5], colors="white", linewidths=0.8)
            ax.set_title(name, fontsize=8)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------- helpers
def _fig_ax(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    fig, ax = plt.subplots(figsize=figsize)
    return fig, ax


def _facets(n: int, ncols: int, sharey: bool):
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.0 * ncols, 2.6 * nrows), sharey=sharey, squeeze=False)
    axes = list(axes.ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _shared_legend(fig, axes) -> None:
    """One legend for all panels (labels de-duplicated), right of the panels."""
    seen = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    fig.tight_layout()
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="upper left", bbox_to_anchor=(1.0, 1.0),
                   fontsize=7, frameon=False)

"""The figure styles of the paper, with the paper's reported values drawn beside ours.

Every plotting function takes a tidy DataFrame (one row per bar / point, with ``value``, ``ci_low``,
``ci_high`` where a CI exists) and returns a matplotlib ``Figure``; :func:`save_figure` writes it to
``figures/<name>.{png,pdf,csv,json}`` with the data behind it and the configuration it ran with.

- :func:`metric_bars`     per-task bars with 95% CIs (Fig. 1e–g, Fig. 3, Supp. Fig. 11 by protocol)
- :func:`fewshot_curves`  AUC/AP against K with resample bands, stars for full-data training (Fig. 2)
- :func:`band_lines`      lines with CI bands, e.g. DINO vs MAE against pretraining fraction (Fig. 4)
- :func:`embedding_scatter` 2-D embedding coloured by scanner and by slice thickness (Supp. Fig. 10–11)

One look for all of them, as a journal prints it:

- **Colours**: one per model, everywhere (:data:`MODEL_COLOURS`, :func:`colour_of`), all from seaborn's
  colour-blind-safe ``colorblind`` palette; names the notebooks use for the same model (``pretrained``,
  ``in-domain fine-tuned``) are aliases of one key.
- **Type and size**: :func:`use_print_style` (applied on import) sets 7 pt text and 6 pt ticks and legends;
  figures are made 89 mm (one column) or 183 mm (two columns) wide, so the type prints at its size.
  :func:`smallest_type_pt` measures it, and :func:`save_figure` warns below 6 pt.
- **Chance**: AUROC panels carry a dashed line at 0.5; AP, mAP and precision panels one at the prevalence the
  caller passes (``prevalence=``), per task or per panel.
- **Titles** name the profile and how the models were trained (``profile=``, ``training=``; see
  :func:`training_rule`).

Paper values (``report.paper``) are always labelled as the paper's, with the paper's dataset named: on the
synthetic cohort they are a reference point, not a target. Values that are not a bar's height (a relative
gain, a P value) are listed in the legend (``paper_notes=``).
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from cycler import cycler
from matplotlib.text import Text
from matplotlib.transforms import offset_copy

from ..config import Profile, get_profile
from ..io import atomic_path
from ..paths import REPO_ROOT, cache_root, data_root, encoders_root, figures_root, runs_root
from .paper import PAPER_DATASET_NAMES, describe_paper_value

__all__ = [
    "MODEL_COLOURS", "PALETTE", "colour_of", "model_key", "use_print_style", "smallest_type_pt", "figure_title",
    "training_rule", "print_subplots", "save_figure", "save_figure_data", "save_arrays", "metric_bars",
    "fewshot_curves", "band_lines", "embedding_scatter",
]

# --------------------------------------------------------------------------------------- colours
PALETTE = tuple(sns.color_palette("colorblind").as_hex())  # ten colours, safe for the common colour blindnesses

# One colour per model across all figures, so a reader learns them once. The methods that pretrain an encoder
# (DINO, MAE, VICReg, none) and the ways a classifier is trained (fine-tuned, probes, scratch, histogram) each
# keep the palette's strong colours for the models drawn as lines; the light ones go to models drawn only as
# bars (external validation, random init), which get a dark edge.
MODEL_COLOURS = {
    "finetune": PALETTE[0],             # blue: the foundation model fine-tuned (all data, K shots, in-domain)
    "linear": PALETTE[1],               # orange: linear probe
    "attentive": PALETTE[2],            # green: attentive probe
    "dino": PALETTE[3],                 # vermilion: DINO-pretrained encoder
    "mae": PALETTE[4],                  # reddish purple: MAE-pretrained encoder
    "histogram": PALETTE[5],            # brown: window histograms + logistic regression (no deep model)
    "random_init": PALETTE[6],          # pink: an encoder never trained
    "scratch": PALETTE[7],              # grey: ViT trained from random initialisation
    "external_validation": PALETTE[8],  # yellow: fine-tuned on one site, tested on another
    "vicreg": PALETTE[9],               # sky blue: VICReg-pretrained encoder (a control, not in the paper)
    "abmil": "#12711c",                 # dark green (seaborn's "dark" palette): the attention-MIL probe, beside
}                                       # the attentive probe's green; the ten colour-blind-safe colours are taken
# Other names the notebooks and the paper give the same models (after lower-casing, '-' and ' ' read as '_').
MODEL_ALIASES = {
    "fine_tuned": "finetune", "pretrained": "finetune", "fewshot": "finetune", "in_domain": "finetune",
    "in_domain_fine_tuned": "finetune", "in_domain_finetune": "finetune",
    "linear_probe": "linear", "attentive_probe": "attentive",
    "in_domain_scratch": "scratch", "in_domain_histogram": "histogram", "histogram_reference": "histogram",
    "external": "external_validation",
}
PAPER_MARKER = dict(marker="D", color="black", markersize=4.5, markerfacecolor="white", markeredgewidth=1.0,
                    linestyle="none", zorder=5)
CHANCE_LINE = dict(color="0.25", linestyle=(0, (3, 2)), linewidth=0.8, zorder=4)


def model_key(name) -> str | None:
    """The key of ``name`` in :data:`MODEL_COLOURS` (``"in-domain fine-tuned"`` -> ``"finetune"``), or None."""
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    key = MODEL_ALIASES.get(key, key)
    return key if key in MODEL_COLOURS else None


def colour_of(name) -> str:
    """The colour (hex) of model ``name``, the same in every figure; a name no model has is an error."""
    key = model_key(name)
    if key is None:
        raise KeyError(f"no colour for model {name!r}: known models are {sorted(MODEL_COLOURS)} "
                       f"(and the aliases {sorted(MODEL_ALIASES)})")
    return MODEL_COLOURS[key]


def _colours_for(levels) -> dict:
    """{level: colour} for the levels drawn in one figure: a model's own colour, and for other levels the
    palette's colours that no model of this figure uses, in palette order."""
    levels = list(dict.fromkeys(levels))
    known = {level: colour_of(level) for level in levels if model_key(level)}
    spare = [c for c in PALETTE if c not in known.values()] or list(PALETTE)
    others = [level for level in levels if level not in known]
    return {**known, **{level: spare[i % len(spare)] for i, level in enumerate(others)}}


# --------------------------------------------------------------------------------------- print style
MM = 1 / 25.4  # inches per millimetre
SINGLE_COLUMN_MM, DOUBLE_COLUMN_MM = 89, 183  # Nature's column widths
MIN_TYPE_PT = 6
PRINT_STYLE = {
    "font.size": 7, "axes.titlesize": 7, "axes.labelsize": 7, "figure.titlesize": 7,
    "xtick.labelsize": 6, "ytick.labelsize": 6, "legend.fontsize": 6, "legend.title_fontsize": 6,
    "legend.frameon": False, "axes.linewidth": 0.6, "lines.linewidth": 1.0, "lines.markersize": 3,
    "xtick.major.width": 0.6, "ytick.major.width": 0.6, "xtick.major.size": 2.5, "ytick.major.size": 2.5,
    "axes.spines.top": False, "axes.spines.right": False, "grid.linewidth": 0.4, "grid.alpha": 0.5,
    "axes.prop_cycle": cycler(color=PALETTE), "pdf.fonttype": 42, "ps.fonttype": 42, "savefig.dpi": 300,
}


def use_print_style() -> None:
    """Set matplotlib's rcParams to :data:`PRINT_STYLE` (applied once when this module is imported; call again
    after changing the style)."""
    matplotlib.rcParams.update(PRINT_STYLE)


use_print_style()


def _width_mm(n_items: int, per_column: int) -> float:
    """89 mm while ``n_items`` fit one column (``per_column`` of them), else 183 mm."""
    return SINGLE_COLUMN_MM if n_items <= per_column else DOUBLE_COLUMN_MM


def smallest_type_pt(fig: plt.Figure) -> float:
    """The size in points of the smallest text of ``fig`` as printed: at its own size when the saved figure
    (``bbox_inches="tight"``) fits 183 mm, else shrunk to 183 mm."""
    fig.draw_without_rendering()
    # no renderer argument: the figure finds its own, also when a notebook's inline backend has closed it
    width_mm = fig.get_tightbbox().width / MM
    scale = min(1.0, DOUBLE_COLUMN_MM / width_mm) if width_mm > 0 else 1.0
    sizes = [t.get_fontsize() for t in fig.findobj(Text)
             if t.get_visible() and t.get_text().strip() and (t.axes is None or t.axes.get_visible())]
    return min(sizes) * scale if sizes else float("inf")


def figure_title(title: str | None = None, *, profile: str | None = None, training: str | None = None,
                 width_mm: float = DOUBLE_COLUMN_MM) -> str:
    """``title``, then ``profile <profile>; <training>``, wrapped to lines that fit ``width_mm`` at 7 pt."""
    detail = "; ".join(part for part in (f"profile {profile}" if profile else None, training) if part)
    chars = max(30, int(width_mm / 1.3))  # about 1.3 mm a character at 7 pt
    return "\n".join(textwrap.fill(part, chars) for part in (title, detail) if part)


def training_rule(profile: str | Profile) -> str:
    """How every downstream model of ``profile`` was trained, for a figure's title: the convergence rule of
    ``downstream.training.fit`` with the profile's patience and cap."""
    p = get_profile(profile)
    return (f"each model trained until its validation AUROC stopped improving for {p.finetune_patience} epochs "
            f"(at most {p.finetune_max_epochs} epochs of {p.finetune_epoch_steps} steps)")


# --------------------------------------------------------------------------------------- paper labels
def _paper_label(row) -> str:
    name = PAPER_DATASET_NAMES.get(row["dataset"], row["dataset"])
    rel = "" if row["relation"] == "=" else f"{row['relation']} "
    return f"paper ({name}): {rel}{row['value']:g}"


def _paper_point(ax: plt.Axes, x, row, label: str) -> None:
    """The paper's value ``row`` at ``x`` as an open diamond; a bound (``>``, ``<``) gets an arrow 9 pt up or
    down from it."""
    ax.plot([x], [row["value"]], label=label, **PAPER_MARKER)
    if row["relation"] in (">", "<"):
        tip = offset_copy(ax.transData, fig=ax.figure, y=9 if row["relation"] == ">" else -9, units="points")
        ax.annotate("", xy=(x, row["value"]), xycoords=tip, xytext=(x, row["value"]), textcoords="data",
                    arrowprops=dict(arrowstyle="-|>", lw=0.7, color="black", shrinkA=3, shrinkB=0, mutation_scale=5))


def _add_notes(ax: plt.Axes, notes: pd.DataFrame | None) -> None:
    """The paper's values that are no bar's height (``notes``: rows of ``paper_values.csv``), as legend lines."""
    if notes is None:
        return
    for _, row in notes.iterrows():
        ax.plot([], [], linestyle="none", label=textwrap.fill(describe_paper_value(row), 48,
                                                               subsequent_indent="  "))


# --------------------------------------------------------------------------------------- chance
def _chance_levels(levels, prevalence, ylabel: str):
    """The chance level of each of ``levels`` ({level: y}) or of all (a float), and its legend label; None
    where there is none. An AUROC (named in ``ylabel``: AUROC, AUC) has chance 0.5 whatever the prevalence;
    any other metric (AP, mAP, precision) the ``prevalence`` (a float or {level: prevalence}), where an
    aggregate level (``macro``, ``mean``) absent from it gets the mean of the other levels' prevalences."""
    if re.search(r"auroc|\bauc\b", ylabel, flags=re.IGNORECASE):
        return 0.5, "chance (AUROC 0.5)"
    if prevalence is None:
        return None, None
    if not isinstance(prevalence, Mapping):
        return float(prevalence), "chance (prevalence)"
    given = {level: float(prevalence[level]) for level in levels if level in prevalence}
    for level in levels:
        if level in ("macro", "mean") and level not in given and given:
            given[level] = float(np.mean([v for k, v in given.items() if k not in ("macro", "mean")]))
    return given, "chance (prevalence)"


def _draw_chance(ax: plt.Axes, level: float | None, label: str | None) -> None:
    """A dashed line across ``ax`` at ``level`` (nothing when None)."""
    if level is not None:
        ax.axhline(level, label=label, **CHANCE_LINE)


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
                root: Path | str | None = None, dpi: int = 300) -> dict[str, Path]:
    """Write ``<root>/<name>.png``, ``.pdf`` (the figure), ``.csv`` (the data drawn) and ``.json``
    (``config`` plus when it was written). Root defaults to ``$FMCT_FIGURES``. Returns the four paths.
    Warns when the figure's smallest type would print below 6 pt (:func:`smallest_type_pt`)."""
    root, text = _check_figure_args(name, data, config, root)
    smallest = smallest_type_pt(fig)
    if smallest < MIN_TYPE_PT:
        warnings.warn(f"figure {name!r}: its smallest type prints at {smallest:.1f} pt (< {MIN_TYPE_PT} pt) at "
                      f"{DOUBLE_COLUMN_MM} mm; make the figure narrower or its type larger", stacklevel=2)
    paths = {ext: root / f"{name}.{ext}" for ext in ("png", "pdf")}
    _atomic_write(paths["png"], lambda p: fig.savefig(p, format="png", dpi=dpi, bbox_inches="tight"))
    _atomic_write(paths["pdf"], lambda p: fig.savefig(p, format="pdf", bbox_inches="tight"))
    return {**paths, **_write_data_and_config(root, name, data, text)}


def save_arrays(name: str, arrays: Mapping[str, np.ndarray], root: Path | str | None = None) -> Path:
    """Write ``<root>/<name>_arrays.npz`` (compressed; root: the figures root), atomically: the images a figure
    draws (Fig. 5's slices), which its CSV cannot hold. Read back with ``np.load(path)`` (no pickles: plain
    numeric arrays only). Returns its path."""
    if not arrays:
        raise ValueError(f"figure {name!r}: no arrays to save")
    bad = {key: np.asarray(a).dtype for key, a in arrays.items() if np.asarray(a).dtype.kind not in "biuf"}
    if bad:
        raise TypeError(f"figure {name!r}: arrays must be numeric, got {bad}")
    path = Path(root or figures_root()) / f"{name}_arrays.npz"
    path.parent.mkdir(parents=True, exist_ok=True)

    def write(tmp):  # a file object: given a path, numpy would append ".npz" to the temporary name
        with open(tmp, "wb") as f:
            np.savez_compressed(f, **{key: np.asarray(a) for key, a in arrays.items()})
    _atomic_write(path, write)
    return path


def save_figure_data(name: str, data: pd.DataFrame, config: dict, root: Path | str | None = None) -> dict[str, Path]:
    """The ``.csv`` and ``.json`` of :func:`save_figure`, for a figure whose PNG/PDF another function wrote."""
    root, text = _check_figure_args(name, data, config, root)
    return _write_data_and_config(root, name, data, text)


def _portable(value):
    """``value`` with every absolute path written relative to the root it lies in (``<runs>/pretrain/…``, also
    ``<encoders>``, ``<data>``, ``<cache>``, ``<figures>``, ``<repo>``, ``<home>``), or as ``<elsewhere>/<file name>``
    with, for a file, the first 16 hex digits of its sha256 (``<elsewhere>/encoder.safetensors@5fc3dcc82914d338``:
    which of many ``encoder.safetensors`` it was): a figure's configuration never records the machine's absolute
    paths."""
    if isinstance(value, dict):
        return {k: _portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v) for v in value]
    if not (isinstance(value, str) and value.startswith("/")):
        return value
    path = Path(value)
    roots = {"runs": runs_root(), "encoders": encoders_root(), "data": data_root(), "cache": cache_root(),
             "figures": figures_root(), "repo": REPO_ROOT, "home": Path.home()}
    for name, root in roots.items():
        for base in dict.fromkeys((Path(root).expanduser(), Path(root).expanduser().resolve())):
            if path.is_relative_to(base) and base != Path("/"):
                return f"<{name}>/{path.relative_to(base).as_posix()}"
    if path.is_file():
        from ..downstream.features import encoder_id  # the sha256 prefix runs name a checkpoint by, hashed once
        return f"<elsewhere>/{path.name}@{encoder_id(path)}"
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
    _warn_if_replacing_other_settings(paths["json"], name, text)
    _atomic_write(paths["csv"], lambda p: data.to_csv(p, index=False))
    _atomic_write(paths["json"], lambda p: Path(p).write_text(text + "\n"))
    return paths


def _warn_if_replacing_other_settings(path: Path, name: str, text: str) -> None:
    """A figure's name holds its dataset, profile and encoder, not every parameter: a run with other ``tasks`` or
    ``protocols`` writes the same files. Say so (the settings that differ, old → new) before replacing them."""
    try:
        old = json.loads(path.read_text()).get("config", {})
    except (OSError, ValueError, AttributeError):
        return  # no earlier figure, or not one of ours
    new = json.loads(text)["config"]
    changed = [key for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key)]
    if changed:
        shown = "; ".join(f"{key}: {_short(old.get(key))} → {_short(new.get(key))}" for key in changed[:4])
        more = f"; and {len(changed) - 4} more" if len(changed) > 4 else ""
        warnings.warn(f"figure {name!r}: replacing the one made with other settings ({shown}{more}); give this run "
                      "its own FMCT_FIGURES to keep both", stacklevel=3)


def _short(value, width: int = 40) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= width else text[:width - 1] + "…"


# --------------------------------------------------------------------------------------- bars
def _ci_errors(df: pd.DataFrame, value: str) -> np.ndarray | None:
    if not {"ci_low", "ci_high"} <= set(df.columns):
        return None
    low = (df[value] - df["ci_low"]).clip(lower=0).fillna(0)
    high = (df["ci_high"] - df[value]).clip(lower=0).fillna(0)
    return np.vstack([low.to_numpy(float), high.to_numpy(float)])


def metric_bars(df: pd.DataFrame, *, x: str = "task", hue: str = "model", value: str = "value",
                ylabel: str = "AUROC", title: str | None = None, paper: pd.DataFrame | None = None,
                order: list | None = None, hue_order: list | None = None, ylim: tuple | None = (0.0, 1.0),
                points: pd.DataFrame | None = None, ax: plt.Axes | None = None,
                prevalence: float | Mapping | None = None, profile: str | None = None, training: str | None = None,
                paper_notes: pd.DataFrame | None = None) -> plt.Figure:
    """Grouped bars (one group per ``x``, one bar per ``hue``, each model in its colour) with 95% CI whiskers.

    ``paper`` rows (columns ``task``, ``model``, ``value``, ``relation``, ``dataset``) whose task and
    model match a bar are drawn on it as open diamonds and named in the legend as the paper's;
    ``paper_notes`` (rows of ``paper_values.csv`` that are no bar's height, e.g. a relative gain) are listed
    in the legend. ``points`` (columns ``x``, ``hue``, ``value``) are single runs behind a bar, e.g. its
    training seeds, drawn on it as small black dots.

    Chance: a dashed line at 0.5 when ``ylabel`` names an AUROC; for AP, mAP or precision pass
    ``prevalence``, one number or {``x`` level: prevalence} (drawn over each group; ``macro``/``mean`` get
    the mean of the others when absent). The title is ``title`` with ``profile`` and ``training`` (the
    budget or stopping rule, e.g. :func:`training_rule`). Without ``ax`` the figure is 89 or 183 mm wide.
    """
    missing = {x, hue, value} - set(df.columns)
    if missing:
        raise ValueError(f"metric_bars: data lacks columns {sorted(missing)}")
    order = list(order) if order is not None else list(dict.fromkeys(df[x]))
    hue_order = list(hue_order) if hue_order is not None else list(dict.fromkeys(df[hue]))
    width_mm = _width_mm(len(order) * max(1, len(hue_order)), per_column=12)
    fig, ax = (ax.figure, ax) if ax is not None else print_subplots(width_mm=width_mm, height_mm=62)
    colours = _colours_for(hue_order)
    width = 0.8 / max(1, len(hue_order))
    positions = {}
    for j, level in enumerate(hue_order):
        part = df[df[hue] == level].set_index(x).reindex(order)
        xs = np.arange(len(order)) + (j - (len(hue_order) - 1) / 2) * width
        ax.bar(xs, part[value].to_numpy(float), width * 0.95, yerr=_ci_errors(part, value),
               color=colours[level], edgecolor="0.2", linewidth=0.3, label=str(level), capsize=1.5,
               error_kw=dict(lw=0.6, capthick=0.6))
        positions.update({(t, level): xp for t, xp in zip(order, xs)})
    chance, chance_label = _chance_levels(order, prevalence, ylabel)
    if isinstance(chance, dict):
        at = [(i, chance[t]) for i, t in enumerate(order) if t in chance]
        ax.hlines([y for _, y in at], [i - 0.45 for i, _ in at], [i + 0.45 for i, _ in at], label=chance_label,
                  colors=CHANCE_LINE["color"], linestyles=[CHANCE_LINE["linestyle"]],
                  linewidth=CHANCE_LINE["linewidth"], zorder=CHANCE_LINE["zorder"])
    else:
        _draw_chance(ax, chance, chance_label)
    if points is not None and len(points):
        at = [positions.get((t, h)) for t, h in zip(points[x], points[hue])]
        keep = [a is not None for a in at]
        ax.scatter([a for a in at if a is not None], points.loc[keep, value].to_numpy(float), s=3, color="black",
                   linewidths=0, zorder=3, label="single runs (seeds)")
    if paper is not None and len(paper):
        for _, row in paper.iterrows():
            xp = positions.get((row["task"], row["model"]))
            if xp is None:
                continue
            _paper_point(ax, xp, row, _paper_label(row) + f" ({row['model']})")
    _add_notes(ax, paper_notes)
    ax.set_xticks(np.arange(len(order)))
    ax.set_xticklabels([str(t).upper() if x == "task" else str(t) for t in order], rotation=45, ha="right",
                       rotation_mode="anchor")
    ax.set_ylabel(ylabel)
    if ylim is not None:
        lows = df["ci_low"] if "ci_low" in df else df[value]
        bottom = min(ylim[0], float(np.nanmin(lows))) if len(df) else ylim[0]
        ax.set_ylim(max(0.0, math.floor(bottom * 10) / 10) if ylim[0] > 0 else ylim[0], ylim[1])
    heading = figure_title(title, profile=profile, training=training, width_mm=fig.get_figwidth() / MM)
    if heading:
        ax.set_title(heading, loc="left")
    handles = dict(zip(*reversed(ax.get_legend_handles_labels())))  # one entry per label, the models first
    labels = [str(level) for level in hue_order if str(level) in handles] + [
        label for label in handles if label not in map(str, hue_order)]
    ax.legend([handles[label] for label in labels], labels, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.grid(axis="y")
    return fig


# --------------------------------------------------------------------------------------- lines
def band_lines(df: pd.DataFrame, *, x: str, hue: str, value: str = "value", facet: str | None = None,
               xlabel: str | None = None, ylabel: str = "AUROC", logx: bool = False, ncols: int = 4,
               ylim: tuple | None = (0.0, 1.0), prevalence: float | Mapping | None = None,
               title: str | None = None, profile: str | None = None, training: str | None = None) -> plt.Figure:
    """Mean lines with 95% CI bands (``ci_low``/``ci_high``), one line per ``hue`` in its model's colour, one
    panel per ``facet`` (a ``macro`` panel last): Fig. 4 (DINO vs MAE against the pretraining fraction; the paper
    gives no values to draw beside them). ``ylim`` bounds the axis (bands of a few resamples can reach past the
    metric's range).

    Chance: a dashed line at 0.5 when ``ylabel`` names an AUROC, else at ``prevalence`` (one number or
    {facet value: prevalence}). The figure's title is ``title`` with ``profile`` and ``training``."""
    missing = {x, hue, value} - set(df.columns) | ({facet} - set(df.columns) if facet else set())
    if missing:
        raise ValueError(f"band_lines: data lacks columns {sorted(missing)}")
    facets = sorted(dict.fromkeys(df[facet]), key=lambda f: f == "macro") if facet else [None]
    fig, axes = _facets(len(facets), ncols, sharey=True)
    colours = _colours_for(df[hue])
    chance, chance_label = _chance_levels(facets, prevalence, ylabel)
    for ax, f in zip(axes, facets):
        part = df if f is None else df[df[facet] == f]
        for level in dict.fromkeys(part[hue]):
            line = part[part[hue] == level].sort_values(x)
            ax.plot(line[x], line[value], "o-", color=colours[level], label=str(level))
            if {"ci_low", "ci_high"} <= set(line.columns):
                ax.fill_between(line[x].to_numpy(float), line["ci_low"].to_numpy(float),
                                line["ci_high"].to_numpy(float), color=colours[level], alpha=0.2, lw=0)
        _draw_chance(ax, chance.get(f) if isinstance(chance, dict) else chance, chance_label)
        if logx:
            ax.set_xscale("log", base=2)
            ticks = sorted(part[x].unique())
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks])
            ax.minorticks_off()
        ax.set_title("" if f is None else (str(f).upper() if facet == "task" else str(f)))
        if axes.index(ax) + ncols >= len(axes):  # the lowest panel of its column
            ax.set_xlabel(xlabel or x)
        ax.grid()
        if ylim is not None:
            ax.set_ylim(*ylim)
    axes[0].set_ylabel(ylabel)
    heading = figure_title(title, profile=profile, training=training, width_mm=fig.get_figwidth() / MM)
    if heading:
        fig.suptitle(heading, x=0.0, ha="left")
        fig.set_figheight(fig.get_figheight() + 3.5 * MM * (heading.count("\n") + 1))
    _shared_legend(fig, axes)
    return fig


def fewshot_curves(df: pd.DataFrame, *, full: pd.DataFrame | None = None, value: str = "value",
                   ylabel: str = "AUROC", paper: pd.DataFrame | None = None, ncols: int = 4,
                   ylim: tuple | None = (0.0, 1.0), prevalence: float | Mapping | None = None,
                   title: str | None = None, profile: str | None = None, training: str | None = None) -> plt.Figure:
    """Fig. 2: the metric against K (positives = negatives = K) with the resamples' CI band, one panel per
    task, one line per ``model``; ``full`` (task, model, value[, ci_low, ci_high]) is training on all
    data, drawn as stars right of the largest K. ``paper`` rows (task, k, value, relation) are drawn as
    open diamonds labelled as the paper's. Chance, title, ``profile`` and ``training`` as in
    :func:`band_lines`, with ``prevalence`` per task ({task: prevalence of its test split})."""
    missing = {"task", "model", "k", value} - set(df.columns)
    if missing:
        raise ValueError(f"fewshot_curves: data lacks columns {sorted(missing)}")
    fig = band_lines(df, x="k", hue="model", value=value, facet="task", xlabel="K (shots per class)",
                     ylabel=ylabel, logx=True, ncols=ncols, ylim=ylim, prevalence=prevalence, title=title,
                     profile=profile, training=training)
    axes = [a for a in fig.axes if a.get_visible()]
    tasks = sorted(dict.fromkeys(df["task"]), key=lambda t: t == "macro")
    colours = _colours_for(list(df["model"]) + (list(full["model"]) if full is not None else []))
    x_full = 2 * df["k"].max()
    for ax, task in zip(axes, tasks):
        if full is not None:
            for _, row in full[full["task"] == task].iterrows():
                ax.plot([x_full], [row[value]], marker="*", ms=7, color=colours[row["model"]],
                        markeredgecolor="black", markeredgewidth=0.4, linestyle="none",
                        label=f"{row['model']}, all data")
            ticks = sorted(df["k"].unique()) + [x_full]
            ax.set_xticks(ticks)
            ax.set_xticklabels([f"{t:g}" for t in ticks[:-1]] + ["all"])
        if paper is not None and len(paper):
            for _, row in paper[paper["task"] == task].iterrows():
                _paper_point(ax, row["k"], row, _paper_label(row) + f" at K={row['k']}")
    for legend in fig.legends:
        legend.remove()
    _shared_legend(fig, axes)
    return fig


# --------------------------------------------------------------------------------------- embeddings
def embedding_scatter(df: pd.DataFrame, *, x: str = "x", y: str = "y",
                      color_by: tuple[str, ...] = ("manufacturer", "slice_thickness_mm"),
                      highlight: str | None = None, title: str | None = None,
                      profile: str | None = None, training: str | None = None) -> plt.Figure:
    """A 2-D embedding (t-SNE / UMAP), one panel per column in ``color_by``: categorical columns get a
    legend (the colour-blind palette), numeric ones a colour bar (viridis). ``highlight`` (a 1/0 column,
    e.g. a task's label) draws its positives with a black edge, the paper's "all vs positive cases"
    comparison (Supp. Fig. 10). The title is ``title`` with ``profile`` and ``training`` (e.g. how the
    encoder was pretrained)."""
    missing = {x, y, *color_by} - set(df.columns) | ({highlight} - set(df.columns) if highlight else set())
    if missing:
        raise ValueError(f"embedding_scatter: data lacks columns {sorted(missing)}")
    width_mm = _width_mm(len(color_by), per_column=1)
    fig, axes = print_subplots(1, len(color_by), width_mm=width_mm, height_mm=70, squeeze=False)
    for ax, column in zip(axes[0], color_by):
        values = df[column]
        continuous = pd.api.types.is_numeric_dtype(values) and values.nunique() > 6  # a colour bar, not a legend
        if continuous:
            sc = ax.scatter(df[x], df[y], c=values, cmap="viridis", s=4, lw=0)
            fig.colorbar(sc, ax=ax, label=column)
        else:
            levels = sorted(values.dropna().unique(), key=str)
            sns.scatterplot(data=df, x=x, y=y, hue=column, hue_order=levels, palette=list(PALETTE[:len(levels)]),
                            s=4, linewidth=0, ax=ax)
        if highlight:
            pos = df[df[highlight] == 1]
            ax.scatter(pos[x], pos[y], s=6, facecolors="none", edgecolors="black", lw=0.4,
                       label=f"{highlight} positive")
        if not continuous or highlight:  # after the highlight, so that its ring has an entry too
            ax.legend(title=None if continuous else column, markerscale=1.5)
        ax.set_title(f"coloured by {column}")
        ax.set(xticks=[], yticks=[], xlabel="", ylabel="")
    heading = figure_title(title, profile=profile, training=training, width_mm=width_mm)
    if heading:
        fig.suptitle(heading)
    return fig


# --------------------------------------------------------------------------------------- helpers
def print_subplots(nrows: int = 1, ncols: int = 1, *, width_mm: float = DOUBLE_COLUMN_MM, height_mm: float = 60,
                   **kwargs):
    """``plt.subplots`` for a figure printed at its size: ``width_mm`` (89 or 183) by ``height_mm``, laid out
    by matplotlib's constrained layout, e.g. for several :func:`metric_bars` panels drawn with ``ax=``."""
    return plt.subplots(nrows, ncols, figsize=(width_mm * MM, height_mm * MM), layout="constrained", **kwargs)


def _facets(n: int, ncols: int, sharey: bool):
    """``n`` panels in rows of ``ncols``, 89 mm wide for up to two columns, else 183 mm."""
    ncols = max(1, min(ncols, n))
    nrows = math.ceil(n / ncols)
    width_mm = _width_mm(ncols, per_column=2)
    fig, axes = print_subplots(nrows, ncols, width_mm=width_mm, height_mm=14 + 42 * nrows, sharey=sharey,
                               squeeze=False)
    axes = list(axes.ravel())
    for ax in axes[n:]:
        ax.set_visible(False)
    return fig, axes[:n]


def _shared_legend(fig, axes) -> None:
    """One legend for all panels (labels de-duplicated), below the panels, inside the figure."""
    seen = {}
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(label, handle)
    if seen:
        fig.legend(list(seen.values()), list(seen.keys()), loc="outside lower center",
                   ncols=min(len(seen), 4 if fig.get_figwidth() / MM > 100 else 2))

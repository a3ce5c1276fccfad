"""Figure styles and the figure writer (fmct_lib.report.plots)."""
from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from fmct_lib.report import paper, plots  # noqa: E402


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


# ------------------------------------------------------------------------------------ save_figure
def test_save_figure_writes_four_files_that_round_trip(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    data = pd.DataFrame({"task": ["ich", "sdh"], "value": [0.91, 0.75]})
    config = {"profile": "toy", "tasks": ("ich", "sdh"), "root": Path("/x"), "n": np.int64(3),
              "auc": np.float32(0.5)}
    paths = plots.save_figure(fig, "fig_test", data, config, root=tmp_path)
    assert set(paths) == {"png", "pdf", "csv", "json"}
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert paths["pdf"].read_bytes()[:5] == b"%PDF-"
    pd.testing.assert_frame_equal(pd.read_csv(paths["csv"]), data)
    meta = json.loads(paths["json"].read_text())
    assert meta["figure"] == "fig_test"
    assert meta["config"] == {"profile": "toy", "tasks": ["ich", "sdh"], "root": "<elsewhere>/x", "n": 3, "auc": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths.values())


def test_save_figure_defaults_to_the_figures_root(tmp_path, monkeypatch):
    monkeypatch.setenv("FMCT_FIGURES", str(tmp_path / "figs"))
    paths = plots.save_figure(plt.figure(), "f", pd.DataFrame({"a": [1]}), {})
    assert paths["png"].parent == tmp_path / "figs"


def test_save_figure_says_when_it_replaces_a_figure_made_with_other_settings(tmp_path):
    import warnings
    data = pd.DataFrame({"a": [1]})
    config = {"dataset": "myhosp", "tasks": ["ich", "sah"], "protocols": ["finetune", "scratch"]}
    plots.save_figure(plt.figure(), "fig1e", data, config, root=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the same settings again (a re-run): no warning
        plots.save_figure(plt.figure(), "fig1e", data, dict(config), root=tmp_path)
    other = dict(config, tasks=["ich", "bleed"], protocols=["finetune", "linear"])
    with pytest.warns(UserWarning, match=r"figure 'fig1e': replacing the one made with other settings \(protocols: "
                                         r'\["finetune", "scratch"\] → \["finetune", "linear"\]; tasks: \["ich", '
                                         r'"sah"\] → \["ich", "bleed"\]\)'):
        plots.save_figure(plt.figure(), "fig1e", data, other, root=tmp_path)
    assert '"bleed"' in (tmp_path / "fig1e.json").read_text()  # replaced all the same: the newest run is shown


def test_save_figure_rejects_bad_input_before_writing(tmp_path):
    fig = plt.figure()
    df = pd.DataFrame({"a": [1]})
    with pytest.raises(ValueError, match="plain file stem"):
        plots.save_figure(fig, "sub/name", df, {}, root=tmp_path)
    with pytest.raises(TypeError, match="DataFrame"):
        plots.save_figure(fig, "name", [1, 2], {}, root=tmp_path)
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        plots.save_figure(fig, "name", df, {"f": object()}, root=tmp_path)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------ bars
def _bars_frame():
    return pd.DataFrame({
        "task": ["ich", "ich", "sdh", "sdh", "macro", "macro"],
        "model": ["scratch", "finetune"] * 3,
        "value": [0.60, 0.80, 0.55, 0.70, 0.575, 0.75],
        "ci_low": [0.50, 0.75, 0.45, 0.60, 0.50, 0.70],
        "ci_high": [0.70, 0.85, 0.65, 0.78, 0.65, 0.80],
    })


def test_metric_bars_heights_and_ci_whiskers_match_the_data():
    df = _bars_frame()
    fig = plots.metric_bars(df, hue_order=["scratch", "finetune"])
    ax = fig.axes[0]
    heights = [p.get_height() for p in ax.patches]
    expected = df.set_index(["model", "task"]).loc[[("scratch", t) for t in ("ich", "sdh", "macro")]
                                                   + [("finetune", t) for t in ("ich", "sdh", "macro")],
                                                   "value"]
    np.testing.assert_allclose(heights, expected.to_numpy())
    # error bars: each LineCollection segment spans ci_low..ci_high of its bar
    spans = sorted((round(seg[0][1], 6), round(seg[1][1], 6))
                   for coll in ax.collections for seg in coll.get_segments())
    assert spans == sorted(zip(df.ci_low.round(6), df.ci_high.round(6)))


def test_metric_bars_draw_the_paper_value_on_the_matching_bar_and_name_it_the_papers():
    df = _bars_frame()
    reported = paper.paper_values_for("fig1e", "nyu_langone", "auroc")
    fig = plots.metric_bars(df, hue_order=["scratch", "finetune"], paper=reported)
    ax = fig.axes[0]
    diamonds = [l for l in ax.lines if l.get_marker() == "D"]
    assert sorted(float(l.get_ydata()[0]) for l in diamonds) == [0.734, 0.852]
    finetune_macro_bar = ax.patches[3 + 2]  # finetune bars come second; macro is the third task
    x_centre = finetune_macro_bar.get_x() + finetune_macro_bar.get_width() / 2
    at_852 = [l for l in diamonds if float(l.get_ydata()[0]) == 0.852][0]
    assert float(at_852.get_xdata()[0]) == pytest.approx(x_centre)
    labels = ax.get_legend_handles_labels()[1]
    assert "paper (NYU Langone): 0.852 (finetune)" in labels


def test_metric_bars_draw_single_runs_on_their_bar():
    df = _bars_frame()
    runs = pd.DataFrame({"task": ["sdh", "sdh", "ich"], "model": ["finetune", "finetune", "scratch"],
                         "value": [0.65, 0.75, 0.58], "seed": [0, 1, 0]})
    ax = plots.metric_bars(df, hue_order=["scratch", "finetune"], points=runs).axes[0]
    dots = [c for c in ax.collections if c.get_label() == "single runs (seeds)"][0].get_offsets()
    centre = {(m, t): p.get_x() + p.get_width() / 2 for (m, t), p in
              zip([(m, t) for m in ("scratch", "finetune") for t in ("ich", "sdh", "macro")], ax.patches)}
    expected = [(centre[(m, t)], v) for t, m, v in zip(runs.task, runs.model, runs.value)]
    np.testing.assert_allclose(np.asarray(dots), expected)


def test_metric_bars_missing_columns_are_named():
    with pytest.raises(ValueError, match="value"):
        plots.metric_bars(pd.DataFrame({"task": ["a"], "model": ["b"]}))


# ------------------------------------------------------------------------------------ lines
def _fewshot_frame():
    rows = []
    for task in ("ich", "ivh"):
        for model, base in (("finetune", 0.7), ("scratch", 0.55)):
            for k in (8, 16, 32):
                v = base + 0.01 * np.log2(k)
                rows.append(dict(task=task, model=model, k=k, value=v, ci_low=v - 0.05, ci_high=v + 0.05))
    return pd.DataFrame(rows)


def test_fewshot_curves_lines_bands_and_full_data_stars():
    df = _fewshot_frame()
    full = pd.DataFrame({"task": ["ich", "ivh"], "model": ["finetune"] * 2, "value": [0.9, 0.95]})
    reported = paper.paper_values_for("fig2", "rsna", "auroc")
    fig = plots.fewshot_curves(df, full=full, paper=reported)
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["ICH", "IVH"]
    ivh = axes[1]
    line = [l for l in ivh.lines if l.get_label() == "finetune"][0]
    np.testing.assert_allclose(line.get_ydata(), df[(df.task == "ivh") & (df.model == "finetune")].value)
    star = [l for l in ivh.lines if l.get_marker() == "*"][0]
    assert float(star.get_xdata()[0]) == 64 and float(star.get_ydata()[0]) == 0.95
    assert ivh.get_xticklabels()[-1].get_text() == "all"
    # the paper's IVH 8-shot value is drawn on the IVH panel only
    assert [float(l.get_ydata()[0]) for l in ivh.lines if l.get_marker() == "D"] == [0.90]
    assert not [l for l in axes[0].lines if l.get_marker() == "D"]
    band = ivh.collections[0].get_paths()[0].vertices  # the first model's band: finetune
    ivh_finetune = df[(df.task == "ivh") & (df.model == "finetune")]
    assert band[:, 1].min() == pytest.approx(ivh_finetune.ci_low.min())
    assert band[:, 1].max() == pytest.approx(ivh_finetune.ci_high.max())


def test_band_lines_sorted_by_x_with_one_panel_per_facet():
    df = pd.DataFrame({"fraction": [100, 10, 30] * 2, "method": ["dino"] * 3 + ["mae"] * 3,
                       "value": [0.9, 0.7, 0.8, 0.8, 0.6, 0.7], "group": ["internal"] * 6})
    fig = plots.band_lines(df, x="fraction", hue="method", facet="group", logx=True)
    ax = [a for a in fig.axes if a.get_visible()][0]
    dino = [l for l in ax.lines if l.get_label() == "dino"][0]
    np.testing.assert_allclose(dino.get_xdata(), [10, 30, 100])
    np.testing.assert_allclose(dino.get_ydata(), [0.7, 0.8, 0.9])
    assert ax.get_title() == "internal"


# ------------------------------------------------------------------------------------ scatter / attention
def test_embedding_scatter_categorical_legend_and_numeric_colourbar():
    rng = np.random.default_rng(0)
    df = pd.DataFrame({"x": rng.normal(size=40), "y": rng.normal(size=40),
                       "manufacturer": ["A", "B"] * 20, "slice_thickness_mm": rng.uniform(0.5, 5, 40),
                       "ich": [1, 0, 0, 0] * 10})
    fig = plots.embedding_scatter(df, highlight="ich")
    manufacturer_ax, thickness_ax = fig.axes[:2]
    # the highlighted positives have an entry too (the legend was drawn before them, without one)
    assert [t.get_text() for t in manufacturer_ax.get_legend().get_texts()] == ["A", "B", "ich positive"]
    assert [t.get_text() for t in thickness_ax.get_legend().get_texts()] == ["ich positive"]
    assert len(fig.axes) == 3  # two panels and one colour bar
    plain = plots.embedding_scatter(df)
    assert plain.axes[1].get_legend() is None  # a colour bar alone: no empty legend
    edged = manufacturer_ax.collections[-1]
    assert len(edged.get_offsets()) == 10


def test_save_figure_data_writes_only_the_table_and_the_configuration(tmp_path):
    paths = plots.save_figure_data("made_elsewhere", pd.DataFrame({"a": [1, 2]}), {"k": 1}, root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["made_elsewhere.csv", "made_elsewhere.json"]
    assert json.loads(paths["json"].read_text())["config"] == {"k": 1}


def test_band_lines_put_macro_last_and_bound_the_axis():
    df = pd.DataFrame({"k": [2, 4] * 3, "model": ["m"] * 6, "task": ["macro", "macro", "b", "b", "a", "a"],
                       "value": [0.5, 0.6] * 3, "ci_low": [-3.0] * 6, "ci_high": [4.0] * 6})
    fig = plots.fewshot_curves(df)
    axes = [a for a in fig.axes if a.get_visible()]
    assert [a.get_title() for a in axes] == ["B", "A", "MACRO"]
    assert axes[0].get_ylim() == (0.0, 1.0)


def test_figure_configurations_record_no_absolute_paths(tmp_path, monkeypatch):
    monkeypatch.setenv("FMCT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("FMCT_ENCODERS", str(tmp_path / "released"))
    config = {"encoder": str(tmp_path / "runs" / "pretrain" / "x" / "encoder.safetensors"),
              "released": str(tmp_path / "released" / "synthetic_vicreg_f1_demo_s0" / "encoder.safetensors"),
              "nested": {"scans": [str(tmp_path / "data" / "synthetic" / "scans.csv"), "not/a/path", 3]},
              "outside": "/opt/weights/model_weights.pth", "repo": str(plots.REPO_ROOT / "figures" / "a.png")}
    paths = plots.save_figure_data("portable", pd.DataFrame({"a": [1]}), config, root=tmp_path / "figs")
    text = paths["json"].read_text()
    assert str(tmp_path) not in text and "/opt/" not in text
    assert json.loads(text)["config"] == {
        "encoder": "<runs>/pretrain/x/encoder.safetensors",
        "released": "<encoders>/synthetic_vicreg_f1_demo_s0/encoder.safetensors",
        "nested": {"scans": ["<data>/synthetic/scans.csv", "not/a/path", 3]},
        "outside": "<elsewhere>/model_weights.pth", "repo": "<repo>/figures/a.png"}
    # a file outside every root (a run_dir of its own, weights in /opt) is named by its sha256 prefix as well: two
    # runs' encoder.safetensors were both "<elsewhere>/encoder.safetensors" (an audit)
    import hashlib
    outside = tmp_path.parent / f"{tmp_path.name}_outside" / "encoder.safetensors"
    outside.parent.mkdir()
    outside.write_bytes(b"weights")
    config = plots.save_figure_data("outside", pd.DataFrame({"a": [1]}), {"encoder": str(outside)},
                                    root=tmp_path / "figs")["json"]
    expected = f"<elsewhere>/encoder.safetensors@{hashlib.sha256(b'weights').hexdigest()[:16]}"
    assert json.loads(config.read_text())["config"] == {"encoder": expected}


def test_the_committed_gallery_records_no_absolute_paths():
    """Nor a path outside the roots: every encoder the gallery used is a released one or a run, named so."""
    for path in sorted((plots.REPO_ROOT / "figures").glob("*.json")):
        strings = []

        def walk(value):
            if isinstance(value, dict):
                [walk(v) for v in value.values()]
            elif isinstance(value, list):
                [walk(v) for v in value]
            elif isinstance(value, str):
                strings.append(value)
        walk(json.loads(path.read_text()))
        assert not [s for s in strings if s.startswith(("/", "<elsewhere>"))], path.name
        for s in strings:
            if s.startswith("<encoders>/"):
                assert (plots.REPO_ROOT / "encoders" / s.removeprefix("<encoders>/")).exists(), (path.name, s)


# ------------------------------------------------------------------------------------ one colour per model
# The names the notebooks give each model, written out here rather than read from plots.MODEL_ALIASES.
SAME_MODEL = {
    "finetune": "finetune", "in-domain fine-tuned": "finetune", "pretrained": "finetune", "fine-tuned": "finetune",
    "scratch": "scratch", "in-domain scratch": "scratch", "histogram": "histogram", "in-domain histogram": "histogram",
    "linear": "linear", "attentive": "attentive", "external validation": "external validation",
    "dino": "dino", "mae": "mae", "vicreg": "vicreg", "random init": "random init",
}


def _bars(models, tasks=("ich", "sdh", "macro"), **kwargs):
    rows = [dict(task=t, model=m, value=0.5 + 0.05 * i, ci_low=0.45, ci_high=0.7)
            for i, m in enumerate(models) for t in tasks]
    return plots.metric_bars(pd.DataFrame(rows), hue_order=list(models), **kwargs)


def _drawn_colours(fig) -> dict[str, set]:
    """{label: colours} of every bar, line and star drawn in ``fig``, read back from the artists."""
    found = {}
    for ax in fig.axes:
        for container in ax.containers:
            if isinstance(container, matplotlib.container.BarContainer) and container.get_label() in SAME_MODEL:
                found.setdefault(container.get_label(), set()).update(
                    matplotlib.colors.to_hex(p.get_facecolor()) for p in container.patches)
        for line in ax.lines:
            label = line.get_label().removesuffix(", all data")
            if label in SAME_MODEL:
                colour = line.get_markerfacecolor() if line.get_marker() == "*" else line.get_color()
                found.setdefault(label, set()).add(matplotlib.colors.to_hex(colour))
    return found


def test_each_model_has_one_colour_in_every_figure_from_the_colour_blind_palette():
    fewshot = _fewshot_frame().replace({"model": {"finetune": "pretrained"}})
    fewshot = pd.concat([fewshot, fewshot[fewshot.model == "scratch"].assign(model="histogram")])
    stars = pd.DataFrame({"task": ["ich"] * 3, "model": ["pretrained", "scratch", "histogram"],
                          "value": [0.9, 0.8, 0.7]})
    scaling = pd.DataFrame({"percent": [10, 30, 100] * 3, "method": np.repeat(["dino", "mae", "vicreg"], 3),
                            "value": np.linspace(0.6, 0.9, 9)})
    figures = [
        _bars(["scratch", "finetune", "linear", "attentive", "histogram"]),                         # Fig. 1e
        _bars(["external validation", "in-domain fine-tuned", "in-domain scratch", "in-domain histogram"]),  # 1f-g
        plots.fewshot_curves(fewshot, full=stars),                                                  # Fig. 2
        plots.band_lines(scaling, x="percent", hue="method"),                                      # Fig. 4
        _bars(["dino", "mae", "vicreg", "random init"], ylabel="retrieval mAP"),                   # Fig. 3
        _bars(["fine-tuned"], tasks=("scanner: A", "scanner: B")),                                 # Supp. Fig. 11
    ]
    by_model = {}
    for fig in figures:
        for label, colours in _drawn_colours(fig).items():
            by_model.setdefault(SAME_MODEL[label], set()).update(colours)
    assert set(by_model) == set(SAME_MODEL.values())
    assert all(len(colours) == 1 for colours in by_model.values()), by_model
    colours = [c for cs in by_model.values() for c in cs]
    assert len(set(colours)) == len(colours), "two models share a colour"
    import seaborn
    assert set(colours) <= set(seaborn.color_palette("colorblind").as_hex())
    assert plots.colour_of("in-domain fine-tuned") == plots.colour_of("pretrained") == by_model["finetune"].pop()


def test_colour_of_an_unknown_model_names_the_known_ones_and_other_levels_take_unused_colours():
    with pytest.raises(KeyError, match="known models are .*finetune"):
        plots.colour_of("resnet")
    fig = _bars(["finetune", "site A", "site B"])
    bars = {c.get_label(): matplotlib.colors.to_hex(c.patches[0].get_facecolor()) for c in fig.axes[0].containers
            if isinstance(c, matplotlib.container.BarContainer)}
    assert bars["finetune"] == plots.colour_of("finetune")
    assert len(set(bars.values())) == 3 and set(bars.values()) <= set(plots.PALETTE)


# ------------------------------------------------------------------------------------ chance lines
def _chance_lines(ax):
    return [a for a in [*ax.lines, *ax.collections] if a.get_label().startswith("chance")]


def test_auroc_panels_get_a_chance_line_at_one_half_whatever_the_prevalence():
    ax = _bars(["scratch", "finetune"], prevalence={"ich": 0.1}).axes[0]
    (line,) = _chance_lines(ax)
    assert line.get_label() == "chance (AUROC 0.5)" and list(line.get_ydata()) == [0.5, 0.5]
    fig = plots.fewshot_curves(_fewshot_frame(), ylabel="macro-AUC")
    assert [[list(l.get_ydata()) for l in _chance_lines(a)] for a in fig.axes if a.get_visible()] == [[[0.5, 0.5]]] * 2


def test_ap_bars_get_each_tasks_prevalence_over_its_group_and_macro_the_mean():
    ax = _bars(["scratch", "finetune"], ylabel="AP", prevalence={"ich": 0.1, "sdh": 0.3}).axes[0]
    (segments,) = _chance_lines(ax)
    drawn = sorted((round(float(a[1]), 6), round(float(a[0]), 6), round(float(b[0]), 6))
                   for a, b in segments.get_segments())
    # groups are centred at 0 (ich), 1 (sdh), 2 (macro); each segment spans its group
    assert drawn == [(0.1, -0.45, 0.45), (0.2, 1.55, 2.45), (0.3, 0.55, 1.45)]
    assert not _chance_lines(_bars(["finetune"], ylabel="AP").axes[0])  # no prevalence given: no line


def test_ap_curves_and_band_lines_get_the_prevalence_of_their_panel():
    fig = plots.fewshot_curves(_fewshot_frame(), ylabel="AP", prevalence={"ich": 0.05, "ivh": 0.25})
    axes = [a for a in fig.axes if a.get_visible()]
    assert [list(_chance_lines(a)[0].get_ydata()) for a in axes] == [[0.05, 0.05], [0.25, 0.25]]
    df = pd.DataFrame({"percent": [10, 100] * 2, "method": ["dino"] * 4, "value": [0.2, 0.3] * 2,
                       "evaluation": ["internal"] * 2 + ["external"] * 2})
    fig = plots.band_lines(df, x="percent", hue="method", facet="evaluation", ylabel="macro-AP", prevalence=0.07)
    assert [list(_chance_lines(a)[0].get_ydata()) for a in fig.axes if a.get_visible()] == [[0.07, 0.07]] * 2
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels.count("chance (prevalence)") == 1


# ------------------------------------------------------------------------------------ print size, titles
def _every_figure(**title):
    rng = np.random.default_rng(0)
    points = pd.DataFrame({"x": rng.normal(size=30), "y": rng.normal(size=30), "manufacturer": ["A", "B", "C"] * 10,
                           "slice_thickness_mm": rng.uniform(0.5, 5, 30)})
    many_tasks = [f"task{i}" for i in range(10)] + ["macro"]
    fig, axes = plots.print_subplots(2, 1, height_mm=120)  # two panels drawn by a caller, as notebook 02 does
    for ax in axes:
        _bars(["scratch", "finetune", "linear", "attentive", "histogram"], tasks=many_tasks, ax=ax)
    axes[0].set_title(plots.figure_title(**title), loc="left")
    return {
        "metric_bars": _bars(["scratch", "finetune", "linear", "attentive", "histogram"], tasks=many_tasks, **title),
        "metric_bars on print_subplots": fig,
        "metric_bars, few": _bars(["scratch", "finetune"], **title),
        "fewshot_curves": plots.fewshot_curves(_fewshot_frame(), **title),
        "band_lines": plots.band_lines(pd.DataFrame({"percent": [10, 30, 100], "method": ["mae"] * 3,
                                                     "value": [0.6, 0.7, 0.8]}), x="percent", hue="method", **title),
        "embedding_scatter": plots.embedding_scatter(points, **title),
    }


def test_every_figure_is_a_column_wide_and_its_type_prints_at_6_pt_or_more():
    for name, fig in _every_figure(title="a title", profile="demo", training=plots.training_rule("demo")).items():
        assert round(fig.get_figwidth() * 25.4) in (89, 183), name
        assert plots.smallest_type_pt(fig) >= 6, name


def test_smallest_type_counts_the_shrinking_of_a_wide_figure_and_save_figure_warns(tmp_path):
    fig = plt.figure(figsize=(366 / 25.4, 50 / 25.4))  # twice the double column: printed at half size
    fig.text(0.0, 0.5, "left edge", fontsize=8, ha="left")
    fig.text(1.0, 0.5, "right edge", fontsize=6, ha="right")
    assert plots.smallest_type_pt(fig) == pytest.approx(3.0, rel=0.05)
    with pytest.warns(UserWarning, match=r"prints at 3\.\d pt"):
        plots.save_figure(fig, "too_wide", pd.DataFrame({"a": [1]}), {}, root=tmp_path)


def test_titles_name_the_profile_and_the_training_rule():
    from fmct_lib.config import get_profile
    demo = get_profile("demo")
    rule = plots.training_rule("demo")
    assert f"for {demo.finetune_patience} epochs" in rule and f"at most {demo.finetune_max_epochs} epochs" in rule
    for name, fig in _every_figure(title="fine-tuned vs scratch", profile="demo", training=rule).items():
        ax = fig.axes[0]
        title = (fig._suptitle.get_text() if fig._suptitle else ax.get_title(loc="left")).replace("\n", " ")
        assert title.startswith("fine-tuned vs scratch") and "profile demo" in title, name
        assert " ".join(rule.split()) in " ".join(title.split()), name


# ------------------------------------------------------------------------------------ the paper's values
def test_metric_bars_list_the_papers_other_values_in_the_legend_and_point_bounds_upwards():
    notes = paper.paper_values_for("fig3", "rsna")
    ax = _bars(["dino", "mae"], ylabel="retrieval mAP", paper_notes=notes).axes[0]
    legend = [t.get_text().replace("\n ", "") for t in ax.get_legend().get_texts()]
    assert "paper (RSNA): FM-HCT vs Google CT, retrieval mAP relative gain +2.21%" in legend
    assert "paper (RSNA): n = 10,379 scans" in legend
    # RSNA's "> 0.90" on ICH and SDH: a diamond at 0.90 with an arrow pointing up from it
    reported = paper.paper_values_for("fig1e", "rsna", "auroc")
    fig = _bars(["scratch", "finetune"], paper=reported)
    ax = fig.axes[0]
    fig.draw_without_rendering()
    arrows = [a.arrow_patch for a in ax.texts if getattr(a, "arrow_patch", None)]
    assert len([l for l in ax.lines if l.get_marker() == "D" and l.get_ydata()[0] == 0.9]) == len(arrows) == 2
    y_diamond = ax.transData.transform((0, 0.9))[1]
    for arrow in arrows:
        path = arrow.get_path()
        ys = path.vertices[path.codes != path.CLOSEPOLY, 1]
        assert ys.min() >= y_diamond - 1 and ys.max() > y_diamond + 8  # pixels at 100 dpi: 9 pt up = 12.5 px

"""The notebook collection: committed clean, one parameters cell each, and every notebook executed with
papermill on the ``toy`` profile, in order, sharing one data / cache / runs / figures root so later
notebooks reuse earlier runs (as ``make reproduce`` does on ``demo``)."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["00_data", "01_pretrain", "02_finetune", "03_transfer", "04_fewshot", "05_scaling",
            "06_embeddings", "07_attention", "08_retrieval", "09_other_encoders", "10_modelling_choices",
            "11_efficiency", "12_patch_size"]
KERNEL = "fmct"            # the kernel make setup registers for the venv; the tests run every notebook in it
NOTEBOOK_KERNEL = "python3"  # what the notebooks ask for: the Python of whatever environment runs them
# CI time, the code paths the same: the scaling study pretrains one fraction fewer than the notebook's default, and
# the cost study times one step per architecture and mode after its warm-up, not three (tests/test_efficiency.py
# measures with three)
TOY_PARAMETERS = {"05_scaling": {"fractions": [0.5, 1.0]}, "11_efficiency": {"repeats": 1}}


def test_the_collection_is_complete():
    assert [nb.stem for nb in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_clean_with_one_parameters_cell(path):
    nb = nbformat.read(path, as_version=4)
    assert nb.metadata.get("kernelspec", {}).get("name") == NOTEBOOK_KERNEL, f"{path.name}: kernel is not python3"
    tagged = [i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", [])]
    assert len(tagged) == 1, f"{path.name}: {len(tagged)} cells tagged 'parameters', expected exactly 1"
    first_code = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert tagged[0] == first_code, f"{path.name}: the parameters cell must be the first code cell"
    params = nb.cells[tagged[0]].source
    for name in ("dataset", "profile", "run_dir", "seed"):
        assert f"\n{name} =" in f"\n{params}", f"{path.name}: parameters cell lacks {name!r}"
    # papermill reads each parameter line with a regex (an "=" in a comment hides the parameter from
    # `papermill --help-notebook` and makes `-p` warn "unknown parameter")
    from papermill.inspection import inspect_notebook
    assigned = set(re.findall(r"^(\w+)\s*=", params, re.M))
    hidden = assigned - set(inspect_notebook(str(path)))
    assert not hidden, f"{path.name}: papermill cannot see the parameters {sorted(hidden)}"
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None, f"{path.name}: cell {i} has outputs"


def test_notebooks_match_their_sources():
    result = subprocess.run([sys.executable, str(REPO / "tools" / "make_notebooks.py"), "--check"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# ------------------------------------------------------------------------------------------ execution
@pytest.fixture(scope="session")
def shared_roots(session_roots):
    """One data / cache / runs / figures root for the whole session (conftest); the kernels inherit it."""
    saved = os.environ.get("MPLBACKEND")
    os.environ["MPLBACKEND"] = "Agg"
    yield session_roots
    if saved is None:
        os.environ.pop("MPLBACKEND", None)
    else:
        os.environ["MPLBACKEND"] = saved


def _require_kernel():
    from jupyter_client.kernelspec import KernelSpecManager
    if KERNEL not in KernelSpecManager().find_kernel_specs():
        pytest.fail(f"the Jupyter kernel {KERNEL!r} is not registered: run `make setup` "
                    f"(it runs `python -m ipykernel install --sys-prefix --name {KERNEL}`)", pytrace=False)


def _execute(path: Path, out: Path, **parameters) -> None:
    """Run a notebook with papermill; on failure, fail naming the notebook, the cell and the error."""
    import papermill as pm
    _require_kernel()
    try:
        pm.execute_notebook(str(path), str(out), parameters=parameters, kernel_name=KERNEL, cwd=str(REPO),
                            progress_bar=False, log_output=False)
    except pm.PapermillExecutionError as e:
        pytest.fail(f"{path.name}: cell In [{e.exec_count}] raised {e.ename}: {e.evalue}\n"
                    f"--- cell source ---\n{e.source}\n--- traceback (end) ---\n" + "\n".join(e.traceback[-6:])
                    + f"\n(executed notebook: {out})", pytrace=False)


@pytest.mark.notebook
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_on_the_toy_profile(path, shared_roots):
    out = shared_roots / "executed" / path.name
    out.parent.mkdir(exist_ok=True)
    figures = Path(os.environ["FMCT_FIGURES"])
    before = {p.name: p.stat().st_mtime_ns for p in figures.glob("*")} if figures.exists() else {}
    _execute(path, out, profile="toy", **TOY_PARAMETERS.get(path.stem, {}))
    written = {p.name for p in figures.glob("*") if before.get(p.name) != p.stat().st_mtime_ns}
    beside = {n for n in written if n.endswith(("_comparison.csv", "_runs.csv", "_arrays.npz"))}
    stems = {n.rsplit(".", 1)[0] for n in written - beside}
    assert stems, f"{path.name} wrote no figure"
    for stem in stems:  # every figure comes with its data and configuration
        assert {f"{stem}.{ext}" for ext in ("png", "pdf", "csv", "json")} <= written, stem
    for name in beside:  # a comparison table, where its models stopped and the images drawn sit beside their figure
        assert name.removesuffix("_comparison.csv").removesuffix("_runs.csv").removesuffix("_arrays.npz") in stems, name
    if path.stem == "07_attention":
        assert any(n.endswith("_arrays.npz") for n in written), written


@pytest.mark.notebook
def test_fig1e_states_where_every_model_stopped_and_writes_its_comparison(shared_roots):
    """After 02 ran (above): its conclusion names the convergence rule and where the runs stopped, and the
    comparison beside Fig. 1e carries the difference, its bootstrap CI, the permutation p and the paper's value."""
    import pandas as pd
    out = shared_roots / "executed" / "02_finetune.ipynb"
    if not out.exists():  # run alone: execute 02 first
        out.parent.mkdir(exist_ok=True)
        _execute(REPO / "notebooks" / "02_finetune.ipynb", out, profile="toy")
    executed = nbformat.read(out, as_version=4)
    conclusion = "".join(o.get("text", "") for o in executed.cells[-1].outputs)
    assert "Every model trained by one rule" in conclusion and "deep runs stopped at step" in conclusion, conclusion
    table = pd.read_csv(Path(os.environ["FMCT_FIGURES"]) / "fig1e_finetune_vs_scratch__synthetic_toy_comparison.csv")
    assert {"model_a", "model_b", "task", "metric", "a", "b", "difference", "ci_low", "ci_high", "p_value",
            "paper_a", "paper_b", "paper_relative_pct", "paper_p", "paper_p_relation"} <= set(table.columns)
    macro = table[(table.task == "macro") & (table.metric == "auroc") & (table.model_b == "scratch")].iloc[0]
    assert (macro.paper_a, macro.paper_b, macro.paper_relative_pct) == (0.852, 0.734, 16.07)
    assert (macro.paper_p, macro.paper_p_relation) == (0.001, "<")   # "P < 0.001", as printed
    assert 0 < macro.p_value <= 1 and macro.difference == pytest.approx(macro.a - macro.b)
    # where each model stopped, beside the figure: one row per protocol, task and seed, the deep ones by the rule
    runs = pd.read_csv(Path(os.environ["FMCT_FIGURES"]) / "fig1e_finetune_vs_scratch__synthetic_toy_runs.csv")
    predictions = pd.read_csv(Path(os.environ["FMCT_FIGURES"]) / "fig1e_finetune_vs_scratch__synthetic_toy.csv")
    assert len(runs) == len(runs.drop_duplicates(["protocol", "task", "seed"]))
    deep = runs[runs.protocol.isin(["finetune", "scratch", "attentive"])]
    assert len(deep) and deep["stop_reason"].str.startswith(("rule", "cap")).all() and deep["stopped_step"].gt(0).all()
    assert set(runs.protocol) == set(predictions["model"])  # every model drawn has its runs' record


@pytest.mark.notebook
def test_a_missing_dataset_stops_in_the_first_cell_with_the_ingest_command(shared_roots, tmp_path):
    import papermill as pm
    _require_kernel()
    out = tmp_path / "out.ipynb"
    with pytest.raises(pm.PapermillExecutionError) as err:
        pm.execute_notebook(str(REPO / "notebooks" / "04_fewshot.ipynb"), str(out),
                            parameters={"dataset": "rsna", "profile": "toy"}, kernel_name=KERNEL,
                            cwd=str(REPO), progress_bar=False)
    assert err.value.ename == "DatasetNotAvailable"
    assert "fmct ingest rsna --source DIR" in err.value.evalue
    # executed: the parameters cell (1), papermill's injected parameters (2), then the first cell (3)
    assert err.value.exec_count == 3
    assert "pipeline.start(dataset" in err.value.source

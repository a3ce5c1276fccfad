"""Progress that reads right in a terminal and in a saved notebook (issue 26, item 11).

Every bar the library draws comes from ``fmct_lib.progress`` (text, never an ipywidget); in a notebook run by
papermill the bar is a stream output whose last state is 100%, not a widget view that reads 0%.
"""
from __future__ import annotations

import ast
import io
import re
from pathlib import Path

import nbformat
import pytest

from _support import tiny_nifti_folder
from fmct_lib import progress

PACKAGE = Path(progress.__file__).parent
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_bar_is_text_and_redraws_every_5_s_off_a_terminal():
    log = io.StringIO()
    with progress.tqdm(total=3, desc="scans", file=log) as bar:
        assert bar.mininterval == progress.REDRAW_S_OFF_TERMINAL == 5.0
        bar.update(3)
    assert re.search(r"scans: 100%\|[█#]+\| 3/3 ", log.getvalue().split("\r")[-1]), log.getvalue()
    with progress.tqdm(total=1, file=_Terminal()) as bar:
        assert bar.mininterval == 0.1  # tqdm's own default on a terminal
    with progress.tqdm(total=1, file=io.StringIO(), mininterval=0.5) as bar:
        assert bar.mininterval == 0.5  # the caller's choice wins


def test_every_bar_of_the_library_comes_from_the_progress_module():
    importers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n == "tqdm" or n.startswith("tqdm.") for n in names):
                importers.append(str(path.relative_to(PACKAGE)))
    assert importers == ["progress.py"], f"import tqdm through fmct_lib.progress, not directly: {importers}"


@pytest.mark.notebook
def test_a_notebook_run_by_papermill_saves_text_bars_that_reach_100_percent(isolated_roots, tmp_path, monkeypatch):
    from fmct_lib.data.ingest import ingest_nifti
    from test_notebooks import REPO, _execute

    monkeypatch.setenv("MPLBACKEND", "Agg")
    labels = tiny_nifti_folder(tmp_path / "hospital", n_patients=4)
    ingest_nifti(labels.parent / "volumes", name="tinyhosp", labels=labels, mapping={"ich": "ich"}, workers=1)
    out = tmp_path / "00_data.ipynb"
    _execute(REPO / "notebooks" / "00_data.ipynb", out, dataset="tinyhosp", profile="toy")  # builds the cache

    outputs = [o for cell in nbformat.read(out, as_version=4).cells for o in cell.get("outputs", [])]
    widgets = [o for o in outputs if WIDGET_VIEW in o.get("data", {})]
    assert not widgets, f"{len(widgets)} progress bars saved as widget views (they read 0% in the saved file)"
    stderr = "".join(o["text"] for o in outputs if o.get("output_type") == "stream" and o.get("name") == "stderr")
    states = [s for s in re.split(r"[\r\n]", stderr) if s.startswith("cache tinyhosp ")]
    assert states, f"no text progress bar of the cache in the saved notebook; stderr: {stderr[:1000]!r}"
    assert re.fullmatch(r"cache tinyhosp \S+ \S+: 100%\|[█#]+\| 8/8 \[.*\]", states[-1].strip()), states

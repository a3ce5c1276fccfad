"""Write ``notebooks/NN_*.ipynb`` from their readable sources ``notebooks/src/NN_*.py``.

The sources use the "percent" cell format (as Jupytext / VS Code): a line ``# %%`` starts a code cell,
``# %% [markdown]`` a markdown cell (its lines start with ``# ``), and ``# %% tags=["parameters"]`` the
papermill parameters cell. The notebooks are written without outputs, with stable cell ids, for the
standard ``python3`` kernel; review and edit the ``.py``, then run

    python tools/make_notebooks.py            # rewrite the notebooks
    python tools/make_notebooks.py --check    # exit 1 if a notebook differs from its source (CI)
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "notebooks" / "src"
OUT = REPO / "notebooks"
# the kernel every ipykernel install provides: the Python papermill or JupyterLab runs in, so a notebook runs
# in a conda or pip environment as well as in make's .venv (make and the tests name the venv's kernel `fmct`)
KERNELSPEC = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
_MARKER = re.compile(r"^# %%(?P<kind> \[markdown\])?(?: tags=(?P<tags>\[.*\]))?\s*$")


def parse_cells(text: str, where: str = "source") -> list[nbformat.NotebookNode]:
    """Split percent-format text into nbformat cells (code and markdown, with tags)."""
    cells, kind, tags, lines = [], None, [], []

    def flush():
        if kind is None:
            if any(l.strip() for l in lines):
                raise ValueError(f"{where}: text before the first '# %%' cell marker")
            return
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", l) for l in body.splitlines())
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
        if tags:
            cell.metadata["tags"] = tags
        cells.append(cell)

    for line in text.splitlines():
        m = _MARKER.match(line)
        if m:
            flush()
            kind = "markdown" if m["kind"] else "code"
            tags = json.loads(m["tags"]) if m["tags"] else []
            lines = []
        else:
            lines.append(line)
    flush()
    for i, cell in enumerate(cells):
        cell["id"] = f"c{i:02d}"
    return cells


def build(source: Path) -> str:
    nb = nbformat.v4.new_notebook()
    nb.cells = parse_cells(source.read_text(), str(source))
    nb.metadata["kernelspec"] = KERNELSPEC
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    return nbformat.writes(nb) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report notebooks that differ; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for source in sorted(SRC.glob("[0-9][0-9]_*.py")):
        target = OUT / f"{source.stem}.ipynb"
        text = build(source)
        if target.exists() and target.read_text() == text:
            continue
        stale.append(target)
        if not args.check:
            target.write_text(text)
    if args.check and stale:
        print("notebooks out of date with notebooks/src (run python tools/make_notebooks.py):",
              *[str(p.relative_to(REPO)) for p in stale], sep="\n  ")
        return 1
    for p in stale:
        print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

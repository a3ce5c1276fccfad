"""The layering of docs/architecture.md: no module imports from a layer above its own, and no import cycle.

Every ``import`` and ``from … import`` of ``fmct_lib`` is read from the source with ``ast`` (those inside
functions too: a deferred import is still a dependency), resolved to the module it names, and checked.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "fmct_lib"

# bottom to top; a module may import from its own layer and the layers below it
LAYERS = [
    {"config", "paths", "io", "progress", "precision", "workers", "__init__"},  # foundations: roots, files, bars
    {"data"},                                # scan tables, preprocessing, cache, model inputs
    {"ssl", "evaluate"},                     # pure math: SSL losses, metrics and statistics
    {"models"},                              # encoder, heads, checkpoints
    {"train"},                               # pretraining
    {"downstream", "interpret"},             # protocols on a pretrained encoder; what it attends to
    {"report"},                              # figures, the paper's values, conclusions
    {"pipeline"},                            # the one builder of missing stages
    {"cli"},                                 # the command line
]


def _modules() -> dict[str, Path]:
    """``fmct_lib.x.y`` → file, for every module of the package."""
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = ["fmct_lib", *path.relative_to(PACKAGE).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """The ``fmct_lib`` modules that ``name`` imports (a name imported from a package resolves to the
    submodule of that name where there is one)."""
    is_package = path.name == "__init__.py"
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fmct_lib")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                target = ".".join(base[:len(base) - node.level + 1] + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not target.startswith("fmct_lib"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in MODULES else target)
    return {m for m in found if m in MODULES and m != name}


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def layer_of(module: str) -> int:
    top = module.split(".")[1] if "." in module else "__init__"
    for i, members in enumerate(LAYERS):
        if top in members:
            return i
    raise AssertionError(f"{module}: its top-level part {top!r} is in no layer of LAYERS (docs/architecture.md)")


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_from_a_layer_above_it(module):
    upward = sorted(m for m in GRAPH[module] if layer_of(m) > layer_of(module))
    assert not upward, f"{module} (layer {layer_of(module)}) imports from above: {upward}"


def test_there_is_no_import_cycle():
    state, stack, cycles = {}, [], []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(GRAPH):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" → ".join(c) for c in cycles)


def test_the_checker_sees_imports_and_layers():
    """The checker itself: it resolves relative and deferred imports, and would flag an upward one."""
    assert "fmct_lib.data.preprocess" in GRAPH["fmct_lib.data.cache"]          # from .preprocess import …
    assert "fmct_lib.data.preprocess" in GRAPH["fmct_lib.downstream.runs"]     # deferred, inside a function
    assert "fmct_lib.downstream.runs" in GRAPH["fmct_lib.downstream"]          # a package's re-exports
    assert layer_of("fmct_lib.pipeline") > layer_of("fmct_lib.downstream.runs") > layer_of("fmct_lib.data.cache")

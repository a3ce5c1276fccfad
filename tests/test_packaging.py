"""Packaging: the CLI entry point, a clean import, and set-up files that agree with each other."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _names(requirements) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        declared |= {n for n in _names(reqs) if n != "fmct"}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pip_items = [l.strip()[2:] for l in lines if l.startswith("      - ")]
    listed = {n for n in _names(pip_items) if not n.startswith(("-c", "-e"))}
    assert "-c constraints.txt" in pip_items and "-e .[all]" in pip_items
    assert listed == declared, f"only in environment.yml: {listed - declared}; only in pyproject: {declared - listed}"
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_torch_is_pinned_in_one_constraints_file():
    pins = [l for l in (ROOT / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert "torch==2.13.0" in pins
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_ci_runs_make_test_only():
    commands = [l for l in (ROOT / ".ci" / "run").read_text().splitlines()
                if l.strip() and not l.lstrip().startswith("#")]
    assert commands[-1].strip() == "make test"
    assert all(c.startswith(("set ", "cd ", "make test")) for c in commands), commands


def test_readme_starts_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first = text.index("make reproduce"), text.index("make test")
    assert max(first) < 1500, "the two set-up commands must come first in the README"


def test_package_imports_in_a_fresh_interpreter_without_heavy_modules():
    code = ("import sys, fmct_lib, fmct_lib.models, fmct_lib.config, fmct_lib.cli; "
            "print(fmct_lib.__version__); "
            "assert 'monai' not in sys.modules and 'umap' not in sys.modules, 'heavy import at top level'")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0.1.0"


def test_cli_entry_point():
    exe = Path(sys.executable).with_name("fmct")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for sub in ("synth", "ingest", "pretrain", "finetune", "info"):
        assert sub in out.stdout
    out = subprocess.run([str(exe), "info"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "paper" in out.stdout and "synthetic" in out.stdout, out.stderr

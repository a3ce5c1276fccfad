"""Packaging: the CLI entry point, a clean import, and set-up files that agree with each other."""
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CPU_INDEX = "https://download.pytorch.org/whl/cpu"


def _names(requirements) -> set[str]:
    return {re.split(r"[<>=\[ ;]", r.strip(), maxsplit=1)[0].lower() for r in requirements}


def test_environment_yml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _names(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        declared |= {n for n in _names(reqs) if n != "fmct"}
    lines = (ROOT / "environment.yml").read_text().splitlines()
    pip_items = [l.strip()[2:] for l in lines if l.startswith("      - ")]
    listed = {n for n in _names(pip_items) if not n.startswith("-")}  # not pip's options
    assert "-c constraints.txt" in pip_items and "-e .[all]" in pip_items
    assert pip_items[0] == f"--extra-index-url {CPU_INDEX}", "the conda route installs the CPU build of torch"
    assert listed == declared, f"only in environment.yml: {listed - declared}; only in pyproject: {declared - listed}"
    assert "python=3.11" in (ROOT / "environment.yml").read_text()


def test_torch_is_pinned_in_one_constraints_file():
    pins = [l for l in (ROOT / "constraints.txt").read_text().splitlines() if l and not l.startswith("#")]
    assert pins == ["torch==2.13.0"]
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_link_to_a_section_from_the_set_up_files_and_the_readme_exists():
    """constraints.txt, the Makefile, environment.yml and the README point at sections that exist."""
    links = []
    for name in ("constraints.txt", "Makefile", "environment.yml", "README.md"):
        text = (ROOT / name).read_text()
        links += [(name, f, a) for f, a in re.findall(r"(docs/[\w.]+\.md|README\.md)#([\w-]+)", text)]
        links += [(name, name, a) for a in re.findall(r"\]\(#([\w-]+)\)", text)]  # within the README
    assert ("constraints.txt", "docs/guide.md", "installing") in links
    for source, target, anchor in links:
        headings = re.findall(r"^#+ (.+)$", (ROOT / target).read_text(), re.M)
        assert anchor in {_slug(h) for h in headings}, f"{source} links to {target}#{anchor}: no such section"


def _fake_python(tmp_path: Path, installed_torch: str | None) -> tuple[Path, Path]:
    """A venv whose python logs every call, answers the torch-version query with ``installed_torch``
    (or fails: no torch) and pretends that ``pip install … torch`` installed 2.13.0+cpu. Returns (venv, log)."""
    venv, log = tmp_path / "venv", tmp_path / "calls.log"
    (venv / "bin").mkdir(parents=True)
    python = venv / "bin" / "python"
    python.write_text(f"""#!/bin/sh
echo "$*" >> {log}
case "$*" in
  *importlib.metadata*) if [ -n "{installed_torch or ''}" ]; then echo "{installed_torch}"; exit 0; fi
                        if [ -f {venv}/torch-installed ]; then echo 2.13.0+cpu; exit 0; fi; exit 1;;
  *"-m pip install"*" torch") touch {venv}/torch-installed;;
esac
exit 0
""")
    python.chmod(0o755)
    return venv, log


def _make_setup(venv: Path, *args: str) -> list[str]:
    out = subprocess.run(["make", "-C", str(ROOT), "setup", f"VENV={venv}", *args], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    return [line for line in (venv.parent / "calls.log").read_text().splitlines() if line.startswith("-m pip")]


def test_make_keeps_a_torch_the_venv_already_has(tmp_path):
    """A user's CUDA torch in .venv: make installs nothing named torch and pins the one it found."""
    venv, _ = _fake_python(tmp_path, "2.5.1+cu121")
    pip = _make_setup(venv)
    assert not [c for c in pip if c.endswith(" torch") or "constraints.txt" in c], pip
    assert pip[-1] == f"-m pip install --quiet -c {venv}/torch-kept.txt -e .[all]"
    assert (venv / "torch-kept.txt").read_text() == "torch==2.5.1+cu121\n"


def test_make_installs_the_cpu_build_into_a_venv_without_torch(tmp_path):
    venv, _ = _fake_python(tmp_path, None)
    pip = _make_setup(venv)
    assert f"-m pip install --quiet --no-deps -c constraints.txt --index-url {CPU_INDEX} torch" in pip, pip
    assert (venv / "torch-kept.txt").read_text() == "torch==2.13.0+cpu\n"
    venv, _ = _fake_python(tmp_path / "mirror", None)
    assert "-m pip install --quiet --no-deps -c constraints.txt torch" in _make_setup(venv, "TORCH_INDEX=")


def test_make_reproduce_writes_the_gallery_on_the_demo_profile_only_and_shows_the_bars():
    def dry_run(*args):
        out = subprocess.run(["make", "-n", "-C", str(ROOT), "reproduce", *args], capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        return out.stdout
    demo, toy = dry_run(), dry_run("PROFILE=toy")
    assert f"FMCT_FIGURES=${{FMCT_FIGURES:-{ROOT}/figures}}" in demo and "FMCT_FIGURES" not in toy
    assert "--stderr-file -" in demo and "--no-progress-bar" in demo


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
    # a reader that stops early (`fmct info | head -1`): no BrokenPipeError traceback
    reader = subprocess.Popen([str(exe), "info"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.readline()
    reader.stdout.close()
    err = reader.stderr.read().decode()
    assert reader.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_outside_a_checkout_the_encoders_root_is_a_per_user_folder(monkeypatch, tmp_path):
    """An installed package has no committed encoders/: the root is a per-user folder (it was site-packages'
    'encoders', where a release was then written and left behind by pip uninstall)."""
    from fmct_lib import paths
    monkeypatch.delenv("FMCT_ENCODERS", raising=False)
    monkeypatch.setattr(paths, "REPO_ROOT", tmp_path / "site-packages")
    monkeypatch.setattr(paths.platformdirs, "user_data_path", lambda app: tmp_path / "share" / app)
    assert not paths.in_checkout()
    assert paths.encoders_root() == tmp_path / "share/fmct/encoders"
    assert paths.roots()["encoders"] == (tmp_path / "share/fmct/encoders", "per-user default")
    monkeypatch.setenv("FMCT_ENCODERS", str(tmp_path / "clone/encoders"))
    assert paths.roots()["encoders"] == (tmp_path / "clone/encoders", "$FMCT_ENCODERS")


def test_version_and_the_module_entry_point_that_torchrun_uses():
    out = subprocess.run([sys.executable, "-m", "fmct_lib.cli", "--version"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "fmct 0.1.0", out.stderr


def _subcommand_parsers():
    """(name, the ``fmct`` parser with that subcommand loaded, the subcommand's own parser) for each subcommand."""
    from fmct_lib.cli import SUBCOMMANDS, build_parser
    for name in SUBCOMMANDS:
        parser = build_parser(load=name)
        yield name, parser, next(a for a in parser._actions if a.dest == "command").choices[name]


def test_every_subcommand_has_the_same_defaults():
    """``--profile`` is demo and ``--dataset`` synthetic wherever a subcommand takes them."""
    seen = set()
    for name, _, sub in _subcommand_parsers():
        defaults = {a.dest: a.default for a in sub._actions}
        for option, value in (("profile", "demo"), ("dataset", "synthetic"), ("preset", "paper")):
            if option in defaults:
                seen.add(option)
                assert defaults[option] == value, f"fmct {name} --{option} defaults to {defaults[option]!r}"
    assert seen == {"profile", "dataset", "preset"}


def test_every_subcommand_takes_a_patch_variant_profile_and_refuses_an_unknown_one(capsys):
    """``--profile demo-p11`` (Supp. Fig. 2's patch variant, ``config.patch_variant``) is a profile everywhere."""
    taking = 0
    for name, parser, sub in _subcommand_parsers():
        if not any(a.dest == "profile" for a in sub._actions):
            continue
        taking += 1
        required = [a.option_strings[0] for a in sub._actions if a.required and a.option_strings]
        fill = [x for option in required for x in (option, "x")]
        assert parser.parse_args([name, "--profile", "demo-p11", *fill]).profile == "demo-p11"
        with pytest.raises(SystemExit):
            parser.parse_args([name, "--profile", "demo-p", *fill])
        assert "unknown profile 'demo-p'" in capsys.readouterr().err
    assert taking >= 5


def test_readme_is_short_and_shows_papermill_and_every_notebook_parameter():
    import ast
    text = (ROOT / "README.md").read_text()
    assert len(text.encode()) <= 8192, f"README.md is {len(text.encode())} bytes (at most 8 KB)"
    assert "papermill notebooks/" in text
    common = next(line for line in text.splitlines() if line.startswith("Every notebook takes"))
    for source in sorted((ROOT / "notebooks" / "src").glob("[0-9][0-9]_*.py")):
        cell = source.read_text().split('# %% tags=["parameters"]', 1)[1].split("# %%", 1)[0]
        names = {t.id for node in ast.parse(cell).body if isinstance(node, ast.Assign) for t in node.targets}
        row = next(line for line in text.splitlines() if line.startswith(f"| {source.stem} |"))
        missing = sorted(n for n in names if f"`{n}`" not in row and f"`{n}`" not in common)
        assert not missing, f"{source.stem}: parameters not in its row of the README's table: {missing}"


def test_package_data_ships_the_papers_values():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    from fmct_lib.report.paper import PAPER_VALUES_PATH
    package = ".".join(PAPER_VALUES_PATH.parent.relative_to(ROOT).parts)
    assert any(PAPER_VALUES_PATH.match(pattern) for pattern in config[package])

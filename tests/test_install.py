"""A regular install works outside the checkout (issue 26, item 2).

The wheel is built as ``pip wheel`` builds it, installed into a fresh venv, and used from an empty working
directory with no ``FMCT_*`` variable: ``fmct info`` runs, the roots are per-user folders (never the working
directory, never the checkout), a user's NIfTI dataset is ingested and registered beside its data, and a
notebook runs on it with papermill in that venv's ``python3`` kernel. Offline: the new venv sees this
environment's dependencies through a ``.pth`` file, and the wheel is installed with ``--no-deps --no-index``.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import nbformat
import pytest

from _support import tiny_nifti_folder

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ["pyproject.toml", "README.md", "LICENSE", "data_manifest.csv", "fmct_lib"]
TIMEOUT_S = 300


def _run(cmd, **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=TIMEOUT_S, **kwargs)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _files(folder: Path) -> dict[str, float]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")} if folder.exists() else {}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built from a copy of the sources (an in-tree build would leave build/ in the checkout)."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, src / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(ROOT / name, src / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", base / "dist", src])
    (built,) = (base / "dist").glob("fmct-*.whl")
    return built


def test_the_wheel_ships_the_dataset_registry_and_the_papers_values(wheel):
    with zipfile.ZipFile(wheel) as z:
        assert z.read("fmct_lib/data/data_manifest.csv") == (ROOT / "data_manifest.csv").read_bytes()
        assert z.read("fmct_lib/report/paper_values.csv") == (ROOT / "fmct_lib/report/paper_values.csv").read_bytes()


@pytest.mark.slow
def test_an_installed_wheel_runs_fmct_info_ingest_and_a_notebook_in_per_user_folders(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python, fmct = env_dir / "bin" / "python", env_dir / "bin" / "fmct"
    purelib = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (purelib / "test_environment_dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", wheel])

    import matplotlib
    home, elsewhere = tmp_path / "home", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMCT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(XDG_DATA_HOME=str(home / "share"), XDG_CACHE_HOME=str(home / "cache"), PYTHONNOUSERSITE="1",
               JUPYTER_DATA_DIR=str(home / "jupyter"), MPLCONFIGDIR=matplotlib.get_cachedir(), MPLBACKEND="Agg",
               PATH=f"{env_dir / 'bin'}{os.pathsep}{os.environ['PATH']}")
    data, runs, cache = home / "share/fmct/data", home / "share/fmct/runs", home / "cache/fmct/preprocessed"
    checkout_before = {d: _files(ROOT / d) for d in ("figures", "data")}

    where = _run([python, "-c", "import fmct_lib; print(fmct_lib.__file__)"], env=env, cwd=elsewhere).stdout
    assert Path(where.strip()).is_relative_to(purelib), f"fmct_lib imported from {where}, not the installed wheel"
    info = _run([fmct, "info"], env=env, cwd=elsewhere).stdout
    assert f"data root     {data}  (per-user default)" in info, info
    assert f"cache root    {cache}  (per-user default)" in info and f"figures root  {runs / 'figures'}" in info, info
    assert f"registry      {purelib / 'fmct_lib/data/data_manifest.csv'} + {data / 'datasets.csv'}" in info, info
    # the released encoders ship with the repository, not the wheel: a per-user folder, never site-packages
    assert f"encoders root {home / 'share/fmct/encoders'}  (per-user default)" in info, info
    assert f"atlas root    {home / 'cache/fmct'}  (per-user cache)" in info, info
    assert "synthetic" in info and "rsna" in info

    labels = tiny_nifti_folder(tmp_path / "hospital", n_patients=4)
    _run([fmct, "ingest", "nifti", "--name", "tinyhosp", "--source", labels.parent / "volumes", "--labels", labels,
          "--map", "ich=ich", "--workers", "1"], env=env, cwd=elsewhere)
    assert (data / "tinyhosp" / "scans.csv").exists()
    assert "tinyhosp" in (data / "datasets.csv").read_text()
    assert (purelib / "fmct_lib/data/data_manifest.csv").read_bytes() == (ROOT / "data_manifest.csv").read_bytes()
    assert [line for line in _run([fmct, "info"], env=env, cwd=elsewhere).stdout.splitlines()
            if line.split()[:1] == ["tinyhosp"]] == ["  tinyhosp         available"]

    out = tmp_path / "00_data.ipynb"
    _run([python, "-m", "papermill", "--no-progress-bar", "-k", "python3", "--cwd", elsewhere,
          ROOT / "notebooks" / "00_data.ipynb", out, "-p", "dataset", "tinyhosp", "-p", "profile", "toy"],
         env=env, cwd=elsewhere)
    outputs = [o for c in nbformat.read(out, as_version=4).cells for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = sorted(p.name for p in (runs / "figures").glob("*__tinyhosp_toy.*"))
    stems = {name.rsplit(".", 1)[0] for name in figures}
    assert stems and figures == sorted(f"{s}.{ext}" for s in stems for ext in ("csv", "json", "pdf", "png")), figures
    assert len(list(cache.glob("tinyhosp/*/*.npy"))) == 8
    assert not any(elsewhere.iterdir()), "an installed fmct wrote into the working directory"
    assert {d: _files(ROOT / d) for d in ("figures", "data")} == checkout_before, "the installed fmct wrote into the checkout"

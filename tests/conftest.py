"""Fixtures shared across the suite.

Every test session runs against its own data, cache, runs and figures roots and its own copy of the
manifest, so no test ever writes into the checkout's ``data/``, ``cache/``, ``runs/``, ``figures/`` or
the committed ``data_manifest.csv``.
"""
import os
import shutil
from types import SimpleNamespace

import pytest
import torch

from fmct_lib.paths import REPO_ROOT

ROOT_VARS = {"FMCT_DATA": "data", "FMCT_CACHE": "cache", "FMCT_RUNS": "runs", "FMCT_FIGURES": "figures"}
# The files that take longest (each runs whole on one worker: `--dist loadfile`, Makefile), started
# first so that neither of make test's two workers is left with one of them at the end.
SLOWEST_FIRST = ["test_notebooks_datasets.py", "test_notebooks.py", "test_provenance.py", "test_viewer_browser.py",
                 "test_install.py", "test_downstream.py"]


def pytest_configure(config):
    """Under pytest-xdist (make test runs two workers on CI's two cores) each worker, and every notebook kernel
    or subprocess it starts, computes on one thread: two workers of two threads each would contend."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the order within a file is kept


@pytest.fixture(scope="session", autouse=True)
def session_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("fmct_roots")
    saved = {k: os.environ.get(k) for k in [*ROOT_VARS, "FMCT_MANIFEST", "FMCT_WORKERS"]}
    for var, sub in ROOT_VARS.items():
        os.environ[var] = str(base / sub)
    shutil.copy(REPO_ROOT / "data_manifest.csv", base / "data_manifest.csv")
    os.environ["FMCT_MANIFEST"] = str(base / "data_manifest.csv")
    os.environ["FMCT_WORKERS"] = "1"  # sweeps in this process (test_downstream checks the worker processes)
    yield base
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture()
def isolated_roots(tmp_path, monkeypatch):
    """Fresh data/cache/runs/figures roots and a fresh manifest copy for one test."""
    for var, sub in ROOT_VARS.items():
        monkeypatch.setenv(var, str(tmp_path / sub))
    manifest = tmp_path / "data_manifest.csv"
    shutil.copy(REPO_ROOT / "data_manifest.csv", manifest)
    monkeypatch.setenv("FMCT_MANIFEST", str(manifest))
    monkeypatch.delenv("FMCT_PSEUDONYM_KEY", raising=False)
    return SimpleNamespace(data=tmp_path / "data", manifest=manifest, cache=tmp_path / "cache",
                           runs=tmp_path / "runs", figures=tmp_path / "figures")


@pytest.fixture()
def one_thread():
    """Single-threaded torch, for bitwise-reproducible CPU numerics and fair sharing of CI's two cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)

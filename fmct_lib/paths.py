"""Where things live. Every root can be moved with an environment variable.

- data root ``$FMCT_DATA`` (default ``data/``): one folder per dataset with its ``scans.csv``.
- cache root ``$FMCT_CACHE`` (default ``cache/``): preprocessed volumes, one folder per spec hash.
- runs root ``$FMCT_RUNS`` (default ``runs/``): pretraining and downstream run directories.
- figures root ``$FMCT_FIGURES`` (default ``figures/``).
- manifest ``$FMCT_MANIFEST`` (default: ``data_manifest.csv`` at the repository root).

Defaults are relative to the repository root when fmct runs from a source checkout (so a notebook
opened from ``notebooks/`` and ``make reproduce`` see the same folders), else to the working directory.
"""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]


_BASE = REPO_ROOT if (REPO_ROOT / "pyproject.toml").exists() else Path(".")


class StageMissing(FileNotFoundError):
    """A stage of the pipeline (dataset, cache, pretrained encoder, trained classifier) has not been built.

    The message names the command that builds it; ``fmct_lib.pipeline`` is the one place that builds stages."""


def _root(var: str, default: str) -> Path:
    env = os.environ.get(var)
    return Path(env).expanduser() if env else _BASE / default


def data_root() -> Path:
    return _root("FMCT_DATA", "data")


def cache_root() -> Path:
    return _root("FMCT_CACHE", "cache")


def runs_root() -> Path:
    return _root("FMCT_RUNS", "runs")


def figures_root() -> Path:
    return _root("FMCT_FIGURES", "figures")


def manifest_path() -> Path:
    env = os.environ.get("FMCT_MANIFEST")
    return Path(env).expanduser() if env else REPO_ROOT / "data_manifest.csv"

"""Where things live. Every root can be moved with an environment variable.

- data root ``$FMCT_DATA``: one folder per dataset with its ``scans.csv``, and ``datasets.csv``, the registry
  of the datasets ingested here (``fmct_lib.data.manifest``).
- cache root ``$FMCT_CACHE``: preprocessed volumes, one folder per spec hash.
- runs root ``$FMCT_RUNS``: pretraining and downstream run directories.
- figures root ``$FMCT_FIGURES`` (default ``<runs root>/figures``). The checkout's committed gallery,
  ``figures/``, is written only where ``$FMCT_FIGURES`` names it (``make reproduce`` on the demo profile),
  so a run on other data never adds to it.
- released encoders ``$FMCT_ENCODERS`` (default: the checkout's committed ``encoders/``; an installed package,
  which does not ship them, a per-user ``encoders/``; ``fmct_lib.train.release``).
- the synthetic cohort's atlas ``$FMCT_CACHE_HOME`` (default: the per-user cache folder; ``atlas_root``).
- shipped dataset registry ``$FMCT_MANIFEST`` (default: ``data_manifest.csv``, package data).

Without the variable, a root is the checkout's ``data/``, ``cache/`` or ``runs/`` (ignored by git) when fmct
runs from a source checkout (a clone, or ``pip install -e``), so a notebook opened from ``notebooks/`` and
``make reproduce`` see the same folders. An installed package has no checkout: its roots are per-user folders
(``platformdirs``: on Linux ``~/.local/share/fmct/{data,runs}`` and ``~/.cache/fmct/preprocessed``), never the
working directory. ``fmct info`` prints each root and where it came from (:func:`roots`).
"""
from __future__ import annotations

import os
from pathlib import Path

import platformdirs

REPO_ROOT = Path(__file__).resolve().parents[1]
# The dataset registry that ships with the package (in a checkout a link to the top-level data_manifest.csv).
SHIPPED_MANIFEST = (Path(__file__).parent / "data" / "data_manifest.csv").resolve()


def in_checkout() -> bool:
    """True when fmct runs from a source checkout (its ``pyproject.toml`` and ``data_manifest.csv`` beside
    ``fmct_lib/``), False for an installed package."""
    return (REPO_ROOT / "pyproject.toml").is_file() and (REPO_ROOT / "data_manifest.csv").is_file()


class StageMissing(FileNotFoundError):
    """A stage of the pipeline (dataset, cache, pretrained encoder, trained classifier) has not been built.

    The message names the command that builds it; ``fmct_lib.pipeline`` is the one place that builds stages."""


def _default(name: str) -> Path:
    """The root ``name`` (data, cache, runs) without its variable: the checkout's folder, else a per-user one."""
    if in_checkout():
        return REPO_ROOT / name
    if name == "cache":
        return platformdirs.user_cache_path("fmct") / "preprocessed"
    return platformdirs.user_data_path("fmct") / name


def _root(var: str, name: str) -> Path:
    env = os.environ.get(var)
    return Path(env).expanduser() if env else _default(name)


def data_root() -> Path:
    return _root("FMCT_DATA", "data")


def cache_root() -> Path:
    return _root("FMCT_CACHE", "cache")


def runs_root() -> Path:
    return _root("FMCT_RUNS", "runs")


def figures_root(runs: Path | None = None) -> Path:
    """``$FMCT_FIGURES``, else ``<runs>/figures``: ``runs`` is a study's runs root (``pipeline.start(run_dir=)``),
    default ``runs_root()``."""
    env = os.environ.get("FMCT_FIGURES")
    return Path(env).expanduser() if env else (runs or runs_root()) / "figures"


def encoders_root() -> Path:
    """The released encoders: ``$FMCT_ENCODERS``, else the checkout's committed ``encoders/``, else (an installed
    package, which does not ship them) a per-user folder, never the package's own install folder."""
    env = os.environ.get("FMCT_ENCODERS")
    if env:
        return Path(env).expanduser()
    return REPO_ROOT / "encoders" if in_checkout() else platformdirs.user_data_path("fmct") / "encoders"


def atlas_root() -> Path:
    """Where the synthetic cohort's anatomy, derived once from the MNI152 template, is kept: ``$FMCT_CACHE_HOME``,
    else the per-user cache folder (shared by every checkout and install; a few MB)."""
    env = os.environ.get("FMCT_CACHE_HOME")
    return Path(env).expanduser() if env else platformdirs.user_cache_path("fmct")


def manifest_path() -> Path:
    """The shipped dataset registry, or ``$FMCT_MANIFEST`` (which then is the only registry)."""
    env = os.environ.get("FMCT_MANIFEST")
    return Path(env).expanduser() if env else SHIPPED_MANIFEST


def roots() -> dict[str, tuple[Path, str]]:
    """Each root (data, cache, runs, figures, encoders, atlas) with where it came from: its variable, the checkout, or the
    per-user default. ``fmct info`` prints these."""
    default = "checkout" if in_checkout() else "per-user default"
    out = {}
    for name, var, where in [("data", "FMCT_DATA", data_root), ("cache", "FMCT_CACHE", cache_root),
                             ("runs", "FMCT_RUNS", runs_root), ("figures", "FMCT_FIGURES", figures_root),
                             ("encoders", "FMCT_ENCODERS", encoders_root),
                             ("atlas", "FMCT_CACHE_HOME", atlas_root)]:
        how = f"${var}" if os.environ.get(var) else {"figures": "under the runs root",
                                                     "atlas": "per-user cache"}.get(name, default)
        out[name] = (where(), how)
    return out

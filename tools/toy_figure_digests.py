"""Run every notebook on the ``toy`` profile in a checkout and print a digest of each figure file.

A refactoring that must not change any number is checked by running this on the commit before it and the
commit after it and comparing the two outputs (``diff``): every ``.png``, ``.pdf`` and ``.csv`` must be
byte-identical (but for the wall-clock columns of a ``.csv``: ``throughput``, scans per second), and every
``.json`` identical after dropping its write time and replacing the run's temporary roots by their names::

    git worktree add /tmp/before <old commit>
    python tools/toy_figure_digests.py /tmp/before --out before.json
    python tools/toy_figure_digests.py .          --out after.json
    diff before.json after.json

The notebooks run in order on fresh data / cache / runs / figures roots (as ``tests/test_notebooks.py``
does), with ``SOURCE_DATE_EPOCH`` fixed so matplotlib writes reproducible PDFs, and one torch thread so the
CPU arithmetic is the same from run to run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

from fmct_lib.cli import report_errors

TOY_PARAMETERS = {"05_scaling": {"fractions": [0.5, 1.0]}}  # as tests/test_notebooks.py
CLOCK_COLUMNS = ("throughput",)  # measured in seconds of this machine: differ from run to run by nature


def json_digest(path: Path, roots: dict[str, Path]) -> str:
    """A JSON figure configuration without its write time and with the temporary roots named."""
    text = path.read_text()
    for name, root in roots.items():
        text = text.replace(str(root), f"<{name}>")
    meta = json.loads(text)
    meta.pop("written_utc", None)
    return hashlib.sha256(json.dumps(meta, sort_keys=True).encode()).hexdigest()


def csv_digest(path: Path) -> str:
    """A figure's data without its wall-clock columns."""
    import pandas as pd
    table = pd.read_csv(path)
    table = table.drop(columns=[c for c in CLOCK_COLUMNS if c in table.columns])
    return hashlib.sha256(table.to_csv(index=False).encode()).hexdigest()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="the repository to run (its notebooks/ and fmct_lib/)")
    parser.add_argument("--out", type=Path, required=True, help="write the digests here (JSON)")
    parser.add_argument("--work", type=Path, default=None, help="roots folder (default: a new temporary one)")
    parser.add_argument("--only", nargs="*", default=None, help="notebook stems to run (default: all)")
    parser.add_argument("--hash-only", action="store_true", help="run nothing: digest the figures under --work")
    args = parser.parse_args(argv)

    import papermill as pm
    checkout = args.checkout.resolve()
    work = (args.work or Path(tempfile.mkdtemp(prefix="fmct_digests_"))).resolve()
    roots = {name: work / name for name in ("data", "cache", "runs", "figures")}
    env = {"FMCT_DATA": roots["data"], "FMCT_CACHE": roots["cache"], "FMCT_RUNS": roots["runs"],
           "FMCT_FIGURES": roots["figures"], "FMCT_MANIFEST": work / "data_manifest.csv"}
    work.mkdir(parents=True, exist_ok=True)
    if not env["FMCT_MANIFEST"].exists():
        env["FMCT_MANIFEST"].write_bytes((checkout / "data_manifest.csv").read_bytes())
    os.environ.update({k: str(v) for k, v in env.items()})
    os.environ.update({"SOURCE_DATE_EPOCH": "0", "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1",
                       "PYTHONPATH": str(checkout) + os.pathsep + os.environ.get("PYTHONPATH", "")})
    notebooks = sorted((checkout / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        unknown = sorted(set(args.only) - {nb.stem for nb in notebooks})
        if unknown:  # a typo ran nothing, and two empty digests compared equal
            parser.error(f"--only: no notebook {', '.join(unknown)}; they are {', '.join(nb.stem for nb in notebooks)}")
        notebooks = [nb for nb in notebooks if nb.stem in args.only]
    timings = {}
    for nb in [] if args.hash_only else notebooks:
        t0 = time.time()
        print(f"== {nb.stem}", flush=True)
        out = work / "executed" / nb.name
        out.parent.mkdir(exist_ok=True)
        pm.execute_notebook(str(nb), str(out), parameters={"profile": "toy", **TOY_PARAMETERS.get(nb.stem, {})},
                            kernel_name="fmct", cwd=str(checkout), progress_bar=False)
        timings[nb.stem] = round(time.time() - t0, 1)
    digests = {}
    for path in sorted(roots["figures"].glob("*")):
        if path.suffix == ".json":
            digests[path.name] = json_digest(path, roots)
        elif path.suffix == ".csv":
            digests[path.name] = csv_digest(path)
        else:
            digests[path.name] = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digests:
        parser.error(f"no figures under {roots['figures']} to digest (--hash-only needs the --work of an earlier run)")
    args.out.write_text(json.dumps({"figures": digests, "seconds": timings}, indent=1, sort_keys=True) + "\n")
    print(f"{len(digests)} figure files -> {args.out} (roots under {work})")
    return 0


if __name__ == "__main__":
    sys.exit(report_errors("tools/toy_figure_digests.py", main))

"""Build and release every encoder the notebooks start from (``make pretrain``).

    python tools/release_encoders.py [--profile demo] [--methods dino,mae,vicreg] [--fractions 1,0.3,0.1]
        [--seed 0] [--dest encoders/]

For each method and pretraining fraction (notebook 05's: 1.0, 0.3, 0.1; seed 0), and for the coarser-patch
encoder that notebook 12 compares (the profile's method on all the pool, ``config.patch_variant``: demo-p11,
paper-p16), the synthetic cohort's encoder is pretrained with the library (``pipeline.ensure_pretrained(afresh=True)``: the run under
``<runs>/pretrain/`` resumes where it stopped and is reused when finished), then released with
``train.release.release_run`` into ``$FMCT_ENCODERS`` (default ``encoders/``), and ``MODEL_CARD.md`` is
written from the releases. Interrupt it at any time and run it again: finished runs are reused, an
interrupted one continues from its last checkpoint, and a release already holding a run's weights is kept.
Run it on the machine you want the model card to name (it records this machine).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from fmct_lib import pipeline
from fmct_lib.cli import report_errors
from fmct_lib.config import get_profile, patch_variant
from fmct_lib.paths import figures_root
from fmct_lib.report.naming import figure_name
from fmct_lib.train.methods import get_method
from fmct_lib.train.release import (RELEASE_FILE, ReleaseCorrupt, encoders_root, final_signal, release_name,
                                    release_run, sha256_of, teacher_left_uniform, verify_release, write_model_card)

DATASET = "synthetic"
METHODS = ("dino", "mae", "vicreg")
FRACTIONS = (1.0, 0.3, 0.1)  # notebooks/src/05_scaling.py
REPO = Path(__file__).resolve().parents[1]


def _is_released(run_dir: Path, folder: Path) -> bool:
    """Whether ``folder`` already holds a verified release of the weights in ``run_dir``."""
    if not (folder / RELEASE_FILE).exists():
        return False
    try:
        return verify_release(folder)["sha256"] == sha256_of(run_dir / "encoder.safetensors")
    except ReleaseCorrupt:
        return False


def _macro(path: Path, **where) -> pd.Series | None:
    """The macro-AUROC (mean over subtypes for retrieval) row of a comparison CSV matching ``where``, or None."""
    if not path.exists():
        return None
    table = pd.read_csv(path)
    rows = table[table.get("task", table.get("subtype")).isin(["macro", "mean"])]
    rows = rows[rows["metric"].isin(["auroc", "map"])]
    for column, value in where.items():
        rows = rows[rows[column].astype(str) == str(value)]  # K is "all" beside 32 and 128
    return rows.iloc[0] if len(rows) else None


def issue_24_targets(dest: Path, profile, figures: Path) -> pd.DataFrame:
    """Issue 24's targets for the demo's encoders, from what the notebooks measured (the gallery's comparison
    CSVs), `tools/probe_encoders.py` (docs/measurements/) and each DINO release's pretraining log."""
    rows = []
    uniform = float(np.log(profile.dino_out_dim))
    dino = dest / release_name(DATASET, "dino", 1.0, profile, 0)
    h, kl = final_signal(dino, "teacher_entropy"), final_signal(dino, "kl_to_uniform")
    if h is not None:
        rows.append({"target": "DINO's teacher leaves the uniform output, not for one prototype (entropy; mean "
                               "output's KL to uniform; last 10% of steps)",
                     "ours": f"{h:.3f} nats; KL {kl:.3f}", "against": f"uniform {uniform:.3f}; KL < {uniform / 2:.3f}",
                     "p_value": np.nan, "met": teacher_left_uniform(h, kl, profile.dino_out_dim)})
    method = profile.pretrain_method
    probes = REPO / "docs" / "measurements" / f"probe_{profile.name}_comparison.csv"  # tools/probe_encoders.py
    probe = _macro(probes, model_a=method, model_b="random init")
    if probe is not None:
        rows.append({"target": f"frozen linear probe: {method} above the random encoder, p < 0.01",
                     "ours": f"{probe.a:.3f}", "against": f"{probe.b:.3f}", "p_value": probe.p_value,
                     "met": probe.a > probe.b and probe.p_value < 0.01})
    histogram = _macro(probes, model_a=method, model_b="histogram")
    if histogram is not None:
        rows.append({"target": "frozen linear probe level with (p ≥ 0.05) or above the HU-histogram reference",
                     "ours": f"{histogram.a:.3f}", "against": f"histogram {histogram.b:.3f}", "p_value": histogram.p_value,
                     "met": histogram.a >= histogram.b or histogram.p_value >= 0.05})
    for k in profile.fewshot_shots:
        few = _macro(figures / f"{figure_name('fig2_fewshot_auroc', DATASET, profile)}_comparison.csv",
                     model_a="pretrained", model_b="scratch", k=k)
        if few is not None:
            rows.append({"target": f"few-shot K = {k}: pretrained above scratch, p < 0.05", "ours": f"{few.a:.3f}",
                         "against": f"scratch {few.b:.3f}", "p_value": few.p_value,
                         "met": few.a > few.b and few.p_value < 0.05})
    retrieval = _macro(figures / f"{figure_name('fig3_retrieval', DATASET, profile)}_comparison.csv",
                       model_a=method, model_b="random init")
    if retrieval is not None:
        rows.append({"target": f"retrieval mAP: {method} above the random encoder, p < 0.01 (paper's protocol)",
                     "ours": f"{retrieval.a:.4f}", "against": f"{retrieval.b:.4f}", "p_value": retrieval.p_value,
                     "met": retrieval.a > retrieval.b and retrieval.p_value < 0.01})
    scaling = _macro(figures / f"{figure_name('fig4_scaling_auroc', DATASET, profile)}_comparison.csv",
                     model_a=f"{method} 100%", model_b=f"{method} 10%")
    if scaling is not None:
        rows.append({"target": f"more pretraining data: {method} at 100% above 10% of the pool",
                     "ours": f"{scaling.a:.3f}", "against": f"{scaling.b:.3f}", "p_value": scaling.p_value,
                     "met": scaling.a > scaling.b})
    return pd.DataFrame(rows, columns=["target", "ours", "against", "p_value", "met"])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--profile", default="demo")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated (default: %(default)s)")
    ap.add_argument("--fractions", default=",".join(f"{f:g}" for f in FRACTIONS),
                    help="comma-separated pretraining fractions (default: %(default)s)")
    ap.add_argument("--no-patch-variant", action="store_true",
                    help="leave out notebook 12's coarser-patch encoder (released by default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dest", type=Path, default=None, help="release root (default: $FMCT_ENCODERS or encoders/)")
    args = ap.parse_args(argv)
    profile = get_profile(args.profile)
    dest = args.dest or encoders_root()
    if dest.resolve() == (REPO / "encoders").resolve() and profile.name != "demo":
        ap.error(f"{dest} holds the demo profile's committed releases and model card; release the {profile.name!r} "
                 "encoders elsewhere (--dest, or $FMCT_ENCODERS; `make pretrain` does for other profiles)")
    methods = args.methods.split(",")
    try:  # before anything is built (the cohort takes minutes)
        for method in methods:
            get_method(method)
        fractions = [pipeline.fraction("--fractions", float(f)) for f in args.fractions.split(",")]
    except ValueError as e:
        ap.error(str(e))
    jobs = [(m, f, profile) for m in methods for f in fractions]
    if not args.no_patch_variant:  # 12_patch_size's coarser encoder, by default pretrained there otherwise
        jobs.append((profile.pretrain_method, 1.0, patch_variant(profile)))
    pipeline.ensure_dataset(DATASET, profile)
    start = time.time()
    for i, (method, fraction, p) in enumerate(jobs, 1):
        name = release_name(DATASET, method, fraction, p, args.seed)
        print(f"== [{i}/{len(jobs)}] {name}: {(time.time() - start) / 60:.1f} min so far", flush=True)
        t0 = time.time()
        encoder = pipeline.ensure_pretrained(method, DATASET, p, fraction=fraction, seed=args.seed, afresh=True)
        if _is_released(encoder.parent, dest / name):
            print(f"   already released in {dest / name}")
        else:
            print(f"   released in {release_run(encoder.parent, dest)}")
        print(f"== [{i}/{len(jobs)}] {name} done in {(time.time() - t0) / 60:.1f} min", flush=True)
    scores = figures_root() / f"{figure_name('fig4_scaling_auroc', DATASET, profile)}.csv"  # 05's, once it ran
    card = write_model_card(dest, pd.read_csv(scores) if scores.exists() else None,
                            issue_24_targets(dest, profile, figures_root()))
    print(f"all {len(jobs)} encoders released under {dest} in {(time.time() - start) / 60:.1f} min; model card: {card}")
    return 0


if __name__ == "__main__":
    sys.exit(report_errors("tools/release_encoders.py", main))

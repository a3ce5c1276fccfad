"""``fmct ingest rsna|cq500|nifti --source DIR ...``: the command-line face of ``fmct_lib.data.ingest``."""
from __future__ import annotations

import argparse
import json

__all__ = ["add_arguments", "run"]


def _mapping(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        column, sep, task = item.partition("=")
        if not sep or not column or not task:
            raise argparse.ArgumentTypeError(f"--map expects COLUMN=TASK, got {item!r}")
        out[column] = task
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--source", required=True, help="the folder as the distribution unpacks it")
    common.add_argument("--root", default=None, help="data root (default $FMCT_DATA or ./data)")
    common.add_argument("--workers", type=int, default=2, help="parallel processes (default 2)")
    common.add_argument("--seed", type=int, default=0, help="seed of the 8:1:1 patient-level split")
    dicom = argparse.ArgumentParser(add_help=False)
    dicom.add_argument("--on-gap", choices=["flag", "reject"], default="flag",
                       help="a series with missing slices is kept and flagged, or rejected")
    dicom.add_argument("--tilt", choices=["resample", "shear"], default="resample",
                       help="gantry tilt: resample onto a rectilinear grid, or keep a sheared affine")

    p = sub.add_parser("rsna", parents=[common, dicom], help="RSNA stage_2_train.csv + stage_2_train/")
    p.add_argument("--name", default="rsna")
    p.add_argument("--per-series", action="store_true", help="one volume per series instead of per study")
    p = sub.add_parser("cq500", parents=[common, dicom], help="CQ500 reads.csv + qct*/ folders")
    p.add_argument("--name", default="cq500")
    p.add_argument("--drop-contrast", action="store_true", help="leave contrast-enhanced series out")
    p = sub.add_parser("nifti", parents=[common], help="a NIfTI folder + labels CSV (a hospital's own data)")
    p.add_argument("--name", required=True, help="dataset name (appended to the manifest)")
    p.add_argument("--labels", default=None, help="CSV with a path column, a patient column and labels")
    p.add_argument("--map", nargs="*", default=[], metavar="COLUMN=TASK", help="label column -> task name")
    p.add_argument("--path-col", default="path")
    p.add_argument("--patient-col", default="patient_id")
    p.add_argument("--description", default="")


def run(args: argparse.Namespace) -> int:
    from ..data.ingest import ingest_cq500, ingest_nifti, ingest_rsna

    common = dict(root=args.root, workers=args.workers, seed=args.seed)
    if args.kind == "rsna":
        summary = ingest_rsna(args.source, name=args.name, per_series=args.per_series, on_gap=args.on_gap,
                              tilt=args.tilt, **common)
    elif args.kind == "cq500":
        summary = ingest_cq500(args.source, name=args.name, drop_contrast=args.drop_contrast,
                               on_gap=args.on_gap, tilt=args.tilt, **common)
    else:
        summary = ingest_nifti(args.source, name=args.name, labels=args.labels, mapping=_mapping(args.map),
                               path_column=args.path_col, patient_column=args.patient_col,
                               description=args.description, **common)
    print(json.dumps(summary, indent=1))
    return 0

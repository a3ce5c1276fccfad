"""``fmct ingest rsna|cq500|dicom|nifti --source DIR ...``: the command-line face of ``fmct_lib.data.ingest``."""
from __future__ import annotations

import argparse
import json
import sys

from . import EXIT_BAD_INPUT  # the source, the labels or an option cannot be used
from .options import positive_int

__all__ = ["add_arguments", "run"]


def _mapping(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        column, sep, task = item.partition("=")
        if not sep or not column or not task:
            raise argparse.ArgumentTypeError(f"--map expects COLUMN=TASK, got {item!r}")
        out[column] = task
    return out


def _meta(items: list[str]) -> dict[str, str]:
    """``--meta SCAN_COLUMN=CSV_COLUMN ...`` as ``{scan-table column: csv column}`` (which columns it may set:
    ``data.ingest.nifti.check_meta``)."""
    out = {}
    for item in items:
        target, sep, column = item.partition("=")
        if not sep or not target or not column:
            raise argparse.ArgumentTypeError(f"--meta expects SCAN_COLUMN=CSV_COLUMN, got {item!r}")
        if target in out:
            raise argparse.ArgumentTypeError(f"--meta names {target!r} twice ({target}={out[target]}, {item}); one "
                                             "CSV column per scan-table column")
        out[target] = column
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="kind", metavar="KIND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--source", required=True, help="the folder as the distribution unpacks it")
    common.add_argument("--root", default=None, help="data root (default $FMCT_DATA, else as `fmct info` shows)")
    common.add_argument("--workers", type=positive_int, default=2, help="parallel processes (default 2)")
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
    labels = argparse.ArgumentParser(add_help=False)
    labels.add_argument("--name", required=True, help="dataset name (appended to the manifest)")
    labels.add_argument("--labels", default=None,
                        help="CSV of one row per volume (nifti: --path-col) or per study or series (dicom: --key-col), "
                             "with label columns and optionally patient and split columns (format: docs/guide.md, "
                             "'Your own data'; samples: examples/)")
    labels.add_argument("--map", nargs="+", action="extend", default=[], metavar="COLUMN=TASK",
                        help="label columns of the CSV and the tasks they become, e.g. bleed=ich sah=sah "
                             "(repeatable); values 1/0, yes/no, y/n, true/false or positive/negative (any case), "
                             "empty where unknown")
    labels.add_argument("--split-col", default=None, metavar="COLUMN",
                        help="the CSV column of your own split (train, val or test per row); default: 8:1:1 by "
                             "patient, exact in count and stratified by label, from --seed")
    labels.add_argument("--description", default="")

    p = sub.add_parser("dicom", parents=[common, dicom, labels],
                       help="a DICOM export in any folder layout + labels CSV (a hospital's own data)")
    p.add_argument("--key-col", default="accession", metavar="COLUMN",
                   help="the CSV column naming each row's study or series (default accession)")
    p.add_argument("--match-on", choices=["accession", "study", "series", "folder"], default="accession",
                   help="what --key-col holds: AccessionNumber (default), StudyInstanceUID, SeriesInstanceUID, or "
                        "a folder below --source; a study's row labels each of its series")
    p.add_argument("--patient-col", default=None, metavar="COLUMN",
                   help="the CSV column of the patient (default: the headers' PatientID)")
    p.add_argument("--per-study", action="store_true", help="one volume per study (its largest series), not per series")
    p.add_argument("--drop-contrast", action="store_true", help="leave contrast-enhanced series out")
    p.add_argument("--min-slices", type=positive_int, default=10,
                   help="series with fewer images are refused (default 10, the paper's filter)")
    p.add_argument("--plane", nargs="+", choices=["axial", "coronal", "sagittal"], default=None,
                   help="keep only series whose slices lie in these planes, e.g. --plane axial to leave out "
                        "sagittal and coronal reformats (default: every plane; the scan table's plane column)")
    p.add_argument("--thickness-mm", nargs=2, type=float, default=None, metavar=("MIN", "MAX"),
                   help="keep only series of this slice thickness (the paper: 0.5 5)")
    p.add_argument("--kvp", nargs=2, type=float, default=None, metavar=("MIN", "MAX"),
                   help="keep only series of this tube voltage (the paper: 70 150)")
    p.add_argument("--kernel", default=None, metavar="PATTERN",
                   help="keep only series whose ConvolutionKernel this regular expression finds (any case), e.g. "
                        "'^(Hr|Qr)(3[5-9]|4[0-5])' for the paper's Siemens kernels")

    p = sub.add_parser("nifti", parents=[common, labels], help="a NIfTI folder + labels CSV (a hospital's own data)")
    p.add_argument("--path-col", default="path", metavar="COLUMN",
                   help="the CSV column of each volume's file, relative to --source or a bare name (default path)")
    p.add_argument("--patient-col", default="patient_id", metavar="COLUMN",
                   help="the CSV column of the patient: a patient's scans share a split (default patient_id)")
    p.add_argument("--meta", nargs="+", action="extend", default=[], metavar="SCAN_COLUMN=CSV_COLUMN",
                   help="acquisition columns of the CSV copied into the scan table, e.g. manufacturer=scanner "
                        "slice_thickness_mm=thickness_mm (repeatable; SCAN_COLUMN one of manufacturer, "
                        "slice_thickness_mm, kvp, convolution_kernel); an empty cell keeps the default (no "
                        "manufacturer; the thickness as the volume's z-spacing)")


def run(args: argparse.Namespace) -> int:
    """Ingest; a source or labels problem is one line on stderr and exit status 2, not a traceback.

    Bad scans never stop the command: they are rows of ``rejects.csv`` and the exit status is 0.
    """
    from ..data.ingest import ingest_cq500, ingest_dicom, ingest_nifti, ingest_rsna

    common = dict(root=args.root, workers=args.workers, seed=args.seed)
    try:
        if args.kind == "rsna":
            summary = ingest_rsna(args.source, name=args.name, per_series=args.per_series, on_gap=args.on_gap,
                                  tilt=args.tilt, **common)
        elif args.kind == "cq500":
            summary = ingest_cq500(args.source, name=args.name, drop_contrast=args.drop_contrast,
                                   on_gap=args.on_gap, tilt=args.tilt, **common)
        elif args.kind == "dicom":
            from ..data.ingest.dicom_export import SeriesFilter
            keep = SeriesFilter(min_slices=args.min_slices, drop_contrast=args.drop_contrast,
                                planes=tuple(args.plane) if args.plane else None,
                                thickness_mm=tuple(args.thickness_mm) if args.thickness_mm else None,
                                kvp=tuple(args.kvp) if args.kvp else None, kernel=args.kernel)
            summary = ingest_dicom(args.source, name=args.name, labels=args.labels, mapping=_mapping(args.map),
                                   key_column=args.key_col, match_on=args.match_on, patient_column=args.patient_col,
                                   split_column=args.split_col, per_study=args.per_study, keep=keep,
                                   on_gap=args.on_gap, tilt=args.tilt, description=args.description, **common)
        elif args.kind == "nifti":
            summary = ingest_nifti(args.source, name=args.name, labels=args.labels, mapping=_mapping(args.map),
                                   path_column=args.path_col, patient_column=args.patient_col,
                                   split_column=args.split_col, meta=_meta(args.meta),
                                   description=args.description, **common)
        else:  # a subparser added without its branch here (docs/extending.md): never another ingester's defaults
            raise NotImplementedError(f"fmct ingest {args.kind}: its subparser has no branch in "
                                      f"fmct_lib/cli/ingest.py run() calling its ingester")
    except (FileNotFoundError, NotADirectoryError, ValueError, argparse.ArgumentTypeError) as e:
        message = " ".join(str(e).split())  # one line, whatever the exception's text
        print(f"fmct ingest {args.kind}: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(json.dumps(summary, indent=1))
    if summary.get("rejects"):  # never in silence, though the batch goes on
        print(f"fmct ingest {args.kind}: {summary['rejects']} refused (scans, series or files), each with its "
              f"reason in {summary['rejects_csv']}", file=sys.stderr)
    if summary.get("flagged"):
        print(f"fmct ingest {args.kind}: {summary['flagged']} of {summary['scans']} scans repaired or flagged "
              f"(the flags column of {summary['scans_csv']})", file=sys.stderr)
    if summary.get("labels_without_volume"):
        print(f"fmct ingest {args.kind}: {summary['labels_without_volume']} row(s) of {args.labels} match no "
              f"volume below {args.source}: {'; '.join(summary['labels_without_volume_rows'][:3])}"
              f"{' …' if summary['labels_without_volume'] > 3 else ''}"
              f"{_unlisted_volumes(summary, args) if args.kind == 'nifti' else ''}", file=sys.stderr)
    for key, what in (("labels_without_image", "labelled image(s) of the labels CSV have no file"),
                      ("reads_without_series", "patient(s) of reads.csv have no series folder")):
        if summary.get(key):  # RSNA, CQ500: a partial download
            print(f"fmct ingest {args.kind}: warning: {summary[key]} {what} below {args.source} (a partial "
                  f"download?): {', '.join(summary[key + '_rows'][:3])}{' …' if summary[key] > 3 else ''}",
                  file=sys.stderr)
    if summary.get("dropped"):
        print(f"fmct ingest {args.kind}: warning: {summary['dropped']} scan(s) of the earlier scans.csv are not in "
              f"this run's and left the table (e.g. {', '.join(summary['dropped_scan_ids'][:3])}; their volumes stay "
              f"in volumes/): no longer in {args.source}, refused, or left out by this run's options; ingest every "
              "folder of the dataset in one run, with the same options, to keep them", file=sys.stderr)
    if summary.get("identical_volumes"):
        groups = summary["identical_volumes_groups"]
        across = [g for g in groups if len(g["splits"]) > 1]
        fix = "give each copy its scan's patient (--patient-col), or " if args.kind in ("nifti", "dicom") else ""
        print(f"fmct ingest {args.kind}: warning: {summary['identical_volumes']} volume(s) were filed more than once, "
              f"voxel for voxel (e.g. {' = '.join(groups[0]['scan_ids'][:3])}, split {'/'.join(groups[0]['splits'])})"
              + (f"; copies in more than one split ({len(across)} of those listed, e.g. "
                 f"{'/'.join(across[0]['splits'])}) let a model be evaluated on scans it was trained or chosen on"
                 if across else "") + f": {fix}remove the copies from {args.source} and ingest again", file=sys.stderr)
    if summary.get("labels_of_left_out_series"):
        print(f"fmct ingest {args.kind}: warning: {summary['labels_of_left_out_series']} row(s) of {args.labels} "
              f"label only series this run leaves out: {'; '.join(summary['labels_of_left_out_series_rows'][:3])}",
              file=sys.stderr)
    if summary.get("no_patient_id"):
        print(f"fmct ingest {args.kind}: warning: {summary['no_patient_id']} scan(s) have no PatientID, so each is its "
              "study's own patient and one patient's studies can fall in different splits: name the patient in the "
              "labels CSV (--patient-col)", file=sys.stderr)
    if summary.get("thickness_unlike_spacing"):
        from ..data.ingest.nifti import THICKNESS_RATIO
        n, shown = summary["thickness_unlike_spacing"], summary["thickness_unlike_spacing_scans"][:3]
        column = _meta(args.meta).get("slice_thickness_mm")
        print(f"fmct ingest {args.kind}: warning: {n} scan(s) have a slice thickness in {args.labels} (--meta "
              f"slice_thickness_mm={column}) more than {THICKNESS_RATIO:g} times their volume's z-spacing or under "
              f"1/{THICKNESS_RATIO:g} of it: {'; '.join(shown)}{' …' if n > len(shown) else ''}; kept as given (the "
              "acquisition's thickness, which the protocol analyses group by; a reconstruction can space slices "
              "otherwise): check that the column is in mm and names each volume's own series", file=sys.stderr)
    for warning in _small_split_warnings(summary):
        print(f"fmct ingest {args.kind}: warning: {warning}", file=sys.stderr)
    return 0


def _unlisted_volumes(summary: dict, args: argparse.Namespace) -> str:
    """What became of the volumes no row names (``fmct ingest nifti``), for the line on rows that match no volume:
    the user judges whether a row meant one of them (a near match, ``ct_03.nii`` for ``ct_03.nii.gz``, is refused
    before this)."""
    n = summary.get("not_in_labels", 0)
    if not n:
        return "; every volume kept has a row (the files refused are in rejects.csv)"
    shown = summary.get("not_in_labels_volumes", [])[:3]
    where = ("in the unlabelled pretraining pool (split 'pretrain')" if args.split_col else
             "split 8:1:1 with the others, those in train read by pretraining")
    return (f"; the {n} volume(s) no row names (e.g. {', '.join(shown)}{' …' if n > len(shown) else ''}) are kept "
            f"as unlabelled scans, each its own patient (its file), {where}: where a row means one of them, correct "
            f"its path (--path-col {args.path_col}) and run again, or that patient's scans can fall in different "
            "splits")


def _small_split_warnings(summary: dict) -> list[str]:
    """For every task: where its training split holds no positive or no negative scan (``untrainable_tasks``),
    that nothing can be trained on it; ``evaluate.adequacy.class_count_warning`` for its validation and test
    split."""
    from ..evaluate.adequacy import class_count_warning
    out = []
    for task, by_split in summary["labels"].items():
        if task in summary.get("untrainable_tasks", {}):
            out.append(_untrainable_warning(summary, task))
        for split in ("val", "test"):
            counts = by_split.get(split, {"positive": 0, "negative": 0})
            out.append(class_count_warning(counts["positive"], counts["negative"],
                                           where=f"{summary['dataset']} {split}", task=task))
    return [w for w in out if w]


def _untrainable_warning(summary: dict, task: str) -> str:
    """The warning for a task whose training split holds no positive (or no negative) scan: nothing to fine-tune
    or probe it on (``fmct finetune`` and the notebooks skip it), and where val or test hold them, which."""
    counts = summary["untrainable_tasks"][task]
    missing = [c for c in ("positive", "negative") if not counts[c]]
    held = [f"{split} {sum(by.get(c, 0) for c in missing)}" for split, by in summary["labels"][task].items()
            if split != "train" and sum(by.get(c, 0) for c in missing)]
    return (f"{summary['dataset']} train: {counts['positive']} positive and {counts['negative']} negative {task!r} "
            f"scans: no {' and no '.join(c + 's' for c in missing)}, nothing to fine-tune or probe {task!r} on (fmct "
            f"finetune --task {task} and the notebooks skip it)"
            + (f"; its {' and '.join(c + 's' for c in missing)} are all in other splits ({', '.join(held)})"
               if held else "")
            + (": give some of their patients the train split (--split-col)"
               if held and summary.get("split_source") == "given" else ""))

"""``fmct finetune``: fine-tuning, probing, scratch and few-shot runs per task (``downstream.run_sweep``).

Examples::

    fmct finetune --dataset synthetic --task ich --protocol linear --encoder runs/pretrain/X/encoder.safetensors
    fmct finetune --task ich,sdh --protocol finetune --protocol scratch --train-filter site=internal \\
        --eval-filter site=external --encoder ...          # external validation (Fig. 1f–g)
    fmct finetune --task ich --protocol fewshot --shots 8,16,32 --resamples 5 --encoder ...

Finished runs are read back, so an interrupted sweep continues where it stopped. The summary printed at
the end is AUROC per task (mean over seeds; "undefined (no positives in test)" where a test set holds one
class); ``--out`` writes all predictions as one CSV. A run the data cannot support (a split without positives
or negatives, too few shots) is skipped and listed with its reason, and the rest of the sweep runs. The exit
status is 2 for an encoder that cannot be used or a task that is not a label column of the dataset's scan
table (one line on stderr: the problem, the dataset's tasks, no traceback; nothing runs) and 1 where nothing
could be evaluated.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import EXIT_BAD_INPUT  # the encoder cannot be used; 1: nothing evaluated
from .options import (add_dataset, add_device, add_preset, add_profile, check_filter, check_split, count, csv_list,
                      input_size_problem, parse_filter, positive_int, warn_of_chain)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..downstream import PROTOCOLS
    add_dataset(parser, help="training dataset")
    parser.add_argument("--task", action="append", required=True, type=csv_list,
                        help="task label column(s); repeat or comma-separate")
    parser.add_argument("--protocol", action="append", choices=[*PROTOCOLS, "fewshot"],
                        help="repeatable (default: finetune); fewshot = K-shot fine-tuning + the all-data run")
    parser.add_argument("--encoder", default=None,
                        help="pretrained encoder checkpoint (not needed for scratch and histogram)")
    add_profile(parser)
    add_preset(parser)
    parser.add_argument("--eval-dataset", default=None, help="test on another dataset (default: --dataset)")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--train-filter", action="append", metavar="COLUMN=VALUE",
                        help="select training rows, e.g. site=internal (repeatable; VALUE may be A+B)")
    parser.add_argument("--eval-filter", action="append", metavar="COLUMN=VALUE",
                        help="select evaluation rows (default: the training filter on the same dataset)")
    parser.add_argument("--shots", type=lambda t: [positive_int(k) for k in csv_list(t)], default=None,
                        help="few-shot K values, e.g. 8,16,32 (default: the profile's)")
    parser.add_argument("--resamples", type=positive_int, default=None, help="few-shot resamples (default: the profile's)")
    parser.add_argument("--max-epochs", type=positive_int, default=None,
                        help="the cap of the convergence rule (default: the profile's)")
    parser.add_argument("--patience", type=positive_int, default=None,
                        help="epochs without a better validation AUROC before a model stops (default: the profile's)")
    parser.add_argument("--seed", type=count, default=0, help="the first training seed (default 0)")
    parser.add_argument("--run-root", default=None, help="default: $FMCT_RUNS/downstream")
    add_device(parser)
    parser.add_argument("--workers", type=count, default=0, help="data-loading workers")
    parser.add_argument("--out", default=None, help="write all predictions to this CSV")


def run(args: argparse.Namespace) -> int:
    from ..data.manifest import load_scans
    from ..data.preprocess import preset_spec
    from ..downstream import run_sweep
    from ..interpret.parts import check_tasks
    from ..io import atomic_write_csv
    from ..pipeline import ensure_cache
    from ..precision import check_device

    tasks = [t for group in args.task for t in group]
    protocols = args.protocol or ["finetune"]
    if not tasks:  # "--task ," ran nothing and said "every run was skipped"
        raise ValueError("--task: no task named (e.g. --task ich,sah)")
    eval_dataset = args.eval_dataset or args.dataset
    tables = {name: load_scans(name) for name in dict.fromkeys([args.dataset, eval_dataset])}  # read once
    # every check before anything runs: a task typo (check_tasks names the one meant; a task without positives is
    # not refused, its runs are skipped saying why), a split or filter value no row has
    for name, scans in tables.items():
        check_tasks(scans, tasks, name)
    check_split("--eval-split", args.eval_split, tables[eval_dataset], eval_dataset)
    train_filter, eval_filter = parse_filter(args.train_filter), parse_filter(args.eval_filter)
    check_filter("--train-filter", train_filter, tables[args.dataset], args.dataset)  # before the cache is built
    check_filter("--eval-filter", eval_filter, tables[eval_dataset], eval_dataset)
    if args.device:
        check_device(args.device)
    spec = preset_spec(args.preset, args.profile)
    problem = _encoder_problem(args.encoder, protocols, spec)
    if problem:
        print(f"fmct finetune: error: {' '.join(problem.split())}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.out:  # before any training: a missing folder failed after the whole sweep
        _make_out_folder(args.out)
    for dataset in tables:
        ensure_cache(dataset, args.profile, args.preset)
    predictions = run_sweep(args.dataset, tasks, protocols, args.encoder, args.profile,
                            shots=args.shots, resamples=args.resamples, eval_dataset=args.eval_dataset,
                            run_root=args.run_root, seed=args.seed, train_filter=train_filter,
                            eval_filter=eval_filter, eval_split=args.eval_split,
                            hparams={k: v for k, v in (("max_epochs", args.max_epochs), ("patience", args.patience))
                                     if v is not None} or None, device=args.device,
                            spec=spec, num_workers=args.workers)
    for s in predictions.attrs.get("skipped", []):
        print(f"skipped {s['task']} {s['protocol']} k={s['k']} seed={s['seed']}: {s['reason']}")
    if predictions.empty:
        print("nothing could be evaluated: every run was skipped")
        return 1
    if args.out:
        atomic_write_csv(predictions, Path(args.out).expanduser())
        print(f"predictions: {args.out}")
    table, evaluated = _summary(predictions, args.eval_split)
    print("AUROC (mean over seeds)\n" + table)
    if not evaluated:
        print(f"nothing could be evaluated: no AUROC is defined on the {args.eval_split} split")
        return 1
    return 0


def _make_out_folder(out: str) -> None:
    """Make ``--out``'s folder, or refuse it in one line (a folder given as the file, a file in its path)."""
    path = Path(out).expanduser()
    if path.is_dir():
        raise ValueError(f"--out {out}: a folder; name the CSV file to write (e.g. {Path(out) / 'predictions.csv'})")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: its folder cannot be made ({e.strerror or e})") from None


def _encoder_problem(encoder, protocols: list[str], spec) -> str | None:
    """Why the sweep cannot start from ``encoder`` (one line: the file and the problem), or None. The encoder
    is loaded once here, so a refused or unfitting file stops the command before any run."""
    from ..downstream import PROTOCOLS
    from ..models.checkpoints import CheckpointError, load_encoder
    needing = [p for p in protocols if p == "fewshot" or PROTOCOLS[p].needs_encoder]
    if not needing:
        if encoder is not None:  # given, and read by nothing: said, not ignored in silence
            print(f"fmct finetune: note: --encoder {encoder} is not used: {', '.join(protocols)} start from no "
                  f"pretrained encoder", file=sys.stderr)
        return None
    if encoder is None:
        return f"protocol {needing[0]!r} needs --encoder (a pretrained encoder checkpoint)"
    try:
        model = load_encoder(encoder)
    except (CheckpointError, FileNotFoundError) as e:
        return str(e)
    problem = input_size_problem(encoder, model, spec)
    if problem is None:
        warn_of_chain(encoder, spec)
    return problem


def _summary(predictions, split: str) -> tuple[str, bool]:
    """The AUROC table (task × protocol, K; mean over seeds, a ``macro`` row) as text, and whether any AUROC
    is defined. An undefined AUROC shows why ("undefined (no positives in test)"), a skipped run "skipped";
    the macro row averages the defined ones and a note names the others."""
    from ..evaluate import task_metrics
    predictions = predictions.assign(k=predictions["k"].astype("string").fillna("all"))
    metrics = task_metrics(predictions, by=("protocol", "k", "seed", "task"))
    keys = ["task", "protocol", "k"]
    auroc = metrics.groupby(keys)["auroc"].mean().unstack(["protocol", "k"])
    auroc = auroc[sorted(auroc.columns, key=lambda c: (c[0], float("inf") if c[1] == "all" else float(c[1])))]
    reason = metrics.groupby(keys)["reason"].first().unstack(["protocol", "k"]).reindex_like(auroc)
    table = auroc.round(3).astype(object)
    table[auroc.isna()] = reason[auroc.isna()].map(
        lambda r: f"undefined ({r} in {split})" if isinstance(r, str) and r else "skipped")
    table.loc["macro"] = auroc.mean().round(3).astype(object).where(auroc.notna().any(), "undefined")
    defined = auroc.loc[:, auroc.notna().any()]
    left_out = [t for t in defined.index if defined.loc[t].isna().any()]
    text = table.to_string()
    if left_out:
        text += ("\nmacro: mean over the tasks with an AUROC (left out where undefined or skipped: "
                 f"{', '.join(left_out)})")
    return text, not defined.empty

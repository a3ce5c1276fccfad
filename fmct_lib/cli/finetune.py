"""``fmct finetune``: fine-tuning, probing, scratch and few-shot runs per task (``downstream.run_sweep``).

Examples::

    fmct finetune --dataset synthetic --task ich --protocol linear --encoder runs/pretrain/X/encoder.safetensors
    fmct finetune --task ich,sdh --protocol finetune --protocol scratch --train-filter site=internal \\
        --eval-filter site=external --encoder ...          # external validation (Fig. 1f–g)
    fmct finetune --task ich --protocol fewshot --shots 8,16,32 --resamples 5 --encoder ...

Finished runs are read back, so an interrupted sweep continues where it stopped. The summary printed at
the end is AUROC per task (mean over seeds); ``--out`` writes all predictions as one CSV.
"""
from __future__ import annotations

import argparse

from .options import add_dataset, add_device, add_preset, add_profile, csv_list, parse_filter


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
    parser.add_argument("--shots", type=lambda t: [int(k) for k in csv_list(t)], default=None,
                        help="few-shot K values, e.g. 8,16,32 (default: the profile's)")
    parser.add_argument("--resamples", type=int, default=None, help="few-shot resamples (default: the profile's)")
    parser.add_argument("--epochs", type=int, default=None, help="override the profile's fine-tuning epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-root", default=None, help="default: $FMCT_RUNS/downstream")
    add_device(parser)
    parser.add_argument("--workers", type=int, default=0, help="data-loading workers")
    parser.add_argument("--out", default=None, help="write all predictions to this CSV")


def run(args: argparse.Namespace) -> int:
    from ..data.preprocess import preset_spec
    from ..downstream import run_sweep
    from ..evaluate import task_metrics
    from ..pipeline import ensure_cache

    tasks = [t for group in args.task for t in group]
    for dataset in dict.fromkeys([args.dataset, args.eval_dataset or args.dataset]):
        ensure_cache(dataset, args.profile, args.preset)
    predictions = run_sweep(args.dataset, tasks, args.protocol or ["finetune"], args.encoder, args.profile,
                            shots=args.shots, resamples=args.resamples, eval_dataset=args.eval_dataset,
                            run_root=args.run_root, seed=args.seed, train_filter=parse_filter(args.train_filter),
                            eval_filter=parse_filter(args.eval_filter), eval_split=args.eval_split,
                            hparams={"epochs": args.epochs} if args.epochs else None, device=args.device,
                            spec=preset_spec(args.preset, args.profile),
                            num_workers=args.workers)
    for s in predictions.attrs.get("skipped", []):
        print(f"skipped {s['task']} {s['protocol']} k={s['k']} seed={s['seed']}: {s['reason']}")
    if predictions.empty:
        print("no run could be made")
        return 1
    if args.out:
        predictions.to_csv(args.out, index=False)
        print(f"predictions: {args.out}")
    predictions["k"] = predictions["k"].astype("string").fillna("all")
    metrics = task_metrics(predictions, by=("protocol", "k", "seed", "task"))
    summary = metrics.groupby(["task", "protocol", "k"])["auroc"].mean().unstack(["protocol", "k"])
    summary.loc["macro"] = summary.mean()
    print("AUROC (mean over seeds)\n" + summary.round(3).to_string())
    return 0

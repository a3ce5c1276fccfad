"""The notebooks' conclusions: each a function from a run's tables to the text the notebook prints.

One function per notebook (``data_conclusion`` for 00_data … ``patch_size_conclusion`` for 12), each
setting this run's numbers beside the paper's claim (Zhu et al., Nat. Biomed. Eng. 2026) and saying plainly
when the claim is not reproduced. Each returns its bullet points, one per line, each starting with "- ".
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..evaluate import paired_runs
from .encoders import paper_statements
from .paper import PAPER_DATASET_NAMES, paper_values_for
from .run_records import stopping_table
from .verdicts import (OTHER_VERDICTS, against_reference, describe_comparison, has_ci, judge_difference,
                       paired_evidence, tally)

__all__ = ["describe_comparison", "data_conclusion", "pretrain_conclusion", "finetune_conclusion",
           "transfer_conclusion", "fewshot_conclusion", "scaling_conclusion", "embeddings_conclusion",
           "attention_conclusion", "retrieval_conclusion", "other_encoders_conclusion", "modelling_choices_conclusion",
           "efficiency_conclusion", "patch_size_conclusion"]


def _bullets(lines: list[str]) -> str:
    return "\n".join("- " + line for line in lines)


def _macro_auroc(summary: pd.DataFrame) -> pd.Series:
    """Macro-AUROC per model of a ``bootstrap_ci`` summary (columns task, metric, model, value)."""
    return summary[(summary.task == "macro") & (summary.metric == "auroc")].set_index("model")["value"]


# --------------------------------------------------------------------------------------- 00 · data
def data_conclusion(scans: pd.DataFrame, tasks: list[str]) -> str:
    """00_data: the cohort's size, slice thickness and makes beside the paper's cohort (Methods, "Datasets":
    361,663 pretraining scans, 270,205 labelled internal scans, 0.5–5 mm), and its most prevalent and rarest
    of ``tasks`` over all labelled scans. A scan whose ``site`` is ``pretrain`` is unlabelled (no ``site``
    column: all labelled); a missing label is left out of its task's prevalence."""
    internal = scans[scans.get("site", pd.Series("internal", index=scans.index)) != "pretrain"]
    prevalence = internal[list(tasks)].astype(float).mean()
    unlabelled = len(scans) - len(internal)
    makes = ", ".join(f"{k} {v}" for k, v in scans["manufacturer"].value_counts().items()) or "none recorded"
    return _bullets([
        f"{len(scans)} scans, {scans['patient_id'].nunique()} patients; {unlabelled} unlabelled pretraining scans "
        f"and {len(internal)} labelled scans (paper: 361,663 pretraining scans, 270,205 labelled internal scans).",
        f"Slice thickness {scans['slice_thickness_mm'].min():.1f}–{scans['slice_thickness_mm'].max():.1f} mm "
        f"(paper: 0.5–5 mm); makes: {makes}.",
        f"Most prevalent task over the labelled scans: {prevalence.idxmax()} ({prevalence.max():.1%}); rarest: "
        f"{prevalence.idxmin()} ({prevalence.min():.1%}).",
    ])


# --------------------------------------------------------------------------------------- 01 · pretraining
def pretrain_conclusion(metrics: pd.DataFrame, method: str, profile) -> str:
    """01_pretrain: did the loss fall (first vs last 10% of the logged steps), and, for DINO, is the teacher
    collapsed (Methods, "Self-supervised pretraining"): its output entropy against the uniform maximum
    log(``profile.dino_out_dim``), and the KL of the batch-mean output to uniform. The rows without a loss (the
    kNN score of the initial encoder at step 0) are left out of the loss, and read for the kNN monitor."""
    logged, metrics = metrics, metrics.dropna(subset=["loss"])
    n = max(1, len(metrics) // 10)
    first, last = metrics["loss"].head(n).mean(), metrics["loss"].tail(n).mean()
    trend = "decreased" if last < first else "did NOT decrease"
    lines = [f"{method.upper()} loss went from {first:.4g} (first 10% of steps) to {last:.4g} (last 10%): it {trend}."
             + (" (DINO's loss is a cross-entropy against a moving, sharpening teacher: it rises while the teacher "
                "temperature warms up, so the collapse signals below say more.)" if method == "dino" else "")]
    if method == "dino" and "teacher_entropy" in metrics:
        h, h_max = metrics["teacher_entropy"].tail(n).mean(), np.log(profile.dino_out_dim)
        kl = metrics["kl_to_uniform"].tail(n).mean()
        if h < 0.05 * h_max:
            state = "COLLAPSED onto few prototypes (every scan gets a near one-hot output)" if kl > 0.5 * h_max else \
                "sharp per-scan outputs spread over the prototypes: healthy"
        elif h > 0.9 * h_max:
            state = ("near-uniform teacher output for every scan: collapse to uniform, or a run too short to sharpen "
                     "(the features may still carry little information)")
        else:
            state = "between one-hot and uniform, no sign of collapse"
        lines.append(f"Teacher entropy {h:.3f} nats of a possible {h_max:.3f}, KL of the batch-mean output to uniform "
                     f"{kl:.3g} (last 10% of steps): {state}.")
    if "feature_std" in metrics and metrics["feature_std"].notna().any():
        std = metrics["feature_std"].dropna()
        k = max(1, len(std) // 10)
        lines.append(f"Feature spread (std of the normalised features × √d; 1 = isotropic, 0 = collapsed) went from "
                     f"{std.head(k).mean():.3f} to {std.tail(k).mean():.3f}"
                     + (f"; effective rank {metrics['effective_rank'].dropna().tail(k).mean():.1f}"
                        if "effective_rank" in metrics else "") + ".")
    if "knn_auroc" in logged and logged["knn_auroc"].notna().sum() >= 2:
        knn = logged.dropna(subset=["knn_auroc"])  # the random encoder's score is logged before the first loss
        start, end = knn["knn_auroc"].iloc[0], knn["knn_auroc"].iloc[-1]
        verdict = ("the encoder learnt features the labels separate better than the random encoder's"
                   if end > start + 0.02 else "NOT better than the random encoder: the pretraining learnt no "
                   "feature the findings separate (see docs/experiments.md)")
        lines.append(f"Validation kNN macro-AUROC of the frozen encoder: {start:.3f} at step "
                     f"{int(knn['step'].iloc[0])} (the random encoder), "
                     f"{end:.3f} at step {int(knn['step'].iloc[-1])}: {verdict}.")
    return _bullets(lines)


def describe_stopping(predictions: pd.DataFrame, profile) -> str:
    """One sentence on the convergence rule and where the runs of ``predictions`` (if given) stopped: its
    ``stop_reason`` and ``stopped_step`` columns, one value per run; runs without a deep model have no reason
    and are left out."""
    per_epoch = f"{profile.finetune_epoch_steps} steps of batch {profile.finetune_batch_size}" + "".join(
        f"; {n} draws on {d}" for d, n in profile.finetune_subset_by_dataset.items())
    rule = (f"Every model trained by one rule: validation AUROC after each epoch of {profile.finetune_subset} balanced "
            f"draws ({per_epoch}), stopped after "
            f"{profile.finetune_patience} epochs without improvement, at most {profile.finetune_max_epochs} epochs "
            f"({profile.finetune_max_epochs * profile.finetune_epoch_steps:,} steps).")
    if predictions is None or "stop_reason" not in predictions:
        return rule
    runs = stopping_table(predictions)
    runs = runs[runs["stop_reason"].fillna("") != ""]
    lbfgs = runs["stop_reason"].str.contains("L-BFGS")  # logistic fits: solver iterations, not training steps
    converged = int((lbfgs & ~runs["stop_reason"].str.startswith("cap")).sum())
    fits = runs[lbfgs]
    histogram = fits.get("protocol", pd.Series("", index=fits.index)).astype(str).str.contains("histogram")
    named = " and ".join(f"{n} {what}" for what, n in (("linear probes", int((~histogram).sum())),
                                                       ("histogram references", int(histogram.sum()))) if n)
    probes = f" The L-BFGS fits of the {named} converged in {converged}." if lbfgs.any() else ""
    runs = runs[~lbfgs]
    if runs.empty:
        return rule + probes
    steps = runs["stopped_step"].astype(float)
    capped = int(runs["stop_reason"].str.startswith("cap").sum())
    diverged = int((runs["stop_reason"] == "diverged").sum())
    return (f"{rule} The {len(runs)} deep runs stopped at step {steps.min():,.0f}–{steps.max():,.0f} (median "
            f"{steps.median():,.0f}); {capped} of them at the cap"
            + (f", {diverged} because they diverged (non-finite validation predictions; their best epoch before "
               f"is kept)" if diverged else "") + (" (see their stop_reason)." if capped or diverged else ".")
            + probes)


# --------------------------------------------------------------------------------------- 02 · fine-tuning
def finetune_conclusion(summary: pd.DataFrame, tests: dict[str, pd.DataFrame], runs: pd.DataFrame,
                        predictions: pd.DataFrame, *, paper: pd.DataFrame, paper_name: str,
                        protocols: list[str], profile) -> str:
    """02_finetune (Fig. 1e): fine-tuned vs scratch macro-AUC beside the paper's (0.852 vs 0.734, +16.07%,
    P < 0.001 on NYU Langone), fine-tuned vs the probes, every model vs the histogram reference, per-task wins,
    the spread over training seeds and the training budget against the paper's.

    ``summary``: ``bootstrap_ci`` rows with ``model``; ``tests``: {protocol: ``paired_permutation_test`` of
    fine-tuned against it}; ``runs``: per model, seed and task (``macro`` included) ``auroc``;
    ``predictions``: the sweep's table (``protocol``, ``seed``); ``paper``: the paper's Fig. 1e AUROCs for
    ``paper_name``; ``protocols``: the order in which the seeds' values are listed. Where ``tests`` hold the 95%
    CI of the difference (``paired_comparison``), the verdict is ``judge_difference``'s (CI and p together); every
    deep model is placed against the histogram reference by the same rule (``against_reference``)."""
    macro = _macro_auroc(summary)
    paper_macro = paper[paper.task == "macro"].set_index("model")["value"]
    seeds = sorted(predictions["seed"].unique().tolist())
    lines = []
    if {"finetune", "scratch"} <= set(macro.index):
        reported = paper_values_for("fig1e", paper_name, "relative_improvement_pct")["value"]
        claim = (f"{paper_macro['finetune']:.3f} vs {paper_macro['scratch']:.3f} ({reported.item():+.2f}%, "
                 f"P < 0.001) on {PAPER_DATASET_NAMES.get(paper_name, paper_name)}" if len(paper_macro) == 2 else None)
        p_value, ci = paired_evidence(tests["scratch"])
        lines.append(describe_comparison("fine-tuned macro-AUC", macro["finetune"], "scratch", macro["scratch"],
                                         p_value, claim, ci))
    from ..downstream.protocols import PROTOCOLS
    for other in protocols:  # the probes (linear, attentive, abmil) and any protocol a user registered
        if other in ("finetune", "scratch", "histogram") or other not in macro or "finetune" not in macro:
            continue
        probe = other in PROTOCOLS and PROTOCOLS[other].frozen
        p_value, ci = paired_evidence(tests[other])
        lines.append(describe_comparison("fine-tuned", macro["finetune"], f"{other} probe" if probe else other,
                                         macro[other], p_value, "probing comes close to full fine-tuning "
                                         "(Supplementary Figs 3 and 8)" if probe else None, ci))
    if "histogram" in macro:
        deep = [m for m in dict.fromkeys(["finetune", *protocols]) if m in macro and m != "histogram"]
        places = {m: against_reference(predictions, m, "histogram", profile) for m in deep}
        lines.append("Reference without a deep model (window histograms + logistic regression): "
                     f"{macro['histogram']:.3f}; " + ", ".join(f"{m} {place} it" for m, place in places.items())
                     + (" (level: the 95% CI of the paired difference contains 0 and p ≥ 0.05)" if "level with" in places.values()
                        else "") + ".")
    per_task = summary[(summary.metric == "auroc") & (summary.task != "macro")].pivot(index="task", columns="model",
                                                                                      values="value")
    if {"finetune", "scratch"} <= set(per_task.columns):
        verdicts = [judge_difference(r["finetune"] - r["scratch"], *paired_evidence(tests["scratch"], task))
                    for task, r in per_task.iterrows()]
        others = tally(verdicts)
        lines.append(f"Per task, by the paired difference's 95% CI and p: fine-tuned beats scratch on "
                     f"{verdicts.count('above')} of {len(verdicts)} tasks{', ' + others if others else ''}"
                     + (" (paper, NYU Langone: beats it on all 10)." if paper_name == "nyu_langone" else "."))
    if len(seeds) > 1:
        spread = runs[runs.task == "macro"].pivot(index="seed", columns="model", values="auroc")
        lines.append("Macro-AUC by training seed " + str(seeds) + ": " + "; ".join(
            f"{m} " + " / ".join(f"{v:.3f}" for v in spread[m]) for m in protocols if m in spread)
            + ". Values above are seed means; the CI and P resample the test scans, not the seeds.")
        if {"finetune", "scratch"} <= set(spread.columns):
            pairs = paired_runs(predictions[predictions.protocol == "finetune"],
                                predictions[predictions.protocol == "scratch"], by=("task", "seed"))
            lines.append(f"Run by run (same task and seed): fine-tuned above scratch in {int(pairs.a_wins.sum())} of "
                         f"{len(pairs)}.")
    lines.append(describe_stopping(predictions, profile) + " (Paper: at most 10 epochs of 5,000 draws, the epoch "
                 "with the best validation AUROC kept; no batch size given.)")
    return _bullets(lines)


# --------------------------------------------------------------------------------------- 03 · transfer
def transfer_conclusion(summary: pd.DataFrame, tests: dict[str, pd.DataFrame], predictions: pd.DataFrame, *,
                        paper: pd.DataFrame, paper_name: str, target_rows: pd.DataFrame, profile) -> str:
    """03_transfer (Fig. 1e bottom rows, Fig. 1f–g): in-domain fine-tuned against in-domain scratch (paper, NYU
    Long Island: 0.904 vs 0.748) and against external validation (the transferred model), every deep model
    against the histogram reference, and the size of the target's training split beside the paper's.

    ``summary`` has the models ``in-domain fine-tuned``, ``in-domain scratch``, ``external validation`` and
    ``in-domain histogram``; ``tests``: {model: ``paired_comparison`` of in-domain fine-tuned against it}, whose
    95% CI of the difference decides a tie (``describe_comparison``); ``predictions``: every model's predictions,
    the model in ``protocol`` (placed against the histogram by ``against_reference``); ``paper``: the paper's
    AUROCs for ``paper_name`` with its models renamed to ours; ``target_rows``: the target's scans (column
    ``split``). Without ``external validation`` (a dataset with one site and no target dataset) its line says it
    did not run; without the in-domain models (a target with test labels only) the transferred model's macro-AUROC
    and its 95% CI are all there is, and the conclusion says there is nothing to compare it with."""
    macro = _macro_auroc(summary)
    training = (f"The target's training split has {int((target_rows['split'] == 'train').sum())} scans "
                "(paper: CQ500 1,120; RSNA ~8,000).")
    if "in-domain fine-tuned" not in macro:
        row = summary[(summary.task == "macro") & (summary.metric == "auroc")].set_index("model").loc[
            "external validation"]
        return _bullets([
            f"External validation (the model fine-tuned on the source, tested on the target): macro-AUROC "
            f"{row['value']:.3f} (95% CI {row['ci_low']:.3f}–{row['ci_high']:.3f}).",
            "In-domain models: not run (no task to train on in the target; see the skipped parts), so nothing here "
            "says whether fine-tuning on the target would do better (paper: the transferred model is better on "
            "small CQ500).",
            training])
    paper_macro = paper[paper.task == "macro"].set_index("model")["value"]
    claim = (f"{paper_macro['in-domain fine-tuned']:.3f} vs {paper_macro['in-domain scratch']:.3f} on "
             f"{PAPER_DATASET_NAMES.get(paper_name, paper_name)}"
             if {"in-domain fine-tuned", "in-domain scratch"} <= set(paper_macro.index) else None)
    def against(b: str, said: str | None) -> str:
        p_value, ci = paired_evidence(tests[b])
        return describe_comparison("in-domain fine-tuned", macro["in-domain fine-tuned"], b, macro[b], p_value, said,
                                   ci)
    deep = [m for m in ("in-domain fine-tuned", "in-domain scratch", "external validation") if m in macro]
    places = {m: against_reference(predictions, m, "in-domain histogram", profile) for m in deep}
    lines = [
        against("in-domain scratch", claim),
        against("external validation", "in-domain fine-tuning helps where the target has enough labels (NYU Long "
                "Island, RSNA); the transferred model is better on small CQ500")
        if "external validation" in macro else
        "External validation: not run (see the skipped parts for why).",
        "Reference without a deep model (in-domain window histograms + logistic regression): "
        f"{macro['in-domain histogram']:.3f}; " + ", ".join(f"{m} {place} it" for m, place in places.items())
        + (" (level: the 95% CI of the paired difference contains 0 and p ≥ 0.05)" if "level with" in places.values() else "")
        + ".",
        training,
    ]
    return _bullets(lines)


# --------------------------------------------------------------------------------------- 04 · few-shot
def fewshot_conclusion(curves: pd.DataFrame, full: pd.DataFrame, predictions: pd.DataFrame | None,
                       comparison: pd.DataFrame, profile) -> str:
    """04_fewshot (Fig. 2): pretrained against scratch at each K by the paired difference's CI and p, every
    deep model against the histogram reference on the same draws (``against_reference``), and the largest K
    against all data (paper: K = 256 comes close to full-data fine-tuning).

    ``curves``: few-shot means (task, metric, model, int ``k``, ``value``); ``full``: the all-data runs (task,
    metric, model, value); ``predictions``: every run's predictions (``model``, ``k`` empty for all data);
    ``comparison``: ``paired_comparison`` rows of pretrained against scratch with ``k`` (``"all"`` for all data)."""
    macro = curves[(curves.task == "macro") & (curves.metric == "auroc")].pivot(index="k", columns="model",
                                                                                 values="value")
    star = full[(full.task == "macro") & (full.metric == "auroc")].set_index("model")["value"]
    at_k = lambda table, k: table[pd.to_numeric(table["k"], errors="coerce") == k]  # noqa: E731 (NaN: all data)
    lines = []
    if "scratch" in macro:
        low = macro.index.min()
        evidence = {k: paired_evidence(at_k(comparison, k)) for k in macro.index}
        p_value, ci = evidence[low]
        lines.append(describe_comparison(f"pretrained at K={low}", macro.loc[low, "pretrained"],
                                         f"scratch at K={low}", macro.loc[low, "scratch"], p_value, ci=ci))
        verdicts = {k: judge_difference(macro.loc[k, "pretrained"] - macro.loc[k, "scratch"], *evidence[k])
                    for k in macro.index}
        by = {v: [k for k, w in verdicts.items() if w == v] for v in dict.fromkeys(verdicts.values())}
        lines.append(f"By the paired difference's 95% CI and p, pretrained beats scratch in macro-AUROC at K = "
                     f"{by.get('above') or 'none'} of {list(macro.index)}"
                     + "".join(f"; {word} at K = {by[v]}" for v, word in OTHER_VERDICTS.items() if v in by) + ".")
        pairs = paired_runs(predictions[predictions.model == "pretrained"], predictions[predictions.model == "scratch"])
        pairs = pairs[pairs.k != "all"]
        lines.append(f"Run by run (same task, K and draw): pretrained above scratch in {int(pairs.a_wins.sum())} of "
                     f"{len(pairs)} few-shot runs; they share one test set, so this describes, it does not test.")
    if "histogram" in macro:
        ref = ", ".join(f"K={k} " + ("n/a" if pd.isna(macro.loc[k, "histogram"]) else f"{macro.loc[k, 'histogram']:.3f}")
                        for k in macro.index)
        lines.append(f"Reference without a deep model (window histograms + logistic regression, same draws): {ref}; "
                     f"all data {star['histogram']:.3f}"
                     + (" (n/a: a K some task has no run of, too few positives)" if "n/a" in ref else "") + ".")
        runs = predictions.drop(columns="protocol", errors="ignore").rename(columns={"model": "protocol"})
        # a K with a task missing has no macro: no placing there either (it would be the other tasks' alone)
        draws = {f"at K={k}": at_k(runs, k) for k in macro.index if macro.loc[k].notna().all()}
        draws["on all data"] = runs[pd.to_numeric(runs["k"], errors="coerce").isna()]
        places: dict[str, list[str]] = {}
        for m in (m for m in ("pretrained", "scratch") if m in macro):
            for where, table in draws.items():
                if {m, "histogram"} <= set(table["protocol"]):
                    places.setdefault(against_reference(table, m, "histogram", profile), []).append(f"{m} {where}")
        if places:
            lines.append("Against that reference, by the paired difference's 95% CI and p: "
                         + "; ".join(f"{place} it: {', '.join(names)}" for place, names in sorted(places.items()))
                         + ".")
    defined = macro["pretrained"].dropna() if "pretrained" in macro else pd.Series(dtype=float)
    top = defined.index.max() if len(defined) else None
    if "pretrained" in star and top is None:
        lines.append("Pretrained: no K with a run of every task (too few positives for the K asked), so no few-shot "
                     "macro to set against all data.")
    elif "pretrained" in star:
        lines.append(f"Pretrained at K={top}: {macro.loc[top, 'pretrained']:.3f} vs all data {star['pretrained']:.3f} "
                     f"({macro.loc[top, 'pretrained'] / star['pretrained']:.1%} of it). Paper: K=256 comes close to "
                     "full-data fine-tuning.")
    lines.append(describe_stopping(predictions, profile) + " K-shot runs draw their epochs from their 2K scans, as "
                 "the paper trains few-shot \"with the same hyperparameter settings\".")
    return _bullets(lines)


# --------------------------------------------------------------------------------------- 05 · scaling
def scaling_conclusion(macro: pd.DataFrame, comparison: pd.DataFrame,
                       teacher_entropy: dict[float, float] | None = None, uniform: float | None = None) -> str:
    """05_scaling (Fig. 4): per evaluation and method, does macro-AUROC grow with the pretraining fraction (the
    encoder from the most data against the one from the least), and is DINO above each other method at each
    fraction (paper: both grow, DINO above MAE throughout), each by the paired difference's 95% CI and p
    (``judge_difference``). ``macro``: the macro rows of the summary (evaluation, method, fraction, metric, value);
    ``comparison``: ``paired_comparison`` rows with ``evaluation``, ``model_a`` and ``model_b``: ``dino`` against
    each method at each ``fraction``, and "<method> <most>%" against "<method> <least>%".
    ``teacher_entropy`` (fraction → the DINO teacher's output entropy over the last 10% of its pretraining, from
    the encoder's log) against ``uniform`` (ln K) says whether DINO learnt at all."""
    lines = []
    if teacher_entropy and uniform:
        at_uniform = all(h > 0.99 * uniform for h in teacher_entropy.values())
        lines.append("DINO's teacher at the end of its pretraining: entropy "
                     + ", ".join(f"{h:.3f} at {f:.0%}" for f, h in sorted(teacher_entropy.items()))
                     + f" of a uniform {uniform:.3f} nats"
                     + (": the same output for every scan (collapsed to uniform), so its encoder is not expected to "
                        "beat the others here (01 with method dino shows the run)." if at_uniform else "."))
    auc = macro[macro.metric == "auroc"]
    for evaluation, g in auc.groupby("evaluation"):
        tests = comparison[comparison["evaluation"] == evaluation]
        table = g.pivot(index="fraction", columns="method", values="value")
        for method in table.columns:
            v = table[method]
            if len(v) < 2:  # one encoder (a checkpoint, or one fraction with a batch of scans): no trend
                lines.append(f"{evaluation}, {method.upper()}: macro-AUROC {v.iloc[0]:.3f} at {v.index[0]:.0%} "
                             "of the pool only: no trend with pretraining data measured.")
                continue
            low, high = v.index.min(), v.index.max()
            p_value, ci = paired_evidence(tests[(tests.model_a == f"{method} {100 * high:g}%")
                                          & (tests.model_b == f"{method} {100 * low:g}%")])
            verdict = judge_difference(v[high] - v[low], p_value, ci)
            trend = {"above": "it grows with pretraining data", "below": "it FALLS with more pretraining data",
                     "tie": "it does NOT grow measurably with pretraining data (the CI contains 0, p ≥ 0.05)",
                     "mixed": "the CI and the permutation test disagree: no verdict on growth",
                     "disagree": "the CI lies against the point estimate: no verdict on growth",
                     "untested": "not tested, so no verdict on growth", "undefined": "not measurable"}[verdict]
            lines.append(f"{evaluation}, {method.upper()}: macro-AUROC {' → '.join(f'{x:.3f}' for x in v)} over "
                         f"{', '.join(f'{f:.0%}' for f in table.index)}; {high:.0%} against {low:.0%}: "
                         f"{v[high] - v[low]:+.3f}"
                         + (f", 95% CI {ci[0]:+.3f} to {ci[1]:+.3f}" if has_ci(ci) else "")
                         + (f", p = {p_value:.3g}" if p_value is not None and not pd.isna(p_value) else "")
                         + f": {trend}.")
        for other in [m for m in table.columns if m != "dino"] if "dino" in table.columns else []:
            verdicts = [judge_difference(table.loc[f, "dino"] - table.loc[f, other],
                                         *paired_evidence(tests[(tests.model_a == "dino") & (tests.model_b == other)
                                                                & (tests.fraction == f)]))
                        for f in table.index]
            others = tally(verdicts, "at")
            paper = ("paper: DINO above MAE throughout" if other == "mae" else
                     "a control the paper does not have: DINO below it means the result depends on the method")
            lines.append(f"{evaluation}, by the paired difference's 95% CI and p: DINO above {other.upper()} at "
                         f"{verdicts.count('above')} of {len(verdicts)} fractions{', ' + others if others else ''} "
                         f"({paper}).")
    return _bullets(lines)


# --------------------------------------------------------------------------------------- 06 · embeddings
def embeddings_conclusion(scanner, thickness, macro: pd.DataFrame) -> str:
    """06_embeddings (Supp. Figs. 10–13): how well the scanner and the slice-thickness bin are predicted from the
    frozen embedding (``scanner``, ``thickness``: ``downstream.embeddings.separability``'s (the folds' accuracies,
    chance, permutation p)) (paper: separable by both; separable here where p < 0.05, a verdict per attribute),
    and the spread of fine-tuned macro-AUROC over protocol groups (``macro``: one ``value`` per group; paper:
    comparable performance). A part the dataset did not allow (``interpret.parts``) is passed as ``None`` (a
    separability) or an empty ``macro`` and reported as not measured."""
    first = ("Scanner: not measured on this dataset" if scanner is None else
             f"Scanner is predictable from the frozen embedding with {scanner[0].mean():.1%} accuracy (chance "
             f"{scanner[1]:.1%}, p = {scanner[2]:.2g})")
    second = ("thickness bin: not measured" if thickness is None else
              f"thickness bin with {thickness[0].mean():.1%} (chance {thickness[1]:.1%}, p = {thickness[2]:.2g})")
    separable = {name: "not measured" if result is None else "separable" if result[2] < 0.05 else
                 "NOT separable (permutation p ≥ 0.05)"
                 for name, result in (("scanner", scanner), ("thickness", thickness))}
    verdict = ("Not tested here." if scanner is None and thickness is None else
               "Here: " + ", ".join(f"{name} {state}" for name, state in separable.items()) + ".")
    values, undefined = macro["value"].dropna(), macro[macro["value"].isna()]
    left_out = [f"{g} ({r})" for g, r in zip(undefined["group"], undefined.get("reason", []))]
    protocols = ("Fine-tuned macro-AUROC by protocol group: not measured on this dataset" if macro.empty else
                 "Fine-tuned macro-AUROC by protocol group: no group has every task" if values.empty else
                 f"Fine-tuned macro-AUROC by protocol group: only {macro.loc[values.index[0], 'group']} has one "
                 f"({values.iloc[0]:.3f}): nothing to compare" if len(values) == 1 else
                 f"Fine-tuned macro-AUROC across protocol groups ranges {values.min():.3f}–"
                 f"{values.max():.3f} (spread {values.max() - values.min():.3f})")
    if left_out:
        protocols += "; without a macro: " + "; ".join(left_out)
    return _bullets([
        f"{first}; {second}. Paper: embeddings are separable by manufacturer and slice thickness. {verdict}",
        f"{protocols}. Paper: comparable performance across scanner protocols.",
    ])


# --------------------------------------------------------------------------------------- 07 · attention
def attention_conclusion(lesion_summary: pd.DataFrame, distance: dict, uniform_distance_mm: float | None = None) -> str:
    """07_attention (Fig. 5): per task and encoder, the head's attention on the lesion against the lesion's share
    of the head (``interpret.summarize_lesion_attention``; empty when no lesions were measured), and against a
    lesion-blind map of the same encoder (the mean map of the other scans on the same lesion), which a map that
    only follows anatomy also matches: an encoder "finds the lesion" where its own maps beat that control by the
    two-sided Wilcoxon test (p < 0.05; paper: "attends to correct disease locations in the majority of cases").
    Then each encoder's last-layer attention distance (Eq. 1; ``distance``: {encoder: per-layer mean distance in
    mm}) beside what uniform attention gives on the same grid (``uniform_distance_mm``)."""
    lines, verdicts = [], {}
    for _, r in lesion_summary.iterrows():
        n = int(r["n_scans"])
        if not n or pd.isna(r["median_enrichment"]):
            lines.append(f"{r['task']}, {r['model']}: no lesion measured.")
            continue
        verdicts.setdefault(r["model"], []).append(
            judge_difference(r["median_difference_vs_control"], r["p_vs_control"]))  # the pairs' way, not the medians'
        lost = int(r.get("n_no_lesion", 0) or 0)
        lines.append(f"{r['task']}, {r['model']}: {r['attention_share']:.1%} of the head's attention on lesions that "
                     f"fill {r['chance_share']:.1%} of the head (median enrichment {r['median_enrichment']:.2f}×, "
                     f"the other scans' maps on the same lesions {r['median_control_enrichment']:.2f}×; own map "
                     f"above them in {r['frac_above_control']:.0%} of {n} scans, median paired difference "
                     f"{r['median_difference_vs_control']:+.2f}, Wilcoxon p = {r['p_vs_control']:.3g}"
                     + (f"; vs pretrained p = {r['p_vs_reference']:.3g}" if pd.notna(r["p_vs_reference"]) else "")
                     + (f"; {lost} scan{'s' * (lost != 1)} without lesion at the model's resolution" if lost else "")
                     + ").")
    for model, found in verdicts.items():
        lines.append(f"{model}: attention on the lesion beyond a lesion-blind map of the same encoder (Wilcoxon, "
                     f"p < 0.05) for {found.count('above')} of {len(found)} tasks, level with it for "
                     f"{found.count('tie')}, below it for {found.count('below')} (paper, qualitatively: 'attends to "
                     "correct disease locations in the majority of cases').")
    far = {n: d[-1] for n, d in distance.items()}
    lines.append("Mean attention distance in the last layer: " + ", ".join(f"{n} {v:.0f} mm" for n, v in far.items())
                 + (f" (uniform attention on this grid: {uniform_distance_mm:.0f} mm)"
                    if uniform_distance_mm is not None else "") + ".")
    return _bullets(lines)


# --------------------------------------------------------------------------------------- 08 · retrieval
def repeat_patients_line(gallery: pd.DataFrame, patient_disjoint: bool) -> list[str]:
    """What a retrieval did with the patients who have several scans in ``gallery`` (another series, the same
    findings): left out of their own queries' rankings (``patient_disjoint``) or, as in the paper, not."""
    per_patient = gallery["patient_id"].value_counts() if "patient_id" in gallery else pd.Series(dtype=int)
    repeat = int((per_patient > 1).sum())
    if not repeat:
        return []
    if patient_disjoint:
        return [f"Patient-disjoint: the {repeat} patients with more than one scan in the gallery had their other "
                "scans left out of each query's ranking."]
    return [f"{repeat} patients have more than one scan in the gallery (another series, the same findings); as in "
            "the paper only the query itself is left out of its ranking, so such a scan can be its top hit and "
            "raises Precision@1 without telling subtypes apart: patient_disjoint=True leaves them out."]


def grouping_line(name: str, grouping: dict[str, tuple[float, float]], k: int = 10) -> list[str]:
    """What ``name``'s embedding groups scans by: per attribute, the share of a scan's ``k`` nearest neighbours
    that have its value, and that share at random (``evaluate.neighbour_agreement``)."""
    if not grouping:
        return []
    return [f"What the {name} embedding groups scans by ({k} nearest neighbours, the scan itself left out): "
            + ", ".join(f"{attr} shared by {obs:.0%} ({chance:.0%} at random)" for attr, (obs, chance) in grouping.items())
            + "."]


def retrieval_conclusion(summary: pd.DataFrame, gallery: pd.DataFrame, subtypes: list[str],
                         comparison: pd.DataFrame | None = None, patient_disjoint: bool = False,
                         grouping: dict[str, tuple[float, float]] | None = None, grouped: str = "") -> str:
    """08_retrieval (Fig. 3): mean mAP over ``subtypes`` per encoder against a random ranking (about the
    prevalence in ``gallery``, the scans searched) and against the random-init encoder; the paper's comparison
    with other CT foundation models (+9.99% mAP over Google CT on CQ500, +2.21% on RSNA) cannot run here.
    ``summary``: ``retrieval_summary`` rows with ``model`` (``random init`` among them); ``comparison``:
    ``retrieval_comparison`` rows with ``model_a`` (each encoder, against ``random init``), whose ``mean`` row
    gives each sentence its CI and p; ``grouping`` (``neighbour_agreement`` by attribute, of the ``grouped``
    encoder) says what its embedding groups scans by."""
    mean_map = summary[(summary.metric == "map") & (summary.subtype == "mean")].set_index("model")["value"]
    prevalence = {s: pd.to_numeric(gallery[s], errors="coerce").dropna().eq(1).mean() for s in subtypes}  # known only
    lines = ["Mean mAP over subtypes: " + ", ".join(f"{m} {v:.3f}" for m, v in mean_map.items())
             + f" (a random ranking scores about the prevalence: {sum(prevalence.values()) / len(prevalence):.3f} "
             "on average)."]
    tests = ({} if comparison is None or comparison.empty else
             comparison[comparison.subtype == "mean"].set_index("model_a").to_dict("index"))
    for name in mean_map.index:
        if name != "random init":
            test = tests.get(name)
            lines.append(describe_comparison(f"{name} mAP", mean_map[name], "random-init mAP", mean_map["random init"],
                                             test["p_value"] if test else None,
                                             ci=(test["ci_low"], test["ci_high"]) if test else None))
    lines += grouping_line(grouped, grouping or {})
    lines += repeat_patients_line(gallery, patient_disjoint)
    lines.append("Paper: FM-CT retrieves better than the other CT foundation models in most cases (+9.99% mAP over "
                 "Google CT on CQ500, +2.21% on RSNA); those models are not available here.")
    return _bullets(lines)


# --------------------------------------------------------------------------------------- 09 · other encoders
def _model_comparison_lines(summary: pd.DataFrame, comparison: pd.DataFrame, paper: pd.DataFrame,
                            names: dict[str, str]) -> list[str]:
    """Each model's macro-AUROC, then each compared pair (``comparison``: ``paired_comparisons``) in one sentence
    with its CI and p, and the paper's statements about the same pair where ``names`` (our model → the paper's
    key) knows both."""
    macro = _macro_auroc(summary)
    lines = ["Macro-AUROC: " + ", ".join(f"{m} {v:.3f}" for m, v in macro.items()) + "."]
    for (a, b), test in comparison.groupby(["model_a", "model_b"], sort=False):
        if a not in macro or b not in macro:
            continue
        said = paper_statements(paper, names[a], names[b]) if a in names and b in names else ""
        p_value, ci = paired_evidence(test)
        lines.append(describe_comparison(a, macro[a], b, macro[b], p_value, said or None, ci))
    return lines


def other_encoders_conclusion(summary: pd.DataFrame | None, comparison: pd.DataFrame | None,
                              predictions: pd.DataFrame | None, *, weights: str, paper: pd.DataFrame,
                              names: dict[str, str], profile, retrieval: pd.DataFrame | None = None,
                              gallery: pd.DataFrame | None = None, subtypes: list[str] | None = None,
                              patient_disjoint: bool = False) -> str:
    """09_other_encoders (Fig. 1f, Extended Data Figs 3 and 6): what each encoder ran with (``weights``:
    ``encoders.weights_summary``), each model's macro-AUROC, FM-CT against every other encoder trained the same way
    beside the paper's numbers (Extended Data Fig. 3, its four datasets: +9.56% macro-AUROC over CT-FM, Merlin
    13.05% lower, both P < 0.001), where the runs stopped, and the mean retrieval mAP and Precision@K of each
    encoder (``retrieval``: ``retrieval_summary`` rows with ``model``) against a random ranking (about the subtypes'
    prevalence in ``gallery``). ``summary``, ``comparison`` and ``predictions`` are None where the comparison did not
    run, ``retrieval`` where retrieval did not."""
    lines = weights.splitlines()
    if summary is not None:
        lines += _model_comparison_lines(summary, comparison, paper, names)
        lines.append(describe_stopping(predictions, profile))
    if retrieval is not None:
        mean = retrieval[retrieval.subtype == "mean"]
        mean = mean.pivot(index="model", columns="metric", values="value").reindex(  # in the order of the table
            index=list(dict.fromkeys(mean["model"])), columns=list(dict.fromkeys(mean["metric"])))
        chance = np.mean([(gallery[s] == 1).mean() for s in subtypes])
        lines.append("Retrieval, mean over subtypes: " + "; ".join(
            f"{m} " + ", ".join(f"{c.replace('map', 'mAP').replace('p@', 'P@')} {v:.3f}" for c, v in row.items())
            for m, row in mean.iterrows()) + f" (a random ranking scores about the prevalence, {chance:.3f}).")
        lines += repeat_patients_line(gallery, patient_disjoint)
        lines.append("Paper: FM-CT retrieves better than CT-FM and Merlin in most cases (Fig. 3; Precision@K in "
                     "Extended Data Fig. 6).")
    return _bullets(lines)


# --------------------------------------------------------------------------------------- 10 · modelling choices
def modelling_choices_conclusion(summary: pd.DataFrame, comparison: pd.DataFrame, predictions: pd.DataFrame, *,
                                 weights: str, paper: pd.DataFrame, names: dict[str, str], profile) -> str:
    """10_modelling_choices (Extended Data Fig. 4): what each encoder ran with (``weights``), each model's
    macro-AUROC, and the 3-D ViT against DINOv3 with ABMIL, DINOv3 with mean pooling and V-JEPA 2 on the same
    input, beside the paper's relative gains (2.57%, 9.26%, 6.26% macro-AUROC over its four datasets), and where
    the runs stopped."""
    lines = weights.splitlines() + _model_comparison_lines(summary, comparison, paper, names)
    lines.append(describe_stopping(predictions, profile))
    return _bullets(lines)


# --------------------------------------------------------------------------------------- 11 · efficiency
def _exponent(s: pd.Series, ratio: pd.Series) -> float:
    """k of ratio ∝ s^k, the least-squares slope on log-log axes (NaN with fewer than two distinct s)."""
    keep = ratio.notna() & (ratio > 0)
    if s[keep].nunique() < 2:
        return float("nan")
    return float(np.polyfit(np.log(s[keep].astype(float)), np.log(ratio[keep].astype(float)), 1)[0])


def efficiency_conclusion(table: pd.DataFrame, cost: pd.DataFrame, *, stand_ins: bool, reference: str = "vit") -> str:
    """11_efficiency (Extended Data Fig. 5; Supplementary Fig. 2 and Section E): the machine; per mode, where the
    3-D ViT (``reference``) stands in throughput and peak memory against the other architectures (the other ViT
    patch sizes left out), beside the paper's claim of a "substantial advantage ... in terms of both model throughput
    and memory cost" (no numbers printed), judged on throughput alone where peak memory was not measured (NaN);
    the cost of smaller patches: how the measured forward time, the analytic FLOPs and attention's alone grow with
    the reduction factor s (log-log slopes; attention's below 6 where the cls token is a sizeable share of the
    tokens) against the paper's O(s⁶).

    ``table``: ``efficiency.relative_to`` of ``efficiency.measure``; ``cost``: ``efficiency.patch_cost`` rows with
    ``measured_ratio`` (forward time over the profile's patch; NaN where not measured); ``stand_ins``: the other
    encoders are randomly initialised small stand-ins (toy, demo), not the published architectures."""
    first = table.iloc[0]
    lines = [f"Measured on {first['machine']} ({first['dtype']}, torch {first['torch']}), batch {first['batch_size']}, "
             f"median of {first['repeats']} steps; peak memory: {first['memory']}. The paper's experiments ran on one "
             "80 GB NVIDIA A100 (PyTorch 2.4.1); its Extended Data Fig. 5 prints no numbers."]
    ref_label = table.loc[table.architecture == reference, "model"].iloc[0]
    others = table[~table.architecture.str.startswith("vit")]
    verdicts, unmeasured = [], False
    for mode, rows in others.groupby("mode", sort=False):
        ref = table[(table.architecture == reference) & (table["mode"] == mode)].iloc[0]
        speed = ", ".join(f"{r.model} {r.throughput_ratio:.2f}×" for r in rows.itertuples())
        faster = (rows.throughput_ratio < 1).all()
        if pd.notna(ref.peak_memory_mb) and rows.memory_ratio.notna().all():
            memory = ", ".join(f"{r.model} {r.memory_ratio:.2f}×" for r in rows.itertuples())
            lighter = (rows.memory_ratio > 1).all()
            verdicts.append(faster and lighter)
            lines.append(f"{mode}: {ref_label} {ref.scans_per_s:.3g} scans/s, {ref.peak_memory_mb:.3g} MiB; the "
                         f"others' throughput relative to it {speed}; their memory {memory}: the 3-D ViT is "
                         f"{'the fastest' if faster else 'NOT the fastest'} and "
                         f"{'the lightest' if lighter else 'NOT the lightest'}.")
        else:
            verdicts.append(faster)
            unmeasured = True
            lines.append(f"{mode}: {ref_label} {ref.scans_per_s:.3g} scans/s; the others' throughput relative to it "
                         f"{speed}; memory not measured: the 3-D ViT is "
                         f"{'the fastest' if faster else 'NOT the fastest'}.")
    if verdicts:
        claim = (("reproduced" if all(verdicts) else "NOT reproduced") + " on this machine"
                 + (" for throughput (memory not measured)" if unmeasured else ""))
        caveat = (": the other encoders here are randomly initialised stand-ins shrunk to the profile's size, so this "
                  "compares those stand-ins, not the published models (the paper profile builds those)"
                  if stand_ins else "")
        lines.append("Paper: the 3-D ViT has a substantial advantage over the other architectures in both throughput "
                     f"and memory (Extended Data Fig. 5): {claim}{caveat}.")
    measured = cost.dropna(subset=["measured_ratio"])
    k_time, k_flops = _exponent(measured["s"], measured["measured_ratio"]), _exponent(cost["s"], cost["flops_ratio"])
    base = cost.loc[cost["s"] == 1].iloc[0]
    share = base["attention_flops"] / base["flops"]
    # attention ∝ T² with T = patches + the cls token (and registers): s^6 only as the patches outnumber those
    k_attention = _exponent(cost["s"], cost["attention_flops"] / base["attention_flops"])
    lines.append(f"Smaller patches: over s = {cost['s'].min():.2g}–{cost['s'].max():.2g} the analytic FLOPs grow as "
                 f"s^{k_flops:.1f} and the measured forward time as s^{k_time:.1f} (attention's FLOPs as "
                 f"s^{k_attention:.1f}, → s^6 as the token count grows; the patch tokens as s^3). Paper: O(s^6) "
                 f"(Supplementary Section E), the rate once attention dominates; at the profile's patch attention is "
                 f"{share:.0%} of the FLOPs.")
    return _bullets(lines)


# --------------------------------------------------------------------------------------- 12 · patch size
def patch_size_conclusion(summary: pd.DataFrame, comparison: pd.DataFrame, predictions: pd.DataFrame,
                          cost: pd.DataFrame, *, fine: str, coarse: str, profile) -> str:
    """12_patch_size (Supplementary Fig. 2): the encoder with the profile's patches (``fine``) against the same with
    coarser ones (``coarse``), pretrained and trained the same way: macro-AUROC difference with its CI and p beside
    the paper's finding (512 patch tokens beat 216; no AUCs printed), what each costs (``cost``: rows of
    ``efficiency.relative_to(..., fine)`` with ``tokens`` and ``flops``, the analytic forward+backward FLOPs) and
    where the runs stopped."""
    macro = _macro_auroc(summary)
    test = comparison[(comparison.model_a == fine) & (comparison.model_b == coarse)]
    lines = ["Macro-AUROC: " + ", ".join(f"{m} {v:.3f}" for m, v in macro.items()) + "."]
    if {fine, coarse} <= set(macro.index) and len(test):
        p_value, ci = paired_evidence(test)
        lines.append(describe_comparison(fine, macro[fine], coarse, macro[coarse], p_value,
                                         "512 patch tokens (12³) outperformed 216 (16³), Supplementary Fig. 2", ci))
    by = cost.set_index(["architecture", "mode"])
    ratio = lambda column, mode="forward+backward": by.loc[("coarse", mode), column] / by.loc[("fine", mode), column]  # noqa: E731
    lines.append(f"Cost of {coarse} relative to {fine}: tokens {ratio('tokens'):.2f}×, forward+backward FLOPs "
                 f"{ratio('flops'):.2f}× (analytic), measured forward+backward time "
                 f"{ratio('seconds'):.2f}× and peak memory {ratio('peak_memory_mb'):.2f}× on "
                 f"{cost['machine'].iloc[0]}. Paper: 216 against 512 tokens (0.42×), the cost growing as O(s^6) in "
                 "the patch-size reduction factor s.")
    lines.append(describe_stopping(predictions, profile))
    return _bullets(lines)

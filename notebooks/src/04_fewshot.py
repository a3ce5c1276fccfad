# %% [markdown]
# # 04 · Few-shot learning (Fig. 2)
#
# K positive and K negative training scans per task, K = 8 … 256, five resamples each, full fine-tuning
# from the foundation model (paper, Methods "Few-shot"); stars mark fine-tuning on all training data.
# The paper: near full-data performance at K = 256; IVH on RSNA above 0.90 AUC at K = 8. We add the same
# few-shot runs from random initialisation, which answers the question the paper's claim rests on: does
# pretraining help most when labels are scarce? And a reference without a deep model (not in the paper),
# logistic regression on the histogram of each windowed channel on the same draws (`fmct_lib.downstream.histogram`),
# says how much of each task the input intensities carry at each K: where it is at chance, no two models
# can be told apart on this test set; where a ViT stays below it, the ViT is undertrained.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae | vicreg; default: the profile's (paper, toy: dino; demo: vicreg)
checkpoint = None
preset = "paper"         # paper | reference (the authors' weights' preprocessing; needs checkpoint)
tasks = None            # default: the dataset's tasks; K runs where a task has K positive and K negative training scans
shots = None            # default: the profile's (paper: 8, 16, 32, 64, 128, 256)
resamples = None        # default: the profile's (paper: 5)
compare_scratch = True  # also train from random initialisation on the same K-shot draws
compare_histogram = True  # a reference without a deep model on the same draws: window histograms + logistic regression
site = "internal"
n_seeds = None          # training seeds of the all-data runs (the stars), as in 02 (default: the profile's; demo 3)

# %%
from fmct_lib import pipeline
from fmct_lib.report import comparisons, conclusions, naming, paper, plots, run_records

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, site=site, preset=preset,
                   checkpoint=checkpoint)
P, scans, method = S.profile, S.scans, S.method
n_seeds = pipeline.count("n_seeds", n_seeds, P.finetune_seeds)  # checked before any work
compare_scratch = pipeline.flag("compare_scratch", compare_scratch)
compare_histogram = pipeline.flag("compare_histogram", compare_histogram)

# %% [markdown]
# ## What this dataset allows
#
# Training and scoring a classifier needs a task with positive and negative scans in the training and the test
# split, and a K-shot draw needs K positive and K negative training scans: a task runs at the K it has them
# for (the pairs left out are noted); without any the notebook stops here and says so. A task name that is not
# a label column of the scan table is refused here, naming the dataset's tasks.

# %%
from fmct_lib.data.cache import read_rejects
from fmct_lib.interpret.parts import fewshot_parts

shots = list(P.fewshot_shots) if shots is None else shots  # checked by fewshot_parts (K ≥ 1, each once)
resamples = pipeline.count("resamples", resamples, P.fewshot_resamples)
# the scans the cache rejected are left out of every run, so they are not counted as shots either
parts, shots_of = fewshot_parts(dataset, S.labelled, shots, tasks, rejected=read_rejects(dataset, S.spec)["scan_id"])
print(parts)

# %%
if parts.runs("few-shot"):
    import dataclasses

    import pandas as pd

    tasks = [t for t in S.tasks(tasks) if t in parts.tasks]
    encoder = S.encoder()
    # every model sees the same K-shot draws (resample r: seed + r); the tasks that run the same K run together
    groups = {}
    for task in tasks:
        groups.setdefault(shots_of[task], []).append(task)

    def fewshot(protocol, start, seeds):
        tables = [S.fewshot(group, protocol, start, n_seeds=seeds, shots=list(ks), resamples=resamples)
                  for ks, group in groups.items()]
        return pd.concat([t for t in tables if len(t)] or [pd.DataFrame(columns=["k"])], ignore_index=True)

    frames = [fewshot("finetune", encoder, n_seeds).assign(model="pretrained")]
    if compare_scratch:
        frames.append(fewshot("scratch", None, n_seeds).assign(model="scratch"))
    if compare_histogram:  # deterministic: one run per draw and one on all data
        frames.append(fewshot("histogram", None, 1).assign(model="histogram"))
    predictions = pd.concat(frames, ignore_index=True)
    if not predictions["k"].notna().any():  # every K-shot run was skipped (their warnings say why): no curve to draw
        parts = dataclasses.replace(parts, reasons={"few-shot": "every K-shot run was skipped (see the warnings "
                                                                "above): no few-shot curve to draw"})
        print(parts)
    else:
        display(predictions.groupby(["model", "k"], dropna=False)["seed"].nunique())

# %%
if parts.runs("few-shot"):
    from fmct_lib.evaluate import fewshot_summary, paired_comparison

    summary = pd.concat([fewshot_summary(g.drop(columns="model")).assign(model=m)
                         for m, g in predictions.groupby("model")], ignore_index=True)
    curves = summary[summary.k != "all"].astype({"k": int}).rename(columns={"mean": "value"})
    full = summary[summary.k == "all"].rename(columns={"mean": "value"})
    # pretrained against scratch at each K (and on all data), on the same draws: a draw is paired by its seed
    pairs = predictions.assign(k=predictions["k"].astype("string").fillna("all"))
    # a K some task has no run of compares the other tasks alone: no macro there (tasks=)
    comparison = pd.concat([paired_comparison(g[g.model == "pretrained"], g[g.model == "scratch"], n_boot=P.n_bootstrap,
                                              n_perm=P.n_permutations, seed=seed, tasks=tasks)
                            .assign(model_a="pretrained", model_b="scratch", k=k)
                            for k, g in pairs.groupby("k") if {"pretrained", "scratch"} <= set(g.model)]
                           or [pd.DataFrame(columns=["task", "metric", "model_a", "model_b", "k", "p_value"])])
    display(summary.pivot_table(index=["task", "k"], columns=["metric", "model"], values="mean", sort=False).round(3))

# %%
if parts.runs("few-shot"):
    from fmct_lib.evaluate import label_prevalence

    reported = paper.paper_values_for("fig2", naming.paper_dataset(dataset, site if S.site_filter else None), "auroc")
    prevalence = label_prevalence(predictions)  # of each task's test scans: the AP of a random ranking
    title = (f"{dataset}: few-shot fine-tuning, mean and 95% CI over {resamples} resample{'s' * (resamples != 1)}; "
             f"stars: all training data ({n_seeds} training seed{'s' * (n_seeds != 1)})")
    for metric, label in (("auroc", "AUROC"), ("ap", "AP")):
        fig = plots.fewshot_curves(curves[curves.metric == metric], full=full[full.metric == metric], ylabel=label,
                                   paper=reported if metric == "auroc" else None, prevalence=prevalence, title=title,
                                   profile=P.name, training=plots.training_rule(P))
        name = S.figure_name(f"fig2_fewshot_{metric}")
        comparisons.save_comparison(name, comparisons.with_paper(comparison[comparison.metric == metric], reported,
                                                                 {"pretrained": "fewshot"}), root=S.figures)
        run_records.save_runs(name, predictions, root=S.figures)  # where each model stopped, and why
        plots.save_figure(fig, name, summary[summary.metric == metric],
                          {"dataset": dataset, "profile": P.to_dict(), "site": site, "method": method,
                           "encoder": str(encoder), "preset": preset, "spec": S.spec.hash, "tasks": tasks,
                           "shots": shots, "shots_per_task": {t: list(shots_of[t]) for t in tasks},
                           "resamples": resamples,
                           "compare_scratch": compare_scratch, "compare_histogram": compare_histogram, "seed": seed,
                           "n_seeds": n_seeds,
                           "test_prevalence": prevalence}, root=S.figures)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
if parts.runs("few-shot"):
    print(conclusions.fewshot_conclusion(curves, full, predictions, comparison, P))
else:
    print("Nothing measured on this dataset.")
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

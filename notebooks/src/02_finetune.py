# %% [markdown]
# # 02 · Fine-tuned vs scratch vs probes (Fig. 1e)
#
# The paper's central comparison: per task, a ViT fine-tuned from the foundation model against the same
# ViT trained from random initialisation (with a hyper-parameter sweep), and linear / attentive probes
# on the frozen encoder. Macro-AUC 0.852 vs 0.734 on NYU Langone (+16.07%, P < 0.001). On the synthetic
# cohort the internal site plays NYU Langone; the paper's numbers are drawn beside ours as a reference,
# not as a target. Where the profile asks for several training seeds (demo: 3), every model is trained
# once per seed and reported as the mean over its seeds (dots: the single runs); the CI and the test then
# resample and permute the scans of all seeds together. The `histogram` bar is a reference without a deep
# model (not in the paper): logistic regression on the histogram of each windowed input channel
# (`fmct_lib.downstream.histogram`); a ViT below it has not learned what the input intensities alone give away.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae | vicreg; default: the profile's (paper, toy: dino; demo: vicreg)
checkpoint = None        # or an encoder checkpoint (ours or the authors' released weights)
preset = "paper"         # paper | reference (the authors' weights' preprocessing; needs checkpoint)
tasks = None             # default: the dataset's tasks with positives in the test split
protocols = ["scratch", "finetune", "linear", "attentive", "histogram"]
site = "internal"        # synthetic cohort: train and test on this site (ignored without a site column)
n_seeds = None           # training seeds seed, seed+1, … of every model (default: the profile's; paper 1, demo 3)

# %%
from fmct_lib import pipeline
from fmct_lib.report import comparisons, conclusions, naming, paper, plots, run_records

protocols = pipeline.check_protocols(protocols)  # one name or a list; each once, each a protocol
S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, site=site, preset=preset,
                   checkpoint=checkpoint)
P, scans, method = S.profile, S.scans, S.method
n_seeds = pipeline.count("n_seeds", n_seeds, P.finetune_seeds)  # checked before any work

# %% [markdown]
# ## What this dataset allows
#
# Training and scoring a classifier needs a task with positive and negative scans in the training and the test
# split; without one the notebook stops here and says so.

# %%
from fmct_lib.interpret.parts import task_parts

parts = task_parts("02_finetune", dataset, S.labelled, tasks)
print(parts)

# %%
if parts.runs("comparison"):
    tasks = [t for t in S.tasks(tasks) if t in parts.tasks]
    encoder = S.encoder()
    predictions = S.sweep(tasks, protocols, encoder, n_seeds=n_seeds)
    seeds = sorted(predictions["seed"].unique().tolist())
    display(predictions.groupby(["protocol", "seed"])["scan_id"].nunique())

# %%
if parts.runs("comparison"):
    import pandas as pd
    from fmct_lib.evaluate import bootstrap_ci, paired_comparison, task_metrics

    summary = pd.concat([bootstrap_ci(g, n_boot=P.n_bootstrap, seed=seed).assign(model=protocol)
                         for protocol, g in predictions.groupby("protocol")], ignore_index=True)
    common = set.intersection(*(set(g["task"]) for _, g in predictions.groupby("protocol")))
    pick = lambda m: predictions[(predictions.protocol == m) & predictions.task.isin(common)]  # noqa: E731
    baselines = [b for b in protocols if b != "finetune"] if "finetune" in protocols else []
    comparison = pd.concat([paired_comparison(pick("finetune"), pick(b), n_boot=P.n_bootstrap, n_perm=P.n_permutations,
                                              seed=seed).assign(model_a="finetune", model_b=b) for b in baselines]
                           or [pd.DataFrame(columns=["task", "metric", "model_a", "model_b", "p_value"])])
    tests = {b: comparison[comparison.model_b == b] for b in baselines}  # fine-tuned against each baseline
    runs = task_metrics(predictions, by=("protocol", "seed", "task")).rename(columns={"protocol": "model"})
    runs = pd.concat([runs, runs.groupby(["model", "seed"], as_index=False)[["auroc", "ap"]].mean()
                      .assign(task="macro")])
    display(summary.pivot_table(index="task", columns=["metric", "model"], values="value").round(3))

# %%
if parts.runs("comparison"):
    from fmct_lib.evaluate import label_prevalence

    paper_name = naming.paper_dataset(dataset, site if S.site_filter else None)
    known = paper.paper_values_for("fig1e", paper_name)  # AUROCs (drawn on the bars); gain, P value, n (legend lines)
    reported = known[known.metric == "auroc"].reset_index(drop=True)
    order = [t for t in tasks if t in set(summary.task)] + ["macro"]
    prevalence = label_prevalence(predictions)  # of each task's test scans: the AP of a random ranking
    title = (f"{dataset}{f' ({site} site)' if S.site_filter else ''}: test split, 95% bootstrap CI "
             f"(n = {predictions.scan_id.nunique()} scans)"
             + (f", mean of {len(seeds)} training seeds" if len(seeds) > 1 else ""))
    top = dict(title=title, profile=P.name, training=plots.training_rule(P), paper=reported,
               paper_notes=known[known.metric != "auroc"])  # on the AUROC panel
    fig, axes = plots.print_subplots(2, 1, height_mm=120)
    for ax, metric, label in zip(axes, ("auroc", "ap"), ("AUROC", "AP")):
        plots.metric_bars(summary[summary.metric == metric], x="task", hue="model", order=order, hue_order=protocols,
                          ylabel=label, prevalence=prevalence, ax=ax,
                          points=runs.rename(columns={metric: "value"}) if len(seeds) > 1 else None,
                          **(top if metric == "auroc" else {}))
    name = S.figure_name("fig1e_finetune_vs_scratch")
    comparisons.save_comparison(name, comparisons.with_paper(comparison, known), root=S.figures)
    run_records.save_runs(name, predictions, root=S.figures)  # where each model stopped, and why
    plots.save_figure(fig, name, summary,
                      {"dataset": dataset, "profile": P.to_dict(), "site": site, "method": method,
                       "encoder": str(encoder),
                       "preset": preset, "spec": S.spec.hash,
                       "tasks": tasks, "protocols": protocols, "seed": seed, "seeds": seeds,
                       "paper_counterpart": paper_name, "test_prevalence": prevalence}, root=S.figures)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
if parts.runs("comparison"):
    print(conclusions.finetune_conclusion(summary, tests, runs, predictions, paper=reported, paper_name=paper_name,
                                          protocols=protocols, profile=P))
else:
    print("Nothing measured on this dataset.")
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

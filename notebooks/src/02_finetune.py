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
# (`fmct_lib.baselines`); a ViT below it has not learned what the input intensities alone give away.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae; default: the profile's (paper, toy: dino; demo: mae)
checkpoint = None        # or an encoder checkpoint (ours or the authors' released weights)
tasks = None             # default: the dataset's tasks with positives in the test split
protocols = ["scratch", "finetune", "linear", "attentive", "histogram"]
site = "internal"        # synthetic cohort: train and test on this site (ignored without a site column)
finetune_epochs = None   # epochs of every model, scratch included (default: the profile's; demo: 8, i.e. 400 steps)
n_seeds = None           # training seeds seed, seed+1, … of every model (default: the profile's; paper 1, demo 3)

# %%
from fmct_lib import plots, reproduce

P, scans = reproduce.start(dataset, profile, run_dir, finetune_epochs)
method = method or P.pretrain_method

# %%
from fmct_lib.downstream import run_sweep

site_filter = {"site": site} if site and "site" in scans else None
labelled = scans if site_filter is None else scans[scans["site"] == site]
tasks = reproduce.choose_tasks(labelled, tasks, dataset, P)
encoder = reproduce.ensure_pretrained(method, dataset, P, seed=seed, checkpoint=checkpoint)
n_seeds = n_seeds or P.finetune_seeds
predictions = run_sweep(dataset, tasks, protocols, encoder, P, seed=seed, n_seeds=n_seeds, train_filter=site_filter)
seeds = sorted(predictions["seed"].unique().tolist())
predictions.groupby(["protocol", "seed"])["scan_id"].nunique()

# %%
import pandas as pd
from fmct_lib.evaluate import bootstrap_ci, paired_permutation_test, paired_runs, task_metrics

summary = pd.concat([bootstrap_ci(g, n_boot=P.n_bootstrap, seed=seed).assign(model=protocol)
                     for protocol, g in predictions.groupby("protocol")], ignore_index=True)
common = set.intersection(*(set(g["task"]) for _, g in predictions.groupby("protocol")))
paired = lambda a, b: paired_permutation_test(  # noqa: E731
    predictions[(predictions.protocol == a) & predictions.task.isin(common)],
    predictions[(predictions.protocol == b) & predictions.task.isin(common)], n_perm=P.n_permutations, seed=seed)
tests = {b: paired("finetune", b) for b in protocols if b != "finetune" and "finetune" in protocols}
runs = task_metrics(predictions, by=("protocol", "seed", "task")).rename(columns={"protocol": "model"})
runs = pd.concat([runs, runs.groupby(["model", "seed"], as_index=False)[["auroc", "ap"]].mean().assign(task="macro")])
summary.pivot_table(index="task", columns=["metric", "model"], values="value").round(3)

# %%
import matplotlib.pyplot as plt

paper_name = reproduce.paper_dataset(dataset, site if site_filter else None)
paper = plots.paper_values_for("fig1e", paper_name, "auroc")
order = [t for t in tasks if t in set(summary.task)] + ["macro"]
fig, axes = plt.subplots(2, 1, figsize=(max(6, 0.9 * len(order) + 3), 6.5))
for ax, metric, label in zip(axes, ("auroc", "ap"), ("AUROC", "AP")):
    plots.metric_bars(summary[summary.metric == metric], x="task", hue="model", order=order, hue_order=protocols,
                      ylabel=label, paper=paper if metric == "auroc" else None,
                      points=runs.rename(columns={metric: "value"}) if len(seeds) > 1 else None, ax=ax)
axes[0].set_title(f"{dataset}{f' ({site} site)' if site_filter else ''}: test split, 95% bootstrap CI "
                  f"(n = {predictions.scan_id.nunique()} scans)"
                  + (f", mean of {len(seeds)} training seeds" if len(seeds) > 1 else ""), fontsize=9)
fig.tight_layout()
plots.save_figure(fig, reproduce.figure_name("fig1e_finetune_vs_scratch", dataset, P), summary,
                  {"dataset": dataset, "profile": P.to_dict(), "site": site, "method": method, "encoder": str(encoder),
                   "tasks": tasks, "protocols": protocols, "seed": seed, "seeds": seeds, "paper_counterpart": paper_name})

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
macro = summary[(summary.task == "macro") & (summary.metric == "auroc")].set_index("model")["value"]
paper_macro = paper[paper.task == "macro"].set_index("model")["value"]
lines = []
if {"finetune", "scratch"} <= set(macro.index):
    p = tests["scratch"].query("task == 'macro' and metric == 'auroc'")["p_value"].item()
    reported = plots.paper_values_for("fig1e", paper_name, "relative_improvement_pct")["value"]
    claim = (f"{paper_macro['finetune']:.3f} vs {paper_macro['scratch']:.3f} ({reported.item():+.2f}%, P < 0.001) on "
             f"{plots.PAPER_DATASET_NAMES.get(paper_name, paper_name)}" if len(paper_macro) == 2 else None)
    lines.append(reproduce.describe_comparison("fine-tuned macro-AUC", macro["finetune"], "scratch",
                                               macro["scratch"], p, claim))
for probe in ("linear", "attentive"):
    if probe in macro and "finetune" in macro:
        p = tests[probe].query("task == 'macro' and metric == 'auroc'")["p_value"].item()
        lines.append(reproduce.describe_comparison("fine-tuned", macro["finetune"], f"{probe} probe", macro[probe], p,
                                                   "probing comes close to full fine-tuning (Supp. Fig. 6/8)"))
if "histogram" in macro:
    deep = [m for m in ("finetune", "scratch", "linear", "attentive") if m in macro]
    lines.append("Reference without a deep model (window histograms + logistic regression): "
                 f"{macro['histogram']:.3f}; " + ", ".join(f"{m} {'above' if macro[m] > macro['histogram'] else 'below'} it" for m in deep) + ".")
per_task = summary[(summary.metric == "auroc") & (summary.task != "macro")].pivot(index="task", columns="model", values="value")
if {"finetune", "scratch"} <= set(per_task.columns):
    wins = int((per_task["finetune"] > per_task["scratch"]).sum())
    lines.append(f"Fine-tuned beats scratch on {wins} of {len(per_task)} tasks (paper: all 10).")
if len(seeds) > 1:
    spread = runs[runs.task == "macro"].pivot(index="seed", columns="model", values="auroc")
    lines.append("Macro-AUC by training seed " + str(seeds) + ": " + "; ".join(
        f"{m} " + " / ".join(f"{v:.3f}" for v in spread[m]) for m in protocols if m in spread)
        + ". Values above are seed means; the CI and P resample the test scans, not the seeds.")
    if {"finetune", "scratch"} <= set(spread.columns):
        pairs = paired_runs(predictions[predictions.protocol == "finetune"], predictions[predictions.protocol == "scratch"],
                            by=("task", "seed"))
        lines.append(f"Run by run (same task and seed): fine-tuned above scratch in {int(pairs.a_wins.sum())} of "
                     f"{len(pairs)}.")
lines.append(f"Every model trained {P.finetune_epochs} epochs × {P.finetune_subset} balanced draws = "
             f"{P.finetune_steps} steps "
             f"of batch {P.finetune_batch_size} (paper: at most 10 epochs × 5,000 draws / batch 16 = 3,130 steps).")
print("\n".join("- " + l for l in lines))

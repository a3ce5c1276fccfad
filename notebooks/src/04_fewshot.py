# %% [markdown]
# # 04 · Few-shot learning (Fig. 2)
#
# K positive and K negative training scans per task, K = 8 … 256, five resamples each, full fine-tuning
# from the foundation model (paper, Methods "Few-shot"); stars mark fine-tuning on all training data.
# The paper: near full-data performance at K = 256; IVH on RSNA above 0.90 AUC at K = 8. We add the same
# few-shot runs from random initialisation, which answers the question the paper's claim rests on: does
# pretraining help most when labels are scarce? And a reference without a deep model (not in the paper),
# logistic regression on the histogram of each windowed channel on the same draws (`fmct_lib.baselines`),
# says how much of each task the input intensities carry at each K: where it is at chance, no two models
# can be told apart on this test set; where a ViT stays below it, the ViT is undertrained.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae; default: the profile's (paper, toy: dino; demo: mae)
checkpoint = None
tasks = None            # default: the dataset's tasks with at least max(shots) training positives
shots = None            # default: the profile's (paper: 8, 16, 32, 64, 128, 256)
resamples = None        # default: the profile's (paper: 5)
compare_scratch = True  # also train from random initialisation on the same K-shot draws
compare_histogram = True  # a reference without a deep model on the same draws: window histograms + logistic regression
site = "internal"
finetune_epochs = None  # epochs of every model, scratch included (default: the profile's; demo: 8, i.e. 400 steps)
n_seeds = None          # training seeds of the all-data runs (the stars), as in 02 (default: the profile's; demo 3)

# %%
from fmct_lib import plots, reproduce

P, scans = reproduce.start(dataset, profile, run_dir, finetune_epochs)
method = method or P.pretrain_method

# %%
import pandas as pd
from fmct_lib.downstream import fewshot_sweep

shots = list(shots or P.fewshot_shots)
resamples = resamples or P.fewshot_resamples
site_filter = {"site": site} if site and "site" in scans else None
labelled = scans if site_filter is None else scans[scans["site"] == site]
tasks = reproduce.choose_tasks(labelled, tasks, dataset, P)
encoder = reproduce.ensure_pretrained(method, dataset, P, seed=seed, checkpoint=checkpoint)
n_seeds = n_seeds or P.finetune_seeds  # the stars: the all-data runs of 02, reused when it ran
# every model sees the same K-shot draws (resample r: seed + r); runs that lack K positives are skipped
sweep = dict(shots=shots, resamples=resamples, seed=seed, train_filter=site_filter)
frames = [fewshot_sweep(dataset, tasks, "finetune", encoder, P, n_seeds=n_seeds, **sweep).assign(model="pretrained")]
if compare_scratch:
    frames.append(fewshot_sweep(dataset, tasks, "scratch", None, P, n_seeds=n_seeds, **sweep).assign(model="scratch"))
if compare_histogram:  # deterministic: one run per draw and one on all data
    frames.append(fewshot_sweep(dataset, tasks, "histogram", None, P, n_seeds=1, **sweep).assign(model="histogram"))
predictions = pd.concat(frames, ignore_index=True)
predictions.groupby(["model", "k"], dropna=False)["seed"].nunique()

# %%
from fmct_lib.evaluate import fewshot_summary, paired_runs

summary = pd.concat([fewshot_summary(g.drop(columns="model")).assign(model=m)
                     for m, g in predictions.groupby("model")], ignore_index=True)
curves = summary[summary.k != "all"].astype({"k": int}).rename(columns={"mean": "value"})
full = summary[summary.k == "all"].rename(columns={"mean": "value"})
summary.pivot_table(index=["task", "k"], columns=["metric", "model"], values="mean", sort=False).round(3)

# %%
paper = plots.paper_values_for("fig2", reproduce.paper_dataset(dataset, site if site_filter else None), "auroc")
figures = {}
for metric, label in (("auroc", "AUROC"), ("ap", "AP")):
    fig = plots.fewshot_curves(curves[curves.metric == metric], full=full[full.metric == metric], ylabel=label,
                               paper=paper if metric == "auroc" else None)
    fig.suptitle(f"{dataset}: few-shot fine-tuning, mean and 95% CI over {resamples} resample{'s' * (resamples != 1)}; "
                 f"stars: all training data ({n_seeds} training seed{'s' * (n_seeds != 1)})",
                 fontsize=9, y=1.02)
    name = reproduce.figure_name(f"fig2_fewshot_{metric}", dataset, P)
    plots.save_figure(fig, name, summary[summary.metric == metric],
                      {"dataset": dataset, "profile": P.to_dict(), "site": site, "method": method,
                       "encoder": str(encoder), "tasks": tasks, "shots": shots, "resamples": resamples,
                       "compare_scratch": compare_scratch, "seed": seed, "n_seeds": n_seeds})

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
macro = curves[(curves.task == "macro") & (curves.metric == "auroc")].pivot(index="k", columns="model", values="value")
star = full[(full.task == "macro") & (full.metric == "auroc")].set_index("model")["value"]
lines = []
if "scratch" in macro:
    low = macro.index.min()
    wins = [k for k in macro.index if macro.loc[k, "pretrained"] > macro.loc[k, "scratch"]]
    lines.append(reproduce.describe_comparison(f"pretrained at K={low}", macro.loc[low, "pretrained"],
                                               f"scratch at K={low}", macro.loc[low, "scratch"]))
    lines.append(f"Pretrained beats scratch in macro-AUROC at K = {wins or 'none'} of {list(macro.index)}.")
    pairs = paired_runs(predictions[predictions.model == "pretrained"], predictions[predictions.model == "scratch"])
    pairs = pairs[pairs.k != "all"]
    lines.append(f"Run by run (same task, K and draw): pretrained above scratch in {int(pairs.a_wins.sum())} of "
                 f"{len(pairs)} few-shot runs; they share one test set, so this describes, it does not test.")
if "histogram" in macro:
    ref = ", ".join(f"K={k} {macro.loc[k, 'histogram']:.3f}" for k in macro.index)
    lines.append(f"Reference without a deep model (window histograms + logistic regression, same draws): {ref}; "
                 f"all data {star['histogram']:.3f}.")
    deep = [m for m in ("pretrained", "scratch") if m in macro]
    below = [f"{m} at K={k}" for m in deep for k in macro.index if macro.loc[k, m] < macro.loc[k, "histogram"]]
    below += [f"{m} on all data" for m in deep if m in star and star[m] < star["histogram"]]
    lines.append(f"Below that reference: {', '.join(below) or 'none'}.")
top = macro.index.max()
if "pretrained" in star:
    lines.append(f"Pretrained at K={top}: {macro.loc[top, 'pretrained']:.3f} vs all data {star['pretrained']:.3f} "
                 f"({macro.loc[top, 'pretrained'] / star['pretrained']:.1%} of it). Paper: K=256 comes close to "
                 "full-data fine-tuning.")
lines.append(f"Every model trained {P.finetune_epochs} epochs × {P.finetune_subset} balanced draws = "
             f"{P.finetune_steps} steps "
             f"(K-shot runs draw them from their 2K scans), as the paper trains few-shot \"with the same "
             "hyperparameter settings\".")
print("\n".join("- " + l for l in lines))

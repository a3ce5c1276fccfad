# %% [markdown]
# # 03 · External validation vs in-domain fine-tuning (Fig. 1e bottom rows, Fig. 1f–g)
#
# Two ways to use the foundation model on another hospital's data (paper, Results): take the classifier
# fine-tuned on the internal site as-is (**external validation**), or fine-tune on the new site's own
# training split (**in-domain fine-tuning**), compared with a scratch model trained there. Paper, NYU
# Long Island: in-domain fine-tuned macro-AUC 0.904 vs scratch 0.748 (+20.86%); external validation
# close to in-domain where the new site has many labels, better where it has few (CQ500).
#
# On the synthetic cohort the source is the internal site and the target the external site (another
# scanner mix and prevalence). With real data, set `target_dataset` (e.g. `dataset="rsna"`,
# `target_dataset="cq500"`). As in 02, every model is trained with the profile's training seeds (demo: 3)
# and reported as their mean. `in-domain histogram` is the reference without a deep model of 02 (not in the
# paper), trained on the target's training split: how much of each task its input intensities carry.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae | vicreg; default: the profile's (paper, toy: dino; demo: vicreg)
checkpoint = None
preset = "paper"         # paper | reference (the authors' weights' preprocessing; needs checkpoint)
tasks = None
source_site = "internal"   # synthetic: the site the transferred model is trained on (also with a target_dataset)
target_site = "external"   # synthetic: the site it is tested on (and fine-tuned on, in-domain); unused with a
                           # target_dataset
target_dataset = None      # real data: test (and fine-tune in-domain) on all of another dataset
n_seeds = None             # training seeds seed, seed+1, … of every model (default: the profile's; paper 1, demo 3)

# %%
from fmct_lib import pipeline
from fmct_lib.report import comparisons, conclusions, naming, paper, plots, run_records

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, preset=preset,
                   checkpoint=checkpoint)
P, scans, method = S.profile, S.scans, S.method
n_seeds = pipeline.count("n_seeds", n_seeds, P.finetune_seeds)  # checked before any work
target_dataset = target_dataset or dataset
target_scans = scans if target_dataset == dataset else S.other(target_dataset)

# %% [markdown]
# ## What this dataset allows
#
# External validation needs a source and a target (two sites of the dataset, or a `target_dataset`) and a task
# with positive and negative scans in the source's training split and the target's test split: a target with
# test labels only (a small external set) is validated on. The in-domain models need a task with positive and
# negative scans in the target's training and test split.

# %%
import pandas as pd
from fmct_lib.interpret.parts import transfer_parts

# checked before any work (a typo failed after the in-domain models had trained); another target_dataset is read whole
source, target = pipeline.transfer_sites(dataset, scans, target_dataset, source_site, target_site)
has_sites = target is not None  # two sites of one dataset to transfer between
source_rows = scans[scans["site"] == source_site] if source else scans
target_rows = target_scans[target_scans["site"] == target_site] if target else target_scans
parts = transfer_parts(dataset, target_rows, source_rows=source_rows, has_sites=has_sites,
                       target_dataset=target_dataset, tasks=tasks)
print(parts)

# %%
runs = {}
if parts.runs("external validation") or parts.runs("in-domain"):
    tasks = [t for t in S.tasks(tasks, rows=target_rows)  # the tasks either part runs on, in the study's order
             if t in parts.tasks_of("external validation") + parts.tasks_of("in-domain")]
    encoder = S.encoder()
if parts.runs("external validation"):  # beside the in-domain models, on their tasks: one macro for all
    transferred = [t for t in tasks if t in parts.tasks_of("external validation")
                   and (not parts.runs("in-domain") or t in parts.tasks_of("in-domain"))]
    runs["external validation"] = S.sweep(transferred, ["finetune"], encoder, n_seeds=n_seeds, train_filter=source,
                                          eval_dataset=target_dataset, eval_filter=target)
if parts.runs("in-domain"):
    in_domain = [t for t in tasks if t in parts.tasks_of("in-domain")]
    runs.update({
        "in-domain fine-tuned": S.sweep(in_domain, ["finetune"], encoder, n_seeds=n_seeds, dataset=target_dataset,
                                        train_filter=target),
        "in-domain scratch": S.sweep(in_domain, ["scratch"], encoder, n_seeds=n_seeds, dataset=target_dataset,
                                     train_filter=target),
        "in-domain histogram": S.sweep(in_domain, ["histogram"], None, n_seeds=n_seeds, dataset=target_dataset,
                                       train_filter=target),
    })
{name: len(p) for name, p in runs.items()}

# %%
from fmct_lib.evaluate import bootstrap_ci, paired_comparison

# in-domain fine-tuned against each other model; without in-domain models, external validation has no comparison
baselines = [b for b in ("external validation", "in-domain scratch") if b in runs and "in-domain fine-tuned" in runs]
comparison = None
if runs:
    summary = pd.concat([bootstrap_ci(p, n_boot=P.n_bootstrap, seed=seed).assign(model=name)
                         for name, p in runs.items() if len(p)], ignore_index=True)
    common = set.intersection(*(set(p["task"]) for p in runs.values()))
    pick = lambda name: runs[name][runs[name].task.isin(common)]  # noqa: E731
    if baselines:
        comparison = pd.concat([paired_comparison(pick("in-domain fine-tuned"), pick(b), n_boot=P.n_bootstrap,
                                                  n_perm=P.n_permutations, seed=seed)
                                .assign(model_a="in-domain fine-tuned", model_b=b) for b in baselines])
    tests = {b: comparison[comparison.model_b == b] for b in baselines}
    predictions = pd.concat([p.assign(protocol=name) for name, p in runs.items() if len(p)], ignore_index=True)
    display(summary.pivot_table(index="task", columns=["metric", "model"], values="value").round(3))

# %%
paper_name = naming.paper_dataset(target_dataset, target_site if has_sites else None)
known = paper.paper_values_for(None, paper_name)
known = known[known.figure.isin(["fig1e", "fig1g"])]  # AUROCs (drawn on the bars); gain, P value, n (legend lines)
reported = known[known.metric == "auroc"].reset_index(drop=True)
reported = reported.assign(model=reported["model"].map({"finetune": "in-domain fine-tuned", "scratch": "in-domain scratch"}))
if runs:
    order = [t for t in tasks if t in common] + ["macro"]
    title = (f"test on {target_dataset}{f' ({target_site} site)' if has_sites else ''}; "
             + (f"transferred model trained on {dataset}{f' ({source_site})' if source else ''}"
                if "external validation" in runs else "in-domain models only (no transfer: see the skipped parts)")
             + (f"; mean of {n_seeds} training seeds" if n_seeds > 1 else ""))
    fig, ax = plots.print_subplots(height_mm=70)  # two columns wide: the legend lists the paper's gain, P and n
    plots.metric_bars(summary[summary.metric == "auroc"], x="task", hue="model", order=order, hue_order=list(runs),
                      paper=reported, paper_notes=known[known.metric != "auroc"], title=title, profile=P.name,
                      training=plots.training_rule(P), ax=ax)
    if target:  # two sites of the dataset: named where they are not internal to external (a figure of their own)
        sites = f"{source_site}-to-{target_site}" if (source_site, target_site) != ("internal", "external") else ""
    else:  # another target dataset: the source's site named where it is not internal
        sites = f"from-{source_site}" if source and source_site != "internal" else ""
    name = S.figure_name("fig1fg_transfer" + (f"_to_{target_dataset}" if target_dataset != dataset else ""), sites,
                         site=False)
    if comparison is not None:
        comparisons.save_comparison(name, comparisons.with_paper(comparison, known, {
            "in-domain fine-tuned": "finetune", "in-domain scratch": "scratch"}), root=S.figures)
    run_records.save_runs(name, predictions, root=S.figures)  # where each model stopped, and why
    plots.save_figure(fig, name, summary,
                      {"dataset": dataset, "target_dataset": target_dataset,  # the sites applied (None: all)
                       "source_site": source_site if source else None, "target_site": target_site if target else None,
                       "profile": P.to_dict(), "method": method, "encoder": str(encoder),
                       "preset": preset, "spec": S.spec.hash, "tasks": tasks, "seed": seed, "n_seeds": n_seeds,
                       "paper_counterpart": paper_name, "skipped": parts.skipped}, root=S.figures)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.transfer_conclusion(summary, tests, predictions, paper=reported, paper_name=paper_name,
                                      target_rows=target_rows, profile=P)
      if runs else "Nothing measured on this dataset.")
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

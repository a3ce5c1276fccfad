# %% [markdown]
# # 05 · Scaling the pretraining data, DINO vs MAE (Fig. 4)
#
# The paper pretrains on 10%, 30% and 100% of its data with DINO and with MAE and finds that downstream
# performance grows with the pretraining data for both, with DINO above MAE (Results, "Scaling up
# pretraining data"; Methods). Here: the same nested patient subsamples of the pretraining pool, each
# encoder evaluated by the same downstream protocol on the internal test split and, without any
# fine-tuning on it, on the external site. VICReg, a control that is not in the paper, tells whether a
# difference comes from DINO's sensitivity to small batches (`fmct_lib/train/methods/vicreg.py`).

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
methods = ["dino", "mae", "vicreg"]   # dino | mae | vicreg (the control; not in the paper)
fractions = [0.1, 0.3, 1.0]
protocol = "linear"      # downstream protocol per encoder: linear | attentive | finetune (paper: fine-tuning)
tasks = None
site = "internal"
external_site = None     # e.g. "external": also test the internal-trained probes on that site (synthetic only)
checkpoint = None        # or one encoder checkpoint: no pretraining (no fractions to compare), its probes only
preset = "paper"         # paper | reference (the authors' weights' preprocessing; needs checkpoint)

# %%
from fmct_lib import pipeline
from fmct_lib.report import comparisons, conclusions, plots, run_records

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, site=site, preset=preset, checkpoint=checkpoint)
P, scans = S.profile, S.scans
pipeline.check_choices(methods=None if checkpoint else methods, protocols=[protocol],
                       site=(external_site, dataset, scans) if external_site else None)

# %% [markdown]
# ## What this dataset allows
#
# Pretraining needs at least one batch of scans in the pretraining pool at a fraction (fractions with fewer are
# left out); the probes need a task with positive and negative scans in the training and the test split.

# %%
from fmct_lib.interpret.parts import scaling_parts

parts, fractions = scaling_parts(dataset, scans, fractions, P.pretrain_batch_size, checkpoint=checkpoint, seed=seed,
                                 tasks=tasks)
print(parts)

# %%
import pandas as pd

has_sites = S.site_filter is not None
evaluations = {"internal test": None}
if has_sites and external_site and external_site in set(scans["site"]):
    evaluations["external test"] = {"site": external_site}
rows = []
if parts.runs("probes"):
    tasks = [t for t in S.tasks(tasks) if t in parts.tasks]
    encoders = ({("checkpoint", 1.0): S.encoder()} if checkpoint else
                {(method, fraction): S.encoder(method, fraction=fraction)
                 for method in methods for fraction in fractions})
    for (method, fraction), encoder in encoders.items():
        for evaluation, eval_filter in evaluations.items():
            preds = S.sweep(tasks, [protocol], encoder, eval_filter=eval_filter or S.site_filter, progress=False)
            rows.append(preds.assign(method=method, fraction=fraction, evaluation=evaluation))
    # whether DINO learnt: its teacher's output entropy at the end of pretraining, from each encoder's log
    from fmct_lib.train.release import final_signal
    teacher = {f: final_signal(encoder.parent, "teacher_entropy") for (m, f), encoder in encoders.items() if m == "dino"}
    teacher = {f: h for f, h in teacher.items() if h is not None}

# %%
from fmct_lib.evaluate import bootstrap_ci, paired_comparison

if rows:
    predictions = pd.concat(rows, ignore_index=True)
    summary = pd.concat([bootstrap_ci(g.drop(columns=["method", "fraction", "evaluation"]), n_boot=P.n_bootstrap,
                                      seed=seed).assign(method=m, fraction=f, evaluation=e)
                         for (m, f, e), g in predictions.groupby(["method", "fraction", "evaluation"])],
                        ignore_index=True)
    macro = summary[summary.task == "macro"].assign(percent=lambda d: 100 * d.fraction)
    # DINO against every other method at every fraction, on the same test scans (the paper: DINO above MAE)
    grouped = {key: g.drop(columns=["method", "fraction", "evaluation"])
               for key, g in predictions.groupby(["method", "fraction", "evaluation"])}
    comparison = pd.concat([paired_comparison(grouped["dino", f, e], grouped[other, f, e], n_boot=P.n_bootstrap,
                                              n_perm=P.n_permutations, seed=seed)
                            .assign(model_a="dino", model_b=other, fraction=f, evaluation=e)
                            for (m, f, e) in grouped if m == "dino"
                            for other in methods if other != "dino" and (other, f, e) in grouped]
                           or [pd.DataFrame(columns=["task", "metric", "model_a", "model_b", "fraction", "evaluation",
                                                     "p_value"])])
    # each method's encoder from the most pretraining data against the one from the least (the paper: more is better)
    low, high = min(f for _, f, _ in grouped), max(f for _, f, _ in grouped)
    more_data = [paired_comparison(grouped[m, high, e], grouped[m, low, e], n_boot=P.n_bootstrap,
                                   n_perm=P.n_permutations, seed=seed)
                 .assign(model_a=f"{m} {100 * high:g}%", model_b=f"{m} {100 * low:g}%", fraction=high, evaluation=e)
                 for (m, f, e) in grouped if f == high and high > low and (m, low, e) in grouped]
    comparison = pd.concat([comparison, *more_data], ignore_index=True)
    display(macro.pivot_table(index=["evaluation", "percent"], columns=["metric", "method"], values="value").round(3))

# %%
for metric, label in (("auroc", "macro-AUROC"), ("ap", "macro-AP")) if rows else ():
    fig = plots.band_lines(macro[macro.metric == metric], x="percent", hue="method", facet="evaluation",
                           xlabel="pretraining data (%)", ylabel=label, logx=True, profile=P.name,
                           title=f"{dataset}: {protocol} on encoders pretrained on part of the pool (95% bootstrap CI)",
                           training=plots.training_rule(P))
    name = S.figure_name(f"fig4_scaling_{metric}")
    comparisons.save_comparison(name, comparison[comparison.metric == metric], root=S.figures)
    run_records.save_runs(name, predictions, root=S.figures)  # where each model stopped, and why
    plots.save_figure(fig, name, summary[summary.metric == metric],
                      {"dataset": dataset, "profile": P.to_dict(), "methods": ["checkpoint"] if checkpoint else methods,
                       "fractions": [1.0] if checkpoint else fractions,
                       "protocol": protocol, "preset": S.spec.name, "spec": S.spec.hash, "tasks": tasks, "site": site,
                       "checkpoint": checkpoint, "seed": seed, "skipped": parts.skipped}, root=S.figures)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
import math

print(conclusions.scaling_conclusion(macro, comparison, teacher, math.log(P.dino_out_dim)) if rows
      else "Nothing measured on this dataset.")
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

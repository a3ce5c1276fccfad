# %% [markdown]
# # 12 · Patch size: 512 against 216 tokens (Supplementary Fig. 2)
#
# The paper splits the 96³ input into 512 patches of 12³ and reports that this "outperformed a version using 216
# patches of size 16 × 16 × 16", at a cost that grows as O(s⁶) in the patch-size reduction factor s (Methods, "Model
# architecture"; the arXiv version adds that both were pretrained with MAE). Here the same pipeline runs twice: the
# profile's encoder, and the same encoder with coarser patches (`patch_size`), each pretrained by the profile's
# recipe (`method`) and trained per task by the one convergence rule (02), on the same tasks, scans and seeds; then
# the difference with its 95% bootstrap CI and paired permutation p, and what each encoder costs on this machine
# (`fmct_lib.models.efficiency`; 11 draws the whole curve).
#
# **The second patch size.** By default its grid is 3/4 of the profile's per side, so the token counts compare as
# the paper's 512 to 216 (`config.patch_variant`): paper 16³ patches (216 tokens). The demo input, 32³, does not
# divide into 3 patches per side, so its coarser encoder reads 33³ inputs in patches of 11³ (27 against 64 tokens,
# the paper's ratio); the same field of view with slightly more voxels, so if anything the coarser encoder gains;
# toy: 18³ in patches of 6³. The variant is a profile of its own (`<profile>-p<patch>`, e.g. `demo-p11`): its cache,
# pretraining run and downstream runs never mix with the profile's. Both encoders are the released ones
# (`make pretrain` releases the default variant beside the others) unless `FMCT_PRETRAIN=1`; another `patch_size`
# is pretrained here.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None            # pretraining of both encoders: dino | mae | vicreg; default: the profile's (demo: vicreg)
patch_size = None        # the coarser encoder's patch; default: 3/4 of the profile's grid per side (paper 16, demo 11)
protocol = "finetune"    # how each encoder is trained per task: finetune (the paper's) | linear | attentive
tasks = None             # default: the dataset's tasks with positives in the test split
site = "internal"        # synthetic cohort: train and test on this site (ignored without a site column)
n_seeds = None           # training seeds of every model (default: the profile's; paper 1, demo 3)

# %%
from fmct_lib import pipeline
from fmct_lib.config import coarser_variant
from fmct_lib.report import comparisons, conclusions, paper, plots, run_records

pipeline.check_choices(protocols=[protocol])
S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, site=site)
P, method = S.profile, S.method
Q = coarser_variant(P, patch_size)
C = pipeline.start(dataset, Q, run_dir=run_dir, seed=seed, method=method, site=site)
fine, coarse = f"patch {P.patch_size}", f"patch {Q.patch_size}"
for name, p in ((fine, P), (coarse, Q)):
    print(f"{name}: profile {p.name}, input {p.input_size}³, {(p.input_size // p.patch_size) ** 3} patch tokens, "
          f"local crops {p.local_input_size}³")

# %% [markdown]
# ## What this dataset allows
#
# Training and scoring a classifier needs a task with positive and negative scans in the training and the test
# split; without one the notebook stops here and says so.

# %%
from fmct_lib.interpret.parts import task_parts

parts = task_parts("12_patch_size", dataset, S.labelled, tasks)
print(parts)

# %% [markdown]
# ## Both encoders, pretrained and trained the same way

# %%
if parts.runs("comparison"):
    import pandas as pd
    from fmct_lib.evaluate import bootstrap_ci
    from fmct_lib.report.encoders import paired_comparisons

    tasks = [t for t in S.tasks(tasks) if t in parts.tasks]
    n_seeds = pipeline.count("n_seeds", n_seeds, P.finetune_seeds)  # checked before the encoders are built
    encoders = {fine: S.encoder(), coarse: C.encoder()}
    predictions = pd.concat([study.sweep(tasks, [protocol], encoders[name], n_seeds=n_seeds).assign(model=name)
                             for name, study in ((fine, S), (coarse, C))], ignore_index=True)
    summary = pd.concat([bootstrap_ci(g, n_boot=P.n_bootstrap, seed=seed).assign(model=m)
                         for m, g in predictions.groupby("model", sort=False)], ignore_index=True)
    comparison = paired_comparisons(predictions, [(fine, coarse)], P.n_bootstrap, P.n_permutations, seed)
    display(summary.pivot_table(index="task", columns=["metric", "model"], values="value", sort=False).round(3))

# %% [markdown]
# ## What each costs
#
# A training step's forward+backward (and a forward) of both encoders on this machine at the fine-tuning batch, and
# their analytic FLOPs per scan.

# %%
from fmct_lib.models import efficiency

cost = efficiency.relative_to(efficiency.measure(
    [efficiency.vit_candidate(P.model, "fine", fine), efficiency.vit_candidate(Q.model, "coarse", coarse)],
    batch_size=P.finetune_batch_size, repeats=3, seed=seed), "fine")
analytic = {"fine": P.model, "coarse": Q.model}
cost = cost.assign(tokens=[(analytic[a].img_size // analytic[a].patch_size) ** 3 for a in cost.architecture],
                   flops=[efficiency.vit_flops(analytic[a], backward=m != "forward")["total"]
                          for a, m in zip(cost.architecture, cost["mode"])])
print(f"{cost.machine[0]}, {cost.dtype[0]}, batch {P.finetune_batch_size}; peak memory: {cost.memory[0]}")
display(cost[["model", "mode", "tokens", "flops", "seconds", "scans_per_s", "peak_memory_mb", "throughput_ratio",
              "memory_ratio"]].round(4))

# %%
if parts.runs("comparison"):
    from fmct_lib.evaluate import label_prevalence

    known = paper.paper_values_for("supp_fig2")
    order = [t for t in tasks if t in set(summary.task)] + ["macro"]
    prevalence = label_prevalence(predictions)
    title = (f"{dataset}{f' ({site} site)' if S.site_filter else ''}: test split, 95% bootstrap CI "
             f"(n = {predictions.scan_id.nunique()} scans), mean of {n_seeds} training seed(s); {protocol}, "
             f"{method} pretraining")
    fig, axes = plots.print_subplots(3, 1, height_mm=170)
    for ax, metric, label in zip(axes, ("auroc", "ap"), ("AUROC", "AP")):
        plots.metric_bars(summary[summary.metric == metric], x="task", hue="model", order=order,
                          hue_order=[fine, coarse], ylabel=label, prevalence=prevalence, ax=ax,
                          **(dict(title=title, profile=P.name, training=plots.training_rule(P))
                             if metric == "auroc" else {}))
    measures = {"tokens": "patch tokens", "flops": "FLOPs (analytic)", "seconds": "time (measured)",
                "peak_memory_mb": "peak memory (measured)"}
    train = cost[cost["mode"] == "forward+backward"].set_index("architecture")
    drawn = pd.DataFrame([{"measure": label, "model": train.loc[a, "model"],
                           "value": train.loc[a, column] / train.loc["fine", column]}
                          for column, label in measures.items() for a in ("fine", "coarse")])
    plots.metric_bars(drawn, x="measure", hue="model", ylabel=f"forward+backward, relative to {fine}",
                      hue_order=[fine, coarse], ylim=None, ax=axes[2], paper_notes=known)
    name = S.figure_name("suppfig2_patch_size", f"p{Q.patch_size}" if patch_size else "",  # a run of its own
                         protocol if protocol != "finetune" else "")
    names = {fine: "fmct", coarse: "fmct_p16"}
    comparisons.save_comparison(name, comparisons.with_paper(comparison, known, names), root=S.figures)
    run_records.save_runs(name, predictions, root=S.figures)  # where each model stopped, and why
    paths = plots.save_figure(fig, name, pd.concat([summary.assign(panel="performance"),
                                                    drawn.assign(panel="cost")], ignore_index=True),
                              {"dataset": dataset, "profile": P.to_dict(), "coarse_profile": Q.to_dict(),
                               "site": site, "method": method, "protocol": protocol,
                               "encoders": {k: str(v) for k, v in encoders.items()}, "tasks": tasks, "seed": seed,
                               "n_seeds": n_seeds, "machine": cost.machine[0], "test_prevalence": prevalence},
                              root=S.figures)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
if parts.runs("comparison"):
    print(conclusions.patch_size_conclusion(summary, comparison, predictions, cost, fine=fine, coarse=coarse,
                                            profile=P))
else:
    print("Nothing measured on this dataset.")
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

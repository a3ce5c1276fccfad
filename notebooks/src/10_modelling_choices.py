# %% [markdown]
# # 10 · The 3-D ViT against other ways of modelling a CT (Extended Data Fig. 4)
#
# Is a 3-D ViT the right way to model a head CT? The paper compares it, at the same input (96³; both 2-D and
# video models take any resolution), with three alternatives (Results, "Comparison to alternative modelling
# choices"): DINOv3, a 2-D foundation model, on the axial slices with attention-based multiple-instance pooling
# over them (ABMIL), the same with the slices' mean, and V-JEPA 2, a video foundation model reading the slices
# as frames. Over its four datasets the 3-D model's macro-AUC is 2.57%, 9.26% and 6.26% above them.
#
# Here the three alternatives are frozen and their pooling heads trained on their cached tokens
# (`report.encoders.MODELLING_CHOICES`: ABMIL, a linear head on the slices' mean, an attentive probe for V-JEPA 2),
# by the convergence rule of 02, on the same tasks, scans and seeds as the 3-D ViT, which is fine-tuned as the
# paper's model (`vit_protocol`; `linear` or `attentive` compares frozen with frozen).
#
# **Weights.** `encoders` maps DINOv3 and V-JEPA 2 to their local model folders (docs/other_encoders.md); without
# one a model is **randomly initialised**, at the toy and demo profiles shrunk to the profile's size, and the
# printed line, the figure's title and the conclusion say so: the comparison is then with an untrained network.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None            # 3-D ViT: dino | mae | vicreg; default: the profile's (paper, toy: dino; demo: vicreg)
checkpoint = None        # or a 3-D ViT checkpoint (ours or the authors' released weights)
preset = "paper"         # paper | reference (the authors' weights' preprocessing; needs checkpoint)
encoders = {"dinov3": None, "vjepa2": None}  # name: local model folder (None: random init)
vit_protocol = "finetune"   # how the 3-D ViT is trained: finetune (the paper's), linear | attentive (frozen)
tasks = None             # default: the dataset's tasks with positives in the test split
site = "internal"        # synthetic cohort: train and test on this site (ignored without a site column)
n_seeds = None           # training seeds of every model (default: the profile's; paper 1, demo 3)

# %%
from fmct_lib import pipeline
from fmct_lib.report import comparisons, conclusions, encoders as compare, paper, plots, run_records

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, site=site, preset=preset,
                   checkpoint=checkpoint)
P, scans, method = S.profile, S.scans, S.method
n_seeds = pipeline.count("n_seeds", n_seeds, P.finetune_seeds)  # checked before any work
pipeline.check_choices(protocols=[vit_protocol])
encoders = pipeline.check_encoders(encoders, known=list(compare.CHOICE_ENCODERS))  # names and weights, first

# %% [markdown]
# ## What this dataset allows
#
# Training and scoring a classifier needs a task with positive and negative scans in the training and the test
# split; without one the notebook stops here and says so.

# %%
from fmct_lib.interpret.parts import task_parts

parts = task_parts("10_modelling_choices", dataset, S.labelled, tasks)
print(parts)

# %% [markdown]
# ## The models, and what each encoder runs with

# %%
if parts.runs("comparison"):
    refs = {name: S.external(name, encoders.get(name)) for name in ("dinov3", "vjepa2")}
    used = {"3D ViT": S.encoder(), **{ref.model_name: ref for ref in refs.values()}}
    statement, short = compare.weights_summary(used)
    print(statement)
    models = {"3D ViT": (used["3D ViT"], vit_protocol),
              **{label: (refs[name], protocol) for label, (name, protocol) in compare.MODELLING_CHOICES.items()}}
    print("\n".join(f"{label}: {getattr(enc, 'model_name', '3-D ViT')}, protocol {protocol}"
                    for label, (enc, protocol) in models.items()))

# %%
if parts.runs("comparison"):
    import pandas as pd
    from fmct_lib.evaluate import bootstrap_ci

    tasks = [t for t in S.tasks(tasks) if t in parts.tasks]
    predictions = S.sweep_models(models, tasks, n_seeds=n_seeds)
    summary = pd.concat([bootstrap_ci(g, n_boot=P.n_bootstrap, seed=seed).assign(model=m)
                         for m, g in predictions.groupby("model", sort=False)], ignore_index=True)
    comparison = compare.paired_comparisons(predictions, [("3D ViT", m) for m in models if m != "3D ViT"],
                                            P.n_bootstrap, P.n_permutations, seed)
    display(summary.pivot_table(index="task", columns=["metric", "model"], values="value", sort=False).round(3))

# %%
if parts.runs("comparison"):
    from fmct_lib.evaluate import label_prevalence

    known = paper.paper_values_for("ed_fig4")  # the relative gains over its four datasets
    names = {m: compare.PAPER_KEYS[m] for m in models}
    order = [t for t in tasks if t in set(summary.task)] + ["macro"]
    prevalence = label_prevalence(predictions)
    title = (f"{dataset}{f' ({site} site)' if S.site_filter else ''}: test split, 95% bootstrap CI "
             f"(n = {predictions.scan_id.nunique()} scans), mean of {n_seeds} training seed(s); 3D ViT "
             f"{vit_protocol}, the others frozen; {short}")
    fig, axes = plots.print_subplots(2, 1, height_mm=120)
    heading = dict(title=title, profile=P.name, training=plots.training_rule(P))  # on the AUROC panel
    for ax, metric, label in zip(axes, ("auroc", "ap"), ("AUROC", "AP")):
        plots.metric_bars(summary[summary.metric == metric], x="task", hue="model", order=order, hue_order=list(models),
                          ylabel=label, prevalence=prevalence, ax=ax, paper_notes=compare.paper_notes(known, metric),
                          **(heading if metric == "auroc" else {}))
    name = S.figure_name("edfig4_modelling_choices", compare.encoders_tag(encoders, compare.CHOICE_ENCODERS))
    comparisons.save_comparison(name, comparisons.with_paper(comparison, known, names), root=S.figures)
    run_records.save_runs(name, predictions, root=S.figures)  # where each model stopped, and why
    plots.save_figure(fig, name, summary,
                      {"dataset": dataset, "profile": P.to_dict(), "site": site, "method": method, "preset": preset,
                       "encoders": {k: v.to_dict() if hasattr(v, "to_dict") else str(v) for k, v in used.items()},
                       "models": {m: protocol for m, (_, protocol) in models.items()}, "weights": statement,
                       "tasks": tasks, "seed": seed, "n_seeds": n_seeds, "test_prevalence": prevalence}, root=S.figures)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
if parts.runs("comparison"):
    print(conclusions.modelling_choices_conclusion(summary, comparison, predictions, weights=statement, names=names,
                                                   paper=known, profile=P))
else:
    print("Nothing measured on this dataset.")
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

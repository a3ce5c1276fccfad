# %% [markdown]
# # 09 · FM-CT against other foundation models (Fig. 1f, Extended Data Figs 3 and 6)
#
# The paper compares its 3-D ViT with other CT foundation models: CT-FM (a SegResNet encoder pretrained on
# 148,000 CTs, head CT among them) and Merlin (an I3D ResNet-152 pretrained on abdominal CT with reports), each
# fine-tuned on the same tasks (Fig. 1f, Extended Data Fig. 3: over its four datasets FM-CT's macro-AUC is 9.56%
# above CT-FM's, Merlin's 13.05% below FM-CT's, both P < 0.001), beside a convolutional baseline, ResNet-50-3D
# (Methods, "Computing hardware and software"), and in volume-to-volume retrieval (Fig. 3; Precision@K in
# Extended Data Fig. 6). Here every encoder is probed (linear, attentive) and, with `"finetune"` in `protocols`,
# fine-tuned, the same way, by the convergence rule of 02, on the same tasks, scans and training seeds; each
# reads its own preprocessing (CT-FM's and Merlin's chains, one channel each, as the paper used them; the paper
# chain for ResNet-50-3D). Fine-tuning is off by default: the 3-D CNNs take 0.5-2 s per step on a CPU (hours
# for the demo's runs), and without published weights it would only train an architecture from scratch.
#
# **Weights.** fmct never downloads weights: `encoders` maps each model to its local file or folder
# (docs/other_encoders.md says where they are published). An encoder given none is **randomly initialised**, and
# at the toy and demo profiles shrunk to the profile's size; the printed line, the figures' titles and the
# conclusion say which. Then the comparison is FM-CT against an untrained architecture (for ResNet-50-3D the
# paper's own baseline: it trains it from scratch), not against that model. Google's CT Foundation model runs
# only behind a web API and is left out.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None            # FM-CT: dino | mae | vicreg; default: the profile's (paper, toy: dino; demo: vicreg)
checkpoint = None        # or an FM-CT checkpoint (ours or the authors' released weights)
preset = "paper"         # FM-CT's preprocessing: paper | reference (the authors' weights'; needs checkpoint)
encoders = {"ctfm": None, "merlin": None, "resnet3d": None}  # name: local weights file or folder (None: random init)
tasks = None             # default: the dataset's tasks with positives in the test split
protocols = ["linear", "attentive"]  # + "finetune" (Fig. 1f's protocol): hours for the 3-D CNNs on a CPU; use a GPU
subtypes = None   # retrieval; None: the paper's for RSNA (4) and CQ500 (6), else IPH, IVH, SDH, EDH, SAH
ks = [1, 5, 10]
patient_disjoint = False # True: a query's ranking leaves out its patient's other scans (paper: only itself)
site = "internal"        # synthetic cohort: the comparison's training and test site (retrieval reads every site)
n_seeds = None           # training seeds of every model (default: the profile's; paper 1, demo 3)

# %%
from fmct_lib import pipeline
from fmct_lib.report import comparisons, conclusions, encoders as compare, naming, paper, plots, run_records

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, site=site, preset=preset,
                   checkpoint=checkpoint)
P, scans, method = S.profile, S.scans, S.method
n_seeds = pipeline.count("n_seeds", n_seeds, P.finetune_seeds)  # checked before any work
protocols = pipeline.check_protocols(protocols)  # one name or a list; each once
pipeline.check_choices(protocols=protocols)      # each a way to train an encoder's classifier
encoders = pipeline.check_encoders(encoders)     # known names, weights that exist
patient_disjoint = pipeline.flag("patient_disjoint", patient_disjoint)
encoders_named = compare.encoders_tag(encoders)  # in the figures' names where not the defaults (hashed once)

# %% [markdown]
# ## What this dataset allows
#
# The comparison needs a task with positive and negative scans in the training and the test split; retrieval a
# haemorrhage subtype with at least two positive scans.

# %%
from fmct_lib.evaluate import check_ks
from fmct_lib.interpret.parts import other_encoder_parts

gallery = scans[scans["site"] != "pretrain"] if "site" in scans else scans
parts, retrievable = other_encoder_parts(dataset, S.labelled, gallery, subtypes, tasks)
subtypes = list(retrievable)
ks = check_ks(ks, len(gallery))
print(parts)

# %% [markdown]
# ## The encoders, and what each runs with

# %%
import pandas as pd

summary = comparison = predictions = retrieval = None  # what runs below fills
if parts.runs("comparison") or parts.runs("retrieval"):
    used = {"FM-CT": S.encoder()}
    for name, weights in encoders.items():
        ref = S.external(name, weights)
        used[ref.model_name] = ref
    # the paper compares the fine-tuned models
    names = {f"{e} finetune": compare.PAPER_KEYS[e] for e in used if e in compare.PAPER_KEYS}
    statement, short = compare.weights_summary(used)
    print(statement)

# %%
if parts.runs("comparison"):
    from fmct_lib.evaluate import bootstrap_ci

    tasks = [t for t in S.tasks(tasks) if t in parts.tasks]
    models = compare.model_grid(used, protocols)
    predictions = S.sweep_models(models, tasks, n_seeds=n_seeds)
    summary = pd.concat([bootstrap_ci(g, n_boot=P.n_bootstrap, seed=seed).assign(model=m)
                         for m, g in predictions.groupby("model", sort=False)], ignore_index=True)
    pairs = [(f"FM-CT {p}", f"{e} {p}") for p in protocols for e in used if e != "FM-CT"]  # as the paper: Merlin first
    pairs = compare.as_the_paper_orders(pairs, names, paper.paper_values_for("ed_fig3"))
    comparison = compare.paired_comparisons(predictions, pairs, P.n_bootstrap, P.n_permutations, seed)
    display(summary.pivot_table(index="task", columns=["metric", "model"], values="value", sort=False).round(3))

# %%
if parts.runs("comparison"):
    from fmct_lib.evaluate import label_prevalence

    known = paper.paper_values_for("ed_fig3")  # the relative gains and P values over its four datasets
    order = [t for t in tasks if t in set(summary.task)] + ["macro"]
    prevalence = label_prevalence(predictions)
    fig, axes = plots.print_subplots(len(protocols), 2, height_mm=12 + 50 * len(protocols), squeeze=False)
    for row, protocol in zip(axes, protocols):
        hue_order = [f"{e} {protocol}" for e in used]
        for ax, metric, label in zip(row, ("auroc", "ap"), ("AUROC", "AP")):
            plots.metric_bars(summary[(summary.metric == metric) & summary.model.isin(hue_order)], x="task",
                              hue="model", order=order, hue_order=hue_order, ylabel=f"{label} ({protocol})",
                              prevalence=prevalence, ax=ax,
                              paper_notes=compare.paper_notes(known, metric) if protocol == "finetune" else None)
    title = (f"{dataset}{f' ({site} site)' if S.site_filter else ''}: test split, 95% bootstrap CI "
             f"(n = {predictions.scan_id.nunique()} scans), mean of {n_seeds} training seed(s); {short}")
    fig.suptitle(plots.figure_title(title, profile=P.name, training=plots.training_rule(P)), x=0.0, ha="left")
    name = S.figure_name("fig1f_other_encoders", encoders_named,  # other choices: their own figure
                         "+".join(protocols) if protocols != compare.DEFAULT_PROTOCOLS else "")
    comparisons.save_comparison(name, comparisons.with_paper(comparison, known, names), root=S.figures)
    run_records.save_runs(name, predictions, root=S.figures)  # where each model stopped, and why
    plots.save_figure(fig, name, summary,
                      {"dataset": dataset, "profile": P.to_dict(), "site": site, "method": method, "preset": preset,
                       "encoders": {k: v.to_dict() if hasattr(v, "to_dict") else str(v) for k, v in used.items()},
                       "weights": statement, "tasks": tasks, "protocols": protocols, "seed": seed,
                       "n_seeds": n_seeds, "test_prevalence": prevalence, "skipped": parts.skipped}, root=S.figures)

# %% [markdown]
# ## Retrieval with each encoder's embedding (Fig. 3, Extended Data Fig. 6)
#
# As 08: L2-normalised embeddings (each encoder's global feature), every positive scan of a subtype a query once
# against the whole gallery minus itself; mAP and Precision@K with 95% CIs over the queries.

# %%
if parts.runs("retrieval"):
    tables = {label: S.embed(enc, scans=gallery, progress=False) for label, enc in used.items()}
    per_query, retrieval = compare.retrieval_by_model(tables, subtypes, ks, P.n_bootstrap, seed, patient_disjoint)
    display(retrieval.pivot_table(index="subtype", columns=["metric", "model"], values="value", sort=False).round(3))

# %%
if parts.runs("retrieval"):
    metrics = ["map"] + [f"p@{k}" for k in ks]
    notes = paper.paper_values_for("fig3", naming.paper_dataset(dataset))  # the paper's gain over Google CT, its n
    fig, axes = plots.print_subplots(1, len(metrics), height_mm=62)
    for ax, metric in zip(axes, metrics):
        plots.metric_bars(retrieval[retrieval.metric == metric].rename(columns={"subtype": "task"}), x="task",
                          hue="model", order=subtypes + ["mean"], hue_order=list(used),
                          ylabel=metric.replace("map", "retrieval mAP").replace("p@", "Precision@"),
                          prevalence=gallery[subtypes].astype(float).mean().to_dict(), ax=ax,
                          paper_notes=notes if ax is axes[-1] else None)
        if ax is not axes[-1]:  # one legend, right of the last panel
            ax.get_legend().remove()
    title = (f"{dataset}: all-vs-all{' patient-disjoint' if patient_disjoint else ''} retrieval over "
             f"{len(gallery)} scans (95% CI over queries); {short}")
    fig.suptitle(plots.figure_title(title, profile=P.name, training="frozen encoders"), x=0.0, ha="left")
    # the gallery is every labelled scan, whatever the study's site: the site is not in the name
    name = S.figure_name("edfig6_retrieval_other_encoders", encoders_named,
                         "patient-disjoint" if patient_disjoint else "", site=False)
    plots.save_figure(fig, name, retrieval,
                      {"dataset": dataset, "profile": P.to_dict(), "preset": preset, "weights": statement,
                       "encoders": {k: v.to_dict() if hasattr(v, "to_dict") else str(v) for k, v in used.items()},
                       "subtypes": subtypes, "ks": ks, "patient_disjoint": patient_disjoint, "seed": seed,
                       "skipped": parts.skipped}, root=S.figures)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
if parts.runs("comparison") or parts.runs("retrieval"):
    print(conclusions.other_encoders_conclusion(summary, comparison, predictions, weights=statement, names=names,
                                                paper=paper.paper_values_for("ed_fig3"), profile=P,
                                                retrieval=retrieval, gallery=gallery, subtypes=subtypes,
                                                patient_disjoint=patient_disjoint))
else:
    print("Nothing measured on this dataset.")
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

# %% [markdown]
# # 06 · Embeddings by scanner and slice thickness, performance by protocol (Supp. Fig. 10–13)
#
# The paper projects the foundation model's embeddings with t-SNE and finds them separable by scanner
# manufacturer and slice thickness, without collapsing onto one protocol; fine-tuned models perform
# comparably across protocols (Discussion; Supplementary Figs. 10–13). Here: the same projection, a
# measured separability (cross-validated accuracy of predicting the scanner from the embedding), and
# the fine-tuned classifiers of `02_finetune` scored per scanner and per slice-thickness bin.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae | vicreg; default: the profile's (paper, toy: dino; demo: vicreg)
checkpoint = None
preset = "paper"         # paper | reference (the authors' weights' preprocessing; needs checkpoint)
projection = "tsne"       # tsne | umap
highlight_task = "ich"    # positives of this task drawn with an edge ("all" vs positive cases); None: none
thickness_bins = [0.0, 1.5, 3.0, 5.01]  # mm; thicker than the last edge: a bin of its own
tasks = None
site = "internal"         # the per-protocol scores' site (training and test); the projection and separability
                          # read every labelled scan, of every site

# %%
from fmct_lib import pipeline
from fmct_lib.report import conclusions, plots, run_records

if projection not in ("tsne", "umap"):
    raise ValueError(f"projection {projection!r}: use 'tsne' or 'umap'")
S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, site=site, preset=preset,
                   checkpoint=checkpoint)
P, scans, method = S.profile, S.scans, S.method

# %% [markdown]
# What this dataset allows: the scanner needs a manufacturer (RSNA's DICOM headers carry none; a NIfTI export's
# comes from its labels CSV: `fmct ingest nifti --meta manufacturer=<column>`), the thickness bins need two of them, the per-protocol scores need a task with positive and negative
# scans in the training and the test split. The parts it does not allow are skipped, with the reason.

# %%
from fmct_lib.interpret.parts import embedding_parts

labelled = scans[scans["site"] != "pretrain"] if "site" in scans else scans
# the projection and separability read every labelled scan; the per-protocol scores, the study's site (`site`)
parts = embedding_parts(dataset, labelled, thickness_bins, tasks, scored=S.labelled, max_tasks=P.max_tasks)
print(parts)

# %%
from fmct_lib.downstream.embeddings import SEPARABILITY_PERMUTATIONS, embedding_vectors, protocol_labels, separability

encoder = S.encoder()
table = S.embed(encoder, scans=labelled, progress=False)
vectors, points = embedding_vectors(table)
protocol = protocol_labels(points, thickness_bins)
if parts.runs("projection"):
    if projection == "umap":
        import umap
        xy = umap.UMAP(random_state=seed).fit_transform(vectors)
    else:  # tsne
        from sklearn.manifold import TSNE
        xy = TSNE(perplexity=min(30, max(2, len(vectors) // 4)), random_state=seed, init="pca").fit_transform(vectors)
    points = points.assign(x=xy[:, 0], y=xy[:, 1])

# %%
# (the folds' accuracies, chance = the largest group's share, permutation p) of each attribute the data allow;
# at most 100 shufflings (the smallest p, 0.0099, decides p < 0.05), fewer where the profile's tests use fewer
shufflings = min(P.n_permutations, SEPARABILITY_PERMUTATIONS)
scanner = thickness = None
if parts.runs("scanner"):
    scanner = separability(vectors, protocol["scanner"], seed, n_permutations=shufflings)
    print(f"scanner from embedding: {scanner[0].mean():.3f} accuracy (chance {scanner[1]:.3f}, p = {scanner[2]:.3g})")
if parts.runs("thickness"):
    thickness = separability(vectors, protocol["slice thickness (mm)"], seed, n_permutations=shufflings)
    print(f"thickness bin from embedding: {thickness[0].mean():.3f} accuracy (chance {thickness[1]:.3f}, "
          f"p = {thickness[2]:.3g})")

if parts.runs("projection"):
    # colour by the protocol columns the scan table knows (by split where it knows none); the thickness by the
    # bins the separability test reads
    points = points.assign(**{"slice thickness bin (mm)": protocol["slice thickness (mm)"]})
    known = [c for c, name in (("manufacturer", "scanner"), ("slice thickness bin (mm)", "slice thickness (mm)"))
             if protocol[name].notna().any()]
    if highlight_task and highlight_task not in points:
        print(f"highlight_task {highlight_task!r} is not a label column of {dataset!r}: no positives highlighted")
    fig = plots.embedding_scatter(points, color_by=tuple(known) or ("split",),
                                  highlight=highlight_task if highlight_task in points else None,
                                  title=f"{dataset}: {projection.upper()} of the {method.upper()} encoder's embeddings "
                                        f"({len(points)} labelled scans)", profile=P.name)
    plots.save_figure(fig, S.figure_name("suppfig10_embeddings"), points,
                      {"dataset": dataset, "profile": P.to_dict(), "method": method, "encoder": str(encoder),
                       "preset": preset, "spec": S.spec.hash,
                       "projection": projection, "seed": seed, "skipped": parts.skipped,
                       "highlight_task": highlight_task if highlight_task in points else None,
                       "thickness_bins": thickness_bins, "scans": "every labelled scan, every site",
                       **{f"{name}_{key}": None if result is None else result[i]
                          for name, result in (("scanner", scanner), ("thickness", thickness))
                          for i, key in enumerate(("fold_accuracies", "chance", "permutation_p"))}}, root=S.figures)

# %% [markdown]
# ## Performance by scanner and by slice thickness (fine-tuned classifiers of 02_finetune)

# %%
import pandas as pd
from fmct_lib.downstream.embeddings import performance_by_protocol

macro = pd.DataFrame(columns=["group", "value"])
if parts.runs("by protocol"):
    tasks = list(parts.tasks)
    predictions = S.sweep(tasks, ["finetune"], encoder, progress=False)
    by_protocol = performance_by_protocol(predictions, protocol_labels(scans.set_index("scan_id"), thickness_bins),
                                          n_boot=P.n_bootstrap, seed=seed)
    macro = by_protocol[(by_protocol.task == "macro") & (by_protocol.metric == "auroc")]
    fig = plots.metric_bars(macro.assign(model="fine-tuned"), x="group", hue="model", ylabel="macro-AUROC",
                            title=f"{dataset}: fine-tuned classifiers by acquisition protocol (95% bootstrap CI)",
                            profile=P.name, training=plots.training_rule(P))
    # where each model stopped
    run_records.save_runs(S.figure_name("suppfig11_performance_by_protocol"), predictions, root=S.figures)
    plots.save_figure(fig, S.figure_name("suppfig11_performance_by_protocol"), by_protocol,
                      {"dataset": dataset, "profile": P.to_dict(), "method": method, "tasks": tasks,
                       "preset": preset, "spec": S.spec.hash,
                       "thickness_bins": thickness_bins, "site": site, "seed": seed}, root=S.figures)
    display(macro[["group", "value", "ci_low", "ci_high", "n_scans"]].round(3))

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.embeddings_conclusion(scanner, thickness, macro))
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

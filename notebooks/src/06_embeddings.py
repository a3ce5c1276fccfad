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
method = None           # dino | mae; default: the profile's (paper, toy: dino; demo: mae)
checkpoint = None
projection = "tsne"       # tsne | umap
highlight_task = "ich"    # positives of this task drawn with an edge ("all" vs positive cases)
thickness_bins = [0.0, 1.5, 3.0, 5.01]  # mm
tasks = None
site = "internal"

# %%
from fmct_lib import pipeline
from fmct_lib.report import conclusions, naming, plots

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, site=site)
P, scans, method = S.profile, S.scans, S.method

# %%
import pandas as pd
from fmct_lib.downstream.embeddings import embed

encoder = S.encoder(checkpoint=checkpoint)
labelled = scans[scans["site"] != "pretrain"] if "site" in scans else scans
table = embed(dataset, encoder, P, scans=labelled, progress=False)
vectors = table[[c for c in table.columns if c.startswith("e") and c[1:].isdigit()]].to_numpy()
if projection == "umap":
    import umap
    xy = umap.UMAP(random_state=seed).fit_transform(vectors)
else:
    from sklearn.manifold import TSNE
    xy = TSNE(perplexity=min(30, max(2, len(vectors) // 4)), random_state=seed, init="pca").fit_transform(vectors)
points = table.drop(columns=[c for c in table.columns if c.startswith("e") and c[1:].isdigit()]).assign(x=xy[:, 0], y=xy[:, 1])

# %%
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

make = points["manufacturer"].astype(str)
folds = StratifiedKFold(n_splits=min(5, make.value_counts().min()), shuffle=True, random_state=seed)
accuracy = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), vectors, make, cv=folds)
chance = make.value_counts(normalize=True).max()
thick = pd.cut(points["slice_thickness_mm"], thickness_bins).astype(str)
thick_folds = StratifiedKFold(n_splits=min(5, thick.value_counts().min()), shuffle=True, random_state=seed)
thick_accuracy = cross_val_score(make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)), vectors, thick,
                                 cv=thick_folds)
thick_chance = thick.value_counts(normalize=True).max()
print(f"scanner from embedding: {accuracy.mean():.3f} accuracy (chance {chance:.3f}); "
      f"thickness bin: {thick_accuracy.mean():.3f} (chance {thick_chance:.3f})")

fig = plots.embedding_scatter(points, highlight=highlight_task if highlight_task in points else None,
                              title=f"{dataset}: {projection.upper()} of the {method.upper()} encoder's embeddings "
                                    f"({len(points)} labelled scans)")
plots.save_figure(fig, naming.figure_name("suppfig11_embeddings", dataset, P), points,
                  {"dataset": dataset, "profile": P.to_dict(), "method": method, "encoder": str(encoder),
                   "projection": projection, "seed": seed, "scanner_accuracy": accuracy.mean(),
                   "scanner_chance": chance, "thickness_accuracy": thick_accuracy.mean(),
                   "thickness_chance": thick_chance})

# %% [markdown]
# ## Performance by scanner and by slice thickness (fine-tuned classifiers of 02_finetune)

# %%
from fmct_lib.evaluate import bootstrap_ci

tasks = S.tasks(tasks)
predictions = S.sweep(tasks, ["finetune"], encoder, progress=False)
protocol_of = scans.set_index("scan_id")[["manufacturer", "slice_thickness_mm"]]
predictions = predictions.join(protocol_of, on="scan_id")
predictions["thickness"] = pd.cut(predictions["slice_thickness_mm"], thickness_bins).astype(str)
groups = []
for column, name in (("manufacturer", "scanner"), ("thickness", "slice thickness (mm)")):
    for value, g in predictions.groupby(column):
        usable = g.groupby("task")["label"].agg(lambda s: s.nunique() == 2)
        g = g[g.task.isin(usable[usable].index)]
        if len(g):
            groups.append(bootstrap_ci(g, n_boot=P.n_bootstrap, seed=seed).assign(group=f"{name}: {value}", by=name,
                                                                                   n_scans=g.scan_id.nunique()))
by_protocol = pd.concat(groups, ignore_index=True)
macro = by_protocol[(by_protocol.task == "macro") & (by_protocol.metric == "auroc")]
fig = plots.metric_bars(macro.assign(model="fine-tuned"), x="group", hue="model", ylabel="macro-AUROC",
                        title=f"{dataset}: fine-tuned classifiers by acquisition protocol (95% bootstrap CI)")
plots.save_figure(fig, naming.figure_name("suppfig12_performance_by_protocol", dataset, P), by_protocol,
                  {"dataset": dataset, "profile": P.to_dict(), "method": method, "tasks": tasks,
                   "thickness_bins": thickness_bins, "site": site, "seed": seed})
macro[["group", "value", "ci_low", "ci_high", "n_scans"]].round(3)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.embeddings_conclusion(accuracy, chance, thick_accuracy, thick_chance, macro))

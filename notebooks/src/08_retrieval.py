# %% [markdown]
# # 08 · Volume-to-volume retrieval (Fig. 3)
#
# All-versus-all haemorrhage-subtype retrieval with frozen embeddings (paper, Methods): L2-normalised
# embeddings in an inner-product (cosine) index, every positive scan of a subtype a query once against
# the whole dataset minus itself; mAP and Precision@K with CIs over the queries. The paper compares
# with other CT foundation models (Google CT: +9.99% on CQ500, +2.21% on RSNA); none of those can run
# here, so the comparison is with MAE pretraining and with the same ViT at random initialisation (the
# floor any pretraining has to clear).

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
methods = ["dino", "mae", "vicreg"]   # pretrained encoders compared (plus random initialisation)
checkpoint = None                # or one encoder checkpoint, compared with random initialisation
preset = "paper"         # paper | reference (the authors' weights' preprocessing; needs checkpoint)
subtypes = None   # retrieval; None: the paper's for RSNA (4) and CQ500 (6), else IPH, IVH, SDH, EDH, SAH
ks = [1, 5, 10]
patient_disjoint = False         # True: a query's ranking leaves out its patient's other scans (paper: only itself)

# %%
from fmct_lib import pipeline
from fmct_lib.report import comparisons, conclusions, naming, paper, plots

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, preset=preset, checkpoint=checkpoint)
P, scans = S.profile, S.scans
patient_disjoint = pipeline.flag("patient_disjoint", patient_disjoint)

# %%
import pandas as pd
import torch
from fmct_lib.evaluate import check_ks, retrieval_comparison
from fmct_lib.interpret.parts import retrieval_parts
from fmct_lib.models.vit3d import vit_from_config
from fmct_lib.report.encoders import retrieval_by_model

gallery = scans[scans["site"] != "pretrain"] if "site" in scans else scans
parts = retrieval_parts(dataset, gallery, subtypes)
print(parts)
subtypes = list(parts.tasks)
ks = check_ks(ks, len(gallery))

# %%
if parts.runs("retrieval"):
    encoders = {"checkpoint": S.encoder()} if checkpoint else {m: S.encoder(m) for m in methods}
    torch.manual_seed(seed)
    encoders["random init"] = vit_from_config(P.model)
    tables = {name: S.embed(enc, scans=gallery, progress=False) for name, enc in encoders.items()}
    per_query, summary = retrieval_by_model(tables, subtypes, ks, P.n_bootstrap, seed, patient_disjoint)
    display(summary.pivot_table(index="subtype", columns=["metric", "model"], values="value", sort=False).round(3))
    # each pretrained encoder against the random one on the same queries: mAP difference, 95% CI, paired p
    by_model = dict(tuple(per_query.groupby("model", sort=False)))
    # what the study's encoder groups scans by: the share of a scan's 10 nearest neighbours with its value
    from fmct_lib.report.encoders import embedding_grouping
    grouped = S.method if S.method in tables else next(iter(tables))
    grouping = embedding_grouping(tables[grouped], subtypes, k=10)
    comparison = pd.concat([retrieval_comparison(by_model[m], by_model["random init"], n_boot=P.n_bootstrap,
                                                 n_perm=P.n_permutations, seed=seed).assign(model_a=m, model_b="random init")
                            for m in by_model if m != "random init"] or [pd.DataFrame()], ignore_index=True)
    display(comparison.round(4))

# %%
if parts.runs("retrieval"):
    from pathlib import Path

    metrics = ["map"] + [f"p@{k}" for k in ks]
    prevalence = gallery[subtypes].astype(float).mean().to_dict()  # about the mAP and precision of a random ranking
    notes = paper.paper_values_for("fig3", naming.paper_dataset(dataset))  # the paper's gain over Google CT, its n
    encoded = ([f"checkpoint {Path(checkpoint).name}"] if checkpoint
               else [f"{m.upper()} pretrained {P.epochs_for(m)} epochs" for m in methods])
    fig, axes = plots.print_subplots(1, len(metrics), height_mm=60)
    for ax, metric in zip(axes, metrics):
        plots.metric_bars(summary[summary.metric == metric].rename(columns={"subtype": "task"}), x="task", hue="model",
                          order=subtypes + ["mean"], hue_order=list(encoders),
                          ylabel=metric.replace("map", "retrieval mAP"),
                          prevalence=prevalence, ax=ax, paper_notes=notes if ax is axes[-1] else None)
        if ax is not axes[-1]:  # one legend, right of the last panel
            ax.get_legend().remove()
    title = (f"{dataset}: all-vs-all{' patient-disjoint' if patient_disjoint else ''} retrieval over {len(gallery)} "
             "scans (95% CI over queries)")
    training = f"frozen encoders: {', '.join(encoded)}; random init untrained"
    fig.suptitle(plots.figure_title(title, profile=P.name, training=training), x=0.0, ha="left")  # above all panels
    # a figure of its own; the gallery is every site's scans, so the site is not in the name
    name = S.figure_name("fig3_retrieval", "patient-disjoint" if patient_disjoint else "", site=False)
    plots.save_figure(fig, name, summary,
                      {"dataset": dataset, "profile": P.to_dict(), "encoders": {k: str(v) if not hasattr(v, "config") else "random init"
                                                                                for k, v in encoders.items()},
                       "preset": preset, "spec": S.spec.hash,
                       "subtypes": subtypes, "ks": ks, "patient_disjoint": patient_disjoint, "seed": seed,
                       "gallery_prevalence": prevalence,
                       "neighbour_agreement": {"encoder": grouped, "k": 10, **{attr: {"observed": o, "random": c}
                                                                               for attr, (o, c) in grouping.items()}}},
                      root=S.figures)
    comparisons.save_comparison(name, comparison, root=S.figures)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.retrieval_conclusion(summary, gallery, subtypes, comparison, patient_disjoint, grouping, grouped)
      if parts.runs("retrieval")
      else "Nothing measured on this dataset.")
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

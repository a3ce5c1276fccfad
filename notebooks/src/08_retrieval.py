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
methods = ["dino", "mae"]        # pretrained encoders compared (plus random initialisation)
checkpoint = None                # or one encoder checkpoint, compared with random initialisation
subtypes = ["iph", "ivh", "sdh", "edh", "sah"]
ks = [1, 5, 10]

# %%
from fmct_lib import pipeline
from fmct_lib.report import conclusions, naming, plots

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed)
P, scans = S.profile, S.scans

# %%
import pandas as pd
import torch
from fmct_lib.downstream.embeddings import embed
from fmct_lib.evaluate import retrieval_summary, retrieve_all_vs_all
from fmct_lib.models.vit3d import vit_from_config

gallery = scans[scans["site"] != "pretrain"] if "site" in scans else scans
subtypes = [s for s in subtypes if s in gallery and (gallery[s] == 1).sum() >= 2]
encoders = {"checkpoint": S.encoder("dino", checkpoint=checkpoint)} if checkpoint else {m: S.encoder(m) for m in methods}
torch.manual_seed(seed)
encoders["random init"] = vit_from_config(P.model)
per_query, summaries = [], []
for name, enc in encoders.items():
    table = embed(dataset, enc, P, scans=gallery, progress=False)
    vectors = table[[c for c in table.columns if c.startswith("e") and c[1:].isdigit()]].to_numpy()
    q = retrieve_all_vs_all(vectors, table[subtypes], ks=tuple(ks), scan_ids=table["scan_id"])
    per_query.append(q.assign(model=name))
    summaries.append(retrieval_summary(q, n_boot=P.n_bootstrap, seed=seed).assign(model=name))
summary = pd.concat(summaries, ignore_index=True)
summary.pivot_table(index="subtype", columns=["metric", "model"], values="value", sort=False).round(3)

# %%
import matplotlib.pyplot as plt

metrics = ["map"] + [f"p@{k}" for k in ks]
fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.6))
for ax, metric in zip(axes, metrics):
    plots.metric_bars(summary[summary.metric == metric].rename(columns={"subtype": "task"}), x="task", hue="model",
                      order=subtypes + ["mean"], hue_order=list(encoders), ylabel=metric.replace("map", "retrieval mAP"),
                      ax=ax)
    if ax is not axes[-1]:
        ax.get_legend().remove()
fig.suptitle(f"{dataset}: all-vs-all retrieval over {len(gallery)} scans (95% CI over queries)", fontsize=9)
fig.tight_layout()
plots.save_figure(fig, naming.figure_name("fig3_retrieval", dataset, P), summary,
                  {"dataset": dataset, "profile": P.to_dict(), "encoders": {k: str(v) if not hasattr(v, "config") else "random init"
                                                                            for k, v in encoders.items()},
                   "subtypes": subtypes, "ks": ks, "seed": seed})

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.retrieval_conclusion(summary, gallery, subtypes))

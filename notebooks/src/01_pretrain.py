# %% [markdown]
# # 01 · Self-supervised pretraining (DINO or MAE)
#
# The paper pretrains a ViT-B/12 on 361,663 head CTs with DINO (its final model) and, for comparison,
# MAE (Methods, "Self-supervised pretraining"). Here the same code runs at the profile's size on the
# dataset's unlabelled pretraining pool. The run resumes where it stopped and is reused by every later
# notebook. The figure shows the training curves and DINO's collapse signals: a teacher whose
# output entropy falls to zero, or whose output is uniform (KL to uniform → 0), has collapsed.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae; default: the profile's (paper, toy: dino; demo: mae)
fraction = 1.0      # share of the pretraining pool (paper: 0.1, 0.3, 1.0 in Fig. 4)

# %%
from fmct_lib import pipeline
from fmct_lib.report import conclusions, naming, plots

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method)
P, scans, method = S.profile, S.scans, S.method

# %%
import pandas as pd

encoder_path = S.encoder(fraction=fraction)
run = encoder_path.parent
metrics = pd.read_csv(run / "metrics.csv")
print(f"encoder: {encoder_path}")
metrics.tail()

# %%
import matplotlib.pyplot as plt
import numpy as np

x = "step" if "step" in metrics else metrics.index.name or "index"
metrics = metrics.reset_index() if x == "index" else metrics
curves = [c for c in ("loss", "lr", "momentum", "teacher_entropy", "kl_to_uniform", "centre_norm")
          if c in metrics and metrics[c].notna().any()]
fig, axes = plt.subplots(1, len(curves), figsize=(2.8 * len(curves), 2.6))
for ax, c in zip(np.atleast_1d(axes), curves):
    ax.plot(metrics[x], metrics[c], lw=1)
    if c == "teacher_entropy" and method == "dino":
        ax.axhline(np.log(P.dino_out_dim), color="grey", ls="--", lw=0.8, label="uniform (log K)")
        ax.legend(fontsize=7, frameon=False)
    ax.set_title(c, fontsize=9)
    ax.set_xlabel(x)
fig.suptitle(f"{method.upper()} pretraining on {dataset} ({fraction:.0%} of the pool, profile {P.name})", fontsize=10)
fig.tight_layout()
name = naming.figure_name(f"fig_pretrain_{method}_{int(round(fraction * 100))}pct", dataset, P)
plots.save_figure(fig, name, metrics,
                  {"dataset": dataset, "profile": P.to_dict(), "method": method, "fraction": fraction,
                   "seed": seed, "run": str(run)})

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.pretrain_conclusion(metrics, method, P))

# %% [markdown]
# # 01 · Self-supervised pretraining (DINO, MAE or the VICReg control)
#
# The paper pretrains a ViT-B/12 on 361,663 head CTs with DINO (its final model) and, for comparison,
# MAE (Methods, "Self-supervised pretraining"); VICReg is this project's batch-robust control (not in the
# paper). Here the same code runs at the profile's size on the dataset's training split and unlabelled
# pool. The run resumes where it stopped and is reused by every later notebook. The figure shows whether
# it learns, step by step: the loss; DINO's collapse signals (a teacher whose output entropy falls to zero,
# or stays at the uniform value ln K, has collapsed); the spread of the encoder's features (feature std,
# 1 = isotropic, 0 = collapsed) and their effective rank (RankMe); and, every epoch, a kNN score of the
# frozen encoder on the validation split, against the same score of the random encoder at step 0.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae | vicreg; default: the profile's (paper, toy: dino; demo: vicreg)
fraction = 1.0      # share of the pretraining pool (paper: 0.1, 0.3, 1.0 in Fig. 4)

# %%
from fmct_lib import pipeline
from fmct_lib.report import conclusions, plots

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method)
P, scans, method = S.profile, S.scans, S.method
fraction = pipeline.fraction("fraction", fraction)  # checked before any work

# %%
import pandas as pd

encoder_path = S.encoder(fraction=fraction)
run = encoder_path.parent
metrics = pd.read_csv(run / "metrics.csv")
print(f"encoder: {encoder_path}")
metrics.tail()

# %%
import numpy as np

x = "step" if "step" in metrics else metrics.index.name or "index"
metrics = metrics.reset_index() if x == "index" else metrics
curves = [c for c in ("loss", "lr", "teacher_entropy", "kl_to_uniform", "centre_norm", "invariance", "variance",
                      "feature_std", "effective_rank", "knn_auroc") if c in metrics and metrics[c].notna().any()]
ncol = min(4, len(curves))
nrow = -(-len(curves) // ncol)
fig, axes = plots.print_subplots(nrow, ncol, height_mm=10 + 42 * nrow, squeeze=False)  # at its printed size
for ax in axes.flat[len(curves):]:
    ax.set_visible(False)
for ax, c in zip(axes.flat, curves):
    m = metrics.dropna(subset=[c])
    ax.plot(m[x], m[c], lw=1, marker="o" if c == "knn_auroc" else None, ms=3)
    if c == "teacher_entropy":
        ax.axhline(np.log(P.dino_out_dim), color="grey", ls="--", lw=0.8, label="uniform (ln K)")
    if c == "knn_auroc":
        ax.axhline(m[c].iloc[0], color="grey", ls="--", lw=0.8, label="random encoder (step 0)")
        ax.axhline(0.5, color="black", ls=":", lw=0.6, label="chance")
        c = "validation kNN macro-AUROC"
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=6, frameon=False)
    ax.set_title(c)
    ax.set_xlabel(x)
fig.suptitle(f"{method.upper()} pretraining on {dataset} ({fraction * 100:g}% of the pool, profile {P.name})")
# a seed other than 0 names a figure of its own; pretraining reads the pool (no site); the name holds the method
name = S.figure_name(f"fig_pretrain_{method}_{fraction * 100:g}pct", site=False, method=False)
plots.save_figure(fig, name, metrics,
                  {"dataset": dataset, "profile": P.to_dict(), "method": method, "fraction": fraction,
                   "seed": seed, "run": str(run)}, root=S.figures)

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.pretrain_conclusion(metrics, method, P))

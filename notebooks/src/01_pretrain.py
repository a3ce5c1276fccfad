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
from fmct_lib import plots, reproduce

P, scans = reproduce.start(dataset, profile, run_dir)
method = method or P.pretrain_method

# %%
import pandas as pd

encoder_path = reproduce.ensure_pretrained(method, dataset, P, fraction=fraction, seed=seed)
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
name = reproduce.figure_name(f"fig_pretrain_{method}_{int(round(fraction * 100))}pct", dataset, P)
plots.save_figure(fig, name, metrics,
                  {"dataset": dataset, "profile": P.to_dict(), "method": method, "fraction": fraction,
                   "seed": seed, "run": str(run)})

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
n = max(1, len(metrics) // 10)
first, last = metrics["loss"].head(n).mean(), metrics["loss"].tail(n).mean()
trend = "decreased" if last < first else "did NOT decrease"
lines = [f"- {method.upper()} loss went from {first:.4g} (first 10% of steps) to {last:.4g} (last 10%): it {trend}."
         + (" (DINO's loss is a cross-entropy against a moving, sharpening teacher: it rises while the teacher "
            "temperature warms up, so the collapse signals below say more.)" if method == "dino" else "")]
if method == "dino" and "teacher_entropy" in metrics:
    h, h_max = metrics["teacher_entropy"].tail(n).mean(), np.log(P.dino_out_dim)
    kl = metrics["kl_to_uniform"].tail(n).mean()
    if h < 0.05 * h_max:
        state = "COLLAPSED onto few prototypes (every scan gets a near one-hot output)" if kl > 0.5 * h_max else \
            "sharp per-scan outputs spread over the prototypes: healthy"
    elif h > 0.9 * h_max:
        state = ("near-uniform teacher output for every scan: collapse to uniform, or a run too short to sharpen "
                 "(the features may still carry little information)")
    else:
        state = "between one-hot and uniform, no sign of collapse"
    lines.append(f"- Teacher entropy {h:.3f} nats of a possible {h_max:.3f}, KL of the batch-mean output to uniform "
                 f"{kl:.3g} (last 10% of steps): {state}.")
print("\n".join(lines))

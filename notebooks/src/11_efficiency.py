# %% [markdown]
# # 11 · Throughput and memory by architecture, and the cost of smaller patches (Extended Data Fig. 5, Supp. Fig. 2)
#
# The paper finds its way of modelling a CT the cheaper one: "our modelling method has substantial advantage over
# other benchmarked architectures in terms of both model throughput and memory cost" (Results, "Comparison to
# alternative modelling choices"; Extended Data Fig. 5, drawn without printed numbers). It chose patches of 12³
# (512 tokens) over 16³ (216) knowing that the cost grows as O(s⁶) in the patch-size reduction factor s: the tokens
# grow as s³ and self-attention as their square (Methods, "Model architecture"; Supplementary Section E).
#
# Here every encoder runs a forward and a forward+backward on random volumes (the values do not change the compute)
# on this machine: on a GPU in bf16 with fused attention, on a CPU in fp32 (`fmct_lib.models.efficiency` says what
# the memory includes). At the toy and demo profiles the other encoders are randomly initialised stand-ins shrunk as
# the profile shrinks the ViT (`SMALL_ARCHITECTURES`): their ratios describe those stand-ins, not the published
# models, which the paper profile builds. The ViT's cost by patch size is measured at the patch sizes that divide
# the input and counted analytically (FLOPs from its configuration) in between.

# %% tags=["parameters"]
dataset = "synthetic"    # names the figure only: the inputs are random volumes
profile = "demo"
run_dir = None           # the table is also written under <runs>/efficiency/, one file per machine and setting
seed = 0                 # the random inputs and initial weights
architectures = None     # default: vit, its Supp. Fig. 2 counterpart (paper: vit_p16), ctfm, merlin, resnet3d,
                         # dinov3, vjepa2; vit is always measured (every ratio is relative to it): put first if not listed
batch_size = 1           # at least 1
input_size = None        # default: the profile's (paper 96); a multiple of the profile's patch
repeats = 3              # timed steps (at least 1) per architecture and mode after a warm-up step; the median is reported
patch_sizes = None       # the ViT's patch sizes timed for the cost curve, each dividing the input (a refusal names
                         # those that do); default: those dividing it, up to 8x the tokens
device = None            # default: cuda when available, else cpu; cuda without a GPU is refused

# %%
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

from fmct_lib.config import get_profile, patch_variant
from fmct_lib.models import efficiency
from fmct_lib.io import atomic_write_csv
from fmct_lib.paths import figures_root, runs_root
from fmct_lib.pipeline import check_seed
from fmct_lib.report import conclusions, naming, paper, plots

P = get_profile(profile)
seed = check_seed(seed)
# every parameter checked before anything is measured (a refusal is one line naming what would do)
architectures, input_size, sizes, device = efficiency.check_parameters(
    P, architectures, input_size=input_size, patch_sizes=patch_sizes, batch_size=batch_size, repeats=repeats,
    device=device)
table = efficiency.relative_to(efficiency.measure_architectures(
    P, architectures, input_size=input_size, batch_size=batch_size, repeats=repeats, device=device, seed=seed))
machine = f"{table.machine[0]}, torch {table.torch[0]}, {table.dtype[0]}, batch {batch_size}, input {input_size}³"
print(f"{machine}; peak memory: {table.memory[0]}")
runs = Path(run_dir).expanduser() if run_dir else runs_root()
saved = runs / "efficiency" / (
    re.sub(r"[^\w.-]+", "_", f"{P.name}_{table.machine[0]}_b{batch_size}_s{input_size}").strip("_") + ".csv")
atomic_write_csv(table, saved)
print(f"written to {saved}")
display(table.pivot_table(index=["model", "detail"], columns="mode", sort=False,
                          values=["scans_per_s", "throughput_ratio", "peak_memory_mb", "memory_ratio",
                                  "gflops_per_scan"]).round(3))

# %% [markdown]
# ## The cost of smaller patches
#
# s is the profile's patch over another (s > 1: smaller patches, more tokens). The points are the ViT's measured
# forward time, the lines its analytic FLOPs (all of them, and attention's alone), each relative to the profile's
# patch, against s³ (the tokens) and s⁶ (the paper's rate).

# %%
cfg = replace(P.model, img_size=input_size)
timed = efficiency.measure([efficiency.vit_candidate(replace(cfg, patch_size=p), f"p{p}") for p in sizes],
                           batch_size=batch_size, repeats=repeats, device=device, modes=("forward",), seed=seed)
seconds = timed.set_index("architecture")["seconds"]
cost = efficiency.patch_cost(cfg, sizes).assign(
    measured_ratio=lambda d: [seconds[f"p{p}"] / seconds[f"p{cfg.patch_size}"] for p in d.patch_size],
    measured_seconds=lambda d: [seconds[f"p{p}"] for p in d.patch_size])
curve = efficiency.patch_cost(cfg, np.geomspace(min(sizes), max(sizes), 60))
display(cost[["patch_size", "tokens", "s", "flops", "attention_flops", "flops_ratio", "attention_ratio", "s6",
              "measured_seconds", "measured_ratio"]].round(4))

# %%
known = pd.concat([paper.paper_values_for("supp_fig2"), paper.paper_values_for("hardware")], ignore_index=True)
notes = lambda ax, rows: [ax.plot([], [], ls="none", label=paper.describe_paper_value(r))  # noqa: E731
                          for _, r in rows.iterrows()]
fig, axes = plots.print_subplots(3, 1, height_mm=175)
for ax, value, label in ((axes[0], "scans_per_s", "scans/s"), (axes[1], "peak_memory_mb", "peak memory (MiB)")):
    plots.metric_bars(table, x="model", hue="mode", value=value, ylabel=label, ylim=None, ax=ax,
                      **(dict(title=f"{machine}; random inputs", profile=P.name) if ax is axes[0] else {}))
    ax.set_yscale("log")
notes(axes[1], known[known.metric == "gpu_memory_gb"])
axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
ax = axes[2]
ax.plot(curve.s, curve.flops_ratio, "-", color=plots.PALETTE[0], label="FLOPs, analytic")
ax.plot(curve.s, curve.attention_ratio, "-", color=plots.PALETTE[1], label="attention FLOPs, analytic")
ax.plot(curve.s, curve.s6, ls=(0, (3, 2)), color="0.3", label="s⁶ (the paper's rate)")
ax.plot(curve.s, curve.s3, ls=":", color="0.3", label="s³ (the tokens)")
ax.plot(cost.s, cost.measured_ratio, "o", color=plots.PALETTE[3], label=f"forward time, measured ({device})")
variant = patch_variant(P.replace(model=cfg)).model  # Supp. Fig. 2's coarser encoder, on its own input (12_patch_size)
grids = (variant.img_size // variant.patch_size, cfg.img_size // cfg.patch_size)
ax.axvline(grids[0] / grids[1], color="0.6", lw=0.6,
           label=f"Supp. Fig. 2's coarser encoder: patch {variant.patch_size} on {variant.img_size}³, {grids[0] ** 3} "
                 f"against {grids[1] ** 3} tokens")
notes(ax, known[known.metric.isin(["n_tokens", "cost_exponent"])])
ax.set(xscale="log", yscale="log", xlabel=f"s = patch {cfg.patch_size} / patch",
       ylabel=f"cost relative to patch {cfg.patch_size}")
ax.set_xticks(cost.s, labels=[f"{s:.3g}\n(patch {p})" for s, p in zip(cost.s, cost.patch_size)])
ax.minorticks_off()
ax.grid()
ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
name = naming.figure_name("edfig5_efficiency", dataset, P)
paths = plots.save_figure(fig, name, pd.concat([table.assign(panel="architectures"), cost.assign(panel="patch size")]),
                  {"profile": P.to_dict(), "architectures": list(dict.fromkeys(table.architecture)),
                   "batch_size": batch_size, "input_size": input_size, "repeats": repeats, "device": device,
                   "machine": table.machine[0], "torch": table.torch[0], "dtype": table.dtype[0],
                   "memory": table.memory[0], "patch_sizes": sizes, "seed": seed, "table": str(saved)},
                  root=figures_root(runs))

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
from fmct_lib.models.external import SMALL_ARCHITECTURES

print(conclusions.efficiency_conclusion(table, cost, stand_ins=P.name in SMALL_ARCHITECTURES))

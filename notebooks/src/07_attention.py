# %% [markdown]
# # 07 · Attention maps and attention distance (Fig. 5)
#
# The paper shows, on a scan with several diseases, the cls-token attention of the pretrained encoder
# and of encoders fine-tuned per task, and the attention distance of Eq. 1
# (D_i = Σ_j A_ij d(i, j), averaged over heads and layers): "it can successfully attend to correct
# disease locations in the majority of cases" (Results, "Visual interpretation"). On the synthetic cohort
# the lesion masks are known, so the claim is measured here: the share of attention mass inside the lesion
# against the lesion's share of the volume (1× = no better than uniform), pretrained vs fine-tuned.
# The interactive viewer at the end moves through slices, layers, heads and windows.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae; default: the profile's (paper, toy: dino; demo: mae)
checkpoint = None
tasks = None          # default: the profile's tasks (paper Fig. 5: oedema, ADRD, IPH, IVH, SAH)
scan_id = None        # default: the test scan with the most positive tasks
site = "internal"
max_scans = 40        # test scans measured per task for the lesion-attention table
layer = -1            # layer of the cls attention drawn in the figure (-1: last)

# %%
from fmct_lib import pipeline
from fmct_lib.report import conclusions, naming, plots

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, site=site)
P, scans, method = S.profile, S.scans, S.method

# %%
from fmct_lib.data.synthetic.lesions import LABEL_CODES

labelled = S.labelled
tasks = [t for t in S.tasks(tasks) if t in LABEL_CODES or t == "ich"]
encoder = S.encoder(checkpoint=checkpoint)
finetuned = {t: S.finetuned(t, encoder) for t in tasks}
finetuned

# %%
import numpy as np
from fmct_lib.data.manifest import scan_table_path
from fmct_lib.models.checkpoints import load_encoder
from fmct_lib.interpret import (compute_attention, lesion_attention_table, load_scan_with_mask, model_voxel_mm,
                                summarize_lesion_attention)
from fmct_lib.data.preprocess import paper_spec

spec = paper_spec(P)
folder = scan_table_path(dataset).parent
voxel_mm = model_voxel_mm(P)
encoders = {"pretrained": load_encoder(encoder), **{f"fine-tuned {t}": load_encoder(path) for t, path in finetuned.items()}}
BLEEDS = ("iph", "ivh", "sdh", "edh", "sah")


def task_mask(labels: np.ndarray, task: str) -> np.ndarray:
    codes = [LABEL_CODES[b] for b in BLEEDS] if task == "ich" else [LABEL_CODES[task]]
    return np.isin(labels, codes)


def load_case(sid: str):
    """Model input (3, S, S, S) and the lesion label map on the same grid."""
    row = scans.set_index("scan_id").loc[sid]
    return load_scan_with_mask(row["path"], folder / row["mask_path"], spec)


test = labelled[labelled["split"] == "test"]
if scan_id is None:
    scan_id = test.assign(n=test[tasks].fillna(0).sum(axis=1)).sort_values("n", ascending=False)["scan_id"].iloc[0]
x, labels = load_case(scan_id)
results = {name: compute_attention(model, x, voxel_mm) for name, model in encoders.items()}
positive = [t for t in tasks if scans.set_index("scan_id").loc[scan_id, t] == 1]
print(f"scan {scan_id}: positive for {positive or 'none of the tasks'}")

# %%
from fmct_lib.interpret.viewer import display_slice

lesion = np.isin(labels, [LABEL_CODES[t] for t in LABEL_CODES if t != "fracture"])
k = int(np.argmax(lesion.sum(axis=(0, 1)))) if lesion.any() else x.shape[-1] // 2
image = display_slice(x[0].numpy(), "axial", k)
rows = [{"image": image, "mask": display_slice(lesion, "axial", k), "label": f"{scan_id}, axial {k}",
         "overlays": {name: display_slice(r.attention_map(layer=layer, mode="trilinear"), "axial", k)
                      for name, r in results.items()}},
        {"image": image, "mask": display_slice(lesion, "axial", k), "label": "attention distance (mm)",
         "overlays": {name: display_slice(r.distance_map(mode="trilinear"), "axial", k) for name, r in results.items()}}]
fig = plots.attention_grid(rows)
distance = {name: r.mean_distance_per_layer() for name, r in results.items()}

# %% [markdown]
# ## Does the attention fall on the lesion? (test scans, lesion masks known)

# %%
import pandas as pd

cases = []
for t in tasks:
    for sid in test[test[t] == 1]["scan_id"].head(max_scans):
        xi, li = load_case(sid)
        mask = task_mask(li, t)
        if not mask.any():
            continue
        for name in ("pretrained", f"fine-tuned {t}"):
            att = compute_attention(encoders[name], xi, voxel_mm).attention_map(layer=layer)
            cases.append({"scan_id": sid, "task": t, "model": "pretrained" if name == "pretrained" else "fine-tuned",
                          "attention": att, "mask": mask})
share = lesion_attention_table(cases)

lesion_summary = summarize_lesion_attention(share, reference="pretrained") if len(share) else pd.DataFrame()
lesion_summary

# %%
figure_data = pd.concat([share.assign(kind="lesion share"),
                         pd.DataFrame([{"model": n, "layer": i + 1, "distance_mm": d} for n, ds in distance.items()
                                       for i, d in enumerate(ds)]).assign(kind="distance per layer")], ignore_index=True)
plots.save_figure(fig, naming.figure_name("fig5_attention", dataset, P), figure_data,
                  {"dataset": dataset, "profile": P.to_dict(), "method": method, "encoder": str(encoder),
                   "finetuned": {t: str(p) for t, p in finetuned.items()}, "scan_id": scan_id, "slice": k,
                   "layer": layer, "tasks": tasks, "seed": seed})

# %% [markdown]
# ## Interactive viewer (pretrained vs fine-tuned; slices, layers, heads, windows)

# %%
from fmct_lib.interpret.viewer import AttentionViewer

viewer = AttentionViewer(x.numpy(), results)
viewer.widget

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.attention_conclusion(lesion_summary, distance))

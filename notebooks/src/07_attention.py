# %% [markdown]
# # 07 · Attention maps and attention distance (Fig. 5)
#
# The paper shows, on a scan with several diseases, the cls-token attention of the pretrained encoder
# and of encoders fine-tuned per task, and the attention distance of Eq. 1
# (D_i = Σ_j A_ij d(i, j), averaged over heads and layers): "it can successfully attend to correct
# disease locations in the majority of cases" (Results, "Visual interpretation"). On the synthetic cohort
# the lesion masks are known, so the claim is measured here, within the head (air, about half the input, does
# not count): the share of the head's attention inside the lesion against the lesion's share of the head
# (1× = no better than attention spread evenly over the head), and against the same lesion scored with the
# mean map of the other scans (a lesion-blind map of the same encoder), pretrained vs fine-tuned.
# Attention is drawn as multiples of a uniform map on one logarithmic scale for every panel (magma), so a
# near-uniform map looks uniform. The interactive viewer at the end moves through slices, layers, heads and
# windows; to open it on any NIfTI file and checkpoint, use `fmct_lib.interpret.viewer.viewer_from_files`.

# %% tags=["parameters"]
dataset = "synthetic"
profile = "demo"
run_dir = None
seed = 0
method = None           # dino | mae | vicreg; default: the profile's (paper, toy: dino; demo: vicreg)
checkpoint = None
preset = "paper"         # paper | reference (the authors' weights' preprocessing; needs checkpoint)
tasks = None          # default: the profile's tasks (paper Fig. 5: oedema, ADRD, IPH, IVH, SAH); []: pretrained maps alone
scan_id = None        # default: the test scan with the most positive tasks
site = "internal"
max_scans = 40        # test scans measured per task for the lesion-attention table
layer = -1            # layer of the cls attention drawn in the figure (-1: last)

# %%
from fmct_lib import pipeline
from fmct_lib.report import conclusions, plots

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed, method=method, site=site, preset=preset,
                   checkpoint=checkpoint)
P, scans, method = S.profile, S.scans, S.method
max_scans = pipeline.count("max_scans", max_scans, 40)  # checked before any work

# %% [markdown]
# What this dataset allows: the maps of the pretrained encoder and the viewer run on any dataset; fine-tuned
# encoders need a task with positive and negative scans in the training and the test split; the lesion
# measurement needs lesion masks (the synthetic cohort's). The parts it does not allow are skipped, with the reason.

# %%
from fmct_lib.interpret.figure import check_figure_choice
from fmct_lib.interpret.parts import attention_parts

labelled = S.labelled
if S.spec.canvas is None and "mask_path" in labelled:  # the reference chain stretches the head's box to the input
    print(f"preset {preset!r}: lesion masks left out (they map onto the paper chain's canvas only)")
    labelled = labelled.drop(columns="mask_path")
parts = attention_parts(dataset, labelled, tasks)
print(parts)
check_figure_choice(S.scans, labelled, scan_id, layer, P.model.depth)  # before any fine-tuning, not after it

# %%
tasks = [t for t in S.tasks(tasks) if t in parts.tasks] if parts.runs("fine-tuned") else []
encoder = S.encoder()
finetuned = {t: S.finetuned(t, encoder) for t in tasks}
finetuned

# %%
import numpy as np
from fmct_lib.data.manifest import scan_table_path
from fmct_lib.data.preprocess import load_volume, to_canvas_with_affine
from fmct_lib.interpret import (MASKED_TASKS, attention_figure, compute_attention, head_mask, lesion_enrichment,
                                load_case, mask_to_model_input, model_voxel_mm, task_mask)
from fmct_lib.interpret.figure import attention_slices, figure_scan
from fmct_lib.models.checkpoints import load_encoder

spec = S.spec
folder = scan_table_path(dataset).parent
voxel_mm = model_voxel_mm(P)
encoders = {"pretrained": load_encoder(encoder),
            **{f"fine-tuned {t}": load_encoder(path) for t, path in finetuned.items()}}
rows = labelled.set_index("scan_id")

scan_id = scan_id or figure_scan(labelled, tasks)
x, labels = load_case(rows.loc[scan_id], spec, folder)
if spec.canvas is None:  # reference chain: the head's box stretched to the input, so voxel sizes per scan and axis
    _, affine = to_canvas_with_affine(*load_volume(rows.loc[scan_id, "path"]), spec, scan_id)
    voxel_mm = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
results = {name: compute_attention(model, x, voxel_mm) for name, model in encoders.items()}
positive = [t for t in tasks if rows.loc[scan_id, t] == 1]
print(f"scan {scan_id} ({rows.loc[scan_id, 'split']} split): positive for {positive or 'none of the tasks'}")
shown_lesions = [t for t in MASKED_TASKS if t != "fracture" and rows.loc[scan_id].get(t) == 1]
lesion = (None if labels is None  # the fraction of each model voxel in one of the scan's lesions (fractures aside)
          else mask_to_model_input(task_mask(labels, [t for t in MASKED_TASKS if t != "fracture"]), spec))
lesion_name = f"lesions ({'+'.join(shown_lesions) or 'none'})"  # every panel is scored on all of them together
head = head_mask(x)
distance = {name: r.mean_distance_per_layer() for name, r in results.items()}
uniform_distance = next(iter(results.values())).uniform_distance()  # Eq. 1 for uniform attention, same grid

# %% [markdown]
# ## Does the attention fall on the lesion? (test scans, lesion masks known)

# %%
import pandas as pd
from fmct_lib.interpret import lesion_attention_table, summarize_lesion_attention

share = lesion_attention_table([])
if parts.runs("lesion"):
    test = labelled[labelled["split"] == "test"]
    cases = []
    for t in [t for t in tasks if t in MASKED_TASKS]:
        for sid in test[test[t] == 1]["scan_id"].head(max_scans):
            xi, li = load_case(rows.loc[sid], spec, folder)
            fraction, head_i = mask_to_model_input(task_mask(li, t), spec), head_mask(xi)  # lesion weights, head
            for model, name in (("pretrained", "pretrained"), ("fine-tuned", f"fine-tuned {t}")):
                att = compute_attention(encoders[name], xi, voxel_mm).attention_map(layer=layer)
                cases.append({"scan_id": sid, "task": t, "model": model, "attention": att, "lesion": fraction,
                              "head": head_i})
    share = lesion_attention_table(cases)

lesion_summary = summarize_lesion_attention(share, reference="pretrained") if len(share) else pd.DataFrame()
if len(lesion_summary):
    display(lesion_summary)

# %% [markdown]
# ## Fig. 5: attention as multiples of a uniform map (one log scale, magma), attention distance (Eq. 1)

# %%
k = int(np.argmax(lesion.sum(axis=(0, 1)))) if lesion is not None and lesion.any() else x.shape[-1] // 2
fig = attention_figure(x[0].numpy(), results, index=k, axis="axial", layer=layer, mask=lesion, head_mask=head,
                       label=f"{dataset} {scan_id} (profile {P.name})", mask_name=lesion_name)
shown = {name: lesion_enrichment(r, lesion, head, layer) for name, r in results.items()} if lesion is not None else {}
distance_table = pd.DataFrame(distance, index=pd.RangeIndex(1, len(next(iter(distance.values()))) + 1, name="layer"))
distance_table["uniform attention"] = uniform_distance
print("Mean attention distance per layer (mm, Eq. 1), beside what uniform attention gives on this grid:")
display(distance_table.round(1))
figure_data = pd.concat([share.assign(kind="lesion share"),
                         pd.DataFrame([{"model": n, "layer": i + 1, "distance_mm": d} for n, ds in distance.items()
                                       for i, d in enumerate(ds)]).assign(kind="distance per layer",
                                                                          uniform_distance_mm=uniform_distance),
                         pd.DataFrame([{"scan_id": scan_id, "task": "+".join(shown_lesions), "model": n,
                                        "enrichment": e} for n, e in shown.items()])
                         .assign(kind="lesion enrichment of the scan shown")], ignore_index=True)
plots.save_arrays(S.figure_name("fig5_attention"), attention_slices(x[0].numpy(), results, index=k, axis="axial",
                                                                    layer=layer, mask=lesion),
                  root=S.figures)  # the slices drawn
plots.save_figure(fig, S.figure_name("fig5_attention"), figure_data,
                  {"dataset": dataset, "profile": P.to_dict(), "method": method, "encoder": str(encoder),
                   "preset": preset, "spec": S.spec.hash,
                   "finetuned": {t: str(p) for t, p in finetuned.items()}, "scan_id": scan_id, "slice": k,
                   "lesions_outlined": shown_lesions,
                   "layer": layer, "tasks": tasks, "seed": seed, "skipped": parts.skipped}, root=S.figures)

# %% [markdown]
# ## Interactive viewer (pretrained vs fine-tuned; slices, layers, heads, windows)

# %%
from fmct_lib.interpret.viewer import AttentionViewer

viewer = AttentionViewer(x.numpy(), results, mask=lesion, mask_name=lesion_name)
viewer.widget

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.attention_conclusion(lesion_summary, distance, uniform_distance))
if parts.skipped:
    print("\nSkipped on this dataset: " + "; ".join(f"{part} ({why})" for part, why in parts.skipped.items()))

# %% [markdown]
# # 00 · Data: the cohort and the preprocessing chain
#
# What the later notebooks train and evaluate on. By default the synthetic head-CT cohort (MNI152
# phantoms with the paper's conditions inserted, two scanner makes, slice thickness 0.5–5 mm); with
# `-p dataset rsna` (or `cq500`, or a hospital's NIfTI or DICOM export) the same notebook describes an ingested
# dataset. The figure shows one scan through the paper's chain (Methods): RAS → isotropic resampling →
# canvas → centre crop → three HU windows → model input.

# %% tags=["parameters"]
dataset = "synthetic"   # synthetic | rsna | cq500 | a name registered by `fmct ingest nifti` or `fmct ingest dicom`
profile = "demo"        # toy | demo | paper (fmct_lib/config.py)
run_dir = None          # runs root (default: $FMCT_RUNS, else the checkout's runs/ or a per-user folder: fmct info)
seed = 0
example_scan = None     # scan_id to draw through the chain (default: the first test scan with a lesion)

# %%
from fmct_lib import pipeline
from fmct_lib.report import conclusions, naming, plots

S = pipeline.start(dataset, profile, run_dir=run_dir, seed=seed)  # stops here, naming the ingest command, if missing
P, scans = S.profile, S.scans
example_scan = pipeline.check_scan_id("example_scan", example_scan, scans)  # checked before any work
print(f"{dataset}: {len(scans)} scans from {scans['patient_id'].nunique()} patients (profile {P.name})")

# %% [markdown]
# ## The cohort: sites, splits, protocols and prevalence

# %%
from fmct_lib.data.manifest import dataset_info

tasks = [t for t in dataset_info(dataset)["tasks"] if t in scans.columns]
group = ["site", "split"] if "site" in scans.columns else ["split"]
counts = scans.groupby(group).agg(scans=("scan_id", "size"), patients=("patient_id", "nunique"))
prevalence = scans.groupby(group)[tasks].mean().round(3)
protocol = scans.groupby(group).agg(
    thickness_min=("slice_thickness_mm", "min"), thickness_max=("slice_thickness_mm", "max"),
    **{f"make_{m}": ("manufacturer", lambda s, m=m: int((s == m).sum())) for m in sorted(scans["manufacturer"].unique())})
display(counts.join(protocol))
display(prevalence)

# %%
if dataset == "synthetic":
    from IPython.display import Image
    from fmct_lib.data.synthetic.figure import condition_figure

    name = naming.figure_name("fig0a_synthetic_conditions", dataset, P)
    png = condition_figure(S.figures / name, step=P.synth_grid_mm, seed=seed)
    plots.save_figure_data(name, prevalence.reset_index(),
                           {"dataset": dataset, "profile": P.to_dict(), "phantom_grid_mm": P.synth_grid_mm, "seed": seed},
                           root=S.figures)
    display(Image(filename=str(png)))

# %% [markdown]
# ## One scan through the preprocessing chain, and the cache the other notebooks read

# %%
import numpy as np
from fmct_lib.interpret.viewer import display_slice
from fmct_lib.data.preprocess import load_volume, model_input, paper_spec, place_on_canvas, resample

spec = paper_spec(P)
task_cols = [t for t in tasks if t in scans.columns]
test = scans[scans["split"] == "test"]
if example_scan is None:
    lesioned = test[test[task_cols].fillna(0).sum(axis=1) > 0] if task_cols else test
    example_scan = (lesioned if len(lesioned) else test if len(test) else scans)["scan_id"].iloc[0]
row = scans.set_index("scan_id").loc[example_scan]
hu, affine = load_volume(row["path"])
iso, iso_affine = resample(hu, affine, spec)
canvas, _ = place_on_canvas(iso, iso_affine, spec)
x = model_input(canvas[None], spec)[0]
steps = {
    f"raw {hu.shape}\n{np.linalg.norm(affine[:3, :3], axis=0).round(2).tolist()} mm": hu,
    f"RAS, {spec.spacing:g} mm {tuple(iso.shape)}": iso.numpy(),
    f"canvas {spec.canvas}³": canvas.numpy(),
    **{f"window {lv:g}/{w:g} → {spec.input_size}³": x[i].numpy() for i, (lv, w) in enumerate(spec.windows)},
}
fig, axes = plots.print_subplots(1, len(steps), height_mm=52)
for ax, (title, vol) in zip(axes, steps.items()):
    is_hu = vol.max() > 1.5  # HU until the windows scale to [0, 1]
    ax.imshow(display_slice(vol, "axial", vol.shape[2] // 2), cmap="gray", vmin=0, vmax=80 if is_hu else 1)
    ax.set_title(title)
    ax.axis("off")
fig.suptitle(plots.figure_title(f"{dataset} scan {example_scan}: axial mid-slice at each step (HU in the brain window; "
                                "radiological view)", profile=P.name), x=0.0, ha="left")
summary = counts.join(protocol).join(prevalence).reset_index()
plots.save_figure(fig, naming.figure_name("fig0b_preprocessing_chain", dataset, P), summary,
                  {"dataset": dataset, "profile": P.to_dict(), "spec": spec.to_dict(), "spec_hash": spec.hash,
                   "example_scan": example_scan, "seed": seed}, root=S.figures)

# %%
pipeline.ensure_cache(dataset, P)  # built by pipeline.start: the folder the other notebooks read

# %% [markdown]
# ## Conclusion (computed from this run)

# %%
print(conclusions.data_conclusion(scans, tasks))

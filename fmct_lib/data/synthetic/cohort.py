"""The synthetic cohort: sites, patients, conditions and protocols; NIfTI volumes, masks and ``scans.csv``.

Three sites (DESIGN §3):

- ``internal``: labeled; scanner mix 70% A / 30% B; condition draw rates ``DEFAULT_PREVALENCE``;
- ``external``: labeled; 30% A / 70% B; draw rates shifted (``EXTERNAL_SHIFT``: an emergency-department
  mix with more haemorrhage and fewer tumours), for external validation and transfer (paper Fig. 1f-g);
- ``pretrain``: the unlabelled pretraining pool (task columns empty, split ``pretrain``), several times the
  labelled training split (profile ``synth_pretrain``; demo: 6,000 scans, 5× the internal training split),
  drawn from its own seed (``pool_seed``) with patient identifiers of its own, so it is disjoint by patient
  from every labelled split; manufacturers 50/50 with the same slice-thickness spread.

Conditions co-occur as in real data (``sample_conditions``): IVH often extends from an IPH, EDH comes with
a skull fracture, traumatic SAH with SDH or fracture, tumours with vasogenic oedema; mass effect and
midline shift follow from the size of what was painted. The label rates are therefore above the draw rates:
on the demo's internal site IVH 0.095 (drawn 0.05), SAH 0.12 (0.09), fracture 0.06 (0.04), and oedema 0.16
(0.07), since a tumour's oedema (75% of tumours) carries the oedema label: over half of the oedema positives
are tumours (measured 2026-12-06; ``figures/fig0a_synthetic_conditions.csv`` gives a cohort's label rates). About 15% of patients have a second
reconstruction of the same study (a thin and a thick series, as in CQ500), so patient-level splitting
(8:1:1 of the labelled sites, ``splits.assign_splits``) matters.

Layout under ``<data root>/synthetic/``: ``volumes/<scan_id>.nii.gz`` (int16 HU, RAS, in-plane spacing =
phantom grid, z spacing = slice thickness), ``masks/<scan_id>.nii.gz`` (uint8 label map,
``lesions.LABEL_CODES``; 10 = ventricles), ``meta/<scan_id>.json`` (the row and the subject parameters),
``cohort.json`` (the generating configuration) and ``scans.csv``.

Determinism: every patient draws from ``SeedSequence([seed, site, index])`` (the pool: ``pool_seed``), so a
scan does not depend on the worker count or on the other sites' sizes; gzip is written without a timestamp.
Re-running skips finished scans (their ``meta`` file is written last), so an interrupted run resumes, and a
site's first n patients are the same for any size, so growing a site (``--n-pretrain``) adds scans without
touching those there. A different seed, grid or prevalence in the same folder is refused (delete the
folder or use another data root).
"""
from __future__ import annotations

import gzip
import json
import os
import warnings
from concurrent.futures import as_completed
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from ...progress import tqdm

from ...config import get_profile
from ...io import atomic_open, exclusive_lock, remove_leftovers_in
from ...paths import data_root
from ...workers import watch_parent
from ..manifest import PAPER_TASKS, dataset_lock, register_dataset, write_scans
from ..pool import cancelling_pool
from ..splits import POOL_SPLIT, assign_splits
from .atlas import load_atlas
from .lesions import CONDITIONS
from .phantom import render, sample_subject
from .scanner import SCANNERS, acquire

__all__ = ["generate_cohort", "plan_cohort", "planned_scan_table", "sample_conditions", "DEFAULT_PREVALENCE",
           "EXTERNAL_SHIFT", "SITES", "FINDING_COLUMNS", "write_nifti"]

GENERATOR_VERSION = 1
DATASET = "synthetic"
SITES = ("internal", "external", "pretrain")
_SITE_CODE = {"internal": "I", "external": "E", "pretrain": "P"}
SCANNER_A_FRACTION = {"internal": 0.7, "external": 0.3, "pretrain": 0.5}
POOL_SEED_OFFSET = 1     # default pool seed = seed + 1: the pool is not a re-draw of the labelled patients
SECOND_SERIES_FRACTION = 0.15

DEFAULT_PREVALENCE = dict(tumor=0.12, hydrocephalus=0.08, edema=0.07, adrd=0.12, iph=0.12, ivh=0.05,
                          sdh=0.12, edh=0.04, sah=0.09, fracture=0.04)
EXTERNAL_SHIFT = dict(tumor=0.5, hydrocephalus=0.75, edema=0.8, adrd=1.3, iph=1.3, ivh=1.2, sdh=1.3,
                      edh=1.3, sah=1.3, fracture=1.5)
FINDING_COLUMNS = ["bleed_left", "bleed_right", "midline_shift", "mass_effect", "fracture", "chronic_bleed"]
LABEL_COLUMNS = PAPER_TASKS + [c for c in FINDING_COLUMNS if c not in PAPER_TASKS]
TABLE_COLUMNS = (["scan_id", "patient_id", "path", "split", "manufacturer", "slice_thickness_mm", "spacing",
                  "kvp", "site", "series", "mask_path", "age", "midline_shift_mm"] + LABEL_COLUMNS)


def sample_conditions(rng: np.random.Generator, prevalence: dict) -> tuple[str, ...]:
    """Conditions of one patient: independent draws, then the co-occurrences of real cohorts."""
    present = {k for k in CONDITIONS if rng.random() < prevalence.get(k, 0.0)}
    extension, fracture_with_edh, traumatic_sah = rng.random(3)
    if "hydrocephalus" in present:
        present.discard("adrd")             # one cause of large ventricles per subject
    if "iph" in present and extension < 0.35:
        present.add("ivh")                  # intraventricular extension
    if "edh" in present and fracture_with_edh < 0.7:
        present.add("fracture")
    if ("sdh" in present or "fracture" in present) and traumatic_sah < 0.25:
        present.add("sah")
    return tuple(sorted(present))


@dataclass(frozen=True)
class PatientPlan:
    patient_id: str
    site: str
    subject_seed: int
    conditions: tuple[str, ...]
    manufacturer: str
    kvp: int
    slices_mm: tuple[float, ...]      # one per series (reconstruction)

    def scan_ids(self) -> list[str]:
        return [f"{self.patient_id}-S{k + 1}" for k in range(len(self.slices_mm))]


def _plan_patient(seed: int, site: str, index: int, prevalence: dict) -> PatientPlan:
    rng = np.random.default_rng(np.random.SeedSequence([seed, SITES.index(site), index]))
    conditions = sample_conditions(rng, prevalence)
    vendor = "A" if rng.random() < SCANNER_A_FRACTION[site] else "B"
    sc = SCANNERS[vendor]
    first = float(rng.choice(sc.thickness_mm, p=sc.thickness_p))
    slices = [first]
    if rng.random() < SECOND_SERIES_FRACTION:       # a thin and a thick reconstruction of one study
        slices.append(min(sc.thickness_mm) if first >= 2.5 else max(sc.thickness_mm))
    return PatientPlan(patient_id=f"SYN{_SITE_CODE[site]}{index:05d}", site=site,
                       subject_seed=int(rng.integers(2 ** 31)), conditions=conditions, manufacturer=vendor,
                       kvp=int(rng.choice(sc.kvps)), slices_mm=tuple(slices))


def site_prevalence(site: str, prevalence: dict | None = None) -> dict:
    base = dict(DEFAULT_PREVALENCE)
    unknown = set(prevalence or {}) - set(CONDITIONS)
    if unknown:
        raise ValueError(f"prevalence: unknown conditions {sorted(unknown)}; known: {list(CONDITIONS)}")
    base.update(prevalence or {})
    invalid = {k: v for k, v in base.items() if not 0 <= v <= 1}
    if invalid:
        raise ValueError(f"prevalence: rates must lie in [0, 1], got {invalid}")
    if site == "external":
        base = {k: min(0.9, v * EXTERNAL_SHIFT[k]) for k, v in base.items()}
    return base


def plan_cohort(sizes: dict, seed: int = 0, prevalence: dict | None = None,
                pool_seed: int | None = None) -> list[PatientPlan]:
    """Patients of every site until each site has exactly ``sizes[site]`` scans; the pool draws from
    ``pool_seed`` (default ``seed + 1``)."""
    pool_seed = seed + POOL_SEED_OFFSET if pool_seed is None else pool_seed
    plans = []
    for site in SITES:
        prev, n, i = site_prevalence(site, prevalence), 0, 0
        site_seed = pool_seed if site == "pretrain" else seed
        while n < sizes[site]:
            pp = _plan_patient(site_seed, site, i, prev)
            if n + len(pp.slices_mm) > sizes[site]:
                pp = PatientPlan(**{**asdict(pp), "slices_mm": pp.slices_mm[:1]})
            plans.append(pp)
            n, i = n + len(pp.slices_mm), i + 1
    return plans


# ------------------------------------------------------------------------------------------ writing

def _atomic_write_bytes(data: bytes, path: Path) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def write_nifti(array: np.ndarray, affine: np.ndarray, path: Path, description: str = "") -> Path:
    """Write a ``.nii.gz`` atomically and reproducibly (gzip header without a timestamp)."""
    img = nib.Nifti1Image(array, affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm")
    img.header["descrip"] = description[:79].encode()
    _atomic_write_bytes(gzip.compress(img.to_bytes(), compresslevel=1, mtime=0), Path(path))
    return Path(path)


def _build_patient(pp: PatientPlan, out: Path, step: float) -> list[dict]:
    """Render one patient, acquire each series, write volumes, masks and meta (meta last).

    BLAS runs single-threaded here: a multi-threaded matrix product may sum in another order, which
    would make the bytes depend on the worker count.
    """
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        return _build_patient_files(pp, out, step)


def _build_patient_files(pp: PatientPlan, out: Path, step: float) -> list[dict]:
    params = sample_subject(pp.subject_seed, pp.conditions)
    ph = render(params, load_atlas(step))
    labeled = pp.site != "pretrain"
    rows = []
    for k, (scan_id, slice_mm) in enumerate(zip(pp.scan_ids(), pp.slices_mm)):
        rng = np.random.default_rng(np.random.SeedSequence([pp.subject_seed, 3, k]))
        vol, lab, affine = acquire(ph.hu, ph.labels, ph.affine, pp.manufacturer, slice_mm, pp.kvp, rng)
        desc = f"fmct synthetic {pp.manufacturer} {slice_mm:g}mm {pp.kvp}kVp"
        write_nifti(vol, affine, out / "volumes" / f"{scan_id}.nii.gz", desc)
        write_nifti(lab, affine, out / "masks" / f"{scan_id}.nii.gz", "fmct lesion label map")
        row = dict(scan_id=scan_id, patient_id=pp.patient_id, path=f"volumes/{scan_id}.nii.gz",
                   manufacturer=pp.manufacturer, slice_thickness_mm=slice_mm,
                   spacing=f"{step:g}x{step:g}x{slice_mm:g}", kvp=pp.kvp, site=pp.site, series=k + 1,
                   mask_path=f"masks/{scan_id}.nii.gz", age=params.age,
                   midline_shift_mm=ph.midline_shift_mm if labeled else None)
        row.update({c: (int(ph.findings[c]) if labeled else None) for c in LABEL_COLUMNS})
        meta = dict(row=row, subject=params.to_dict(), findings=ph.findings)
        _atomic_write_bytes(json.dumps(meta, indent=1, default=float).encode(),
                            out / "meta" / f"{scan_id}.json")
        rows.append(row)
    return rows


def _worker_init(step: float, parent: int) -> None:
    watch_parent(parent)
    load_atlas(step)


def _build_safely(pp: PatientPlan, out: Path, step: float):
    try:
        return pp.patient_id, _build_patient(pp, out, step), None
    except Exception as err:      # one failed phantom must not stop the cohort
        return pp.patient_id, [], f"{type(err).__name__}: {err}"


def _is_done(pp: PatientPlan, out: Path) -> bool:
    return all((out / sub / f"{sid}{ext}").exists() for sid in pp.scan_ids()
               for sub, ext in (("meta", ".json"), ("volumes", ".nii.gz"), ("masks", ".nii.gz")))


def _check_config(out: Path, config: dict) -> None:
    """Refuse a folder generated with another seed, grid or prevalence; sizes may change (a site's first n
    patients are the same for every size), and the record is rewritten with the new sizes."""
    path = out / "cohort.json"
    if path.exists():
        old = json.loads(path.read_text())
        keys = sorted(k for k in set(old) | set(config) if k != "sizes" and old.get(k) != config.get(k))
        if keys:
            raise ValueError(f"{path}: the cohort there was generated with another configuration (differs in "
                             f"{', '.join(keys)}; there: sizes {old.get('sizes')}, seed {old.get('seed')}). "
                             "Delete that folder, or generate into another data root (--root / $FMCT_DATA).")
    _atomic_write_bytes(json.dumps(config, indent=1, sort_keys=True).encode(), path)


def generate_cohort(profile="demo", root=None, seed: int = 0, workers: int | None = None,
                    prevalence: dict | None = None, n_internal: int | None = None,
                    n_external: int | None = None, n_pretrain: int | None = None,
                    pool_seed: int | None = None) -> pd.DataFrame:
    """Generate (or finish) the synthetic cohort under ``<root or data root>/synthetic``; return its scan table.

    Sizes default to the profile's ``synth_internal/external/pretrain`` (scans) and the phantom grid to
    ``synth_grid_mm``. ``prevalence`` overrides ``DEFAULT_PREVALENCE`` (the external site keeps its shift).
    The unlabelled pool draws from ``pool_seed`` (default ``seed + 1``).
    """
    prof = get_profile(profile)
    step = float(prof.synth_grid_mm)
    sizes = dict(internal=prof.synth_internal if n_internal is None else n_internal,
                 external=prof.synth_external if n_external is None else n_external,
                 pretrain=prof.synth_pretrain if n_pretrain is None else n_pretrain)
    if min(sizes.values()) < 0:
        raise ValueError(f"cohort sizes must be >= 0, got {sizes}")
    root = Path(root) if root is not None else data_root()
    out = root / DATASET
    pool_seed = int(seed) + POOL_SEED_OFFSET if pool_seed is None else int(pool_seed)
    config = dict(generator_version=GENERATOR_VERSION, seed=int(seed), pool_seed=pool_seed, grid_mm=step,
                  sizes=sizes,
                  prevalence={s: site_prevalence(s, prevalence) for s in SITES})
    out.mkdir(parents=True, exist_ok=True)
    plans = plan_cohort(sizes, seed, prevalence, pool_seed)
    if all(_is_done(pp, out) for pp in plans):  # complete: read without the lock, so readers never wait
        _check_config(out, config)
    else:  # one generator at a time (two wrote the same scans twice); under the lock what is still to do
        with exclusive_lock(dataset_lock(DATASET, root), what=f"synthetic cohort {out}", wait=0):  # as ingestion
            _check_config(out, config)
            todo = [pp for pp in plans if not _is_done(pp, out)]  # none where another process just finished it
            if todo:
                _generate(plans, todo, out, prof.name, step, workers)
    return _assemble_table(plans, out, root, seed)


def _generate(plans: list, todo: list, out: Path, profile: str, step: float, workers: int | None) -> None:
    """Write the scans of ``todo`` (of the cohort's ``plans``) under ``out``, ``workers`` processes; a patient that
    fails is listed in ``failed.csv`` and warned about, never stopping the others. Call it holding the lock."""
    load_atlas(step)                                   # build the atlas cache once, before the workers
    workers = min(workers or os.cpu_count() or 1, len(todo))
    failures = []
    n_total, n_todo = (sum(len(pp.slices_mm) for pp in group) for group in (plans, todo))
    for sub, ext in (("meta", ".json"), ("volumes", ".nii.gz"), ("masks", ".nii.gz")):  # a killed run's temporaries
        remove_leftovers_in(out / sub, [f"{sid}{ext}" for pp in todo for sid in pp.scan_ids()])
    if n_todo < n_total:
        tqdm.write(f"synthetic cohort: {n_total - n_todo} of {n_total} scans were generated in an earlier run and "
                   f"are kept; generating the other {n_todo}")
    bar = tqdm(total=n_total, initial=n_total - n_todo, desc=f"synthetic cohort ({profile}, {step:g} mm)",
               unit="scan")
    if workers <= 1:
        for pp in todo:
            pid, rows, err = _build_safely(pp, out, step)
            failures += [(pid, err)] if err else []
            bar.update(len(pp.slices_mm))
    else:
        with cancelling_pool(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                             initargs=(step, os.getpid())) as pool:
            futures = {pool.submit(_build_safely, pp, out, step): pp for pp in todo}
            for fut in as_completed(futures):
                pid, rows, err = fut.result()
                failures += [(pid, err)] if err else []
                bar.update(len(futures[fut].slices_mm))
    bar.close()
    if failures:
        pd.DataFrame(failures, columns=["patient_id", "reason"]).to_csv(out / "failed.csv", index=False)
        warnings.warn(f"{len(failures)} synthetic patients failed (see {out / 'failed.csv'}); "
                      f"first: {failures[0]}")


def planned_scan_table(profile="demo", seed: int = 0, prevalence: dict | None = None,
                       n_internal: int | None = None, n_external: int | None = None, n_pretrain: int | None = None,
                       pool_seed: int | None = None) -> pd.DataFrame:
    """The rows that ``generate_cohort`` with the same arguments writes to ``scans.csv`` (the same scans in the
    same order, with their splits), from the plan alone, without rendering a scan: the columns the plan decides
    (``scan_id`` to ``mask_path``; paths relative to the dataset folder, as written). The columns rendering decides
    (age, midline shift, labels) are left out. A patient whose rendering failed is missing from the written
    table, and only there. Takes seconds at the demo size; the provenance test finds a pretraining run's scans
    with it."""
    prof = get_profile(profile)
    step = float(prof.synth_grid_mm)
    sizes = dict(internal=prof.synth_internal if n_internal is None else n_internal,
                 external=prof.synth_external if n_external is None else n_external,
                 pretrain=prof.synth_pretrain if n_pretrain is None else n_pretrain)
    planned = TABLE_COLUMNS[:TABLE_COLUMNS.index("mask_path") + 1]
    rows = []
    for pp in plan_cohort(sizes, seed, prevalence, pool_seed):
        for k, (scan_id, slice_mm) in enumerate(zip(pp.scan_ids(), pp.slices_mm)):
            rows.append(dict(scan_id=scan_id, patient_id=pp.patient_id, path=f"volumes/{scan_id}.nii.gz",
                             manufacturer=pp.manufacturer, slice_thickness_mm=slice_mm,
                             spacing=f"{step:g}x{step:g}x{slice_mm:g}", kvp=pp.kvp, site=pp.site, series=k + 1,
                             mask_path=f"masks/{scan_id}.nii.gz"))
    df = pd.DataFrame(rows, columns=[c for c in planned if c != "split"])
    pool = (df["site"] == "pretrain").to_numpy()
    split = pd.Series(POOL_SPLIT, index=df.index, dtype=object)
    split[~pool] = assign_splits(df.loc[~pool, "patient_id"], seed)
    df.insert(3, "split", split)
    return df


def _assemble_table(plans: list[PatientPlan], out: Path, root: Path, seed: int) -> pd.DataFrame:
    rows = []
    for pp in plans:
        for sid in pp.scan_ids():
            meta = out / "meta" / f"{sid}.json"
            if meta.exists():
                rows.append(json.loads(meta.read_text())["row"])
    df = pd.DataFrame(rows, columns=[c for c in TABLE_COLUMNS if c != "split"])
    pool = (df["site"] == "pretrain").to_numpy()
    split = pd.Series(POOL_SPLIT, index=df.index, dtype=object)
    split[~pool] = assign_splits(df.loc[~pool, "patient_id"], seed)
    df.insert(3, "split", split)
    for c in LABEL_COLUMNS:
        df[c] = df[c].astype("Int64")
    write_scans(df, DATASET, root)
    register_dataset(
        DATASET, description="Synthetic anatomy-based head-CT cohort generated by fmct",
        tasks=LABEL_COLUMNS, licence="Apache-2.0 (generated)", how_to_obtain="fmct synth --profile demo",
        ingest_command="fmct synth --profile demo", root=root)
    return df

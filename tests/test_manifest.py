"""The dataset registry, scan tables and patient-level splits."""
import shutil

import pandas as pd
import pytest

from fmct_lib.data.manifest import (MANIFEST_COLUMNS, PAPER_TASKS, DatasetNotAvailable, dataset_info, load_scans,
                                    paper_tasks, read_manifest, register_dataset, retrieval_subtypes, write_scans)
from fmct_lib.data.splits import assign_splits, patient_split, subsample_patients
from fmct_lib.paths import REPO_ROOT


def test_committed_manifest_lists_the_known_datasets():
    df = read_manifest()
    assert {"synthetic", "rsna", "cq500"} <= set(df["name"])
    assert not df["scan_table"].str.startswith("/").any(), "no machine-specific paths in the committed file"
    assert dataset_info("rsna")["tasks"] == ["ich", "edh", "iph", "ivh", "sah", "sdh"]


def test_each_dataset_defaults_to_the_tasks_the_paper_evaluates_on_it(tmp_path, monkeypatch):
    # Methods, "Datasets": RSNA 5 tasks (any = ICH, IPH, IVH, SAH, SDH: not the EDH its labels have), CQ500 10
    # (not its fractures or chronic bleed); retrieval: RSNA 4 subtypes, CQ500 6
    assert paper_tasks("rsna") == ["ich", "iph", "ivh", "sah", "sdh"]
    assert paper_tasks("cq500") == ["ich", "iph", "ivh", "sdh", "edh", "sah", "bleed_left", "bleed_right",
                                    "midline_shift", "mass_effect"]
    assert paper_tasks("synthetic") == PAPER_TASKS
    assert retrieval_subtypes("rsna") == ["iph", "ivh", "sah", "sdh"]
    assert retrieval_subtypes("cq500") == ["ich", "iph", "ivh", "sdh", "edh", "sah"]
    assert retrieval_subtypes("synthetic") == ["iph", "ivh", "sdh", "edh", "sah"]
    # another dataset: the paper's ten where it has them, else all of its own
    path = tmp_path / "m.csv"
    monkeypatch.setenv("FMCT_MANIFEST", str(path))
    register_dataset("hosp", description="a hospital", tasks=["stroke", "sah", "ich"])
    register_dataset("other", description="another", tasks=["stroke", "tumour"])
    assert paper_tasks("hosp") == ["sah", "ich"] and paper_tasks("other") == ["stroke", "tumour"]


def test_register_appends_and_never_rewrites(tmp_path):
    path = tmp_path / "m.csv"
    assert register_dataset("hosp", description="a hospital", tasks=["ich", "adrd"], manifest=path)
    before = path.read_text()
    assert not register_dataset("hosp", description="changed", tasks=["x"], manifest=path)
    assert path.read_text() == before
    assert register_dataset("hosp2", description="another", tasks=["ich"], manifest=path)
    df = read_manifest(path)
    assert list(df["name"]) == ["hosp", "hosp2"] and df.loc[0, "scan_table"] == "hosp/scans.csv"
    assert dataset_info("hosp", path)["tasks"] == ["ich", "adrd"]
    with pytest.raises(KeyError, match="'nope' is not in"):
        dataset_info("nope", path)


def test_missing_dataset_names_the_ingest_command(tmp_path):
    with pytest.raises(DatasetNotAvailable, match="fmct ingest rsna --source DIR"):
        load_scans("rsna", root=tmp_path)
    with pytest.raises(DatasetNotAvailable, match="fmct ingest nifti --name mine"):
        load_scans("mine", root=tmp_path)


def test_scan_table_round_trip_resolves_paths_and_refuses_crossing_patients(tmp_path):
    absolute = str(tmp_path / "shared" / "b.nii")  # absolute, inside the data root (outside: tests/bad_inputs)
    df = pd.DataFrame({"scan_id": ["a", "b"], "patient_id": ["p1", "p2"], "path": ["v/a.nii", absolute],
                       "split": ["train", "test"], "manufacturer": ["A", "B"], "slice_thickness_mm": [5.0, 1.0],
                       "spacing": ["1x1x5", "1x1x1"], "ich": [1, 0]})
    write_scans(df, "ds", root=tmp_path)
    back = load_scans("ds", root=tmp_path)
    assert back.loc[0, "path"] == str(tmp_path / "ds" / "v/a.nii") and back.loc[1, "path"] == absolute
    bad = df.assign(patient_id=["p1", "p1"])
    with pytest.raises(ValueError, match=r"more than one split: \['p1'\]"):
        write_scans(bad, "ds", root=tmp_path)
    with pytest.raises(ValueError, match="lacks columns"):
        write_scans(df.drop(columns="split"), "ds", root=tmp_path)


def test_splits_are_patient_level_deterministic_and_near_8_1_1():
    pids = [f"P{i:05d}" for i in range(5000) for _ in range(2)]  # two scans per patient
    splits = assign_splits(pids, seed=3)
    per_patient = pd.DataFrame({"p": pids, "s": splits}).groupby("p")["s"].nunique()
    assert (per_patient == 1).all()
    assert splits == assign_splits(pids, seed=3)
    assert splits != assign_splits(pids, seed=4)
    share = pd.Series(splits[::2]).value_counts(normalize=True)
    assert abs(share["train"] - 0.8) < 0.03 and abs(share["val"] - 0.1) < 0.02 and abs(share["test"] - 0.1) < 0.02
    # a patient's split does not depend on who else is in the table
    assert patient_split("P00007", seed=3) == splits[14]
    with pytest.raises(ValueError, match="summing to 1"):
        patient_split("x", ratios=(0.5, 0.5, 0.5))


def test_pretraining_fractions_are_nested_patient_subsets():
    pids = [f"P{i}" for i in range(1000)]
    f10, f30, f100 = (subsample_patients(pids, f, seed=1) for f in (0.1, 0.3, 1.0))
    assert len(f10) == 100 and len(f30) == 300 and f100 == set(pids)
    assert f10 <= f30 <= f100
    assert subsample_patients(pids, 0.3, seed=2) != f30
    with pytest.raises(ValueError):
        subsample_patients(pids, 0.0)


def test_a_dataset_name_in_the_wrong_case_names_the_dataset_meant(tmp_path, monkeypatch):
    """``-p dataset RSNA`` (issue 26, item 10): the error says which dataset was meant and lists the known
    ones, instead of an ingest command for a new dataset called RSNA."""
    monkeypatch.setenv("FMCT_DATA", str(tmp_path))
    with pytest.raises(DatasetNotAvailable, match="did you mean 'rsna'") as err:
        load_scans("RSNA")
    assert "fmct ingest" not in str(err.value) and "synthetic" in str(err.value)
    with pytest.raises(DatasetNotAvailable, match="Known datasets: .*cq500"):
        load_scans("cq500")
    # a typo of a dataset that is there (an audit's `-p dataset mien`): the one meant, not an ingest command
    register_dataset("mine", description="a hospital", tasks=["ich"], root=tmp_path)
    write_scans(pd.DataFrame({"scan_id": ["s0"], "patient_id": ["p0"], "path": ["volumes/s0.nii.gz"],
                              "split": ["train"], "manufacturer": ["GE"], "slice_thickness_mm": [5.0],
                              "spacing": ["1x1x5"], "ich": [1]}), "mine")
    with pytest.raises(DatasetNotAvailable, match="dataset 'mien' is not known; did you mean 'mine'") as err:
        load_scans("mien")
    assert "fmct ingest" not in str(err.value)
    with pytest.raises(DatasetNotAvailable, match="(?s)dataset 'hospital' is not available: .* fmct ingest nifti"):
        load_scans("hospital")  # no dataset near it: a new one to ingest
    monkeypatch.setenv("FMCT_MANIFEST", str(tmp_path / "not_yet.csv"))  # set, but nothing ingested yet
    with pytest.raises(FileNotFoundError, match=r"not_yet.csv: no such dataset registry; \$FMCT_MANIFEST names it"):
        read_manifest()


# ------------------------------------------------------------- the user's registry (issue 26, items 2-3)
def test_a_new_dataset_is_registered_under_the_data_root_and_read_with_the_shipped_ones(tmp_path, monkeypatch):
    from fmct_lib.data.manifest import USER_REGISTRY, registry_files
    from fmct_lib.paths import SHIPPED_MANIFEST
    monkeypatch.delenv("FMCT_MANIFEST", raising=False)
    monkeypatch.setenv("FMCT_DATA", str(tmp_path / "data"))
    shipped = SHIPPED_MANIFEST.read_bytes()
    user = tmp_path / "data" / USER_REGISTRY
    assert registry_files() == [SHIPPED_MANIFEST, user]
    assert SHIPPED_MANIFEST.samefile(REPO_ROOT / "data_manifest.csv")
    assert not register_dataset("rsna", description="again", tasks=["ich"])  # known: nothing written
    assert not user.exists()
    assert register_dataset("hosp", description="a hospital", tasks=["ich", "sah"])
    assert register_dataset("hosp2", description="another, with a comma", tasks=["ich"])
    assert not register_dataset("hosp", description="changed", tasks=["x"])
    assert SHIPPED_MANIFEST.read_bytes() == shipped
    assert user.read_text().splitlines()[0] == ",".join(MANIFEST_COLUMNS)
    assert list(read_manifest(user)["name"]) == ["hosp", "hosp2"]
    names = list(read_manifest()["name"])
    assert names == list(read_manifest(SHIPPED_MANIFEST)["name"]) + ["hosp", "hosp2"]
    assert dataset_info("hosp")["tasks"] == ["ich", "sah"]
    assert dataset_info("hosp2")["description"] == "another, with a comma"
    with pytest.raises(KeyError, match=f"'nope' is not in {SHIPPED_MANIFEST} and {user}"):
        dataset_info("nope")
    user.write_text(user.read_text() + "synthetic,a second one,,,,,,synthetic/scans.csv,\n")
    with pytest.raises(ValueError, match=rf"{user}: datasets \['synthetic'\] are already in {SHIPPED_MANIFEST}"):
        read_manifest()


def test_registering_in_a_named_manifest_appends_and_keeps_its_bytes_and_crlf_endings(tmp_path):
    path = tmp_path / "m.csv"
    shipped = (REPO_ROOT / "data_manifest.csv").read_bytes()  # CRLF as committed (a row added with LF as well)
    original = shipped.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    assert original.count(b"\r\n") == original.count(b"\n") > 1
    path.write_bytes(original)
    assert register_dataset("hosp", description='say "hi", then', tasks=["ich"], manifest=path)
    added = path.read_bytes()
    assert added.startswith(original) and added.endswith(b"\r\n") and b"\n" not in added[len(original):-1]
    assert read_manifest(path).iloc[-1]["description"] == 'say "hi", then'
    lf = tmp_path / "lf.csv"
    lf.write_bytes(original.replace(b"\r\n", b"\n").rstrip(b"\n"))  # LF, and no newline at the end
    assert register_dataset("hosp", description="d", tasks=[], manifest=lf)
    names = list(read_manifest(lf)["name"])
    assert b"\r" not in lf.read_bytes() and names[-1] == "hosp" and names[:-1] == list(read_manifest(path)["name"])[:-1]


@pytest.mark.slow
def test_running_on_your_own_data_leaves_a_checkout_as_git_keeps_it(tmp_path):
    """A copy of the checkout, no FMCT_* variable: ingest a NIfTI folder and save a figure of a run on it the
    way the notebooks do. Only the roots git ignores (data/, cache/, runs/) change; the committed
    data_manifest.csv keeps its bytes and figures/ (the gallery) gains nothing."""
    import os
    import subprocess
    import sys

    from _support import tiny_nifti_folder
    checkout = tmp_path / "checkout"
    checkout.mkdir()
    for name in ["pyproject.toml", "data_manifest.csv", ".gitignore", "fmct_lib", "figures"]:
        copy = shutil.copytree if (REPO_ROOT / name).is_dir() else shutil.copy2
        kwargs = {"symlinks": True, "ignore": shutil.ignore_patterns("__pycache__")} if copy is shutil.copytree else {}
        copy(REPO_ROOT / name, checkout / name, **kwargs)
    ignored = {"data", "cache", "runs"}
    assert {f"/{name}/" for name in ignored} <= set((REPO_ROOT / ".gitignore").read_text().split()), \
        "data/, cache/ and runs/ must be ignored by git"

    def tracked_files():
        return {str(p.relative_to(checkout)): p.read_bytes() for p in checkout.rglob("*")
                if p.is_file() and p.relative_to(checkout).parts[0] not in ignored and "__pycache__" not in p.parts}

    before = tracked_files()
    labels = tiny_nifti_folder(tmp_path / "hospital", n_patients=2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("FMCT_")}
    env.update(PYTHONPATH=str(checkout), MPLBACKEND="Agg")
    code = f"""
import matplotlib.pyplot as plt, pandas as pd
from fmct_lib.cli import main
from fmct_lib.report import naming, plots
from fmct_lib.data.manifest import dataset_info
assert main(["ingest", "nifti", "--name", "myhospital", "--source", {str(labels.parent / "volumes")!r},
             "--labels", {str(labels)!r}, "--map", "ich=ich", "--workers", "1"]) == 0
assert dataset_info("myhospital")["tasks"] == ["ich"]
paths = plots.save_figure(plt.figure(), naming.figure_name("fig2_fewshot_auroc", "myhospital", "toy"),
                          pd.DataFrame({{"k": [8]}}), {{}})
print(paths["png"])
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=checkout, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    after = tracked_files()
    assert {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
            "changed": [name for name in before if name in after and before[name] != after[name]]} == \
        {"added": [], "removed": [], "changed": []}
    assert out.stdout.strip().endswith("runs/figures/fig2_fewshot_auroc__myhospital_toy.png")
    assert (checkout / "data" / "myhospital" / "scans.csv").exists()
    assert "myhospital" in (checkout / "data" / "datasets.csv").read_text()

"""The dataset registry, scan tables and patient-level splits."""
import pandas as pd
import pytest

from fmct_lib.data.manifest import (DatasetNotAvailable, dataset_info, load_scans, read_manifest,
                                    register_dataset, write_scans)
from fmct_lib.data.splits import assign_splits, patient_split, subsample_patients


def test_committed_manifest_lists_the_known_datasets():
    df = read_manifest()
    assert {"synthetic", "rsna", "cq500"} <= set(df["name"])
    assert not df["scan_table"].str.startswith("/").any(), "no machine-specific paths in the committed file"
    assert dataset_info("rsna")["tasks"] == ["ich", "edh", "iph", "ivh", "sah", "sdh"]


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

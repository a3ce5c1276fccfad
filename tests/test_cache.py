"""The preprocessed-volume cache: round trip, resume, rejects, stale specs, workers, the CLI."""
from __future__ import annotations

import json
from dataclasses import replace

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import fmct_lib.data.cache as cache
from fmct_lib.data.cache import CachedVolumes, build_cache, cache_dir, read_index
from fmct_lib.data.manifest import write_scans
from fmct_lib.data.preprocess import AIR_HU, PreprocessSpec, load_volume, to_canvas_with_affine

SPEC = PreprocessSpec(name="paper", spacing=2.0, canvas=24, eval_crop=16, input_size=8)
AFFINE = np.diag([-1.5, 1.5, 4.0, 1.0])


def head(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.arange(n) for n in (30, 28, 10)], indexing="ij")
    c = rng.uniform([10, 10, 3], [20, 18, 7])
    r2 = ((g[0] - c[0]) / 8) ** 2 + ((g[1] - c[1]) / 9) ** 2 + ((g[2] - c[2]) / 3) ** 2
    return np.where(r2 < 1, 40 + 1000 * (r2 > 0.7), AIR_HU).astype(np.int16)


@pytest.fixture
def dataset(tmp_path):
    """A 4-scan dataset under tmp_path/data, one of them a truncated gzip; the cache root beside it."""
    folder = tmp_path / "data" / "toyset"
    folder.mkdir(parents=True)
    rows = []
    for i in range(4):
        path = folder / f"scan{i}.nii.gz"
        nib.save(nib.Nifti1Image(head(i), AFFINE), path)
        rows.append({"scan_id": f"s{i}" if i != 2 else "CQ500CT2 CT/Plain", "patient_id": f"p{i}",
                     "path": path.name, "split": "train", "manufacturer": "GE", "slice_thickness_mm": 4.0,
                     "spacing": "1.5x1.5x4"})
    corrupt = folder / "scan3.nii.gz"
    corrupt.write_bytes(corrupt.read_bytes()[:200])
    write_scans(pd.DataFrame(rows), "toyset", root=tmp_path / "data")
    return {"data_root": tmp_path / "data", "root": tmp_path / "cache", "folder": folder}


def test_round_trip_and_rejects(dataset):
    out = build_cache("toyset", SPEC, root=dataset["root"], data_root=dataset["data_root"], workers=1)
    assert out == dataset["root"] / "toyset" / SPEC.cache_key
    assert json.loads((out / "spec.json").read_text()) == json.loads(json.dumps(SPEC.stored()))
    rejects = pd.read_csv(out / "rejects.csv")
    assert rejects["scan_id"].tolist() == ["s3"]
    assert "scan3.nii.gz" in rejects["path"][0] and "truncated or corrupt gzip" in rejects["reason"][0]
    data = CachedVolumes("toyset", SPEC, root=dataset["root"])
    assert len(data) == 3 and sorted(data.index["scan_id"]) == ["CQ500CT2 CT/Plain", "s0", "s1"]
    for i in range(len(data)):
        item = data[i]
        n = {"s0": 0, "s1": 1, "CQ500CT2 CT/Plain": 2}[item["scan_id"]]
        expected, affine = to_canvas_with_affine(*load_volume(dataset["folder"] / f"scan{n}.nii.gz"), SPEC)
        assert item["volume"].dtype == torch.int16 and item["volume"].shape == (24, 24, 24)
        torch.testing.assert_close(item["volume"], expected, rtol=0, atol=0)
        np.testing.assert_allclose(data.affine(i), affine, atol=1e-5)
    assert not list(out.glob("*.gz")) and not list(out.glob(".*.tmp"))  # plain .npy, no leftovers
    loader = torch.utils.data.DataLoader(data, batch_size=2)
    batch = next(iter(loader))
    assert batch["volume"].shape == (2, 24, 24, 24) and len(batch["scan_id"]) == 2
    with pytest.raises(KeyError, match="s3"):
        CachedVolumes("toyset", SPEC, scan_ids=["s0", "s3"], root=dataset["root"])
    assert CachedVolumes("toyset", SPEC, scan_ids=["s1"], root=dataset["root"])[0]["scan_id"] == "s1"
    # in the order asked for, not the index's (the order scans finished): labels are paired with volumes by position
    order = ["s1", "CQ500CT2 CT/Plain", "s0"]
    asked = CachedVolumes("toyset", SPEC, scan_ids=order, root=dataset["root"])
    assert [asked[i]["scan_id"] for i in range(3)] == order
    for i, n in enumerate((1, 2, 0)):
        expected, affine = to_canvas_with_affine(*load_volume(dataset["folder"] / f"scan{n}.nii.gz"), SPEC)
        torch.testing.assert_close(asked[i]["volume"], expected, rtol=0, atol=0)
        np.testing.assert_allclose(asked.affine(i), affine, atol=1e-5)


def test_a_chain_that_differs_only_on_reading_shares_the_cache_and_another_does_not(dataset, monkeypatch):
    """Supp. Fig. 2's coarser patches read the same canvases at another input size: no second cache is built."""
    kw = dict(root=dataset["root"], data_root=dataset["data_root"], workers=1)
    out = build_cache("toyset", SPEC, **kw)
    calls = []
    real = cache._process_scan
    monkeypatch.setattr(cache, "_process_scan", lambda *a: calls.append(a[0]) or real(*a))
    for read_differently in ({"input_size": 9}, {"eval_crop": 20}, {"windows": ((40.0, 80.0),)}):
        other = replace(SPEC, **read_differently)
        assert other.hash != SPEC.hash and build_cache("toyset", other, **kw) == out
        assert calls == [] and len(CachedVolumes("toyset", other, root=dataset["root"])) == 3
    finer = replace(SPEC, spacing=1.5)  # another canvas: its own folder, built from the scans
    assert build_cache("toyset", finer, **kw) != out and sorted(calls) == ["CQ500CT2 CT/Plain", "s0", "s1", "s3"]
    (out / "spec.json").write_text(json.dumps({**SPEC.stored(), "canvas": 99}))  # a folder holding another chain
    with pytest.raises(ValueError, match="holds another spec"):
        build_cache("toyset", SPEC, **kw)


def test_resume_does_nothing_then_only_the_missing(dataset, monkeypatch):
    kw = dict(root=dataset["root"], data_root=dataset["data_root"], workers=1)
    out = build_cache("toyset", SPEC, **kw)
    mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}  # volumes, index, rejects, spec
    calls = []
    real = cache._process_scan
    monkeypatch.setattr(cache, "_process_scan", lambda *a: calls.append(a[0]) or real(*a))
    build_cache("toyset", SPEC, **kw)
    assert calls == [] and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == mtimes  # nothing rewritten
    # a scan whose row is missing (a crash before the index was saved) is done again, alone
    index = pd.read_csv(out / "index.csv", dtype=str)
    index[index["scan_id"] != "s1"].to_csv(out / "index.csv", index=False)
    build_cache("toyset", SPEC, **kw)
    assert calls == ["s1"] and len(read_index("toyset", SPEC, dataset["root"])) == 3
    # a rejected scan is tried again only when asked while its volume is the one refused (an audit: a repaired
    # volume stayed refused too); a repaired volume, replaced since, is tried again and enters the cache
    build_cache("toyset", SPEC, **kw)
    assert calls == ["s1"]
    build_cache("toyset", SPEC, retry_rejected=True, **kw)
    assert calls == ["s1", "s3"] and pd.read_csv(out / "rejects.csv")["scan_id"].tolist() == ["s3"]  # still bad
    nib.save(nib.Nifti1Image(head(3), AFFINE), dataset["folder"] / "scan3.nii.gz")
    build_cache("toyset", SPEC, **kw)
    assert calls == ["s1", "s3", "s3"] and pd.read_csv(out / "rejects.csv").empty
    assert len(CachedVolumes("toyset", SPEC, root=dataset["root"])) == 4
    expected, _ = to_canvas_with_affine(*load_volume(dataset["folder"] / "scan3.nii.gz"), SPEC)
    got = CachedVolumes("toyset", SPEC, scan_ids=["s3"], root=dataset["root"])[0]["volume"]
    torch.testing.assert_close(got, expected, rtol=0, atol=0)


def test_one_builder_at_a_time_and_a_killed_writers_temporary_files_go(dataset):
    """An audit: two ``fmct cache`` on one folder both ran, each rewrote index.csv from its own view and the last
    dropped the other's rows (180 canvases, 90 rows); a writer killed mid-canvas left its temporary file for good.
    A second builder is refused naming the first; a complete cache is read without the lock."""
    from fmct_lib.io import LOCK_FILE, LockBusy, exclusive_lock
    kw = dict(root=dataset["root"], data_root=dataset["data_root"], workers=1)
    out = cache_dir("toyset", SPEC, dataset["root"])
    out.mkdir(parents=True)
    killed = [out / ".s0.npy.ab12cd_9.npy", out / ".index.csv.zz99zz99.csv"]  # atomic_open's temporary names
    for path in killed:
        path.write_bytes(b"half written")
    (out / ".notes").write_text("a user's file")  # hidden, but no temporary file of ours
    with exclusive_lock(out / LOCK_FILE, what="another builder"):
        with pytest.raises(LockBusy, match=rf"cache folder {out} is in use by another process \(pid "):
            build_cache("toyset", SPEC, **kw)
    assert all(p.exists() for p in killed)  # not touched without the lock
    build_cache("toyset", SPEC, **kw)
    assert not any(p.exists() for p in killed) and (out / ".notes").exists()
    assert len(read_index("toyset", SPEC, dataset["root"])) == 3
    with exclusive_lock(out / LOCK_FILE, what="another builder"):  # complete: readers never wait for the lock
        assert build_cache("toyset", SPEC, **kw) == out


def test_a_scan_asked_for_that_the_table_lacks_is_one_line_from_the_command(dataset, monkeypatch, capsys):
    """An audit: ``fmct cache --scans <typo>`` raised a KeyError, which the command line showed as a traceback."""
    from fmct_lib.cli import main
    monkeypatch.setenv("FMCT_DATA", str(dataset["data_root"]))
    monkeypatch.setenv("FMCT_CACHE", str(dataset["root"]))
    assert main(["cache", "--dataset", "toyset", "--profile", "toy", "--workers", "1", "--scans", "s9"]) == 2
    assert capsys.readouterr().err == "fmct cache: error: scans not in the 'toyset' scan table: ['s9']\n"


def test_a_changed_spec_never_reuses_a_stale_cache(dataset):
    kw = dict(root=dataset["root"], data_root=dataset["data_root"], workers=1)
    build_cache("toyset", SPEC, **kw)
    other = PreprocessSpec(**{**SPEC.to_dict(), "spacing": 3.0})
    assert cache_dir("toyset", other, dataset["root"]) != cache_dir("toyset", SPEC, dataset["root"])
    with pytest.raises(FileNotFoundError, match="fmct cache --dataset toyset"):
        CachedVolumes("toyset", other, root=dataset["root"])
    build_cache("toyset", other, **kw)
    a = CachedVolumes("toyset", SPEC, root=dataset["root"])[0]["volume"]
    b = CachedVolumes("toyset", other, root=dataset["root"])[0]["volume"]
    assert a.shape == b.shape and not torch.equal(a, b)


def test_reference_preset_caches_the_float16_stack(dataset):
    from fmct_lib.data.preprocess import reference_spec
    spec = PreprocessSpec(**{**reference_spec("toy").to_dict(), "spacing": 2.0})
    build_cache("toyset", spec, root=dataset["root"], data_root=dataset["data_root"], workers=1)
    item = CachedVolumes("toyset", spec, root=dataset["root"])[0]
    assert item["volume"].dtype == torch.float16 and item["volume"].shape == (3, 16, 16, 16)


def test_cli_with_a_process_pool_builds_the_same_cache(dataset, monkeypatch, capsys, tmp_path):
    from fmct_lib.cli import main
    from fmct_lib.data.preprocess import paper_spec
    spec = paper_spec("toy")
    one = build_cache("toyset", spec, root=tmp_path / "cache1", data_root=dataset["data_root"], workers=1)
    monkeypatch.setenv("FMCT_DATA", str(dataset["data_root"]))
    monkeypatch.setenv("FMCT_CACHE", str(dataset["root"]))
    assert main(["cache", "--dataset", "toyset", "--profile", "toy", "--workers", "2"]) == 0
    assert "3 scans cached, 1 rejected" in capsys.readouterr().out
    two = cache_dir("toyset", spec)
    assert len(CachedVolumes("toyset", spec)) == 3
    assert pd.read_csv(one / "index.csv").equals(pd.read_csv(two / "index.csv"))
    for f in pd.read_csv(one / "index.csv")["file"]:
        np.testing.assert_array_equal(np.load(one / f), np.load(two / f))
    assert pd.read_csv(two / "rejects.csv")["scan_id"].tolist() == ["s3"]


def test_a_volume_changed_under_the_same_scan_id_is_cached_again(dataset):
    """A re-ingested volume (here mirrored) replaces its canvas; an index of an older cache, without
    ``volume_stat``, is left as it is while its volumes are older than their canvases."""
    import os
    kw = dict(root=dataset["root"], data_root=dataset["data_root"], workers=1)
    out = build_cache("toyset", SPEC, **kw)
    before = np.load(out / "s0.npy")
    volume = dataset["folder"] / "scan0.nii.gz"
    nib.save(nib.Nifti1Image(head(0)[::-1].copy(), AFFINE), volume)
    os.utime(volume, ns=(10**18, 10**18))  # another mtime whatever the clock's resolution
    build_cache("toyset", SPEC, **kw)
    after = np.load(out / "s0.npy")
    expected, _ = to_canvas_with_affine(*load_volume(volume), SPEC)
    np.testing.assert_array_equal(after, expected.numpy())
    assert not np.array_equal(after, before)
    index = pd.read_csv(out / "index.csv", dtype=str).set_index("scan_id")
    stat = os.stat(volume)
    assert index.loc["s0", "volume_stat"] == f"{stat.st_size}:{stat.st_mtime_ns}"

    # an older cache's index: no volume_stat column
    index.drop(columns="volume_stat").reset_index().to_csv(out / "index.csv", index=False)
    old = (out / "index.csv").read_bytes()
    os.utime(volume, ns=(1, 1))  # older than its canvas: trusted, nothing rebuilt or rewritten
    build_cache("toyset", SPEC, **kw)
    assert (out / "index.csv").read_bytes() == old
    os.utime(volume, ns=(10**19, 10**19))  # newer than its canvas: done again
    build_cache("toyset", SPEC, **kw)
    index = pd.read_csv(out / "index.csv", dtype=str, keep_default_na=False).set_index("scan_id")
    assert index.loc["s0", "volume_stat"] == f"{stat.st_size}:{10**19}" and index.loc["s1", "volume_stat"] == ""


def test_the_inputs_key_follows_a_volume_replaced_under_the_same_scan_id(dataset, monkeypatch):
    """Cached features are named by their source's key: a re-ingested volume, re-cached, gives another key (its
    old features are not read back); a cache whose index records no volume versions keeps the key it had."""
    import os

    from fmct_lib.data.inputs import volume_source
    from fmct_lib.data.manifest import load_scans
    monkeypatch.setenv("FMCT_DATA", str(dataset["data_root"]))
    monkeypatch.setenv("FMCT_CACHE", str(dataset["root"]))
    out = build_cache("toyset", SPEC, workers=1)
    scans = load_scans("toyset").query("scan_id in ['s0', 's1']")
    key = lambda: volume_source("toyset", scans, SPEC)[0].key  # noqa: E731
    before = key()
    assert key() == before                                      # nothing changed: the same name
    volume = dataset["folder"] / "scan0.nii.gz"
    nib.save(nib.Nifti1Image(head(0)[::-1].copy(), AFFINE), volume)
    os.utime(volume, ns=(10**18, 10**18))
    build_cache("toyset", SPEC, workers=1)
    after = key()
    assert after != before and after.rsplit("-", 1)[0] == before.rsplit("-", 1)[0]   # only the versions differ
    index = pd.read_csv(out / "index.csv", dtype=str, keep_default_na=False)
    index.drop(columns="volume_stat").to_csv(out / "index.csv", index=False)        # an older cache's index
    assert key() == before.rsplit("-", 1)[0]                                          # its names as they were


def test_a_reader_refuses_canvases_of_a_volume_changed_since_it_was_cached(dataset, monkeypatch):
    """An audit: a volume re-ingested under its scan id and no ``fmct cache`` since; a run or ``embed`` read the
    old canvas without a word (only pretraining refused). ``volume_source`` now refuses, naming the command."""
    from fmct_lib.data.inputs import volume_source
    from fmct_lib.data.manifest import load_scans
    from fmct_lib.paths import StageMissing
    monkeypatch.setenv("FMCT_DATA", str(dataset["data_root"]))
    monkeypatch.setenv("FMCT_CACHE", str(dataset["root"]))
    build_cache("toyset", SPEC, workers=1)
    rows = load_scans("toyset").query("scan_id in ['s0', 's1']")
    assert len(volume_source("toyset", rows, SPEC)[1]) == 2
    nib.save(nib.Nifti1Image(head(9), AFFINE), dataset["folder"] / "scan1.nii.gz")  # re-ingested under s1
    with pytest.raises(StageMissing, match=r"(?s)1 scan\(s\) of 'toyset' changed since the paper cache \(\w+\) was "
                                           r"built \(re-ingested under the same id\), e.g. \['s1'\]. .*fmct cache "
                                           r"--dataset toyset --preset paper"):
        volume_source("toyset", rows, SPEC)
    build_cache("toyset", SPEC, workers=1)  # brought up to date: read again, the new volume's canvas
    source, kept = volume_source("toyset", rows, SPEC)
    expected, _ = to_canvas_with_affine(*load_volume(dataset["folder"] / "scan1.nii.gz"), SPEC)
    torch.testing.assert_close(CachedVolumes("toyset", SPEC, scan_ids=["s1"])[0]["volume"], expected, rtol=0, atol=0)



def test_a_volume_missing_when_the_cache_was_built_is_cached_once_it_is_back(dataset):
    """A review: a volume away when the cache was built (a disk not mounted) was refused for good, its empty version
    read as "unchanged"; it is tried again once it is back, without --retry-rejected."""
    kw = dict(root=dataset["root"], data_root=dataset["data_root"], workers=1)
    volume = dataset["folder"] / "scan1.nii.gz"
    away = volume.rename(volume.with_name("elsewhere.nii.gz"))
    out = build_cache("toyset", SPEC, **kw)
    assert sorted(pd.read_csv(out / "rejects.csv")["scan_id"]) == ["s1", "s3"]
    build_cache("toyset", SPEC, **kw)
    assert sorted(pd.read_csv(out / "rejects.csv")["scan_id"]) == ["s1", "s3"]  # still away: still refused
    away.rename(volume)
    build_cache("toyset", SPEC, **kw)
    assert pd.read_csv(out / "rejects.csv")["scan_id"].tolist() == ["s3"]
    index = read_index("toyset", SPEC, dataset["root"])
    assert "s1" in set(index["scan_id"])
    # once cached, a volume away again (a review: the rebuild dropped its row and refused it, and every run on it
    # ran again) keeps its canvas and its row, and is read as it was cached
    away = volume.rename(away)
    build_cache("toyset", SPEC, **kw)
    pd.testing.assert_frame_equal(read_index("toyset", SPEC, dataset["root"]), index)
    assert cache.stale_scans("toyset", SPEC, ["s1"], root=dataset["root"], data_root=dataset["data_root"]) == []

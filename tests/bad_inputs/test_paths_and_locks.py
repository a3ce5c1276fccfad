"""Bad inputs (#25): paths that leave their roots, concurrent writers of the registry and of a run directory.

Everything is built at test time; the concurrent cases run real processes (``multiprocessing``, spawn). The
spawned processes import this module, so torch and the rest are imported inside the tests that need them.
"""
import json
import multiprocessing as mp
import os
import time

import pandas as pd
import pytest

from fmct_lib.data import manifest
from fmct_lib.data.manifest import load_scans, read_manifest, register_dataset, write_scans

WRITERS, PER_WRITER = 2, 30
PRETRAIN = dict(method="mae", profile="toy", seed=0, batch_size=2, max_steps=6, checkpoint_every=1,
                progress=False, device="cpu")
PAUSE_AT_STEP = 2
WAIT_S = 120  # generous bound for a spawned process to start (imports torch) on a loaded machine
BAD_NAMES = ["../x", "..", ".", "a/b", "a\\b", "/abs", "", "-dash", "x" * 65, "sp ace"]


def _files(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def _row(scan_id, path):
    return {"scan_id": scan_id, "patient_id": f"p_{scan_id}", "path": path, "split": "train",
            "manufacturer": "A", "slice_thickness_mm": 1.0, "spacing": "1,1,1", "ich": 0}


# ------------------------------------------------------------------------------------------ containment
def test_ingest_with_a_name_that_leaves_the_data_root_is_refused_and_writes_nothing(isolated_roots, tmp_path,
                                                                                     capsys):
    import nibabel as nib
    import numpy as np

    from fmct_lib.cli import main as fmct
    src = tmp_path / "export"
    src.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.int16), np.eye(4)), src / "a.nii.gz")
    before, manifest_text = _files(tmp_path), isolated_roots.manifest.read_text()
    assert fmct(["ingest", "nifti", "--name", "../x", "--source", str(src), "--workers", "1"]) != 0
    assert "dataset name '../x' is not allowed: a name must be a letter or digit" in capsys.readouterr().err
    assert _files(tmp_path) == before, "nothing may be written, inside the roots or beside them"
    assert isolated_roots.manifest.read_text() == manifest_text


@pytest.mark.parametrize("name", BAD_NAMES)
def test_every_entry_to_the_data_root_validates_the_dataset_name(name, tmp_path):
    table = pd.DataFrame([_row("a", "a.nii.gz")])
    for call in (lambda: manifest.validate_dataset_name(name),
                 lambda: register_dataset(name, description="d", tasks=[], manifest=tmp_path / "m.csv"),
                 lambda: write_scans(table, name, root=tmp_path / "data"),
                 lambda: load_scans(name, root=tmp_path / "data")):
        with pytest.raises(ValueError, match=r"is not allowed: a name must be .*no path separators"):
            call()
    assert _files(tmp_path) == []


def test_good_names_pass():
    for name in ("rsna", "cq500", "nyu_langone", "hosp-2024.v1", "A" * 64):
        assert manifest.validate_dataset_name(name) == name


@pytest.fixture()
def escaping_table(isolated_roots, tmp_path):
    """A scan table with a row inside its folder, one in a sibling dataset, one ``../`` and one absolute escape."""
    outside, elsewhere = tmp_path / "outside", tmp_path / "elsewhere"
    rows = [_row("inside", "volumes/a.nii.gz"), _row("sibling", "../other/b.nii.gz"),
            _row("up", "../../outside/c.nii.gz"), _row("abs", str(elsewhere / "d.nii.gz"))]
    write_scans(pd.DataFrame(rows), "ds")
    return isolated_roots.data / "ds", outside, elsewhere


def test_scan_table_paths_outside_the_data_root_are_refused_naming_the_row(escaping_table, isolated_roots):
    with pytest.raises(ValueError, match=r"2 row\(s\) name no file or one outside the data root") as refused:
        load_scans("ds")
    message = str(refused.value)
    assert "scan_id 'up'" in message and "scan_id 'abs'" in message and "external_roots.txt" in message
    assert "'inside'" not in message and "'sibling'" not in message  # inside the data root: fine

    from fmct_lib.data.cache import build_cache
    from fmct_lib.data.preprocess import paper_spec
    with pytest.raises(ValueError, match="scan_id 'up'"):
        build_cache("ds", paper_spec("toy"), workers=1)  # never read, never cached
    assert not isolated_roots.cache.exists() or _files(isolated_roots.cache) == []


def test_a_missing_path_is_refused_naming_the_row(isolated_roots):
    write_scans(pd.DataFrame([_row("a", "a.nii.gz"), _row("nopath", "")]), "ds")
    with pytest.raises(ValueError, match="scan_id 'nopath': no path"):
        load_scans("ds")


def test_external_paths_are_read_when_the_dataset_lists_their_folders(escaping_table):
    folder, outside, elsewhere = escaping_table
    (folder / manifest.EXTERNAL_ROOTS_FILE).write_text(f"# the hospital's export\n{elsewhere}\n")
    with pytest.raises(ValueError, match="scan_id 'up'") as refused:  # only the folders listed
        load_scans("ds")
    assert "'abs'" not in str(refused.value)
    (folder / manifest.EXTERNAL_ROOTS_FILE).write_text(f"{elsewhere}\n../../outside\n")  # relative: to the folder
    table = load_scans("ds").set_index("scan_id")["path"]
    assert table["abs"] == str(elsewhere / "d.nii.gz")
    assert os.path.abspath(table["up"]) == str(outside / "c.nii.gz")
    assert table["inside"] == str(folder / "volumes/a.nii.gz")


# ------------------------------------------------------------------------------------------------ locks
def _register_many(writer: int, start, data: str, manifest_file: str) -> None:
    os.environ.update(FMCT_DATA=data, FMCT_MANIFEST=manifest_file)
    start.wait(WAIT_S)
    for i in range(PER_WRITER):
        register_dataset(f"w{writer}_{i:02d}", description=f"writer {writer}", tasks=["ich"])


def test_concurrent_registrations_lose_no_row(isolated_roots):
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(WRITERS)
    procs = [ctx.Process(target=_register_many, args=(w, start, str(isolated_roots.data),
                                                      str(isolated_roots.manifest))) for w in range(WRITERS)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(WAIT_S)
    assert [p.exitcode for p in procs] == [0] * WRITERS
    names = list(read_manifest(isolated_roots.manifest)["name"])
    added = [n for n in names if n.startswith("w")]
    assert sorted(added) == sorted(f"w{w}_{i:02d}" for w in range(WRITERS) for i in range(PER_WRITER))
    assert len(names) == len(set(names))


def test_the_lock_names_its_holder_and_is_released(tmp_path):
    from fmct_lib.io import LockBusy, exclusive_lock
    lock = tmp_path / "thing.lock"
    with exclusive_lock(lock, what="the thing"):
        with pytest.raises(LockBusy, match=rf"the thing is in use by another process \(pid {os.getpid()} on host "):
            with exclusive_lock(lock, what="the thing", wait=0):
                pass
    assert not (tmp_path / "thing.lock.holder.json").exists()
    with exclusive_lock(lock, what="the thing", wait=0):
        pass


def _pretrain_and_pause(run_dir: str, ready: str, go: str) -> None:
    """Pretrain, pausing after ``PAUSE_AT_STEP`` until ``go`` exists (``ready`` tells the test where it is)."""
    import torch

    from _support import InMemoryVolumes
    torch.set_num_threads(1)

    def pause(step, row):
        if step == PAUSE_AT_STEP:
            with open(ready, "w") as f:
                f.write(str(os.getpid()))
            deadline = time.monotonic() + WAIT_S
            while not os.path.exists(go) and time.monotonic() < deadline:
                time.sleep(0.05)

    from fmct_lib.train import pretrain_on
    pretrain_on(InMemoryVolumes(8, 37), run_dir=run_dir, on_step=pause, **PRETRAIN)


def test_a_second_pretraining_process_on_a_run_directory_in_use_fails_naming_the_holder(tmp_path, one_thread):
    from fmct_lib.train import pretrain_on
    from _support import InMemoryVolumes
    run_dir, ready, go = tmp_path / "run", tmp_path / "ready", tmp_path / "go"
    first = mp.get_context("spawn").Process(target=_pretrain_and_pause, args=(str(run_dir), str(ready), str(go)))
    first.start()
    try:
        deadline = time.monotonic() + WAIT_S
        while not (ready.exists() and ready.read_text()) and first.is_alive() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists(), f"the first process never reached its pause (exit code {first.exitcode})"
        holder = int(ready.read_text())
        with pytest.raises(RuntimeError, match=rf"run directory {run_dir} is in use by another process "
                                               rf"\(pid {holder} on host "):
            pretrain_on(InMemoryVolumes(8, 37), run_dir=run_dir, **PRETRAIN)
    finally:
        go.touch()
        first.join(WAIT_S)
    assert first.exitcode == 0
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, PRETRAIN["max_steps"] + 1))
    assert (run_dir / "done").exists() and not (run_dir / ".lock.holder.json").exists()


def test_a_downstream_run_directory_in_use_is_refused(isolated_roots, tmp_path):
    from fmct_lib.downstream import run_protocol
    from fmct_lib.io import LOCK_FILE, exclusive_lock
    run_dir = tmp_path / "run"
    with exclusive_lock(run_dir / LOCK_FILE, what=f"run directory {run_dir}"):
        with pytest.raises(RuntimeError, match=rf"run directory {run_dir} is in use by another process \(pid "):
            run_protocol("nowhere", "ich", "histogram", profile="toy", run_dir=run_dir, progress=False)
    assert _files(run_dir) == [LOCK_FILE]


def test_ctrl_c_in_a_command_is_one_line_saying_the_finished_work_is_kept(monkeypatch, capsys):
    """An audit: Ctrl-C printed a KeyboardInterrupt traceback and nothing said the work done was kept."""
    import fmct_lib.cli.info as info
    from fmct_lib.cli import main as fmct

    def interrupted(args):
        raise KeyboardInterrupt
    monkeypatch.setattr(info, "run", interrupted)
    for off in (None, "0", "", "false", "No", "off"):  # FMCT_TRACEBACK=0 is off (an audit: any value turned it on)
        if off is None:
            monkeypatch.delenv("FMCT_TRACEBACK", raising=False)
        else:
            monkeypatch.setenv("FMCT_TRACEBACK", off)
        assert fmct(["info"]) == 130
        assert capsys.readouterr().err.strip() == ("fmct info: interrupted. What was finished is kept: run the same "
                                                   "command again to go on from there.")
    monkeypatch.setenv("FMCT_TRACEBACK", "1")
    with pytest.raises(KeyboardInterrupt):
        fmct(["info"])


def test_an_ingest_kind_without_its_branch_is_refused_not_read_as_a_nifti_folder():
    """docs/extending.md followed as written (an audit): a subparser added without its branch in ``run()`` fell
    into the NIfTI ingester's and failed with "'Namespace' object has no attribute 'labels'"."""
    import argparse

    from fmct_lib.cli.ingest import run
    with pytest.raises(NotImplementedError, match="fmct ingest toyhead: its subparser has no branch in "
                                                  "fmct_lib/cli/ingest.py run"):
        run(argparse.Namespace(kind="toyhead", source="x", name=None, root=None, workers=1, seed=0))

"""What docs/data_safety.md promises of ingestion: the tables that link pseudonyms to original identifiers are
readable by their owner only (mode 600), pseudonyms are the HMAC-SHA256 of the original id under the key, and
``$FMCT_PSEUDONYM_KEY`` gives the same pseudonyms in every data root (a random per-dataset key does not)."""
import hashlib
import hmac
import os
import stat
from pathlib import Path

import pandas as pd
import pytest

from fmct_lib.data.ingest.nifti import ingest_nifti
from _support import tiny_nifti_folder

PRIVATE = ("linkage.csv", ".pseudonym_key")


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    return tiny_nifti_folder(tmp_path_factory.mktemp("hospital"), n_patients=2)


def _ingest(labels, root):
    ingest_nifti(labels.parent / "volumes", name="myhospital", labels=labels, mapping={"ich": "ich"}, root=root,
                 workers=1)
    return pd.read_csv(root / "myhospital" / "scans.csv")


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_the_key_variable_gives_the_hmac_pseudonyms_in_every_root(hospital, tmp_path, monkeypatch):
    monkeypatch.setenv("FMCT_PSEUDONYM_KEY", "a shared secret")
    first, second = _ingest(hospital, tmp_path / "a"), _ingest(hospital, tmp_path / "b")
    assert first.patient_id.tolist() == second.patient_id.tolist()
    by_hand = {"P" + hmac.new(b"a shared secret", f"P{p}".encode(), hashlib.sha256).hexdigest()[:16] for p in (0, 1)}
    assert set(first.patient_id) == by_hand
    assert not (tmp_path / "a" / "myhospital" / ".pseudonym_key").exists()   # the variable is the key
    linkage = tmp_path / "a" / "myhospital" / "linkage.csv"
    assert _mode(linkage) == 0o600
    table = pd.read_csv(linkage)
    assert set(table.original_patient_id) == {"P0", "P1"} and set(table.patient_id) == by_hand


def test_without_the_variable_each_dataset_has_its_own_owner_only_key(hospital, tmp_path, monkeypatch):
    monkeypatch.delenv("FMCT_PSEUDONYM_KEY", raising=False)
    first, second = _ingest(hospital, tmp_path / "a"), _ingest(hospital, tmp_path / "b")
    assert set(first.patient_id).isdisjoint(second.patient_id)       # two random keys, two sets of pseudonyms
    folder = tmp_path / "a" / "myhospital"
    for name in PRIVATE:
        assert _mode(folder / name) == 0o600, name
    key = (folder / ".pseudonym_key").read_text().strip().encode()
    assert set(first.patient_id) == {"P" + hmac.new(key, f"P{p}".encode(), hashlib.sha256).hexdigest()[:16]
                                     for p in (0, 1)}
    assert "P0" not in set(first.astype(str).stack())                 # no original id in scans.csv


def test_linkage_is_never_readable_by_others_not_even_while_it_is_renamed(hospital, tmp_path, monkeypatch):
    import fmct_lib.io as io
    modes, replace = {}, io.os.replace

    def watching_replace(src, dst):
        modes[Path(dst).name] = _mode(Path(src))
        return replace(src, dst)

    monkeypatch.setattr(io.os, "replace", watching_replace)
    _ingest(hospital, tmp_path / "a")
    assert modes["linkage.csv"] == 0o600                    # the moment it appears under its name
    assert modes["scans.csv"] == 0o666 & ~_umask()           # other tables as open() makes them
    assert _mode(tmp_path / "a" / "myhospital" / "linkage.csv") == 0o600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask

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
    monkeypatch.setenv("FMCT_PSEUDONYM_KEY", "a shared secret of ours")
    first, second = _ingest(hospital, tmp_path / "a"), _ingest(hospital, tmp_path / "b")
    assert first.patient_id.tolist() == second.patient_id.tolist()
    by_hand = {"P" + hmac.new(b"a shared secret of ours", f"P{p}".encode(), hashlib.sha256).hexdigest()[:16]
               for p in (0, 1)}
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


def test_an_empty_or_cut_key_is_refused_and_two_first_ingests_share_one_key(tmp_path, monkeypatch):
    """An audit: the key file was created empty, then written, so an ingest killed between the two (or a second
    ingest reading in that moment) left an empty key, and the pseudonyms were HMAC("", MRN): anyone could compute
    them. The key now appears whole or not at all, and a key shorter than 16 characters is refused, in the file
    or in ``$FMCT_PSEUDONYM_KEY``."""
    from fmct_lib.data.ingest.common import pseudonym_key
    monkeypatch.setenv("FMCT_PSEUDONYM_KEY", "x")
    with pytest.raises(ValueError, match=r"\$FMCT_PSEUDONYM_KEY is 1 characters long: a key shorter than 16"):
        pseudonym_key(tmp_path)
    monkeypatch.delenv("FMCT_PSEUDONYM_KEY", raising=False)
    for damaged in ("", "\n", "0123456789abcde"):
        folder = tmp_path / f"damaged{len(damaged)}"
        folder.mkdir()
        (folder / ".pseudonym_key").write_text(damaged)
        with pytest.raises(ValueError, match=r"\.pseudonym_key: the dataset's pseudonym key is \d+ characters long"):
            pseudonym_key(folder)
    fresh = tmp_path / "fresh"
    key = pseudonym_key(fresh)
    assert len(key) == 64 and _mode(fresh / ".pseudonym_key") == 0o600
    assert pseudonym_key(fresh) == key and [p.name for p in fresh.iterdir()] == [".pseudonym_key"]  # no temp left
    # a second ingest that made its own key meanwhile: the one already linked into place is kept, not replaced
    import fmct_lib.data.ingest.common as common
    other = tmp_path / "race"
    real_link = common.os.link

    def first_made_by_another(src, dst):
        Path(dst).write_text("f" * 64)
        return real_link(src, dst)

    monkeypatch.setattr(common.os, "link", first_made_by_another)
    assert pseudonym_key(other) == b"f" * 64 and [p.name for p in other.iterdir()] == [".pseudonym_key"]
    # a file system without hard links (FAT, some shares): created exclusively, then written
    def no_links(src, dst):
        raise PermissionError(1, "Operation not permitted")
    monkeypatch.setattr(common.os, "link", no_links)
    fat = tmp_path / "fat"
    key = pseudonym_key(fat)
    assert len(key) == 64 and _mode(fat / ".pseudonym_key") == 0o600 and pseudonym_key(fat) == key
    # a copy of the key a first ingestion killed before removing it left: gone once no writer can hold it
    import time
    copy = fat / ".pseudonym_key.k1ll3d_x"
    copy.write_bytes(key)
    assert pseudonym_key(fat) == key and copy.exists()  # recent: perhaps a live first ingestion's
    os.utime(copy, (time.time() - 3600,) * 2)
    assert pseudonym_key(fat) == key and not copy.exists()

"""Atomic writes reach the disk: the temporary file is flushed before the rename, the folder after it."""
import os
import stat

import pytest

from fmct_lib.io import atomic_write_text


@pytest.fixture()
def disk_calls(monkeypatch):
    """``os.fsync`` and ``os.replace``, in the order they are called: ("fsync", "file" | "folder") or
    ("replace", target name)."""
    calls = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd):
        calls.append(("fsync", "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"))
        fsync(fd)

    def recording_replace(src, dst):
        calls.append(("replace", os.path.basename(dst)))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    return calls


def test_an_atomic_write_is_flushed_before_the_rename_and_the_folder_after(tmp_path, disk_calls):
    path = atomic_write_text(tmp_path / "x.json", '{"a": 1}\n')
    assert path.read_text() == '{"a": 1}\n' and [p.name for p in tmp_path.iterdir()] == ["x.json"]
    assert disk_calls == [("fsync", "file"), ("replace", "x.json"), ("fsync", "folder")]


def test_a_folder_that_cannot_be_flushed_is_no_error_but_a_file_that_cannot_is(tmp_path, monkeypatch):
    """Some platforms refuse to fsync a folder (Windows, some network file systems); a file's flush that fails
    (a full or failing disk) fails the write and leaves the old file and no temporary one."""
    fsync = os.fsync

    def folders_refused(fd):
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError("fsync of a directory not supported")
        fsync(fd)

    monkeypatch.setattr(os, "fsync", folders_refused)
    assert atomic_write_text(tmp_path / "x.txt", "new").read_text() == "new"

    def disk_failing(fd):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", disk_failing)
    with pytest.raises(OSError, match="Input/output"):
        atomic_write_text(tmp_path / "x.txt", "newer")
    assert (tmp_path / "x.txt").read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["x.txt"]

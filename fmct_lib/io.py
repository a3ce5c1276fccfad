"""Atomic file writing and exclusive locks, shared by everything that writes results, caches and checkpoints.

A file is written to a temporary name in the same folder, flushed to disk (``fsync``) and renamed over the
target, and the folder is flushed too, so a reader (or a job resumed after a crash or a power cut) sees
either the old file or the complete new one, never a torn write. Permissions follow the umask like an
ordinary ``open(path, "w")`` (``mkstemp`` alone would leave 0600).

Atomic writes keep each file whole; ``exclusive_lock`` keeps two writers from interleaving their updates (the
dataset registry's read-edit-rename, a run directory's checkpoints and metrics log).
"""
from __future__ import annotations

import contextlib
import glob
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

__all__ = ["atomic_path", "atomic_open", "atomic_write_text", "atomic_write_json", "atomic_write_csv",
           "exclusive_lock", "LockBusy", "LOCK_FILE", "HOLDER_SUFFIX", "remove_leftovers", "remove_leftovers_in",
           "LEFTOVER_IDLE_S"]

LOCK_FILE = ".lock"                 # a directory's lock file (a run directory's)
HOLDER_SUFFIX = ".holder.json"      # beside a lock file: who holds it (pid, host, since)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str | None = None, mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path``, on error it is removed.

    ``suffix`` (default: the target's) keeps writers that infer the format from the name happy. ``mode``: the
    file's permissions (default: what ``open`` gives under the umask). The temporary file is the owner's alone
    (``mkstemp``) until it has them, so a private file is never readable by others, not even for a moment.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                               suffix=path.suffix if suffix is None else suffix)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def remove_leftovers(path: str | os.PathLike) -> list[Path]:
    """Remove the temporary files ``atomic_path`` left beside ``path`` when its process was killed mid-write
    (SIGKILL, out of memory: no ``except`` ran); returns them. Call it only while holding the folder's lock, so
    no live writer's file is taken."""
    path = Path(path)
    gone = [p for p in path.parent.glob(f".{glob.escape(path.name)}.*") if p.is_file()]
    for p in gone:
        p.unlink(missing_ok=True)
    return gone


def remove_leftovers_in(folder: str | os.PathLike, names=None, *, idle_s: float = 0.0) -> list[Path]:
    """``remove_leftovers`` for the files of ``folder`` named ``names`` (default: every file; a cache's canvases,
    an ingestion's volumes), reading the folder once: the temporary files ``atomic_path`` names
    ``.<name>.<8 random characters><the name's suffix>``; returns them. Under the folder's lock, every one; a
    caller without one passes ``idle_s``: only those unmodified that long, which no live writer leaves them."""
    names = None if names is None else set(names)
    idle_before = time.time() - idle_s
    gone = []
    for path in Path(folder).glob(".*"):
        match = _TEMPORARY.fullmatch(path.name)  # the suffix: the target's (.npy) or the one given (.nii.gz)
        if (match and match["name"].endswith(match["suffix"]) and (names is None or match["name"] in names)
                and path.is_file() and (not idle_s or path.stat().st_mtime < idle_before)):
            path.unlink(missing_ok=True)
            gone.append(path)
    return gone


LEFTOVER_IDLE_S = 300.0  # a temporary file unmodified this long has no live writer (one scan is written in seconds)


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>(\.[^.]+)+)")  # mkstemp's 8 random characters


def _fsync_dir(folder: Path) -> None:
    """Flush a folder's entries (a rename) to disk, where the platform allows it (Windows does not)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "wb"):
    """``open`` for writing, atomically: the file appears under ``path`` only when the block succeeds."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        yield f


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj, **kwargs) -> Path:
    kwargs.setdefault("indent", 2)
    kwargs.setdefault("sort_keys", True)
    return atomic_write_text(path, json.dumps(obj, **kwargs) + "\n")


def atomic_write_csv(df, path: str | os.PathLike, mode: int | None = None, **kwargs) -> Path:
    """Write a pandas DataFrame as CSV atomically (``index=False`` unless given; ``mode`` as ``atomic_path``)."""
    kwargs.setdefault("index", False)
    with atomic_path(path, mode=mode) as tmp:
        df.to_csv(tmp, **kwargs)
    return Path(path)


class LockBusy(RuntimeError):
    """Another process holds an exclusive lock; the message names what is locked and the holder."""


@contextlib.contextmanager
def exclusive_lock(lock_file: str | os.PathLike, *, what: str, wait: float | None = None) -> Iterator[Path]:
    """Hold an exclusive lock between processes on ``lock_file`` for the block (``filelock``: ``flock``).

    ``what`` names the thing guarded (``"run directory runs/x"``), for the error. ``wait``: seconds to wait
    for the holder to let go (``None``: as long as it takes; ``0``: fail at once); past it ``LockBusy`` names
    ``what`` and the holder, whose pid, host and start time the holder writes to the sidecar
    ``<lock_file>.holder.json`` while it holds the lock. The lock file stays (waiters share its inode); the
    operating system drops the lock of a process that dies, so a crash never leaves it held.
    """
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    holder = lock_file.with_name(lock_file.name + HOLDER_SUFFIX)
    lock = FileLock(lock_file)
    try:
        lock.acquire(timeout=-1 if wait is None else wait)
    except Timeout:
        raise LockBusy(f"{what} is in use by another process ({_holder_text(holder)}; lock {lock_file}): wait for "
                       f"it to finish or stop it") from None
    try:
        atomic_write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(),
                                   "since": time.strftime("%Y-%m-%d %H:%M:%S")})
        yield lock_file
    finally:
        holder.unlink(missing_ok=True)
        lock.release()


def _holder_text(holder: Path) -> str:
    """``pid 123 on host h since …`` from a lock's sidecar, or why it cannot be told."""
    try:
        h = json.loads(holder.read_text())
        return f"pid {h['pid']} on host {h['host']} since {h['since']}"
    except (OSError, ValueError, KeyError):
        return f"holder unknown: {holder} is missing or unreadable"

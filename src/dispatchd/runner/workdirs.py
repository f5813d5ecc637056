"""Each task's scratch folder (where its agent may write the result file), and the
folders of runners that were killed.

A runner removes a task's folder when the task's process ends. A runner killed with
SIGKILL (or a machine that lost power) cannot, so each folder holds a lock file its
runner keeps locked (`flock`) for as long as the task runs: the kernel lets the lock go
with the process, however it ended. A runner starting up removes the folders in the
temporary directory whose lock it can take, which no running runner holds, on any
machine or container sharing that directory.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "dispatchd-task-"
LOCK = ".runner.lock"
# No folder younger than this is swept: between a folder's creation and its lock there is
# a moment when another runner could take the lock.
MIN_AGE_S = 10.0
# A folder without a lock file (left by an older version) is swept once it is this old.
UNLOCKED_GRACE_S = 60.0


@contextlib.contextmanager
def task_dir(root: Path | None = None) -> Iterator[Path]:
    """A new folder for one task, locked while the block runs, removed after it."""
    path = Path(tempfile.mkdtemp(prefix=PREFIX, dir=root))
    fd = os.open(path / LOCK, os.O_CREAT | os.O_RDWR, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)
        os.close(fd)


def sweep(root: Path | None = None, *, now: float | None = None) -> list[Path]:
    """Remove the task folders under `root` (the temporary directory) that no running
    runner holds; the ones removed. Folders of other users are left alone."""
    base = Path(root) if root is not None else Path(tempfile.gettempdir())
    now = time.time() if now is None else now
    removed = []
    for path in base.glob(f"{PREFIX}*"):
        try:
            info = path.lstat()
        except FileNotFoundError:
            continue  # another runner swept it first
        if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
            continue
        if _orphaned(path, info.st_mtime, now):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        log.info("removed %d task folders left by runners that stopped", len(removed))
    return removed


def _orphaned(path: Path, mtime: float, now: float) -> bool:
    if now - mtime < MIN_AGE_S:
        return False
    try:
        fd = os.open(path / LOCK, os.O_RDWR)
    except FileNotFoundError:
        return now - mtime > UNLOCKED_GRACE_S
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False  # its runner is at work
    finally:
        os.close(fd)  # the lock, if taken, goes with it: the folder is removed next
    return True

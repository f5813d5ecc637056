"""Task folders: removed when the task ends, and, when a runner was killed, by the next
runner that starts (`dispatchd.runner.workdirs`)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dispatchd.runner import workdirs

HOLD = """
import sys, time
from pathlib import Path
from dispatchd.runner.workdirs import task_dir
with task_dir(Path(sys.argv[1])) as path:
    (path / "result").write_text("half done")
    print(path, flush=True)
    time.sleep(120)
"""

LATER = time.time() + 3600  # past every age the sweep waits for


def holder(root: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process at work on a task in a folder under `root`."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(root)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.kill(proc.pid, sig)
    proc.wait(10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_a_task_folder_is_there_while_the_task_runs_and_gone_after(tmp_path: Path) -> None:
    with workdirs.task_dir(tmp_path) as path:
        assert path.is_dir() and path.name.startswith(workdirs.PREFIX)
        (path / "result").write_text("done")
    assert not path.exists()
    with pytest.raises(RuntimeError), workdirs.task_dir(tmp_path) as path:
        raise RuntimeError("the agent failed")
    assert not path.exists()


def test_the_folder_of_a_killed_runner_is_swept_and_a_working_one_is_not(
    tmp_path: Path,
) -> None:
    killed, orphan = holder(tmp_path)
    working, busy = holder(tmp_path)
    try:
        assert workdirs.sweep(tmp_path, now=LATER) == []  # both at work
        stop(killed)
        assert orphan.exists()  # SIGKILL: nothing of the runner's cleanup ran
        assert workdirs.sweep(tmp_path, now=LATER) == [orphan]
        assert not orphan.exists() and busy.exists()
    finally:
        stop(killed)
        stop(working)


def test_young_folders_foreign_names_and_unlocked_folders_by_age(tmp_path: Path) -> None:
    killed, orphan = holder(tmp_path)
    stop(killed)
    unlocked = tmp_path / f"{workdirs.PREFIX}old"  # as older versions left them
    unlocked.mkdir()
    other = tmp_path / "somebody-else"
    other.mkdir()
    now = time.time()
    assert workdirs.sweep(tmp_path, now=now) == []  # just made: too young to tell
    assert workdirs.sweep(tmp_path, now=now + workdirs.MIN_AGE_S + 1) == [orphan]
    assert unlocked.exists()  # no lock: only once it is well past its making
    assert workdirs.sweep(tmp_path, now=now + workdirs.UNLOCKED_GRACE_S + 1) == [unlocked]
    assert other.exists()

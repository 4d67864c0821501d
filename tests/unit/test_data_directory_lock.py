"""Standalone: one scheduler per data directory (leadership/lock.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common import private_files
from leadership.lock import DataDirectoryLock, DataDirectoryLocked

ROOT = Path(__file__).resolve().parents[2]


def test_a_second_holder_is_refused_with_the_first_ones_pid(tmp_path: Path) -> None:
    first = DataDirectoryLock(tmp_path)
    first.acquire()
    with pytest.raises(DataDirectoryLocked) as refused:
        DataDirectoryLock(tmp_path).acquire()
    assert f"pid {os.getpid()}" in str(refused.value)
    assert "another scheduler" in str(refused.value)
    first.release()
    again = DataDirectoryLock(tmp_path)
    again.acquire()  # released: free again
    again.release()


def test_the_lock_dies_with_its_process(tmp_path: Path) -> None:
    # A process that takes the lock and is killed leaves nothing stale behind.
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from leadership.lock import DataDirectoryLock; "
         "DataDirectoryLock(Path(sys.argv[1])).acquire(); print('held', flush=True); "
         "time.sleep(60)", str(tmp_path)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(DataDirectoryLocked) as refused:
            DataDirectoryLock(tmp_path).acquire()
        assert f"pid {holder.pid}" in str(refused.value)
    finally:
        holder.kill()
        holder.wait(timeout=10)
    after = DataDirectoryLock(tmp_path)
    after.acquire()
    after.release()


def test_a_release_before_the_lock_is_taken_or_a_second_release_does_nothing(
        tmp_path: Path) -> None:
    never_taken = DataDirectoryLock(tmp_path)
    never_taken.release()
    lock = DataDirectoryLock(tmp_path)
    lock.acquire()
    lock.release()
    lock.release()  # idempotent: a stop after a failed start releases again
    DataDirectoryLock(tmp_path).acquire()


@pytest.mark.parametrize(("content", "named"), [(b"", "pid unknown"),
                                                (b"\xff\xfe7\n", "pid \ufffd\ufffd7")])
def test_a_lock_file_emptied_or_garbled_still_gives_the_refusal(
        tmp_path: Path, content: bytes, named: str) -> None:
    # The pid is only a hint for the operator: whatever the file holds, the refusal is
    # the clear one, never a decoding error.
    first = DataDirectoryLock(tmp_path)
    first.acquire()
    (tmp_path / "scheduler.lock").write_bytes(content)
    with pytest.raises(DataDirectoryLocked) as refused:
        DataDirectoryLock(tmp_path).acquire()
    assert f"({named})" in str(refused.value)
    first.release()


def test_a_link_planted_between_the_check_and_the_open_is_not_written_through(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Another account that swaps the checked file for a link in that instant must not get
    # the pid written into a file of its choosing (common/private_files.py).
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious\n")
    checked = private_files.private_file

    def check_then_plant(path: Path) -> None:
        checked(path)
        path.unlink()
        path.symlink_to(victim)

    monkeypatch.setattr(private_files, "private_file", check_then_plant)
    with pytest.raises(OSError, match="Too many levels of symbolic links"):
        DataDirectoryLock(tmp_path).acquire()
    assert victim.read_bytes() == b"precious\n"

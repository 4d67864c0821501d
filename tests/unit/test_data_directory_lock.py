"""Standalone: one scheduler per data directory (leadership/lock.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

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

"""Standalone: one scheduler per data directory, by a lock its process holds.

An advisory ``flock`` on ``scheduler.lock`` in the data directory: taken at start, held
by an open descriptor, and gone with the process however it ends (the kernel drops it),
so a crash never leaves a stale lock behind. The file holds the holder's pid, to name it.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from common import private_files

LOCK_FILE = "scheduler.lock"


class DataDirectoryLocked(Exception):
    """Another scheduler runs on this data directory."""


class DataDirectoryLock:
    """Held from :meth:`acquire` until :meth:`release` or the end of the process."""

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, or raise DataDirectoryLocked naming the holder's pid."""
        private_files.private_file(self.path)  # no link another account planted
        fd = os.open(self.path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise DataDirectoryLocked(
                f"another scheduler (pid {holder}) is running on this data directory; "
                f"stop it first, or give this one another --data-dir") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        """Let the lock go (closing the descriptor drops it); idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

"""The processes a benchmark run starts and stops: scheduler, token database, moto, unary server.

Each child writes to its own log file in the run's temporary directory; a child that
dies or never becomes ready fails the run with the tail of its log.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0


class ChildFailed(RuntimeError):
    """A child process exited or never became ready."""


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports that were free a moment ago."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


class Child:
    """One process this run started, its output in ``log_path``."""

    def __init__(self, name: str, argv: list[str], log_path: Path,
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self._log = log_path.open("ab")
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=self._log,
                                        stderr=subprocess.STDOUT, env=env)

    @property
    def pid(self) -> int:
        return int(self.process.pid)

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        self._log.flush()
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def failure(self, why: str) -> ChildFailed:
        return ChildFailed(f"{self.name} (pid {self.pid}) {why}; last lines of "
                           f"{self.log_path}:\n{self.log_tail()}")

    async def wait_ready(self, ready: Callable[[], Awaitable[bool]],
                         timeout_s: float = START_TIMEOUT_S) -> None:
        """Poll ``ready`` until it says yes; fail if the child exits or time runs out."""
        deadline = time.monotonic() + timeout_s
        while True:
            if not self.alive():
                raise self.failure(f"exited with {self.process.returncode} while starting")
            try:
                if await ready():
                    return
            except (TimeoutError, OSError):
                pass
            if time.monotonic() > deadline:
                raise self.failure(f"not ready after {timeout_s:g} s")
            await asyncio.sleep(0.1)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int:
        """SIGTERM, then SIGKILL if it does not exit in time; returns the exit code."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self._log.close()
        return int(self.process.returncode)


def python_child(name: str, args: list[str], log_dir: Path,
                 env: dict[str, str] | None = None) -> Child:
    """A child running this interpreter (the project's venv) from the repository root."""
    return Child(name, [sys.executable, *args], log_dir / f"{name}.log", env)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    """This process's environment plus ``extra``, unbuffered, repository on the path."""
    env = dict(os.environ)
    env.update(extra)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


async def tcp_open(port: int) -> bool:
    """True once something accepts connections on the loopback port."""
    _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    writer.close()
    await writer.wait_closed()
    return True


def rss_mb(pid: int) -> float | None:
    """A process's resident set size in MB (Linux), or None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return None


_CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int) -> float | None:
    """A process's CPU time so far, user + system, in seconds (Linux), or None when it
    cannot be read (the process is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            text = stat.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = text[text.rindex(")") + 2:].split()
    utime, stime = int(fields[11]), int(fields[12])  # fields 14 and 15 of proc(5)
    return (utime + stime) / _CLOCK_TICKS_PER_S


class Meter:
    """CPU seconds and RSS of named processes (the scheduler and what it talks to)."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids

    def cpu(self) -> dict[str, float | None]:
        return {name: cpu_seconds(pid) for name, pid in self.pids.items()}

    def since(self, before: dict[str, float | None],
              duration_s: float) -> dict[str, dict[str, float | None]]:
        """Per process: CPU seconds since ``before``, the share of one core over
        ``duration_s``, and the RSS now."""
        now = self.cpu()
        usage: dict[str, dict[str, float | None]] = {}
        for name, pid in self.pids.items():
            start, end = before.get(name), now[name]
            spent = None if start is None or end is None else round(end - start, 2)
            share = None if spent is None or duration_s <= 0 else round(spent / duration_s, 3)
            usage[name] = {"cpu_s": spent, "cpu_cores": share, "rss_mb": rss_mb(pid)}
        return usage

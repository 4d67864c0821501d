"""A sampling profiler for the scheduler process: ``python -m benchmarks.sampler OUT.json
-- scheduler.py ARGS...`` runs the scheduler in this process with a thread beside it.

Every ``INTERVAL_S`` the thread reads, for each of the process's threads, the CPU time
the kernel charged to it since the last look (``/proc/self/task/<tid>/stat``) and
charges that time to the function running at the top of that thread's Python stack
(and the time of the whole stack to each function on it, once). C code called from
Python (gRPC's Cython core, sqlite3, the JSON and protobuf codecs) counts towards the
Python function that called it. Collection runs between SIGUSR1 (start afresh) and
SIGUSR2 (stop); the result is written when the scheduler exits. No dependency: the
project's venv has neither py-spy nor pyinstrument nor yappi.
"""

from __future__ import annotations

import json
import os
import runpy
import signal
import sys
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

INTERVAL_S = 0.002
_TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def _where(frame: FrameType) -> str:
    code = frame.f_code
    path = code.co_filename
    for marker in ("site-packages/", "python3.11/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        path = os.path.relpath(path) if path.startswith("/") else path
    return f"{code.co_qualname} ({path}:{code.co_firstlineno})"


# Frames where a thread waits without using a CPU: the event loop's epoll_wait, a pool
# thread waiting for work, a lock or condition wait.
IDLE = ("EpollSelector.select", "_worker", "Condition.wait", "SimpleQueue.get", "Event.wait",
        "Thread.join", "Thread._wait_for_tstate_lock", "sleep")


class Sampler:
    """Where each thread is, every ``INTERVAL_S`` (leaving out the frames it waits in),
    and how much CPU each thread used (the kernel's per-thread count).

    A function's CPU is its share of its thread's busy samples times that thread's CPU:
    the samples say where a thread's time went, the kernel how much of it was CPU (a
    thread blocked in fsync or in gRPC's completion-queue poll is sampled there, but
    uses little CPU). The event loop's thread is asked to hand over the GIL often
    (``SWITCH_INTERVAL_S``) so that samples land where it runs.
    """

    def __init__(self) -> None:
        self.busy: dict[tuple[str, str], float] = {}  # (thread kind, frame) → seconds seen
        self.within: dict[tuple[str, str], float] = {}  # the same, every frame of the stack
        self.collecting = False
        self._cpu_at_start: dict[int, tuple[str, float]] = {}
        self.thread_cpu_s: dict[str, float] = {}

    def sample(self, elapsed_s: float) -> None:
        me = threading.get_ident()
        names = {t.ident: _thread_kind(t.name) for t in threading.enumerate()}
        for ident, frame in sys._current_frames().items():
            if ident != me and frame.f_code.co_qualname not in IDLE:
                self._charge(names.get(ident, "?"), frame, elapsed_s)

    def _charge(self, thread: str, frame: FrameType, spent: float) -> None:
        key = (thread, _where(frame))
        self.busy[key] = self.busy.get(key, 0.0) + spent
        seen = set()
        walk: FrameType | None = frame
        while walk is not None:
            key = (thread, _where(walk))
            if key not in seen:
                seen.add(key)
                self.within[key] = self.within.get(key, 0.0) + spent
            walk = walk.f_back

    def _thread_cpu(self) -> dict[int, tuple[str, float]]:
        found = {}
        for thread in threading.enumerate():
            if thread.native_id is not None:
                cpu = _thread_cpu_s(thread.native_id)
                if cpu is not None:
                    found[thread.native_id] = (_thread_kind(thread.name), cpu)
        return found

    def start(self, *_: Any) -> None:
        self.busy.clear()
        self.within.clear()
        self._cpu_at_start = self._thread_cpu()
        self.collecting = True

    def stop(self, *_: Any) -> None:
        self.collecting = False
        self.thread_cpu_s = {}
        for native, (kind, cpu) in self._thread_cpu().items():
            spent = cpu - self._cpu_at_start.get(native, (kind, 0.0))[1]
            self.thread_cpu_s[kind] = self.thread_cpu_s.get(kind, 0.0) + spent

    def run(self) -> None:
        last = time.perf_counter()
        while True:
            time.sleep(INTERVAL_S)
            now = time.perf_counter()
            if self.collecting:
                self.sample(now - last)
            last = now

    def _cpu_of(self, seen: dict[tuple[str, str], float]) -> dict[str, float]:
        busy_by_thread: dict[str, float] = {}
        for (thread, _), spent in self.busy.items():
            busy_by_thread[thread] = busy_by_thread.get(thread, 0.0) + spent
        cpu: dict[str, float] = {}
        for (thread, where), spent in seen.items():
            share = spent / busy_by_thread[thread] if busy_by_thread.get(thread) else 0.0
            cpu[f"[{thread}] {where}"] = share * self.thread_cpu_s.get(thread, 0.0)
        return cpu

    def result(self, top: int = 40) -> dict[str, Any]:
        return {"thread_cpu_s": _top(self.thread_cpu_s, top),
                "own_cpu_s": _top(self._cpu_of(self.busy), top),
                "cumulative_cpu_s": _top(self._cpu_of(self.within), top)}


def _thread_cpu_s(native_id: int) -> float | None:
    """A thread's time on a CPU so far (schedstat's first field, in nanoseconds)."""
    try:
        with open(f"/proc/self/task/{native_id}/schedstat") as stat:
            return int(stat.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _thread_kind(name: str) -> str:
    """A thread's name without its pool number: ``sqlite-jobs_0`` → ``sqlite-jobs``."""
    return name.rstrip("0123456789").rstrip("_-") or name


def _top(table: dict[str, float], count: int) -> dict[str, float]:
    ranked = sorted(table.items(), key=lambda item: item[1], reverse=True)[:count]
    return {where: round(spent, 4) for where, spent in ranked}


def main(argv: list[str]) -> None:
    out, separator, script, *args = argv
    if separator != "--":
        raise SystemExit("usage: python -m benchmarks.sampler OUT.json -- SCRIPT ARGS...")
    sampler = Sampler()
    signal.signal(signal.SIGUSR1, sampler.start)
    signal.signal(signal.SIGUSR2, sampler.stop)
    threading.Thread(target=sampler.run, name="sampler", daemon=True).start()
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        Path(out).write_text(json.dumps(sampler.result(), indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])

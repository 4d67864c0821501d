"""The service's background loops, watched: one that dies never dies silently.

Each loop (the watchdog that times jobs out, the backend reload, the health probe, the
standalone housekeeping) runs in a task of its own. When one ends for any reason but a
stop (an exception, a cancellation from elsewhere, a return), it is logged with its
traceback, named in ``failing`` (health turns NOT_SERVING), and started again after a
pause that doubles up to a bound; once it has run for ``healthy_after_s`` again, it is
no longer failing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

log = logging.getLogger(__name__)

Loop = Callable[[], Coroutine[Any, Any, None]]


class Supervisor:
    """Runs named loops, restarts the ones that die, and says which are down."""

    def __init__(self, on_change: Callable[[], None] = lambda: None,
                 first_pause_s: float = 0.5, max_pause_s: float = 30.0,
                 healthy_after_s: float = 5.0) -> None:
        self._on_change = on_change
        self._first_pause_s = first_pause_s
        self._max_pause_s = max_pause_s
        self._healthy_after_s = healthy_after_s
        self._loops: dict[str, Loop] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._pauses: dict[str, float] = {}
        self._failing: set[str] = set()
        self._timers: list[asyncio.TimerHandle] = []
        self._stopping = False

    @property
    def failing(self) -> list[str]:
        """The loops that died and have not run well since."""
        return sorted(self._failing)

    def run(self, name: str, loop: Loop) -> None:
        """Start ``loop`` under ``name`` and keep it running until :meth:`stop`."""
        self._loops[name] = loop
        self._pauses[name] = self._first_pause_s
        self._start(name)

    def task(self, name: str) -> asyncio.Task[None]:
        """The task running ``name`` now (for tests that kill it)."""
        return self._tasks[name]

    async def stop(self) -> None:
        """Stop every loop; idempotent."""
        self._stopping = True
        for timer in self._timers:
            timer.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _start(self, name: str) -> None:
        if self._stopping:
            return
        task = asyncio.get_running_loop().create_task(self._loops[name](), name=name)
        self._tasks[name] = task
        task.add_done_callback(lambda done: self._ended(name, done))
        if name in self._failing:
            self._later(self._healthy_after_s, lambda: self._recovered(name, task))

    def _ended(self, name: str, task: asyncio.Task[None]) -> None:
        if self._stopping:
            return
        if task.cancelled():
            log.error("background loop %s was cancelled; restarting it", name)
        elif (error := task.exception()) is not None:
            log.error("background loop %s failed; restarting it", name, exc_info=error)
        else:
            log.error("background loop %s returned; restarting it", name)
        self._failing.add(name)
        self._on_change()
        pause = self._pauses[name]
        self._pauses[name] = min(pause * 2, self._max_pause_s)
        self._later(pause, lambda: self._start(name))

    def _recovered(self, name: str, task: asyncio.Task[None]) -> None:
        if self._tasks.get(name) is task and not task.done():
            self._failing.discard(name)
            self._pauses[name] = self._first_pause_s
            log.info("background loop %s runs again", name)
            self._on_change()

    def _later(self, delay_s: float, callback: Callable[[], None]) -> None:
        self._timers = [t for t in self._timers if not t.cancelled()]
        self._timers.append(asyncio.get_running_loop().call_later(delay_s, callback))

"""Concurrent requests for the same key share one execution and its outcome."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Hashable
from typing import Any, Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """While ``run(key, work)`` is under way, other calls with ``key`` await its result.

    The work runs in a task of its own, so no caller owns it: a caller that goes away
    (its deadline passed, it hung up) neither stops the work nor takes the answer
    from the others, and the key stays taken until the work has ended, so a retry
    that arrives meanwhile joins it instead of starting a second execution.
    """

    def __init__(self) -> None:
        self._pending: dict[K, asyncio.Task[V]] = {}

    def __contains__(self, key: K) -> bool:
        return key in self._pending

    async def run(self, key: K, work: Callable[[], Coroutine[Any, Any, V]]) -> V:
        task = self._pending.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(work())
            self._pending[key] = task  # also the strong reference the running task needs
            task.add_done_callback(lambda done: self._ended(key, done))
        return await asyncio.shield(task)

    def _ended(self, key: K, task: asyncio.Task[V]) -> None:
        if self._pending.get(key) is task:
            del self._pending[key]
        if not task.cancelled():
            task.exception()  # retrieved: every caller may have gone, which is not an error

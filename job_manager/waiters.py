"""Hardware nodes waiting for work (long poll): futures on the event loop, no threads."""

from __future__ import annotations

import asyncio
from collections import defaultdict, deque


class Waiters:
    """Nodes parked per queue; each new job wakes exactly one of them."""

    def __init__(self) -> None:
        self._parked: defaultdict[str, deque[asyncio.Future[None]]] = defaultdict(deque)
        self.closed = False

    def count(self, key: str) -> int:
        """How many nodes wait on ``key``."""
        return sum(1 for f in self._parked.get(key, ()) if not f.done())

    async def wait(self, key: str, timeout_s: float) -> bool:
        """Park until woken (True) or until ``timeout_s`` pass or waiting ends (False)."""
        if self.closed or timeout_s <= 0:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._parked[key].append(future)
        try:
            await asyncio.wait_for(asyncio.shield(future), timeout_s)
        except TimeoutError:
            return False
        except asyncio.CancelledError:
            if future.done() and not self.closed:
                self.wake(key)  # woken, but the node went away: pass the job on
            raise
        finally:
            if not future.done():
                future.cancel()
            self._forget(key, future)
        return not self.closed

    def wake(self, key: str) -> None:
        """Wake the longest-waiting node on ``key``, if any."""
        parked = self._parked.get(key)
        while parked:
            future = parked.popleft()
            if not future.done():
                future.set_result(None)
                return

    def wake_all(self) -> None:
        """Wake every waiting node, to look again (who may be handed a job changed)."""
        for parked in self._parked.values():
            while parked:
                future = parked.popleft()
                if not future.done():
                    future.set_result(None)

    def close(self) -> None:
        """Release every waiting node (shutdown); later waits return at once."""
        self.closed = True
        for parked in self._parked.values():
            for future in parked:
                if not future.done():
                    future.set_result(None)
        self._parked.clear()

    def _forget(self, key: str, future: asyncio.Future[None]) -> None:
        parked = self._parked.get(key)
        if parked is None:
            return
        try:
            parked.remove(future)
        except ValueError:
            pass
        if not parked:
            del self._parked[key]

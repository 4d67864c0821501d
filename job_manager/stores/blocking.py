"""Blocking store clients (sqlite3, boto3) run in a bounded pool of threads and are awaited."""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Awaitable, Callable, TypeVar

from job_manager.stores.errors import StoreError

T = TypeVar("T")


class BlockingCalls:
    """A store's own thread pool; the errors it names become StoreError, once, here."""

    def __init__(
        self, name: str, max_workers: int, errors: tuple[type[BaseException], ...]
    ) -> None:
        self._name = name
        self._errors = errors
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix=name)
        self.closed = False

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run ``fn(*args)`` in the pool and await it."""
        return await self.start(fn, *args)

    def start(self, fn: Callable[..., T], *args: object) -> asyncio.Future[T]:
        """Run ``fn(*args)`` in the pool from now on; the answer is awaited later. Unlike a
        task made of ``run``, which enters the pool only once the event loop next runs,
        the call is under way at once, while the caller goes on without yielding to the
        loop (a recovery queues one page while the next is read: docs/design.md)."""
        if self.closed:
            raise StoreError(f"{self._name}: the store is closed")
        loop = asyncio.get_running_loop()
        return asyncio.ensure_future(
            self._answer(loop.run_in_executor(self._pool, functools.partial(fn, *args))))

    async def _answer(self, call: Awaitable[T]) -> T:
        try:
            return await call
        except self._errors as exc:
            raise StoreError(f"{self._name}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        """Stop the threads once the calls under way have ended; idempotent."""
        self.closed = True
        self._pool.shutdown(wait=True)

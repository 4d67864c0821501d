"""Every store call timed and counted; how long the stores have been failing, for health."""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from job_manager.stores import Deposed, RecordUnreadable, StoreError
from scheduler.operations.metrics import Metrics

T = TypeVar("T")


# Calls that change a store. Reads and writes are watched apart: a read-only or full disk
# fails every write while reads still succeed, and must not look healthy.
WRITES = frozenset({"create", "create_with_input", "transition", "put_input", "delete_input",
                    "seal_result", "upload_result", "probe_results"})
# A delete succeeds on a full disk: it shows nothing about room to write.
PROVES_NOTHING = frozenset({"delete_input"})


class StoreMonitor:
    """Wraps stores so each async call is measured; tracks since when calls fail.

    Each store's reads and its writes are tracked apart: one kind succeeding does not
    hide the other failing.
    """

    def __init__(self, metrics: Metrics, monotonic: Callable[[], float]) -> None:
        self._metrics = metrics
        self._monotonic = monotonic
        # (store, "read" | "write") → monotonic time of the first failure since a success
        self._failing_since: dict[tuple[str, str], float] = {}
        self._last_call_s = 0.0

    def wrap(self, store: T, name: str) -> T:
        """A stand-in for ``store`` that measures its coroutine methods."""
        self._metrics.know_store(name, [operation for operation, _ in inspect.getmembers(
            type(store), inspect.iscoroutinefunction) if not operation.startswith("_")])
        return _Measured(store, name, self)  # type: ignore[return-value]

    def failing_for_s(self) -> float:
        """How long the longest-failing kind of call has failed (0 when none is failing)."""
        if not self._failing_since:
            return 0.0
        return self._monotonic() - min(self._failing_since.values())

    def quiet_for_s(self) -> float:
        """How long since a store call last ended; before the first, the clock's whole
        reading, so a store no call has reached yet counts as idle."""
        return self._monotonic() - self._last_call_s

    def failing(self) -> list[str]:
        """Which kinds of store call fail now, as ``store write`` or ``store read``."""
        return [f"{store} {kind}s" for store, kind in sorted(self._failing_since)]

    def outcome(self, store: str, operation: str, ok: bool) -> None:
        """How a store call made outside a wrapped store went (a result's upload, which
        the HTTP side streams to disk itself)."""
        self._last_call_s = self._monotonic()
        self._count(store, operation, ok)

    def _observe(self, store: str, operation: str, seconds: float, ok: bool) -> None:
        self._last_call_s = self._monotonic()
        self._metrics.store_latency.labels(store, operation).observe(seconds)
        self._count(store, operation, ok)

    def _count(self, store: str, operation: str, ok: bool) -> None:
        kind = (store, "write" if operation in WRITES else "read")
        if ok:
            if operation not in PROVES_NOTHING:
                self._failing_since.pop(kind, None)
        else:
            self._metrics.store_errors.labels(store, operation).inc()
            self._failing_since.setdefault(kind, self._last_call_s)


class _Measured:
    def __init__(self, inner: Any, name: str, monitor: StoreMonitor) -> None:
        self._inner = inner
        self._name = name
        self._monitor = monitor

    def __getattr__(self, operation: str) -> Any:
        attribute = getattr(self._inner, operation)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        measured = self._measure(operation)
        setattr(self, operation, measured)  # made once: later lookups find it directly
        return measured

    def _measure(self, operation: str) -> Callable[..., Awaitable[Any]]:
        async def measured(*args: Any, **kwargs: Any) -> Any:
            call = getattr(self._inner, operation)  # looked up per call, as without the wrapper
            # The store's own latency, on real time whatever clock the monitor was given:
            # the histogram measures the store, not the clock.
            started = time.perf_counter()
            try:
                result = await call(*args, **kwargs)
            except (RecordUnreadable, Deposed):  # the store answered: a bad record, a lost lease
                self._monitor._observe(self._name, operation, time.perf_counter() - started, True)
                raise
            except StoreError:
                self._monitor._observe(self._name, operation, time.perf_counter() - started, False)
                raise
            self._monitor._observe(self._name, operation, time.perf_counter() - started, True)
            return result

        return measured

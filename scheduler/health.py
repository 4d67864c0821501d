"""grpc.health.v1 on both ports, driven by readiness, draining and store reachability."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from grpc_health.v1 import health_pb2
from grpc_health.v1.health import aio as health_aio

from scheduler.store_monitor import StoreMonitor

log = logging.getLogger(__name__)

SERVICE_NAMES = (
    "",
    "mqc3_cloud.scheduler.v1.SubmissionService",
    "mqc3_cloud.scheduler.v1.ExecutionService",
)
CHECK_INTERVAL_S = 1.0


class Health:
    """SERVING once ready, until draining, except while the stores have been down too long.

    Stores that see no traffic are probed, so an idle scheduler notices an outage too.
    """

    def __init__(self, monitor: StoreMonitor, probe: Callable[[], Awaitable[object]],
                 unhealthy_after_s: float, probe_interval_s: float = 5.0) -> None:
        self.servicer = health_aio.HealthServicer()
        self._monitor = monitor
        self._probe = probe
        self._unhealthy_after_s = unhealthy_after_s
        self._probe_interval_s = probe_interval_s
        self._ready = False
        self._draining = False
        self.serving = False
        self._task: asyncio.Task[None] | None = None

    async def starting(self) -> None:
        """Answer NOT_SERVING until :meth:`ready`."""
        await self._publish(False)

    async def ready(self) -> None:
        """Recovery is over: serve, and start watching the stores."""
        self._ready = True
        await self._update()
        self._task = asyncio.create_task(self._watch(), name="health")

    async def draining(self) -> None:
        """Shutting down: NOT_SERVING from now on."""
        self._draining = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        await self._publish(False)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            if time.monotonic() - self._monitor.last_call_s >= self._probe_interval_s:
                try:
                    await self._probe()
                except Exception:  # noqa: BLE001 - the monitor has counted the failure
                    pass
            await self._update()

    async def _update(self) -> None:
        stores_ok = self._monitor.failing_for_s() < self._unhealthy_after_s
        await self._publish(self._ready and not self._draining and stores_ok)

    async def _publish(self, serving: bool) -> None:
        if serving != self.serving:
            log.log(logging.INFO if serving else logging.WARNING, "health: %s",
                    "SERVING" if serving else "NOT_SERVING")
        self.serving = serving
        status = (health_pb2.HealthCheckResponse.SERVING if serving
                  else health_pb2.HealthCheckResponse.NOT_SERVING)
        for name in SERVICE_NAMES:
            await self.servicer.set(name, status)

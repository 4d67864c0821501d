"""grpc.health.v1 on both ports, driven by readiness, draining and store reachability."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, submission_pb2
from scheduler.operations.store_monitor import StoreMonitor

log = logging.getLogger(__name__)

# The protocol's own names, read from the generated descriptors: one source.
SUBMISSION = submission_pb2.DESCRIPTOR.services_by_name["SubmissionService"].full_name
EXECUTION = execution_pb2.DESCRIPTOR.services_by_name["ExecutionService"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
SERVICE_NAMES = ("", SUBMISSION, EXECUTION)
CHECK_INTERVAL_S = 1.0


class HealthServicer(health_pb2_grpc.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 Check and Watch, whose Watch streams end when the server drains.

    (The library's servicer keeps Watch streams open forever, so a load balancer
    watching health would hold every drain for the whole grace period.)
    """

    def __init__(self) -> None:
        self._status: dict[str, health_pb2.HealthCheckResponse.ServingStatus.ValueType] = {}
        self._changed = asyncio.Event()
        self._ended = False

    def set_all(self, names: tuple[str, ...],
                status: health_pb2.HealthCheckResponse.ServingStatus.ValueType) -> None:
        """Give every name ``status`` and tell the watchers."""
        for name in names:
            self._status[name] = status
        self._notify()

    def end_watches(self) -> None:
        """Finish every Watch stream once it has sent the current status."""
        self._ended = True
        self._notify()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "unknown service")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> None:
        sent = None
        while True:
            changed = self._changed  # taken before reading, so no change is missed
            status = self._status.get(request.service,
                                      health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)
            if status != sent:
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
                continue  # read again: a drain may have begun while it was written
            if self._ended:
                return
            await changed.wait()


class Health:
    """SERVING once ready, until draining, except while the stores have been down too long
    or a background loop is down.

    Stores that see no traffic are probed, so an idle scheduler notices an outage too.
    """

    def __init__(self, monitor: StoreMonitor, probe: Callable[[], Awaitable[object]],
                 unhealthy_after_s: float, probe_interval_s: float = 5.0,
                 loops_down: Callable[[], list[str]] = list) -> None:
        self.servicer = HealthServicer()
        self._monitor = monitor
        self._probe = probe
        self._unhealthy_after_s = unhealthy_after_s
        self._probe_interval_s = probe_interval_s
        self._loops_down = loops_down  # background loops that died (the supervisor's word)
        self._ready = False
        self._draining = False
        self.serving = False

    async def starting(self) -> None:
        """Answer NOT_SERVING until :meth:`ready`."""
        self._publish(False)

    async def ready(self) -> None:
        """Recovery is over: serve (the store watch, :meth:`watch`, is started beside)."""
        self._ready = True
        self.update()

    async def draining(self) -> None:
        """Shutting down: NOT_SERVING from now on."""
        self._draining = True
        self._publish(False)
        self.servicer.end_watches()

    async def watch(self) -> None:
        """Probe idle or failing stores and publish the result, for ever (supervised)."""
        while True:
            await asyncio.sleep(CHECK_INTERVAL_S)
            # Idle stores are probed, and failing ones too: the probe's write is what
            # shows a read-only or full disk has recovered while reads keep coming.
            idle = self._monitor.quiet_for_s() >= self._probe_interval_s
            if idle or self._monitor.failing():
                try:
                    await self._probe()
                except Exception:  # noqa: BLE001 - the monitor has counted the failure
                    pass
            self.update()

    def update(self) -> None:
        """Publish SERVING or NOT_SERVING as things stand now."""
        stores_ok = self._monitor.failing_for_s() < self._unhealthy_after_s
        loops_ok = not self._loops_down()
        self._publish(self._ready and not self._draining and stores_ok and loops_ok)

    def _publish(self, serving: bool) -> None:
        if serving != self.serving:
            log.log(logging.INFO if serving else logging.WARNING, "health: %s",
                    "SERVING" if serving else "NOT_SERVING")
        self.serving = serving
        self.servicer.set_all(SERVICE_NAMES, health_pb2.HealthCheckResponse.SERVING if serving
                              else health_pb2.HealthCheckResponse.NOT_SERVING)

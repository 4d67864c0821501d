"""A health Watch stream ends with the status the server has at its end (docs/replicas.md:
a load balancer watching health must see NOT_SERVING before the stream closes)."""

from __future__ import annotations

import asyncio
from typing import Any

from grpc_health.v1 import health_pb2

from scheduler.operations.health import SERVICE_NAMES, HealthServicer

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class SlowStream:
    """A Watch call's context whose first write waits until ``release`` is set."""

    def __init__(self) -> None:
        self.sent: list[int] = []
        self.writing = asyncio.Event()
        self.release = asyncio.Event()

    async def write(self, response: Any) -> None:
        if not self.sent:
            self.writing.set()
            await self.release.wait()
        self.sent.append(response.status)


async def test_a_drain_during_a_write_still_sends_not_serving_before_the_stream_ends() -> None:
    servicer = HealthServicer()
    servicer.set_all(SERVICE_NAMES, SERVING)
    stream = SlowStream()
    watch = asyncio.create_task(
        servicer.Watch(health_pb2.HealthCheckRequest(service=""), stream))
    await stream.writing.wait()  # SERVING on its way to the watcher
    servicer.set_all(SERVICE_NAMES, NOT_SERVING)  # the drain begins meanwhile
    servicer.end_watches()
    stream.release.set()
    await asyncio.wait_for(watch, 1.0)
    assert stream.sent == [SERVING, NOT_SERVING]


async def test_a_watch_ended_with_no_change_sends_the_status_once() -> None:
    servicer = HealthServicer()
    servicer.set_all(SERVICE_NAMES, NOT_SERVING)
    stream = SlowStream()
    stream.release.set()
    watch = asyncio.create_task(
        servicer.Watch(health_pb2.HealthCheckRequest(service=""), stream))
    await stream.writing.wait()
    servicer.end_watches()
    await asyncio.wait_for(watch, 1.0)
    assert stream.sent == [NOT_SERVING]

"""What every client of the load generator shares: channels, deadlines, the closed loop."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import grpc

from benchmarks.stats import PhaseResult

RPC_TIMEOUT_S = 30.0
# One connection per client, as separate SDK processes would have (grpc otherwise
# shares one subchannel between channels to the same address).
CHANNEL_OPTIONS = [("grpc.use_local_subchannel_pool", 1)]

Outcome = str  # "" for success, else an error code


def channel(address: str) -> grpc.aio.Channel:
    return grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)


async def close_all(channels: list[grpc.aio.Channel]) -> None:
    await asyncio.gather(*(c.close() for c in channels), return_exceptions=True)


async def ready(address: str, timeout_s: float = 1.0) -> bool:
    """True once a gRPC server answers at ``address`` (for Child.wait_ready)."""
    async with grpc.aio.insecure_channel(address) as probe:
        await asyncio.wait_for(probe.channel_ready(), timeout_s)
    return True


async def closed_loop(phase: PhaseResult, kind: str, workers: int, duration_s: float,
                      op: Callable[[int], Awaitable[Outcome]], limit: int | None = None) -> None:
    """``workers`` loops each calling ``op(worker)`` back to back until the time (or limit) is up.

    Successful calls count as operations with their latency under ``kind``; failures
    count by error code.
    """
    samples = phase.samples(kind)
    started = time.perf_counter()
    deadline = started + duration_s
    issued = 0

    async def worker(index: int) -> None:
        nonlocal issued
        while time.perf_counter() < deadline and (limit is None or issued < limit):
            issued += 1
            began = time.perf_counter()
            outcome = await op(index)
            if outcome:
                phase.errors[outcome] += 1
            else:
                samples.add(time.perf_counter() - began)
                phase.operations += 1

    await asyncio.gather(*(worker(i) for i in range(workers)))
    phase.duration_s = time.perf_counter() - started

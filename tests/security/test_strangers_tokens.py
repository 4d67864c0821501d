"""Strangers with made-up tokens cannot lock real users out (issue 26, point 2), against
real scheduler processes: the tokens the database lists are looked up without spending the
budget for new tokens, and what is left of that budget is spent per caller address."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import grpc

from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from pb.mqc3_cloud.scheduler.v1 import submission_pb2_grpc
from tests.integration.processes import HOST, Deployment, standalone_deployment
from tests.operations.support import until

# One lookup of a new token per address, then one per 100 s: the flood spends it at once,
# however fast this machine is, and nothing refills it during the test.
ENV = {"SCHEDULER_NEW_TOKEN_LOOKUP_RATE": "0.01"}
FLOOD_CHANNELS = 20
IN_FLIGHT = 5  # calls each flooding channel keeps going
HONEST_CALLS = 25
EXHAUSTED = "reason=token_lookups_exhausted"


def _ask(token: str) -> pb.GetServiceStatusRequest:
    return pb.GetServiceStatusRequest(token=token, backend="emulator")


async def _flood(address: str, stop: asyncio.Event, seen: Counter[str]) -> None:
    """Made-up tokens, each new, from one channel, until ``stop``."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = submission_pb2_grpc.SubmissionServiceStub(channel)

        async def keep_asking() -> None:
            while not stop.is_set():
                answer = await stub.GetServiceStatus(_ask(f"made-up-{uuid.uuid4().hex}"),
                                                     timeout=60)
                seen["exhausted" if EXHAUSTED in answer.error.description
                     else answer.error.code or "served"] += 1

        await asyncio.gather(*(keep_asking() for _ in range(IN_FLIGHT)))


async def _honest(address: str, token: str) -> list[str]:
    """A user's calls, one after another: the description of each answer ("" when served)."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = submission_pb2_grpc.SubmissionServiceStub(channel)
        return [(await stub.GetServiceStatus(_ask(token), timeout=60)).error.description
                for _ in range(HONEST_CALLS)]


@contextlib.asynccontextmanager
async def _flooded(address: str) -> AsyncIterator[Counter[str]]:
    """Strangers flooding ``address`` from many channels, once they have spent its budget."""
    stop, seen = asyncio.Event(), Counter[str]()
    flood = asyncio.gather(*(_flood(address, stop, seen) for _ in range(FLOOD_CHANNELS)))
    try:
        await until(lambda: seen["exhausted"] > 0, 30, "the flood to spend the lookup budget")
        yield seen
    finally:
        stop.set()
        await flood


@contextlib.asynccontextmanager
async def _from_address(source: str, port: int) -> AsyncIterator[str]:
    """An address on loopback whose connections reach ``port`` from ``source`` (a TCP
    forwarder): calls through it come, for the scheduler, from another address."""

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        finally:
            writer.close()

    async def forward(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        await asyncio.gather(pipe(reader, upstream[1]), pipe(upstream[0], writer),
                             return_exceptions=True)

    server = await asyncio.start_server(forward, HOST, 0)
    try:
        yield f"{HOST}:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()


def _restarted(deployment: Deployment) -> str:
    """The scheduler started, used, stopped and started again: the new process has
    resolved no token yet. Its submission address."""
    first = deployment.start("first", ENV)
    assert first.stop(signal.SIGTERM) == 0
    return deployment.start("second", ENV).submission_address


async def test_made_up_tokens_do_not_lock_out_real_users_after_a_restart(
        tmp_path: Path) -> None:
    with standalone_deployment(tmp_path) as deployment:
        developer = deployment.token("dana", "developer")
        guest = deployment.token("gus", "guest")
        address = await asyncio.to_thread(_restarted, deployment)
        async with _flooded(address) as seen:
            served = await asyncio.gather(_honest(address, developer), _honest(address, guest))
        assert list(served) == [[""] * HONEST_CALLS] * 2, deployment.logs()
        assert seen["exhausted"] > 0


async def test_a_token_new_since_the_start_spends_its_own_address_budget(
        tmp_path: Path) -> None:
    with standalone_deployment(tmp_path) as deployment:
        scheduler = await asyncio.to_thread(deployment.start, "scheduler", ENV)
        address = scheduler.submission_address
        # Made after the start: not in the listing the scheduler learned.
        newcomer, neighbour = deployment.token("nina", "guest"), deployment.token("ned", "guest")
        async with _flooded(address), \
                _from_address("127.0.0.2", scheduler.ports.submission) as elsewhere:
            # From the flood's address, a new token finds the budget spent ...
            refused = await _honest(address, neighbour)
            # ... and from another address, it is looked up.
            served = await _honest(elsewhere, newcomer)
        assert served == [""] * HONEST_CALLS, deployment.logs()
        assert EXHAUSTED in refused[0]

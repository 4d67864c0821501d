"""One caller's flood beside an honest user, over real gRPC (docs/errors.md, "Limits per token").

A token calling too fast is refused alone, with a reason and an incident id that is also in
the log; a flood of random tokens costs the token database no call each and evicts no known
token; a flood of unknown job ids costs the job store no read each.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import grpc
import pytest

from common.clock import SystemClock
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from pb.mqc3_cloud.token_database.v1 import token_database_pb2 as tdb_pb
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from scheduler.wiring.app import PROBE_JOB_ID, Scheduler
from tests.conftest import scheduler_in
from tests.helpers import AwsNames, Clients, TokenDatabase, aws_config, submit_request
from token_database.service import TokenDatabaseService

FLOOD = 200  # calls of the flooding caller
HONEST = 10  # calls of the honest user at the same time
INCIDENT = re.compile(r" \[reason=(\w+) incident=([A-Z2-7]{8})\]$")


def _status(token: str, job_id: str) -> pb.GetJobStatusRequest:
    return pb.GetJobStatusRequest(token=token, job_id=job_id)


async def test_a_token_calling_too_fast_is_refused_alone_quotably(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        caplog: pytest.LogCaptureFixture) -> None:
    env = {"SCHEDULER_MAX_CALL_RATE_PER_TOKEN_GUEST": "0.01"}  # one call, then one per 100 s
    async with scheduler_in("standalone", tmp_path, request, token_database, env) as running:
        stub = running.clients.submission
        flooder, honest = running.token("mallory", "guest"), running.token("alice", "developer")
        job_id = (await stub.SubmitJob(submit_request(honest), timeout=10)).job_id
        service = pb.GetServiceStatusRequest(token=flooder, backend="emulator")
        # Its first call resolves the token (counted from then on, docs/errors.md).
        assert (await stub.GetServiceStatus(service, timeout=10)).error.code == ""
        answers = await asyncio.gather(
            *(stub.GetServiceStatus(service, timeout=10) for _ in range(FLOOD)),
            *(stub.GetJobStatus(_status(honest, job_id), timeout=10) for _ in range(HONEST)))
    flooded, served = answers[:FLOOD], answers[FLOOD:]
    assert [answer.error.code for answer in served] == [""] * HONEST
    assert Counter(answer.error.code for answer in flooded) == {
        "": 1, "RESOURCE_EXHAUSTED": FLOOD - 1}
    refused = next(answer.error.description for answer in flooded if answer.error.code)
    assert refused.startswith("this token calls faster than the 0.01 calls a second a guest "
                              "token may make")
    found = INCIDENT.search(refused)
    assert found is not None and found.group(1) == "token_rate", refused
    logged = [record.getMessage() for record in caplog.records]
    assert any(found.group(2) in line and "token_rate" in line for line in logged)


class CountingTokenDatabase(TokenDatabaseService):
    """The token database, counting the lookups it is asked for."""

    lookups = 0

    async def GetTokenInfo(self, request: tdb_pb.GetTokenInfoRequest,
                           context: grpc.aio.ServicerContext) -> tdb_pb.GetTokenInfoResponse:
        self.lookups += 1
        return await super().GetTokenInfo(request, context)


async def test_a_flood_of_random_tokens_costs_the_token_database_no_call_each(
        aws_names: AwsNames, tmp_path: Path) -> None:
    tokens = TokenDatabase(tmp_path / "tokens.db")
    counting = CountingTokenDatabase(tokens.store, SystemClock())
    server = grpc.aio.server()
    token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(counting, server)
    address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    env = {"SCHEDULER_NEW_TOKEN_LOOKUP_RATE": "0.01",  # one new token, then one per 100 s
           "SCHEDULER_TOKEN_CACHE_MAX_ENTRIES": "1"}
    scheduler = Scheduler(aws_config(aws_names, address, env=env))
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    try:
        stub = clients.submission
        honest = tokens.token("alice", "developer")

        def ask(token: str) -> Any:
            return stub.GetServiceStatus(
                pb.GetServiceStatusRequest(token=token, backend="emulator"), timeout=10)

        assert (await ask(honest)).error.code == ""
        assert counting.lookups == 1
        answers = await asyncio.gather(*(ask(f"random-{uuid.uuid4()}") for _ in range(FLOOD)),
                                       *(ask(honest) for _ in range(HONEST)))
        assert {answer.error.code for answer in answers[:FLOOD]} == {"RESOURCE_EXHAUSTED"}
        assert all("reason=token_lookups_exhausted" in answer.error.description
                   for answer in answers[:FLOOD])
        assert [answer.error.code for answer in answers[FLOOD:]] == [""] * HONEST
        assert counting.lookups == 1  # the honest token is still cached: nothing evicted it
    finally:
        await clients.close()
        await scheduler.stop(grace_s=0)
        await server.stop(0)
        tokens.store.close()


async def test_a_flood_of_unknown_job_ids_costs_the_job_store_no_read_each(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase,
        monkeypatch: pytest.MonkeyPatch) -> None:
    env = {"SCHEDULER_JOB_MISS_RATE_PER_TOKEN": "0.01"}  # one miss, then one per 100 s
    async with scheduler_in("standalone", tmp_path, request, token_database, env) as running:
        stub = running.clients.submission
        flooder, honest = running.token("mallory"), running.token("alice")
        job_id = (await stub.SubmitJob(submit_request(honest), timeout=10)).job_id
        reads: list[str] = []
        store = running.scheduler.stack.jobs
        read = store.get

        async def counted(wanted: str) -> Any:
            if wanted != PROBE_JOB_ID:  # the health probe's own read
                reads.append(wanted)
            return await read(wanted)

        monkeypatch.setattr(store, "get", counted)
        answers = await asyncio.gather(
            *(stub.GetJobStatus(_status(flooder, str(uuid.uuid4())), timeout=10)
              for _ in range(FLOOD)),
            *(stub.GetJobStatus(_status(honest, job_id), timeout=10) for _ in range(HONEST)))
        assert Counter(answer.error.code for answer in answers[:FLOOD]) == {
            "NOT_FOUND": 1, "RESOURCE_EXHAUSTED": FLOOD - 1}
        assert all("reason=job_lookups_exhausted" in answer.error.description
                   for answer in answers[:FLOOD] if answer.error.code == "RESOURCE_EXHAUSTED")
        assert [answer.error.code for answer in answers[FLOOD:]] == [""] * HONEST
        assert len(reads) == 1

        # Another token asking for one unknown id again and again: one read, then memory.
        absent = str(uuid.uuid4())
        again = [await stub.GetJobStatus(_status(honest, absent), timeout=10) for _ in range(20)]
        assert {answer.error.code for answer in again} == {"NOT_FOUND"}
        assert reads[1:] == [absent]


async def test_an_honest_users_calls_never_meet_the_default_limits(
        tmp_path: Path, request: pytest.FixtureRequest, token_database: TokenDatabase) -> None:
    async with scheduler_in("standalone", tmp_path, request, token_database) as running:
        stub = running.clients.submission
        token = running.token("alice", "guest")
        jobs = [(await stub.SubmitJob(submit_request(token), timeout=10)).job_id
                for _ in range(5)]  # a guest's five concurrent jobs, each polled by a run
        for _ in range(3):  # three rounds of polls, as fast as the runs can make them
            answers = await asyncio.gather(*(stub.GetJobStatus(_status(token, job_id),
                                                               timeout=10) for job_id in jobs))
            assert [answer.error.code for answer in answers] == [""] * len(jobs)

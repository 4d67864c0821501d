"""A stale hand-over never changes a later one (docs/job-rules.md, rule 10), over real gRPC
and HTTP: with requeues on, node A loses a job that is then handed to node B; whatever A
still reports, renews, beats for or uploads, B's run decides the outcome and the result.

Losses by the watchdog run standalone on a fake clock (the test moves time); losses by a
node's own UNAVAILABLE report need no clock and run in both modes (S3 on moto's server,
so presigned URLs are real).
"""

from __future__ import annotations

import asyncio
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import grpc
import pytest
import requests

from common.clock import FakeClock
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from pb.mqc3_scheduler.extension.v1 import nodes_pb2, nodes_pb2_grpc
from scheduler.wiring.app import Scheduler
from tests.conftest import Running, scheduler_in
from tests.helpers import (
    TEST_BACKENDS_TOML,
    UPLOAD_HEADERS,
    Clients,
    TokenDatabase,
    local_config,
    standalone_token,
    submit_request,
)

BEAT_TIMEOUT_S = 10
REQUEUES = {"SCHEDULER_MAX_REQUEUES": "2", "SCHEDULER_HEARTBEAT_TIMEOUT_S": str(BEAT_TIMEOUT_S)}
HANDOVER = "x-mqc3-handover"
Metadata = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Taken:
    """What a node was handed: the job, its upload URL, and the hand-over it names."""

    job_id: str
    upload_url: str
    handover: str | None


async def take(clients: Clients, node: Metadata = ()) -> Taken:
    call = clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=node, timeout=10)
    answer = await call
    assert answer.error.code == "" and answer.job_id, answer
    handover = (await call.initial_metadata()).get(HANDOVER)
    return Taken(answer.job_id, answer.upload_target.upload_url,
                 handover if isinstance(handover, str) or handover is None else handover.decode())


def echo(taken: Taken) -> Metadata:
    """The metadata of a node that echoes the hand-over it was given."""
    assert taken.handover is not None, "the assignment named no hand-over"
    return ((HANDOVER, taken.handover),)


async def report(clients: Clients, job_id: str, status: execution_pb2.ExecutionStatus,
                 metadata: Metadata = (),
                 code: str = "", started: job_pb2.JobTimestamps | None = None,
                 ) -> execution_pb2.ReportExecutionResultResponse:
    request = execution_pb2.ReportExecutionResultRequest(job_id=job_id, status=status)
    request.error.code = code
    if started is not None:
        request.timestamps.CopyFrom(started)
    return await clients.execution.ReportExecutionResult(request, metadata=metadata, timeout=10)


async def put(url: str, raw: bytes) -> int:
    answer = await asyncio.to_thread(requests.put, url, data=gzip.compress(raw),
                                     headers=UPLOAD_HEADERS, timeout=10)
    return answer.status_code


async def status(clients: Clients, token: str, job_id: str) -> submission_pb2.GetJobStatusResponse:
    return await clients.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=job_id))


async def downloaded(clients: Clients, token: str, job_id: str) -> bytes:
    answer = await clients.submission.GetJobResult(
        submission_pb2.GetJobResultRequest(token=token, job_id=job_id))
    assert answer.status == job_pb2.JOB_STATUS_COMPLETED, answer
    got = await asyncio.to_thread(requests.get, answer.result.result_url,
                                  headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert got.status_code == 200
    return got.content


async def submit(clients: Clients, token: str) -> str:
    answer = await clients.submission.SubmitJob(submit_request(token, timeout_s=600))
    assert answer.error.code == "", answer.error
    return str(answer.job_id)


FAILURE = execution_pb2.ExecutionStatus.EXECUTION_STATUS_FAILURE
SUCCESS = execution_pb2.ExecutionStatus.EXECUTION_STATUS_SUCCESS


# --- lost by the watchdog (standalone, fake clock) ------------------------------------------
@dataclass
class Lab:
    scheduler: Scheduler
    clock: FakeClock
    clients: Clients
    nodes: nodes_pb2_grpc.NodeServiceStub
    alice: str

    async def lose_to_silence(self, taken: Taken) -> None:
        """A's node beats once, then goes quiet past the heartbeat timeout: lost, queued again."""
        beat = await self.nodes.Heartbeat(nodes_pb2.HeartbeatRequest(job_id=taken.job_id),
                                          timeout=10)
        assert beat.error.code == ""
        self.clock.advance(BEAT_TIMEOUT_S + 1)
        await self.scheduler.manager.check_deadlines()
        assert (await status(self.clients, self.alice, taken.job_id)).status == \
            job_pb2.JOB_STATUS_QUEUED

    async def dequeued_at(self, job_id: str) -> job_pb2.JobTimestamps:
        stamps = (await status(self.clients, self.alice, job_id)).execution_details.timestamps
        started = job_pb2.JobTimestamps()
        started.compile_started_at.CopyFrom(stamps.dequeued_at)
        started.execution_started_at.CopyFrom(stamps.dequeued_at)
        return started


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    clock = FakeClock()
    scheduler = Scheduler(local_config(data_dir, env=REQUEUES), clock)
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.execution_port}")
    try:
        yield Lab(scheduler, clock, clients, nodes_pb2_grpc.NodeServiceStub(channel),
                  standalone_token(data_dir, "alice", "developer"))
    finally:
        await channel.close()
        await clients.close()
        await scheduler.stop(grace_s=0)


async def test_a_lost_nodes_failure_report_leaves_the_next_hand_over_running(lab: Lab) -> None:
    job_id = await submit(lab.clients, lab.alice)
    a = await take(lab.clients)
    assert a.handover == "0"
    await lab.lose_to_silence(a)
    lab.clock.advance(1)
    b = await take(lab.clients)
    assert (b.job_id, b.handover) == (job_id, "1")

    late = await report(lab.clients, job_id, FAILURE, echo(a))
    assert late.error.code == "FAILED_PRECONDITION"
    assert "earlier hand-over" in late.error.description
    assert (await status(lab.clients, lab.alice, job_id)).status == job_pb2.JOB_STATUS_RUNNING
    # Nor may A renew its URL or beat for B's run once it says which hand-over it holds.
    renewed = await lab.clients.execution.RefreshUploadUrl(
        execution_pb2.RefreshUploadUrlRequest(job_id=job_id), metadata=echo(a), timeout=10)
    assert renewed.error.code == "FAILED_PRECONDITION"
    beat = await lab.nodes.Heartbeat(nodes_pb2.HeartbeatRequest(job_id=job_id),
                                     metadata=echo(a), timeout=10)
    assert beat.error.code == "FAILED_PRECONDITION"
    # Nor upload: the endpoint takes an upload only in the URL's own hand-over.
    assert await put(a.upload_url, b"\x0a\x01a") == 409

    assert await put(b.upload_url, b"\x0a\x01b") == 200
    assert (await report(lab.clients, job_id, SUCCESS, echo(b))).error.code == ""
    assert await downloaded(lab.clients, lab.alice, job_id) == b"\x0a\x01b"


async def test_a_lost_nodes_success_begun_before_the_next_hand_over_is_refused(lab: Lab) -> None:
    job_id = await submit(lab.clients, lab.alice)
    a = await take(lab.clients)
    a_started = await lab.dequeued_at(job_id)  # A began at once, as it was handed the job
    assert await put(a.upload_url, b"\x0a\x01a") == 200
    await lab.lose_to_silence(a)
    lab.clock.advance(1)
    b = await take(lab.clients)
    assert b.job_id == job_id

    # A's SUCCESS names no hand-over, but its run began before B's hand-over existed.
    late = await report(lab.clients, job_id, SUCCESS, started=a_started)
    assert late.error.code == "FAILED_PRECONDITION"
    assert "earlier hand-over" in late.error.description
    assert (await status(lab.clients, lab.alice, job_id)).status == job_pb2.JOB_STATUS_RUNNING

    b_started = await lab.dequeued_at(job_id)
    assert await put(b.upload_url, b"\x0a\x01b") == 200
    assert (await report(lab.clients, job_id, SUCCESS, started=b_started)).error.code == ""
    assert await downloaded(lab.clients, lab.alice, job_id) == b"\x0a\x01b"


async def test_a_node_that_sends_nothing_new_still_completes_a_requeued_job(lab: Lab) -> None:
    job_id = await submit(lab.clients, lab.alice)
    await lab.lose_to_silence(await take(lab.clients))
    b = await take(lab.clients)
    renewed = await lab.clients.execution.RefreshUploadUrl(
        execution_pb2.RefreshUploadUrlRequest(job_id=job_id), timeout=10)
    assert renewed.error.code == ""
    assert urlparse(renewed.upload_target.upload_url).path == urlparse(b.upload_url).path
    assert await put(renewed.upload_target.upload_url, b"\x0a\x01b") == 200
    assert (await report(lab.clients, job_id, SUCCESS)).error.code == ""
    assert await downloaded(lab.clients, lab.alice, job_id) == b"\x0a\x01b"


# --- lost by a node's own UNAVAILABLE, in both modes ------------------------------------------
@pytest.fixture
async def requeuing(mode: str, tmp_path: Path, request: pytest.FixtureRequest,
                    token_database: TokenDatabase) -> AsyncIterator[Running]:
    async with scheduler_in(mode, tmp_path, request, token_database, REQUEUES) as started:
        yield started


async def test_a_lost_nodes_upload_never_becomes_the_result(requeuing: Running,
                                                            mode: str) -> None:
    clients, alice = requeuing.clients, requeuing.token("alice")
    job_id = await submit(clients, alice)
    a = await take(clients)
    assert (await report(clients, job_id, FAILURE, code="UNAVAILABLE")).error.code == ""
    b = await take(clients)
    assert b.job_id == job_id

    # A's upload after B took the job: refused (standalone) or kept apart (S3); B has
    # uploaded nothing, so its SUCCESS is refused rather than completed with A's bytes.
    assert await put(a.upload_url, b"\x0a\x01a") == (409 if mode == "standalone" else 200)
    early = await report(clients, job_id, SUCCESS)
    assert (early.error.code, "no result has been uploaded" in early.error.description) == (
        "FAILED_PRECONDITION", True)

    assert await put(b.upload_url, b"\x0a\x01b") == 200
    assert (await report(clients, job_id, SUCCESS)).error.code == ""
    assert await downloaded(clients, alice, job_id) == b"\x0a\x01b"
    # A's upload after B completed changes nothing the owner downloads.
    await put(a.upload_url, b"\x0a\x01a")
    assert await downloaded(clients, alice, job_id) == b"\x0a\x01b"
    assert (await report(clients, job_id, SUCCESS)).error.code == ""  # the same report: OK


async def test_with_requeues_no_upload_url_names_the_final_result(requeuing: Running) -> None:
    clients, alice = requeuing.clients, requeuing.token("alice")
    job_id = await submit(clients, alice)
    taken = await take(clients)
    assert urlparse(taken.upload_url).path.endswith(f"/{job_id}.handover-0.out.proto.gz")


async def test_without_requeues_the_upload_url_is_the_originals(running: Running) -> None:
    clients, alice = running.clients, running.token("alice")
    job_id = await submit(clients, alice)
    taken = await take(clients)
    assert urlparse(taken.upload_url).path.endswith(f"/{job_id}.out.proto.gz")
    assert ".handover-" not in taken.upload_url
    assert await put(taken.upload_url, b"\x0a\x01r") == 200
    assert (await report(clients, job_id, SUCCESS)).error.code == ""
    assert await downloaded(clients, alice, job_id) == b"\x0a\x01r"


# --- named nodes ---------------------------------------------------------------------------------
async def test_a_lost_named_nodes_report_renewal_and_beat_are_refused(lab: Lab) -> None:
    lab_1, lab_2 = (("x-mqc3-node-id", "lab-1"),), (("x-mqc3-node-id", "lab-2"),)
    job_id = await submit(lab.clients, lab.alice)
    await take(lab.clients, lab_1)
    assert (await report(lab.clients, job_id, FAILURE, lab_1, code="UNAVAILABLE")
            ).error.code == ""
    await take(lab.clients, lab_2)
    refused = [
        (await report(lab.clients, job_id, FAILURE, lab_1)).error.code,
        (await lab.clients.execution.RefreshUploadUrl(
            execution_pb2.RefreshUploadUrlRequest(job_id=job_id), metadata=lab_1,
            timeout=10)).error.code,
        (await lab.nodes.Heartbeat(nodes_pb2.HeartbeatRequest(job_id=job_id), metadata=lab_1,
                                   timeout=10)).error.code,
    ]
    assert refused == ["FAILED_PRECONDITION"] * 3
    assert (await status(lab.clients, lab.alice, job_id)).status == job_pb2.JOB_STATUS_RUNNING

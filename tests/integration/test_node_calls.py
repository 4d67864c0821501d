"""Nodes over real gRPC (docs/nodes.md): a node's name from x-mqc3-node-id, stored and
shown to admins only; NodeService.Heartbeat on the execution port; a quiet backend in
GetServiceStatus and the metrics.

A standalone scheduler on loopback with a fake clock: the tests move time and check the
watchdog themselves instead of waiting. Among replicas, two on DynamoDB and S3 on moto.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import requests

from common.clock import FakeClock
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc, nodes_pb2, nodes_pb2_grpc
from scheduler.wiring.app import Scheduler
from tests.helpers import (
    TEST_BACKENDS_TOML,
    UPLOAD_HEADERS,
    AwsNames,
    Clients,
    TokenDatabase,
    aws_config,
    local_config,
    standalone_token,
    submit_request,
)
from tests.integration.test_replica_routing import Replica, submit
from tests.security.test_tls import (
    Certificates,
    Standalone,
    _assign,
    _credentials,
    _submit_over_tls,
    certificates,
    secured,
)

__all__ = ["certificates", "secured"]  # the fixtures, shared with test_tls

BEAT_TIMEOUT_S = 10
QUIET_S = 120
ENV = {"SCHEDULER_HEARTBEAT_TIMEOUT_S": str(BEAT_TIMEOUT_S),
       "SCHEDULER_NODE_QUIET_S": str(QUIET_S), "SCHEDULER_MAX_REQUEUES": "1"}
LAB_1 = (("x-mqc3-node-id", "lab-1"),)
LAB_2 = (("x-mqc3-node-id", "lab-2"),)


@dataclass
class Lab:
    scheduler: Scheduler
    clock: FakeClock
    clients: Clients
    nodes: nodes_pb2_grpc.NodeServiceStub
    jobs: jobs_pb2_grpc.JobsServiceStub
    alice: str
    admin: str

    async def submit(self, timeout_s: int = 600) -> str:
        answer = await self.clients.submission.SubmitJob(
            submit_request(self.alice, timeout_s=timeout_s))
        assert answer.error.code == "", answer.error
        return str(answer.job_id)

    async def take(self, node: tuple[tuple[str, str], ...] = LAB_1,
                   ) -> execution_pb2.AssignNextJobResponse:
        answer = await self.clients.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=node, timeout=10)
        assert answer.error.code == "", answer.error
        return answer

    async def beat(self, job_id: str, node: tuple[tuple[str, str], ...] = LAB_1,
                   ) -> nodes_pb2.HeartbeatResponse:
        return await self.nodes.Heartbeat(nodes_pb2.HeartbeatRequest(job_id=job_id),
                                          metadata=node, timeout=10)

    async def later(self, seconds: float) -> None:
        self.clock.advance(seconds)
        await self.scheduler.manager.check_deadlines()

    async def why(self, job_id: str) -> str:
        """The stored record's status detail (a user reads a queued job's place instead)."""
        record = await self.scheduler.stack.jobs.get(job_id)
        assert record is not None
        return record.status_detail

    async def status(self, job_id: str) -> submission_pb2.GetJobStatusResponse:
        return await self.clients.submission.GetJobStatus(
            submission_pb2.GetJobStatusRequest(token=self.alice, job_id=job_id))


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[Lab]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    clock = FakeClock()
    scheduler = Scheduler(local_config(data_dir, env=ENV), clock)
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    execution = grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.execution_port}")
    submission = grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.submission_port}")
    try:
        yield Lab(scheduler, clock, clients, nodes_pb2_grpc.NodeServiceStub(execution),
                  jobs_pb2_grpc.JobsServiceStub(submission),
                  standalone_token(data_dir, "alice", "developer"),
                  standalone_token(data_dir, "root", "admin"))
    finally:
        await execution.close()
        await submission.close()
        await clients.close()
        await scheduler.stop(grace_s=0)


# --- a node's name -------------------------------------------------------------------------
async def test_a_nodes_name_is_stored_shown_to_admins_and_guards_its_job(lab: Lab) -> None:
    job_id = await lab.submit()
    assert (await lab.take()).job_id == job_id

    def node_of(answer: jobs_pb2.ListJobsResponse) -> list[tuple[str, str]]:
        return [(job.job_id, job.node_identity) for job in answer.jobs]

    admin_view = await lab.jobs.ListJobs(jobs_pb2.ListJobsRequest(token=lab.admin,
                                                                  owner_name="alice"))
    assert node_of(admin_view) == [(job_id, "lab-1")]
    owner_view = await lab.jobs.ListJobs(jobs_pb2.ListJobsRequest(token=lab.alice))
    assert node_of(owner_view) == [(job_id, "")]

    report = execution_pb2.ReportExecutionResultRequest(
        job_id=job_id, status=execution_pb2.EXECUTION_STATUS_FAILURE)
    refused = await lab.clients.execution.ReportExecutionResult(report, metadata=LAB_2)
    assert refused.error.code == "FAILED_PRECONDITION"
    assert "handed to another node" in refused.error.description
    assert (await lab.clients.execution.ReportExecutionResult(report, metadata=LAB_1)
            ).error.code == ""
    assert (await lab.status(job_id)).status == job_pb2.JOB_STATUS_FAILED


@pytest.mark.parametrize("name", ["", "-lab", "lab 1", "lab/1", "lab#1", "x" * 129])
async def test_a_malformed_node_name_is_refused_and_changes_nothing(lab: Lab, name: str) -> None:
    job_id = await lab.submit()
    bad = (("x-mqc3-node-id", name),)
    answer = await lab.clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=bad, timeout=10)
    if name == "":  # sent empty: as if not sent, served as before
        assert (answer.error.code, answer.job_id) == ("", job_id)
        return
    assert (answer.error.code, answer.job_id) == ("INVALID_ARGUMENT", "")
    assert "x-mqc3-node-id" in answer.error.description
    assert (await lab.status(job_id)).status == job_pb2.JOB_STATUS_QUEUED
    assert (await lab.take()).job_id == job_id


# --- heartbeats ----------------------------------------------------------------------------
async def test_a_beating_nodes_job_outlives_the_heartbeat_timeout_and_completes(
        lab: Lab) -> None:
    job_id = await lab.submit()
    assigned = await lab.take()
    first = await lab.beat(job_id)
    assert (first.error.code, first.timeout.seconds) == ("", BEAT_TIMEOUT_S)
    for _ in range(5):
        await lab.later(BEAT_TIMEOUT_S - 2)
        assert (await lab.beat(job_id)).error.code == ""
    assert (await lab.status(job_id)).status == job_pb2.JOB_STATUS_RUNNING
    upload = await asyncio.to_thread(requests.put, assigned.upload_target.upload_url,
                                     data=gzip.compress(b"result"), headers=UPLOAD_HEADERS,
                                     timeout=10)
    assert upload.status_code == 200
    report = await lab.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS), metadata=LAB_1)
    assert report.error.code == ""
    assert (await lab.status(job_id)).status == job_pb2.JOB_STATUS_COMPLETED


async def test_a_silent_node_loses_its_job_long_before_its_timeout(lab: Lab) -> None:
    job_id = await lab.submit(timeout_s=600)
    await lab.take()
    assert (await lab.beat(job_id)).error.code == ""
    await lab.later(BEAT_TIMEOUT_S + 1)
    status = await lab.status(job_id)
    assert status.status == job_pb2.JOB_STATUS_QUEUED
    assert "queued again 1 times" in status.status_detail
    assert "stopped sending heartbeats" in await lab.why(job_id)
    told = await lab.beat(job_id)
    assert told.error.code == "FAILED_PRECONDITION"
    assert "stop working on it" in told.error.description
    assert (await lab.take(LAB_2)).job_id == job_id
    assert (await lab.beat(job_id, LAB_1)).error.code == "FAILED_PRECONDITION"  # not its node


async def test_a_node_that_never_beats_keeps_the_timeout(lab: Lab) -> None:
    job_id = await lab.submit(timeout_s=30)
    await lab.take()
    await lab.later(30 + 60 - 1)  # far past the heartbeat timeout, within timeout and grace
    assert (await lab.status(job_id)).status == job_pb2.JOB_STATUS_RUNNING
    await lab.later(2)
    status = await lab.status(job_id)
    assert status.status == job_pb2.JOB_STATUS_QUEUED  # lost, and queued again (one requeue)
    assert "never reported" in await lab.why(job_id)


async def test_a_heartbeat_needs_the_nodes_credential(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    config = local_config(data_dir, env={**ENV, "SCHEDULER_EXECUTION_SECRET": "s3cret"})
    async with Scheduler(config) as scheduler:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.execution_port}") as channel:
            stub = nodes_pb2_grpc.NodeServiceStub(channel)
            request = nodes_pb2.HeartbeatRequest(job_id="00000000-0000-4000-8000-00000000beef")
            assert (await stub.Heartbeat(request)).error.code == "UNAUTHENTICATED"
            answer = await stub.Heartbeat(request, metadata=(("authorization", "Bearer s3cret"),))
            assert answer.error.code == "NOT_FOUND"


# --- is anyone polling a backend? ----------------------------------------------------------
async def test_a_quiet_backend_is_described_and_measured_its_status_unchanged(lab: Lab) -> None:
    def ask() -> submission_pb2.GetServiceStatusRequest:
        return submission_pb2.GetServiceStatusRequest(token=lab.alice, backend="emulator")

    def quiet_metric() -> str:
        return next(line for line in lab.scheduler.metrics.exposition().decode().splitlines()
                    if line.startswith('mqc3_node_quiet_seconds{backend="emulator"}'))

    before = await lab.clients.submission.GetServiceStatus(ask())
    assert (before.status, before.description) == (
        submission_pb2.SERVICE_STATUS_AVAILABLE, "emulator up")
    lab.clock.advance(12 * 60)
    quiet = await lab.clients.submission.GetServiceStatus(ask())
    assert (quiet.status, quiet.description) == (
        submission_pb2.SERVICE_STATUS_AVAILABLE,
        "emulator up; no node has asked for work for 12 min")
    assert float(quiet_metric().split()[-1]) >= 12 * 60
    await lab.clients.assign()
    back = await lab.clients.submission.GetServiceStatus(ask())
    assert back.description == "emulator up"
    assert float(quiet_metric().split()[-1]) == 0


# --- among replicas ----------------------------------------------------------------------------
async def test_among_replicas_a_nodes_calls_reach_the_leader_which_alone_sees_nodes(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    # No failover is wanted here: a lease long enough that a loaded machine keeps its leader.
    env = {"SCHEDULER_LEASE_DURATION_S": "30", "SCHEDULER_LEASE_RENEW_S": "1",
           "SCHEDULER_NODE_QUIET_S": "0.01"}
    async with contextlib.AsyncExitStack() as started:
        pair = []
        for _ in range(2):  # the first leads
            scheduler = Scheduler(aws_config(aws_names, token_database.address, env=env))
            await scheduler.start()
            pair.append(Replica(scheduler))
            started.push_async_callback(pair[-1].close)
        first, second = pair
        assert first.scheduler.replicas.ready and not second.scheduler.replicas.ready
        alice = token_database.token("alice", "developer")
        job_id = await submit(second, alice)
        assigned = await second.clients.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=LAB_1, timeout=20)
        assert assigned.job_id == job_id
        running = first.scheduler.manager.live(job_id)
        assert running is not None and running.node_identity == "lab-1"

        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{second.scheduler.execution_port}") as channel:
            through_follower = nodes_pb2_grpc.NodeServiceStub(channel)
            request = nodes_pb2.HeartbeatRequest(job_id=job_id)
            assert (await through_follower.Heartbeat(request, metadata=LAB_1, timeout=20)
                    ).error.code == ""
            assert (await through_follower.Heartbeat(request, metadata=LAB_2, timeout=20)
                    ).error.code == "FAILED_PRECONDITION"

        admin = token_database.token("root", "admin")
        ask = submission_pb2.GetServiceStatusRequest(token=admin, backend="qpu")
        at_leader = await first.clients.submission.GetServiceStatus(ask)
        assert at_leader.description.startswith("qpu up; no node has asked for work for ")
        at_follower = await second.clients.submission.GetServiceStatus(ask)
        assert (at_follower.status, at_follower.description) == (
            submission_pb2.SERVICE_STATUS_AVAILABLE, "qpu up")
        assert b"mqc3_node_quiet_seconds{" in first.scheduler.metrics.exposition()
        assert b"mqc3_node_quiet_seconds{" not in second.scheduler.metrics.exposition()


# --- under mTLS ------------------------------------------------------------------------------
async def test_under_mtls_the_certificates_name_wins_over_a_declared_one(
        secured: Standalone, certificates: Certificates) -> None:
    submitted = await _submit_over_tls(secured, certificates)
    async with grpc.aio.secure_channel(f"127.0.0.1:{secured.scheduler.execution_port}",
                                       _credentials(certificates, certificates.client)) as node:
        assert (await _assign(node, LAB_2)).job_id == submitted.job_id
    record = await secured.scheduler.stack.jobs.get(submitted.job_id)
    assert record is not None and record.node_identity == "lab node 1"

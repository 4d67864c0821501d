"""Two replicas in one process on one moto table: where each call goes (docs/replicas.md).

The first replica started leads; the second passes the leader's calls on and answers
reads from the store. A stop hands the lease over at once; a leader deposed while it
slept writes nothing and passes its call to the new leader.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import requests

from job_manager.model import JobStatus
from leadership.dynamodb_lease import LEASE_KEY
from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2, jobs_pb2_grpc, nodes_pb2, nodes_pb2_grpc
from scheduler.wiring.app import Scheduler
from tests.helpers import (
    UPLOAD_HEADERS,
    AwsNames,
    Clients,
    TokenDatabase,
    aws_client,
    aws_config,
    gzip_result,
    submit_request,
)
from tests.operations.support import scrape, value

# Short, so a test that waits for a renewal or a lapse stays short.
LEASE_ENV = {"SCHEDULER_LEASE_DURATION_S": "1", "SCHEDULER_LEASE_RENEW_S": "0.25"}
# For tests that wait for no lapse: rounds as often, but a leader whose renewals are slow
# under the suite's load (each call is bounded by one round) does not step down midway.
ROUNDS_ENV = {"SCHEDULER_LEASE_DURATION_S": "30", "SCHEDULER_LEASE_RENEW_S": "0.25"}
RESULT = gzip_result(b"\x0a\x02ok")
PROBE_ID = "2b0d7c1e-4f3a-4c8e-9d5b-6a7f8e9d0c1b"  # a job id no one submitted


class Replica:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.clients = Clients(scheduler.submission_port, scheduler.execution_port)

    async def close(self) -> None:
        await self.clients.close()
        await self.scheduler.stop(grace_s=0)


@contextlib.asynccontextmanager
async def replicas(names: AwsNames, tokens: TokenDatabase,
                   count: int = 2) -> AsyncIterator[list[Replica]]:
    started: list[Replica] = []
    try:
        for _ in range(count):
            scheduler = Scheduler(aws_config(names, tokens.address, env=ROUNDS_ENV))
            await scheduler.start()
            started.append(Replica(scheduler))
        yield started
    finally:
        for replica in started:
            await replica.close()


async def submit(replica: Replica, token: str) -> str:
    answer = await replica.clients.submission.SubmitJob(submit_request(token), timeout=20)
    assert answer.error.code == "", answer.error
    return str(answer.job_id)


async def status(replica: Replica, token: str, job_id: str) -> submission_pb2.GetJobStatusResponse:
    answer = await replica.clients.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=job_id), timeout=20)
    assert answer.error.code == "", answer.error
    return answer


async def until(condition: object, timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def test_a_follower_passes_the_leaders_calls_on_and_answers_reads_itself(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    async with replicas(aws_names, token_database) as (leader, follower):
        assert leader.scheduler.replicas.ready and not follower.scheduler.replicas.ready
        token = token_database.token("alice", "developer")

        job_id = await submit(follower, token)
        assert leader.scheduler.manager.queue_length("emulator") == 1  # queued at the leader
        assert follower.scheduler.manager.queue_length("emulator") == 0
        reads = value(await scrape(follower.scheduler.metrics_port),
                      "mqc3_store_call_seconds_count", store="jobs", operation="get")
        seen = await status(follower, token, job_id)  # the leader's answer, from its memory
        assert seen.status == job_pb2.JOB_STATUS_QUEUED
        assert seen.status_detail.startswith("queued: 1st")
        assert value(await scrape(follower.scheduler.metrics_port),
                     "mqc3_store_call_seconds_count", store="jobs", operation="get") == reads
        assert (await status(leader, token, job_id)).status_detail.startswith("queued: 1st")

        call = follower.clients.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="emulator"), timeout=10)
        assigned = await call
        assert assigned.job_id == job_id
        # The hand-over's number comes through the follower too (docs/nodes.md): a node
        # that reaches the leader through a follower can name its hand-over as any other.
        assert ("x-mqc3-handover", "0") in tuple(await call.initial_metadata())
        put = await asyncio.to_thread(requests.put, assigned.upload_target.upload_url,
                                      data=RESULT, headers=UPLOAD_HEADERS, timeout=10)
        assert put.status_code < 300
        report = execution_pb2.ReportExecutionResultRequest(
            job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS)
        answer = await follower.clients.execution.ReportExecutionResult(report, timeout=20)
        assert answer.error.code == "", answer.error
        result = await follower.clients.submission.GetJobResult(
            submission_pb2.GetJobResultRequest(token=token, job_id=job_id), timeout=20)
        assert result.status == job_pb2.JOB_STATUS_COMPLETED and result.result.result_url

        samples = await scrape(follower.scheduler.metrics_port)
        for method in ("SubmitJob", "AssignNextJob", "ReportExecutionResult", "GetJobStatus"):
            assert value(samples, "mqc3_forwarded_calls_total", method=method,
                         result="answered") == 1
        assert value(samples, "mqc3_forwarded_calls_total", method="GetJobResult") == 0
        assert value(samples, "mqc3_replica_leading") == 0
        leading = await scrape(leader.scheduler.metrics_port)
        assert value(leading, "mqc3_replica_leading") == 1
        assert value(leading, "mqc3_lease_epoch") == 1


async def test_a_cancel_through_a_follower_empties_the_leaders_queue(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    async with replicas(aws_names, token_database) as (leader, follower):
        token = token_database.token("alice", "developer")
        job_id = await submit(leader, token)
        answer = await follower.clients.submission.CancelJob(
            submission_pb2.CancelJobRequest(token=token, job_id=job_id), timeout=20)
        assert answer.error.code == "", answer.error
        assert leader.scheduler.manager.queue_length("emulator") == 0
        assert (await status(follower, token, job_id)).status == job_pb2.JOB_STATUS_CANCELLED
        # Someone else's job stays theirs through a follower too.
        other = await submit(follower, token)
        mallory = token_database.token("mallory", "developer")
        refused = await follower.clients.submission.CancelJob(
            submission_pb2.CancelJobRequest(token=mallory, job_id=other), timeout=20)
        assert refused.error.code == "NOT_FOUND"
        assert leader.scheduler.manager.queue_length("emulator") == 1


async def test_a_stopped_leader_hands_over_at_once_and_waiting_calls_complete(
        aws_names: AwsNames, token_database: TokenDatabase,
        caplog: pytest.LogCaptureFixture) -> None:
    async with replicas(aws_names, token_database) as (leader, follower):
        token = token_database.token("alice", "developer")
        queued = [await submit(follower, token) for _ in range(3)]
        # A node long-polls the follower for a backend with nothing queued: passed to the
        # leader, it must still end with an answer when the leader goes.
        parked = asyncio.ensure_future(follower.clients.execution.AssignNextJob(
            execution_pb2.AssignNextJobRequest(backend="qpu"),
            metadata=(("x-mqc3-wait-ms", "3000"),), timeout=20))
        await asyncio.sleep(0.2)
        with caplog.at_level(logging.WARNING, logger="leadership.lease"):
            await leader.scheduler.stop(grace_s=5)
            await until(lambda: follower.scheduler.replicas.ready, timeout_s=5)
        # Released, not lapsed: taken on the follower's next round, with no wait for the
        # lease's duration.
        took = [r.getMessage() for r in caplog.records if "leads now" in r.getMessage()]
        assert any(", released by " in line for line in took), took
        assert (await parked).error.code == ""
        # The new leader recovered the queue in its order.
        taken = [(await follower.clients.assign()).job_id for _ in queued]
        assert taken == queued
        samples = await scrape(follower.scheduler.metrics_port)
        # Taken over from the released lease (epoch 2); on a loaded machine a renewal
        # that misses its 0.25 s bound makes a replica step down and take it back anew,
        # one epoch more each time: counted among the follower's takeovers when it was
        # the follower's, not when the leader's own (before it stopped).
        epoch = value(samples, "mqc3_lease_epoch")
        assert epoch >= 2
        assert 1 <= value(samples, "mqc3_lease_takeovers_total") <= epoch - 1


async def test_a_leader_deposed_while_it_slept_writes_nothing_and_passes_the_call_on(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    async with replicas(aws_names, token_database) as (leader, follower):
        token = token_database.token("alice", "developer")
        # As if the leader slept through its lease and woke with a call to serve before
        # its next lease round: it renews no more and believes its hold still valid; the
        # follower took the lease over meanwhile. (The item names the follower: it sees
        # its own name and leads anew.)
        leader_lease = leader.scheduler.replicas._lease
        assert leader_lease is not None

        async def asleep(*_: object) -> None:
            pass

        leader_lease._renew = asleep  # type: ignore[method-assign,assignment]
        leader_lease._valid_until = float("inf")
        table = aws_client("dynamodb", aws_names.endpoint)
        item = table.get_item(TableName=aws_names.table, Key={"job_id": {"S": LEASE_KEY}},
                              ConsistentRead=True)["Item"]
        follower_lease = follower.scheduler.replicas._lease
        assert follower_lease is not None
        item["holder"] = {"S": follower_lease.me}
        item["epoch"] = {"N": "5"}
        item["version"] = {"S": "taken-while-the-leader-slept"}
        table.put_item(TableName=aws_names.table, Item=item)
        await until(lambda: follower.scheduler.replicas.ready)
        assert leader.scheduler.replicas.ready  # it has not noticed yet

        job_id = await submit(leader, token)  # refused by the fence, passed to the follower
        assert follower.scheduler.manager.queue_length("emulator") == 1
        assert not leader.scheduler.replicas.ready
        assert leader.scheduler.manager.queue_length("emulator") == 0
        stored = await follower.scheduler.stack.jobs.get(job_id)
        assert stored is not None and stored.status is JobStatus.QUEUED
        assert (await follower.clients.assign()).job_id == job_id


async def test_a_call_waits_for_a_leader_and_is_answered_once_one_leads(
        aws_names: AwsNames, token_database: TokenDatabase, tmp_path: Path) -> None:
    async with replicas(aws_names, token_database, count=1) as (alone,):
        token = token_database.token("alice", "developer")
        lease = alone.scheduler.replicas._lease
        assert lease is not None
        lease.deposed()  # it stops leading; the record still names it, so it takes it back
        assert not alone.scheduler.replicas.ready
        assert "no replica leads" in (alone.scheduler.replicas.note() or "")  # on /healthz
        job_id = await submit(alone, token)  # waits through the next round, not refused
        assert alone.scheduler.replicas.ready and lease.epoch == 2
        assert alone.scheduler.replicas.note() is None
        assert (await status(alone, token, job_id)).status == job_pb2.JOB_STATUS_QUEUED


@pytest.mark.parametrize("wait_s", ["0.3"])
async def test_a_call_that_finds_no_leader_within_the_wait_is_unavailable(
        aws_names: AwsNames, token_database: TokenDatabase, wait_s: str) -> None:
    import grpc

    scheduler = Scheduler(aws_config(aws_names, token_database.address,
                                     env={**LEASE_ENV, "SCHEDULER_LEADER_WAIT_S": wait_s}))
    # Another replica that is gone holds the lease: this one waits out its lapse.
    table = aws_client("dynamodb", aws_names.endpoint)
    table.put_item(TableName=aws_names.table, Item={
        "job_id": {"S": LEASE_KEY}, "holder": {"S": "gone"}, "epoch": {"N": "3"},
        "version": {"S": "v"}, "submission_address": {"S": "127.0.0.1:1"},
        "execution_address": {"S": "127.0.0.1:1"}, "released": {"BOOL": False}})
    await scheduler.start()
    replica = Replica(scheduler)
    try:
        token = token_database.token("alice", "developer")
        # A read never waits for a leader: answered from the store at once.
        polled = await replica.clients.submission.GetJobStatus(
            submission_pb2.GetJobStatusRequest(token=token, job_id=PROBE_ID), timeout=20)
        assert polled.error.code == "NOT_FOUND"
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await replica.clients.submission.SubmitJob(submit_request(token), timeout=20)
        assert refused.value.code() is grpc.StatusCode.UNAVAILABLE  # the SDK tries once more
        assert "no leader" in (refused.value.details() or "")
        await until(lambda: scheduler.replicas.ready)  # the lapse: it leads, epoch 4
        assert (await submit(replica, token))
    finally:
        await replica.close()


async def test_the_extension_on_a_follower_lists_and_watches_and_passes_changes_on(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    async with replicas(aws_names, token_database) as (leader, follower):
        token = token_database.token("alice", "developer")
        tagged = await follower.clients.submission.SubmitJob(
            submit_request(token), metadata=(("x-mqc3-tags", "team=optics"),), timeout=20)
        job_id = tagged.job_id
        async with grpc.aio.insecure_channel(
                f"127.0.0.1:{follower.scheduler.submission_port}") as channel:
            jobs = jobs_pb2_grpc.JobsServiceStub(channel)
            listed = await jobs.ListJobs(jobs_pb2.ListJobsRequest(token=token, tag="team=optics"))
            assert [e.job_id for e in listed.jobs] == [job_id]  # the tag reached the leader
            retagged = await jobs.SetJobTags(jobs_pb2.SetJobTagsRequest(
                token=token, job_id=job_id, tags=[jobs_pb2.Tag(key="run", value="2")]))
            assert retagged.error.code == ""
            live = leader.scheduler.manager.live(job_id)
            assert live is not None and live.tags == (("run", "2"),)
            usage = await jobs.GetUsage(jobs_pb2.GetUsageRequest(token=token))
            assert usage.usage[0].live_jobs == 1  # the leader's counters
            stream = jobs.WatchJob(jobs_pb2.WatchJobRequest(token=token, job_id=job_id))
            assert (await stream.read()).status == job_pb2.JOB_STATUS_QUEUED
            cancelled = await follower.clients.submission.CancelJob(
                submission_pb2.CancelJobRequest(token=token, job_id=job_id), timeout=20)
            assert cancelled.error.code == ""
            statuses = []
            while (message := await stream.read()) is not grpc.aio.EOF:
                statuses.append(message.status)
            assert statuses[-1] == job_pb2.JOB_STATUS_CANCELLED


class HeldHandOver:
    """The leader's store holds each QUEUED→RUNNING write until ``release`` is set."""

    def __init__(self, manager: Any) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        store = manager.jobs
        self._transition = store.transition
        store.transition = self._held

    async def _held(self, before: Any, after: Any, fence: Any = None) -> bool:
        if after.status is JobStatus.RUNNING and not self.release.is_set():
            self.entered.set()
            await self.release.wait()
        return bool(await self._transition(before, after, fence))


async def _queued_again(replica: Replica, job_id: str) -> None:
    async def queued() -> bool:
        stored = await replica.scheduler.stack.jobs.get(job_id)
        return stored is not None and stored.status is JobStatus.QUEUED
    for _ in range(200):
        if await queued() and replica.scheduler.manager.queue_length("emulator") == 1:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"job {job_id} was not queued again")


async def test_a_node_that_leaves_a_follower_during_the_hand_over_gets_the_job_back(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    # Issue 27, item 8 (docs/job-rules.md, rule 12): the node's AssignNextJob through a
    # follower ends while the leader is making the job RUNNING; the job must come back.
    async with replicas(aws_names, token_database) as (leader, follower):
        token = token_database.token("alice", "developer")
        job_id = await submit(follower, token)
        held = HeldHandOver(leader.scheduler.manager)
        call = asyncio.ensure_future(follower.clients.assign())
        await asyncio.wait_for(held.entered.wait(), 10)
        call.cancel()  # the node leaves
        with contextlib.suppress(asyncio.CancelledError):
            await call
        held.release.set()
        await _queued_again(leader, job_id)
        assert (await follower.clients.assign()).job_id == job_id  # the next node has it


async def test_a_job_the_follower_could_not_deliver_goes_back_to_its_queue(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    # Issue 27, item 8: the leader handed the job over and answered; the node had left
    # the follower by then, so nobody received it. Before, it stayed RUNNING until its
    # timeout and ended TIMEOUT.
    async with replicas(aws_names, token_database) as (leader, follower):
        token = token_database.token("alice", "developer")
        job_id = await submit(follower, token)
        forwarder = follower.scheduler.replicas._forwarder
        assert forwarder is not None
        answered = asyncio.Event()
        node_left = asyncio.Event()
        forward = forwarder.call

        async def late(*args: Any, **kwargs: Any) -> Any:
            answer = await forward(*args, **kwargs)
            if getattr(answer, "job_id", "") and args[1].endswith("/AssignNextJob"):
                answered.set()
                try:
                    await asyncio.Event().wait()  # the answer is on its way...
                finally:
                    node_left.set()  # ...when the node's call ends under it
            return answer

        forwarder.call = late  # type: ignore[method-assign]
        call = asyncio.ensure_future(follower.clients.assign())
        await asyncio.wait_for(answered.wait(), 10)
        stored = await leader.scheduler.stack.jobs.get(job_id)
        assert stored is not None and stored.status is JobStatus.RUNNING
        call.cancel()  # the node leaves before the answer reaches it
        with contextlib.suppress(asyncio.CancelledError):
            await call
        await asyncio.wait_for(node_left.wait(), 10)
        forwarder.call = forward  # type: ignore[method-assign]
        await _queued_again(leader, job_id)
        assert (await follower.clients.assign()).job_id == job_id


async def test_no_one_but_the_follower_that_passed_a_hand_over_on_can_return_it(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    async with replicas(aws_names, token_database) as (leader, follower):
        token = token_database.token("alice", "developer")
        job_id = await submit(follower, token)
        assert (await follower.clients.assign()).job_id == job_id
        nodes = nodes_pb2_grpc.NodeServiceStub(leader.clients._channels[1])
        for metadata in ((), (("x-mqc3-forwarded-by", "someone-else"),)):
            answer = await nodes.ReturnUndelivered(
                nodes_pb2.ReturnUndeliveredRequest(call_id="made-up"), metadata=metadata,
                timeout=10)
            assert answer.error.code == "NOT_FOUND", answer.error
        stored = await leader.scheduler.stack.jobs.get(job_id)
        assert stored is not None and stored.status is JobStatus.RUNNING


async def test_a_follower_passes_a_strangers_poll_of_a_job_it_remembers_on_as_a_made_up_id(
        aws_names: AwsNames, token_database: TokenDatabase) -> None:
    # A poll a follower answers itself costs no hop to the leader: were another user's job
    # answered here and a made-up id there, the time of the answer would tell them apart.
    async with replicas(aws_names, token_database) as (leader, follower):
        owner, stranger = (token_database.token("alice", "developer"),
                           token_database.token("bob", "developer"))
        job_id = await submit(leader, owner)
        assigned = await leader.clients.assign()
        put = await asyncio.to_thread(requests.put, assigned.upload_target.upload_url,
                                      data=RESULT, headers=UPLOAD_HEADERS, timeout=10)
        assert put.status_code < 300
        reported = await leader.clients.execution.ReportExecutionResult(
            execution_pb2.ReportExecutionResultRequest(
                job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS), timeout=20)
        assert reported.error.code == "", reported.error
        result = await follower.clients.submission.GetJobResult(  # the follower remembers it
            submission_pb2.GetJobResultRequest(token=owner, job_id=job_id), timeout=20)
        assert result.status == job_pb2.JOB_STATUS_COMPLETED

        async def forwarded_after_a_poll_of(wanted: str) -> float:
            answer = await follower.clients.submission.GetJobStatus(
                submission_pb2.GetJobStatusRequest(token=stranger, job_id=wanted), timeout=20)
            assert answer.error.code == "NOT_FOUND"
            return value(await scrape(follower.scheduler.metrics_port),
                         "mqc3_forwarded_calls_total", method="GetJobStatus", result="answered")

        before = value(await scrape(follower.scheduler.metrics_port),
                       "mqc3_forwarded_calls_total", method="GetJobStatus", result="answered")
        after_real = await forwarded_after_a_poll_of(job_id)
        after_made_up = await forwarded_after_a_poll_of(PROBE_ID)
        assert after_real - before == after_made_up - after_real == 1
        assert (await status(follower, owner, job_id)).status == job_pb2.JOB_STATUS_COMPLETED
        assert value(await scrape(follower.scheduler.metrics_port), "mqc3_forwarded_calls_total",
                     method="GetJobStatus", result="answered") == after_made_up  # owner: here

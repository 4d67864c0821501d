"""The extension (mqc3_scheduler.extension.v1.JobsService) over real gRPC, in both modes:
tags, ListJobs and its pages, SetJobTags, GetUsage, WatchJob, and whose jobs each shows."""

from __future__ import annotations

import asyncio
import gzip
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import pytest_asyncio
import requests

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, job_pb2, submission_pb2
from pb.mqc3_scheduler.extension.v1 import jobs_pb2 as pb
from pb.mqc3_scheduler.extension.v1 import jobs_pb2_grpc
from scheduler.wiring import cli
from scheduler.wiring.app import Scheduler
from tests.conftest import SHARED, Running, scheduler_in
from tests.helpers import (
    UPLOAD_HEADERS,
    TokenDatabase,
    aws_config,
    create_aws_resources,
    submit_request,
)

QUEUED, CANCELLED = job_pb2.JOB_STATUS_QUEUED, job_pb2.JOB_STATUS_CANCELLED


@pytest.fixture
async def jobs(running: Running) -> AsyncIterator[jobs_pb2_grpc.JobsServiceStub]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
    yield jobs_pb2_grpc.JobsServiceStub(channel)
    await channel.close()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_jobs(shared: Running) -> AsyncIterator[jobs_pb2_grpc.JobsServiceStub]:
    """The jobs service of the module's shared scheduler (tests/conftest.py, SHARED): its
    listings are per token, and each test lists with a token of its own."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{shared.scheduler.submission_port}")
    yield jobs_pb2_grpc.JobsServiceStub(channel)
    await channel.close()


async def submit(running: Running, token: str, tags: str | None = None) -> str:
    metadata = (("x-mqc3-tags", tags),) if tags is not None else None
    answer = await running.clients.submission.SubmitJob(submit_request(token), metadata=metadata)
    assert answer.error.code == "", answer.error
    return str(answer.job_id)


async def cancel(running: Running, token: str, job_id: str) -> None:
    answer = await running.clients.submission.CancelJob(
        submission_pb2.CancelJobRequest(token=token, job_id=job_id))
    assert answer.error.code == ""


async def rest_of(stream: Any) -> list[pb.WatchJobResponse]:
    """The messages a stream still sends, read by read() (the iterator may not follow it)."""
    messages = []
    while (message := await stream.read()) is not grpc.aio.EOF:
        messages.append(message)
    return messages


async def listed(jobs: jobs_pb2_grpc.JobsServiceStub, token: str, **fields: Any) -> list[str]:
    answer = await jobs.ListJobs(pb.ListJobsRequest(token=token, **fields))
    assert answer.error.code == "", answer.error
    return [entry.job_id for entry in answer.jobs]


@SHARED
async def test_tags_from_submission_metadata_are_listed_and_filter_the_listing(
        shared: Running, shared_jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice = shared.token("alice")
    tagged = await submit(shared, alice, "team=optics,run=7")
    plain = await submit(shared, alice)
    answer = await shared_jobs.ListJobs(pb.ListJobsRequest(token=alice))
    assert [e.job_id for e in answer.jobs] == [plain, tagged]  # newest first
    entry = answer.jobs[1]
    assert [(t.key, t.value) for t in entry.tags] == [("run", "7"), ("team", "optics")]
    assert entry.status == QUEUED and entry.backend == "emulator" and entry.n_shots == 100
    assert entry.HasField("submitted_at") and not entry.HasField("finished_at")
    assert entry.owner_name == ""  # only admins are told whose
    assert await listed(shared_jobs, alice, tag="team=optics") == [tagged]
    assert await listed(shared_jobs, alice, tag="team=other") == []


@SHARED
@pytest.mark.parametrize("header", [
    ",".join(f"k{i}=v" for i in range(17)),  # 17 tags
    "Upper=v", "k=" + "x" * 65, "novalue", "=v", "a=1,a=2", "k" * 33 + "=v"])
async def test_a_bad_tags_header_is_invalid_argument_and_makes_no_job(
        shared: Running, shared_jobs: jobs_pb2_grpc.JobsServiceStub, header: str) -> None:
    alice = shared.token("alice")
    answer = await shared.clients.submission.SubmitJob(
        submit_request(alice), metadata=(("x-mqc3-tags", header),))
    assert answer.error.code == "INVALID_ARGUMENT" and "tags" in answer.error.description
    assert answer.job_id == ""
    assert await listed(shared_jobs, alice) == []


@SHARED
async def test_sixteen_tags_of_the_longest_sizes_are_taken(
        shared: Running, shared_jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    header = ",".join(f"{i:0>32}={'~' * 64}" for i in range(16))
    alice = shared.token("alice")
    job = await submit(shared, alice, header)
    answer = await shared_jobs.ListJobs(pb.ListJobsRequest(token=alice))
    assert answer.error.code == "", answer.error
    assert answer.jobs[0].job_id == job and len(answer.jobs[0].tags) == 16


async def test_nobody_sees_anothers_jobs_and_an_admin_sees_everyones_with_names(
        running: Running, jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice, bob, admin = running.token("alice"), running.token("bob"), running.token("root", "admin")
    job = await submit(running, alice, "k=v")
    assert await listed(jobs, bob) == []
    refused = await jobs.ListJobs(pb.ListJobsRequest(token=bob, owner_name="alice"))
    assert refused.error.code == "INVALID_ARGUMENT"
    everyone = await jobs.ListJobs(pb.ListJobsRequest(token=admin, owner_name="alice"))
    assert [(e.job_id, e.owner_name) for e in everyone.jobs] == [(job, "alice")]
    assert await listed(jobs, admin) == []  # the admin's own, without an owner filter
    bobs = await submit(running, bob)
    assert await listed(jobs, admin, owner_name="*") == [bobs, job]
    assert await listed(jobs, bob) == [bobs]
    tags = await jobs.SetJobTags(pb.SetJobTagsRequest(token=bob, job_id=job, tags=[]))
    assert tags.error.code == "NOT_FOUND"
    usage = await jobs.GetUsage(pb.GetUsageRequest(token=bob))
    assert [(u.owner_name, u.live_jobs) for u in usage.usage] == [("bob", 1)]
    call = jobs.WatchJob(pb.WatchJobRequest(token=bob, job_id=job))
    watch = [m async for m in call]
    assert [m.error.code for m in watch] == ["NOT_FOUND"]
    assert list(await call.trailing_metadata()) == [("x-mqc3-reason", "job_not_found")]
    unchanged = await jobs.ListJobs(pb.ListJobsRequest(token=alice))
    assert [(t.key, t.value) for t in unchanged.jobs[0].tags] == [("k", "v")]


@SHARED
async def test_set_job_tags_replaces_them_all_in_any_status_and_checks_them(
        shared: Running, shared_jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice = shared.token("alice")
    job = await submit(shared, alice, "old=1,keep=no")
    await cancel(shared, alice, job)  # final: still tagged
    answer = await shared_jobs.SetJobTags(pb.SetJobTagsRequest(
        token=alice, job_id=job, tags=[pb.Tag(key="new", value="2")]))
    assert answer.error.code == "" and [(t.key, t.value) for t in answer.tags] == [("new", "2")]
    assert await listed(shared_jobs, alice, tag="new=2") == [job]
    assert await listed(shared_jobs, alice, tag="old=1") == []
    bad = await shared_jobs.SetJobTags(pb.SetJobTagsRequest(
        token=alice, job_id=job, tags=[pb.Tag(key="k", value=str(i)) for i in range(17)]))
    assert bad.error.code == "INVALID_ARGUMENT"
    missing = await shared_jobs.SetJobTags(pb.SetJobTagsRequest(token=alice,
                                                                job_id=str(uuid.uuid4())))
    assert missing.error.code == "NOT_FOUND"


async def test_tags_set_while_queued_survive_the_hand_over(
        running: Running, jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice = running.token("alice")
    job = await submit(running, alice)
    await jobs.SetJobTags(pb.SetJobTagsRequest(token=alice, job_id=job,
                                               tags=[pb.Tag(key="k", value="v")]))
    assert (await running.clients.assign("emulator")).job_id == job
    answer = await jobs.ListJobs(pb.ListJobsRequest(token=alice, tag="k=v"))
    assert [(e.job_id, e.status) for e in answer.jobs] == [(job, job_pb2.JOB_STATUS_RUNNING)]


async def test_pages_cover_every_job_once_while_jobs_change_between_them(
        running: Running, jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice = running.token("alice")
    made = [await submit(running, alice) for _ in range(7)]
    seen: list[str] = []
    token = ""
    changes: Iterator[Callable[[], Awaitable[Any]]] = iter([
        lambda: cancel(running, alice, made[1]),  # on a later page
        lambda: cancel(running, alice, made[6]),  # on a page already read
        running.clients.assign])  # the oldest: RUNNING
    while True:
        page = await jobs.ListJobs(pb.ListJobsRequest(token=alice, page_size=2, page_token=token))
        assert page.error.code == "" and len(page.jobs) <= 2
        seen += [e.job_id for e in page.jobs]
        if not page.next_page_token:
            break
        token = page.next_page_token
        change = next(changes, None)
        if change is not None:
            await change()
    assert seen == made[::-1]
    statuses = await jobs.ListJobs(pb.ListJobsRequest(token=alice, statuses=[CANCELLED]))
    assert [e.job_id for e in statuses.jobs] == [made[6], made[1]]


@SHARED
async def test_page_tokens_and_sizes_are_checked(
        shared: Running, shared_jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice = shared.token("alice")
    for request in (pb.ListJobsRequest(token=alice, page_token="not a token"),
                    pb.ListJobsRequest(token=alice, page_token="eyJ0IjogMX0="),
                    pb.ListJobsRequest(token=alice, page_size=501),
                    pb.ListJobsRequest(token=alice, tag="no-equals")):
        answer = await shared_jobs.ListJobs(request)
        assert answer.error.code == "INVALID_ARGUMENT", request


@SHARED
async def test_filters_by_backend_and_time_range(
        shared: Running, shared_jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice = shared.token("alice")
    first = await submit(shared, alice)
    await asyncio.sleep(0.01)
    middle = shared.scheduler.clock.now()
    second = await submit(shared, alice)
    request = pb.ListJobsRequest(token=alice)
    request.submitted_from.FromDatetime(middle)
    assert await listed(shared_jobs, alice, submitted_from=request.submitted_from) == [second]
    assert await listed(shared_jobs, alice, submitted_to=request.submitted_from) == [first]
    assert await listed(shared_jobs, alice, backend="qpu") == []
    assert await listed(shared_jobs, alice, backend="emulator") == [second, first]


async def _complete(running: Running) -> None:
    assigned = await running.clients.assign("emulator")
    upload = await asyncio.to_thread(requests.put, assigned.upload_target.upload_url,
                                     data=gzip.compress(b"r"), headers=UPLOAD_HEADERS, timeout=10)
    assert upload.status_code == 200
    reported = await running.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=assigned.job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS))
    assert reported.error.code == ""


async def test_usage_counts_final_statuses_shots_times_and_the_quota_in_use(
        running: Running, jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice, admin = running.token("alice"), running.token("root", "admin")
    done = await submit(running, alice)
    await _complete(running)
    cancelled = await submit(running, alice)
    await cancel(running, alice, cancelled)
    await submit(running, alice)  # still queued: quota in use
    await submit(running, running.token("bob"))
    usage = (await jobs.GetUsage(pb.GetUsageRequest(token=alice))).usage
    assert len(usage) == 1 and done
    mine = usage[0]
    assert {(c.status, c.jobs) for c in mine.jobs_by_final_status} == {
        (job_pb2.JOB_STATUS_COMPLETED, 1), (CANCELLED, 1)}
    assert mine.total_shots == 100 and mine.execution_seconds >= 0 < mine.queue_wait_seconds
    assert (mine.live_jobs, mine.role) == (1, "developer")
    assert mine.max_live_jobs > 0 and 0 < mine.queued_bytes <= mine.max_queued_bytes
    everyone = (await jobs.GetUsage(pb.GetUsageRequest(token=admin, all_users=True))).usage
    assert [(u.owner_name, u.live_jobs) for u in everyone] == [("alice", 1), ("bob", 1)]
    one = (await jobs.GetUsage(pb.GetUsageRequest(token=admin, owner_name="bob"))).usage
    assert [u.owner_name for u in one] == ["bob"]
    refused = await jobs.GetUsage(pb.GetUsageRequest(token=alice, all_users=True))
    assert refused.error.code == "INVALID_ARGUMENT"


@SHARED
async def test_a_watch_sends_the_status_then_each_change_and_ends_at_the_final_one(
        shared: Running, shared_jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice = shared.token("alice")
    job = await submit(shared, alice)
    stream = shared_jobs.WatchJob(pb.WatchJobRequest(token=alice, job_id=job))
    first = await stream.read()
    assert first.status == QUEUED and first.error.code == ""
    await cancel(shared, alice, job)
    rest = await rest_of(stream)
    assert [m.status for m in rest][-1] == CANCELLED
    assert all(m.status == QUEUED for m in rest[:-1])  # detail changes only
    assert await stream.code() == grpc.StatusCode.OK


async def test_open_watches_end_in_band_on_drain(
        running: Running, jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    alice = running.token("alice")
    job = await submit(running, alice)
    stream = jobs.WatchJob(pb.WatchJobRequest(token=alice, job_id=job))
    assert (await stream.read()).status == QUEUED
    stopping = asyncio.create_task(running.scheduler.stop(grace_s=5))
    last = await rest_of(stream)
    assert [m.error.code for m in last] == ["UNAVAILABLE"]
    assert (await stream.trailing_metadata())["x-mqc3-reason"] == "watch_interrupted"
    await asyncio.wait_for(stopping, 5)


async def test_watches_are_bounded_per_token(tmp_path: Path, request: pytest.FixtureRequest,
                                             token_database: TokenDatabase) -> None:
    env = {"SCHEDULER_MAX_WATCHES_PER_TOKEN": "1"}
    async with scheduler_in("standalone", tmp_path, request, token_database, env) as running:
        alice = running.token("alice")
        job = await submit(running, alice)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.scheduler.submission_port}")
        stub = jobs_pb2_grpc.JobsServiceStub(channel)
        first = stub.WatchJob(pb.WatchJobRequest(token=alice, job_id=job))
        assert (await first.read()).status == QUEUED
        refused = stub.WatchJob(pb.WatchJobRequest(token=alice, job_id=job))
        second = [m async for m in refused]
        assert [m.error.code for m in second] == ["RESOURCE_EXHAUSTED"]
        trailing = await refused.trailing_metadata()
        assert trailing["x-mqc3-reason"] == "too_many_watches"
        assert f"incident={trailing['x-mqc3-incident']}]" in second[0].error.description
        other = stub.WatchJob(pb.WatchJobRequest(token=running.token("bob"), job_id=job))
        assert (await other.read()).error.code == "NOT_FOUND"  # another token: its own bound
        first.cancel()
        await channel.close()


# --- AWS mode on the original's table: no owner-index -------------------------------------
async def test_without_the_owner_index_listing_names_the_command_that_adds_it(
        moto_endpoint: str, token_database: TokenDatabase) -> None:
    names = create_aws_resources(moto_endpoint, uuid.uuid4().hex[:12], owner_index=False)
    config = aws_config(names, token_database.address)
    async with Scheduler(config) as scheduler:
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{scheduler.submission_port}")
        stub = jobs_pb2_grpc.JobsServiceStub(channel)
        token = token_database.token("alice", "developer")
        answer = await stub.ListJobs(pb.ListJobsRequest(token=token))
        assert answer.error.code == "FAILED_PRECONDITION"
        assert "scheduler.py migrate add-owner-index" in answer.error.description
        argv = ["migrate", "add-owner-index", *config_argv(names, token_database.address)]
        assert await asyncio.to_thread(cli.main, argv) == 0
        assert (await stub.ListJobs(pb.ListJobsRequest(token=token))).error.code == ""
        await channel.close()


def config_argv(names: Any, token_address: str) -> list[str]:
    """The AWS flags of tests.helpers.aws_config, without the ports."""
    return ["--dev", "--endpoint", names.endpoint, "--region", "us-east-1", "-k", "testing",
            "-s", "testing", "--job_table_name_key", names.table_key,
            "--job_bucket_name_key", names.bucket_key,
            "--backend_status_parameter_name", names.backends_key,
            "--address_to_token_database", token_address]




async def test_a_period_beyond_every_job_reads_no_more_than_the_years_jobs_exist_in(
        running: Running, jobs: jobs_pb2_grpc.JobsServiceStub) -> None:
    # Issue 27, item 6, at the wire's extremes: no job is submitted before the year 2000
    # or after now, so a period reaching the year 1 or 9999 costs what one from 2000 to
    # now costs. On DynamoDB every owner's usage walks the period month by month; from
    # the year 1 to 9999 that was about 120,000 queries in one call.
    admin = running.token("root", "admin")
    await submit(running, running.token("alice"))
    queries = [0]
    client = getattr(running.scheduler.stack.jobs, "_client", None)
    if client is not None:  # AWS mode: count the table's queries
        query = client.query

        def counted(**request: Any) -> Any:
            queries[0] += 1
            return query(**request)

        client.query = counted
    request = pb.GetUsageRequest(token=admin, all_users=True)
    getattr(request, "from").seconds = -62_135_596_800  # 0001-01-01
    request.to.seconds = 2**63 - 1
    usage = (await jobs.GetUsage(request, timeout=60)).usage
    assert [u.owner_name for u in usage] == ["alice"]
    months_since_2000 = (2100 - 2000) * 12  # a bound no test run outlives
    assert queries[0] <= months_since_2000

"""What each of the JobManager's paths leaves behind: the records it stores, the words a
queued job is told, which node may speak for a job, what memory answers alone, and how a
hand-over that no node received is undone.

Driven directly over real stores (tests/unit/test_job_rules.py's Harness), and an S3
bucket on moto where the objects' tags are the point. Each test was seen failing on the
mutants it was written for (docs/mutation.md).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from common.identity import Principal, Role, fingerprint
from job_manager.model import JobRecord, JobStatus
from job_manager.stores.payload_store import input_key, result_key
from job_manager.stores.s3_payload_store import S3PayloadStore
from job_manager.stores.sqlite_job_store import SqliteJobStore
from tests.faults import FlakyJobStore, FlakyPayloadStore
from tests.helpers import aws_client, refused_as
from tests.unit.test_hang_ups import eventually, returned
from tests.unit.test_job_rules import (
    ALICE,
    EMULATOR_ONLY,
    GRACE_S,
    WINDOW,
    Events,
    Harness,
    h,
    report,
    spec,
)

__all__ = ["h"]  # the fixture, shared with test_job_rules

ROOT = Principal("root", Role.ADMIN, fingerprint("token-root"))


async def until(check: Callable[[], bool]) -> None:
    """Wait for work no caller waits for (a give-back) to make ``check`` true."""
    async def holds() -> bool:
        return check()

    await eventually(holds)


def errors(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


# --- what is stored ---------------------------------------------------------------------
async def test_a_submission_is_stored_as_it_was_made(h: Harness) -> None:
    made = replace(spec(timeout_s=45.0), sdk_version="1.2.3", save_job=True)
    job = await h.manager.submit(ALICE, made)
    stored = await h.stored(job)
    assert (stored.owner_name, stored.owner_fingerprint, stored.role) == (
        "alice", ALICE.fingerprint, Role.DEVELOPER)
    assert (stored.sdk_version, stored.save_job, stored.timeout_s) == ("1.2.3", True, 45.0)
    assert stored.submitted_at == stored.queued_at == h.clock.now()


@pytest.mark.parametrize("who", [ALICE, ROOT], ids=["owner", "admin"])
async def test_a_cancelled_job_is_stored_with_who_cancelled_it_and_when(
        h: Harness, who: Principal) -> None:
    job = await h.submit()
    h.clock.advance(7)
    await h.manager.cancel(who, job)
    stored = await h.stored(job)
    assert (stored.status, stored.finished_at) == (JobStatus.CANCELLED, h.clock.now())
    assert stored.cancelled_by == who.fingerprint
    assert stored.status_detail == f"cancelled by {who.name}#{who.fingerprint[:8]}"


async def test_a_job_is_timed_out_at_its_deadline_exactly(h: Harness) -> None:
    # The watchdog takes a deadline as due when it is reached; so must the verdict, or
    # the job would leave the watch and stay RUNNING for ever.
    job = await h.submit(timeout_s=30)
    await h.assign()
    h.clock.advance(30 + GRACE_S)
    await h.manager.check_deadlines()
    stored = await h.stored(job)
    assert (stored.status, stored.finished_at) == (JobStatus.TIMEOUT, h.clock.now())
    assert stored.status_detail == ("the backend never reported: no report within the job's "
                                    "timeout (30 s) and 60 s of grace")


async def test_a_job_failed_at_recovery_is_stored_with_why_and_when(h: Harness) -> None:
    job = await h.submit()
    await h.local.delete_input(job)
    h.clock.advance(3)
    manager = await h.restart()
    await manager.prefetch_programs()  # reads ahead after the recovery, and finds it gone
    stored = await h.stored(job)
    assert (stored.status, stored.status_detail, stored.finished_at) == (
        JobStatus.FAILED, "the job's program was missing after a restart", h.clock.now())


async def test_logs_name_a_user_by_name_and_eight_hex_of_the_token_fingerprint(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="job_manager")
    job = await h.submit()
    [queued] = [r.getMessage() for r in caplog.records if f"job {job} QUEUED" in r.getMessage()]
    assert f" user=alice#{ALICE.fingerprint[:8]} " in queued
    assert ALICE.fingerprint[:9] not in queued


# --- the watchdog after a job ended ------------------------------------------------------
async def test_the_deadline_of_a_job_that_ended_leaves_nothing_behind(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    job = await h.submit(timeout_s=30)
    await h.assign()
    await h.complete(job)
    h.clock.advance(30 + GRACE_S + 1)
    await h.manager.check_deadlines()
    assert h.manager.deadlines_watched() == 0, "the deadline was put back to be retried"
    assert errors(caplog) == []
    assert (await h.stored(job)).status is JobStatus.COMPLETED


async def test_a_report_that_beats_the_watchdog_leaves_it_nothing_to_retry(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    job = await h.submit(timeout_s=30)
    await h.assign()
    await h.upload_result(job)
    release = h.jobs.gate("transition")
    reporting = asyncio.create_task(h.manager.report(report(job)))
    await h.jobs.held("transition")
    h.clock.advance(30 + GRACE_S + 1)
    checking = asyncio.create_task(h.manager.check_deadlines())
    await asyncio.sleep(0.01)
    release.set()
    await asyncio.gather(reporting, checking)
    assert h.manager.deadlines_watched() == 0
    assert errors(caplog) == []
    assert (await h.stored(job)).status is JobStatus.COMPLETED


# --- nodes ------------------------------------------------------------------------------
async def test_only_the_node_that_took_a_job_may_report_it_or_renew_its_url(h: Harness) -> None:
    job = await h.submit()
    taken = await h.manager.assign("emulator", node="node-1")
    assert taken is not None and result_key(job) in taken.upload.url
    assert (await h.stored(job)).node_identity == "node-1"
    for call in (h.manager.refresh_upload_url(job, "node-2"),
                 h.manager.report(report(job, JobStatus.FAILED), "node-2")):
        await refused_as(call, "job_held_by_another_node", job_id=job)
    assert result_key(job) in (await h.manager.refresh_upload_url(job, "node-1")).url
    # A caller that names no node is refused too: leaving the name out must not pass.
    anonymous: tuple[Awaitable[object], ...] = (
        h.manager.refresh_upload_url(job), h.manager.heartbeat(job),
        h.manager.report(report(job, JobStatus.FAILED)))
    for unnamed in anonymous:
        await refused_as(unnamed, "job_held_by_another_node", job_id=job)
    assert (await h.manager.report(report(job, JobStatus.FAILED), "node-1")).status is (
        JobStatus.FAILED)

    named = await h.submit()
    await h.manager.assign("emulator", node="node-1")
    await refused_as(h.manager.report(report(named, JobStatus.FAILED)),
                     "job_held_by_another_node", job_id=named)


async def test_a_job_taken_without_a_node_identity_may_be_reported_by_any_node(
        h: Harness) -> None:
    job = await h.submit()
    await h.assign()
    assert (await h.stored(job)).node_identity == ""
    assert result_key(job) in (await h.manager.refresh_upload_url(job, "node-2")).url
    assert (await h.manager.report(report(job, JobStatus.FAILED), "node-2")).status is (
        JobStatus.FAILED)


async def test_the_upload_of_a_result_is_accepted_only_while_the_job_runs(h: Harness) -> None:
    job = await h.submit()
    assert not h.manager.accepts_result(job)
    await h.assign()
    assert h.manager.accepts_result(job)
    await h.complete(job)
    assert not h.manager.accepts_result(job)


async def test_a_node_that_does_not_wait_is_answered_at_once(h: Harness) -> None:
    assert await asyncio.wait_for(h.manager.assign("emulator"), 0.5) is None


async def test_a_finished_job_gives_a_download_url_for_its_own_result(h: Harness) -> None:
    job = await h.submit()
    await h.assign()
    await h.complete(job)
    _, url = await h.manager.result(ALICE, job)
    assert url is not None and result_key(job) in url.url


# --- what memory answers alone ---------------------------------------------------------
async def test_a_running_job_renews_its_url_while_the_job_store_is_down(h: Harness) -> None:
    job = await h.submit()
    await h.assign()
    h.jobs.down = True
    assert result_key(job) in (await h.manager.refresh_upload_url(job)).url


async def test_a_finished_job_is_read_from_the_store_once_then_from_memory(h: Harness) -> None:
    job = await h.submit()
    await h.assign()
    await h.complete(job)
    await h.restart()
    for _ in range(3):
        assert await h.status(job) is JobStatus.COMPLETED
    assert h.jobs.calls["get"] == 1


async def test_someone_elses_job_costs_the_store_read_an_unknown_job_costs(h: Harness) -> None:
    # So the answer's timing cannot tell "not yours" from "does not exist".
    bob = Principal("bob", Role.DEVELOPER, fingerprint("token-bob"))
    job = await h.submit(ALICE)
    reads = [h.jobs.calls["get"]]
    for asked in (job, str(uuid.uuid4())):
        await refused_as(h.manager.status(bob, asked), "job_not_found", job_id=asked)
        reads.append(h.jobs.calls["get"])
    assert reads[1] - reads[0] == reads[2] - reads[1] == 1


# --- idempotency keys -----------------------------------------------------------------------
async def test_a_keyed_retry_is_answered_from_memory_while_both_stores_fail(h: Harness) -> None:
    first = await h.submit(key="K")
    h.payloads.fail_on("put_input")
    h.jobs.fail_on("find_by_idempotency_key")
    assert await h.submit(key="K") == first
    assert h.payloads.calls["put_input"] == 1  # no program was written again


async def test_a_keyed_retry_of_a_finished_job_queues_nothing(h: Harness) -> None:
    first = await h.submit(key="K")
    await h.assign()
    await h.complete(first)
    h.payloads.fail_on("put_input")  # the answer comes from the key, not from a new job
    assert await h.submit(key="K") == first
    assert h.manager.queue_length("emulator") == 0
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0
    assert await h.manager.assign("emulator") is None


async def test_a_submission_without_a_key_never_looks_one_up(h: Harness) -> None:
    h.jobs.fail_on("find_by_idempotency_key")
    job = await h.submit()
    assert (await h.stored(job)).status is JobStatus.QUEUED
    assert h.jobs.calls["find_by_idempotency_key"] == 0


async def test_a_key_is_free_again_once_exactly_its_window_has_passed(h: Harness) -> None:
    # As in both job stores: a key is held by a job submitted less than the window ago.
    first = await h.submit(key="K")
    h.clock.advance(WINDOW.total_seconds() - 1)
    assert await h.submit(key="K") == first
    h.clock.advance(1)
    second = await h.submit(key="K")
    assert second != first
    assert len(await h.records()) == 2


# --- what a queued job is told ----------------------------------------------------------------
async def test_a_queued_job_is_told_its_place_in_words(h: Harness) -> None:
    jobs = [await h.submit(ROOT) for _ in range(121)]
    suffixes = {1: "st", 2: "nd", 3: "rd", 4: "th", 10: "th", 11: "th", 12: "th", 13: "th",
                20: "th", 21: "st", 22: "nd", 23: "rd", 101: "st", 111: "th", 112: "th",
                113: "th", 121: "st"}
    told = {place: h.manager.status_detail(await h.manager.status(ROOT, jobs[place - 1]))
            for place in suffixes}
    assert told == {place: f"queued: {place}{suffix} of 121 on emulator"
                    for place, suffix in suffixes.items()}


@pytest.mark.parametrize(("gap_s", "told"), [
    (0.4, "1 s"), (89.4, "89 s"), (90, "2 min"), (100, "2 min"), (3000, "50 min"),
    (5399, "90 min"), (5400, "1.5 h"), (36183.6, "10.1 h")])
async def test_a_queued_job_is_told_its_wait_in_the_unit_that_reads_best(
        h: Harness, gap_s: float, told: str) -> None:
    jobs = [await h.submit() for _ in range(3)]
    await h.assign()
    h.clock.advance(gap_s)  # one job handed over every gap_s
    await h.assign()
    detail = h.manager.status_detail(await h.manager.status(ALICE, jobs[2]))
    assert detail == f"queued: 1st of 1 on emulator, about {told}"


async def test_a_job_queued_by_another_process_is_told_only_its_backend(h: Harness) -> None:
    on_qpu = await h.submit(backend="qpu")
    on_emulator = await h.submit()
    elsewhere = h.new_manager(EMULATOR_ONLY)  # has no queue for qpu, and neither job queued
    for job, told in ((on_qpu, "queued on qpu"), (on_emulator, "queued on emulator")):
        assert elsewhere.status_detail(await elsewhere.status(ALICE, job)) == told


async def test_with_unified_backends_one_queue_serves_every_backend(h: Harness) -> None:
    h.manager = h.new_manager(unify_backends=True)
    on_qpu = await h.submit(backend="qpu")
    on_emulator = await h.submit()
    told = h.manager.status_detail(await h.manager.status(ALICE, on_emulator))
    assert told == "queued: 2nd of 2 on all backends"
    assert (await h.assign("emulator")).record.job_id == on_qpu
    assert h.manager.queue_length("qpu") == h.manager.queue_length("emulator") == 1


async def test_a_backend_without_a_queue_has_no_jobs_waiting(h: Harness) -> None:
    assert h.manager.queue_length("nope") == 0


# --- a job no node received goes back -----------------------------------------------------
async def test_a_job_given_back_is_stored_as_if_never_handed_over(
        h: Harness, caplog: pytest.LogCaptureFixture) -> None:
    job = await h.submit()
    assignment = await h.manager.assign("emulator", node="node-1")
    assert assignment is not None
    before = asyncio.all_tasks()
    h.manager.give_back(assignment)
    started = [weakref.ref(task) for task in asyncio.all_tasks() - before]
    await eventually(returned(h, job))
    stored = await h.stored(job)
    assert (stored.status, stored.dequeued_at, stored.node_identity) == (
        JobStatus.QUEUED, None, "")
    assert errors(caplog) == []
    # Work run in the background is let go once it ends, not kept in memory.
    await asyncio.sleep(0.01)
    gc.collect()
    kept = [task for ref in started if (task := ref()) is not None and task.done()]
    assert kept == []


async def test_a_cancel_during_a_give_back_waits_for_it_then_cancels(h: Harness) -> None:
    job = await h.submit()
    assignment = await h.assign()
    release = h.jobs.gate("transition")
    h.manager.give_back(assignment)
    await h.jobs.held("transition")  # RUNNING→QUEUED is in flight
    cancel = asyncio.create_task(h.manager.cancel(ALICE, job))
    await asyncio.sleep(0.01)
    assert not cancel.done(), "the cancel must wait for the change under way"
    release.set()
    assert (await cancel).status is JobStatus.CANCELLED
    assert (await h.stored(job)).status is JobStatus.CANCELLED


async def _ended_elsewhere(h: Harness) -> str:
    """A job this process handed over, which another process then saw reported."""
    job = await h.submit()
    assignment = await h.assign()
    other = h.new_manager()
    await other.recover()
    await h.upload_result(job)
    await other.report(report(job))
    h.manager.give_back(assignment)  # this process's node call ended late
    return job


async def test_a_give_back_of_a_job_that_ended_elsewhere_believes_the_store(h: Harness) -> None:
    job = await _ended_elsewhere(h)
    await until(lambda: h.manager.live_jobs() == 0)
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 0
    assert await h.status(job) is JobStatus.COMPLETED


async def test_a_give_back_that_fails_is_logged(h: Harness,
                                                caplog: pytest.LogCaptureFixture) -> None:
    h.jobs.fail_on("get", nth=1)  # the read that would have told what the store holds
    await _ended_elsewhere(h)
    await until(lambda: any("background job work failed" in m for m in errors(caplog)))
    [failed] = [r for r in caplog.records if "background job work failed" in r.getMessage()]
    assert failed.exc_info is not None


class _LeavesAsItStarts(Events):
    """An observer through which the node's call ends right after its job became RUNNING:
    the hand-over is done before the call can take its answer."""

    node: asyncio.Task[object] | None = None

    def handed_over(self, record: JobRecord) -> None:
        super().handed_over(record)
        assert self.node is not None
        asyncio.get_running_loop().call_soon(self.node.cancel)


async def test_a_job_made_running_just_as_its_node_left_goes_back(h: Harness) -> None:
    observer = _LeavesAsItStarts()
    h.events = observer
    h.manager = h.new_manager()
    job = await h.submit()
    node: asyncio.Task[object] = asyncio.create_task(h.manager.assign("emulator"))
    observer.node = node
    with pytest.raises(asyncio.CancelledError):
        await node
    await eventually(returned(h, job))
    assert (await h.stored(job)).status is JobStatus.QUEUED
    assert (await h.assign()).record.job_id == job


# --- the tags of stored objects (S3 lifecycle rules select on them) ------------------------
class S3Harness(Harness):
    """The Harness with its payloads in an S3 bucket on moto, where objects carry tags."""

    def __init__(self, directory: Path, endpoint: str) -> None:
        self.s3 = aws_client("s3", endpoint)
        self.bucket = f"payloads-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=self.bucket)
        super().__init__(directory)

    def _open_stores(self) -> tuple[FlakyJobStore, FlakyPayloadStore]:
        jobs = FlakyJobStore(SqliteJobStore(self.directory / "jobs.sqlite3"))
        return jobs, FlakyPayloadStore(S3PayloadStore(self.s3, self.bucket, self.clock))

    async def upload_result(self, job_id: str) -> None:
        await asyncio.to_thread(self.s3.put_object, Bucket=self.bucket, Key=result_key(job_id),
                                Body=b"result")

    async def tags(self, key: str) -> dict[str, str]:
        answer = await asyncio.to_thread(self.s3.get_object_tagging, Bucket=self.bucket, Key=key)
        return {tag["Key"]: tag["Value"] for tag in answer["TagSet"]}


@pytest.fixture
async def s3h(tmp_path: Path, moto_endpoint: str) -> AsyncIterator[S3Harness]:
    harness = S3Harness(tmp_path, moto_endpoint)
    yield harness
    await harness.close()


async def test_programs_and_completed_results_carry_their_owners_tags(s3h: S3Harness) -> None:
    kept = {"token_role": "developer", "save_job": "true", "upload-status": "complete"}
    job = await s3h.manager.submit(ALICE, replace(spec(), save_job=True))
    assert await s3h.tags(input_key(job)) == kept
    await s3h.assign()
    await s3h.complete(job)
    await s3h.manager.background_done()  # sealed just after the answer
    assert await s3h.tags(result_key(job)) == kept

    failed = await s3h.submit()
    await s3h.assign()
    await s3h.upload_result(failed)
    await s3h.manager.report(report(failed, JobStatus.FAILED))
    assert await s3h.tags(result_key(failed)) == {}  # only a completed job's result is sealed

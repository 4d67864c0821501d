"""A caller that hangs up never breaks a job: each race of docs/job-rules.md, held on purpose.

The JobManager is driven directly over real stores (tests/unit/test_job_rules.py's
Harness); a store call is held at a gate while the caller's task is cancelled, as gRPC
cancels a handler whose deadline passed. The model-based test in
tests/integration/test_interleavings.py finds the same races at random over gRPC.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest

from common.single_flight import SingleFlight
from job_manager.manager import JobManager
from job_manager.model import JobStatus
from message_manager import SchedulerError
from tests.unit.test_job_rules import ALICE, BOB, GRACE_S, Harness, h, refused, spec

__all__ = ["h"]  # the fixture, shared with test_job_rules

T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 2.0) -> None:
    """Wait until background work the caller did not wait for has made ``check`` true."""
    async with asyncio.timeout(timeout_s):
        while not await check():
            await asyncio.sleep(0.005)


def returned(h: Harness, job_id: str) -> Callable[[], Awaitable[bool]]:
    """Whether the job has been put back in its queue (the observer was told)."""
    async def check() -> bool:
        return ("returned", job_id) in h.events.seen

    return check


async def hang_up(task: asyncio.Task[T]) -> None:
    """Cancel ``task`` as gRPC does when its caller leaves, and let the cancellation land."""
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_node_that_leaves_during_the_hand_over_leaves_the_job_queued(h: Harness) -> None:
    first = await h.submit(program=b"first")
    second = await h.submit(program=b"second")
    release = h.jobs.gate("transition")
    node = asyncio.create_task(h.manager.assign("emulator"))
    await h.jobs.held("transition")  # QUEUED→RUNNING is in flight
    await hang_up(node)
    release.set()

    await eventually(returned(h, first))
    assert (await h.stored(first)).status is JobStatus.QUEUED
    assert (await h.stored(first)).dequeued_at is None
    assert await h.status(first) is JobStatus.QUEUED  # memory agrees with the store
    assert h.manager.queue_length("emulator") == 2
    queued = h.manager.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes
    assert queued == len(b"first") + len(b"second")
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 2
    # Back at the head of its queue: the next node gets it, and it runs to its end.
    assert (await h.assign()).record.job_id == first
    assert (await h.complete(first)).status is JobStatus.COMPLETED
    assert (await h.assign()).record.job_id == second


async def test_a_job_given_back_is_not_timed_out_by_its_first_deadline(h: Harness) -> None:
    job = await h.submit(timeout_s=30.0)
    release = h.jobs.gate("transition")
    node = asyncio.create_task(h.manager.assign("emulator"))
    await h.jobs.held("transition")
    await hang_up(node)
    release.set()

    await eventually(returned(h, job))
    h.clock.advance(20)
    await h.assign()  # handed over again, 20 s later
    h.clock.advance(30 + GRACE_S - 10)  # past the first hand-over's deadline only
    await h.manager.check_deadlines()
    assert (await h.stored(job)).status is JobStatus.RUNNING
    h.clock.advance(20)  # past the second one's
    await h.manager.check_deadlines()
    assert (await h.stored(job)).status is JobStatus.TIMEOUT


async def test_an_assignment_whose_answer_was_lost_is_given_back(h: Harness) -> None:
    # The servicer's path: the call ended (cancelled) after the job was marked RUNNING.
    job = await h.submit()
    assignment = await h.assign()
    h.manager.give_back(assignment)

    await eventually(returned(h, job))
    assert (await h.assign()).record.job_id == job


async def test_a_report_before_the_give_back_keeps_the_job_with_its_node(h: Harness) -> None:
    job = await h.submit()
    assignment = await h.assign()
    await h.complete(job)
    h.manager.give_back(assignment)  # too late: the node had it
    await asyncio.sleep(0.05)
    assert (await h.stored(job)).status is JobStatus.COMPLETED
    assert ("returned", job) not in h.events.seen


async def test_cancel_racing_cancel_tells_the_loser_the_truth(h: Harness) -> None:
    job = await h.submit()
    release = h.jobs.gate("transition")
    winner = asyncio.create_task(h.manager.cancel(ALICE, job))
    await h.jobs.held("transition")  # QUEUED→CANCELLED is in flight
    loser = asyncio.create_task(h.manager.cancel(ALICE, job))
    await asyncio.sleep(0.01)
    assert not loser.done(), "the loser must wait for the change under way"
    release.set()
    assert (await winner).status is JobStatus.CANCELLED
    error = await refused(loser, "FAILED_PRECONDITION")
    assert "CANCELLED" in str(error) and "RUNNING" not in str(error)
    assert (await h.stored(job)).status is JobStatus.CANCELLED


async def test_cancel_racing_a_hand_over_that_fails_cancels_the_job(h: Harness) -> None:
    job = await h.submit()
    h.jobs.fail_on("transition")
    release = h.jobs.gate("transition")
    node = asyncio.create_task(h.manager.assign("emulator"))
    await h.jobs.held("transition")
    cancel = asyncio.create_task(h.manager.cancel(ALICE, job))
    await asyncio.sleep(0.01)
    release.set()
    await refused(node, "INTERNAL")  # the store failed: the job stayed queued
    assert (await cancel).status is JobStatus.CANCELLED
    assert (await h.stored(job)).status is JobStatus.CANCELLED


async def test_a_cancel_right_after_a_hand_over_began_waits_for_it(h: Harness) -> None:
    job = await h.submit()
    release = h.jobs.gate("transition")
    node = asyncio.create_task(h.manager.assign("emulator"))
    await asyncio.sleep(0)  # the node took the job from its queue; no store write began yet
    asyncio.get_running_loop().call_later(0.01, release.set)
    # Awaited here, at once: the cancel looks at the job in this very loop iteration.
    error = await refused(h.manager.cancel(ALICE, job), "FAILED_PRECONDITION")
    assert "RUNNING" in str(error)
    assert (await node) is not None


async def test_cancel_racing_a_hand_over_that_succeeds_says_running(h: Harness) -> None:
    job = await h.submit()
    release = h.jobs.gate("transition")
    node = asyncio.create_task(h.manager.assign("emulator"))
    await h.jobs.held("transition")
    cancel = asyncio.create_task(h.manager.cancel(ALICE, job))
    await asyncio.sleep(0.01)
    release.set()
    assert (await node) is not None
    error = await refused(cancel, "FAILED_PRECONDITION")
    assert "RUNNING" in str(error)
    assert (await h.stored(job)).status is JobStatus.RUNNING


async def _one_stored_job(h: Harness) -> str:
    records = await h.records()
    assert len(records) == 1, [r.job_id for r in records]
    return records[0].job_id


async def test_a_keyed_retry_after_a_lost_answer_returns_the_first_job(h: Harness) -> None:
    release = h.jobs.gate("create")
    first = asyncio.create_task(h.submit(key="K", program=b"p"))
    await h.jobs.held("create")  # the record is being written
    await hang_up(first)  # the caller's deadline passed
    retry = asyncio.create_task(h.submit(key="K", program=b"p"))
    await asyncio.sleep(0.01)
    release.set()
    job = await retry
    assert job == await _one_stored_job(h)
    assert h.manager.queue_length("emulator") == 1
    assert h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs == 1
    assert (await h.assign()).record.job_id == job
    assert await h.manager.assign("emulator") is None


async def test_followers_are_answered_when_the_first_caller_leaves(h: Harness) -> None:
    release = h.jobs.gate("create")
    first = asyncio.create_task(h.submit(key="K"))
    await h.jobs.held("create")
    followers = [asyncio.create_task(h.submit(key="K")) for _ in range(3)]
    await asyncio.sleep(0.01)
    await hang_up(first)
    release.set()
    answers = await asyncio.wait_for(asyncio.gather(*followers), 2.0)
    assert set(answers) == {await _one_stored_job(h)}


async def test_two_processes_racing_one_key_make_one_job(h: Harness) -> None:
    # Two managers over one store: another process on the same data, or a restart.
    other: JobManager = h.new_manager()
    release = h.jobs.gate("create")
    mine = asyncio.create_task(h.manager.submit(ALICE, spec(key="K")))
    theirs = asyncio.create_task(other.submit(ALICE, spec(key="K")))
    await h.jobs.held("create")
    await asyncio.sleep(0.01)
    release.set()
    answers = await asyncio.gather(mine, theirs)
    assert answers[0] == answers[1] == await _one_stored_job(h)
    assert h.inputs() == [f"{answers[0]}.in.proto"]  # the loser's program was removed
    assert (h.manager.usage(ALICE.fingerprint, ALICE.role).live_jobs
            + other.usage(ALICE.fingerprint, ALICE.role).live_jobs) == 2
    # (each process queued the one job: the store's CAS decides)
    assert (await h.assign()).record.job_id == answers[0]
    assert await other.assign("emulator") is None  # taken: the store said so


async def test_one_key_of_two_owners_makes_two_jobs(h: Harness) -> None:
    alices, bobs = await asyncio.gather(h.submit(ALICE, key="K"), h.submit(BOB, key="K"))
    assert alices != bobs
    assert (await h.stored(alices)).owner_fingerprint == ALICE.fingerprint
    assert (await h.stored(bobs)).owner_fingerprint == BOB.fingerprint


async def test_a_flight_whose_work_fails_answers_every_caller_with_the_failure() -> None:
    flight: SingleFlight[str, int] = SingleFlight()
    gate = asyncio.Event()

    async def work() -> int:
        await gate.wait()
        raise SchedulerError("store_failed")

    callers = [asyncio.create_task(flight.run("k", work)) for _ in range(3)]
    await asyncio.sleep(0)
    gate.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(o, SchedulerError) for o in outcomes)
    assert "k" not in flight  # the key is free for the next attempt


class _EndedCall:
    """A servicer context whose call ended as its answer began: gRPC refuses the metadata
    send with an error of its own (not CancelledError) and never reports the call
    cancelled, as seen when a node's deadline of a few milliseconds passed."""

    def __init__(self) -> None:
        self.callbacks: list[Callable[[object], None]] = []

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def add_done_callback(self, callback: Callable[[object], None]) -> None:
        self.callbacks.append(callback)

    async def send_initial_metadata(self, metadata: object) -> None:
        from grpc._cython import cygrpc
        raise cygrpc.ExecuteBatchError('Failed "execute_batch"')


class _Passthrough:
    """The edge as the servicer reaches it: no admission, no follower."""

    def __init__(self) -> None:
        self.replicas = self
        self.undelivered = self
        self.admission = self

    def forwarded_call(self, context: object) -> None:
        return None

    def handed_over(self, *args: object) -> None:
        pass


async def test_a_hand_over_whose_metadata_could_not_be_sent_is_given_back(h: Harness) -> None:
    from pb.mqc3_cloud.scheduler.v1 import execution_pb2
    from scheduler.services.execution_service import ExecutionService

    job_id = await h.submit()
    service = ExecutionService(0.0, _Passthrough(), certified_nodes=False)  # type: ignore[arg-type]
    handler = ExecutionService.AssignNextJob.__wrapped__  # type: ignore[attr-defined]
    with pytest.raises(Exception, match="execute_batch"):
        await handler(service, execution_pb2.AssignNextJobRequest(backend="emulator"), _EndedCall(),
                      h.manager)
    await eventually(returned(h, job_id))
    assert (await h.stored(job_id)).status is JobStatus.QUEUED

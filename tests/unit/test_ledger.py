"""The ledger keeps every per-job structure in step: each operation moves a job in all of them."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import timedelta

import pytest

from common.clock import FakeClock
from common.identity import Principal, Role, fingerprint
from job_manager import ledger as ledger_module
from job_manager.ledger import FINISHED_CACHE_SIZE, Beat, Ledger
from job_manager.limits import Limits, RoleLimits
from job_manager.model import JobRecord, JobStatus, new_job_id
from job_manager.queue import QueuedJob, SchedulingPolicy
from job_manager.watchdog import Due

ALICE = Principal("alice", Role.DEVELOPER, fingerprint("alice"))
LIMITS = Limits(by_role={role: RoleLimits(5, 1 << 20) for role in Role},
                max_queue_bytes=1 << 20)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(clock: FakeClock) -> Ledger:
    ledger = Ledger(LIMITS, SchedulingPolicy(), clock, timedelta(0))
    ledger.open_queue("emulator")
    return ledger


def _job(clock: FakeClock, program: bytes = b"p", key: str = "") -> QueuedJob:
    now = clock.now()
    record = JobRecord(job_id=new_job_id(), status=JobStatus.QUEUED, backend="emulator",
                       owner_name="alice", owner_fingerprint=ALICE.fingerprint,
                       role=Role.DEVELOPER, settings=b"", timeout_s=30.0,
                       input_size_bytes=len(program), submitted_at=now, queued_at=now,
                       idempotency_key=key)
    return QueuedJob(record, program)


def _admitted(ledger: Ledger, clock: FakeClock, key: str = "") -> QueuedJob:
    job = _job(clock, key=key)
    ledger.reserve(ALICE, 10, job.size_bytes)
    assert ledger.admit(job, reserved=True)
    return job


def _state(ledger: Ledger) -> tuple[int, int, int, int]:
    queue = ledger.queue("emulator")
    assert queue is not None
    return (ledger.live_count(), len(queue), ledger.usage(ALICE.fingerprint, ALICE.role).live_jobs,
            ledger.usage(ALICE.fingerprint, ALICE.role).all_queued_bytes)


def test_a_job_goes_through_its_life_in_every_structure_at_once(
        ledger: Ledger, clock: FakeClock) -> None:
    job = _admitted(ledger, clock, key="k")
    assert _state(ledger) == (1, 1, 1, 1)
    assert ledger.key_holder(ALICE.fingerprint, "k") is job.record
    assert ledger.claim_next("emulator") is job
    running = replace(job.record, status=JobStatus.RUNNING, dequeued_at=clock.now())
    ledger.handed_over(job, running)
    assert _state(ledger) == (1, 0, 1, 0)
    assert ledger.deadlines_watched() == 1
    ended = replace(running, status=JobStatus.COMPLETED, finished_at=clock.now())
    ledger.finished(ended)
    assert _state(ledger) == (0, 0, 0, 0)
    assert ledger.key_holder(ALICE.fingerprint, "k") is None
    assert ledger.remembered(job.job_id) is ended


def test_a_queued_job_is_live_through_its_queue_and_its_claim_alone(
        ledger: Ledger, clock: FakeClock) -> None:
    # docs/design.md, "A queued job in memory": no index entry beside its queue; a status
    # read rebuilds its record from the compact job.
    job = _admitted(ledger, clock)
    record = job.record
    assert job._whole is None and ledger.live(job.job_id) == record
    assert ledger.holds(job)
    assert ledger.claim_next("emulator") is job
    assert ledger.live(job.job_id) == record and ledger.holds(job) and ledger.live_count() == 1
    running = replace(record, status=JobStatus.RUNNING, dequeued_at=clock.now())
    ledger.handed_over(job, running)
    assert ledger.live(job.job_id) is running and not ledger.holds(job)
    assert ledger.running_count() == ledger.live_count() == 1


def test_a_job_admitted_twice_is_held_once_and_its_second_reservation_freed(
        ledger: Ledger, clock: FakeClock) -> None:
    job = _admitted(ledger, clock)
    ledger.reserve(ALICE, 10, job.size_bytes)
    assert not ledger.admit(job, reserved=True)
    assert not ledger.admit(job, reserved=False)
    assert _state(ledger) == (1, 1, 1, 1)


def test_a_claim_put_back_is_in_its_place_and_counted_once(
        ledger: Ledger, clock: FakeClock) -> None:
    first, second = _admitted(ledger, clock), _admitted(ledger, clock)
    claimed = ledger.claim(first.record)
    assert claimed is first and _state(ledger) == (2, 1, 2, 2)
    ledger.put_back(first)
    assert ledger.claim_next("emulator") is first
    ledger.put_back(first)
    assert _state(ledger) == (2, 2, 2, 2)
    assert second in (ledger.claim_next("emulator"), ledger.claim_next("emulator"))


def test_a_job_given_back_is_queued_at_the_head_with_its_bytes(
        ledger: Ledger, clock: FakeClock) -> None:
    job, later = _admitted(ledger, clock), _admitted(ledger, clock)
    assert ledger.claim_next("emulator") is job
    running = replace(job.record, status=JobStatus.RUNNING, dequeued_at=clock.now())
    ledger.handed_over(job, running)
    ledger.given_back(job, replace(running, status=JobStatus.QUEUED, dequeued_at=None))
    assert _state(ledger) == (2, 2, 2, 2)
    assert ledger.usage(ALICE.fingerprint, ALICE.role).queued_bytes == 2
    returned = ledger.live(job.job_id)
    assert returned is not None and returned.status is JobStatus.QUEUED
    assert ledger.claim_next("emulator") is job
    assert later.job_id != job.job_id


def test_forgetting_a_job_frees_its_quota_and_its_key(ledger: Ledger, clock: FakeClock) -> None:
    job = _admitted(ledger, clock, key="k")
    assert ledger.claim_next("emulator") is job
    ledger.drop_claim(job)
    ledger.forget(job.job_id)
    assert _state(ledger) == (0, 0, 0, 0)
    assert ledger.key_holder(ALICE.fingerprint, "k") is None


def test_a_released_reservation_leaves_nothing(ledger: Ledger, clock: FakeClock) -> None:
    ledger.reserve(ALICE, 10, 100)
    ledger.release(ALICE.fingerprint, 100)
    assert _state(ledger) == (0, 0, 0, 0)


def test_a_job_found_running_counts_as_a_job_but_holds_no_queue_bytes(
        ledger: Ledger, clock: FakeClock) -> None:
    running = replace(_job(clock).record, status=JobStatus.RUNNING, dequeued_at=clock.now())
    ledger.admit_running(running)
    ledger.admit_running(running)  # twice: counted once
    assert _state(ledger) == (1, 0, 1, 0)
    assert ledger.deadlines_watched() == 1


def test_the_finished_records_kept_are_the_newest(ledger: Ledger, clock: FakeClock) -> None:
    records = [replace(_job(clock).record, status=JobStatus.CANCELLED)
               for _ in range(FINISHED_CACHE_SIZE + 1)]
    for record in records:
        ledger.remember_finished(record)
    assert ledger.remembered(records[0].job_id) is None
    assert ledger.remembered(records[1].job_id) is records[1]
    assert ledger.remembered(records[-1].job_id) is records[-1]


def test_with_one_queue_for_all_backends_every_backend_shares_it(clock: FakeClock) -> None:
    unified = Ledger(LIMITS, SchedulingPolicy(), clock, timedelta(0), unify_backends=True)
    unified.open_queue("emulator")
    unified.open_queue("qpu")
    assert unified.queue("emulator") is unified.queue("qpu") is unified.queue("any")
    job = _job(clock)
    unified.reserve(ALICE, 10, job.size_bytes)
    unified.admit(job, reserved=True)
    assert unified.claim_next("qpu") is job


# --- admit_all, a recovery's many jobs at once (docs/mutation.md) -----------------------
def test_a_recovery_queues_every_job_not_yet_live_after_one_that_is(
        ledger: Ledger, clock: FakeClock) -> None:
    live = _admitted(ledger, clock)
    later = [_job(clock, key="k"), _job(clock)]
    assert ledger.admit_all([QueuedJob(live.record, None), *later]) == 2
    assert _state(ledger) == (3, 3, 3, 3)
    assert ledger.key_holder(ALICE.fingerprint, "k") is later[0].record


def test_a_recovery_leaves_out_a_job_that_finished_here_after_its_page_was_read(
        ledger: Ledger, clock: FakeClock) -> None:
    job = _job(clock)
    running = replace(job.record, status=JobStatus.RUNNING, dequeued_at=clock.now())
    done = replace(running, status=JobStatus.COMPLETED, finished_at=clock.now())
    ledger.remember_finished(done)
    ledger.admit_running(running)  # the store's page, read before the job finished
    assert ledger.admit_all([QueuedJob(job.record, None)]) == 0
    assert ledger.remembered(job.job_id) == done
    assert ledger.running_count() == 0 and ledger.live_count() == 0


def test_a_recovery_opens_the_queue_of_a_backend_that_had_none(clock: FakeClock) -> None:
    ledger = Ledger(LIMITS, SchedulingPolicy(), clock, timedelta(0))
    assert ledger.admit_all([_job(clock)]) == 1
    queue = ledger.queue("emulator")
    assert queue is not None and len(queue) == 1


async def test_a_recovery_wakes_a_node_parked_on_the_queue(
        ledger: Ledger, clock: FakeClock) -> None:
    parked = asyncio.ensure_future(ledger.wait_for_job("emulator", 1.0))
    await asyncio.sleep(0)
    ledger.admit_all([_job(clock)])
    assert await parked  # woken, not timed out


async def test_a_recovery_admitted_in_slices_counts_every_job_and_keeps_their_order(
        ledger: Ledger, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ledger_module, "ADMIT_SLICE", 2)
    jobs = [_job(clock) for _ in range(5)]
    # Between slices the loop turns without waiting: a million jobs take no extra time.
    assert await asyncio.wait_for(ledger.admit_in_slices(jobs), 0.5) == 5
    assert [ledger.claim_next("emulator") for _ in jobs] == jobs


# --- claims, requeues and tags ------------------------------------------------------------
def test_a_job_of_a_backend_without_a_queue_cannot_be_claimed(
        ledger: Ledger, clock: FakeClock) -> None:
    gone = replace(_job(clock).record, backend="gone")  # a finished job of a removed backend
    assert ledger.claim(gone) is None


async def test_a_requeued_job_is_queued_with_its_bytes_and_wakes_a_parked_node(
        ledger: Ledger, clock: FakeClock) -> None:
    job = _admitted(ledger, clock)
    assert ledger.claim_next("emulator") is job
    running = replace(job.record, status=JobStatus.RUNNING, dequeued_at=clock.now())
    ledger.handed_over(job, running)
    parked = asyncio.ensure_future(ledger.wait_for_job("emulator", 1.0))
    await asyncio.sleep(0)
    queued = replace(running, status=JobStatus.QUEUED, dequeued_at=None, requeues=1)
    ledger.requeued(QueuedJob.at_head(queued))
    assert await parked  # woken, not timed out
    assert _state(ledger) == (1, 1, 1, 1)
    assert ledger.usage(ALICE.fingerprint, ALICE.role).queued_bytes == 1
    assert ledger.snapshot() == [("emulator", 1, 1, 0)]  # no queue opened beside its own
    assert ledger.live(job.job_id) == queued


def test_a_retag_reaches_the_record_of_a_job_in_every_state(
        ledger: Ledger, clock: FakeClock) -> None:
    tags = (("team", "optics"),)
    queued, claimed, running = (_admitted(ledger, clock) for _ in range(3))
    assert ledger.claim_next("emulator") is queued  # the oldest first: queued is claimed...
    ledger.put_back(queued)  # ... and put back, so that ``claimed`` is the one claimed
    assert ledger.claim(claimed.record) is claimed
    assert ledger.claim(running.record) is running
    ledger.handed_over(running, replace(running.record, status=JobStatus.RUNNING,
                                        dequeued_at=clock.now()))
    done = replace(_job(clock).record, status=JobStatus.COMPLETED, finished_at=clock.now())
    ledger.remember_finished(done)
    for job_id in (queued.job_id, claimed.job_id, running.job_id, done.job_id):
        ledger.retag(job_id, tags)
        record = ledger.remembered(job_id)
        assert record is not None and record.tags == tags, job_id
    assert ledger.live(running.job_id) == replace(
        running.record, status=JobStatus.RUNNING, dequeued_at=clock.now(), tags=tags)


def test_a_stale_final_record_is_forgotten(ledger: Ledger, clock: FakeClock) -> None:
    done = replace(_job(clock).record, status=JobStatus.COMPLETED, finished_at=clock.now())
    ledger.remember_finished(done)
    ledger.forget_finished(done.job_id)
    assert ledger.remembered(done.job_id) is None
    ledger.forget_finished(done.job_id)  # twice: nothing to forget


# --- deadlines and heartbeats ------------------------------------------------------------------
def test_a_job_watched_again_is_due_one_grace_from_now_for_its_hand_over(
        clock: FakeClock) -> None:
    ledger = Ledger(LIMITS, SchedulingPolicy(), clock, timedelta(seconds=60))
    running = replace(_job(clock).record, status=JobStatus.RUNNING, dequeued_at=clock.now())
    clock.advance(500)
    ledger.watch_again(running)
    clock.advance(59.9)
    assert ledger.due() == []
    clock.advance(0.1)
    [due] = ledger.due()
    assert (due.job_id, due.watched) == (running.job_id, running.dequeued_at)


def beats(due: list[Due]) -> list[Beat]:
    """The beats whose deadlines are due."""
    found = []
    for each in due:
        assert isinstance(each.watched, Beat)
        found.append(each.watched)
    return found


def test_a_beat_says_whether_it_is_the_first_since_the_last_was_dealt_with(
        ledger: Ledger, clock: FakeClock) -> None:
    job_id, handed_over = new_job_id(), clock.now()
    assert ledger.beat(job_id, handed_over, 1.0)
    assert not ledger.beat(job_id, handed_over, 1.0)
    clock.advance(1.0)
    earlier, latest = beats(ledger.due())  # due at one instant, in the order watched
    assert not ledger.latest_beat(job_id, earlier)
    assert ledger.latest_beat(job_id, latest)
    ledger.beat_over(job_id, latest)
    assert ledger.beat(job_id, handed_over, 1.0)  # a first beat again


def test_an_earlier_beat_dealt_with_leaves_the_latest_one(
        ledger: Ledger, clock: FakeClock) -> None:
    job_id, handed_over = new_job_id(), clock.now()
    ledger.beat(job_id, handed_over, 1.0)
    clock.advance(0.5)
    ledger.beat(job_id, handed_over, 1.0)
    clock.advance(0.5)
    [earlier] = beats(ledger.due())
    assert not ledger.latest_beat(job_id, earlier)
    ledger.beat_over(job_id, earlier)
    assert not ledger.beat(job_id, handed_over, 1.0)  # the latest beat is still known

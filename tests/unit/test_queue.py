"""The queue's order, on a fake clock: starvation bound, fair share, shorter timeouts first."""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from common.clock import FakeClock
from common.identity import Role
from job_manager.model import JobRecord, JobStatus, new_job_id
from job_manager.queue import Gate, JobQueue, QueuedJob, SchedulingPolicy

_counter = itertools.count()


def make_job(clock: FakeClock, owner: str, *, timeout_s: float = 60, role: Role = Role.DEVELOPER,
             size: int = 10) -> QueuedJob:
    now = clock.now()
    record = JobRecord(
        job_id=new_job_id(), status=JobStatus.QUEUED, backend="emulator", owner_name=owner,
        owner_fingerprint=owner, role=role, settings=b"", timeout_s=timeout_s,
        input_size_bytes=size, submitted_at=now, queued_at=now,
    )
    return QueuedJob(record, b"x" * size)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def queue(clock: FakeClock) -> JobQueue:
    return JobQueue(SchedulingPolicy(max_wait_s=1800), clock)


def drain(queue: JobQueue) -> list[QueuedJob]:
    taken = []
    while (job := queue.pop()) is not None:
        taken.append(job)
    return taken


def test_one_token_is_served_in_arrival_order(queue: JobQueue, clock: FakeClock) -> None:
    jobs = []
    for _ in range(5):
        jobs.append(make_job(clock, "a"))
        queue.push(jobs[-1])
        clock.advance(1)
    assert drain(queue) == jobs


def test_a_newcomer_is_among_the_next_two_despite_a_flood(queue: JobQueue,
                                                           clock: FakeClock) -> None:
    for _ in range(100):
        queue.push(make_job(clock, "flooder"))
    for _ in range(10):  # the flood is already being served
        queue.pop()
    clock.advance(1)
    newcomer = make_job(clock, "newcomer")
    queue.push(newcomer)
    assert newcomer in [queue.pop(), queue.pop()]


def test_a_newcomer_before_any_hand_over_is_among_the_next_two(queue: JobQueue,
                                                                clock: FakeClock) -> None:
    for _ in range(100):
        queue.push(make_job(clock, "flooder"))
    clock.advance(5)
    newcomer = make_job(clock, "newcomer")
    queue.push(newcomer)
    assert newcomer in [queue.pop(), queue.pop()]


def test_two_flooding_tokens_alternate(queue: JobQueue, clock: FakeClock) -> None:
    for _ in range(50):
        queue.push(make_job(clock, "a"))
        queue.push(make_job(clock, "b"))
    owners = [job.owner for job in drain(queue)]
    served_a = served_b = 0
    for owner in owners:
        served_a += owner == "a"
        served_b += owner == "b"
        assert abs(served_a - served_b) <= 1


def test_two_floods_queued_one_after_the_other_still_alternate(queue: JobQueue,
                                                                clock: FakeClock) -> None:
    for _ in range(30):
        queue.push(make_job(clock, "a"))
    clock.advance(1)
    for _ in range(30):
        queue.push(make_job(clock, "b"))
    owners = [job.owner for job in drain(queue)]
    for i in range(0, 60, 2):
        assert set(owners[i:i + 2]) == {"a", "b"}, owners[: i + 2]


def test_the_shorter_timeout_goes_first_among_equals(queue: JobQueue, clock: FakeClock) -> None:
    long_job = make_job(clock, "a", timeout_s=600)
    short_job = make_job(clock, "a", timeout_s=30)
    queue.push(long_job)
    queue.push(short_job)
    assert drain(queue) == [short_job, long_job]


def test_the_shorter_timeout_goes_first_between_tokens_at_the_same_turn(
        queue: JobQueue, clock: FakeClock) -> None:
    long_job = make_job(clock, "a", timeout_s=600)
    short_job = make_job(clock, "b", timeout_s=30)
    queue.push(long_job)
    queue.push(short_job)
    assert queue.pop() is short_job


def test_a_job_past_the_wait_bound_goes_before_younger_ones(clock: FakeClock) -> None:
    queue = JobQueue(SchedulingPolicy(max_wait_s=100), clock)
    old_long = make_job(clock, "a", timeout_s=3000)  # ranks last by timeout
    queue.push(old_long)
    clock.advance(50)
    for _ in range(20):
        queue.push(make_job(clock, "a", timeout_s=1))
    clock.advance(51)  # old_long has now waited 101 s; the others 51 s
    assert queue.pop() is old_long


def test_jobs_past_the_wait_bound_go_oldest_first(clock: FakeClock) -> None:
    queue = JobQueue(SchedulingPolicy(max_wait_s=100), clock)
    first = make_job(clock, "a", timeout_s=3000)
    queue.push(first)
    clock.advance(1)
    second = make_job(clock, "b", timeout_s=2000)
    queue.push(second)
    clock.advance(1)
    fresh = make_job(clock, "c", timeout_s=1)
    clock.advance(200)
    queue.push(fresh)
    assert [queue.pop(), queue.pop(), queue.pop()] == [first, second, fresh]


def test_role_weights_give_a_heavier_role_a_larger_share(clock: FakeClock) -> None:
    policy = SchedulingPolicy(role_weights={Role.ADMIN: 3.0, Role.DEVELOPER: 1.0,
                                            Role.GUEST: 1.0})
    queue = JobQueue(policy, clock)
    for _ in range(40):
        queue.push(make_job(clock, "admin", role=Role.ADMIN))
        queue.push(make_job(clock, "dev", role=Role.DEVELOPER))
    first_forty = [queue.pop() for _ in range(40)]
    admins = sum(1 for job in first_forty if job is not None and job.owner == "admin")
    assert admins == 30


def test_removed_job_is_never_handed_over(queue: JobQueue, clock: FakeClock) -> None:
    jobs = [make_job(clock, "a") for _ in range(3)]
    for job in jobs:
        queue.push(job)
    assert queue.remove(jobs[1].job_id) is jobs[1]
    assert queue.remove(jobs[1].job_id) is None
    assert drain(queue) == [jobs[0], jobs[2]]
    assert queue.bytes_held == 0


def test_a_restored_job_returns_to_its_place_and_share(queue: JobQueue,
                                                       clock: FakeClock) -> None:
    for _ in range(3):
        queue.push(make_job(clock, "a"))
        queue.push(make_job(clock, "b"))
    expected = [job.job_id for job in drain(_copy(queue, clock))]
    first = queue.pop()
    assert first is not None
    queue.restore(first)
    assert [job.job_id for job in drain(queue)] == expected


def _copy(queue: JobQueue, clock: FakeClock) -> JobQueue:
    """A second queue with the same jobs in the same arrival order."""
    twin = JobQueue(SchedulingPolicy(max_wait_s=1800), clock)
    for job in sorted(queue._jobs.values(), key=lambda j: j.sequence):
        twin.push(QueuedJob(job.record, job.program))
    return twin


def test_position_matches_the_actual_hand_over_order(queue: JobQueue, clock: FakeClock) -> None:
    for i in range(12):
        queue.push(make_job(clock, "a" if i < 8 else "b"))
        clock.advance(0.1)
    positions = {job_id: queue.position(job_id) for job_id in list(queue._jobs)}
    order = [job.job_id for job in drain(queue)]
    for index, job_id in enumerate(order):
        assert positions[job_id] == index + 1


def test_position_only_falls_as_jobs_ahead_leave(queue: JobQueue, clock: FakeClock) -> None:
    for i in range(30):
        queue.push(make_job(clock, ["a", "b", "c"][i % 3]))
    last = make_job(clock, "a")
    queue.push(last)
    seen = [queue.position(last.job_id)]
    while (job := queue.pop()) is not last:
        assert job is not None
        seen.append(queue.position(last.job_id))
    assert all(later < earlier for earlier, later in itertools.pairwise(seen))  # type: ignore[operator]
    assert seen[-1] == 1


def test_position_of_an_unknown_job_is_none(queue: JobQueue) -> None:
    assert queue.position("nope") is None


def test_bytes_held_follow_the_jobs(queue: JobQueue, clock: FakeClock) -> None:
    a, b = make_job(clock, "a", size=100), make_job(clock, "b", size=50)
    queue.push(a)
    queue.push(b)
    assert queue.bytes_held == 150
    queue.pop()
    assert queue.bytes_held in (50, 100)
    clock.advance(timedelta(seconds=1).total_seconds())
    drain(queue)
    assert queue.bytes_held == 0 and len(queue) == 0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from([10, 60, 600]),
                          st.sampled_from(list(Role)), st.booleans()),
                min_size=1, max_size=40))
def test_position_is_the_hand_over_order_for_any_mix(
        arrivals: list[tuple[str, int, Role, bool]]) -> None:
    clock = FakeClock()
    queue = JobQueue(SchedulingPolicy(max_wait_s=10_000), clock)
    roles: dict[str, Role] = {}
    for owner, timeout_s, role, tick in arrivals:
        queue.push(make_job(clock, owner, timeout_s=timeout_s, role=roles.setdefault(owner, role)))
        for job_id in list(queue._jobs):  # users poll between arrivals: none is told a stale one
            queue.position(job_id)
        if tick:
            clock.advance(1)
    positions = {job_id: queue.position(job_id) for job_id in list(queue._jobs)}
    order = [job.job_id for job in drain(queue)]
    assert [positions[job_id] for job_id in order] == list(range(1, len(order) + 1))


def test_a_job_already_queued_is_refused_not_held_twice(queue: JobQueue,
                                                         clock: FakeClock) -> None:
    job = make_job(clock, "alice")
    queue.push(job)
    with pytest.raises(ValueError, match="queued already"):
        queue.push(job)
    assert len(queue) == 1
    assert queue.pop() is job
    assert queue.pop() is None


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("abcd"), st.sampled_from([10.0, 60.0, 600.0]),
                          st.sampled_from(list(Role)), st.integers(0, 30)),
                min_size=1, max_size=40),
       st.lists(st.tuples(st.sampled_from("abcde"), st.sampled_from(list(Role))), max_size=12),
       st.integers(0, 12))
def test_many_jobs_added_at_once_go_in_the_order_pushing_each_gives(
        specs: list[tuple[str, float, Role, int]], held: list[tuple[str, Role]],
        taken: int) -> None:
    # A recovery adds its jobs in one step (JobQueue.extend): the same places, the same
    # order, the same fair share as pushing them one by one, also onto a queue that
    # already holds jobs and has served some.
    clock = FakeClock()
    jobs = []
    for owner, timeout_s, role, age_s in specs:
        job = make_job(clock, owner, timeout_s=timeout_s, role=role)
        job.record = replace(job.record, queued_at=clock.now() - timedelta(seconds=age_s))
        jobs.append(job)
    before = [make_job(clock, owner, role=role) for owner, role in held]
    pushed, extended = (JobQueue(SchedulingPolicy(max_wait_s=1800), clock) for _ in range(2))
    for queue in (pushed, extended):
        for job in before:
            queue.push(QueuedJob(job.record, job.program))
        for _ in range(min(taken, len(before))):
            queue.pop()
    for job in jobs:
        pushed.push(QueuedJob(job.record, job.program))
    extended.extend([QueuedJob(job.record, job.program) for job in jobs])
    assert len(pushed) == len(extended)
    assert pushed.bytes_held == extended.bytes_held
    assert [pushed.position(job.job_id) for job in jobs] == \
        [extended.position(job.job_id) for job in jobs]
    assert [job.job_id for job in drain(pushed)] == [job.job_id for job in drain(extended)]


def test_adding_a_job_twice_at_once_is_refused_and_changes_nothing(
        queue: JobQueue, clock: FakeClock) -> None:
    queued = make_job(clock, "a")
    queue.push(queued)
    with pytest.raises(ValueError):
        queue.extend([make_job(clock, "b"), QueuedJob(queued.record, queued.program)])
    fresh = make_job(clock, "c")
    with pytest.raises(ValueError):
        queue.extend([fresh, QueuedJob(fresh.record, fresh.program)])
    assert len(queue) == 1 and queue.bytes_held == queued.size_bytes
    assert drain(queue) == [queued]


def test_a_job_without_its_program_counts_the_size_its_record_gives(
        queue: JobQueue, clock: FakeClock) -> None:
    recovered = make_job(clock, "a", size=123)
    queue.extend([QueuedJob(recovered.record, None)])
    assert queue.bytes_held == 123
    taken = queue.pop()
    assert taken is not None and taken.program is None and queue.bytes_held == 0


# --- gates: who may be handed a job now (reservations, budgets, sessions) ------------------
def test_a_gate_that_admits_no_one_takes_nothing(queue: JobQueue, clock: FakeClock) -> None:
    queue.push(make_job(clock, "a"))
    assert queue.pop(Gate(lambda origin: False)) is None
    assert len(queue) == 1 and queue.pop() is not None


def test_a_gate_passes_over_the_owners_it_does_not_admit(queue: JobQueue,
                                                         clock: FakeClock) -> None:
    held = [make_job(clock, "a") for _ in range(3)]
    for job in held:
        queue.push(job)
    clock.advance(1)
    admitted = [make_job(clock, "b"), make_job(clock, "b")]
    for job in admitted:
        queue.push(job)
    gate = Gate(lambda origin: origin.owner_fingerprint == "b")
    assert [queue.pop(gate), queue.pop(gate), queue.pop(gate)] == [*admitted, None]
    assert drain(queue) == held  # in their order once the gate is gone


def test_the_first_owner_goes_before_everyone_it_admits(queue: JobQueue,
                                                        clock: FakeClock) -> None:
    early = make_job(clock, "a")
    queue.push(early)
    clock.advance(10)
    session = [make_job(clock, "s"), make_job(clock, "s")]
    for job in session:
        queue.push(job)
    everyone = Gate(lambda origin: True, first="s")
    assert [queue.pop(everyone), queue.pop(everyone)] == session
    assert queue.pop(everyone) is early  # the session has nothing queued: the rest goes


def test_a_first_owner_the_gate_does_not_admit_waits(queue: JobQueue, clock: FakeClock) -> None:
    other, session = make_job(clock, "a"), make_job(clock, "s")
    queue.push(other)
    queue.push(session)
    assert queue.pop(Gate(lambda origin: origin.owner_fingerprint != "s", first="s")) is other
    assert queue.pop(Gate(lambda origin: origin.owner_fingerprint != "s", first="s")) is None


def test_the_starvation_bound_holds_among_the_admitted(clock: FakeClock) -> None:
    queue = JobQueue(SchedulingPolicy(max_wait_s=100), clock)
    held_back = make_job(clock, "a")  # the oldest, past the bound too, but not admitted
    queue.push(held_back)
    clock.advance(1)
    overdue = make_job(clock, "b", timeout_s=10_000)  # its rank alone puts it last
    queue.push(overdue)
    clock.advance(49)
    soon = make_job(clock, "c", timeout_s=1)
    queue.push(soon)
    gate = Gate(lambda origin: origin.owner_fingerprint != "a")
    clock.advance(60)  # b's job has waited 109 s, c's 60 s
    assert queue.pop(gate) is overdue
    assert queue.pop(gate) is soon
    assert queue.pop(gate) is None and held_back.job_id in queue


def test_within_the_bound_the_fair_share_orders_the_admitted(clock: FakeClock) -> None:
    queue = JobQueue(SchedulingPolicy(max_wait_s=100), clock)
    late = make_job(clock, "b", timeout_s=10_000)
    queue.push(late)
    soon = make_job(clock, "c", timeout_s=1)
    queue.push(soon)
    assert queue.pop(Gate(lambda origin: True)) is soon  # the shorter timeout first

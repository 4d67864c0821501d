"""The measured phases: submit, assign probe, drain, steady, status (and the cleanup drain)."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable, Callable

from benchmarks.clients import Outcome, closed_loop
from benchmarks.deployment import calls_between
from benchmarks.ledger import JobEntry
from benchmarks.processes import Meter, rss_mb
from benchmarks.session import IDLE_BACKEND, WORK_BACKEND, Session, Taken, writes
from benchmarks.stats import PhaseResult
from pb.mqc3_cloud.scheduler.v1 import job_pb2


async def metered(meter: Meter, work: Awaitable[PhaseResult]) -> PhaseResult:
    """Run one phase; record the CPU seconds and RSS of every child over it, and the CPU
    milliseconds per operation."""
    before = meter.cpu()
    began = time.perf_counter()
    phase = await work
    if phase.started_at_s is None:
        phase.started_at_s = began
    if not phase.processes:  # unless the phase metered a part of itself
        phase.processes = meter.since(before, time.perf_counter() - began)
    if phase.operations:
        phase.extra["cpu_ms_per_operation"] = {
            name: round(usage["cpu_s"] * 1000 / phase.operations, 3)
            for name, usage in phase.processes.items() if usage["cpu_s"] is not None}
    return phase


async def submit_phase(session: Session, duration_s: float, jobs: int | None) -> PhaseResult:
    """``clients`` concurrent users submitting back to back."""
    phase = PhaseResult("submit", "submit", extra={"clients": session.clients})
    before = await session.metrics.store_calls()
    rss_before = rss_mb(session.target.scheduler_pid)
    await closed_loop(phase, "submit", session.clients, duration_s,
                      lambda client: session.submit("submit", client), limit=jobs)
    phase.store_calls = calls_between(before, await session.metrics.store_calls())
    # Every job submitted here is still queued: what the scheduler process holds for them.
    rss_after = rss_mb(session.target.scheduler_pid)
    phase.extra["scheduler_rss_mb"] = {"before": rss_before, "with_jobs_queued": rss_after}
    if rss_before is not None and rss_after is not None and phase.operations:
        phase.extra["scheduler_rss_bytes_per_queued_job"] = round(
            (rss_after - rss_before) * 1024 * 1024 / phase.operations)
    return phase


async def assign_probe(session: Session, count: int) -> PhaseResult:
    """One node takes ``count`` jobs, then finishes them: store calls per assignment, per report.

    Runs alone (nothing else calls the scheduler), so the store-call counters it reads
    around each step belong to that step.
    """
    phase = PhaseResult("assign_probe", "assign", extra={"jobs": count})
    first = await session.metrics.store_calls()
    taken: list[Taken] = []
    started = time.perf_counter()
    for _ in range(count):
        began = time.perf_counter()
        got = await session.take(0, WORK_BACKEND)
        if got.outcome or not got.job_id:
            phase.errors[got.outcome or "queue_empty"] += 1
            break
        phase.samples("assign").add(got.received_at_s - began)
        taken.append(got)
    phase.duration_s = time.perf_counter() - started  # the rate is of assignments alone
    assigned = await session.metrics.store_calls()
    for got in taken:
        outcome = await session.finish(0, got, phase)
        if outcome:
            phase.errors[outcome] += 1
    reported = await session.metrics.store_calls()
    phase.operations = len(taken)
    per_assignment = calls_between(first, assigned)
    per_report = calls_between(assigned, reported)
    phase.store_calls = per_assignment
    if taken and per_assignment is not None and per_report is not None:
        n = len(taken)
        phase.extra.update({
            "store_calls_per_assignment": {k: v / n for k, v in per_assignment.items()},
            "store_writes_per_assignment": (writes(per_assignment) or 0) / n,
            "store_calls_per_report": {k: v / n for k, v in per_report.items()},
            "store_writes_per_report": (writes(per_report) or 0) / n,
        })
    return phase


async def drain_phase(session: Session, backend: str, timeout_s: float,
                      name: str = "drain") -> PhaseResult:
    """Every node assigns, uploads and reports until the queue answers empty."""
    phase = PhaseResult(name, "cycle", extra={"nodes": session.nodes, "backend": backend})
    before = await session.metrics.store_calls()
    started = time.perf_counter()
    deadline = started + timeout_s

    async def node(index: int) -> None:
        while time.perf_counter() < deadline:
            began = time.perf_counter()
            got = await session.take(index, backend)
            if got.outcome:
                phase.errors[got.outcome] += 1
                await asyncio.sleep(0.01)
                continue
            if not got.job_id:
                return
            phase.samples("assign").add(got.received_at_s - began)
            outcome = await session.finish(index, got, phase)
            if outcome:
                phase.errors[outcome] += 1
                continue
            phase.samples("cycle").add(time.perf_counter() - began)
            phase.operations += 1

    await asyncio.gather(*(node(i) for i in range(session.nodes)))
    phase.duration_s = time.perf_counter() - started
    phase.store_calls = calls_between(before, await session.metrics.store_calls())
    phase.extra["timed_out"] = time.perf_counter() >= deadline
    phase.extra["left_in_queue"] = await session.metrics.gauge("mqc3_queue_depth_jobs", backend)
    if phase.operations:
        phase.extra["store_writes_per_job"] = (writes(phase.store_calls) or 0) / phase.operations
    return phase


async def steady_phase(session: Session, rate: float, duration_s: float, wait_ms: int,
                       name: str = "steady", grace_s: float = 10.0,
                       empty_pause_s: float = 0.0) -> PhaseResult:
    """Submissions at a fixed rate while every node long-polls: dispatch latency.

    Dispatch latency is the time from the submitter's acknowledgement to the node
    receiving the job, both read on this process's clock; it is negative when the
    node had the job before the submitter had its answer. With ``wait_ms`` 0 the nodes
    poll instead, asking again at once or ``empty_pause_s`` after an empty answer.
    """
    phase = PhaseResult(name, "dispatch", extra={
        "target_rate_per_s": rate, "nodes": session.nodes, "wait_ms": wait_ms})
    stop = asyncio.Event()
    received: list[Taken] = []

    async def node(index: int) -> None:
        while not stop.is_set():
            got = await session.take(index, WORK_BACKEND, wait_ms)
            if got.outcome:
                phase.errors[got.outcome] += 1
                await asyncio.sleep(0.01)
            elif got.job_id:
                # Back in the long poll at once: the jobs are finished after the phase,
                # so what is measured is dispatch under the submit load alone (and a
                # node never holds more than one execution call).
                received.append(got)
            elif empty_pause_s:
                await asyncio.sleep(empty_pause_s)

    before = await session.metrics.store_calls()
    pollers = [asyncio.create_task(node(i)) for i in range(session.nodes)]
    await _until(lambda: session.metrics.gauge("mqc3_waiting_nodes", WORK_BACKEND),
                 session.nodes, timeout_s=5.0)
    submit_samples = phase.samples("submit")

    async def submit_one(client: int) -> None:
        began = time.perf_counter()
        outcome = await session.submit(name, client)
        if outcome:
            phase.errors[outcome] += 1
        else:
            submit_samples.add(time.perf_counter() - began)

    total = max(1, round(rate * duration_s))
    started = time.perf_counter()
    lag_s = 0.0
    submissions = []
    for i in range(total):
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        else:
            lag_s = max(lag_s, -delay)
        submissions.append(asyncio.create_task(submit_one(i % session.clients)))
    await asyncio.gather(*submissions)
    window_s = time.perf_counter() - started

    def undelivered() -> int:
        return sum(1 for _, e in session.ledger.of_phase(name) if e.received_at_s is None)

    give_up = time.perf_counter() + grace_s
    while undelivered() and time.perf_counter() < give_up:
        await asyncio.sleep(0.01)
    stop.set()
    for poller in pollers:
        poller.cancel()
    await asyncio.gather(*pollers, return_exceptions=True)
    phase.store_calls = calls_between(before, await session.metrics.store_calls())
    finishing = PhaseResult("steady_finish", "report")  # after the phase: not reported
    await _finish_all(session, received, finishing)
    phase.errors.update(finishing.errors)

    dispatch = phase.samples("dispatch")
    for _, entry in session.ledger.of_phase(name):
        if entry.received_at_s is not None:
            dispatch.add(entry.received_at_s - entry.acknowledged_at_s, at=entry.received_at_s)
    phase.operations = len(dispatch)
    phase.duration_s = window_s
    phase.extra.update({
        "submitted": len(submit_samples),
        "achieved_submit_rate_per_s": round(len(submit_samples) / window_s, 1),
        "max_schedule_lag_ms": round(lag_s * 1000, 3),
        "received_before_acknowledged": sum(1 for v in dispatch.values if v < 0),
        "undelivered_after_grace": undelivered(),
    })
    return phase


async def _finish_all(session: Session, jobs: list[Taken], phase: PhaseResult) -> None:
    """Upload and report ``jobs``, one call at a time per node."""
    pending = iter(jobs)

    async def node(index: int) -> None:
        for got in pending:
            outcome = await session.finish(index, got, phase)
            if outcome:
                phase.errors[outcome] += 1

    await asyncio.gather(*(node(i) for i in range(session.nodes)))


async def _until(read: Callable[[], Awaitable[int | None]], wanted: int,
                 timeout_s: float) -> None:
    """Wait until a gauge reading reaches ``wanted`` (or give up quietly)."""
    give_up = time.perf_counter() + timeout_s
    while time.perf_counter() < give_up:
        value = await read()
        if value is None or value >= wanted:
            return
        await asyncio.sleep(0.01)


StatusJobs = list[tuple[str, JobEntry, int]]  # job id, its entry, the status it must have


async def status_slices(session: Session, live_jobs: int,
                        finished_sample: int = 2000) -> list[tuple[str, StatusJobs]]:
    """Queues ``live_jobs`` on the idle backend; returns the jobs each status phase polls:
    a mix of live and finished jobs, then each kind alone."""
    await session.queue_jobs("status-live", live_jobs, IDLE_BACKEND)
    live = [(job_id, e, int(job_pb2.JOB_STATUS_QUEUED))
            for job_id, e in session.ledger.of_phase("status-live")]
    finished = [(job_id, e, int(job_pb2.JOB_STATUS_COMPLETED))
                for job_id, e in session.ledger.jobs.items() if e.reported][:finished_sample]
    mixed = live or finished
    if live and finished:  # alternate: half the calls ask about live jobs
        n = max(len(live), len(finished))
        mixed = [job for i in range(n) for job in (live[i % len(live)],
                                                   finished[i % len(finished)])]
    slices = [("status", mixed), ("status_live", live), ("status_finished", finished)]
    return [(name, jobs) for name, jobs in slices if jobs]


async def poll_status(session: Session, name: str, jobs: StatusJobs,
                      duration_s: float) -> PhaseResult:
    phase = PhaseResult(name, "status", extra={"clients": session.clients, "jobs": len(jobs)})
    counters = [itertools.count(i * 7919) for i in range(session.clients)]

    async def poll(client: int) -> Outcome:
        job_id, _, expected = jobs[next(counters[client]) % len(jobs)]
        return await session.status(client, job_id, expected)

    before = await session.metrics.store_calls()
    await closed_loop(phase, "status", session.clients, duration_s, poll)
    phase.store_calls = calls_between(before, await session.metrics.store_calls())
    if phase.operations and phase.store_calls is not None:
        polls = _without_probes(phase.store_calls)
        phase.extra["store_calls_per_status"] = round(sum(polls.values()) / phase.operations, 4)
    return phase


# The health's store probe (scheduler/wiring/app.py, probe_stores) runs when the stores were idle
# for 5 s, as they are while only polls come: a get, a transition, a program put and its
# delete, on a job id never issued. The polls make no put, so each put is a probe's.
_PROBE = ("jobs.get", "jobs.transition", "payloads.put_input", "payloads.delete_input")


def _without_probes(calls: dict[str, int]) -> dict[str, int]:
    probes = calls.get("payloads.put_input", 0)
    left = {op: n - (probes if op in _PROBE else 0) for op, n in calls.items()}
    return {op: n for op, n in left.items() if n}

"""The ``lifecycle`` measure: what a job's whole life costs the scheduler.

A life is what the SDK and a node do for one job: SubmitJob, five GetJobStatus while
it waits, AssignNextJob, the result's upload, ReportExecutionResult, five GetJobStatus
once it is done, GetJobResult. First a few lives one at a time, each call's store
requests counted apart (the per-call budget); then ``jobs`` lives, several at once,
and the scheduler's CPU seconds over them divided by their number (the runner meters
every phase; see ``PhaseResult.processes``). docs/request-budget.md explains the
figures.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from benchmarks.clients import RPC_TIMEOUT_S, Outcome
from benchmarks.session import WORK_BACKEND, Session
from benchmarks.stats import PhaseResult
from benchmarks.store_requests import RequestRecorder, count, per_job, units_per_job
from pb.mqc3_cloud.scheduler.v1 import job_pb2

POLLS_WAITING = 5
POLLS_DONE = 5
SETTLE_S = 0.05  # counting a life's steps apart: the wait after each step
COMPLETED = int(job_pb2.JOB_STATUS_COMPLETED)
STEPS = ("submit", "status_waiting", "assign", "upload_and_report", "status_done", "result")


class LifeFailed(RuntimeError):
    """A call of a life failed; its outcome is the message."""


class Life:
    """One worker's lives: ``client``'s channel for the user, ``node``'s for the node."""

    def __init__(self, session: Session, phase: PhaseResult, client: int, node: int,
                 reported: defaultdict[str, asyncio.Event]) -> None:
        self.session = session
        self.phase = phase
        self.client = client
        self.node = node
        self.reported = reported  # set when any worker has reported the job

    async def live(self, between: Callable[[str], Awaitable[None]] | None = None) -> None:
        """One whole life; ``between(step)`` is awaited before each step."""
        between = between or _nothing
        began = time.perf_counter()
        await between("submit")
        outcome, job_id = await self.session.submit_job("lifecycle", self.client)
        self._record("submit", began, outcome)
        await between("status_waiting")
        for _ in range(POLLS_WAITING):
            await self._timed("status", self.session.status(self.client, job_id))
        await between("assign")
        # Our own job is queued, so the queue is not empty; the job we get may be
        # another worker's, and ours may go to another worker: every taken job is
        # finished by the worker that took it.
        asked = time.perf_counter()
        taken = await self.session.take(self.node, WORK_BACKEND)
        self._record("assign", asked, taken.outcome or ("" if taken.job_id else "queue_empty"))
        await between("upload_and_report")
        outcome = await self.session.finish(self.node, taken, self.phase)
        if outcome:
            raise LifeFailed(outcome)
        self.reported[taken.job_id].set()
        await self._reported(job_id)
        await between("status_done")
        for _ in range(POLLS_DONE):
            await self._timed("status", self.session.status(self.client, job_id, COMPLETED))
        await between("result")
        await self._timed("result", self.session.result(self.client, job_id))
        self.phase.samples("life").add(time.perf_counter() - began)
        self.phase.operations += 1

    async def _reported(self, job_id: str) -> None:
        """Until the worker that took our job has reported it; a worker whose life failed
        never will, so the wait is bounded like a call."""
        try:
            await asyncio.wait_for(self.reported[job_id].wait(), RPC_TIMEOUT_S)
        except TimeoutError:
            raise LifeFailed("never_reported") from None

    async def _timed(self, kind: str, call: Awaitable[Outcome]) -> None:
        began = time.perf_counter()
        self._record(kind, began, await call)

    def _record(self, kind: str, began: float, outcome: Outcome) -> None:
        if outcome:
            raise LifeFailed(outcome)
        self.phase.samples(kind).add(time.perf_counter() - began)


async def _nothing(step: str) -> None:
    pass


Reading = Callable[[], Awaitable[dict[str, int] | None]]  # store calls so far, by operation
# Recorded requests → by who made them, then by operation (store_requests.count).
RequestCounter = Callable[[list[dict[str, Any]]], dict[str, dict[str, int]]]


async def lifecycle_phase(session: Session, jobs: int, concurrency: int,
                          recorder: RequestRecorder | None = None,
                          budget_lives: int = 10, counter: RequestCounter = count) -> PhaseResult:
    """``jobs`` whole lives, ``concurrency`` at a time; first ``budget_lives`` lives one
    at a time, each step's store calls counted apart. With a recorder (AWS mode) the
    store requests are counted by moto, from outside, also over the whole measure;
    without one, by the scheduler's own /metrics. ``counter`` sorts recorded requests by
    who made them; the scheduler under test's are under ``scheduler``."""
    phase = PhaseResult("lifecycle", "life", extra={"jobs": jobs, "concurrency": concurrency})
    reported: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
    if budget_lives:
        life = Life(session, PhaseResult("lifecycle_budget", "life"), 0, 0, reported)
        if recorder is not None:
            await recorder.start()
            read: Reading = _recorded(recorder, counter)
        else:
            read = session.metrics.store_calls
        phase.extra["store_requests_per_step"] = await _per_step(life, read, budget_lives)
        phase.extra["store_requests_counted_by"] = (
            "moto's request recorder" if recorder is not None else "the scheduler's /metrics")
    if recorder is not None:
        # The model's counts first: a call made while recording would be recorded.
        await recorder.usage(reset=True)
        await recorder.start()
    lives = [Life(session, phase, i % session.clients, i % session.nodes, reported)
             for i in range(concurrency)]
    remaining = iter(range(jobs))

    async def worker(life: Life) -> None:
        for _ in remaining:
            try:
                await life.live()
            except LifeFailed as failed:
                phase.errors[str(failed)] += 1
                return

    started = phase.started_at_s = time.perf_counter()
    await asyncio.gather(*(worker(life) for life in lives))
    phase.duration_s = time.perf_counter() - started
    if phase.errors:  # a failed life may leave its job queued: no job is left behind
        phase.extra["left_behind_and_finished"] = await session.finish_left_behind(
            WORK_BACKEND, phase)
    if recorder is not None:
        await recorder.stop()
        counts = counter(recorder.since(0))
        phase.extra["store_requests"] = counts
        usage = await recorder.usage()
        if phase.operations:
            phase.extra["store_requests_per_job"] = per_job(counts, phase.operations)
            if usage is not None:
                phase.extra["capacity_units_per_job"] = units_per_job(usage, phase.operations)
    return phase


def _recorded(recorder: RequestRecorder, counter: RequestCounter) -> Reading:
    async def read() -> dict[str, int] | None:
        return counter(recorder.since(0)).get("scheduler", {})
    return read


async def _per_step(life: Life, read: Reading, lives: int) -> dict[str, dict[str, float]]:
    """Lives one at a time; the store calls made during each step, per life."""
    steps: dict[str, Counter[str]] = {step: Counter() for step in STEPS}
    open_step: list[tuple[str, dict[str, int] | None]] = []

    async def close_step() -> None:
        if open_step:
            # A write the scheduler makes just after answering (the result's seal after
            # a report) belongs to the step that caused it.
            await asyncio.sleep(SETTLE_S)
            step, before = open_step.pop()
            after = await read()
            if before is not None and after is not None:
                steps[step].update({k: n - before.get(k, 0) for k, n in after.items()
                                    if n > before.get(k, 0)})

    async def between(step: str) -> None:
        await close_step()
        open_step.append((step, await read()))

    for _ in range(lives):
        await life.live(between)
        await close_step()
    return {step: {op: round(n / lives, 3) for op, n in sorted(ops.items())}
            for step, ops in steps.items()}

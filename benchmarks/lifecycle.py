"""The ``lifecycle`` measure: what a job's whole life costs the scheduler.

A life is what the SDK and a node do for one job: SubmitJob, five GetJobStatus while
it waits, AssignNextJob, the result's upload, ReportExecutionResult, five GetJobStatus
once it is done, GetJobResult. First a few lives one at a time, each call's store
requests counted apart (AWS mode: the per-call budget); then ``jobs`` lives, several at
once, and the scheduler's CPU seconds over them divided by their number (the runner
meters every phase; see ``PhaseResult.processes``). docs/request-budget.md explains
the figures.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

from benchmarks.clients import Outcome
from benchmarks.session import WORK_BACKEND, Session
from benchmarks.stats import PhaseResult
from benchmarks.store_requests import RequestRecorder, count, per_job
from pb.mqc3_cloud.scheduler.v1 import job_pb2

POLLS_WAITING = 5
POLLS_DONE = 5
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

    async def live(self, between: Callable[[str], None] = lambda step: None) -> None:
        """One whole life; ``between(step)`` is called before each step."""
        began = time.perf_counter()
        between("submit")
        outcome, job_id = await self.session.submit_job("lifecycle", self.client)
        self._record("submit", began, outcome)
        between("status_waiting")
        for _ in range(POLLS_WAITING):
            await self._timed("status", self.session.status(self.client, job_id))
        between("assign")
        # Our own job is queued, so the queue is not empty; the job we get may be
        # another worker's, and ours may go to another worker: every taken job is
        # finished by the worker that took it.
        asked = time.perf_counter()
        taken = await self.session.take(self.node, WORK_BACKEND)
        self._record("assign", asked, taken.outcome or ("" if taken.job_id else "queue_empty"))
        between("upload_and_report")
        outcome = await self.session.finish(self.node, taken, self.phase)
        if outcome:
            raise LifeFailed(outcome)
        self.reported[taken.job_id].set()
        await self.reported[job_id].wait()
        between("status_done")
        for _ in range(POLLS_DONE):
            await self._timed("status", self.session.status(self.client, job_id, COMPLETED))
        between("result")
        await self._timed("result", self.session.result(self.client, job_id))
        self.phase.samples("life").add(time.perf_counter() - began)
        self.phase.operations += 1

    async def _timed(self, kind: str, call: Awaitable[Outcome]) -> None:
        began = time.perf_counter()
        self._record(kind, began, await call)

    def _record(self, kind: str, began: float, outcome: Outcome) -> None:
        if outcome:
            raise LifeFailed(outcome)
        self.phase.samples(kind).add(time.perf_counter() - began)


async def lifecycle_phase(session: Session, jobs: int, concurrency: int,
                          recorder: RequestRecorder | None = None,
                          budget_lives: int = 10) -> PhaseResult:
    """``jobs`` whole lives, ``concurrency`` at a time; with a recorder (AWS mode), the
    store requests of the whole run and, from ``budget_lives`` lives run alone first, of
    each step."""
    phase = PhaseResult("lifecycle", "life", extra={"jobs": jobs, "concurrency": concurrency})
    reported: defaultdict[str, asyncio.Event] = defaultdict(asyncio.Event)
    if recorder is not None and budget_lives:
        budget = PhaseResult("lifecycle_budget", "life")
        phase.extra["store_requests_per_step"] = await _per_step(
            Life(session, budget, 0, 0, reported), recorder, budget_lives)
    if recorder is not None:
        await recorder.start()
    mark = recorder.mark() if recorder is not None else 0
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
    if recorder is not None:
        await recorder.stop()
        counts = count(recorder.since(mark))
        phase.extra["store_requests"] = counts
        if phase.operations:
            phase.extra["store_requests_per_job"] = per_job(counts, phase.operations)
    return phase


async def _per_step(life: Life, recorder: RequestRecorder, lives: int) -> dict[str, object]:
    """Lives one at a time; the scheduler's store requests seen during each step, per life."""
    await recorder.start()
    steps: dict[str, dict[str, int]] = {step: {} for step in STEPS}
    current: list[tuple[str, int]] = []

    def between(step: str) -> None:
        close_step()
        current.append((step, recorder.mark()))

    def close_step() -> None:
        if current:
            step, mark = current.pop()
            for operation, n in count(recorder.since(mark)).get("scheduler", {}).items():
                steps[step][operation] = steps[step].get(operation, 0) + n

    for _ in range(lives):
        await life.live(between)
        await asyncio.sleep(0.05)  # a write the scheduler makes after answering lands here
        close_step()
    await recorder.stop()
    return {step: {op: round(n / lives, 3) for op, n in sorted(ops.items())}
            for step, ops in steps.items()}

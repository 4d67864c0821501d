"""Hand-over and reports: the next job to a node, given back when it never arrived, and
what the node reports at the end.

A job is claimed from its queue, then marked RUNNING with a compare-and-set; a store
failure puts it back in its place (docs/job-rules.md, rules 2 and 3). A node whose call
ended before it received the job gets nothing, and the job is given back to the head of
its queue. A report is accepted from the node that holds the job's current hand-over
only, and a SUCCESS only once its result exists (rules 6 and 10).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import fields, replace
from datetime import datetime

from common.identity import Principal
from job_manager.model import BackendTimestamps, JobRecord, JobStatus
from job_manager.phases.core import JobCore, seconds, store_failed
from job_manager.phases.inputs import Assignment, ExecutionReport
from job_manager.phases.liveness import Liveness, check_hand_over, check_node
from job_manager.phases.recovery import MISSING_PROGRAM
from job_manager.queue import QueuedJob
from job_manager.stores import RecordTooNew, SignedUrl, StoreError
from message_manager import SchedulerError

log = logging.getLogger(__name__)

BUDGET_RETRY_S = 5.0  # a budget's use the store could not give is asked for again after this

# What a user reads when the node said nothing: a completed job needs no words (the
# original answers it empty); a failure or a timeout without a reason gets one.
_OUTCOME_DETAIL = {
    JobStatus.COMPLETED: "",
    JobStatus.FAILED: "the backend reported a failure",
    JobStatus.TIMEOUT: "the backend reported that the job timed out",
}


class HandOver:
    """Hands jobs to nodes and records what they report."""

    def __init__(self, core: JobCore, liveness: Liveness) -> None:
        self._core = core
        self._ledger = core.ledger
        self._liveness = liveness

    # --- the next job -----------------------------------------------------------------------
    async def assign(self, backend: str, wait_s: float = 0.0,
                     node: str = "") -> Assignment | None:
        """Hand the next job for ``backend`` to a node, or None when there is none.

        With ``wait_s`` the node is parked until a job arrives or the time is up.
        ``node``: the caller's identity, when it named one (docs/nodes.md); only that
        node may then report the job, renew its upload URL or beat for it.
        """
        if self._ledger.queue(backend) is None:
            raise SchedulerError(
                "backend_unknown", backend=backend, known=", ".join(self._core.backends.known())
            )
        self._liveness.polled(backend)
        clock = self._core.clock
        deadline_s = clock.monotonic() + wait_s
        while True:
            while (job := self._claim_next(backend)) is not None:
                if (assignment := await self._hand_over(job, node)) is not None:
                    return assignment
            with self._liveness.waiting(backend):
                woken = await self._ledger.wait_for_job(backend, deadline_s - clock.monotonic())
            if not woken:
                return None

    def _claim_next(self, backend: str) -> QueuedJob | None:
        """The next job for ``backend`` among those who may go now (job_manager/turns.py);
        owners whose budget use is not counted yet are counted in the background, then
        looked at again. Taken after the claim: the gate finds them while the queue asks it."""
        turns = self._core.turns
        job = self._ledger.claim_next(backend, turns.gate(backend, self._core.clock.now()))
        for owner in turns.take_uncounted():
            self._core.in_background(self._count_budget(owner))
        return job

    async def _count_budget(self, owner: Principal) -> None:
        """Count an owner's budget use from the store; their jobs wait until it is counted
        (tried again BUDGET_RETRY_S after a failure, never in a loop of wake-ups)."""
        turns = self._core.turns
        try:
            await turns.budgets.left(owner, self._core.clock.now())
        except (StoreError, SchedulerError) as exc:
            log.warning("budget use of %s not counted, tried again in %g s: %s",
                        owner.log_name, BUDGET_RETRY_S, exc)
            await asyncio.sleep(BUDGET_RETRY_S)
            turns.counted(owner)
            return
        turns.counted(owner)
        self._ledger.wake_all()

    async def _hand_over(self, job: QueuedJob, node: str) -> Assignment | None:
        """Mark ``job`` RUNNING for the calling node; if the node leaves meanwhile, undo it."""
        caller_left = asyncio.Event()

        async def start() -> Assignment | None:
            assignment = await self._start(job, node)
            if assignment is not None and caller_left.is_set():
                await self._give_back(assignment)  # the node never received it
                return None
            return assignment

        handover = self._core.change(job.job_id, start())
        try:
            return await asyncio.shield(handover)
        except asyncio.CancelledError:
            caller_left.set()
            if handover.done() and not handover.cancelled() and handover.exception() is None:
                if (given := handover.result()) is not None:
                    self.give_back(given)  # made RUNNING just as the node left
            raise

    async def _start(self, job: QueuedJob, node: str) -> Assignment | None:
        core = self._core
        if job.program is None and not await self._load_program(job):
            return None
        running = replace(job.record, status=JobStatus.RUNNING, dequeued_at=core.clock.now(),
                          node_identity=node)
        try:
            changed = await core.transition(job.record, running)
        except RecordTooNew as exc:  # a newer scheduler's now: left to it; the next job goes
            log.warning("job %s not handed over: %s", job.job_id, exc)
            self._ledger.drop_claim(job)
            self._ledger.forget(job.job_id)  # read from the store from now on, read-only
            return None
        except StoreError as exc:
            self._ledger.put_back(job)
            raise store_failed(f"job {job.job_id} not handed over (it stays queued)",
                               exc) from None
        if not changed:
            self._ledger.drop_claim(job)
            await core.believe_store(job.job_id)
            return None
        self._ledger.handed_over(job, running)
        core.turns.budgets.handed_over(running)
        if core.turns.sessions.open_of(running.owner_fingerprint, running.backend) is not None:
            core.in_background(self._session_begins(running))
        core.observer.handed_over(running)
        log.info(
            "job %s RUNNING backend=%s user=%s node=%s waited_s=%.3f",
            job.job_id,
            running.backend,
            running.owner_label,
            node or "-",
            seconds(running.queued_at, running.dequeued_at),
        )
        return Assignment(record=running, upload=core.upload_url(running), queued=job)

    async def _load_program(self, job: QueuedJob) -> bool:
        """Read a claimed recovered job's program before its hand-over; a job whose
        program is gone FAILS."""
        try:
            job.give_program(await self._core.payloads.get_input(job.job_id))
        except StoreError as exc:
            self._ledger.put_back(job)
            raise store_failed(f"job {job.job_id} not handed over (it stays queued)",
                               exc) from None
        if job.program is None:
            await self._core.fail_claimed(job, MISSING_PROGRAM)
        return job.program is not None

    async def _session_begins(self, running: JobRecord) -> None:
        """The owner's open session on the backend holds it from its first hand-over on."""
        try:
            await self._core.turns.sessions.handed_over(running.owner_fingerprint,
                                                        running.backend)
        except (StoreError, SchedulerError) as exc:
            log.warning("session of %s on %s not marked begun: %s", running.owner_label,
                        running.backend, exc)

    # --- given back ---------------------------------------------------------------------------
    def give_back(self, assignment: Assignment) -> None:
        """The node's call ended before it received ``assignment``: the job is queued again.
        Told twice (the call's end is seen two ways), the job is given back once."""
        self._core.in_background(self._give_back_in_turn(assignment))

    async def _give_back_in_turn(self, assignment: Assignment) -> None:
        job_id = assignment.record.job_id
        await self._core.settled(job_id)  # a give-back (or report) under way: its outcome decides
        if self._ledger.live(job_id) is assignment.record:
            await asyncio.shield(self._core.change(job_id, self._give_back(assignment)))

    async def _give_back(self, assignment: Assignment) -> None:
        """Back to its place at the head of its queue, as if never taken; no timeout, no quota."""
        core = self._core
        running = assignment.record
        if self._ledger.live(running.job_id) is not running:
            return  # reported or timed out meanwhile: the node did have it
        queued = replace(running, status=JobStatus.QUEUED, dequeued_at=None, node_identity="")
        try:
            changed = await core.transition(running, queued)
        except StoreError as exc:
            # It stays RUNNING and watched, and ends TIMEOUT as any silent node's job.
            log.error("job %s was not received by its node and could not be given back: %s",
                      running.job_id, exc)
            return
        if not changed:
            await core.believe_store(running.job_id)
            return
        job = assignment.queued
        self._ledger.given_back(job, queued)
        core.turns.budgets.given_back(running)
        core.observer.given_back(queued)
        log.warning("job %s given back: its node's call ended before it received the job",
                    job.job_id)

    # --- reports --------------------------------------------------------------------------------
    async def report(self, report: ExecutionReport, node: str = "") -> JobRecord:
        """Record a node's report; the same report twice is answered the same way.

        A report is one of the changes of a running job (docs/job-rules.md, rule 2): it
        waits for a change under way (a requeue, a timeout, another report) and then looks
        again, so two changes never race each other to the store.
        """
        core = self._core
        while True:
            await core.settled(report.job_id)
            record = await self._reported(report, node)
            if not self._changed_since(record):
                break
        if record.status.is_final:
            return record  # the same report again: answered as before, nothing written
        return await asyncio.shield(core.change(report.job_id, self._record(record, report)))

    async def _reported(self, report: ExecutionReport, node: str) -> JobRecord:
        """The running job ``report`` may change; the answer itself when it changes nothing."""
        record = await self._core.find_for_node(report.job_id)
        check_node(record, node)
        if record.status is not JobStatus.QUEUED:
            _check_report_hand_over(record, report)
        if record.status.is_final:
            if record.status is report.outcome:
                return record
            raise SchedulerError(
                "report_conflict",
                job_id=report.job_id,
                status=record.status.value,
                reported=report.outcome.value,
            )
        if record.status is JobStatus.QUEUED and record.requeues:
            raise SchedulerError("report_of_earlier_hand_over", job_id=report.job_id,
                                 detail=record.status_detail)
        if record.status is not JobStatus.RUNNING:
            raise SchedulerError(
                "job_not_running", job_id=report.job_id, status=record.status.value
            )
        if report.outcome is JobStatus.COMPLETED and not await self._result_uploaded(record):
            raise SchedulerError("result_missing", job_id=report.job_id)
        return record

    def _changed_since(self, record: JobRecord) -> bool:
        """Whether the job running here changed, or began to, since ``record`` was read.
        (A job memory holds QUEUED was read from the store: another process runs it.)"""
        live = self._ledger.live(record.job_id)
        return self._core.changing(record.job_id) or (
            live is not None and live.status is JobStatus.RUNNING and live is not record)

    async def _record(self, record: JobRecord, report: ExecutionReport) -> JobRecord:
        core = self._core
        if report.infrastructure and record.requeues < core.max_requeues:
            why = f"its backend failed it for a reason of its own ({report.detail or 'unstated'})"
            requeued = await self._liveness.requeue(record, why)
            if requeued is not None:
                return requeued
        if report.outcome is JobStatus.COMPLETED:
            await self._promote_result(record)
        now = core.clock.now()
        timestamps, clamped = _within_run(report.timestamps, record.dequeued_at, now)
        if clamped:
            core.observer.timestamps_clamped(record, clamped)
            log.warning("job %s: %d of its node's timestamps lay outside its run; clamped",
                        record.job_id, clamped)
        finished = replace(
            record,
            status=report.outcome,
            status_detail=report.detail or _OUTCOME_DETAIL[report.outcome],
            finished_at=now,
            backend_timestamps=timestamps,
            actual_backend=report.actual_backend,
            physical_lab_version=report.physical_lab_version,
            simulator_version=report.simulator_version,
            result_raw_size_bytes=report.raw_size_bytes,
            result_encoded_size_bytes=report.encoded_size_bytes,
        )
        return await core.finish(record, finished)

    async def _promote_result(self, running: JobRecord) -> None:
        """With a key per hand-over, this hand-over's upload becomes the final result before
        the job is COMPLETED: a crash after it leaves the job RUNNING, and the node's
        retried report finds the final result promoted from its hand-over and completes it."""
        handover = self._core.result_handover(running)
        if handover is None:
            return  # uploaded to the final key itself, as the original's nodes do
        try:
            promoted = await self._core.payloads.promote_result(running.job_id, handover)
        except StoreError as exc:
            raise store_failed(f"result of job {running.job_id} could not be kept",
                               exc) from None
        if not promoted:  # gone since the report was checked (housekeeping, an operator)
            raise SchedulerError("result_missing", job_id=running.job_id)

    async def _result_uploaded(self, record: JobRecord) -> bool:
        try:
            return await self._core.payloads.result_exists(
                record.job_id, self._core.result_handover(record))
        except StoreError as exc:
            raise store_failed(f"result of job {record.job_id} could not be checked",
                               exc) from None

    # --- uploads ----------------------------------------------------------------------------------
    def accepts_result(self, job_id: str, handover: int | None = None) -> bool:
        """Whether a node may upload the job's result now to the key of ``handover`` (None:
        the final key): only while the job is RUNNING here, in that hand-over."""
        record = self._ledger.live(job_id)
        return (record is not None and record.status is JobStatus.RUNNING
                and handover == self._core.result_handover(record))

    async def refresh_upload_url(self, job_id: str, node: str = "",
                                 handover: int | None = None) -> SignedUrl:
        """A new upload URL for a job that is still RUNNING, for its current hand-over."""
        record = await self._core.find_for_node(job_id)
        check_node(record, node)
        if record.status is not JobStatus.RUNNING:
            raise SchedulerError("job_not_running", job_id=job_id, status=record.status.value)
        check_hand_over(record, handover)
        return self._core.upload_url(record)


def _check_report_hand_over(record: JobRecord, report: ExecutionReport) -> None:
    """A report of an earlier hand-over changes nothing (docs/job-rules.md, rule 19): one that
    names another hand-over than the job's, or, naming none, of a job queued again since,
    whose node's run began before the current hand-over existed. A report with neither is
    accepted, as the original accepts it."""
    if report.handover is not None:
        stale = report.handover != record.requeues
        why = f"this report names hand-over {report.handover}, the job's is {record.requeues}"
    else:
        began = [t for t in (report.timestamps.compile_started_at,
                             report.timestamps.execution_started_at) if t is not None]
        stale = bool(record.requeues and record.dequeued_at is not None and began
                     and min(began) < record.dequeued_at)
        why = "the reported run began before the job's current hand-over"
    if stale:
        raise SchedulerError("report_of_earlier_hand_over", job_id=record.job_id,
                             detail=f"handed over again since: {why}")


def _within_run(stamps: BackendTimestamps, dequeued_at: datetime | None,
                now: datetime) -> tuple[BackendTimestamps, int]:
    """A node's timestamps clamped into the job's run (its hand-over to now), so a user
    never sees a negative duration; and how many had to be."""
    clamped = 0
    within = {}
    for name in (stamp.name for stamp in fields(BackendTimestamps)):
        value = getattr(stamps, name)
        if value is not None:
            bounded = min(max(value, dequeued_at or value), now)
            clamped += bounded != value
            value = bounded
        within[name] = value
    return (replace(stamps, **within) if clamped else stamps), clamped

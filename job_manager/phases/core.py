"""The core every phase of a job's life shares: claim, compare-and-set, undo.

Memory (the ledger, job_manager/ledger.py) is touched only from the event loop, so it
needs no locks; store calls are awaited without holding anything other requests wait
on. Each change of a job is claimed in memory first (a job taken out of its queue cannot
be taken twice), then made durable by a compare-and-set in the JobStore
(:meth:`JobCore.transition`), in a task no caller can cancel (:meth:`JobCore.change`);
when the store fails, the claim is undone, and when the store disagrees, memory
believes it (:meth:`JobCore.believe_store`). docs/job-rules.md lists the rules and the
verbs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Coroutine
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from backend_manager import BackendTable, RoleStatus, ServiceStatus
from common import audit
from common.caller import looking_as
from common.clock import Clock, spoken_time
from common.identity import Principal
from job_manager.ledger import Ledger
from job_manager.model import JobRecord, JobStatus, is_job_id
from job_manager.observer import JobObserver
from job_manager.queue import QueuedJob
from job_manager.stores import (
    Deposed,
    Fence,
    InputsBesideRecords,
    JobStore,
    ObjectTags,
    PayloadStore,
    RecordTooNew,
    RecordUnreadable,
    SignedUrl,
    StoreError,
)
from job_manager.turns import Turns
from message_manager import SchedulerError

log = logging.getLogger(__name__)

T = TypeVar("T")

UPLOAD_URL_LIFETIME = timedelta(hours=3)
READ_AGAIN_S = 1.0  # how often a job whose store read failed is read again


class JobCore:
    """What the phases share: the stores, the ledger, the backends, and a job's changes."""

    def __init__(self, *, store: JobStore, payloads: PayloadStore, ledger: Ledger,
                 clock: Clock, observer: JobObserver, fence: Fence | None,
                 max_requeues: int, turns: Turns) -> None:
        self.store = store
        self.payloads = payloads
        # Standalone keeps programs beside the records: a job's program and record are one
        # write, and a batch of programs one read (docs/design.md, "Standalone storage").
        self.beside_records = payloads if isinstance(payloads, InputsBesideRecords) else None
        self.ledger = ledger
        self.clock = clock
        self.observer = observer
        # Among replicas, every write is conditional on the fence of this manager's term
        # (job_manager/stores/fence.py); a follower's manager has one that never holds.
        self.fence = fence
        self.max_requeues = max_requeues  # a lost node's job queued again at most this often
        self.turns = turns  # bookings, sessions and budgets: who may go when
        self._backends = BackendTable()
        self._closed = False  # shut down: its term is over (scheduler/replication/replicas.py)
        self._background: set[asyncio.Task[None]] = set()  # work no caller waits for

    @property
    def leads(self) -> bool:
        """Whether this manager serves a term (standalone's, or a leader's) and so sees the
        nodes; a follower's is fenced at epoch 0, which no lease has (docs/replicas.md)."""
        return self.fence is None or self.fence.epoch > 0

    @property
    def backends(self) -> BackendTable:
        """The backends known now, with their status per role."""
        return self._backends

    def use_backends(self, table: BackendTable) -> None:
        """Take a new backend table: new backends get a queue; removed ones keep theirs."""
        self._backends = table
        for backend in table.known():
            self.ledger.open_queue(backend)

    def close(self) -> None:
        """The term is over: waiting nodes get an empty answer, reads in the background stop."""
        self.ledger.stop_waiting()
        self._closed = True

    # --- a change -------------------------------------------------------------------------
    async def transition(self, current: JobRecord, changed: JobRecord) -> bool:
        """The compare-and-set: ``changed`` is stored only if the store still holds the
        job at ``current``'s status; whether it was."""
        return await self.store.transition(current, changed, self.fence)

    def change(self, job_id: str, work: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a claimed job's store change to its end, in a task no caller can cancel.

        From this call on (synchronously, so no other call slips in between the claim
        and the change), other calls about the job wait for it (:meth:`settled`) instead
        of answering from a view of the job that is about to change.
        """
        settled = self.ledger.begin_change(job_id)

        async def run() -> T:
            try:
                return await work
            finally:
                self.ledger.end_change(job_id, settled)

        return asyncio.ensure_future(run())

    async def settled(self, job_id: str) -> None:
        """Wait until no change of the job is under way."""
        while (under_way := self.ledger.change_of(job_id)) is not None:
            await asyncio.shield(under_way)

    def changing(self, job_id: str) -> bool:
        """Whether a change of the job is under way."""
        return self.ledger.change_of(job_id) is not None

    async def finish(self, running: JobRecord, finished: JobRecord) -> JobRecord:
        """A RUNNING job reaches its final status (a report, a timeout)."""
        try:
            changed = await self.transition(running, finished)
        except StoreError as exc:
            raise store_failed(f"report for job {finished.job_id} not recorded", exc) from None
        if not changed:
            stored = await self.believe_store(finished.job_id)
            if stored is not None and stored.status is finished.status:
                return stored
            status = stored.status.value if stored else "missing"
            raise SchedulerError(
                "report_conflict",
                job_id=finished.job_id,
                status=status,
                reported=finished.status.value,
            )
        self.finished(finished)
        if finished.status is JobStatus.COMPLETED:
            # After the answer: the tags are for the bucket's rules, and a failure to set
            # them never changed the answer (the node waits one store call less).
            self.in_background(self._seal_result(finished))
        return finished

    def finished(self, record: JobRecord) -> None:
        """A job reached a final status in the store: memory, metrics and log follow."""
        self.ledger.finished(record)
        self.turns.budgets.finished(record)
        self.observer.finished(record)
        self._discard_lost_results(record)
        log.info(
            "job %s %s backend=%s user=%s node=%s total_s=%.3f",
            record.job_id,
            record.status.value,
            record.backend,
            record.owner_label,
            record.node_identity or "-",
            seconds(record.submitted_at, record.finished_at),
        )

    async def fail_unrecoverable(self, record: JobRecord, why: str) -> JobRecord | None:
        """A queued job that can never run FAILS; the failed record, or None if it was no
        longer QUEUED."""
        failed = replace(record, status=JobStatus.FAILED, status_detail=why,
                          finished_at=self.clock.now())
        if not await self.transition(record, failed):
            return None
        log.warning("job %s FAILED: %s", record.job_id, why)
        return failed

    async def fail_claimed(self, job: QueuedJob, why: str) -> None:
        """A claimed job that can never run FAILS; when the store fails, it goes back."""
        try:
            failed = await self.fail_unrecoverable(job.record, why)
        except StoreError as exc:
            self.ledger.put_back(job)
            raise store_failed(f"job {job.job_id} could not be failed (it stays queued)",
                               exc) from None
        self.ledger.drop_claim(job)
        if failed is not None:
            self.finished(failed)
        else:
            await self.believe_store(job.job_id)

    # --- results ----------------------------------------------------------------------------
    def result_handover(self, record: JobRecord) -> int | None:
        """Which hand-over's own key the job's node uploads to: none while jobs are never
        queued again (the original's one key), else the current hand-over's, so that no
        URL lets a lost node write the final result (docs/protocol.md)."""
        return record.requeues if self.max_requeues else None

    def upload_url(self, running: JobRecord) -> SignedUrl:
        """Where the node of a running job uploads its result, for its current hand-over."""
        return self.payloads.upload_url(running.job_id, UPLOAD_URL_LIFETIME,
                                        self.result_handover(running))

    def _discard_lost_results(self, record: JobRecord) -> None:
        """Once a job ends, remove what its lost hand-overs uploaded to their own keys, and
        an ended hand-over's own upload that did not become the result (best effort: the
        bucket's rules or housekeeping take stragglers; docs/protocol.md)."""
        if not self.max_requeues:
            return
        handovers = [n for n in range(record.requeues + 1)
                     if n < record.requeues or (record.dequeued_at is not None
                                                and record.status is not JobStatus.COMPLETED)]
        if handovers:
            self.in_background(self._discard_results(record.job_id, handovers))

    async def _discard_results(self, job_id: str, handovers: list[int]) -> None:
        try:
            await self.payloads.discard_results(job_id, handovers)
        except StoreError as exc:
            log.warning("uploads of job %s's lost hand-overs left behind: %s", job_id, exc)

    async def _seal_result(self, record: JobRecord) -> None:
        try:
            await self.payloads.seal_result(record.job_id, object_tags(record))
        except StoreError as exc:  # the job is COMPLETED either way; only its tags are late
            log.warning("result of job %s could not be tagged complete: %s", record.job_id, exc)

    async def forget_input(self, job_id: str) -> None:
        """Delete the program of a job that was never accepted (best effort)."""
        try:
            await self.payloads.delete_input(job_id)
        except StoreError as exc:
            log.warning("input of unaccepted job %s left behind: %s", job_id, exc)

    # --- backends -----------------------------------------------------------------------------
    def check_known(self, backend: str) -> None:
        """Refuse a backend this scheduler does not know."""
        if not backend:
            raise SchedulerError("backend_missing", known=", ".join(self.backends.known()))
        if not self.backends.is_known(backend):
            raise SchedulerError(
                "backend_unknown", backend=backend, known=", ".join(self.backends.known())
            )

    def backend_status(self, backend: str, principal: Principal) -> RoleStatus:
        """The backend's status for the caller's role: ``maintenance`` while a maintenance
        window is open (job_manager/bookings.py), else the backend table's; a maintenance
        window booked ahead is announced in the description."""
        status = self.backends.status(backend, principal.role)
        now = self.clock.now()
        window = self.turns.calendar.next_maintenance(backend, now)
        if window is None:
            return status
        if window.is_open(now):
            return RoleStatus(ServiceStatus.MAINTENANCE,
                              f"in maintenance until {spoken_time(window.ends_at)}"
                              + (f": {window.note}" if window.note else ""))
        announced = (f"maintenance booked from {spoken_time(window.starts_at)} "
                     f"to {spoken_time(window.ends_at)}")
        return replace(status, description="; ".join(
            text for text in (status.description, announced) if text))

    def check_open(self, backend: str, principal: Principal) -> None:
        """Refuse a backend that is not available to the caller's role."""
        self.check_known(backend)
        status = self.backend_status(backend, principal)
        if status.status is not ServiceStatus.AVAILABLE:
            raise SchedulerError(
                "backend_not_available",
                backend=backend,
                status=status.status.value,
                role=principal.role.value,
                description=status.description,
            )

    # --- reading one job ----------------------------------------------------------------------
    async def visible(self, principal: Principal, job_id: str,
                      audit_as: str | None) -> JobRecord:
        """The job if ``principal`` may see it; an admin's read of another's job is audited
        as ``audit_as`` (None: the caller audits what it does with it)."""
        remembered = self.remembered(job_id)
        if remembered is not None and principal.may_see(remembered):
            record: JobRecord | None = remembered
        else:
            # Someone else's job, even one known from memory, is read as the caller's: the
            # store in front of us answers, charges and remembers it exactly as an id that
            # names no job (scheduler/access/absent_jobs.py), so no probe tells the two apart.
            with looking_as(principal):
                record = (await self.find(job_id) if remembered is None
                          else await self.read(job_id))
        if record is None or not principal.may_see(record):
            raise SchedulerError("job_not_found", job_id=job_id)
        if audit_as is not None:
            audit.cross_user(principal, audit_as, record)
        return record

    async def find_for_node(self, job_id: str) -> JobRecord:
        """The job a node names. A node holds only jobs that were handed out, so memory
        that says QUEUED is stale (another process handed it over): ask the store."""
        record = await self.find(job_id)
        if record is not None and record.status is JobStatus.QUEUED:
            record = await self.read(job_id)
        if record is None:
            raise SchedulerError("job_not_found", job_id=job_id)
        return record

    def remembered(self, job_id: str) -> JobRecord | None:
        """The job from memory (live or recently finished), checking its id's shape first."""
        if not is_job_id(job_id):
            raise SchedulerError("job_id_malformed", value=repr(job_id[:64]))
        return self.ledger.remembered(job_id)

    async def find(self, job_id: str) -> JobRecord | None:
        """The job from memory, else from the store (a final one is remembered)."""
        record = self.remembered(job_id)
        if record is None:
            record = await self.read(job_id)
            if record is not None and record.status.is_final:
                self.ledger.remember_finished(record)
        return record

    async def read(self, job_id: str) -> JobRecord | None:
        """The job as the store holds it; store failures become the user's answer."""
        try:
            return await self.store.get(job_id)
        except RecordUnreadable:
            raise SchedulerError("record_unreadable", job_id=job_id) from None
        except StoreError as exc:
            raise store_failed(f"job {job_id} could not be read", exc) from None

    async def believe_store(self, job_id: str) -> JobRecord | None:
        """The store disagrees with memory: believe the store, drop the job from memory.

        A job the store holds RUNNING (handed over by another process, say a leader
        deposed since) is watched from now on, so it times out here if its node is gone.
        """
        self.ledger.forget(job_id)  # wrong whatever the store says: never left claimed
        try:
            stored = await self.read(job_id)
        except SchedulerError:
            self.in_background(self._read_again(job_id))
            raise
        self._follow_store(job_id, stored)
        return stored

    async def _read_again(self, job_id: str) -> None:
        """The store could not say what became of a job memory was wrong about: ask again
        until it can, so that a job it holds is queued or watched here (issue 27, item 4)."""
        while True:
            await asyncio.sleep(READ_AGAIN_S)
            if self._closed:
                return  # its term is over: the next term's recovery reads the job
            with contextlib.suppress(SchedulerError):
                self._follow_store(job_id, await self.read(job_id))
                return

    def _follow_store(self, job_id: str, stored: JobRecord | None) -> None:
        if stored is not None and changeable(stored):
            if stored.status is JobStatus.RUNNING:
                self.ledger.admit_running(stored)
            elif (stored.status is JobStatus.QUEUED
                  and self.ledger.queue(stored.backend) is not None):
                self.ledger.admit(QueuedJob(stored, None), reserved=False)
        log.warning("job %s was %s in the store, not as expected in memory", job_id,
                    stored.status.value if stored else "missing")

    # --- work no caller waits for -------------------------------------------------------------
    def in_background(self, work: Awaitable[None]) -> None:
        """Run ``work`` to its end though no caller waits for it; failures are logged."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background_ended)

    async def background_done(self, timeout_s: float | None = None) -> None:
        """Wait (at most ``timeout_s``) for the work begun so far that no caller waits for."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)

    def _background_ended(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job work failed", exc_info=task.exception())


def store_failed(what: str, exc: StoreError) -> Exception:
    """The one translation of a store failure into the user's answer, logged once.

    A write refused because this replica no longer leads is no failure: it changed
    nothing, and stays Deposed so that the call is passed to the new leader.
    """
    if isinstance(exc, Deposed):
        return exc
    if isinstance(exc, RecordTooNew):  # not a failure: the job is read-only here
        log.warning("%s: %s", what, exc)
        return SchedulerError("record_too_new", job_id=exc.job_id,
                              format_version=exc.format_version)
    log.error("%s: the store failed: %s", what, exc)
    return SchedulerError("store_failed")


def changeable(record: JobRecord) -> bool:
    """Whether this scheduler may queue or watch a stored job: not one a newer scheduler
    stored in a newer format, which it leaves to a newer leader (docs/records.md)."""
    if record.read_only:
        log.warning("job %s is stored in record format %d, newer than this scheduler's: "
                    "served read-only, left to a newer scheduler", record.job_id,
                    record.format_version)
    return not record.read_only


def object_tags(record: JobRecord) -> ObjectTags:
    """The tags a job's objects carry in the bucket."""
    return ObjectTags(role=record.role.value, save_job=record.save_job)


def seconds(start: datetime, end: datetime | None) -> float:
    """Seconds from ``start`` to ``end`` (0 when it has not come)."""
    return (end - start).total_seconds() if end is not None else 0.0

"""JobManager: the one place that moves a job through its life.

The manager decides; the ledger (job_manager/ledger.py) keeps every per-job piece of
memory and changes it only whole. Memory is touched only from the event loop, so it
needs no locks; store calls are awaited without holding anything other requests wait
on. Each state change is claimed in memory first (a job taken out of its queue cannot
be taken twice), then made durable by a compare-and-set in the JobStore, in a task no
caller can cancel; when the store fails, the claim is undone (docs/job-rules.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any, TypeVar

from backend_manager import BackendTable, NodeLiveness, ServiceStatus
from common import audit, collector
from common.caller import looking_as, on_own_behalf
from common.clock import Clock, spoken_duration
from common.identity import Principal
from common.single_flight import SingleFlight
from job_manager.ledger import Ledger
from job_manager.limits import Limits
from job_manager.model import (
    NO_BACKEND_TIMESTAMPS,
    BackendTimestamps,
    JobRecord,
    JobStatus,
    is_job_id,
    new_job_id,
)
from job_manager.observer import UNKNOWN_BACKEND, JobObserver, NoObserver
from job_manager.queue import QueuedJob, SchedulingPolicy
from job_manager.stores import (
    Deposed,
    Fence,
    InputsBesideRecords,
    JobStore,
    KeyTaken,
    ObjectTags,
    PayloadStore,
    RecordTooNew,
    RecordUnreadable,
    SignedUrl,
    StoreError,
)
from job_manager.tags import Tags
from job_manager.watchdog import Watchdog
from message_manager import SchedulerError

log = logging.getLogger(__name__)

T = TypeVar("T")

UPLOAD_URL_LIFETIME = timedelta(hours=3)
DOWNLOAD_URL_LIFETIME = timedelta(minutes=3)
# An AssignNextJobResponse beside its program, settings and URL: the job id, the URL's
# expiry, the fields' tags and lengths (measured: under 100 bytes), with room to spare.
ASSIGNMENT_FRAMING_BYTES = 256


@dataclass(frozen=True)
class JobSpec:
    """A submission whose fields were checked at the edge."""

    backend: str
    settings: bytes  # serialized JobExecutionSettings, role filled in
    timeout_s: float
    n_shots: int
    program: bytes  # serialized QuantumProgram, passed through untouched
    request_bytes: int
    sdk_version: str = ""
    save_job: bool = False
    idempotency_key: str = ""
    request_digest: str = ""  # with a key: what a retry with that key must match
    tags: Tags = ()


@dataclass(frozen=True)
class Assignment:
    """A job handed to a hardware node."""

    record: JobRecord
    upload: SignedUrl
    queued: QueuedJob = field(repr=False)  # its place in the queue, should it come back

    @property
    def program(self) -> bytes:
        program = self.queued.program
        assert program is not None  # read before the hand-over (JobManager._load_program)
        return program


@dataclass(frozen=True)
class ExecutionReport:
    """What a hardware node says about a job it ran."""

    job_id: str
    outcome: JobStatus  # COMPLETED, FAILED or TIMEOUT
    detail: str = ""
    timestamps: BackendTimestamps = NO_BACKEND_TIMESTAMPS
    actual_backend: str = ""
    physical_lab_version: str = ""
    simulator_version: str = ""
    raw_size_bytes: int = 0
    encoded_size_bytes: int = 0
    # The node failed the job for a reason of its own (the backend or its connection
    # unavailable), not the program's: such a job may be queued again (max_requeues).
    infrastructure: bool = False
    # The hand-over the node says it ran (x-mqc3-handover), when it said (docs/nodes.md).
    handover: int | None = None


@dataclass(frozen=True, eq=False)
class _Beat:
    """A node's latest heartbeat for a job, told apart from earlier ones by identity."""

    dequeued_at: datetime | None  # the hand-over it beats for


TAG_ATTEMPTS = 3  # a job changing status under a SetJobTags is read again this often
MISSING_PROGRAM = "the job's program was missing after a restart"
PREFETCH_BATCH = 256  # recovered jobs whose programs one read fetches, beside the records

# What a user reads when the node said nothing: a completed job needs no words (the
# original answers it empty); a failure or a timeout without a reason gets one.
_OUTCOME_DETAIL = {
    JobStatus.COMPLETED: "",
    JobStatus.FAILED: "the backend reported a failure",
    JobStatus.TIMEOUT: "the backend reported that the job timed out",
}


READ_AGAIN_S = 1.0  # how often a job whose store read failed is read again


class JobManager:
    """Submits, schedules, hands over and finishes jobs."""

    def __init__(
        self,
        *,
        jobs: JobStore,
        payloads: PayloadStore,
        limits: Limits,
        clock: Clock,
        policy: SchedulingPolicy | None = None,
        unify_backends: bool = False,
        report_grace_s: float = 60.0,
        idempotency_window: timedelta = timedelta(hours=24),
        observer: JobObserver | None = None,
        fence: Fence | None = None,
        max_requeues: int = 0,
        heartbeat_timeout_s: float = 30.0,
        node_quiet_s: float = 300.0,
    ) -> None:
        self._store = jobs  # the JobStore; the payloads have their own
        # Among replicas, every write is conditional on the lease of this manager's term
        # (job_manager/stores/fence.py); a follower's manager has one that never holds.
        self._fence = fence
        self._fence_raised = False
        self._payloads = payloads
        # Standalone keeps programs beside the records: one write per submission (_store_new).
        self._beside_records = payloads if isinstance(payloads, InputsBesideRecords) else None
        self._clock = clock
        self._unify = unify_backends
        self.backends = BackendTable()
        self._observer = observer or NoObserver()
        self._report_grace = timedelta(seconds=report_grace_s)
        self._idempotency_window = idempotency_window
        self._max_requeues = max_requeues  # a lost node's job queued again at most this often
        # Nodes (docs/nodes.md): who asks for work, and the jobs whose nodes beat for them.
        self.nodes = NodeLiveness(clock, node_quiet_s, lambda name: self.backends.is_known(name))
        self._heartbeat_timeout_s = heartbeat_timeout_s
        self._beats: dict[str, _Beat] = {}  # job → its latest beat, until its deadline passes
        self.watchdog = Watchdog(clock, self._time_out, self._check_nodes)
        self.ledger = Ledger(limits, policy or SchedulingPolicy(), clock, self.watchdog,
                             self._report_deadline, unify_backends)
        self.quotas = self.ledger.quotas
        self.waiters = self.ledger.waiters
        self._submissions: SingleFlight[tuple[str, str, str], str] = SingleFlight()
        # Jobs taken out of their queue whose store write (RUNNING, CANCELLED) is under way.
        self._moving: dict[str, asyncio.Future[None]] = {}
        self._background: set[asyncio.Task[None]] = set()  # work no caller waits for
        self._closed = False  # shut down: its term is over (scheduler/replicas.py)

    @property
    def leads(self) -> bool:
        """Whether this manager serves a term (standalone's, or a leader's) and so sees the
        nodes; a follower's is fenced at epoch 0, which no lease has (docs/replicas.md)."""
        return self._fence is None or self._fence.epoch > 0

    @property
    def jobs(self) -> JobStore:
        """The job store, for reads that need no memory (listings: job_manager/listing.py)."""
        return self._store

    # --- configuration ------------------------------------------------------------
    def use_backends(self, table: BackendTable) -> None:
        """Take a new backend table: new backends get a queue; removed ones keep theirs."""
        self.backends = table
        for backend in table.known():
            self.ledger.open_queue(backend)

    # --- users ---------------------------------------------------------------------
    async def submit(self, principal: Principal, spec: JobSpec) -> str:
        """Accept a job: durable first, then queued; returns its id.

        With an idempotency key, a retry of an accepted submission (same token and
        key, within the window) returns the first job's id and makes nothing new; the key
        sent with another request is refused (``idempotency_key_reused``).
        """
        if not spec.idempotency_key:
            return await self._submit_new(principal, spec)
        # Attempts of one request share one flight; another request with the key runs
        # apart, and meets the first one's record.
        flight = (principal.fingerprint, spec.idempotency_key, spec.request_digest)
        return await self._submissions.run(flight, lambda: self._submit_once(principal, spec))

    async def _submit_once(self, principal: Principal, spec: JobSpec) -> str:
        key = (principal.fingerprint, spec.idempotency_key)
        window_start = self._clock.now() - self._idempotency_window
        earlier = self.ledger.key_holder(*key)
        if earlier is None:
            try:
                earlier = await self._store.find_by_idempotency_key(*key)
            except StoreError as exc:
                log.error("idempotency key could not be looked up: %s", exc)
                raise SchedulerError("submission_not_stored") from None
        # A key is held by a job submitted less than the window ago, as the stores hold it.
        if earlier is None or earlier.submitted_at <= window_start:
            return await self._submit_new(principal, spec)
        return await self._adopt(earlier, spec.request_digest)

    async def _adopt(self, earlier: JobRecord, request_digest: str) -> str:
        """Answer a keyed retry with the job its key already names; the key sent with
        another request is refused, as payment APIs refuse it (docs/protocol.md)."""
        # A key claimed by an earlier version has no digest: any request matches it.
        if earlier.request_digest and earlier.request_digest != request_digest:
            raise SchedulerError("idempotency_key_reused", sent=repr(earlier.idempotency_key),
                                 job_id=earlier.job_id)
        if earlier.status is JobStatus.QUEUED and self.ledger.live(earlier.job_id) is None:
            # Stored by an attempt whose answer was lost (another process, or before a
            # restart that has not seen it): queue it now.
            try:
                await self._requeue(earlier)
            except StoreError as exc:
                raise _store_failed(f"job {earlier.job_id} could not be queued again",
                                    exc) from None
        log.info("job %s submitted again with its idempotency key; not duplicated",
                 earlier.job_id)
        return earlier.job_id

    async def _submit_new(self, principal: Principal, spec: JobSpec) -> str:
        try:
            self._check_open(spec.backend, principal)
            self.quotas.check_shots(spec.n_shots)
            self.quotas.check_timeout(principal.role, spec.timeout_s)
            job_id = new_job_id()
            self.quotas.check_assignable(lambda: self._assignment_bytes(job_id, spec),
                                         len(spec.program) + len(spec.settings))
            self.ledger.reserve(principal, spec.request_bytes, len(spec.program))
        except SchedulerError as exc:
            known = spec.backend if self.backends.is_known(spec.backend) else UNKNOWN_BACKEND
            self._observer.refused(known, principal.role.value, exc.code)
            raise
        now = self._clock.now()
        record = JobRecord(
            job_id=job_id,
            status=JobStatus.QUEUED,
            backend=spec.backend,
            owner_name=principal.name,
            owner_fingerprint=principal.fingerprint,
            role=principal.role,
            settings=spec.settings,
            timeout_s=spec.timeout_s,
            input_size_bytes=len(spec.program),
            sdk_version=spec.sdk_version,
            save_job=spec.save_job,
            idempotency_key=spec.idempotency_key,
            request_digest=spec.request_digest,
            tags=spec.tags,
            submitted_at=now,
            queued_at=now,
        )
        # Shielded: once the writes begin, a caller hanging up cannot leave a stored
        # job out of its queue.
        return await asyncio.shield(self._accept(record, spec.program))

    def _assignment_bytes(self, job_id: str, spec: JobSpec) -> int:
        """About how large the job's AssignNextJobResponse will be (its URL is signed alike,
        for its last hand-over, whose key is the longest)."""
        upload = self._payloads.upload_url(job_id, UPLOAD_URL_LIFETIME,
                                           self._max_requeues if self._max_requeues else None)
        return len(spec.program) + len(spec.settings) + len(upload.url) + ASSIGNMENT_FRAMING_BYTES

    async def _accept(self, record: JobRecord, program: bytes) -> str:
        try:
            await self._store_new(record, program)
        except Deposed:
            # This replica was deposed: nothing was stored; the call goes to the new leader.
            self.ledger.release(record.owner_fingerprint, len(program))
            await self._forget_input(record.job_id)
            raise
        except KeyTaken:
            # Another submission with this key was stored first (another process, or
            # one this process no longer remembers): that one is the job.
            self.ledger.release(record.owner_fingerprint, len(program))
            await self._forget_input(record.job_id)
            return await self._adopt(await self._stored_key_holder(record),
                                     record.request_digest)
        except StoreError as exc:
            if not await self._was_stored(record.job_id):
                self.ledger.release(record.owner_fingerprint, len(program))
                log.error("job %s not accepted, its store write failed: %s", record.job_id, exc)
                raise SchedulerError("submission_not_stored") from None
            # The record was written; only the answer was lost. The job is durable.
        self.ledger.admit(QueuedJob(record, program), reserved=True)
        self._observer.submitted(record)
        log.info(
            "job %s QUEUED backend=%s user=%s bytes=%d",
            record.job_id,
            record.backend,
            record.owner_label,
            len(program),
        )
        return record.job_id

    async def _store_new(self, record: JobRecord, program: bytes) -> None:
        """The program, then the record; one write where the payloads live beside the
        records (standalone: docs/design.md, "Standalone storage")."""
        if self._beside_records is not None:
            await self._beside_records.create_with_input(record, program)
            return
        await self._payloads.put_input(record.job_id, program, _tags(record))
        await self._store.create(record, self._fence)

    async def _stored_key_holder(self, record: JobRecord) -> JobRecord:
        try:
            holder = await self._store.find_by_idempotency_key(
                record.owner_fingerprint, record.idempotency_key)
        except StoreError as exc:
            log.error("idempotency key could not be looked up: %s", exc)
            raise SchedulerError("submission_not_stored") from None
        if holder is None:  # the holder expired in between: rare, and a retry succeeds
            raise SchedulerError("submission_not_stored")
        return holder

    async def _was_stored(self, job_id: str) -> bool:
        """After a failed write: is the record there after all? Cleans up when it is not.

        When even that cannot be known, the input is kept: if the record exists, the
        next restart queues the job; if not, the input is an orphan and harms nothing.
        """
        try:
            # The scheduler's own check, not the caller asking for an id: charged to no
            # token's budget of unknown job ids (scheduler/absent_jobs.py).
            with on_own_behalf():
                stored = await self._store.get(job_id)
        except StoreError:
            return False
        if stored is None:
            await self._forget_input(job_id)
        return stored is not None

    async def status(self, principal: Principal, job_id: str,
                     audit_as: str | None = "job.status") -> JobRecord:
        """The job as its owner (or an admin) may see it; ``audit_as``: see ``_visible``."""
        return await self._visible(principal, job_id, audit_as)

    def knows_final(self, job_id: str, owner_fingerprint: str) -> bool:
        """Whether memory holds the final status (which never changes) of this owner's job.
        Another's job is not told apart from an unknown one, not even by where it is read."""
        record = self.ledger.remembered(job_id)
        return (record is not None and record.status.is_final
                and record.owner_fingerprint == owner_fingerprint)

    def status_detail(self, record: JobRecord) -> str:
        """What a user is told about where the job stands."""
        if record.status is JobStatus.QUEUED:
            detail = self._queue_detail(record)
            if record.requeues:
                detail += f"; queued again {record.requeues} times after its node vanished"
            return detail
        if record.status is JobStatus.RUNNING:
            return f"running on {record.backend}"
        return record.status_detail

    def _queue_detail(self, record: JobRecord) -> str:
        queue = self.ledger.queue(record.backend)
        position = queue.position(record.job_id) if queue is not None else None
        if queue is None or position is None:
            return f"queued on {record.backend}"
        where = "all backends" if self._unify else record.backend
        detail = f"queued: {_ordinal(position)} of {len(queue)} on {where}"
        seconds_per_job = self.ledger.seconds_per_job(record.backend)
        if seconds_per_job is not None:
            detail += f", about {spoken_duration(position * seconds_per_job)}"
        return detail

    async def result(self, principal: Principal, job_id: str) -> tuple[JobRecord, SignedUrl | None]:
        """The finished job and, when it completed, a short-lived download URL."""
        record = await self._visible(principal, job_id, "job.result")
        if not record.status.is_final:
            raise SchedulerError("result_not_ready", job_id=job_id, status=record.status.value)
        if record.status is not JobStatus.COMPLETED:
            return record, None
        return record, self._payloads.download_url(job_id, DOWNLOAD_URL_LIFETIME)

    async def cancel(self, principal: Principal, job_id: str) -> JobRecord:
        """Cancel a queued job; a job already handed over cannot be cancelled.

        An admin's cancel of another's job is audited with how it ended (docs/audit.md):
        a refusal here, a cancel where it is made, so a caller that hangs up meanwhile
        cannot leave it out.
        """
        record = await self._visible(principal, job_id, audit_as=None)
        try:
            return await self._cancel_visible(principal, record)
        except SchedulerError as exc:
            audit.cross_user(principal, "job.cancel", record, exc.code)
            raise

    async def _cancel_visible(self, principal: Principal, record: JobRecord) -> JobRecord:
        job_id = record.job_id
        while (moving := self._moving.get(job_id)) is not None:
            # Being handed over or cancelled by another call: answer what that leads to.
            await asyncio.shield(moving)
            record = await self._visible(principal, job_id, audit_as=None)
        claimed = self.ledger.claim(record)
        if claimed is None and record.read_only:  # a newer scheduler's (docs/records.md)
            raise SchedulerError("record_too_new", job_id=job_id,
                                 format_version=record.format_version)
        if claimed is None:
            # Not in a queue, and no change under way: its status says why.
            raise SchedulerError("job_not_cancellable", job_id=job_id, status=record.status.value)
        return await asyncio.shield(self._moved(job_id, self._cancel_claimed(claimed, principal)))

    async def set_tags(self, principal: Principal, job_id: str, tags: Tags) -> JobRecord:
        """Replace a job's tags, whatever its status, while its record exists.

        Memory takes the tags before the store does, with no await in between, so a
        change of status made meanwhile from memory carries them too; a status changed
        elsewhere (the store's compare-and-set fails) is read again and tagged anew.
        An admin's tagging of another's job is audited with how it ended (docs/audit.md).
        """
        record = await self._visible(principal, job_id, audit_as=None)
        try:
            tagged = await self._tag(principal, record, tags)
        except SchedulerError as exc:
            audit.cross_user(principal, "job.set_tags", record, exc.code)
            raise
        audit.cross_user(principal, "job.set_tags", tagged)
        return tagged

    async def _tag(self, principal: Principal, record: JobRecord, tags: Tags) -> JobRecord:
        job_id = record.job_id
        for attempt in range(TAG_ATTEMPTS):
            if attempt:
                record = await self._visible(principal, job_id, audit_as=None)
            while (moving := self._moving.get(job_id)) is not None:
                await asyncio.shield(moving)
                record = await self._visible(principal, job_id, audit_as=None)
            tagged = replace(record, tags=tags)
            self.ledger.retag(job_id, tags)
            try:
                stored = await self._store.transition(record, tagged, self._fence)
            except StoreError as exc:
                self.ledger.retag(job_id, record.tags)
                raise _store_failed(f"tags of job {job_id} could not be stored", exc) from None
            if stored:
                return tagged
            self.ledger.retag(job_id, record.tags)
            self.ledger.forget_finished(job_id)  # stale: read the store next time
        raise SchedulerError("store_failed")

    def _moved(self, job_id: str, change: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        """Run a claimed job's store change to its end, in a task no caller can cancel.

        From this call on (synchronously, so no other call slips in between the claim
        and the change), other calls about the job wait for it (see ``cancel``) instead
        of answering from a view of the job that is about to change.
        """
        settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._moving[job_id] = settled

        async def settle() -> T:
            try:
                return await change
            finally:
                if self._moving.get(job_id) is settled:
                    del self._moving[job_id]
                settled.set_result(None)

        return asyncio.ensure_future(settle())

    async def _cancel_claimed(self, job: QueuedJob, principal: Principal) -> JobRecord:
        cancelled = replace(
            job.record,
            status=JobStatus.CANCELLED,
            finished_at=self._clock.now(),
            status_detail=f"cancelled by {principal.log_name}",
            cancelled_by=principal.fingerprint,
        )
        try:
            changed = await self._store.transition(job.record, cancelled, self._fence)
        except StoreError as exc:
            self.ledger.put_back(job)
            raise _store_failed(f"job {job.job_id} not cancelled", exc) from None
        self.ledger.left_queue(job)
        if not changed:
            stored = await self._believe_store(job.job_id)
            status = stored.status.value if stored else "missing"
            raise SchedulerError("job_not_cancellable", job_id=job.job_id, status=status)
        self._ended(cancelled)
        audit.cross_user(principal, "job.cancel", cancelled)
        return cancelled

    # --- hardware nodes ------------------------------------------------------------
    async def assign(self, backend: str, wait_s: float = 0.0,
                     node: str = "") -> Assignment | None:
        """Hand the next job for ``backend`` to a node, or None when there is none.

        With ``wait_s`` the node is parked until a job arrives or the time is up.
        ``node``: the caller's identity, when it named one (docs/nodes.md); only that
        node may then report the job, renew its upload URL or beat for it.
        """
        if self.ledger.queue(backend) is None:
            raise SchedulerError(
                "backend_unknown", backend=backend, known=", ".join(self.backends.known())
            )
        self.nodes.polled(backend)
        deadline_s = self._clock.monotonic() + wait_s
        while True:
            while (job := self.ledger.take_next(backend)) is not None:
                if (assignment := await self._hand_over(job, node)) is not None:
                    return assignment
            with self.nodes.waiting(backend):
                woken = await self.waiters.wait(self.ledger.queue_key(backend),
                                                deadline_s - self._clock.monotonic())
            if not woken:
                return None

    async def _hand_over(self, job: QueuedJob, node: str) -> Assignment | None:
        """Mark ``job`` RUNNING for the calling node; if the node leaves meanwhile, undo it."""
        caller_left = asyncio.Event()

        async def start() -> Assignment | None:
            assignment = await self._start(job, node)
            if assignment is not None and caller_left.is_set():
                await self._give_back(assignment)  # the node never received it
                return None
            return assignment

        handover = self._moved(job.job_id, start())
        try:
            return await asyncio.shield(handover)
        except asyncio.CancelledError:
            caller_left.set()
            if handover.done() and not handover.cancelled() and handover.exception() is None:
                if (finished := handover.result()) is not None:
                    self.give_back(finished)  # made RUNNING just as the node left
            raise

    async def _start(self, job: QueuedJob, node: str) -> Assignment | None:
        if job.program is None and not await self._load_program(job):
            return None
        running = replace(job.record, status=JobStatus.RUNNING, dequeued_at=self._clock.now(),
                          node_identity=node)
        try:
            changed = await self._store.transition(job.record, running, self._fence)
        except RecordTooNew as exc:  # a newer scheduler's now: left to it; the next job goes
            log.warning("job %s not handed over: %s", job.job_id, exc)
            self.ledger.left_queue(job)
            self.ledger.forget(job.job_id)  # read from the store from now on, read-only
            return None
        except StoreError as exc:
            self.ledger.put_back(job)
            raise _store_failed(f"job {job.job_id} not handed over (it stays queued)",
                                exc) from None
        if not changed:
            self.ledger.left_queue(job)
            await self._believe_store(job.job_id)
            return None
        self.ledger.started(job, running)
        self._observer.started(running)
        log.info(
            "job %s RUNNING backend=%s user=%s node=%s waited_s=%.3f",
            job.job_id,
            running.backend,
            running.owner_label,
            node or "-",
            _seconds(running.queued_at, running.dequeued_at),
        )
        return Assignment(record=running, upload=self._upload_url(running), queued=job)

    async def _load_program(self, job: QueuedJob) -> bool:
        """Read a claimed recovered job's program before its hand-over; a job whose
        program is gone FAILS."""
        try:
            job.program = await self._payloads.get_input(job.job_id)
        except StoreError as exc:
            self.ledger.put_back(job)
            raise _store_failed(f"job {job.job_id} not handed over (it stays queued)",
                                exc) from None
        if job.program is None:
            await self._fail_claimed(job, MISSING_PROGRAM)
        return job.program is not None

    async def _fail_claimed(self, job: QueuedJob, why: str) -> None:
        """A claimed job that can never run FAILS; when the store fails, it goes back."""
        try:
            failed = await self._fail_unrecoverable(job.record, why)
        except StoreError as exc:
            self.ledger.put_back(job)
            raise _store_failed(f"job {job.job_id} could not be failed (it stays queued)",
                                exc) from None
        self.ledger.left_queue(job)
        if failed is not None:
            self._ended(failed)
        else:
            await self._believe_store(job.job_id)

    async def prefetch_programs(self, concurrency: int = 8) -> int:
        """Read the programs of recovered jobs, the oldest first, so that their hand-overs
        wait for no store; returns how many were read. A job whose program is gone FAILS
        now. Jobs handed over, cancelled or failed meanwhile are skipped (a hand-over
        reads its own)."""
        waiting = iter(dict.fromkeys(
            job for backend in self.backends.known()
            if (queue := self.ledger.queue(backend)) is not None
            for job in queue.oldest_first() if job.program is None))
        # Beside the records (standalone), one query reads a batch of programs; other
        # stores are read a program at a time.
        size = PREFETCH_BATCH if self._beside_records is not None else 1
        read = 0

        # ``concurrency`` readers share one iterator, each taking the next batch: no task
        # per job, which for a million recovered jobs cost gigabytes and held the event
        # loop for seconds before the first call could be answered.
        async def reader() -> None:
            nonlocal read
            while batch := list(itertools.islice(waiting, size)):
                found = await self._programs_of(batch)
                for job in batch:
                    given = await self._read_ahead(job, found.get(job.job_id))
                    read += given  # after the await: ``read`` may have grown meanwhile

        await asyncio.gather(*(reader() for _ in range(concurrency)))
        return read

    async def _programs_of(self, batch: list[QueuedJob]) -> dict[str, bytes]:
        """The programs of a batch of jobs still waiting for theirs, in one read where the
        store can; {} where it cannot (each is then read alone)."""
        wanted = [job.job_id for job in batch if self._waits_for_program(job)]
        if self._beside_records is None or len(wanted) < 2:
            return {}
        try:
            return await self._beside_records.get_inputs(wanted)
        except StoreError as exc:
            log.warning("programs of %d jobs not read together: %s", len(wanted), exc)
            return {}

    async def _read_ahead(self, job: QueuedJob, program: bytes | None) -> int:
        """Give a queued job its program (read now unless given); 1 when it got one."""
        if not self._waits_for_program(job):
            return 0
        if program is None:
            try:
                program = await self._payloads.get_input(job.job_id)
            except StoreError as exc:
                log.warning("program of job %s not read ahead: %s", job.job_id, exc)
                return 0
            if program is None:
                await self._fail_missing(job)
                return 0
            if not self._waits_for_program(job):
                return 0  # handed over (or ended) while its program was read
        job.program = program
        return 1

    def _waits_for_program(self, job: QueuedJob) -> bool:
        """Still queued here without its program (not handed over, cancelled or failed)."""
        return job.program is None and self.ledger.holds(job)

    async def _fail_missing(self, job: QueuedJob) -> None:
        claimed = self.ledger.claim(job.record)
        if claimed is None:
            return  # taken meanwhile: its hand-over sees the program is gone
        try:
            await self._moved(job.job_id, self._fail_claimed(claimed, MISSING_PROGRAM))
        except (SchedulerError, StoreError) as exc:
            log.warning("job %s without its program stays queued: %s", job.job_id, exc)

    def give_back(self, assignment: Assignment) -> None:
        """The node's call ended before it received ``assignment``: the job is queued again.
        Told twice (the call's end is seen two ways), the job is given back once."""
        self._in_background(self._give_back_in_turn(assignment))

    async def _give_back_in_turn(self, assignment: Assignment) -> None:
        job_id = assignment.record.job_id
        await self._settled(job_id)  # a give-back (or report) under way: its outcome decides
        if self.ledger.live(job_id) is assignment.record:
            await asyncio.shield(self._moved(job_id, self._give_back(assignment)))

    async def _give_back(self, assignment: Assignment) -> None:
        """Back to its place at the head of its queue, as if never taken; no timeout, no quota."""
        running = assignment.record
        if self.ledger.live(running.job_id) is not running:
            return  # reported or timed out meanwhile: the node did have it
        queued = replace(running, status=JobStatus.QUEUED, dequeued_at=None, node_identity="")
        try:
            changed = await self._store.transition(running, queued, self._fence)
        except StoreError as exc:
            # It stays RUNNING and watched, and ends TIMEOUT as any silent node's job.
            log.error("job %s whose node never received it could not be queued again: %s",
                      running.job_id, exc)
            return
        if not changed:
            await self._believe_store(running.job_id)
            return
        job = assignment.queued
        self.ledger.returned(job, queued)
        self._observer.returned(queued)
        log.warning("job %s QUEUED again: its node's call ended before it received the job",
                    job.job_id)

    async def report(self, report: ExecutionReport, node: str = "") -> JobRecord:
        """Record a node's report; the same report twice is answered the same way.

        A report is one of the changes of a running job (docs/job-rules.md, rule 2): it
        waits for a change under way (a requeue, a timeout, another report) and then looks
        again, so two changes never race each other to the store.
        """
        while True:
            await self._settled(report.job_id)
            record = await self._reported(report, node)
            if not self._changed_since(record):
                break
        if record.status.is_final:
            return record  # the same report again: answered as before, nothing written
        return await asyncio.shield(self._moved(report.job_id, self._record_report(record, report)))

    async def _reported(self, report: ExecutionReport, node: str) -> JobRecord:
        """The running job ``report`` may change; the answer itself when it changes nothing."""
        record = await self._find_for_node(report.job_id)
        _check_node(record, node)
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
        live = self.ledger.live(record.job_id)
        return record.job_id in self._moving or (
            live is not None and live.status is JobStatus.RUNNING and live is not record)

    async def _settled(self, job_id: str) -> None:
        """Wait until no change of the job is under way."""
        while (moving := self._moving.get(job_id)) is not None:
            await asyncio.shield(moving)

    async def _record_report(self, record: JobRecord, report: ExecutionReport) -> JobRecord:
        if report.infrastructure and record.requeues < self._max_requeues:
            why = f"its backend failed it for a reason of its own ({report.detail or 'unstated'})"
            requeued = await self._requeue_lost(record, why)
            if requeued is not None:
                return requeued
        if report.outcome is JobStatus.COMPLETED:
            await self._promote_result(record)
        now = self._clock.now()
        timestamps, clamped = _within_run(report.timestamps, record.dequeued_at, now)
        if clamped:
            self._observer.timestamps_clamped(record, clamped)
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
        return await self._finish(record, finished)

    async def _finish(self, running: JobRecord, finished: JobRecord) -> JobRecord:
        try:
            changed = await self._store.transition(running, finished, self._fence)
        except StoreError as exc:
            raise _store_failed(f"report for job {finished.job_id} not recorded", exc) from None
        if not changed:
            stored = await self._believe_store(finished.job_id)
            if stored is not None and stored.status is finished.status:
                return stored
            status = stored.status.value if stored else "missing"
            raise SchedulerError(
                "report_conflict",
                job_id=finished.job_id,
                status=status,
                reported=finished.status.value,
            )
        self._ended(finished)
        if finished.status is JobStatus.COMPLETED:
            # After the answer: the tags are for the bucket's rules, and a failure to set
            # them never changed the answer (the node waits one store call less).
            self._in_background(self._seal_result(finished))
        return finished

    async def _promote_result(self, running: JobRecord) -> None:
        """With a key per hand-over, this hand-over's upload becomes the final result before
        the job is COMPLETED: a crash after it leaves the job RUNNING, and the node's
        retried report finds the final result promoted from its hand-over and completes it."""
        handover = self._result_handover(running)
        if handover is None:
            return  # uploaded to the final key itself, as the original's nodes do
        try:
            promoted = await self._payloads.promote_result(running.job_id, handover)
        except StoreError as exc:
            raise _store_failed(f"result of job {running.job_id} could not be kept",
                                exc) from None
        if not promoted:  # gone since the report was checked (housekeeping, an operator)
            raise SchedulerError("result_missing", job_id=running.job_id)

    def _discard_lost_results(self, record: JobRecord) -> None:
        """Once a job ends, remove what its lost hand-overs uploaded to their own keys, and
        an ended hand-over's own upload that did not become the result (best effort: the
        bucket's rules or housekeeping take stragglers; docs/protocol.md)."""
        if not self._max_requeues:
            return
        handovers = [n for n in range(record.requeues + 1)
                     if n < record.requeues or (record.dequeued_at is not None
                                                and record.status is not JobStatus.COMPLETED)]
        if handovers:
            self._in_background(self._discard_results(record.job_id, handovers))

    async def _discard_results(self, job_id: str, handovers: list[int]) -> None:
        try:
            await self._payloads.discard_results(job_id, handovers)
        except StoreError as exc:
            log.warning("uploads of job %s's lost hand-overs left behind: %s", job_id, exc)

    async def _seal_result(self, record: JobRecord) -> None:
        try:
            await self._payloads.seal_result(record.job_id, _tags(record))
        except StoreError as exc:  # the job is COMPLETED either way; only its tags are late
            log.warning("result of job %s could not be tagged complete: %s", record.job_id, exc)

    def _report_deadline(self, record: JobRecord) -> datetime | None:
        """When a silent node's job times out; None when that lies beyond what a date can
        hold: the wire allows any timeout, and such a job has no deadline (docs/job-rules.md,
        rule 18). Heartbeats still watch it."""
        assert record.dequeued_at is not None
        try:
            return record.dequeued_at + timedelta(seconds=record.timeout_s) + self._report_grace
        except OverflowError:
            return None

    async def _time_out(self, job_id: str, watched: object) -> None:
        """The watchdog's verdict: a RUNNING job whose node never reported, or whose node's
        heartbeats stopped (``watched`` is then a _Beat), is lost.

        Otherwise ``watched`` is the ``dequeued_at`` of the hand-over the deadline was
        watched for.
        """
        await self._settled(job_id)  # a report under way: its outcome decides
        if isinstance(watched, _Beat):
            await self._beats_stopped(job_id, watched)
            return
        record = self.ledger.live(job_id)
        if record is None or record.status is not JobStatus.RUNNING:
            return  # reported in time
        if record.dequeued_at != watched:
            return  # given back and handed over again since: its new deadline is watched
        grace_s = self._report_grace.total_seconds()
        await self._lost(record, "its node never reported",
                         f"the backend never reported: no report within the job's timeout "
                         f"({record.timeout_s:g} s) and {grace_s:g} s of grace")

    async def _beats_stopped(self, job_id: str, beat: _Beat) -> None:
        if self._beats.get(job_id) is not beat:
            return  # beaten again since: the later beat's deadline is watched
        record = self.ledger.live(job_id)
        if (record is not None and record.status is JobStatus.RUNNING
                and record.dequeued_at == beat.dequeued_at):
            silence = f"{self._heartbeat_timeout_s:g} s without one"
            await self._lost(record, f"its node stopped sending heartbeats ({silence})",
                             f"the backend stopped sending heartbeats ({silence}, "
                             f"SCHEDULER_HEARTBEAT_TIMEOUT_S)")
        if self._beats.get(job_id) is beat:  # kept when _lost failed: the watchdog retries
            del self._beats[job_id]

    async def _lost(self, record: JobRecord, why: str, detail: str) -> None:
        """A RUNNING job whose node is gone: queued again while SCHEDULER_MAX_REQUEUES
        allows, else TIMEOUT with ``detail``."""
        if record.requeues < self._max_requeues:
            await asyncio.shield(self._moved(record.job_id, self._requeue_lost(record, why)))
            return
        timed_out = replace(record, status=JobStatus.TIMEOUT, finished_at=self._clock.now(),
                            status_detail=detail)
        try:
            await asyncio.shield(self._moved(record.job_id, self._finish(record, timed_out)))
        except SchedulerError as exc:
            if exc.key != "report_conflict":
                raise
            # A report won the race: the job ended as the node said.

    async def _requeue_lost(self, running: JobRecord, why: str) -> JobRecord | None:
        """A RUNNING job its node lost (it never reported, or failed it for a reason of its
        own) goes back to the head of its queue; the queued record, or None if it did not."""
        queued = replace(running, status=JobStatus.QUEUED, dequeued_at=None, node_identity="",
                         actual_backend="", requeues=running.requeues + 1,
                         status_detail=f"queued again: {why} "
                                       f"({running.requeues + 1} of {self._max_requeues})")
        try:
            changed = await self._store.transition(running, queued, self._fence)
        except StoreError as exc:
            # Still RUNNING in the store; watched again, it ends TIMEOUT or is tried again.
            log.error("job %s whose node vanished could not be queued again: %s",
                      running.job_id, exc)
            self.ledger.watchdog.watch(running.job_id, self._clock.now() + self._report_grace,
                                       running.dequeued_at)
            return None
        if not changed:
            await self._believe_store(running.job_id)
            return None
        self.ledger.requeued(QueuedJob.at_head(queued))
        self._observer.requeued(queued)
        log.warning("job %s QUEUED again (%d of %d): %s", running.job_id,
                    queued.requeues, self._max_requeues, why)
        return queued

    def shutdown(self) -> None:
        """Release waiting nodes with an empty answer; later long polls return at once."""
        self.waiters.close()
        self._closed = True

    def accepts_result(self, job_id: str, handover: int | None = None) -> bool:
        """Whether a node may upload the job's result now to the key of ``handover`` (None:
        the final key): only while the job is RUNNING here, in that hand-over."""
        record = self.ledger.live(job_id)
        return (record is not None and record.status is JobStatus.RUNNING
                and handover == self._result_handover(record))

    async def refresh_upload_url(self, job_id: str, node: str = "",
                                 handover: int | None = None) -> SignedUrl:
        """A new upload URL for a job that is still RUNNING, for its current hand-over."""
        record = await self._find_for_node(job_id)
        _check_node(record, node)
        if record.status is not JobStatus.RUNNING:
            raise SchedulerError("job_not_running", job_id=job_id, status=record.status.value)
        _check_hand_over(record, handover)
        return self._upload_url(record)

    def _upload_url(self, running: JobRecord) -> SignedUrl:
        return self._payloads.upload_url(running.job_id, UPLOAD_URL_LIFETIME,
                                         self._result_handover(running))

    def _result_handover(self, record: JobRecord) -> int | None:
        """Which hand-over's own key the job's node uploads to: none while jobs are never
        queued again (the original's one key), else the current hand-over's, so that no
        URL lets a lost node write the final result (docs/protocol.md)."""
        return record.requeues if self._max_requeues else None

    async def heartbeat(self, job_id: str, node: str = "", handover: int | None = None) -> float:
        """A node still runs the job: from its first beat on, the job is lost once its
        beats stop for the heartbeat timeout (docs/nodes.md). Returns that timeout."""
        record = await self._find_for_node(job_id)
        _check_node(record, node)
        if record.status is not JobStatus.RUNNING:
            raise SchedulerError("heartbeat_job_not_running", job_id=job_id,
                                 status=record.status.value)
        _check_hand_over(record, handover)
        if self.ledger.live(job_id) is record:
            if job_id not in self._beats:
                log.info("job %s: its node sends heartbeats (lost after %g s without one)",
                         job_id, self._heartbeat_timeout_s)
            beat = self._beats[job_id] = _Beat(record.dequeued_at)
            self.watchdog.watch_for(job_id, self._heartbeat_timeout_s, beat)
        return self._heartbeat_timeout_s

    def service_status(self, backend: str, principal: Principal) -> tuple[ServiceStatus, str]:
        """The backend's status and description for the caller's role; the leader adds
        that no node has asked for work lately (docs/nodes.md), the status stays."""
        self._check_known(backend)
        status = self.backends.status(backend, principal.role)
        quiet = self.nodes.note(backend) if self.leads else ""
        return status.status, "; ".join(text for text in (status.description, quiet) if text)

    def node_snapshot(self) -> list[tuple[str, float]]:
        """(backend, seconds since a node asked it for work), for metrics; the leader's only."""
        return self.nodes.snapshot(self.backends.known()) if self.leads else []

    def _check_nodes(self) -> None:
        if self.leads:
            self.nodes.check(self.backends.known())

    # --- restart --------------------------------------------------------------------
    async def recover(self) -> None:
        """Reload QUEUED jobs into their queues and watch RUNNING ones, after a restart.

        A leader's term first raises its fence, so that nothing the last leader writes
        from then on lands unseen (docs/replicas.md, "Fence")."""
        if self._fence is not None and not self._fence_raised:
            await self._store.raise_fence(self._fence)
            self._fence_raised = True
        async for record in self._store.list_by_status(JobStatus.RUNNING):
            if _changeable(record):
                self.ledger.admit_running(record)
        # Queued without their programs, read later (prefetch_programs, or at the
        # hand-over), and all at once: a restart serves at once, whatever the number.
        # Plain records come lean and become compact jobs with no record built.
        found = []
        with collector.paused():
            async for stored in self._store.list_queued():
                if isinstance(stored, JobRecord) and not _changeable(stored):
                    continue  # a newer format's job: left to a newer leader (docs/records.md)
                job = QueuedJob.recovered(stored)
                # Its record is built only when its backend is gone (_queueable FAILS it).
                known = self.ledger.queue(job.origin.backend) is not None
                if known or await self._queueable(job.record):
                    found.append(job)
            requeued = await self.ledger.admit_in_slices(found)
        log.info("recovered %d queued and %d running jobs", requeued,
                 self.ledger.running_count())

    async def _requeue(self, record: JobRecord) -> None:
        """Queue a stored QUEUED job this process does not hold yet (its program read later)."""
        if self.ledger.live(record.job_id) is None and await self._queueable(record):
            self.ledger.admit(QueuedJob(record, None), reserved=False)  # once, even if raced

    async def _queueable(self, record: JobRecord) -> bool:
        """Whether a stored QUEUED job has a queue here; one whose backend is gone FAILS."""
        if not _changeable(record):
            return False
        if self.ledger.queue(record.backend) is not None:
            return True
        await self._fail_unrecoverable(record, f"backend {record.backend} is no longer known")
        return False

    async def _fail_unrecoverable(self, record: JobRecord, why: str) -> JobRecord | None:
        """A queued job that can never run FAILS; the failed record, or None if it was no
        longer QUEUED."""
        failed = replace(
            record, status=JobStatus.FAILED, status_detail=why, finished_at=self._clock.now()
        )
        if not await self._store.transition(record, failed, self._fence):
            return None
        log.warning("job %s FAILED: %s", record.job_id, why)
        return failed

    # --- queries for operators and tests ----------------------------------------------
    def queue_length(self, backend: str) -> int:
        """How many jobs wait for ``backend``."""
        queue = self.ledger.queue(backend)
        return len(queue) if queue is not None else 0

    def live_jobs(self) -> int:
        """How many jobs are QUEUED or RUNNING."""
        return self.ledger.live_count()

    def queue_snapshot(self) -> list[tuple[str, int, int, int]]:
        """Each queue's (name, jobs, program bytes, waiting nodes), for metrics."""
        return self.ledger.snapshot()

    # --- helpers --------------------------------------------------------------------------
    def _in_background(self, work: Awaitable[None]) -> None:
        """Run ``work`` to its end though no caller waits for it; failures are logged."""
        task = asyncio.ensure_future(work)
        self._background.add(task)
        task.add_done_callback(self._background_ended)

    async def background_done(self, timeout_s: float | None = None) -> None:
        """Wait (at most ``timeout_s``) for the work begun so far that no caller waits for:
        before the stores close at a stop, and in tests."""
        if self._background:
            await asyncio.wait(set(self._background), timeout=timeout_s)

    def _background_ended(self, task: asyncio.Task[None]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background job work failed", exc_info=task.exception())

    def _ended(self, record: JobRecord) -> None:
        self.ledger.ended(record)
        self._observer.finished(record)
        self._discard_lost_results(record)
        log.info(
            "job %s %s backend=%s user=%s node=%s total_s=%.3f",
            record.job_id,
            record.status.value,
            record.backend,
            record.owner_label,
            record.node_identity or "-",
            _seconds(record.submitted_at, record.finished_at),
        )

    def _check_known(self, backend: str) -> None:
        if not backend:
            raise SchedulerError("backend_missing", known=", ".join(self.backends.known()))
        if not self.backends.is_known(backend):
            raise SchedulerError(
                "backend_unknown", backend=backend, known=", ".join(self.backends.known())
            )

    def _check_open(self, backend: str, principal: Principal) -> None:
        self._check_known(backend)
        status = self.backends.status(backend, principal.role)
        if status.status is not ServiceStatus.AVAILABLE:
            raise SchedulerError(
                "backend_not_available",
                backend=backend,
                status=status.status.value,
                role=principal.role.value,
                description=status.description,
            )

    async def _visible(self, principal: Principal, job_id: str,
                       audit_as: str | None) -> JobRecord:
        """The job if ``principal`` may see it; an admin's read of another's job is audited
        as ``audit_as`` (None: the caller audits what it does with it)."""
        remembered = self._remembered(job_id)
        if remembered is not None and principal.may_see(remembered):
            record: JobRecord | None = remembered
        else:
            # Someone else's job, even one known from memory, is read as the caller's: the
            # store in front of us answers, charges and remembers it exactly as an id that
            # names no job (scheduler/absent_jobs.py), so no probe tells the two apart.
            with looking_as(principal):
                record = (await self._find(job_id) if remembered is None
                          else await self._jobs_get(job_id))
        if record is None or not principal.may_see(record):
            raise SchedulerError("job_not_found", job_id=job_id)
        if audit_as is not None:
            audit.cross_user(principal, audit_as, record)
        return record

    async def _find_for_node(self, job_id: str) -> JobRecord:
        """The job a node names. A node holds only jobs that were handed out, so memory
        that says QUEUED is stale (another process handed it over): ask the store."""
        record = await self._find(job_id)
        if record is not None and record.status is JobStatus.QUEUED:
            record = await self._jobs_get(job_id)
        if record is None:
            raise SchedulerError("job_not_found", job_id=job_id)
        return record

    def _remembered(self, job_id: str) -> JobRecord | None:
        """The job from memory (live or recently finished), checking its id's shape first."""
        if not is_job_id(job_id):
            raise SchedulerError("job_id_malformed", value=repr(job_id[:64]))
        return self.ledger.remembered(job_id)

    async def _find(self, job_id: str) -> JobRecord | None:
        record = self._remembered(job_id)
        if record is None:
            record = await self._jobs_get(job_id)
            if record is not None and record.status.is_final:
                self.ledger.remember_finished(record)
        return record

    async def _jobs_get(self, job_id: str) -> JobRecord | None:
        try:
            return await self._store.get(job_id)
        except RecordUnreadable:
            raise SchedulerError("record_unreadable", job_id=job_id) from None
        except StoreError as exc:
            raise _store_failed(f"job {job_id} could not be read", exc) from None

    async def _result_uploaded(self, record: JobRecord) -> bool:
        try:
            return await self._payloads.result_exists(record.job_id,
                                                      self._result_handover(record))
        except StoreError as exc:
            raise _store_failed(f"result of job {record.job_id} could not be checked",
                                exc) from None

    async def _believe_store(self, job_id: str) -> JobRecord | None:
        """The store disagrees with memory: believe the store, drop the job from memory.

        A job the store holds RUNNING (handed over by another process, say a leader
        deposed since) is watched from now on, so it times out here if its node is gone.
        """
        self.ledger.forget(job_id)  # wrong whatever the store says: never left claimed
        try:
            stored = await self._jobs_get(job_id)
        except SchedulerError:
            self._in_background(self._read_again(job_id))
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
                self._follow_store(job_id, await self._jobs_get(job_id))
                return

    def _follow_store(self, job_id: str, stored: JobRecord | None) -> None:
        if stored is not None and _changeable(stored):
            if stored.status is JobStatus.RUNNING:
                self.ledger.admit_running(stored)
            elif stored.status is JobStatus.QUEUED and self.ledger.queue(stored.backend):
                self.ledger.admit(QueuedJob(stored, None), reserved=False)
        log.warning("job %s was %s in the store, not as expected in memory", job_id,
                    stored.status.value if stored else "missing")

    async def _forget_input(self, job_id: str) -> None:
        try:
            await self._payloads.delete_input(job_id)
        except StoreError as exc:
            log.warning("input of unaccepted job %s left behind: %s", job_id, exc)


def _store_failed(what: str, exc: StoreError) -> Exception:
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


def _changeable(record: JobRecord) -> bool:
    """Whether this scheduler may queue or watch a stored job: not one a newer scheduler
    stored in a newer format, which it leaves to a newer leader (docs/records.md)."""
    if record.read_only:
        log.warning("job %s is stored in record format %d, newer than this scheduler's: "
                    "served read-only, left to a newer scheduler", record.job_id,
                    record.format_version)
    return not record.read_only


def _check_node(record: JobRecord, node: str) -> None:
    """A job taken by a named node may be reported, renewed or beaten for by that node
    only: a caller that names none is refused too, or leaving the name out would pass
    the check (docs/nodes.md)."""
    if record.node_identity and node != record.node_identity:
        raise SchedulerError("job_held_by_another_node", job_id=record.job_id)


def _check_hand_over(record: JobRecord, handover: int | None) -> None:
    """A call that names the hand-over it holds (x-mqc3-handover) is refused unless that is
    the job's current one: a stale node must stop (docs/job-rules.md, rule 19)."""
    if handover is not None and handover != record.requeues:
        raise SchedulerError("earlier_hand_over", job_id=record.job_id, sent=handover,
                             current=record.requeues)


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


def _tags(record: JobRecord) -> ObjectTags:
    return ObjectTags(role=record.role.value, save_job=record.save_job)


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _seconds(start: datetime, end: datetime | None) -> float:
    return (end - start).total_seconds() if end is not None else 0.0

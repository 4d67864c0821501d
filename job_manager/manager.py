"""JobManager: the one object the servicers call about jobs, a thin facade over the
phases of a job's life (job_manager/phases/).

The facade keeps one object per term: the replica router (scheduler/replication/replicas.py) swaps
a leader's manager for a follower's whole, and the servicers, the HTTP side and the
tests hold that one object. Each method passes its call to the phase that owns it; the
phases share one core and one ledger, made here (docs/design.md, "The job manager").
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from backend_manager import BackendTable, ServiceStatus
from common.clock import Clock
from common.identity import Principal, Role
from job_manager.bookings import Booking, Calendar
from job_manager.budgets import BudgetBook, BudgetLeft, BudgetRules
from job_manager.ledger import Ledger
from job_manager.limits import Limits, QuotaUsage
from job_manager.model import JobRecord
from job_manager.observer import JobObserver, NoObserver
from job_manager.phases.core import JobCore
from job_manager.phases.handover import HandOver
from job_manager.phases.inputs import Assignment, ExecutionReport, JobSpec
from job_manager.phases.liveness import Liveness
from job_manager.phases.owner_changes import OwnerChanges
from job_manager.phases.reads import Reads
from job_manager.phases.recovery import Recovery
from job_manager.phases.reservations import Reservations
from job_manager.phases.submission import Submission
from job_manager.queue import SchedulingPolicy
from job_manager.sessions import Session, SessionBook, SessionLimits
from job_manager.stores import Fence, JobStore, PayloadStore, SignedUrl
from job_manager.tags import Tags
from job_manager.turns import Turns

__all__ = ["Assignment", "ExecutionReport", "JobManager", "JobSpec"]


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
        budgets: BudgetRules | None = None,
        session_limits: Mapping[Role, SessionLimits] | None = None,
        shots_of: Callable[[JobRecord], int] = lambda record: 0,
    ) -> None:
        report_grace = timedelta(seconds=report_grace_s)
        ledger = Ledger(limits, policy or SchedulingPolicy(), clock, report_grace, unify_backends)
        turns = Turns(Calendar(jobs, clock, fence),
                      SessionBook(jobs, clock, dict(session_limits or {}), fence),
                      BudgetBook(budgets or BudgetRules(), jobs, shots_of))
        self._core = JobCore(store=jobs, payloads=payloads, ledger=ledger, clock=clock,
                             observer=observer or NoObserver(), fence=fence,
                             max_requeues=max_requeues, turns=turns)
        self._ledger = ledger
        self._recovery = Recovery(self._core)
        self._liveness = Liveness(self._core, report_grace=report_grace,
                                  heartbeat_timeout_s=heartbeat_timeout_s,
                                  node_quiet_s=node_quiet_s)
        self._submission = Submission(self._core, self._recovery, idempotency_window)
        self._handover = HandOver(self._core, self._liveness)
        self._owner_changes = OwnerChanges(self._core)
        self._reads = Reads(self._core, unify_backends)
        self._reservations = Reservations(self._core)

    # --- the term -------------------------------------------------------------------------
    @property
    def leads(self) -> bool:
        """Whether this manager serves a term (standalone's, or a leader's) and so sees the
        nodes; a follower's is fenced at epoch 0, which no lease has (docs/replicas.md)."""
        return self._core.leads

    @property
    def jobs(self) -> JobStore:
        """The job store, for reads that need no memory (listings: job_manager/listing.py)."""
        return self._core.store

    def use_backends(self, table: BackendTable) -> None:
        """Take a new backend table: new backends get a queue; removed ones keep theirs."""
        self._core.use_backends(table)

    def knows_backend(self, backend: str) -> bool:
        """Whether the current backend table names ``backend``."""
        return self._core.backends.is_known(backend)

    async def recover(self) -> None:
        """Reload the store at the start of a term (job_manager/phases/recovery.py)."""
        await self._recovery.recover()

    async def prefetch_programs(self, concurrency: int = 8) -> int:
        """Read recovered jobs' programs ahead of their hand-overs; how many were read."""
        return await self._recovery.prefetch_programs(concurrency)

    async def watch_deadlines(self) -> None:
        """Watch RUNNING jobs' deadlines and the nodes for ever (the supervisor runs it)."""
        await self._liveness.run()

    async def sweep_late_writes(self) -> int:
        """Believe the store about jobs a deposed leader wrote late (phases/liveness.py)."""
        return await self._liveness.sweep_late_writes()

    async def check_deadlines(self) -> int:
        """Deal with the deadlines that have passed now; how many were due."""
        return await self._liveness.check_deadlines()

    def shutdown(self) -> None:
        """Release waiting nodes with an empty answer; later long polls return at once."""
        self._core.close()

    async def background_done(self, timeout_s: float | None = None) -> None:
        """Wait (at most ``timeout_s``) for the work begun so far that no caller waits for:
        before the stores close at a stop, and in tests."""
        await self._core.background_done(timeout_s)

    # --- users ------------------------------------------------------------------------------
    async def submit(self, principal: Principal, spec: JobSpec) -> str:
        """Accept a job: durable first, then queued; returns its id."""
        return await self._submission.submit(principal, spec)

    async def status(self, principal: Principal, job_id: str,
                     audit_as: str | None = "job.status") -> JobRecord:
        """The job as its owner (or an admin) may see it."""
        return await self._reads.status(principal, job_id, audit_as)

    def knows_final(self, job_id: str, owner_fingerprint: str) -> bool:
        """Whether memory holds the final status of this owner's job."""
        return self._reads.knows_final(job_id, owner_fingerprint)

    def status_detail(self, record: JobRecord) -> str:
        """What a user is told about where the job stands."""
        return self._reads.status_detail(record)

    async def result(self, principal: Principal, job_id: str) -> tuple[JobRecord, SignedUrl | None]:
        """The finished job and, when it completed, a short-lived download URL."""
        return await self._reads.result(principal, job_id)

    def usage(self, owner_fingerprint: str, role: Role) -> QuotaUsage:
        """What the owner holds of its quotas now, and its role's limits."""
        return self._reads.usage(owner_fingerprint, role)

    async def cancel(self, principal: Principal, job_id: str) -> JobRecord:
        """Cancel a queued job; a job already handed over cannot be cancelled."""
        return await self._owner_changes.cancel(principal, job_id)

    async def set_tags(self, principal: Principal, job_id: str, tags: Tags) -> JobRecord:
        """Replace a job's tags, whatever its status, while its record exists."""
        return await self._owner_changes.set_tags(principal, job_id, tags)

    # --- bookings, sessions and budgets (job_manager/phases/reservations.py) -------------------
    async def book(self, principal: Principal, backend: str, starts_at: datetime,
                   ends_at: datetime, users: tuple[str, ...], note: str = "") -> Booking:
        """Book ``backend`` for a window (an admin's): for ``users``, or for maintenance."""
        return await self._reservations.book(principal, backend, starts_at, ends_at, users,
                                             note)

    async def cancel_booking(self, principal: Principal, booking_id: str) -> Booking:
        """Cancel a booking (an admin's)."""
        return await self._reservations.cancel_booking(principal, booking_id)

    async def bookings(self) -> tuple[Booking, ...]:
        """Every booking known, the earliest window first."""
        return await self._reservations.bookings()

    async def open_session(self, principal: Principal, backend: str,
                           max_length_s: float | None = None,
                           idle_timeout_s: float | None = None) -> Session:
        """Open a session on ``backend`` (None: the role's default for a limit)."""
        return await self._reservations.open_session(principal, backend, max_length_s,
                                                     idle_timeout_s)

    async def close_session(self, principal: Principal, session_id: str) -> Session:
        """End an open session: its owner's, or any for an admin."""
        return await self._reservations.close_session(principal, session_id)

    async def sessions(self, principal: Principal, everyone: bool = False) -> tuple[Session, ...]:
        """The caller's sessions (an admin's ``everyone``: all), open or lately ended."""
        return await self._reservations.sessions(principal, everyone)

    async def budget_left(self, principal: Principal) -> BudgetLeft | None:
        """The caller's budget and its use this period; None when none applies."""
        return await self._reservations.budget_left(principal)

    # --- hardware nodes ---------------------------------------------------------------------
    async def assign(self, backend: str, wait_s: float = 0.0,
                     node: str = "") -> Assignment | None:
        """Hand the next job for ``backend`` to a node, or None when there is none."""
        return await self._handover.assign(backend, wait_s, node)

    def give_back(self, assignment: Assignment) -> None:
        """The node's call ended before it received ``assignment``: the job is queued again."""
        self._handover.give_back(assignment)

    async def report(self, report: ExecutionReport, node: str = "") -> JobRecord:
        """Record a node's report; the same report twice is answered the same way."""
        return await self._handover.report(report, node)

    def accepts_result(self, job_id: str, handover: int | None = None) -> bool:
        """Whether a node may upload the job's result now to the key of ``handover``."""
        return self._handover.accepts_result(job_id, handover)

    async def refresh_upload_url(self, job_id: str, node: str = "",
                                 handover: int | None = None) -> SignedUrl:
        """A new upload URL for a job that is still RUNNING, for its current hand-over."""
        return await self._handover.refresh_upload_url(job_id, node, handover)

    async def heartbeat(self, job_id: str, node: str = "", handover: int | None = None) -> float:
        """A node still runs the job; returns the heartbeat timeout."""
        return await self._liveness.heartbeat(job_id, node, handover)

    def service_status(self, backend: str, principal: Principal) -> tuple[ServiceStatus, str]:
        """The backend's status and description for the caller's role."""
        return self._liveness.service_status(backend, principal)

    # --- for operators (metrics) and tests ------------------------------------------------------
    def node_snapshot(self) -> list[tuple[str, float]]:
        """(backend, seconds since a node asked it for work); the leader's only."""
        return self._liveness.node_snapshot()

    def queue_length(self, backend: str) -> int:
        """How many jobs wait for ``backend``."""
        return self._reads.queue_length(backend)

    def live_jobs(self) -> int:
        """How many jobs are QUEUED or RUNNING."""
        return self._reads.live_jobs()

    def queue_snapshot(self) -> list[tuple[str, int, int, int]]:
        """Each queue's (name, jobs, program bytes, waiting nodes)."""
        return self._reads.queue_snapshot()

    def reservations_snapshot(self) -> tuple[list[str], tuple[Booking, ...], tuple[Session, ...]]:
        """(known backends, bookings, sessions), for metrics; the leader's only."""
        turns = self._core.turns
        return ((self._core.backends.known(), turns.calendar.bookings, turns.sessions.sessions)
                if self.leads else ([], (), ()))

    def live(self, job_id: str) -> JobRecord | None:
        """The job if it is QUEUED or RUNNING in this process's memory."""
        return self._ledger.live(job_id)

    def waiting_nodes(self, backend: str) -> int:
        """How many nodes wait (long poll) for ``backend``'s work."""
        return self._ledger.waiting_nodes(backend)

    def deadlines_watched(self) -> int:
        """How many deadlines are watched."""
        return self._ledger.deadlines_watched()

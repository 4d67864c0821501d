"""Per-role limits and the quotas that enforce them, counted in memory on the event loop."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Mapping

from common.identity import Principal, Role
from message_manager import SchedulerError

# More than an assignment ever adds to a job's program and settings: its signed upload
# URL (an S3 one with a session token is about 1.5 KB) and the message's framing.
_MOST_ASSIGNMENT_OVERHEAD_BYTES = 16 * 1024


@dataclass(frozen=True)
class RoleLimits:
    """What one role may submit."""

    max_concurrent_jobs: int  # QUEUED + RUNNING jobs per token
    max_job_bytes: int  # size of the serialized SubmitJobRequest
    max_timeout_s: float | None = None  # longest declared job timeout; None: no cap


@dataclass(frozen=True)
class Limits:
    """Every limit the scheduler enforces on submissions."""

    by_role: Mapping[Role, RoleLimits]
    max_queue_bytes: int  # programs held in all queues together
    # The part of max_queue_bytes one token's queued programs may hold, so one user
    # cannot lock everyone else out.
    max_queue_share: float = 0.5
    max_shots: int | None = None  # None: no cap, as the original
    # The largest message a node is sent (the execution port's limit): a job whose
    # assignment would not fit is refused at submission, not stuck at hand-over.
    max_assignment_bytes: int | None = None


@dataclass(frozen=True)
class QuotaUsage:
    """What one owner holds of its quotas, beside the limits of its role."""

    live_jobs: int  # QUEUED + RUNNING
    max_live_jobs: int
    queued_bytes: int  # of its programs the queues hold
    max_queued_bytes: int  # its share of the queues
    all_queued_bytes: int  # every owner's, against SCHEDULER_MAX_QUEUE_BYTES


class Quotas:
    """Counts each token's live jobs and the bytes the queues hold."""

    def __init__(self, limits: Limits) -> None:
        self._limits = limits
        self._active: Counter[str] = Counter()
        self._queued_bytes: Counter[str] = Counter()  # per token
        self.queue_bytes = 0

    def check_timeout(self, role: Role, timeout_s: float) -> None:
        """Refuse a timeout that is not positive, or over the role's cap when one is set."""
        if timeout_s <= 0:
            raise SchedulerError("timeout_not_positive", value=f"{timeout_s:g} s")
        maximum_s = self._limits.by_role[role].max_timeout_s
        if maximum_s is not None and timeout_s > maximum_s:
            raise SchedulerError(
                "timeout_out_of_range",
                maximum_s=f"{maximum_s:g}",
                role=role.value,
                value=f"{timeout_s:g} s",
            )

    def check_shots(self, n_shots: int) -> None:
        """Refuse a shot count below 1, or over the cap when one is set."""
        maximum = self._limits.max_shots
        if n_shots < 1:
            raise SchedulerError("n_shots_not_positive", value=n_shots)
        if maximum is not None and n_shots > maximum:
            raise SchedulerError("n_shots_out_of_range", maximum=maximum, value=n_shots)

    def check_assignable(self, assignment_bytes: Callable[[], int], job_bytes: int) -> None:
        """Refuse a job whose assignment would be larger than a node may be sent.
        ``assignment_bytes`` (which signs an upload URL) is asked only when the job's own
        ``job_bytes`` with the largest URL and framing could pass the limit."""
        limit = self._limits.max_assignment_bytes
        if limit is None or job_bytes + _MOST_ASSIGNMENT_OVERHEAD_BYTES <= limit:
            return
        size = assignment_bytes()
        if size > limit:
            raise SchedulerError("job_too_large_to_assign", size=size, limit=limit)

    def reserve(self, principal: Principal, request_bytes: int, program_bytes: int) -> None:
        """Count a new job against its owner and the queues, or refuse it."""
        role_limits = self._limits.by_role[principal.role]
        if request_bytes > role_limits.max_job_bytes:
            raise SchedulerError(
                "job_too_large",
                size=request_bytes,
                role=principal.role.value,
                limit=role_limits.max_job_bytes,
            )
        count = self._active[principal.fingerprint]
        if count >= role_limits.max_concurrent_jobs:
            raise SchedulerError(
                "too_many_jobs",
                count=count,
                role=principal.role.value,
                limit=role_limits.max_concurrent_jobs,
            )
        if self.queue_bytes + program_bytes > self._limits.max_queue_bytes:
            raise SchedulerError("queue_full", limit=self._limits.max_queue_bytes)
        share = self.queue_share_bytes()
        held = self._queued_bytes[principal.fingerprint]
        if held + program_bytes > share:
            raise SchedulerError("queue_share_full", held=held, size=program_bytes, limit=share,
                                 total=self._limits.max_queue_bytes)
        self.count(principal.fingerprint, program_bytes)

    def count(self, owner_fingerprint: str, program_bytes: int) -> None:
        """Count a job without checking limits (jobs reloaded after a restart)."""
        self._active[owner_fingerprint] += 1
        self.rejoined_queue(owner_fingerprint, program_bytes)

    def rejoined_queue(self, owner_fingerprint: str, program_bytes: int) -> None:
        """A job's program is held by a queue (again, when its node never received it)."""
        self.queue_bytes += program_bytes
        self._queued_bytes[owner_fingerprint] += program_bytes

    def left_queue(self, owner_fingerprint: str, program_bytes: int) -> None:
        """A job's program is no longer held by a queue."""
        self.queue_bytes -= program_bytes
        self._queued_bytes[owner_fingerprint] -= program_bytes
        if self._queued_bytes[owner_fingerprint] <= 0:
            del self._queued_bytes[owner_fingerprint]

    def queued_bytes(self, owner_fingerprint: str) -> int:
        """The bytes of the owner's programs that queues hold."""
        return self._queued_bytes[owner_fingerprint]

    def ended(self, owner_fingerprint: str) -> None:
        """A job is no longer QUEUED or RUNNING."""
        self._active[owner_fingerprint] -= 1
        if self._active[owner_fingerprint] <= 0:
            del self._active[owner_fingerprint]

    def role_limits(self, role: Role) -> RoleLimits:
        """What ``role`` may submit."""
        return self._limits.by_role[role]

    def queue_share_bytes(self) -> int:
        """The most bytes of programs one token's queued jobs may hold."""
        return int(self._limits.max_queue_bytes * self._limits.max_queue_share)

    def active_jobs(self, owner_fingerprint: str) -> int:
        """The owner's QUEUED + RUNNING jobs."""
        return self._active[owner_fingerprint]

    def usage(self, owner_fingerprint: str, role: Role) -> QuotaUsage:
        """The owner's holdings and the limits of ``role``."""
        return QuotaUsage(
            live_jobs=self._active[owner_fingerprint],
            max_live_jobs=self._limits.by_role[role].max_concurrent_jobs,
            queued_bytes=self._queued_bytes[owner_fingerprint],
            max_queued_bytes=self.queue_share_bytes(),
            all_queued_bytes=self.queue_bytes)

"""The job record, its statuses, and who owns it."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import NamedTuple

from common.identity import Role, user_label


class JobStatus(StrEnum):
    """Where a job is in its life. The last four are final."""

    QUEUED = "QUEUED"  # accepted, stored, waiting in a queue
    RUNNING = "RUNNING"  # handed to a hardware node, waiting for its report
    COMPLETED = "COMPLETED"  # the node reported success and the result is stored
    FAILED = "FAILED"  # the node reported failure, or the job could not be run
    CANCELLED = "CANCELLED"  # the owner cancelled it while it was queued
    TIMEOUT = "TIMEOUT"  # the node reported a timeout, or never reported in time

    @property
    def is_final(self) -> bool:
        """True when the status can never change again."""
        return self not in (JobStatus.QUEUED, JobStatus.RUNNING)


_JOB_ID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def new_job_id() -> str:
    """A fresh, unguessable job id."""
    return str(uuid.uuid4())


def is_job_id(value: str) -> bool:
    """True when ``value`` is a UUID in text form, nothing before or after it."""
    return _JOB_ID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class BackendTimestamps:
    """The times a backend reports for the stages of its run."""

    compile_started_at: datetime | None = None
    compile_finished_at: datetime | None = None
    execution_started_at: datetime | None = None
    execution_finished_at: datetime | None = None


NO_BACKEND_TIMESTAMPS = BackendTimestamps()  # immutable, so every record may share it

# The record format this code writes and may change (docs/records.md). The original
# scheduler's records are format 0; a record of a higher format is read-only here.
RECORD_FORMAT = 1


@dataclass(frozen=True, slots=True)
class JobRecord:
    """Everything the scheduler keeps about one job (the program itself is in the PayloadStore).

    Records are immutable; a transition makes a new one with ``dataclasses.replace``.
    """

    job_id: str
    status: JobStatus
    backend: str
    owner_name: str
    owner_fingerprint: str
    role: Role
    # JobExecutionSettings as the backend will receive it (role filled in), serialized:
    # the scheduler reads only backend and timeout, and keeps the rest untouched.
    settings: bytes
    timeout_s: float
    input_size_bytes: int
    submitted_at: datetime
    queued_at: datetime
    sdk_version: str = ""
    save_job: bool = False
    idempotency_key: str = ""
    # SHA-256 of the keyed submission's request (scheduler/messages/validation.py): a
    # retry must match it. Empty without a key, and for keys claimed before digests were kept.
    request_digest: str = ""
    status_detail: str = ""
    dequeued_at: datetime | None = None
    finished_at: datetime | None = None
    backend_timestamps: BackendTimestamps = NO_BACKEND_TIMESTAMPS
    actual_backend: str = ""
    physical_lab_version: str = ""
    simulator_version: str = ""
    result_raw_size_bytes: int = 0
    result_encoded_size_bytes: int = 0
    node_identity: str = ""  # the mTLS identity of the node that took the job, when known
    cancelled_by: str = ""  # the fingerprint of the token that cancelled the job (docs/audit.md)
    # The owner's labels (job_manager/tags.py), sorted by key; the original's records have none.
    tags: tuple[tuple[str, str], ...] = ()
    # Times the job was queued again after its node vanished (SCHEDULER_MAX_REQUEUES).
    requeues: int = 0
    # The format the record was stored in; this code writes RECORD_FORMAT.
    format_version: int = RECORD_FORMAT

    @property
    def read_only(self) -> bool:
        """Stored by a newer scheduler in a format this one may read but never change."""
        return self.format_version > RECORD_FORMAT

    @property
    def owner_label(self) -> str:
        """The owner as logs name them."""
        return user_label(self.owner_name, self.owner_fingerprint)


class QueuedRow(NamedTuple):
    """A stored QUEUED record that holds no more than a fresh submission gives it, read
    lean for a recovery: the fields a queued job keeps, no JobRecord built (docs/design.md,
    "A queued job in memory"). Its record has submitted_at equal to queued_at and every
    field not named here empty."""

    job_id: str
    backend: str
    owner_name: str
    owner_fingerprint: str
    role: Role
    sdk_version: str
    save_job: bool
    settings: bytes
    timeout_s: float
    input_size_bytes: int
    queued_at: datetime

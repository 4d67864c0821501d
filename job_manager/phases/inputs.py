"""What the phases take from the servicers and give back: checked at the edge already."""

from __future__ import annotations

from dataclasses import dataclass, field

from job_manager.model import NO_BACKEND_TIMESTAMPS, BackendTimestamps, JobRecord, JobStatus
from job_manager.queue import QueuedJob
from job_manager.stores import SignedUrl
from job_manager.tags import Tags


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
    session_id: str = ""  # x-mqc3-session: the caller's open session it names, if any


@dataclass(frozen=True)
class Assignment:
    """A job handed to a hardware node."""

    record: JobRecord
    upload: SignedUrl
    queued: QueuedJob = field(repr=False)  # its place in the queue, should it come back

    @property
    def program(self) -> bytes:
        program = self.queued.program
        assert program is not None  # read before the hand-over (HandOver._load_program)
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

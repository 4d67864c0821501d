"""Fields checked at the edge, before anything reaches the JobManager or a store."""

from __future__ import annotations

import hashlib
import re
import sys
from contextvars import ContextVar

import grpc
from google.protobuf.duration_pb2 import Duration

from common.identity import Principal
from common.timestamps import MAX_NANOS
from job_manager.manager import JobSpec
from job_manager.tags import Tags, parse_tags
from message_manager import SchedulerError
from pb.mqc3_cloud.program.v1 import quantum_program_pb2 as program_pb2
from pb.mqc3_cloud.scheduler.v1 import job_pb2, submission_pb2
from scheduler.messages.metadata import metadata_value

MAX_SDK_VERSION_CHARS = 64
IDEMPOTENCY_METADATA = "x-mqc3-idempotency-key"
TAGS_METADATA = "x-mqc3-tags"  # k1=v1,k2=v2 (job_manager/tags.py)
SESSION_METADATA = "x-mqc3-session"  # the caller's open session the job is for (optional)
MAX_IDEMPOTENCY_KEY_CHARS = 128
_IDEMPOTENCY_KEY = re.compile(rf"^[\x21-\x7e]{{1,{MAX_IDEMPOTENCY_KEY_CHARS}}}$")

# Each representation format and the payload field that must carry it.
_PAYLOAD_OF_FORMAT = {
    program_pb2.REPRESENTATION_FORMAT_CIRCUIT: "circuit",
    program_pb2.REPRESENTATION_FORMAT_GRAPH: "graph",
    program_pb2.REPRESENTATION_FORMAT_MACHINERY: "machinery",
}


def _enum_name(enum: object, value: int) -> str:
    try:
        return str(enum.Name(value))  # type: ignore[attr-defined]
    except ValueError:
        return str(value)


def _check_program(program: program_pb2.QuantumProgram) -> None:
    payload = program.WhichOneof("payload")
    if program.format not in _PAYLOAD_OF_FORMAT or _PAYLOAD_OF_FORMAT[program.format] != payload:
        allowed = ", ".join(
            f"{_enum_name(program_pb2.RepresentationFormat, f)} with {p}"
            for f, p in _PAYLOAD_OF_FORMAT.items()
        )
        raise SchedulerError(
            "program_format_mismatch",
            format=_enum_name(program_pb2.RepresentationFormat, program.format),
            payload=payload or "none",
            allowed=allowed,
        )


_STATE_SAVE_POLICIES = frozenset(job_pb2.JobStateSavePolicy.values())


def _check_settings(settings: job_pb2.JobExecutionSettings) -> None:
    if settings.state_save_policy not in _STATE_SAVE_POLICIES:
        raise SchedulerError(
            "state_save_policy_unknown",
            allowed=", ".join(job_pb2.JobStateSavePolicy.keys()),
            value=settings.state_save_policy,
        )


# The key a replica gave a SubmitJob it passed on to the leader
# (scheduler/replication/forwarding.py):
# should this replica then take the call itself (the leader died and it leads now), the
# call goes on under that key, so the job the dead leader may have made is the one
# answered, never a second (docs/replicas.md).
KEY_GIVEN: ContextVar[str | None] = ContextVar("key_given", default=None)


def idempotency_key(context: grpc.aio.ServicerContext) -> str:
    """The submission's idempotency key from gRPC metadata, checked; "" when none was sent
    (or the key this replica gave it when it passed the call on)."""
    key = metadata_value(context, IDEMPOTENCY_METADATA) or KEY_GIVEN.get()
    if key is None:
        return ""
    if not _IDEMPOTENCY_KEY.match(key):
        raise SchedulerError("idempotency_key_invalid", header=IDEMPOTENCY_METADATA,
                             maximum=MAX_IDEMPOTENCY_KEY_CHARS)
    return key


def submitted_tags(context: grpc.aio.ServicerContext) -> Tags:
    """The submission's tags from gRPC metadata, checked; none when none were sent."""
    return parse_tags(metadata_value(context, TAGS_METADATA) or "")


def named_session(context: grpc.aio.ServicerContext) -> str:
    """The session a submission names in its metadata ("" when none); checked against the
    caller's open sessions by the JobManager (job_manager/phases/submission.py)."""
    return metadata_value(context, SESSION_METADATA) or ""


def request_digest(request: submission_pb2.SubmitJobRequest, tags: Tags) -> str:
    """What a retry under the same idempotency key must repeat: the job as sent (backend,
    settings, program), its options and its tags; not the token (the key is the token's
    own) nor the SDK's version."""
    digest = hashlib.sha256()
    for part in (request.job.SerializeToString(deterministic=True),
                 request.options.SerializeToString(deterministic=True),
                 "\n".join(f"{key}={value}" for key, value in tags).encode()):
        digest.update(len(part).to_bytes(8, "big"))  # length first: no two splits alike
        digest.update(part)
    return digest.hexdigest()


def well_formed(duration: Duration) -> bool:
    """Whether a Duration's parts agree: nanos within a second, of the seconds' sign (its
    seconds may be any int64 the wire carries)."""
    return bool(-MAX_NANOS <= duration.nanos <= MAX_NANOS
                and duration.seconds * duration.nanos >= 0)


def job_spec(request: submission_pb2.SubmitJobRequest, principal: Principal,
             idempotency_key: str = "", tags: Tags = (), session_id: str = "") -> JobSpec:
    """The submission as the JobManager takes it; role-dependent limits are checked there."""
    if len(request.sdk_version) > MAX_SDK_VERSION_CHARS:
        raise SchedulerError(
            "sdk_version_too_long", maximum=MAX_SDK_VERSION_CHARS, length=len(request.sdk_version)
        )
    if not request.job.HasField("program"):
        raise SchedulerError("program_missing")
    _check_program(request.job.program)
    settings = job_pb2.JobExecutionSettings()
    settings.CopyFrom(request.job.settings)
    _check_settings(settings)
    # The role comes from the token; whatever the request said is replaced.
    settings.role = principal.role.value
    timeout = settings.timeout
    if not well_formed(timeout):
        raise SchedulerError("timeout_malformed")
    return JobSpec(
        # Interned: 100,000 queued jobs then share a handful of backend and version strings.
        backend=sys.intern(settings.backend),
        settings=settings.SerializeToString(),
        timeout_s=timeout.seconds + timeout.nanos / 1e9,
        n_shots=settings.n_shots,
        program=request.job.program.SerializeToString(),
        request_bytes=request.ByteSize(),
        sdk_version=sys.intern(request.sdk_version),
        save_job=request.options.save_job,
        idempotency_key=idempotency_key,
        request_digest=request_digest(request, tags) if idempotency_key else "",
        tags=tags,
        session_id=session_id,
    )

"""Job records → the protocol's messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from job_manager.model import JobRecord, JobStatus
from job_manager.stores import SignedUrl
from pb.mqc3_cloud.scheduler.v1 import job_pb2
from scheduler.version import __version__

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

JOB_STATUS = {
    JobStatus.QUEUED: job_pb2.JOB_STATUS_QUEUED,
    JobStatus.RUNNING: job_pb2.JOB_STATUS_RUNNING,
    JobStatus.COMPLETED: job_pb2.JOB_STATUS_COMPLETED,
    JobStatus.FAILED: job_pb2.JOB_STATUS_FAILED,
    JobStatus.CANCELLED: job_pb2.JOB_STATUS_CANCELLED,
    JobStatus.TIMEOUT: job_pb2.JOB_STATUS_TIMEOUT,
}


def timestamp(value: datetime) -> Timestamp:
    """A protobuf Timestamp of an aware datetime."""
    stamp = Timestamp()
    _set_time(stamp, value)
    return stamp


def duration(seconds: float) -> Duration:
    """A protobuf Duration of ``seconds`` (to the microsecond)."""
    message = Duration()
    message.FromTimedelta(timedelta(seconds=seconds))
    return message


def _set_time(stamp: Timestamp, value: datetime) -> None:
    """``stamp`` = ``value`` (naive: UTC), as Timestamp.FromDatetime does, without its
    calendar arithmetic: every status poll sets up to eight of them."""
    since = (value if value.tzinfo is not None else value.replace(tzinfo=UTC)) - _EPOCH
    stamp.seconds = since.days * 86_400 + since.seconds
    stamp.nanos = since.microseconds * 1000


def execution_details(record: JobRecord) -> job_pb2.JobExecutionDetails:
    """Versions and every timestamp known for the job."""
    details = job_pb2.JobExecutionDetails()
    details.version.scheduler_version = __version__
    details.version.physical_lab_version = record.physical_lab_version
    details.version.simulator_version = record.simulator_version
    stamps = details.timestamps
    own = record.backend_timestamps
    for name, value in (
        ("submitted_at", record.submitted_at),
        ("queued_at", record.queued_at),
        ("dequeued_at", record.dequeued_at),
        ("compile_started_at", own.compile_started_at),
        ("compile_finished_at", own.compile_finished_at),
        ("execution_started_at", own.execution_started_at),
        ("execution_finished_at", own.execution_finished_at),
        ("finished_at", record.finished_at),
    ):
        if value is not None:
            _set_time(getattr(stamps, name), value)
    return details


def upload_target(url: SignedUrl) -> job_pb2.JobResultUploadTarget:
    """Where a node uploads a result."""
    return job_pb2.JobResultUploadTarget(upload_url=url.url, expires_at=timestamp(url.expires_at))


def job_result(url: SignedUrl) -> job_pb2.JobResult:
    """Where a user downloads a result."""
    return job_pb2.JobResult(result_url=url.url, expires_at=timestamp(url.expires_at))

"""The records the original scheduler writes to DynamoDB, read (and, for the way back, written).

The original keeps one item per job with the raw token in ``token``, the status as the
enum's name, times as ISO text in the service's local offset (+09:00), unset times as
NULL or as the epoch (``1970-01-01T09:00:00+09:00``), the timeout in ``max_elapsed_s``,
the execution settings spread over separate attributes, and ``job_expiry`` as ISO text.
This scheduler reads such an item as a JobRecord (the owner is the fingerprint of the
token, which is never kept further) and, at its first write, replaces the whole item with
its own form, so no raw token survives a transition. See docs/migrating.md; its records
are format 0 (ORIGINAL_FORMAT) in docs/records.md.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from common.identity import Role, fingerprint
from job_manager.model import BackendTimestamps, JobRecord, JobStatus
from pb.mqc3_cloud.scheduler.v1 import job_pb2

SCHEDULER_VERSION = "1.0.0"  # what the original writes in scheduler_version
ORIGINAL_FORMAT = 0  # the format_version of a record read from the original's item
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_LARGEST_TIMEOUT_NS = (2**63 - 1) * 1_000_000_000 + 999_999_999
_BACKEND_TIMES = ("compile_started_at", "compile_finished_at", "execution_started_at",
                  "execution_finished_at")


def is_original(item: Mapping[str, Any]) -> bool:
    """Whether a (deserialized) item is in the original's form rather than this scheduler's."""
    return "owner_fingerprint" not in item and ("token" in item or "requested_backend" in item)


def _text(item: Mapping[str, Any], name: str) -> str:
    value = item.get(name)
    return "" if value is None else str(value)


def _number(item: Mapping[str, Any], name: str) -> Decimal:
    value = item.get(name)
    return Decimal(0) if value is None else Decimal(str(value))


def _time(item: Mapping[str, Any], name: str) -> datetime | None:
    """A time the original wrote, or None for NULL, empty or the epoch (its 'unset')."""
    text = _text(item, name)
    if not text:
        return None
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        raise ValueError(f"{name} {text!r} has no UTC offset")
    return None if moment == _EPOCH else moment


def _required_time(item: Mapping[str, Any], name: str) -> datetime:
    moment = _time(item, name)
    if moment is None:
        raise ValueError(f"{name} is missing")
    return moment


def _status(item: Mapping[str, Any]) -> JobStatus:
    name = _text(item, "status").removeprefix("JOB_STATUS_")
    try:
        return JobStatus(name)
    except ValueError:
        raise ValueError(f"status {name!r} is not a job status") from None


def _settings(item: Mapping[str, Any], backend: str, timeout_s: Decimal, role: Role) -> bytes:
    """JobExecutionSettings as the original hands them to a node, from the item's attributes."""
    policy = "JOB_STATE_SAVE_POLICY_" + (_text(item, "state_save_policy") or "UNSPECIFIED")
    settings = job_pb2.JobExecutionSettings(
        backend=backend,
        n_shots=int(_number(item, "n_shots")),
        state_save_policy=job_pb2.JobStateSavePolicy.Value(policy),
        resource_squeezing_level=float(_number(item, "resource_squeezing_level")),
        role=role.value,
    )
    # At most the largest Duration: an original that kept the timeout as a float may hold
    # a little more than the int64 seconds it was sent (docs/job-rules.md, rule 18).
    settings.timeout.FromNanoseconds(min(int(timeout_s * 1_000_000_000), _LARGEST_TIMEOUT_NS))
    encoded: bytes = settings.SerializeToString(deterministic=True)
    return encoded


def decode_original(item: Mapping[str, Any]) -> JobRecord:
    """The JobRecord of an original item; ValueError or KeyError says what is wrong."""
    token = _text(item, "token")
    if not token:
        raise ValueError("token is missing, so the job's owner is unknown")
    backend = _text(item, "requested_backend")
    if not backend:
        raise ValueError("requested_backend is missing")
    role = Role(_text(item, "role"))
    timeout_s = _number(item, "max_elapsed_s")
    return JobRecord(
        job_id=_text(item, "job_id"),
        status=_status(item),
        backend=backend,
        owner_name="",  # the original keeps no name; logs show the fingerprint's label
        owner_fingerprint=fingerprint(token),
        role=role,
        settings=_settings(item, backend, timeout_s, role),
        timeout_s=float(timeout_s),
        input_size_bytes=0,  # not kept by the original; known once the program is read
        sdk_version=_text(item, "sdk_version"),
        save_job=bool(item.get("save_job") or False),
        status_detail=_text(item, "status_message"),
        submitted_at=_required_time(item, "submitted_at"),
        queued_at=_required_time(item, "queued_at"),
        dequeued_at=_time(item, "dequeued_at"),
        finished_at=_time(item, "finished_at"),
        backend_timestamps=BackendTimestamps(**{n: _time(item, n) for n in _BACKEND_TIMES}),
        actual_backend=_text(item, "actual_backend_name"),
        physical_lab_version=_text(item, "physical_lab_version"),
        simulator_version=_text(item, "simulator_version"),
        result_raw_size_bytes=int(_number(item, "raw_size_bytes")),
        result_encoded_size_bytes=int(_number(item, "encoded_size_bytes")),
        format_version=ORIGINAL_FORMAT,
    )


def encode_original(record: JobRecord, token: str, expiry: datetime) -> dict[str, Any]:
    """A QUEUED job as the original's item, for the way back (``token``: what it will match).

    The original matches owners by raw token, which this scheduler never keeps; the
    caller chooses what to write there (see docs/migrating.md).
    """
    if record.status is not JobStatus.QUEUED:
        raise ValueError(f"job {record.job_id} is {record.status.value}; only QUEUED jobs go back")
    settings = job_pb2.JobExecutionSettings.FromString(record.settings)
    if not math.isfinite(settings.resource_squeezing_level):
        raise ValueError(f"job {record.job_id}: a resource_squeezing_level of "
                         f"{settings.resource_squeezing_level} is no number DynamoDB can hold")
    unset = None
    return {
        "job_id": record.job_id,
        "token": token,
        "role": record.role.value,
        "status": record.status.value,
        "requested_backend": record.backend,
        "actual_backend_name": unset,
        "n_shots": settings.n_shots,
        # Exact, from the Duration as sent: the float timeout_s rounds past int64 seconds.
        "max_elapsed_s": (Decimal(settings.timeout.seconds)
                          + Decimal(settings.timeout.nanos).scaleb(-9)),
        "state_save_policy": job_pb2.JobStateSavePolicy.Name(
            settings.state_save_policy).removeprefix("JOB_STATE_SAVE_POLICY_"),
        "resource_squeezing_level": Decimal(str(settings.resource_squeezing_level)),
        "save_job": record.save_job,
        "sdk_version": record.sdk_version,
        "scheduler_version": SCHEDULER_VERSION,
        "status_code": "",
        "status_message": "",
        "submitted_at": _original_time(record.submitted_at),
        "queued_at": _original_time(record.queued_at),
        "dequeued_at": unset,
        "finished_at": unset,
        **{name: unset for name in _BACKEND_TIMES},
        "physical_lab_version": unset,
        "quantum_computer_version": unset,
        "simulator_version": unset,
        "raw_size_bytes": unset,
        "encoded_size_bytes": unset,
        "job_expiry": _original_time(expiry),
    }


def _original_time(moment: datetime) -> str:
    return moment.isoformat(timespec="microseconds")

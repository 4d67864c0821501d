"""JobRecord ⇄ a flat mapping of strings, integers and booleans, shared by both job stores.

Every row carries ``format_version``; a transition writes only the attributes that
differ between the record before and after it (:func:`changes`), so attributes this
code does not know survive it (docs/records.md).
"""

from __future__ import annotations

import base64
import json
from dataclasses import fields
from datetime import datetime
from typing import Any, Callable, Mapping

from common.identity import Role
from job_manager.model import (
    NO_BACKEND_TIMESTAMPS,
    RECORD_FORMAT,
    BackendTimestamps,
    JobRecord,
    JobStatus,
    QueuedRow,
)

Row = dict[str, str | int | bool]

_TIME_FIELDS = ("submitted_at", "queued_at", "dequeued_at", "finished_at")
_BACKEND_TIME_FIELDS = tuple(f.name for f in fields(BackendTimestamps))


def _time_to_text(value: datetime) -> str:
    return value.isoformat(timespec="microseconds")


def encode(record: JobRecord) -> Row:
    """The record as a flat row, in this code's format; empty optional fields are left out."""
    row: Row = {
        "format_version": RECORD_FORMAT,
        "job_id": record.job_id,
        "status": record.status.value,
        "backend": record.backend,
        "owner_name": record.owner_name,
        "owner_fingerprint": record.owner_fingerprint,
        "role": record.role.value,
        "settings": base64.b64encode(record.settings).decode(),
        "timeout_ms": round(record.timeout_s * 1000),
        "input_size_bytes": record.input_size_bytes,
        "save_job": record.save_job,
        "result_raw_size_bytes": record.result_raw_size_bytes,
        "result_encoded_size_bytes": record.result_encoded_size_bytes,
    }
    for name in (
        "sdk_version",
        "idempotency_key",
        "request_digest",
        "status_detail",
        "actual_backend",
        "physical_lab_version",
        "simulator_version",
        "node_identity",
        "cancelled_by",
    ):
        text = getattr(record, name)
        if text:
            row[name] = text
    if record.requeues:
        row["requeues"] = record.requeues
    if record.tags:
        row["tags"] = json.dumps(dict(record.tags), separators=(",", ":"), sort_keys=True)
    for name in _TIME_FIELDS:
        value = getattr(record, name)
        if value is not None:
            row[name] = _time_to_text(value)
    for name in _BACKEND_TIME_FIELDS:
        value = getattr(record.backend_timestamps, name)
        if value is not None:
            row[name] = _time_to_text(value)
    return row


# Enum members by value: a dict lookup, several times cheaper than calling the enum (a
# recovery decodes every queued record).
_STATUSES = {status.value: status for status in JobStatus}
_ROLES = {role.value: role for role in Role}


def decode(row: Mapping[str, Any]) -> JobRecord:
    """The record a row of :func:`encode` came from; attributes it does not know are ignored.

    A row with no ``format_version`` was written before rows had one: format 1.
    """

    def time_of(name: str) -> datetime | None:
        text = row.get(name)
        return datetime.fromisoformat(text) if text else None

    def required_time(name: str) -> datetime:
        value = time_of(name)
        if value is None:
            raise ValueError(f"job record {row.get('job_id')} has no {name}")
        return value

    return JobRecord(
        job_id=str(row["job_id"]),
        status=_STATUSES.get(row["status"]) or JobStatus(row["status"]),
        backend=str(row["backend"]),
        owner_name=str(row["owner_name"]),
        owner_fingerprint=str(row["owner_fingerprint"]),
        role=_ROLES.get(row["role"]) or Role(row["role"]),
        settings=base64.b64decode(str(row["settings"])),
        timeout_s=int(row["timeout_ms"]) / 1000,
        input_size_bytes=int(row["input_size_bytes"]),
        save_job=bool(row.get("save_job", False)),
        sdk_version=str(row.get("sdk_version", "")),
        idempotency_key=str(row.get("idempotency_key", "")),
        request_digest=str(row.get("request_digest", "")),
        status_detail=str(row.get("status_detail", "")),
        actual_backend=str(row.get("actual_backend", "")),
        physical_lab_version=str(row.get("physical_lab_version", "")),
        simulator_version=str(row.get("simulator_version", "")),
        result_raw_size_bytes=int(row.get("result_raw_size_bytes", 0)),
        result_encoded_size_bytes=int(row.get("result_encoded_size_bytes", 0)),
        node_identity=str(row.get("node_identity", "")),
        cancelled_by=str(row.get("cancelled_by", "")),
        tags=_tags(row.get("tags")),
        requeues=int(row.get("requeues", 0)),
        format_version=int(row.get("format_version", 1)),
        submitted_at=required_time("submitted_at"),
        queued_at=required_time("queued_at"),
        dequeued_at=time_of("dequeued_at"),
        finished_at=time_of("finished_at"),
        backend_timestamps=_backend_timestamps(row, time_of),
    )


def changes(before: Mapping[str, Any], after: Mapping[str, Any]) -> tuple[Row, list[str]]:
    """What turns row ``before`` into row ``after``: the attributes to set, and those to
    remove. Attributes in neither (a newer scheduler's) are not touched."""
    to_set: Row = {name: value for name, value in after.items() if before.get(name) != value}
    return to_set, [name for name in before if name not in after]


# The fields a row of a fresh submission may have.
PLAIN_FIELDS = frozenset({
    "job_id", "status", "backend", "owner_name", "owner_fingerprint", "role", "settings",
    "timeout_ms", "input_size_bytes", "save_job", "sdk_version", "result_raw_size_bytes",
    "result_encoded_size_bytes", "submitted_at", "queued_at", "format_version"})


def decode_lean(row: Mapping[str, Any]) -> QueuedRow | None:
    """A QUEUED row as a QueuedRow, or None when it must be decoded whole: the record
    :func:`decode` would give holds more than a fresh submission's (a field beyond the
    plain ones, a result size, a submission time of its own). Each field is converted as
    :func:`decode` converts it, so the row's record is the one decode gives; a row decode
    refuses raises here too."""
    if not (row.keys() <= PLAIN_FIELDS and row["submitted_at"] == row["queued_at"]
            and int(row.get("format_version", 1)) == RECORD_FORMAT
            and int(row.get("result_raw_size_bytes", 0)) == 0
            and int(row.get("result_encoded_size_bytes", 0)) == 0):
        return None
    return queued_row(
        row["job_id"], row["backend"], row["owner_name"], row["owner_fingerprint"],
        row["role"], row.get("sdk_version", ""), row.get("save_job", False), row["settings"],
        row["timeout_ms"], row["input_size_bytes"], row["queued_at"])


def queued_row(job_id: Any, backend: Any, owner_name: Any, owner_fingerprint: Any, role: Any,
               sdk_version: Any, save_job: Any, settings: Any, timeout_ms: Any,
               input_size_bytes: Any, queued_at: Any) -> QueuedRow:
    """A plain row's stored values as a QueuedRow, each converted as :func:`decode`
    converts it (ValueError or TypeError where decode would raise them too). The
    SQLite store gives the values as SQLite read them out of the record (a
    recovery's page, sqlite_job_store.py)."""
    return QueuedRow(
        str(job_id), str(backend), str(owner_name), str(owner_fingerprint),
        _ROLES.get(role) or Role(role), str(sdk_version), bool(save_job),
        base64.b64decode(str(settings)), int(timeout_ms) / 1000, int(input_size_bytes),
        datetime.fromisoformat(queued_at))


def _backend_timestamps(row: Mapping[str, Any],
                        time_of: Callable[[str], datetime | None]) -> BackendTimestamps:
    """The node's timestamps; a job no node reported on (every queued one) shares the
    empty value, so a recovery of many jobs builds none."""
    if not any(row.get(name) for name in _BACKEND_TIME_FIELDS):
        return NO_BACKEND_TIMESTAMPS
    return BackendTimestamps(**{name: time_of(name) for name in _BACKEND_TIME_FIELDS})


def _tags(text: Any) -> tuple[tuple[str, str], ...]:
    if not text:
        return ()
    pairs = json.loads(str(text))
    if not isinstance(pairs, dict):
        raise ValueError("tags is not a JSON object")
    return tuple(sorted((str(key), str(value)) for key, value in pairs.items()))

"""Reading a call's gRPC metadata."""

from __future__ import annotations

import re

import grpc

from message_manager import SchedulerError


def _sent(context: grpc.aio.ServicerContext, name: str) -> list[str]:
    """Every value the request's metadata has for ``name``, as text, in the order sent."""
    return [value.decode(errors="replace") if isinstance(value, bytes) else str(value)
            for key, value in context.invocation_metadata() or () if key == name]


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str | None:
    """A request's metadata value (text), or None when it was not sent; SchedulerError
    ``metadata_repeated`` when it was sent more than once: which one the caller meant is
    not the scheduler's to guess (docs/protocol.md, "Metadata")."""
    values = _sent(context, name)
    if len(values) > 1:
        raise SchedulerError("metadata_repeated", header=name, times=len(values))
    return values[0] if values else None


REQUEST_ID_METADATA = "x-request-id"  # the caller's name for a call, logged on each line of it
REASON_METADATA = "x-mqc3-reason"  # a refusal's stable reason (docs/errors.md)
INCIDENT_METADATA = "x-mqc3-incident"  # the incident id an answer and its log line share
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's request id when it is one, of 1 to 64 ``A-Z a-z 0-9 . _ : -``, else None
    (what a caller sent that is not is never echoed, nor written into a log)."""
    sent = _sent(context, REQUEST_ID_METADATA)  # sent twice: as if not valid
    return sent[0] if len(sent) == 1 and _REQUEST_ID.fullmatch(sent[0]) else None

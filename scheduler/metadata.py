"""Reading a call's gRPC metadata."""

from __future__ import annotations

import re

import grpc


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str | None:
    """A request's metadata value (text), or None when it was not sent."""
    value = dict(context.invocation_metadata() or ()).get(name)
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


REQUEST_ID_METADATA = "x-request-id"  # the caller's name for a call, logged on each line of it
REASON_METADATA = "x-mqc3-reason"  # a refusal's stable reason (docs/errors.md)
INCIDENT_METADATA = "x-mqc3-incident"  # the incident id an answer and its log line share
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def request_id(context: grpc.aio.ServicerContext) -> str | None:
    """The caller's request id when it is 1 to 64 of ``A-Z a-z 0-9 . _ : -``, else None
    (what a caller sent that is not is never echoed, nor written into a log)."""
    sent = metadata_value(context, REQUEST_ID_METADATA)
    return sent if sent is not None and _REQUEST_ID.fullmatch(sent) else None

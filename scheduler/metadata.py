"""Reading a call's gRPC metadata."""

from __future__ import annotations

import grpc


def metadata_value(context: grpc.aio.ServicerContext, name: str) -> str | None:
    """A request's metadata value (text), or None when it was not sent."""
    value = dict(context.invocation_metadata() or ()).get(name)
    if value is None:
        return None
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)

"""Connections to the HTTP side that cannot take the service down.

The HTTP endpoint (results in standalone mode, /metrics and /healthz) faces whoever can
reach it. Without bounds, a client that opens connections and sends half a request
keeps each one, and a thousand of them use up the process's file descriptors: then the
gRPC services fail too. So every connection is wrapped: at most ``max_connections``
at once (more are closed at once), and one that has not sent its request line and
headers within ``header_timeout_s`` is closed. Keep-alive is off, so one connection
carries one request; a request's body has its own idle timeout in the handler.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

END_OF_HEADERS = b"\r\n\r\n"


class ConnectionGuard:
    """A protocol factory around aiohttp's, bounding connections and their header time."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], max_connections: int,
                 header_timeout_s: float) -> None:
        self._factory = factory
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.open = 0
        self.refused = 0  # over the cap
        self.timed_out = 0  # no headers in time

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self._factory())


class _Guarded(asyncio.Protocol):
    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, to find the end of headers across reads
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        guard = self._guard
        if guard.open >= guard.max_connections:
            guard.refused += 1
            transport.abort()
            return
        guard.open += 1
        self._counted = True
        self._timer = asyncio.get_running_loop().call_later(guard.header_timeout_s, self._late)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if END_OF_HEADERS in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-(len(END_OF_HEADERS) - 1):]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._counted:
            self._guard.open -= 1
            self._counted = False
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def _late(self) -> None:
        self._timer = None
        self._guard.timed_out += 1
        if self._transport is not None:
            self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # anything else aiohttp asks of its protocol
        return getattr(self._inner, name)

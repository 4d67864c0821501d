"""Connections to the HTTP side that cannot take the service down.

The HTTP endpoint (results in standalone mode, /metrics and /healthz) faces whoever can
reach it. Without bounds, a client that opens connections and sends half a request
keeps each one, and a thousand of them use up the process's file descriptors: then the
gRPC services fail too. So every connection is wrapped: at most ``max_connections``
at once, and one that has not sent its request line and headers within
``header_timeout_s`` is closed. Keep-alive is off, so one connection carries one
request; a request's body has its own idle timeout in the handler.

One address must not hold the cap alone, or a client that reconnects the moment it is
closed keeps nodes' uploads and health probes out (issue 26). So one address holds at
most ``max_per_address`` connections, and when the cap is full a newcomer from an
address that holds fewer than the largest holder takes the place of that holder's
oldest connection still sending its headers (a request being served is never cut
off). A refused or displaced connection is answered 503 with the reason, then closed.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)

END_OF_HEADERS = b"\r\n\r\n"
IPV6_SUBSCRIBER_PREFIX = 64  # one IPv6 client usually holds a whole /64


def _answer(reason: str) -> bytes:
    body = f"{reason}; try again shortly\n".encode()
    return (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\n"
            b"Retry-After: 1\r\nConnection: close\r\nContent-Length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


OVER_ADDRESS_SHARE = _answer("too many connections from your address")
FULL = _answer("too many connections")


def peer_key(peername: object) -> str:
    """The address a connection counts against: its IPv4 address, or its IPv6 /64."""
    if not isinstance(peername, tuple) or not peername:
        return ""
    try:
        address = ipaddress.ip_address(peername[0])
    except ValueError:
        return str(peername[0])
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, IPV6_SUBSCRIBER_PREFIX), strict=False))
    return str(address)


class ConnectionGuard:
    """A protocol factory around aiohttp's, bounding connections, per address and in all,
    and their header time."""

    def __init__(self, factory: Callable[[], asyncio.Protocol], max_connections: int,
                 header_timeout_s: float, max_per_address: int | None = None) -> None:
        self._factory = factory
        self.max_connections = max_connections
        # Unset: half the cap, so one address always leaves the other half to the rest.
        self.max_per_address = min(max_per_address or max(1, max_connections // 2),
                                   max_connections)
        self.header_timeout_s = header_timeout_s
        self.open = 0
        self.refused = 0  # over the cap or the address's share
        self.displaced = 0  # made room for an address that held fewer
        self.timed_out = 0  # no headers in time
        self._held: dict[str, int] = {}  # address → open connections
        # address → its connections still sending their headers, oldest first
        self._waiting: dict[str, dict[_Guarded, None]] = {}

    def __call__(self) -> asyncio.Protocol:
        return _Guarded(self, self._factory())

    def admit(self, connection: _Guarded) -> bytes | None:
        """Count ``connection`` in; None, or the answer that refuses it."""
        address = connection.address
        held = self._held.get(address, 0)
        if held >= self.max_per_address:
            self.refused += 1
            return OVER_ADDRESS_SHARE
        if self.open >= self.max_connections and not self._displace_for(held):
            self.refused += 1
            return FULL
        self.open += 1
        self._held[address] = held + 1
        self._waiting.setdefault(address, {})[connection] = None
        return None

    def headers_done(self, connection: _Guarded) -> None:
        """``connection`` sent its headers: it is served now, never displaced."""
        waiting = self._waiting.get(connection.address)
        if waiting is not None:
            waiting.pop(connection, None)
            if not waiting:
                del self._waiting[connection.address]

    def headers_late(self) -> None:
        """A connection sent no headers within the timeout; it is closed."""
        self.timed_out += 1

    def release(self, connection: _Guarded) -> None:
        """``connection`` is closed (or about to be): it no longer counts."""
        self.headers_done(connection)
        self.open -= 1
        left = self._held[connection.address] - 1
        if left:
            self._held[connection.address] = left
        else:
            del self._held[connection.address]

    def _displace_for(self, held: int) -> bool:
        """Close the oldest connection still sending its headers of the address that holds
        the most, when that is more than one above ``held``; whether one was closed."""
        if not self._waiting:
            return False
        top = max(self._waiting, key=self._held.__getitem__)
        if self._held[top] <= held + 1:
            return False  # taking its place would only swap who holds more
        self.displaced += 1
        next(iter(self._waiting[top])).refuse(FULL)
        return True


class _Guarded(asyncio.Protocol):
    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._inner = inner
        self.address = ""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""  # the last bytes seen, to find the end of headers across reads
        self._counted = False  # counted by the guard
        self._served = False  # handed to the inner protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self.address = peer_key(transport.get_extra_info("peername"))
        refusal = self._guard.admit(self)
        if refusal is not None:
            _refuse(transport, refusal)
            return
        self._counted = self._served = True
        self._timer = asyncio.get_running_loop().call_later(self._guard.header_timeout_s,
                                                            self._late)
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if END_OF_HEADERS in seen:
                self._stop_timer()
                self._guard.headers_done(self)
            else:
                self._tail = seen[-(len(END_OF_HEADERS) - 1):]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._uncount()
        if self._served:
            self._served = False
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def refuse(self, answer: bytes) -> None:
        """Answer ``answer`` and close, counted out at once (connection_lost comes later)."""
        self._stop_timer()
        self._uncount()
        if self._transport is not None:
            _refuse(self._transport, answer)

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            self._guard.release(self)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _late(self) -> None:
        self._timer = None
        self._guard.headers_late()
        self._uncount()
        if self._transport is not None:
            self._transport.abort()

    def __getattr__(self, name: str) -> Any:  # anything else aiohttp asks of its protocol
        return getattr(self._inner, name)


def _refuse(transport: asyncio.Transport, answer: bytes) -> None:
    transport.write(answer)
    transport.close()  # after the answer is written; the request is never read

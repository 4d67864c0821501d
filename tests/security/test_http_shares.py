"""Each address's share of an HTTP port's connections, and who makes room when the port is
full (scheduler/access/http_guard.py; issue 26, point 5). In process, over real sockets: the
squatters connect from 127.0.0.2, the others from 127.0.0.1."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from scheduler.access.http_guard import ConnectionGuard, peer_key
from tests.integration.processes import HOST
from tests.operations.support import until

SQUATTER = "127.0.0.2"
HALF_REQUEST = b"GET /slow HTTP/1.1\r\nHost: x\r\nAcc"
SLOW_REQUEST = b"GET /slow HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


class Port:
    """A guarded aiohttp server whose /slow answers once ``release`` is set."""

    def __init__(self, guard: ConnectionGuard, port: int, release: asyncio.Event) -> None:
        self.guard = guard
        self.port = port
        self.release = release
        self.connections: list[asyncio.StreamWriter] = []

    async def connect(self, source: str, request: bytes) -> Connection:
        """A connection from ``source`` that sends ``request``, once the guard has seen it."""
        seen = self._counted()
        reader, writer = await asyncio.open_connection(HOST, self.port, local_addr=(source, 0))
        self.connections.append(writer)
        writer.write(request)
        await until(lambda: self._counted() > seen, 5, "the guard counts the connection")
        return reader, writer

    def _counted(self) -> int:
        """Connections the guard has taken in, refused or made room for, in all."""
        return self.guard.open + self.guard.refused + self.guard.displaced


@pytest.fixture
async def port() -> AsyncIterator[Port]:
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(text="done\n")

    app = web.Application()
    app.router.add_get("/slow", slow)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    assert runner.server is not None
    guard = ConnectionGuard(runner.server, max_connections=4, header_timeout_s=60,
                            max_per_address=3)
    server = await asyncio.get_running_loop().create_server(guard, HOST, 0)
    under_test = Port(guard, server.sockets[0].getsockname()[1], release)
    try:
        yield under_test
    finally:
        release.set()
        for writer in under_test.connections:
            writer.close()
        server.close()
        await runner.cleanup()


async def _answer(connection: Connection) -> bytes:
    return await asyncio.wait_for(connection[0].read(), 5)


async def test_one_address_holds_at_most_its_share(port: Port) -> None:
    held = [await port.connect(SQUATTER, HALF_REQUEST) for _ in range(3)]
    refused = await port.connect(SQUATTER, HALF_REQUEST)
    answer = await _answer(refused)
    assert answer.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert answer.endswith(b"too many connections from your address; try again shortly\n")
    assert port.guard.open == 3 and len(held) == 3
    # Another address is served beside them.
    other = await port.connect(HOST, SLOW_REQUEST)
    port.release.set()
    assert (await _answer(other)).endswith(b"done\n")


async def test_a_full_port_makes_room_from_the_largest_holder_never_cutting_a_request(
        port: Port) -> None:
    served = await port.connect(SQUATTER, SLOW_REQUEST)  # its request is being served
    waiting = [await port.connect(SQUATTER, HALF_REQUEST) for _ in range(2)]
    first = await port.connect(HOST, HALF_REQUEST)  # the port is full now: 4 of 4
    second = await port.connect(HOST, HALF_REQUEST)  # 127.0.0.2 holds 3, 127.0.0.1 one
    assert port.guard.displaced == 1
    assert (await _answer(waiting[0])).endswith(b"too many connections; try again shortly\n")
    # Now each address holds 2: taking a place would only swap who holds more.
    third = await port.connect(HOST, HALF_REQUEST)
    assert (await _answer(third)).endswith(b"too many connections; try again shortly\n")
    assert port.guard.displaced == 1 and port.guard.open == 4
    port.release.set()
    assert (await _answer(served)).endswith(b"done\n")  # never cut off
    assert not any(writer.is_closing() for _, writer in (first, second, waiting[1]))


@pytest.mark.parametrize(("peer", "key"), [
    (("192.0.2.7", 5000), "192.0.2.7"),
    (("::ffff:192.0.2.7", 5000, 0, 0), "192.0.2.7"),
    (("2001:db8::1", 5000, 0, 0), "2001:db8::/64"),
    (("2001:db8::ffff:2", 5000, 0, 0), "2001:db8::/64"),  # one client's /64
    (("2001:db8:0:1::1", 5000, 0, 0), "2001:db8:0:1::/64"),
    (None, ""),
])
def test_an_ipv6_client_counts_as_its_64(peer: object, key: str) -> None:
    assert peer_key(peer) == key

"""The standalone HTTP side against hostile clients: floods of half-sent requests, huge
uploads, late re-uploads, chosen headers, odd URL parameters (scheduler/access/http_guard.py)."""

from __future__ import annotations

import asyncio
import http.client
import socket
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import grpc
import pytest
import requests

from pb.mqc3_cloud.scheduler.v1 import execution_pb2
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb
from tests.conftest import Running
from tests.helpers import (
    TEST_BACKENDS_TOML,
    UPLOAD_HEADERS,
    Clients,
    gzip_result,
    standalone_token,
    submit_request,
)
from tests.integration.processes import HOST, Ports
from tests.operations.support import Process, standalone_args, until, until_serving

MB = 1024 * 1024


@dataclass
class Started:
    process: Process
    ports: Ports
    clients: Clients
    token: str


@pytest.fixture
async def started(tmp_path: Path, request: pytest.FixtureRequest) -> AsyncIterator[Started]:
    """A standalone scheduler process with 256 descriptors and a 1 s header timeout."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    token = standalone_token(data_dir, "alice", "developer")
    ports = Ports.free()
    env = {"SCHEDULER_HTTP_HEADER_TIMEOUT_S": "1", "SCHEDULER_MAX_RESULT_BYTES": str(64 * MB)}
    process = Process(standalone_args(data_dir, ports), tmp_path / "scheduler.log", env,
                      max_open_files=256)
    clients = Clients(ports.submission, ports.execution)
    try:
        await until_serving(process, ports)
        yield Started(process, ports, clients, token)
    finally:
        await clients.close()
        process.close()


def _half_sent(port: int, count: int) -> Iterator[socket.socket]:
    """Connections that send the start of a request and then nothing."""
    for _ in range(count):
        try:
            sock = socket.create_connection((HOST, port), timeout=2)
            sock.sendall(b"PUT /results/x.out.proto.gz HTTP/1.1\r\nHost: x\r\nContent-Le")
        except OSError:
            continue  # refused at the cap: fine
        yield sock


async def test_a_flood_of_half_sent_requests_leaves_grpc_answering(started: Started) -> None:
    flood = await asyncio.to_thread(lambda: list(_half_sent(started.ports.http, 600)))
    try:
        # The gRPC services answer in band while the flood holds its connections.
        answer = await started.clients.submission.SubmitJob(submit_request(started.token),
                                                            timeout=5)
        assert answer.error.code == "", answer.error
        assigned = await started.clients.assign()
        assert assigned.job_id == answer.job_id
        # /healthz is its own port, with its own bound.
        health = await asyncio.to_thread(
            requests.get, f"http://{HOST}:{started.ports.metrics}/healthz", timeout=5)
        assert health.status_code == 200
        # Once the header timeout passes, the half-sent requests are gone: uploads work.
        await asyncio.sleep(1.5)
        upload = await asyncio.to_thread(
            requests.put, assigned.upload_target.upload_url, data=gzip_result(b"r"),
            headers=UPLOAD_HEADERS, timeout=5)
        assert upload.status_code == 200
    finally:
        for sock in flood:
            sock.close()
    assert len(started.process.log()) < 100_000  # the flood did not flood the log


def _declaring(url: str, content_length: int) -> int:
    """PUT that declares ``content_length`` bytes and sends one; the answer's status."""
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname or HOST, parts.port, timeout=10)
    try:
        connection.putrequest("PUT", f"{parts.path}?{parts.query}")
        connection.putheader("Content-Length", str(content_length))
        connection.endheaders()
        connection.send(b"x")
        return connection.getresponse().status
    finally:
        connection.close()


def _chunks(total: int, size: int = MB) -> Iterator[bytes]:
    block = b"\x1f" * size
    for _ in range(total // size):
        yield block


async def test_a_large_upload_streams_to_disk_with_flat_memory(started: Started) -> None:
    job_id = (await started.clients.submission.SubmitJob(submit_request(started.token))).job_id
    url = (await started.clients.assign()).upload_target.upload_url
    before = started.process.rss_bytes()
    # Chunked (no Content-Length): the limit must hold as bytes arrive.
    kept = await asyncio.to_thread(requests.put, url, data=_chunks(60 * MB),
                                   headers=UPLOAD_HEADERS, timeout=60)
    assert kept.status_code == 200
    assert started.process.rss_bytes() - before < 30 * MB
    too_large = await asyncio.to_thread(requests.put, url, data=_chunks(80 * MB),
                                        headers=UPLOAD_HEADERS, timeout=60)
    assert too_large.status_code == 413
    declared = await asyncio.to_thread(_declaring, url, 2 * 1024 * MB)
    assert declared == 413
    assert started.process.rss_bytes() - before < 30 * MB
    report = await started.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS))
    assert report.error.code == ""  # the first upload, whole, is the result


# --- the URLs' rules -----------------------------------------------------------------------------
async def _completed(running: Running) -> tuple[str, str, str]:
    """A COMPLETED job: its id, its (still signed) upload URL and its owner's token."""
    token = running.token()
    job_id = (await running.clients.submission.SubmitJob(submit_request(token))).job_id
    url = (await running.clients.assign()).upload_target.upload_url
    hostile = {"Content-Type": "text/html", "Content-Disposition": "inline",
               "Content-Encoding": "gzip"}
    first = await asyncio.to_thread(requests.put, url, data=gzip_result(b"\x0a\x01a"),
                                    headers=hostile, timeout=10)
    assert first.status_code == 200
    report = await running.clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS))
    assert report.error.code == ""
    return job_id, url, token


@pytest.mark.parametrize("mode", ["standalone"], indirect=True)
async def test_a_result_cannot_be_replaced_once_its_job_is_final(running: Running) -> None:
    _, url, _ = await _completed(running)
    again = await asyncio.to_thread(requests.put, url, data=gzip_result(b"forged"),
                                    headers=UPLOAD_HEADERS, timeout=10)
    assert again.status_code == 409


@pytest.mark.parametrize("mode", ["standalone"], indirect=True)
async def test_a_download_has_fixed_safe_headers_whatever_the_upload_said(
        running: Running) -> None:
    job_id, _, token = await _completed(running)
    result = await running.clients.submission.GetJobResult(
        pb.GetJobResultRequest(token=token, job_id=job_id))
    download = await asyncio.to_thread(requests.get, result.result.result_url,
                                       headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert download.status_code == 200
    assert download.content == b"\x0a\x01a"  # decompressed by the client, as from S3
    assert download.headers["Content-Type"] == "application/protobuf"
    assert download.headers["Content-Disposition"] == "attachment"
    assert download.headers["X-Content-Type-Options"] == "nosniff"


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.mark.parametrize("mode", ["standalone"], indirect=True)
@pytest.mark.parametrize("change", [{"expires": "²"}, {"expires": "9" * 40},
                                    {"expires": "-1"}, {"signature": "é" * 64},
                                    {"signature": ""}, {"signature": "zz" * 500}])
async def test_odd_url_parameters_are_refused_never_a_server_error(
        running: Running, change: dict[str, str]) -> None:
    job_id, _, token = await _completed(running)
    result = await running.clients.submission.GetJobResult(
        pb.GetJobResultRequest(token=token, job_id=job_id))
    answer = await asyncio.to_thread(requests.get, _with_query(result.result.result_url,
                                                               **change), timeout=10)
    assert answer.status_code in (400, 403)


async def test_grpc_is_unaffected_by_closed_http_connections(started: Started) -> None:
    # A connection closed by the guard mid-request must not disturb anything else.
    with socket.create_connection((HOST, started.ports.http), timeout=2) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\n")
        await asyncio.sleep(1.5)
        assert sock.recv(1) == b""  # closed by the header timeout
    async with grpc.aio.insecure_channel(f"{HOST}:{started.ports.submission}") as channel:
        await asyncio.wait_for(channel.channel_ready(), 5)


# --- one address cannot take every connection (issue 26, point 5) ---------------------------
SQUATTERS = ("127.0.0.2", "127.0.0.3")  # other addresses than the victims' 127.0.0.1
HALF_REQUEST = b"PUT /results/x.out.proto.gz HTTP/1.1\r\nHost: x\r\nContent-Le"


class Squatters:
    """Connections from other loopback addresses that send half a request and connect
    again the moment they are closed, so the guard's cap stays full. Counts how each one
    ended: the first line of the server's answer, or how the connection failed."""

    def __init__(self, ports: tuple[int, ...], per_address: int) -> None:
        self.ended: Counter[str] = Counter()
        self._tasks = [asyncio.ensure_future(self._squat(source, port))
                       for port in ports for source in SQUATTERS for _ in range(per_address)]

    async def _squat(self, source: str, port: int) -> None:
        while True:
            self.ended[await self._once(source, port)] += 1

    async def _once(self, source: str, port: int) -> str:
        try:
            reader, writer = await asyncio.open_connection(HOST, port, local_addr=(source, 0))
        except OSError:
            await asyncio.sleep(0)  # the listen backlog is full: try again
            return "not connected"
        try:
            writer.write(HALF_REQUEST)
            answer = await reader.read(128)
        except OSError:
            return "reset"
        finally:
            writer.close()
        return answer.split(b"\r\n", 1)[0].decode() or "closed"

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


async def _upload_all(started: Started, count: int) -> list[int | str]:
    """``count`` jobs submitted and handed out, then their results uploaded at once: each
    upload's status, or the error it ended with."""
    submission = started.clients.submission
    for _ in range(count):
        answer = await submission.SubmitJob(submit_request(started.token), timeout=10)
        assert answer.error.code == "", answer.error
    urls = [(await started.clients.assign()).upload_target.upload_url for _ in range(count)]
    uploads = [asyncio.to_thread(requests.put, url, data=gzip_result(b"r"),
                                 headers=UPLOAD_HEADERS, timeout=10) for url in urls]
    statuses = [repr(response) if isinstance(response, BaseException) else response.status_code
                for response in await asyncio.gather(*uploads, return_exceptions=True)]
    for url in urls:
        job_id = urlsplit(url).path.rsplit("/", 1)[1].split(".", 1)[0]
        await started.clients.execution.ReportExecutionResult(
            execution_pb2.ReportExecutionResultRequest(
                job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS), timeout=10)
    return statuses


async def test_squatters_from_other_addresses_leave_room_for_uploads_and_probes(
        started: Started) -> None:
    # 256 descriptors: each port takes 64 connections; 96 squat on each of them.
    squatters = Squatters((started.ports.http, started.ports.metrics), per_address=48)
    try:
        await until(lambda: sum(squatters.ended.values()) > 20, 10,
                    "the squatters fill both ports' caps")
        for _ in range(2):  # 12 nodes' uploads, in two rounds (a developer runs 10 at once)
            assert await _upload_all(started, 6) == [200] * 6
        for _ in range(10):
            probe = await asyncio.to_thread(
                requests.get, f"http://{HOST}:{started.ports.metrics}/healthz", timeout=5)
            assert probe.status_code == 200
    finally:
        await squatters.stop()
    # A squatter past its address's share is told so, rather than cut off without a word.
    assert squatters.ended["HTTP/1.1 503 Service Unavailable"] > 0, squatters.ended

"""TLS on the submission port, mTLS on the execution port, the nodes' shared secret, and
the start-up warning about plaintext; certificates are made by the test."""

from __future__ import annotations

import asyncio
import gzip
import ipaddress
import logging
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from common.clock import SystemClock
from pb.mqc3_cloud.scheduler.v1 import (
    execution_pb2,
    execution_pb2_grpc,
    job_pb2,
    submission_pb2,
    submission_pb2_grpc,
)
from scheduler.wiring.app import Scheduler
from scheduler.wiring.standalone import token_store_path
from tests.helpers import TEST_BACKENDS_TOML, UPLOAD_HEADERS, Clients, local_config, submit_request
from token_database.service import create_token
from token_database.store import SqliteTokenStore

CALL_TIMEOUT_S = 5.0


# --- certificates -------------------------------------------------------------------------
@dataclass(frozen=True)
class Pem:
    cert: bytes
    key: bytes


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(common_name: str) -> tuple[Pem, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = _key()
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(_name(common_name))
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                     content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)), key, cert


def _issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, common_name: str,
           *, server: bool) -> Pem:
    key = _key()
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name)).issuer_name(ca_cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(
            [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False)
    )
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    return Pem(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


@dataclass(frozen=True)
class Certificates:
    ca: Pem
    server: Pem
    client: Pem
    other_node: Pem  # a second node, trusted, with its own name
    stranger: Pem  # a client certificate from a CA the scheduler does not trust
    directory: Path

    def path(self, name: str) -> str:
        return str(self.directory / name)


@pytest.fixture
def certificates(tmp_path: Path) -> Certificates:
    ca, ca_key, ca_cert = _make_ca("mqc3 test CA")
    _, other_key, other_cert = _make_ca("someone else's CA")
    made = Certificates(
        ca=ca,
        server=_issue(ca_key, ca_cert, "mqc3 scheduler", server=True),
        client=_issue(ca_key, ca_cert, "lab node 1", server=False),
        other_node=_issue(ca_key, ca_cert, "lab node 2", server=False),
        stranger=_issue(other_key, other_cert, "intruder", server=False),
        directory=tmp_path / "pki",
    )
    made.directory.mkdir()
    for name, pem in (("ca", made.ca), ("server", made.server), ("client", made.client)):
        (made.directory / f"{name}.crt").write_bytes(pem.cert)
        (made.directory / f"{name}.key").write_bytes(pem.key)
    return made


# --- schedulers ---------------------------------------------------------------------------
@dataclass
class Standalone:
    scheduler: Scheduler
    data_dir: Path

    def token(self, name: str = "alice", role: str = "developer") -> str:
        store = SqliteTokenStore(token_store_path(self.data_dir))
        try:
            return create_token(store, SystemClock(), name, role)[0]
        finally:
            store.close()


async def _start(tmp_path: Path, *flags: str, env: dict[str, str] | None = None) -> Standalone:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    scheduler = Scheduler(local_config(data_dir, *flags, env=env))
    await scheduler.start()
    return Standalone(scheduler, data_dir)


def _tls_flags(certificates: Certificates) -> list[str]:
    return [
        "--tls-cert", certificates.path("server.crt"),
        "--tls-key", certificates.path("server.key"),
        "--execution-tls-cert", certificates.path("server.crt"),
        "--execution-tls-key", certificates.path("server.key"),
        "--execution-client-ca", certificates.path("ca.crt"),
    ]


@pytest.fixture
async def secured(tmp_path: Path, certificates: Certificates) -> AsyncIterator[Standalone]:
    """A standalone scheduler with TLS on submission and mTLS on execution."""
    started = await _start(tmp_path, *_tls_flags(certificates))
    try:
        yield started
    finally:
        await started.scheduler.stop(grace_s=0)


def _credentials(certificates: Certificates, client: Pem | None = None
                 ) -> grpc.ChannelCredentials:
    if client is None:
        return grpc.ssl_channel_credentials(root_certificates=certificates.ca.cert)
    return grpc.ssl_channel_credentials(root_certificates=certificates.ca.cert,
                                        private_key=client.key, certificate_chain=client.cert)


async def _service_status(channel: grpc.aio.Channel, token: str
                          ) -> submission_pb2.GetServiceStatusResponse:
    stub = submission_pb2_grpc.SubmissionServiceStub(channel)
    answer: submission_pb2.GetServiceStatusResponse = await stub.GetServiceStatus(
        submission_pb2.GetServiceStatusRequest(token=token, backend="emulator"),
        timeout=CALL_TIMEOUT_S)
    return answer


async def _assign(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()
                  ) -> execution_pb2.AssignNextJobResponse:
    stub = execution_pb2_grpc.ExecutionServiceStub(channel)
    answer: execution_pb2.AssignNextJobResponse = await stub.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=metadata,
        timeout=CALL_TIMEOUT_S)
    return answer


# --- TLS on the submission port -----------------------------------------------------------
async def test_a_tls_client_trusting_the_ca_is_answered_on_the_submission_port(
        secured: Standalone, certificates: Certificates) -> None:
    token = secured.token()
    address = f"127.0.0.1:{secured.scheduler.submission_port}"
    async with grpc.aio.secure_channel(address, _credentials(certificates)) as channel:
        answer = await _service_status(channel, token)

    assert answer.error.code == ""
    assert answer.status == submission_pb2.SERVICE_STATUS_AVAILABLE


async def test_a_plaintext_client_gets_nothing_from_the_submission_port(
        secured: Standalone) -> None:
    token = secured.token()
    address = f"127.0.0.1:{secured.scheduler.submission_port}"
    async with grpc.aio.insecure_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _service_status(channel, token)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_client_that_does_not_trust_the_servers_ca_refuses_the_connection(
        secured: Standalone, certificates: Certificates) -> None:
    address = f"127.0.0.1:{secured.scheduler.submission_port}"
    wrong_root = grpc.ssl_channel_credentials(root_certificates=certificates.stranger.cert)
    async with grpc.aio.secure_channel(address, wrong_root) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _service_status(channel, secured.token())

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def _submit_over_tls(secured: Standalone,
                           certificates: Certificates) -> submission_pb2.SubmitJobResponse:
    """A job submitted by a user over the TLS submission port."""
    users = f"127.0.0.1:{secured.scheduler.submission_port}"
    async with grpc.aio.secure_channel(users, _credentials(certificates)) as channel:
        return await submission_pb2_grpc.SubmissionServiceStub(channel).SubmitJob(
            submit_request(secured.token()), timeout=CALL_TIMEOUT_S)


# --- mTLS on the execution port -----------------------------------------------------------
async def test_a_node_with_a_client_certificate_gets_jobs_on_the_execution_port(
        secured: Standalone, certificates: Certificates) -> None:
    submitted = await _submit_over_tls(secured, certificates)
    nodes = f"127.0.0.1:{secured.scheduler.execution_port}"
    async with grpc.aio.secure_channel(
            nodes, _credentials(certificates, certificates.client)) as channel:
        assigned = await _assign(channel)

    assert submitted.error.code == ""
    assert assigned.error.code == ""
    assert assigned.job_id == submitted.job_id


async def test_only_the_node_that_took_a_job_may_report_it_or_renew_its_url(
        secured: Standalone, certificates: Certificates) -> None:
    submitted = await _submit_over_tls(secured, certificates)
    nodes = f"127.0.0.1:{secured.scheduler.execution_port}"
    report = execution_pb2.ReportExecutionResultRequest(
        job_id=submitted.job_id, status=execution_pb2.EXECUTION_STATUS_FAILURE)
    async with grpc.aio.secure_channel(
            nodes, _credentials(certificates, certificates.client)) as taker, \
            grpc.aio.secure_channel(
                nodes, _credentials(certificates, certificates.other_node)) as other:
        assert (await _assign(taker)).job_id == submitted.job_id
        stranger = execution_pb2_grpc.ExecutionServiceStub(other)
        refreshed = await stranger.RefreshUploadUrl(
            execution_pb2.RefreshUploadUrlRequest(job_id=submitted.job_id),
            timeout=CALL_TIMEOUT_S)
        assert refreshed.error.code == "FAILED_PRECONDITION"
        assert "another node" in refreshed.error.description
        refused = await stranger.ReportExecutionResult(report, timeout=CALL_TIMEOUT_S)
        assert refused.error.code == "FAILED_PRECONDITION"
        accepted = await execution_pb2_grpc.ExecutionServiceStub(taker).ReportExecutionResult(
            report, timeout=CALL_TIMEOUT_S)
        assert accepted.error.code == ""


@pytest.mark.parametrize("client", ["no certificate", "certificate of another CA", "plaintext"])
async def test_a_node_without_a_trusted_certificate_is_refused_and_gets_no_job(
        secured: Standalone, certificates: Certificates, client: str) -> None:
    submitted = await _submit_over_tls(secured, certificates)
    nodes = f"127.0.0.1:{secured.scheduler.execution_port}"
    assert submitted.error.code == ""
    if client == "plaintext":
        channel = grpc.aio.insecure_channel(nodes)
    else:
        presented = None if client == "no certificate" else certificates.stranger
        channel = grpc.aio.secure_channel(nodes, _credentials(certificates, presented))

    async with channel:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await _assign(channel)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert secured.scheduler.manager.queue_length("emulator") == 1


# --- the nodes' shared secret -------------------------------------------------------------
SECRET = secrets.token_urlsafe(24)
# One character changed, whichever the last one happens to be (a fixed "x" was the secret
# itself once in 64 runs).
WRONG_SECRET = SECRET[:-1] + ("x" if SECRET[-1] != "x" else "y")


@pytest.fixture
async def with_secret(tmp_path: Path) -> AsyncIterator[tuple[Standalone, Clients]]:
    started = await _start(tmp_path, env={"SCHEDULER_EXECUTION_SECRET": SECRET})
    clients = Clients(started.scheduler.submission_port, started.scheduler.execution_port)
    try:
        yield started, clients
    finally:
        await clients.close()
        await started.scheduler.stop(grace_s=0)


BAD_AUTHORIZATIONS = [
    pytest.param((), id="none"),
    pytest.param((("authorization", "Bearer " + WRONG_SECRET),), id="wrong-secret"),
    pytest.param((("authorization", SECRET),), id="no-bearer"),
    pytest.param((("authorization", "Bearer "),), id="empty-secret"),
    pytest.param((("authorization", "Basic " + SECRET),), id="basic"),
]


def _bearer(secret: str = SECRET) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {secret}"),)


@pytest.mark.parametrize("metadata", BAD_AUTHORIZATIONS)
async def test_without_the_secret_every_execution_call_is_unauthenticated_and_changes_nothing(
        with_secret: tuple[Standalone, Clients], metadata: tuple[tuple[str, str], ...]) -> None:
    started, clients = with_secret
    token = started.token()
    queued = await clients.submission.SubmitJob(submit_request(token))
    running_job = await clients.submission.SubmitJob(submit_request(token))
    first = await clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=_bearer())
    assert first.job_id == queued.job_id  # taken with the secret: RUNNING

    assign = await clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=metadata)
    report = await clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=first.job_id, status=execution_pb2.EXECUTION_STATUS_FAILURE),
        metadata=metadata)
    refresh = await clients.execution.RefreshUploadUrl(
        execution_pb2.RefreshUploadUrlRequest(job_id=first.job_id), metadata=metadata)

    for answer in (assign, report, refresh):
        assert answer.error.code == "UNAUTHENTICATED"
        assert "authorization: Bearer" in answer.error.description
        assert SECRET not in answer.error.description
    assert assign.job_id == "" and not refresh.upload_target.upload_url
    statuses = [await clients.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=job_id))
        for job_id in (first.job_id, running_job.job_id)]
    assert [s.status for s in statuses] == [job_pb2.JOB_STATUS_RUNNING, job_pb2.JOB_STATUS_QUEUED]
    assert started.scheduler.manager.queue_length("emulator") == 1


async def test_with_the_secret_a_node_runs_a_job_to_the_end(
        with_secret: tuple[Standalone, Clients]) -> None:
    started, clients = with_secret
    token = started.token()
    submitted = await clients.submission.SubmitJob(submit_request(token))

    assigned = await clients.execution.AssignNextJob(
        execution_pb2.AssignNextJobRequest(backend="emulator"), metadata=_bearer())
    refreshed = await clients.execution.RefreshUploadUrl(
        execution_pb2.RefreshUploadUrlRequest(job_id=assigned.job_id), metadata=_bearer())
    uploaded = await asyncio.to_thread(
        requests.put, refreshed.upload_target.upload_url, data=gzip.compress(b"\x0a\x01r"),
        headers=UPLOAD_HEADERS, timeout=10)
    reported = await clients.execution.ReportExecutionResult(
        execution_pb2.ReportExecutionResultRequest(
            job_id=assigned.job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS),
        metadata=_bearer())
    status = await clients.submission.GetJobStatus(
        submission_pb2.GetJobStatusRequest(token=token, job_id=submitted.job_id))

    assert assigned.error.code == "" and assigned.job_id == submitted.job_id
    assert refreshed.error.code == ""
    assert uploaded.status_code == 200
    assert reported.error.code == ""
    assert status.status == job_pb2.JOB_STATUS_COMPLETED


async def test_the_secret_does_not_guard_the_submission_port(
        with_secret: tuple[Standalone, Clients]) -> None:
    # Users authenticate with their tokens; the nodes' secret is not theirs to know.
    started, clients = with_secret

    answer = await clients.submission.GetServiceStatus(
        submission_pb2.GetServiceStatusRequest(token=started.token(), backend="emulator"))

    assert answer.error.code == ""


# --- the plaintext warning ----------------------------------------------------------------
def _plaintext_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and "plaintext" in r.getMessage()]


async def test_without_tls_the_scheduler_warns_once_that_traffic_is_plaintext(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    started = await _start(tmp_path)
    await started.scheduler.stop(grace_s=0)

    warnings = _plaintext_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "submission" in warnings[0] and "execution" in warnings[0]


async def test_with_tls_on_one_port_the_warning_names_only_the_other(
        tmp_path: Path, certificates: Certificates, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    started = await _start(tmp_path, "--tls-cert", certificates.path("server.crt"),
                           "--tls-key", certificates.path("server.key"))
    await started.scheduler.stop(grace_s=0)

    warnings = _plaintext_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "execution" in warnings[0] and "submission" not in warnings[0]


async def test_with_tls_on_both_ports_there_is_no_plaintext_warning(
        tmp_path: Path, certificates: Certificates, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    started = await _start(tmp_path, *_tls_flags(certificates))
    await started.scheduler.stop(grace_s=0)

    assert any("scheduler ready" in r.getMessage() for r in caplog.records)
    assert _plaintext_warnings(caplog) == []

"""Wiring and lifecycle: stores, JobManager, both gRPC services and the HTTP side on one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import socket
import uuid
from dataclasses import replace
from datetime import datetime, timedelta
from types import TracebackType
from typing import TypeVar

import grpc
from aiohttp import web
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from backend_manager import BackendManager
from common.clock import Clock, SystemClock
from common.identity import Role
from common.supervisor import Supervisor
from job_manager.manager import JobManager
from job_manager.model import JobRecord, JobStatus
from job_manager.stores import Fence, JobStore, PayloadStore, StoreError
from job_manager.stores.local_payload_store import PROBE_BYTES, LocalPayloadStore
from job_manager.stores.unreadable import UnreadableRecords
from leadership.lease import Lease
from pb.mqc3_cloud.scheduler.v1 import execution_pb2_grpc, submission_pb2_grpc
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from pb.mqc3_scheduler.extension.v1 import (
    jobs_pb2_grpc,
    nodes_pb2_grpc,
    reservations_pb2_grpc,
)
from scheduler.access.absent_jobs import remembering_absent
from scheduler.access.admission import Admission, LeaderWaitRoom, TokenLimits
from scheduler.access.auth import TokenResolver
from scheduler.access.http_guard import ConnectionGuard
from scheduler.operations.health import EXECUTION, HEALTH, SUBMISSION, Health
from scheduler.operations.housekeeping import Housekeeping
from scheduler.operations.metrics import Metrics
from scheduler.operations.store_monitor import StoreMonitor
from scheduler.replication.forwarding import Forwarder
from scheduler.replication.replicas import Replicas
from scheduler.services.edge import DRAINING, Edge, add_servicer
from scheduler.services.execution_service import NODES, ExecutionService, NodeService
from scheduler.services.http_server import Uploads, build_http_app
from scheduler.services.jobs_service import JOBS, JobsService, n_shots
from scheduler.services.reservations_service import RESERVATIONS, ReservationsService
from scheduler.services.submission_service import SubmissionService
from scheduler.services.watches import Watches
from scheduler.wiring.aws import aws_stack
from scheduler.wiring.config import Config, TlsConfig
from scheduler.wiring.stack import Stack
from scheduler.wiring.standalone import standalone_stack
from token_database.credential import PresentCredential, RequireCredential
from token_database.service import TokenDatabaseService
from token_database.store import SqliteTokenStore

log = logging.getLogger(__name__)

# The HTTP side's connections at most (scheduler/access/http_guard.py), and never more than a
# quarter of the process's descriptors, so no flood of connections reaches the share the
# gRPC services need.
HTTP_MAX_CONNECTIONS = 512
LOOPBACK = "127.0.0.1"
DRAIN_POLL_S = 0.02
PROBE_JOB_ID = "00000000-0000-4000-8000-000000000000"  # never issued: what the store probe names
# The token database's listing (learned at start and each minute): 100,000 tokens of ours
# take about 12 MB.
TOKEN_LISTING_BYTES = 64 * 2**20


async def probe_stores(jobs: JobStore, payloads: PayloadStore, now: datetime,
                       results: LocalPayloadStore | None = None) -> None:
    """A read and a write of each store that change nothing; the monitor counts failures.

    The job store's write is a compare-and-set on a record that does not exist: it
    needs the store writable (and, on DynamoDB, the permission) and changes nothing.
    Standalone's results directory (``results``) gets a file written and removed: its
    programs live in SQLite, so only this shows the uploads' disk refusing writes.
    """
    probe = _probe_record(now)
    outcomes = await asyncio.gather(
        jobs.get(PROBE_JOB_ID), jobs.transition(replace(probe, status=JobStatus.QUEUED), probe),
        _write_and_remove(payloads), results.probe_results() if results else asyncio.sleep(0),
        return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, StoreError):
            raise outcome


async def _write_and_remove(payloads: PayloadStore) -> None:
    await payloads.put_input(PROBE_JOB_ID, PROBE_BYTES)
    await payloads.delete_input(PROBE_JOB_ID)


def _probe_record(now: datetime) -> JobRecord:
    return JobRecord(job_id=PROBE_JOB_ID, status=JobStatus.FAILED, backend="", owner_name="",
                     owner_fingerprint="", role=Role.GUEST, settings=b"", timeout_s=1.0,
                     input_size_bytes=0, submitted_at=now, queued_at=now)


def _grpc_server(max_message_bytes: int) -> grpc.aio.Server:
    # No maximum_concurrent_rpcs: admission is per service (Edge), so health checks
    # and reflection still answer while the services are saturated.
    return grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        # A second scheduler on the same port must fail, not share the port's traffic.
        ("grpc.so_reuseport", 0),
    ])


def _methods(*services: str) -> list[str]:
    """The methods of the named services: the ``method`` labels of their calls' metrics."""
    pool = descriptor_pool.Default()
    return [method.name for service in services
            for method in pool.FindServiceByName(service).methods]


def http_connection_cap() -> int:
    """HTTP_MAX_CONNECTIONS, or a quarter of the descriptors this process may open."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return HTTP_MAX_CONNECTIONS
    return max(1, min(HTTP_MAX_CONNECTIONS, soft // 4))


T = TypeVar("T")


def _started(part: T | None) -> T:
    """A part start() makes, or a clear error when the scheduler has not been started."""
    if part is None:
        raise RuntimeError("the scheduler has not been started")
    return part


def _address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _check_free(host: str, port: int) -> None:
    """Fail with one clear line before gRPC's core logs its own bind error."""
    if port == 0:
        return
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise OSError(f"cannot listen on {_address(host, port)}: {exc.strerror}") from None


def _channel_credentials(tls: TlsConfig | None) -> grpc.ChannelCredentials | None:
    """How one replica calls a port of another (docs/replicas.md): as that port is served;
    under mTLS, with the port's own certificate as the client's."""
    if tls is None:
        return None
    if tls.client_ca is None:
        return grpc.ssl_channel_credentials()
    return grpc.ssl_channel_credentials(private_key=tls.private_key,
                                        certificate_chain=tls.cert_chain)


def _advertised(host: str, configured: str) -> str:
    """The host other replicas reach this one at: as configured, else the address it
    listens at, else (listening everywhere) its host name."""
    if configured:
        return configured
    if host not in ("", "0.0.0.0", "::"):
        return host
    return socket.gethostname()


def _credentials(tls: TlsConfig) -> grpc.ServerCredentials:
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.cert_chain)],
        root_certificates=tls.client_ca,
        require_client_auth=tls.client_ca is not None,
    )


class Scheduler:
    """The running service. ``async with Scheduler(config):`` starts and stops it."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.metrics = Metrics()
        # Made by start(); read through the properties below, which say so when asked early.
        self._stack: Stack | None = None
        self._tokens: TokenResolver | None = None
        self._monitor: StoreMonitor | None = None
        self._replicas: Replicas | None = None
        self._health: Health | None = None
        self.submission_port = 0
        self.execution_port = 0
        self.token_database_port = 0
        self.http_port = 0
        self.metrics_port = 0
        self._servers: list[grpc.aio.Server] = []  # submission and execution
        self._edges: list[Edge] = []  # one per service: the calls each port admits
        self.watches = Watches(self.clock, config.max_watches_per_token)
        self._token_server: grpc.aio.Server | None = None  # standalone only
        self.supervisor = Supervisor(on_change=self._loops_changed)
        # What start() acquired, released in reverse order: by stop(), or at once when
        # start() fails half-way, so a failed start leaks no store, port or task.
        self._resources = contextlib.AsyncExitStack()
        self._stopped = False

    @property
    def stack(self) -> Stack:
        """The stores and sources of the scheduler's mode."""
        return _started(self._stack)

    @property
    def replicas(self) -> Replicas:
        """This process among the replicas: which JobManager serves, where the leader is."""
        return _started(self._replicas)

    @property
    def manager(self) -> JobManager:
        """The JobManager that serves now: every job's life (the leader's, or a follower's)."""
        return self.replicas.manager

    @property
    def health(self) -> Health:
        """What the health services and /healthz answer."""
        return _started(self._health)

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.stop()

    async def start(self) -> None:
        """Listen (NOT_SERVING), open the stores, recover the jobs, then serve.

        On any failure everything acquired so far is released, in reverse order, and the
        failure is raised.
        """
        try:
            await self._start()
        except BaseException:
            self._stopped = True
            await self._resources.aclose()
            raise

    async def _start(self) -> None:
        config = self.config
        key_window = timedelta(seconds=config.idempotency_window_s)
        unreadable = UnreadableRecords(self.metrics.unreadable_records.inc)
        if config.local is not None:
            stack = await standalone_stack(config.local.data_dir, self.clock, key_window,
                                           unreadable, config.retention,
                                           config.local.node_secret)
        else:
            assert config.aws is not None  # a Config is in one mode or the other
            stack = await aws_stack(config.aws, self.clock, key_window, unreadable,
                                    config.replicas)
        self._stack = stack
        self._resources.push_async_callback(stack.close)
        monitor = StoreMonitor(self.metrics, self.clock.monotonic)
        job_store = monitor.wrap(stack.jobs, "jobs")
        payload_store = monitor.wrap(stack.payloads, "payloads")
        # Calls' reads of ids that name no job are bounded (scheduler/access/absent_jobs.py); the
        # store probe below reads the store itself.
        calls_job_store = remembering_absent(job_store, self.clock.monotonic,
                                             config.calls.job_miss_rate_per_token_s)

        def make_manager(fence: Fence | None) -> JobManager:
            return JobManager(
                jobs=calls_job_store,
                payloads=payload_store,
                limits=config.limits,
                clock=self.clock,
                policy=config.policy,
                unify_backends=config.unify_backends,
                report_grace_s=config.report_grace_s,
                idempotency_window=key_window,
                observer=self.metrics,
                fence=fence,
                max_requeues=config.max_requeues,
                heartbeat_timeout_s=config.nodes.heartbeat_timeout_s,
                node_quiet_s=config.nodes.quiet_after_s,
                budgets=config.budgets,
                session_limits=config.session_limits,
                shots_of=n_shots,
            )

        lease = forwarder = None
        if stack.lease_table is not None:
            me = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
            # The lease lapses on the service's clock: real time in service, and in a test
            # whatever its fake clock says (its table calls stay bounded in real time).
            lease = Lease(stack.lease_table, me, self.clock.monotonic,
                          config.replicas.lease_duration_s, config.replicas.lease_renew_s)
            forwarder = Forwarder(me, _channel_credentials(config.submission_tls),
                                  _channel_credentials(config.execution_tls))
            self.metrics.know_forwarding(_methods(SUBMISSION, EXECUTION, JOBS, RESERVATIONS, NODES))
            self._resources.push_async_callback(forwarder.close)
        replicas = self._replicas = Replicas(make_manager, self.metrics,
                                             monotonic=self.clock.monotonic, lease=lease,
                                             forwarder=forwarder,
                                             wait_s=config.replicas.leader_wait_s,
                                             room=LeaderWaitRoom(
                                                 config.replicas.leader_wait_max_calls,
                                                 config.replicas.leader_wait_max_bytes))
        self.metrics.watch_queues(lambda: replicas.manager.queue_snapshot())
        self.metrics.watch_nodes(lambda: replicas.manager.node_snapshot())
        self.metrics.watch_reservations(lambda: replicas.manager.reservations_snapshot(),
                                        self.clock.now)
        # Standalone's results directory is watched as a store of its own: its programs
        # are in SQLite, whose writes succeeding must not hide the uploads' failing.
        results = (monitor.wrap(stack.local_payloads, "results")
                   if stack.local_payloads is not None else None)
        self._monitor = monitor
        health = self._health = Health(
            monitor, lambda: probe_stores(job_store, payload_store, self.clock.now(), results),
            config.store_unhealthy_after_s, loops_down=lambda: self.supervisor.failing)
        await health.starting()
        await self._serve_metrics()
        await self._serve_grpc(stack, replicas, health)
        backends = BackendManager(stack.backend_source, config.backend_reload_interval_s)
        backends.on_change(replicas.use_backends)
        backends.on_change(lambda table: self.metrics.know_backends(table.known()))
        await backends.load()
        if lease is not None:
            host = config.replicas.advertise_host
            lease.advertise(
                _address(_advertised(config.submission_host, host), self.submission_port),
                _address(_advertised(config.execution_host, host), self.execution_port))
        # Calls are taken from now on: reads answered from the store, the rest waiting
        # (bounded) for the recovery or the leader (scheduler/replication/replicas.py).
        for edge in self._edges:
            edge.take_calls()
        await replicas.start()
        self._supervise(replicas, backends, health, stack.housekeeping, lease is not None)
        await health.ready()
        log.info("scheduler ready (%s mode): submission %s, execution %s, metrics :%d",
                 config.mode, _address(config.submission_host, self.submission_port),
                 _address(config.execution_host, self.execution_port), self.metrics_port)

    def _supervise(self, replicas: Replicas, backends: BackendManager, health: Health,
                   housekeeping: Housekeeping | None, leased: bool) -> None:
        """Start the background loops under the supervisor; health hears of any that dies."""
        self._resources.push_async_callback(self.supervisor.stop)
        self.supervisor.run("watchdog", replicas.watch_jobs)
        if leased:
            self.supervisor.run("lease", replicas.keep_lease)
        self.supervisor.run("backend-reload", backends.reload_forever)
        if self._tokens is not None:
            self.supervisor.run("token-listing", self._tokens.learn_listed_forever)
        self.supervisor.run("health", health.watch)
        if housekeeping is not None:
            self.metrics.watch_free_space(lambda: housekeeping.free_bytes)
            self.supervisor.run("housekeeping", housekeeping.sweep_forever)
            self.supervisor.run("free-space", housekeeping.measure_forever)

    async def _serve_grpc(self, stack: Stack, replicas: Replicas, health: Health) -> None:
        config = self.config
        token_address = config.token_database_address
        local = config.local
        if (local is not None and stack.token_store is not None
                and stack.token_database_secret is not None):
            self.token_database_port = await self._serve_token_database(
                stack.token_store, stack.token_database_secret, local.token_database_port)
            token_address = f"127.0.0.1:{self.token_database_port}"
        if local is not None and stack.local_payloads is not None:
            await self._serve_payloads(stack.local_payloads, local.http_port, local.public_url)
        channel = grpc.aio.insecure_channel(token_address, interceptors=(
            [PresentCredential(stack.token_database_secret)] if stack.token_database_secret
            else None), options=[("grpc.max_receive_message_length", TOKEN_LISTING_BYTES)])
        self._resources.push_async_callback(channel.close)
        auth = TokenResolver(
            channel, self.clock, config.token_cache_ttl_s, config.token_cache_miss_ttl_s,
            config.token_cache_max_entries,
            on_cache=lambda hit: self.metrics.token_cache.labels("hit" if hit else "miss").inc(),
            max_unknown_entries=config.calls.unknown_tokens_kept,
            lookup_rate_per_s=config.calls.token_lookup_rate_per_s,
        )
        # Real users' first calls after a start spend no lookup budget (scheduler/access/auth.py).
        await auth.learn_listed()
        self._tokens = auth
        # One share per token on the submission port (SubmissionService and the extension).
        token_limits = TokenLimits(config.calls.by_role, auth.role_of, self.clock.monotonic)
        secret = config.execution_secret or stack.execution_secret
        # The extension shares the submission port and its limit of concurrent calls.
        submission_admission = Admission(config.submission_max_concurrent_rpcs,
                                         config.submission_max_waiting_rpcs)
        # The nodes' extension shares the execution port, its limit and its credential.
        execution_admission = Admission(config.execution_max_concurrent_rpcs,
                                        config.execution_max_waiting_rpcs)
        self.metrics.know_calls(_methods(SUBMISSION, EXECUTION, JOBS, RESERVATIONS, NODES))
        self.metrics.watch_waiting_calls({"submission": lambda: submission_admission.waiting,
                                          "execution": lambda: execution_admission.waiting})
        submission_edge = Edge(SUBMISSION, replicas, submission_admission, self.metrics,
                               tokens=token_limits, resolver=auth)
        execution_edge = Edge(EXECUTION, replicas, execution_admission, self.metrics, secret)
        jobs_edge = Edge(JOBS, replicas, submission_admission, self.metrics,
                         tokens=token_limits, resolver=auth)
        reservations_edge = Edge(RESERVATIONS, replicas, submission_admission, self.metrics,
                                 tokens=token_limits, resolver=auth)
        nodes_edge = Edge(NODES, replicas, execution_admission, self.metrics, secret)
        self._edges = [submission_edge, execution_edge, jobs_edge, reservations_edge, nodes_edge]
        submission = _grpc_server(config.submission_max_message_bytes)
        add_servicer(submission_pb2_grpc.add_SubmissionServiceServicer_to_server,
                     SubmissionService(auth, submission_edge), submission)
        add_servicer(jobs_pb2_grpc.add_JobsServiceServicer_to_server,
                     JobsService(auth, jobs_edge, self.clock, self.watches), submission)
        add_servicer(reservations_pb2_grpc.add_ReservationsServiceServicer_to_server,
                     ReservationsService(auth, reservations_edge, self.clock), submission)
        execution = _grpc_server(config.execution_max_message_bytes)
        certified = config.execution_tls is not None and config.execution_tls.client_ca is not None
        add_servicer(execution_pb2_grpc.add_ExecutionServiceServicer_to_server,
                     ExecutionService(config.max_assign_wait_s, execution_edge, certified),
                     execution)
        add_servicer(nodes_pb2_grpc.add_NodeServiceServicer_to_server,
                     NodeService(nodes_edge, certified), execution)
        self.submission_port = await self._start_service(
            submission, (SUBMISSION, JOBS, RESERVATIONS), health, config.submission_host,
            config.submission_port, config.submission_tls)
        self.execution_port = await self._start_service(
            execution, (EXECUTION, NODES), health, config.execution_host, config.execution_port,
            config.execution_tls)
        if secret is None and not certified:
            log.warning("the execution port takes nodes with no credential: any account or "
                        "machine that reaches %s can take users' programs and report their "
                        "results (README, Security)",
                        _address(config.execution_host, self.execution_port))
        if config.submission_tls is None or config.execution_tls is None:
            plain = [name for name, tls in (("submission", config.submission_tls),
                                            ("execution", config.execution_tls)) if tls is None]
            log.warning("no TLS on the %s port%s: traffic there, tokens included, is plaintext",
                        " and ".join(plain), "s" if len(plain) > 1 else "")

    async def _start_service(self, server: grpc.aio.Server, services: tuple[str, ...],
                             health: Health, host: str, port: int,
                             tls: TlsConfig | None) -> int:
        """Add health and reflection beside ``services``, listen, start; the bound port."""
        health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
        reflection.enable_server_reflection((*services, HEALTH, reflection.SERVICE_NAME), server)
        bound = self._listen(server, port, tls, host)
        self._servers.append(server)
        await server.start()
        self._resources.push_async_callback(server.stop, 0)
        return bound

    def _listen(self, server: grpc.aio.Server, port: int, tls: TlsConfig | None = None,
                host: str | None = None) -> int:
        host = host or self.config.host
        address = _address(host, port)
        _check_free(host, port)
        try:
            bound: int = (server.add_secure_port(address, _credentials(tls)) if tls
                          else server.add_insecure_port(address))
        except RuntimeError:  # what grpcio raises when the port cannot be bound
            bound = 0
        if bound == 0:
            raise OSError(f"cannot listen on {address}: the port is in use or not allowed")
        return bound

    async def _serve_token_database(self, store: SqliteTokenStore, secret: str,
                                    port: int) -> int:
        # Loopback only, whatever --host says, and only with the admin credential from the
        # data directory: CreateToken mints admin tokens for whoever may call it, so only
        # the service's operator may, never every local account.
        server = grpc.aio.server(interceptors=[RequireCredential(secret)])
        token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(
            TokenDatabaseService(store, self.clock), server)
        bound = self._listen(server, port, host=LOOPBACK)
        await server.start()
        self._resources.push_async_callback(server.stop, 0)
        self._token_server = server
        return bound

    async def _serve_http(self, app: web.Application, port: int, **kwargs: object) -> int:
        runner = web.AppRunner(app, access_log=None, **kwargs)  # type: ignore[arg-type]
        await runner.setup()
        self._resources.push_async_callback(runner.cleanup)
        assert runner.server is not None
        guard = ConnectionGuard(runner.server, http_connection_cap(),
                                self.config.http_header_timeout_s,
                                self.config.http_max_connections_per_address)
        try:
            server = await asyncio.get_running_loop().create_server(
                guard, self.config.host, port, reuse_address=True)
        except OSError as exc:
            raise OSError(f"cannot listen on {self.config.host}:{port}: {exc.strerror}") from None
        self._resources.callback(server.close)  # before the runner's cleanup: stop accepting
        return int(server.sockets[0].getsockname()[1])

    async def _serve_payloads(self, payloads: LocalPayloadStore, port: int,
                              public_url: str | None) -> None:
        # auto_decompress off: a result is kept exactly as uploaded (gzip) and served so.
        self.http_port = await self._serve_http(
            build_http_app(self._is_serving, payloads=payloads,
                           uploads=Uploads(self._accepts_result, self.config.max_result_bytes,
                                           self._result_written)),
            port, auto_decompress=False)
        payloads.serve_at(public_url or f"http://{self.config.host}:{self.http_port}")

    async def _serve_metrics(self) -> None:
        app = build_http_app(self._is_serving, metrics=self.metrics.exposition,
                             notes=self._health_notes)
        self.metrics_port = await self._serve_http(app, self.config.metrics_port)

    async def _finish_calls(self, within_s: float, refuse: bool) -> float:
        """Wait until the calls in flight end (within ``within_s``); returns the time taken.

        With ``refuse``, new calls are answered UNAVAILABLE meanwhile; without, they are
        served (among replicas: passed to the new leader).
        """
        # On the event loop's clock, deliberately not self.clock: the grace is real time
        # (the process's stop), spent in real sleeps, and a fake clock must not stretch it.
        loop = asyncio.get_running_loop()
        started = loop.time()
        for edge in self._edges:
            if refuse:
                edge.turn_away(DRAINING)
            else:
                edge.take_calls()
        while any(edge.admission.in_flight for edge in self._edges):
            if loop.time() - started >= within_s:
                break
            await asyncio.sleep(DRAIN_POLL_S)
        return loop.time() - started

    def _loops_changed(self) -> None:
        if self._health is not None:
            self._health.update()

    def _result_written(self, ok: bool) -> None:
        if self._monitor is not None:
            self._monitor.outcome("results", "upload_result", ok)

    def _accepts_result(self, job_id: str, handover: int | None) -> bool:
        return (self._replicas is not None
                and self._replicas.manager.accepts_result(job_id, handover))

    def _health_notes(self) -> list[str]:
        """What /healthz adds to its answer: trouble ahead that has not stopped anything."""
        notes = [f"failing: {kind}" for kind in
                 (self._monitor.failing() if self._monitor is not None else [])]
        leadership = self._replicas.note() if self._replicas is not None else None
        if leadership is not None:
            notes.append(leadership)
        housekeeping = self._stack.housekeeping if self._stack is not None else None
        if housekeeping is not None and housekeeping.low_on_space:
            assert housekeeping.free_bytes is not None
            notes.append(f"warning: the data directory's disk has "
                         f"{housekeeping.free_bytes // 2**20} MB free; submissions fail once "
                         f"it is full")
        return notes

    def _is_serving(self) -> bool:
        return self._health is not None and self._health.serving

    async def stop(self, grace_s: float | None = None) -> None:
        """Drain: NOT_SERVING, release waiting nodes, let calls finish within the grace."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        leased = self._stack is not None and self._stack.lease_table is not None
        if not leased:
            await self.supervisor.stop()
        if self._health is not None:
            await self._health.draining()
        # Open WatchJob streams end now, in band (scheduler/services/watches.py).
        self.watches.close()
        if self._replicas is not None:
            # Among replicas the lease goes at once: another replica leads, and the calls
            # still arriving here are passed to it. Waiting nodes get an empty answer now.
            await self._replicas.stop()
        # Alone, no one else can take new calls: they are refused (the SDK's retry finds
        # the restarted scheduler, or fails). Among replicas they are passed on.
        grace -= await self._finish_calls(grace, refuse=not leased)
        await asyncio.gather(*(server.stop(max(grace, 0.0)) for server in self._servers))
        if self._replicas is not None:  # e.g. results still being sealed
            await self._replicas.manager.background_done(max(grace, 1.0))
        await self.supervisor.stop()
        if self._token_server is not None:
            # Last: submissions still in flight resolve their tokens through it.
            await self._token_server.stop(grace)
        await self._resources.aclose()  # the rest, in the reverse order of acquiring it
        log.info("scheduler stopped")

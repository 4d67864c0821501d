"""Wiring and lifecycle: stores, JobManager, both gRPC services and the HTTP side on one loop."""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta
from types import TracebackType

import grpc
from aiohttp import web

from backend_manager import BackendManager
from job_manager.clock import Clock, SystemClock
from job_manager.manager import JobManager
from pb.mqc3_cloud.scheduler.v1 import execution_pb2_grpc, submission_pb2_grpc
from pb.mqc3_cloud.token_database.v1 import token_database_pb2_grpc
from scheduler.auth import TokenResolver
from scheduler.aws import aws_stack
from scheduler.config import Config
from scheduler.execution_service import ExecutionService
from scheduler.http_server import build_http_app
from scheduler.stack import Stack
from scheduler.standalone import standalone_stack
from scheduler.submission_service import SubmissionService
from token_database.service import TokenDatabaseService

log = logging.getLogger(__name__)

MAX_RESULT_UPLOAD_BYTES = 1024 * 1024 * 1024


def _grpc_server(max_message_bytes: int, max_concurrent_rpcs: int | None) -> grpc.aio.Server:
    return grpc.aio.server(
        options=[
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
        ],
        maximum_concurrent_rpcs=max_concurrent_rpcs,
    )


class Scheduler:
    """The running service. ``async with Scheduler(config):`` starts and stops it."""

    def __init__(self, config: Config, clock: Clock | None = None) -> None:
        self.config = config
        self.clock = clock or SystemClock()
        self.stack: Stack | None = None
        self.jobs: JobManager | None = None
        self.submission_port = 0
        self.execution_port = 0
        self.token_database_port = 0
        self.http_port = 0
        self._servers: list[grpc.aio.Server] = []  # submission and execution
        self._token_server: grpc.aio.Server | None = None  # standalone only
        self._backends: BackendManager | None = None
        self._channel: grpc.aio.Channel | None = None
        self._http: web.AppRunner | None = None
        self._stopped = False

    async def __aenter__(self) -> Scheduler:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    async def start(self) -> None:
        """Open the stores, recover the jobs, then start serving."""
        config = self.config
        if config.local is not None:
            self.stack = await standalone_stack(config.local.data_dir, self.clock)
        else:
            assert config.aws is not None
            self.stack = await aws_stack(config.aws, self.clock)
        self.jobs = JobManager(
            jobs=self.stack.jobs,
            payloads=self.stack.payloads,
            limits=config.limits,
            clock=self.clock,
            policy=config.policy,
            unify_backends=config.unify_backends,
            report_grace_s=config.report_grace_s,
            idempotency_window=timedelta(seconds=config.idempotency_window_s),
        )
        self._backends = BackendManager(self.stack.backend_source, config.backend_reload_interval_s)
        self._backends.on_change(self.jobs.use_backends)
        await self._backends.load()
        await self.jobs.recover()

        token_address = config.token_database_address
        if self.stack.token_store is not None:
            assert config.local is not None
            self.token_database_port = await self._serve_token_database(
                config.local.token_database_port
            )
            token_address = f"127.0.0.1:{self.token_database_port}"
        if self.stack.local_payloads is not None:
            await self._serve_http()
        self._channel = grpc.aio.insecure_channel(token_address)
        auth = TokenResolver(
            self._channel,
            self.clock,
            config.token_cache_ttl_s,
            config.token_cache_miss_ttl_s,
            config.token_cache_max_entries,
        )

        submission = _grpc_server(
            config.submission_max_message_bytes, config.submission_max_concurrent_rpcs
        )
        submission_pb2_grpc.add_SubmissionServiceServicer_to_server(
            SubmissionService(self.jobs, auth), submission
        )
        self.submission_port = self._listen(submission, config.submission_port)
        self._servers.append(submission)
        execution = _grpc_server(
            config.execution_max_message_bytes, config.execution_max_concurrent_rpcs
        )
        execution_pb2_grpc.add_ExecutionServiceServicer_to_server(
            ExecutionService(self.jobs, config.max_assign_wait_s), execution
        )
        self.execution_port = self._listen(execution, config.execution_port)
        self._servers.append(execution)
        for server in (submission, execution):
            await server.start()
        self._backends.start()
        self.jobs.watchdog.start()
        log.warning("serving WITHOUT TLS: submission and execution traffic is plaintext")
        log.info(
            "scheduler ready (%s mode): submission %s:%d, execution %s:%d",
            config.mode,
            config.host,
            self.submission_port,
            config.host,
            self.execution_port,
        )

    def _listen(self, server: grpc.aio.Server, port: int) -> int:
        bound: int = server.add_insecure_port(f"{self.config.host}:{port}")
        if bound == 0:
            raise OSError(f"cannot listen on {self.config.host}:{port}")
        return bound

    async def _serve_token_database(self, port: int) -> int:
        assert self.stack is not None and self.stack.token_store is not None
        server = grpc.aio.server()
        token_database_pb2_grpc.add_TokenDatabaseServiceServicer_to_server(
            TokenDatabaseService(self.stack.token_store, self.clock), server
        )
        bound = self._listen(server, port)
        await server.start()
        self._token_server = server
        return bound

    async def _serve_http(self) -> None:
        assert self.stack is not None and self.config.local is not None
        payloads = self.stack.local_payloads
        # auto_decompress off: a result is kept exactly as uploaded (gzip) and served so.
        self._http = web.AppRunner(
            build_http_app(payloads, MAX_RESULT_UPLOAD_BYTES),
            access_log=None,
            auto_decompress=False,
        )
        await self._http.setup()
        site = web.TCPSite(self._http, self.config.host, self.config.local.http_port)
        await site.start()
        self.http_port = int(self._http.addresses[0][1])
        assert payloads is not None
        payloads.base_url = (
            self.config.local.public_url or f"http://{self.config.host}:{self.http_port}"
        ).rstrip("/")

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop taking calls, let those under way finish within the grace, close everything."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.config.shutdown_grace_s if grace_s is None else grace_s
        if self.jobs is not None:
            self.jobs.shutdown()  # waiting nodes get an empty answer now
        await asyncio.gather(*(server.stop(grace) for server in self._servers))
        if self._token_server is not None:
            # Last: submissions still in flight resolve their tokens through it.
            await self._token_server.stop(grace)
        if self.jobs is not None:
            await self.jobs.watchdog.stop()
        if self._backends is not None:
            await self._backends.stop()
        if self._channel is not None:
            await self._channel.close()
        if self._http is not None:
            await self._http.cleanup()
        if self.stack is not None:
            await self.stack.close()
        log.info("scheduler stopped")

"""The scheduler under test, started by the benchmark: standalone, or AWS mode on a moto server.

AWS mode runs three children: ``python -m emulators`` (moto without its whole-table copy,
behind the DynamoDB model when asked: docs/emulators.md), ``python -m token_database
serve --sqlite`` and ``scheduler.py --dev --endpoint``; with two replicas, a second
scheduler on the same table (the follower: users' calls go to it, the nodes' to the
leader). Tokens are made in the token SQLite file before the service that reads it
starts. moto records the requests it receives when asked (benchmarks/store_requests.py).
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import boto3
import grpc
from botocore.config import Config as BotoConfig
from prometheus_client.parser import text_string_to_metric_families

from backend_manager.status import DEFAULT_BACKENDS_TOML
from benchmarks.processes import HOST, Child, child_env, free_ports, python_child, tcp_open
from benchmarks.store_requests import RECORDER_ENV, RequestRecorder
from common.clock import SystemClock
from job_manager.stores.dynamodb_job_store import create_table
from token_database.service import create_token
from token_database.store import SqliteTokenStore

REGION = "us-east-1"
TOKEN_ROLE = "developer"
# The benchmark measures speed, not quotas: lift the per-token and queue limits.
LIFTED_LIMITS = {
    "SCHEDULER_MAX_CONCURRENT_JOBS_DEVELOPER": str(10**9),
    "SCHEDULER_MAX_QUEUE_BYTES": str(16 * 1024**3),
    # One token stands for many users here (docs/errors.md, "Limits per token").
    "SCHEDULER_MAX_CALLS_IN_FLIGHT_PER_TOKEN_DEVELOPER": str(10**9),
    "SCHEDULER_MAX_CALL_RATE_PER_TOKEN_DEVELOPER": str(10**9),
}


@dataclass
class Target:
    """Where the running scheduler answers, and the tokens to call it with."""

    mode: str
    submission: str
    execution: str
    metrics_url: str
    tokens: list[str]
    scheduler_log: Path
    scheduler_pid: int
    moto_endpoint: str | None = None
    pids: dict[str, int] = field(default_factory=dict)  # every child that serves, by name
    recorder: RequestRecorder | None = None  # AWS mode: moto's request recorder
    token_database: str | None = None  # AWS mode: the token database service's address


def make_tokens(path: Path, count: int) -> list[str]:
    """``count`` fresh developer tokens in a token SQLite file."""
    store = SqliteTokenStore(path)
    try:
        return [create_token(store, SystemClock(), f"bench-{i}", TOKEN_ROLE)[0]
                for i in range(count)]
    finally:
        store.close()


def aws_client(service: Any, endpoint: str, pool: int = 10, **config: Any) -> Any:
    """A boto3 client of the moto server, configured as the scheduler configures its own."""
    settings = BotoConfig(retries={"mode": "standard", "max_attempts": 5},
                          max_pool_connections=pool, **config)
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION,
                        aws_access_key_id="testing", aws_secret_access_key="testing",
                        config=settings)


def s3_client(endpoint: str, pool: int = 10) -> Any:
    return aws_client("s3", endpoint, pool, s3={"addressing_style": "path"},
                      signature_version="s3v4")


def create_bucket_and_table(endpoint: str, name: str) -> None:
    """A job bucket and a jobs table (with the production indexes) on the moto server."""
    s3_client(endpoint).create_bucket(Bucket=name)
    create_table(aws_client("dynamodb", endpoint), name)


@dataclass
class Deployment:
    """Starts the scheduler (and what it needs) as child processes; stops what it started."""

    work_dir: Path
    token_count: int
    scheduler_env: dict[str, str]
    replicas: int = 1  # AWS mode: 1, or 2 (leader and follower)
    store_model: str = "none"  # AWS mode: the emulator's model (emulators/dynamodb_model.py)
    plain_moto: bool = False  # AWS mode: moto's own transactions, whole-table copy and all
    profile_out: Path | None = None  # run the (first) scheduler under benchmarks/sampler.py
    children: list[Child] = field(default_factory=list)

    async def start(self, mode: str) -> Target:
        target = await (self._standalone() if mode == "standalone" else self._aws())
        target.pids = {child.name: child.pid for child in self.children}
        return target

    def stop(self) -> dict[str, int]:
        """Stop every child, the scheduler first; returns their exit codes."""
        codes = {}
        for child in reversed(self.children):
            codes[child.name] = child.stop()
        self.children.clear()
        return codes

    async def _standalone(self) -> Target:
        from scheduler.wiring.standalone import token_store_path

        data_dir = self.work_dir / "data"
        data_dir.mkdir()
        tokens = make_tokens(token_store_path(data_dir), self.token_count)
        submission, execution, token_db, http, metrics = free_ports(5)
        child = self._scheduler([
            # The load's nodes present no credential (an operator's choice: README, Security).
            "--insecure-execution", "--local", "--data-dir", str(data_dir),
            "--port-for-token-database", str(token_db), "--http-port", str(http),
        ], submission, execution, metrics)
        await self._wait_serving(child, metrics)
        return Target("standalone", f"{HOST}:{submission}", f"{HOST}:{execution}",
                      f"http://{HOST}:{metrics}", tokens, child.log_path, child.pid)

    async def _aws(self) -> Target:
        moto_port, token_port = free_ports(2)
        recording = self.work_dir / "moto-requests.jsonl"
        emulator = ["-m", "emulators", "-H", HOST, "-p", str(moto_port),
                    "--store-model", self.store_model, *(["--plain-moto"] * self.plain_moto)]
        moto = python_child("moto", emulator, self.work_dir,
                            child_env({RECORDER_ENV: str(recording)}))
        self.children.append(moto)
        await moto.wait_ready(lambda: tcp_open(moto_port))
        endpoint = f"http://{HOST}:{moto_port}"
        suffix = uuid.uuid4().hex[:8]
        names = _publish_resources(endpoint, suffix)

        token_file = self.work_dir / "tokens.sqlite3"
        tokens = make_tokens(token_file, self.token_count)
        token_db = python_child("token-database", [
            "-m", "token_database", "serve", "--sqlite", str(token_file),
            "--host", HOST, "--port", str(token_port)], self.work_dir, child_env({}))
        self.children.append(token_db)
        await token_db.wait_ready(lambda: _grpc_ready(f"{HOST}:{token_port}"))

        aws_args = [
            "--dev", "--endpoint", endpoint, "--region", REGION, "-k", "testing",
            "-s", "testing", "--job_bucket_name_key", names["bucket"],
            "--job_table_name_key", names["table"],
            "--backend_status_parameter_name", names["backends"],
            "--address_to_token_database", f"{HOST}:{token_port}",
        ]
        leader, ports = await self._replica("scheduler", aws_args)
        recorder = self._recorder(endpoint, recording)
        if self.replicas == 1:
            return Target("aws", f"{HOST}:{ports[0]}", f"{HOST}:{ports[1]}",
                          f"http://{HOST}:{ports[2]}", tokens, leader.log_path, leader.pid,
                          endpoint, recorder=recorder, token_database=f"{HOST}:{token_port}")
        await _until_leading(f"http://{HOST}:{ports[2]}/metrics")
        _, follower_ports = await self._replica("follower", aws_args)
        # Users reach the follower (a load balancer could send them to either), the
        # nodes the leader; the /metrics read by the phases is the leader's.
        return Target("aws", f"{HOST}:{follower_ports[0]}", f"{HOST}:{ports[1]}",
                      f"http://{HOST}:{ports[2]}", tokens, leader.log_path, leader.pid,
                      endpoint, recorder=recorder, token_database=f"{HOST}:{token_port}")

    def _recorder(self, endpoint: str, recording: Path) -> RequestRecorder:
        return RequestRecorder(endpoint, recording, modelled=self.store_model != "none")

    async def _replica(self, name: str, aws_args: list[str]) -> tuple[Child, list[int]]:
        """One AWS-mode scheduler on fresh ports, serving; its submission, execution and
        metrics ports."""
        ports = free_ports(3)
        child = self._scheduler(aws_args, ports[0], ports[1], ports[2], name=name)
        await self._wait_serving(child, ports[2])
        return child, ports

    def _scheduler(self, mode_args: list[str], submission: int, execution: int,
                   metrics: int, name: str = "scheduler") -> Child:
        # Replicas reach each other at the address the lease publishes (docs/replicas.md).
        env = {**LIFTED_LIMITS, "SCHEDULER_ADVERTISE_HOST": HOST, **self.scheduler_env}
        profiled = (["-m", "benchmarks.sampler", str(self.profile_out), "--"]
                    if self.profile_out is not None and name == "scheduler" else [])
        child = python_child(name, [
            *profiled, "scheduler.py", *mode_args, "--host", HOST,
            "--port-for-submission", str(submission), "--port-for-execution", str(execution),
            "--metrics-port", str(metrics),
        ], self.work_dir, child_env(env))
        self.children.append(child)
        return child

    @staticmethod
    async def _wait_serving(child: Child, metrics_port: int) -> None:
        url = f"http://{HOST}:{metrics_port}/healthz"

        async def serving() -> bool:
            async with aiohttp.ClientSession() as session, session.get(url) as answer:
                return answer.status == 200

        try:
            await child.wait_ready(serving)
        except aiohttp.ClientError:
            raise child.failure("never answered /healthz") from None


async def _until_leading(metrics_url: str, timeout_s: float = 30.0) -> None:
    """Wait until the replica at ``metrics_url`` leads (and has recovered)."""
    give_up = asyncio.get_running_loop().time() + timeout_s
    async with aiohttp.ClientSession() as http:
        while asyncio.get_running_loop().time() < give_up:
            async with http.get(metrics_url) as answer:
                text = await answer.text()
            if any(s.name == "mqc3_replica_leading" and s.value == 1
                   for family in text_string_to_metric_families(text)
                   for s in family.samples):
                return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the first replica does not lead after {timeout_s:g} s")


def _publish_resources(endpoint: str, suffix: str) -> dict[str, str]:
    """Bucket, table and the SSM parameters that name them (as production has them)."""
    name = f"bench-{suffix}"
    create_bucket_and_table(endpoint, name)
    keys = {"bucket": f"/mqc3/{suffix}/job_bucket_name",
            "table": f"/mqc3/{suffix}/job_table_name",
            "backends": f"/mqc3/{suffix}/backend_status"}
    ssm = aws_client("ssm", endpoint)
    ssm.put_parameter(Name=keys["bucket"], Value=name, Type="String")
    ssm.put_parameter(Name=keys["table"], Value=name, Type="String")
    ssm.put_parameter(Name=keys["backends"], Value=DEFAULT_BACKENDS_TOML, Type="String")
    return keys


async def _grpc_ready(address: str) -> bool:
    async with grpc.aio.insecure_channel(address) as channel:
        await asyncio.wait_for(channel.channel_ready(), 1.0)
    return True


class Metrics:
    """Reads the scheduler's /metrics: store calls so far, queue depths, waiting nodes."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._url = f"{base_url}/metrics"

    async def _samples(self) -> list[Any]:
        async with self._session.get(self._url) as answer:
            text = await answer.text()
        return [s for family in text_string_to_metric_families(text) for s in family.samples]

    async def store_calls(self) -> dict[str, int] | None:
        """Store calls made so far, by ``store.operation``; None when /metrics fails."""
        try:
            samples = await self._samples()
        except aiohttp.ClientError:
            return None
        return {f"{s.labels['store']}.{s.labels['operation']}": int(s.value)
                for s in samples if s.name == "mqc3_store_call_seconds_count"}

    async def gauge(self, name: str, backend: str) -> int | None:
        try:
            samples = await self._samples()
        except aiohttp.ClientError:
            return None
        for s in samples:
            if s.name == name and s.labels.get("backend") == backend:
                return int(s.value)
        return None


def calls_between(before: dict[str, int] | None,
                  after: dict[str, int] | None) -> dict[str, int] | None:
    """Store calls made between two readings, zero counts left out."""
    if before is None or after is None:
        return None
    delta = {k: v - before.get(k, 0) for k, v in after.items()}
    return {k: v for k, v in sorted(delta.items()) if v}

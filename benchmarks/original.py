"""The original MQC3 scheduler measured beside ours, in the same run (``--against-original DIR``).

``DIR`` is a checkout of the scheduler this project replaces, with an environment that
runs its ``server.py`` (``DIR/.venv`` by default). It is started as a child process on
the same emulator process and the same token database as ours, with a bucket, a jobs
table (its status index only, as its deployment has it) and SSM parameters of its own,
and the same lifted quotas and worker counts. Then the phases it supports run against
it, before ours:

- ``submit``, ``drain`` and ``lifecycle`` as for ours;
- ``steady`` without a long poll: the original answers AssignNextJob at once, so its
  nodes ask again back to back (or ``--original-poll-ms`` after an empty answer). Its
  nodes' own client is not public; back to back leaves the least time between a job's
  arrival and the next ask, a pause adds up to itself to each dispatch. Its hand-overs
  and submissions share one lock held across their store calls: above the rate that
  lock allows, the steady phase measures the original's queue;
- a drain of what the steady phase left queued, before the lifecycle and again after it.

It has no /metrics and no extension calls: store calls are counted by the emulator's
request recorder instead, and what needs the rest is skipped. Its requests are told
from ours (idle meanwhile) by the table, bucket and parameters they name.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp

from backend_manager.status import DEFAULT_BACKENDS_TOML
from benchmarks import phases as ph
from benchmarks.clients import ready
from benchmarks.deployment import LIFTED_LIMITS, REGION, Metrics, Target, aws_client, s3_client
from benchmarks.lifecycle import lifecycle_phase
from benchmarks.processes import HOST, Child, Meter, free_ports
from benchmarks.session import WORK_BACKEND, Session
from benchmarks.stats import PhaseResult, table
from benchmarks.store_requests import request_body, s3_operation
from job_manager.stores.dynamodb_job_store import create_table

ENTRY_POINT = "server.py"  # the original's command line (its README)


def default_python(checkout: Path) -> Path:
    """The interpreter to run a checkout with: its own ``.venv`` when it has one."""
    own = checkout / ".venv" / "bin" / "python"
    return own if own.exists() else Path(sys.executable)


def looks_like_original(checkout: Path) -> str | None:
    """Why ``checkout`` cannot be the original's, or None when it can."""
    for needed in (ENTRY_POINT, "job_manager", "pb"):
        if not (checkout / needed).exists():
            return f"{checkout} has no {needed}: not a checkout of the original scheduler"
    return None


@dataclass(frozen=True)
class Resources:
    """The original's bucket, table and the SSM parameters that name them."""

    bucket: str
    table: str
    bucket_key: str
    table_key: str
    backends_key: str

    @classmethod
    def publish(cls, endpoint: str) -> Resources:
        suffix = uuid.uuid4().hex[:8]
        name = f"original-{suffix}"
        s3_client(endpoint).create_bucket(Bucket=name)
        # The original's deployment: the status index its recovery queries, nothing else.
        create_table(aws_client("dynamodb", endpoint), name, owner_index=False)
        made = cls(name, name, f"/original/{suffix}/job_bucket_name",
                   f"/original/{suffix}/job_table_name", f"/original/{suffix}/backend_status")
        ssm = aws_client("ssm", endpoint)
        for key, value in ((made.bucket_key, name), (made.table_key, name),
                           (made.backends_key, DEFAULT_BACKENDS_TOML)):
            ssm.put_parameter(Name=key, Value=value, Type="String")
        return made

    def owner(self, entry: dict[str, Any]) -> tuple[str, str]:
        """(who, ``service.Operation``) of one recorded request: ``original`` for the
        original's own, ``presigned`` for an upload or download through a URL it signed,
        ``other`` for anyone else's (ours, idle meanwhile, or the load generator's)."""
        headers = {k.lower(): v for k, v in entry.get("headers", {}).items()}
        target = headers.get("x-amz-target", "")
        if target:
            service = "dynamodb" if target.startswith("DynamoDB_") else "ssm"
            operation = f"{service}.{target.split('.', 1)[1]}"
            body = request_body(entry)
            names = ((f'"{self.table}"',) if service == "dynamodb" else
                     (f'"{self.bucket_key}"', f'"{self.table_key}"', f'"{self.backends_key}"'))
            return ("original" if any(n in body for n in names) else "other"), operation
        url = urlsplit(entry.get("url", ""))
        operation = f"s3.{s3_operation(entry.get('method', ''), url.path, url.query)}"
        if not (url.path == f"/{self.bucket}" or url.path.startswith(f"/{self.bucket}/")):
            return "other", operation
        if "X-Amz-Signature" in parse_qs(url.query):
            return "presigned", operation
        return "original", operation

    def count(self, entries: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
        """Requests by who made them, then by operation; the original's under
        ``scheduler`` (the scheduler under test), as the lifecycle measure reads them."""
        counts: dict[str, Counter[str]] = {}
        for entry in entries:
            who, operation = self.owner(entry)
            who = "scheduler" if who == "original" else who
            counts.setdefault(who, Counter())[operation] += 1
        return {who: dict(sorted(c.items())) for who, c in sorted(counts.items())}


class NoMetrics(Metrics):
    """The original has no /metrics: every reading is unknown."""

    def __init__(self) -> None:  # no HTTP session, no URL
        pass

    async def store_calls(self) -> dict[str, int] | None:
        return None

    async def gauge(self, name: str, backend: str) -> int | None:
        return None


@dataclass
class OriginalScheduler:
    """The original's ``server.py`` as a child process, on ``target``'s emulator and token
    database."""

    checkout: Path
    python: Path
    work_dir: Path
    scheduler_env: dict[str, str]
    child: Child | None = None
    resources: Resources | None = None
    exit_code: int | None = None

    async def start(self, ours: Target) -> Target:
        assert ours.moto_endpoint is not None and ours.token_database is not None
        self.resources = names = await asyncio.to_thread(Resources.publish, ours.moto_endpoint)
        submission, execution = free_ports(2)
        self.child = child = Child("original", [
            str(self.python), str(self.checkout / ENTRY_POINT),
            "--port-for-submission", f"{HOST}:{submission}",
            "--port-for-execution", f"{HOST}:{execution}",
            "--address_to_token_database", ours.token_database,
            "--dev", "--endpoint", ours.moto_endpoint, "--region", REGION,
            "-k", "testing", "-s", "testing",
            "--job_bucket_name_key", names.bucket_key, "--job_table_name_key", names.table_key,
            "--backend_status_parameter_name", names.backends_key,
        ], self.work_dir / "original.log", self._env())
        for port in (submission, execution):
            await child.wait_ready(partial(ready, f"{HOST}:{port}"))
        # The emulator and the token database are shared: metered with the original.
        shared = {k: v for k, v in ours.pids.items() if k not in ("scheduler", "follower")}
        return Target("original", f"{HOST}:{submission}", f"{HOST}:{execution}", "",
                      ours.tokens, child.log_path, child.pid, ours.moto_endpoint,
                      pids={"scheduler": child.pid, **shared}, recorder=ours.recorder)

    def _env(self) -> dict[str, str]:
        """This environment without our repository on the path (the original's packages
        have our packages' names), plus the lifted quotas and the run's worker counts,
        which the original reads under the same names (those it lacks do nothing)."""
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env.update({**LIFTED_LIMITS, **self.scheduler_env})
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def stop(self) -> None:
        if self.child is not None:
            self.exit_code = self.child.stop()
            self.child = None


async def measure_original(args: Any, ours: Target, work_dir: Path,
                           scheduler_env: dict[str, str]) -> dict[str, Any]:
    """Start the original, run its phases, stop it; its results, unprinted."""
    checkout = Path(args.against_original).resolve()
    python = Path(args.original_python) if args.original_python else default_python(checkout)
    original = OriginalScheduler(checkout, python, work_dir, scheduler_env)
    result: dict[str, Any] = {"checkout_python": str(python), "store_model": args.store_model,
                              "nodes_poll": _poll_words(args.original_poll_ms)}
    measured: list[PhaseResult] = []
    try:
        target = await original.start(ours)
        assert original.resources is not None
        result["resources"] = vars(original.resources)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.nodes * 2, force_close=True)) as http:
            session = Session(target, http, NoMetrics(), args.clients, args.nodes,
                              args.payload_bytes)
            try:
                await session.connect()
                measured = await _phases(args, session, Meter(target.pids), original.resources)
                result["accounting"] = session.ledger.accounting()
            finally:
                await session.close()
    finally:
        original.stop()
        result["exit_code"] = original.exit_code
    result["phases"] = {p.name: p.to_json() for p in measured}
    result["_results"] = measured
    return result


def _poll_words(poll_ms: float) -> str:
    return ("back to back" if poll_ms <= 0 else
            f"again {poll_ms:g} ms after an empty answer")


async def _phases(args: Any, session: Session, meter: Meter,
                  resources: Resources) -> list[PhaseResult]:
    """The phases the original supports, in the order ours runs them."""
    measured = [await ph.metered(meter, ph.submit_phase(
        session, args.submit_duration_s or args.duration_s, args.jobs))]
    measured.append(await ph.metered(meter, ph.drain_phase(session, WORK_BACKEND,
                                                        args.drain_timeout_s)))
    steady = await ph.metered(meter, ph.steady_phase(
        session, args.rate, args.duration_s, wait_ms=0,
        empty_pause_s=args.original_poll_ms / 1000))
    steady.extra["nodes_poll"] = _poll_words(args.original_poll_ms)
    # What its nodes had not received within the grace (a rate above what the original
    # takes) would be handed to the lifecycle's nodes in place of their own jobs.
    leftover = PhaseResult("steady_left_behind", "cycle")
    steady.extra["left_behind_and_finished"] = await session.finish_left_behind(
        WORK_BACKEND, leftover)
    steady.errors.update(leftover.errors)
    measured.append(steady)
    if args.lifecycle_jobs:
        measured.append(await ph.metered(meter, lifecycle_phase(
            session, args.lifecycle_jobs,
            min(args.lifecycle_concurrency, args.clients, args.nodes),
            session.target.recorder, args.budget_lives, counter=resources.count)))
    cleanup = PhaseResult("cleanup", "cycle")
    started = time.perf_counter()
    cleanup.operations = await session.finish_left_behind(WORK_BACKEND, cleanup)
    cleanup.duration_s = time.perf_counter() - started
    cleanup.extra["work_backend_left_behind"] = cleanup.operations
    measured.append(cleanup)
    return measured


@dataclass
class Row:
    """One line of the comparison: a measure of the original and of ours."""

    measure: str
    better: str  # "higher" or "lower"
    original: float | None
    ours: float | None
    goal: float | None = None  # issue 28: the least ours/original it asks for
    ratio: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.ratio = (round(self.ours / self.original, 3)
                      if self.ours is not None and self.original else None)


def comparison(original: dict[str, PhaseResult], ours: dict[str, PhaseResult]) -> list[Row]:
    """The figures both schedulers have, side by side; the store's floor once."""
    def rate(phases: dict[str, PhaseResult], name: str) -> float | None:
        return round(phases[name].rate_per_s, 1) if name in phases else None

    def latency(phases: dict[str, PhaseResult], name: str, kind: str, q: str) -> float | None:
        samples = phases[name].latencies.get(kind) if name in phases else None
        value = samples.summary_ms().get(q) if samples else None
        return None if value is None else float(value)

    def life(phases: dict[str, PhaseResult], key: str) -> float | None:
        extra = phases["lifecycle"].extra if "lifecycle" in phases else {}
        if key == "cpu":
            return extra.get("cpu_ms_per_operation", {}).get("scheduler")
        if key in ("write_units", "read_units"):  # the emulator's model, when it runs one
            return extra.get("capacity_units_per_job", {}).get(key)
        requests = extra.get("store_requests_per_job")
        return requests["total"] if requests else None

    rows = [
        Row("submit rate /s", "higher", rate(original, "submit"), rate(ours, "submit"), 1.5),
        Row("submit p50 ms", "lower", latency(original, "submit", "submit", "p50"),
            latency(ours, "submit", "submit", "p50")),
        Row("submit p99 ms", "lower", latency(original, "submit", "submit", "p99"),
            latency(ours, "submit", "submit", "p99")),
        Row("drain rate /s", "higher", rate(original, "drain"), rate(ours, "drain"), 3.5),
        Row("drain cycle p50 ms", "lower", latency(original, "drain", "cycle", "p50"),
            latency(ours, "drain", "cycle", "p50")),
        Row("drain cycle p99 ms", "lower", latency(original, "drain", "cycle", "p99"),
            latency(ours, "drain", "cycle", "p99")),
        Row("dispatch p50 ms", "lower", latency(original, "steady", "dispatch", "p50"),
            latency(ours, "steady", "dispatch", "p50")),
        Row("dispatch p99 ms", "lower", latency(original, "steady", "dispatch", "p99"),
            latency(ours, "steady", "dispatch", "p99")),
        Row("CPU ms per job's life", "lower", life(original, "cpu"), life(ours, "cpu")),
        Row("store requests per life", "lower", life(original, "requests"),
            life(ours, "requests")),
        Row("write units per life (model)", "lower", life(original, "write_units"),
            life(ours, "write_units")),
        Row("read units per life (model)", "lower", life(original, "read_units"),
            life(ours, "read_units")),
    ]
    for name in ("store_submit", "store_assign"):  # the store's floor: one figure for both
        floor = rate(ours, name)
        rows.append(Row(f"{name} rate /s (floor)", "higher", floor, floor))
    return rows


def comparison_table(rows: list[Row], info: dict[str, Any]) -> str:
    header = (f"{'measure':<30} {'original':>10} {'ours':>10} {'ours/orig':>10} "
              f"{'better':>7} {'issue 28':>9}")
    lines = [header, "-" * len(header)]
    for row in rows:
        goal = ""
        if row.goal is not None and row.ratio is not None:
            goal = ("met" if row.ratio >= row.goal else "MISSED") + f" >={row.goal:g}"
        lines.append(f"{row.measure:<30} {_num(row.original):>10} {_num(row.ours):>10} "
                     f"{_num(row.ratio):>10} {row.better:>7} {goal:>9}")
    lines.append(f"(store model: {info['store_model']}; the original's nodes poll "
                 f"{info['nodes_poll']}, ours long-poll; the original ran first)")
    return "\n".join(lines)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.3f}".rstrip("0").rstrip(".")


def summary(original: dict[str, PhaseResult], ours: dict[str, PhaseResult],
            info: dict[str, Any]) -> tuple[list[dict[str, Any]], str, str]:
    """The comparison rows (JSON), the comparison table and the original's own table;
    ``ours`` holds our phases and the run's ceilings (the store's floor), ``info`` what
    ``measure_original`` said of the run."""
    rows = comparison(original, ours)
    return ([vars(row) for row in rows], comparison_table(rows, info),
            table(list(original.values())))


def problems(result: dict[str, Any]) -> list[str]:
    """What went wrong on the original's side: reported, never our run's failure."""
    found = []
    accounting = result.get("accounting")
    if accounting is not None and not accounting["ok"]:
        found.append("the original lost, doubled or mixed up jobs: "
                     + json.dumps({k: accounting[k] for k in (
                         "never_assigned", "assigned_more_than_once", "program_mismatches",
                         "unknown_assigned")}))
    failed = {name: p["errors"] for name, p in result.get("phases", {}).items() if p["errors"]}
    if failed:
        found.append(f"the original's calls failed: {failed}")
    return found

"""The load generator's command line and the order of a run (``python benchmarks/load.py``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import grpc

from benchmarks import phases as ph
from benchmarks.ceilings import UnaryCeiling, local_store_ceiling, store_ceilings
from benchmarks.deployment import Deployment, Metrics
from benchmarks.processes import ROOT, ChildFailed
from benchmarks.session import IDLE_BACKEND, WORK_BACKEND, Session
from benchmarks.stats import PhaseResult, matplotlib_missing, plot, table

OUT_DIR = ROOT / "benchmarks" / "out"
PROBE_JOBS = 20
# The scheduler's defaults for concurrent calls per service (scheduler/config.py).
DEFAULT_SUBMISSION_WORKERS = 100
DEFAULT_EXECUTION_WORKERS = 10


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/load.py",
        description="Start the MQC3 scheduler, measure reference ceilings, then run the "
        "submit, drain, steady and status phases; account for every job; write one JSON "
        "result and print a table. Exit status: 0 all good, 1 a job was lost, doubled or "
        "mixed up, 2 calls failed or the run could not be set up.")
    p.add_argument("--mode", choices=["standalone", "aws"], default="standalone",
                   help="scheduler.py --local, or --dev against a moto server (default "
                   "standalone)")
    p.add_argument("--duration-s", type=float, default=10.0,
                   help="length of each timed phase: unary ceiling, store ceilings, submit, "
                   "steady, status (default 10)")
    p.add_argument("--clients", type=int, default=16,
                   help="concurrent users (submit, status, ceilings) (default 16)")
    p.add_argument("--nodes", type=int, default=8, help="hardware nodes (default 8)")
    p.add_argument("--rate", type=float, default=50.0,
                   help="steady phase: submissions per second (default 50)")
    p.add_argument("--submit-duration-s", type=float, default=None,
                   help="length of the submit phase (default: --duration-s); with --jobs, "
                   "e.g. to queue 100000 jobs and read the scheduler's RSS")
    p.add_argument("--jobs", type=int, default=None,
                   help="submit phase: stop after this many submissions (default: none, "
                   "time only)")
    p.add_argument("--live-jobs", type=int, default=100,
                   help="status phase: queued jobs to poll (default 100)")
    p.add_argument("--payload-bytes", type=int, default=1024,
                   help="program size (default 1024)")
    p.add_argument("--wait-ms", type=int, default=5000,
                   help="steady phase: the nodes' long poll, x-mqc3-wait-ms (default 5000)")
    p.add_argument("--drain-timeout-s", type=float, default=300.0,
                   help="give up draining after this long (default 300)")
    p.add_argument("--scheduler-log-level", default="INFO",
                   choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="the scheduler's SCHEDULER_LOG_LEVEL (default INFO, as deployed)")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON result (default benchmarks/out/<timestamp>.json)")
    p.add_argument("--plot", type=Path, default=None, metavar="FILE.png",
                   help="draw latency distributions (needs matplotlib)")
    p.add_argument("--allow-errors", action="store_true",
                   help="exit 0 even when some calls failed (jobs must still all be "
                   "accounted for)")
    p.add_argument("--keep-temp", action="store_true",
                   help="keep the temporary directory (data, logs) and print its path")
    return p


def _positive(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    for name in ("duration_s", "clients", "nodes", "rate", "payload_bytes", "drain_timeout_s"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("jobs", "submit_duration_s"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.live_jobs < 0 or args.wait_ms < 0:
        p.error("--live-jobs and --wait-ms must not be negative")


def _scheduler_env(args: argparse.Namespace) -> dict[str, str]:
    env = {"SCHEDULER_LOG_LEVEL": args.scheduler_log_level}
    # Only when the run needs more concurrent calls than the defaults allow.
    if args.clients * 2 > DEFAULT_SUBMISSION_WORKERS:
        env["SCHEDULER_SUBMISSION_MAX_WORKERS"] = str(args.clients * 2)
    if args.nodes + 2 > DEFAULT_EXECUTION_WORKERS:
        env["SCHEDULER_EXECUTION_MAX_WORKERS"] = str(args.nodes + 2)
    return env


def _git() -> dict[str, Any]:
    def run(*argv: str) -> str:
        try:
            done = subprocess.run(["git", *argv], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return done.stdout.strip()

    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain"))}


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "grpc": grpc.__version__,
            "loadavg_at_start": os.getloadavg()}


def _target(name: str, goal: str, value: float | None,
            met: Callable[[float], bool]) -> dict[str, Any]:
    return {"target": name, "goal": goal, "measured": value,
            "met": None if value is None else met(value)}


def _targets(found: dict[str, PhaseResult], mode: str) -> list[dict[str, Any]]:
    """The issue's targets, each with its measured figure and whether it was met."""
    def rate(name: str) -> float | None:
        return found[name].rate_per_s if name in found else None

    def ratio(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a is not None and b else None

    def latency(name: str, kind: str, q: str) -> float | None:
        samples = found[name].latencies.get(kind) if name in found else None
        value = samples.summary_ms().get(q) if samples else None
        return None if value is None else float(value)

    def extra(name: str, key: str) -> float | None:
        return found[name].extra.get(key) if name in found else None

    # The mean of the trivial rate at the start and at the end of the run.
    unary_rates = [r for r in (rate("unary_ceiling"), rate("unary_ceiling_end")) if r]
    unary = sum(unary_rates) / len(unary_rates) if unary_rates else None
    rows = [
        _target("status_live_rate / unary_rate", ">= 0.5", ratio(rate("status_live"), unary),
                lambda v: v >= 0.5),
        _target("store calls per live GetJobStatus", "0",
                extra("status_live", "store_calls_per_status"), lambda v: v == 0),
    ]
    if mode == "standalone":  # in AWS mode the store sets the pace (see below)
        rows += [
            _target("submit_rate / unary_rate", ">= 0.333", ratio(rate("submit"), unary),
                    lambda v: v >= 1 / 3),
            _target("submit p99 ms", "< 25", latency("submit", "submit", "p99"),
                    lambda v: v < 25),
            _target("submit_rate / store_submit_rate (reference)", ">= 0.8",
                    ratio(rate("submit"), rate("store_submit")), lambda v: v >= 0.8),
        ]
    rows += [
        _target("dispatch p50 ms", "< 5", latency("steady", "dispatch", "p50"),
                lambda v: v < 5),
        _target("dispatch p99 ms", "< 25", latency("steady", "dispatch", "p99"),
                lambda v: v < 25),
    ]
    if mode == "aws":
        rows += [
            _target("submit_rate / store_submit_rate", ">= 0.8",
                    ratio(rate("submit"), rate("store_submit")), lambda v: v >= 0.8),
            _target("store writes per assignment", "1",
                    extra("assign_probe", "store_writes_per_assignment"), lambda v: v == 1),
        ]
    return rows


async def measure(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Run every phase; returns the JSON result (``ok`` and ``problems`` say how it went)."""
    run: dict[str, Any] = {"mode": args.mode, "args": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()},
                           "started_at": datetime.now(UTC).isoformat(), "git": _git(),
                           "machine": _machine()}
    unary = UnaryCeiling(args.clients, work_dir)
    deployment = Deployment(work_dir, min(args.clients, 16), _scheduler_env(args))
    measured: list[PhaseResult] = []
    result: dict[str, Any] = {"schema": 1, "run": run}
    try:
        await unary.start()
        ceilings = [await unary.measure("unary_ceiling", args.duration_s)]
        target = await deployment.start(args.mode)
        run["scheduler_env"] = deployment.scheduler_env
        if args.mode == "standalone":
            store_dir = work_dir / "store-ceiling"
            store_dir.mkdir()
            ceilings.append(await local_store_ceiling(store_dir, args.clients,
                                                      args.duration_s, args.payload_bytes))
        if target.moto_endpoint is not None:
            ceilings += await asyncio.to_thread(store_ceilings, target.moto_endpoint,
                                                args.clients, args.duration_s,
                                                args.payload_bytes)
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.nodes * 2)) as http:
            session = Session(target, http, Metrics(http, target.metrics_url), args.clients,
                              args.nodes, args.payload_bytes)
            try:
                await session.connect()
                submitted = await ph.submit_phase(
                    session, args.submit_duration_s or args.duration_s, args.jobs)
                measured.append(submitted)
                # Leaves at least half of the submitted jobs to the drain.
                probe = min(PROBE_JOBS, submitted.operations // 2)
                if probe:
                    measured.append(await ph.assign_probe(session, probe))
                measured.append(await ph.drain_phase(session, WORK_BACKEND,
                                                     args.drain_timeout_s))
                measured.append(await ph.steady_phase(session, args.rate, args.duration_s,
                                                      args.wait_ms))
                measured += await ph.status_phases(session, args.duration_s, args.live_jobs)
                # Again, with the scheduler idle: did the machine's load change meanwhile?
                ceilings.append(await unary.measure("unary_ceiling_end", args.duration_s / 2))
                measured.append(await ph.drain_phase(session, IDLE_BACKEND,
                                                     args.drain_timeout_s, name="cleanup"))
                result["accounting"] = session.ledger.accounting()
            finally:
                await session.close()
    finally:
        await unary.stop()
        run["children_exit_codes"] = deployment.stop()
        run["loadavg_at_end"] = os.getloadavg()
        run["finished_at"] = datetime.now(UTC).isoformat()
    found = {p.name: p for p in ceilings + measured}
    result["ceilings"] = {p.name: p.to_json() for p in ceilings}
    result["phases"] = {p.name: p.to_json() for p in measured}
    result["targets"] = _targets(found, args.mode)
    result["_table"] = table(ceilings + measured)
    result["_results"] = ceilings + measured
    return result


def _problems(result: dict[str, Any], allow_errors: bool) -> tuple[int, list[str]]:
    accounting = result["accounting"]
    problems = []
    if not accounting["ok"]:
        problems.append(
            f"JOBS NOT ACCOUNTED FOR: {accounting['never_assigned']} never assigned, "
            f"{accounting['assigned_more_than_once']} assigned more than once, "
            f"{accounting['program_mismatches']} received other bytes than were sent, "
            f"{accounting['unknown_assigned']} unknown jobs handed out, "
            f"{accounting['duplicate_job_ids']} job ids given to two submissions "
            f"(examples: {accounting['examples']})")
    failed_calls = {name: phase["errors"] for name, phase in
                    {**result["ceilings"], **result["phases"]}.items() if phase["errors"]}
    if failed_calls and not allow_errors:
        problems.append(f"calls failed: {failed_calls}")
    empty = [name for name, phase in result["phases"].items() if phase["operations"] == 0]
    if empty:
        problems.append(f"phases that did nothing: {empty}")
    if not accounting["ok"]:
        return 1, problems
    return (2 if problems else 0), problems


def _out_path(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    path = OUT_DIR / f"{stamp}.json"
    n = 1
    while path.exists():
        path = OUT_DIR / f"{stamp}-{n}.json"
        n += 1
    return path


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    _positive(args, p)
    if args.plot is not None and (why := matplotlib_missing()) is not None:
        print(f"load.py: {why}", file=sys.stderr)
        return 2
    work_dir = Path(tempfile.mkdtemp(prefix="mqc3-bench-"))
    began = time.perf_counter()
    try:
        result = asyncio.run(measure(args, work_dir))
    except ChildFailed as exc:
        print(f"load.py: could not run: {exc}", file=sys.stderr)
        return 2
    finally:
        if args.keep_temp:
            print(f"temporary directory kept: {work_dir}", file=sys.stderr)
        else:
            shutil.rmtree(work_dir, ignore_errors=True)
    code, problems = _problems(result, args.allow_errors)
    printed, results = result.pop("_table"), result.pop("_results")
    result["ok"], result["problems"] = code == 0, problems
    result["run"]["wall_s"] = round(time.perf_counter() - began, 1)
    out = _out_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"MQC3 scheduler load test, {args.mode} mode, {args.clients} clients, "
          f"{args.nodes} nodes, {result['run']['machine']['cpus']} CPUs")
    print(printed)
    print()
    for row in result["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        print(f"  {row['target']:<36} {row['goal']:>9}  measured {row['measured']!s:>8}  {mark}")
    accounting = result["accounting"]
    print(f"\njobs: {accounting['accepted']} accepted, {accounting['assigned_once']} assigned "
          f"once, {accounting['assigned_more_than_once']} more than once, "
          f"{accounting['never_assigned']} never; result {out}")
    if args.plot is not None:
        plot(results, args.plot, f"MQC3 scheduler latencies ({args.mode})")
        print(f"plot {args.plot}")
    for problem in problems:
        print(f"\n*** FAILED: {problem}", file=sys.stderr)
    return code

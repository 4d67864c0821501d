"""The load generator's command line and the order of a run (``python benchmarks/load.py``)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
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
from benchmarks.crowd import status_crowd_phase
from benchmarks.deployment import Deployment, Metrics
from benchmarks.lifecycle import lifecycle_phase
from benchmarks.original import looks_like_original, measure_original
from benchmarks.original import problems as original_problems
from benchmarks.original import summary as original_summary
from benchmarks.processes import ROOT, ChildFailed, Meter
from benchmarks.session import IDLE_BACKEND, WORK_BACKEND, Session
from benchmarks.stats import PhaseResult, matplotlib_missing, plot, table
from emulators.server import STORE_MODELS

OUT_DIR = ROOT / "benchmarks" / "out"
PROBE_JOBS = 20
# The scheduler's defaults for concurrent calls per service (scheduler/wiring/config.py).
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
    p.add_argument("--replicas", type=int, choices=[1, 2], default=1,
                   help="AWS mode: 2 starts a leader and a follower on the same table; users "
                   "call the follower, nodes the leader (default 1)")
    p.add_argument("--store-model", choices=STORE_MODELS, default="none",
                   help="AWS mode: the emulator's model of the store's costs: none (moto's "
                   "own pace), or dynamodb (DynamoDB's latency, conflicts and throttling; "
                   "docs/emulators.md) (default none)")
    p.add_argument("--plain-moto", action="store_true",
                   help="AWS mode: moto's own transactions, which copy the whole table per "
                   "action (default: the emulator's, without the copy)")
    p.add_argument("--lifecycle-jobs", type=int, default=500,
                   help="lifecycle measure: whole job lives to run, for the scheduler's CPU "
                   "per job and (AWS mode) its store requests per job; 0 skips (default 500)")
    p.add_argument("--lifecycle-concurrency", type=int, default=8,
                   help="lifecycle measure: lives at once (default 8, at most --clients "
                   "and --nodes)")
    p.add_argument("--budget-lives", type=int, default=10,
                   help="AWS mode: lives run one at a time first, each call's store requests "
                   "counted apart (default 10)")
    p.add_argument("--crowd-rate", type=float, default=5000.0,
                   help="status_crowd phase: GetJobStatus polls per second, open loop; 0 "
                   "skips (default 5000)")
    p.add_argument("--crowd-channels", type=int, default=300,
                   help="status_crowd phase: channels, each a user polling their own queued "
                   "job (default 300)")
    p.add_argument("--crowd-processes", type=int, default=2,
                   help="status_crowd phase: poller processes sharing the rate (default 2)")
    p.add_argument("--crowd-submit-rate", type=float, default=20.0,
                   help="status_crowd phase: submissions per second meanwhile, for dispatch "
                   "latency (default 20)")
    p.add_argument("--profile-lifecycle", action="store_true",
                   help="run the scheduler under the sampling profiler (benchmarks/sampler.py) "
                   "and report its functions' own CPU per job during the lifecycle measure")
    p.add_argument("--no-plots", action="store_true",
                   help="do not draw the plots (drawn by default when matplotlib imports: "
                   "<result>-latency.png and <result>-rate.png beside the JSON)")
    p.add_argument("--allow-errors", action="store_true",
                   help="exit 0 even when some calls failed (jobs must still all be "
                   "accounted for)")
    p.add_argument("--keep-temp", action="store_true",
                   help="keep the temporary directory (data, logs) and print its path")
    p.add_argument("--against-original", metavar="DIR", type=Path, default=None,
                   help="AWS mode: also measure the original scheduler, a checkout of it in "
                   "DIR, on the same emulator first (submit, drain, steady, lifecycle), and "
                   "print both with the ratios ours/original (benchmarks/original.py)")
    p.add_argument("--original-python", metavar="PATH", default=None,
                   help="the interpreter that runs the original (default DIR/.venv/bin/python "
                   "when it exists, else this one)")
    p.add_argument("--original-poll-ms", type=float, default=0.0,
                   help="steady phase, the original's nodes (it has no long poll): pause "
                   "after an empty AssignNextJob (default 0: back to back)")
    return p


def _positive(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    for name in ("duration_s", "clients", "nodes", "rate", "payload_bytes", "drain_timeout_s",
                 "lifecycle_concurrency", "crowd_channels", "crowd_processes",
                 "crowd_submit_rate"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    for name in ("lifecycle_jobs", "budget_lives", "crowd_rate"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must not be negative")
    if args.replicas > 1 and args.mode != "aws":
        p.error("--replicas 2 needs --mode aws (standalone runs one scheduler per data "
                "directory)")
    if args.crowd_channels < args.crowd_processes:
        p.error("--crowd-channels must be at least --crowd-processes")
    for name in ("jobs", "submit_duration_s"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.live_jobs < 0 or args.wait_ms < 0:
        p.error("--live-jobs and --wait-ms must not be negative")
    if args.against_original is not None:
        if args.mode != "aws":
            p.error("--against-original needs --mode aws (the original runs on AWS services "
                    "only)")
        why = looks_like_original(args.against_original)
        if why:
            p.error(f"--against-original: {why}")
    if args.original_poll_ms < 0:
        p.error("--original-poll-ms must not be negative")


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


def _at_least(goal: float) -> Callable[[float], bool]:
    return lambda value: value >= goal


# Issue 14: half the scheduler's CPU per whole life first measured (10.0 ms standalone,
# 28.5 ms on moto).
CPU_MS_PER_LIFE_HALVED = {"standalone": 5.0, "aws": 14.25}


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
            _target("submit_rate / unary_rate", ">= 0.40", ratio(rate("submit"), unary),
                    lambda v: v >= 0.40),
            _target("submit p99 ms", "< 25", latency("submit", "submit", "p99"),
                    lambda v: v < 25),
            _target("submit_rate / store_submit_rate (reference)", ">= 0.8",
                    ratio(rate("submit"), rate("store_submit")), lambda v: v >= 0.8),
        ]
    if mode == "standalone":
        rows += [
            _target("dispatch p50 ms", "< 5", latency("steady", "dispatch", "p50"),
                    lambda v: v < 5),
            _target("dispatch p99 ms", "< 25", latency("steady", "dispatch", "p99"),
                    lambda v: v < 25),
        ]
    else:  # issue 28: against the store's floor, an S3 put, a put and a conditional put
        floor = latency("store_floor", "floor", "p50")
        rows += [
            _target("dispatch p50 / store floor p50", "<= 1.5",
                    ratio(latency("steady", "dispatch", "p50"), floor), lambda v: v <= 1.5),
            _target("dispatch p99 ms", "< 60", latency("steady", "dispatch", "p99"),
                    lambda v: v < 60),
        ]
    if "status_crowd" in found:
        rows += [
            _target("status_crowd poll p99 ms", "< 50", latency("status_crowd", "poll", "p99"),
                    lambda v: v < 50),
            _target("status_crowd poll rate / target", ">= 0.95", ratio(
                rate("status_crowd"), found["status_crowd"].extra["target_poll_rate_per_s"]),
                lambda v: v >= 0.95),
        ]
        if mode == "standalone":
            rows.append(_target("status_crowd dispatch p99 ms", "< 5",
                                latency("status_crowd", "dispatch", "p99"), lambda v: v < 5))
    lifecycle = found["lifecycle"].extra if "lifecycle" in found else {}
    if lifecycle:  # half the CPU per whole life first measured (issue 14)
        halved = CPU_MS_PER_LIFE_HALVED[mode]
        rows.append(_target("scheduler CPU ms per job's life", f"<= {halved}",
                            lifecycle.get("cpu_ms_per_operation", {}).get("scheduler"),
                            lambda v: v <= halved))
    if mode == "aws":
        requests = lifecycle.get("store_requests_per_job")
        rows.append(_target("store requests per job's life", "<= 8",
                            requests["total"] if requests else None, lambda v: v <= 8))
    if mode == "aws":
        rows += [
            _target("submit_rate / store_submit_rate", ">= 0.8",
                    ratio(rate("submit"), rate("store_submit")), lambda v: v >= 0.8),
            _target("store writes per assignment", "1",
                    extra("assign_probe", "store_writes_per_assignment"), lambda v: v == 1),
        ]
    return rows


async def _phases(args: argparse.Namespace, session: Session, meter: Meter,
                  unary: UnaryCeiling, ceilings: list[PhaseResult]) -> list[PhaseResult]:
    """The measured phases, in order (README of benchmarks/RESULTS.md)."""
    measured: list[PhaseResult] = []
    submitted = await ph.metered(meter, ph.submit_phase(
        session, args.submit_duration_s or args.duration_s, args.jobs))
    measured.append(submitted)
    # Leaves at least half of the submitted jobs to the drain.
    probe = min(PROBE_JOBS, submitted.operations // 2)
    if probe:
        measured.append(await ph.metered(meter, ph.assign_probe(session, probe)))
    measured.append(await ph.metered(meter, ph.drain_phase(session, WORK_BACKEND,
                                                        args.drain_timeout_s)))
    measured.append(await ph.metered(meter, ph.steady_phase(session, args.rate, args.duration_s,
                                                         args.wait_ms)))
    if args.lifecycle_jobs:
        profiling = args.profile_lifecycle
        if profiling:
            os.kill(session.target.scheduler_pid, signal.SIGUSR1)  # the sampler starts
        measured.append(await ph.metered(meter, lifecycle_phase(
            session, args.lifecycle_jobs,
            min(args.lifecycle_concurrency, args.clients, args.nodes),
            session.target.recorder, args.budget_lives)))
        if profiling:
            os.kill(session.target.scheduler_pid, signal.SIGUSR2)  # and stops
    for name, jobs in await ph.status_slices(session, args.live_jobs):
        measured.append(await ph.metered(meter, ph.poll_status(session, name, jobs,
                                                            args.duration_s / 2)))
    if args.crowd_rate:
        measured.append(await ph.metered(meter, status_crowd_phase(
            session, args.crowd_rate, args.crowd_channels, args.crowd_processes,
            args.duration_s, args.crowd_submit_rate, args.wait_ms, meter)))
    # Again, with the scheduler idle: did the machine's load change meanwhile?
    ceilings.append(await unary.measure("unary_ceiling_end", args.duration_s / 2))
    cleanup = await ph.metered(meter, ph.drain_phase(session, IDLE_BACKEND, args.drain_timeout_s,
                                                  name="cleanup"))
    # A steady phase's job its nodes had not received within the grace is still queued.
    cleanup.extra["work_backend_left_behind"] = await session.finish_left_behind(
        WORK_BACKEND, cleanup)
    measured.append(cleanup)
    return measured


async def measure(args: argparse.Namespace, work_dir: Path) -> dict[str, Any]:
    """Run every phase; returns the JSON result (``ok`` and ``problems`` say how it went)."""
    run: dict[str, Any] = {"mode": args.mode, "args": {k: str(v) if isinstance(v, Path) else v
                                                      for k, v in vars(args).items()},
                           "started_at": datetime.now(UTC).isoformat(), "git": _git(),
                           "machine": _machine()}
    unary = UnaryCeiling(args.clients, work_dir)
    profile = work_dir / "profile.json" if args.profile_lifecycle else None
    deployment = Deployment(work_dir, min(args.clients, 16), _scheduler_env(args),
                            args.replicas, args.store_model, args.plain_moto, profile)
    measured: list[PhaseResult] = []
    result: dict[str, Any] = {"schema": 2, "run": run}
    try:
        await unary.start()
        ceilings = [await unary.measure("unary_ceiling", args.duration_s)]
        target = await deployment.start(args.mode)
        meter = Meter(target.pids)
        run["scheduler_env"] = deployment.scheduler_env
        run["replicas"] = args.replicas
        if args.mode == "standalone":
            store_dir = work_dir / "store-ceiling"
            store_dir.mkdir()
            ceilings.append(await local_store_ceiling(store_dir, args.clients,
                                                      args.duration_s, args.payload_bytes))
        if target.moto_endpoint is not None:
            ceilings += await asyncio.to_thread(store_ceilings, target.moto_endpoint,
                                                args.clients, args.duration_s,
                                                args.payload_bytes)
        if args.against_original is not None:
            # The original first, on the same emulator and token database, ours idle.
            result["original"] = await measure_original(args, target, work_dir,
                                                        deployment.scheduler_env)
        # One request per connection: the scheduler's HTTP side closes each one after
        # its answer (no keep-alive), so a pooled connection would only race the close.
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=args.nodes * 2, force_close=True)) as http:
            session = Session(target, http, Metrics(http, target.metrics_url), args.clients,
                              args.nodes, args.payload_bytes)
            try:
                await session.connect()
                measured = await _phases(args, session, meter, unary, ceilings)
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
    if "lifecycle" in found:
        result["lifecycle"] = _lifecycle_summary(found["lifecycle"])
        if profile is not None and profile.exists():
            result["lifecycle"]["profile"] = _per_job(json.loads(profile.read_text()),
                                                      found["lifecycle"].operations)
    result["targets"] = _targets(found, args.mode)
    if "original" in result:
        original = {p.name: p for p in result["original"].pop("_results")}
        if "lifecycle" in original:
            result["original"]["lifecycle"] = _lifecycle_summary(original["lifecycle"])
        rows, result["_comparison"], result["_original_table"] = original_summary(
            original, found, result["original"])
        result["original"]["comparison"] = rows
        result["targets"] += [
            _target(f"{row['measure'].split(' /')[0]}: ours / original's", f">= {row['goal']:g}",
                    row["ratio"], _at_least(row["goal"]))
            for row in rows if row["goal"] is not None]
    result["_table"] = table(ceilings + measured)
    result["_results"] = ceilings + measured
    return result


def _per_job(profile: dict[str, Any], jobs: int) -> dict[str, Any]:
    """The sampler's CPU seconds as milliseconds per job."""
    def scaled(table: dict[str, float]) -> dict[str, float]:
        return {where: round(s * 1000 / max(jobs, 1), 3) for where, s in table.items()}

    return {"thread_cpu_ms_per_job": scaled(profile["thread_cpu_s"]),
            "own_cpu_ms_per_job": scaled(profile["own_cpu_s"]),
            "cumulative_cpu_ms_per_job": scaled(profile["cumulative_cpu_s"])}


def _lifecycle_summary(phase: PhaseResult) -> dict[str, Any]:
    """The lifecycle measure's headline figures: CPU per job, store requests per job."""
    per_job = phase.extra.get("cpu_ms_per_operation", {})
    return {
        "jobs": phase.operations,
        "scheduler_cpu_ms_per_job": per_job.get("scheduler"),
        "follower_cpu_ms_per_job": per_job.get("follower"),
        "cpu_ms_per_job_by_process": per_job,
        "store_requests_per_job": phase.extra.get("store_requests_per_job"),
        "store_requests_per_step": phase.extra.get("store_requests_per_step"),
        "counted_by": phase.extra.get("store_requests_counted_by"),
    }


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


def _print_lifecycle(lifecycle: dict[str, Any] | None, title: str = "lifecycle") -> None:
    if not lifecycle:
        return
    per_job = lifecycle["cpu_ms_per_job_by_process"]
    print(f"\n{title}: {lifecycle['jobs']} whole lives; CPU ms per job: "
          + ", ".join(f"{name} {ms}" for name, ms in per_job.items()))
    requests = lifecycle["store_requests_per_job"]
    if requests:
        print(f"  scheduler's store requests per job: {requests['total']} "
              f"({', '.join(f'{op} {n}' for op, n in requests['by_operation'].items())})")
    profile = lifecycle.get("profile")
    if profile:
        threads = profile["thread_cpu_ms_per_job"]
        print("  profile, CPU ms per job by thread: "
              + ", ".join(f"{name} {ms}" for name, ms in threads.items()))
        print("  own CPU ms per job, top 15:")
        for where, ms in list(profile["own_cpu_ms_per_job"].items())[:15]:
            print(f"    {ms:>7.3f}  {where}")
    if lifecycle["store_requests_per_step"]:
        print(f"  store calls per step of a life, counted by {lifecycle['counted_by']}:")
    for step, operations in (lifecycle["store_requests_per_step"] or {}).items():
        print(f"    {step:<18} " + (", ".join(f"{op} {n}" for op, n in operations.items())
                                   or "none"))


def _plots(results: list[PhaseResult], out: Path, title: str) -> None:
    """The latency CDFs and the rate over time, beside the JSON (when matplotlib imports)."""
    why = matplotlib_missing()
    if why is not None:
        print(f"no plots: {why}")
        return
    for path in plot(results, out.with_suffix(""), title):
        print(f"plot {path}")


def main(argv: list[str]) -> int:
    p = parser()
    args = p.parse_args(argv)
    _positive(args, p)
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
    compared, original_table = result.pop("_comparison", None), result.pop("_original_table", None)
    result["ok"], result["problems"] = code == 0, problems
    result["run"]["wall_s"] = round(time.perf_counter() - began, 1)
    out = _out_path(args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"MQC3 scheduler load test, {args.mode} mode, {args.clients} clients, "
          f"{args.nodes} nodes, {result['run']['machine']['cpus']} CPUs")
    print(printed)
    print()
    if compared is not None:
        print(f"the original ({args.against_original}), same emulator, measured first:")
        print(original_table)
        print()
        print(compared)
        print()
    for row in result["targets"]:
        mark = {True: "met", False: "MISSED", None: "n/a"}[row["met"]]
        print(f"  {row['target']:<36} {row['goal']:>9}  measured {row['measured']!s:>8}  {mark}")
    accounting = result["accounting"]
    _print_lifecycle(result.get("lifecycle"))
    _print_lifecycle(result.get("original", {}).get("lifecycle"), "the original's lifecycle")
    print(f"\njobs: {accounting['accepted']} accepted, {accounting['assigned_once']} assigned "
          f"once, {accounting['assigned_more_than_once']} more than once, "
          f"{accounting['never_assigned']} never; result {out}")
    if not args.no_plots:
        _plots(results, out, f"MQC3 scheduler, {args.mode}"
               + (f", {args.replicas} replicas" if args.replicas > 1 else ""))
    for problem in problems:
        print(f"\n*** FAILED: {problem}", file=sys.stderr)
    for note in original_problems(result.get("original", {})):
        print(f"\n*** the original: {note}", file=sys.stderr)
    return code

"""The ``status_crowd`` phase: many waiting SDK users polling GetJobStatus at a fixed rate.

The SDK polls once a second per waiting user; ``rate`` polls per second stand for that
many users. They come from ``processes`` poller processes (benchmarks/poller.py, open
loop, latency from each poll's due time) over ``channels`` channels in all, each
channel one user polling their own queued job on the idle backend. Meanwhile every
node long-polls and submissions arrive at a steady rate (the ``steady`` phase's code):
the phase reports poll latency and dispatch latency under the crowd and, in AWS mode,
every store request moto saw meanwhile (the submissions' and the lease's included).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from benchmarks.phases import steady_phase
from benchmarks.processes import ROOT, Meter, child_env
from benchmarks.session import IDLE_BACKEND, Session
from benchmarks.stats import PhaseResult
from benchmarks.store_requests import count

LABEL = "status-crowd"  # the ledger's name for the crowd's queued jobs
# A poller's result is one line with two floats per poll (some 40 bytes): far above
# asyncio's default line limit (64 KiB) at thousands of polls per second.
RESULT_LIMIT = 256 * 1024 * 1024


async def status_crowd_phase(session: Session, rate: float, channels: int, processes: int,
                             duration_s: float, submit_rate: float, wait_ms: int,
                             meter: Meter) -> PhaseResult:
    """The crowd's phase; the children's CPU is metered over the polling alone, not over
    queueing the crowd's jobs and starting the pollers."""
    jobs = await _queued_jobs(session, channels)
    pollers = [await _start(session, rate / processes, duration_s,
                            channels // processes + (1 if i < channels % processes else 0),
                            jobs[i::processes]) for i in range(processes)]
    try:
        for poller in pollers:
            await _expect(poller, "ready")
        recorder = session.target.recorder
        if recorder is not None:  # AWS mode: does a poll cost a store request?
            await recorder.start()
        cpu_before = meter.cpu()
        go = time.perf_counter()
        for poller in pollers:
            assert poller.stdin is not None
            poller.stdin.write(b"go\n")
            await poller.stdin.drain()
        phase, *outputs = await asyncio.gather(
            steady_phase(session, submit_rate, duration_s, wait_ms, name="status_crowd"),
            *(_result(poller) for poller in pollers))
        phase.processes = meter.since(cpu_before, time.perf_counter() - go)
        if recorder is not None:
            await recorder.stop()
            phase.extra["store_requests"] = count(recorder.since(0))
    finally:
        for poller in pollers:
            if poller.returncode is None:
                poller.kill()
            await poller.wait()
    return _merged(phase, outputs, go, rate, channels, processes, duration_s)


async def _queued_jobs(session: Session, count: int) -> list[tuple[str, str]]:
    """``count`` queued jobs on the idle backend: (owner's token, job id) each."""
    await session.queue_jobs(LABEL, count, IDLE_BACKEND)
    return [(session.target.tokens[e.token_index], job_id)
            for job_id, e in session.ledger.of_phase(LABEL)]


async def _start(session: Session, rate: float, duration_s: float, channels: int,
                 jobs: list[tuple[str, str]]) -> asyncio.subprocess.Process:
    poller = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "benchmarks.poller", cwd=ROOT, env=child_env({}),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=RESULT_LIMIT)
    settings = {"address": session.target.submission, "rate_per_s": rate,
                "duration_s": duration_s, "channels": channels, "jobs": jobs}
    assert poller.stdin is not None
    poller.stdin.write(json.dumps(settings).encode() + b"\n")
    await poller.stdin.drain()
    return poller


async def _expect(poller: asyncio.subprocess.Process, word: str) -> None:
    assert poller.stdout is not None
    line = (await poller.stdout.readline()).decode().strip()
    if line != word:
        raise RuntimeError(f"a poller process said {line!r} instead of {word!r} "
                           f"(exit code {poller.returncode})")


async def _result(poller: asyncio.subprocess.Process) -> dict[str, Any]:
    assert poller.stdout is not None
    line = await poller.stdout.readline()
    if not line:
        raise RuntimeError(f"a poller process ended without a result "
                           f"(exit code {await poller.wait()})")
    result: dict[str, Any] = json.loads(line)
    return result


def _merged(phase: PhaseResult, outputs: list[dict[str, Any]], go: float, rate: float,
            channels: int, processes: int, duration_s: float) -> PhaseResult:
    """The steady phase's dispatch figures with the pollers' polls as the headline."""
    polls, from_send = phase.samples("poll"), phase.samples("poll_from_send")
    for output in outputs:
        for offset, latency, sent in zip(output["offsets_s"], output["latencies_s"],
                                         output["from_send_s"], strict=True):
            polls.add(latency, at=go + offset + latency)
            from_send.add(sent, at=go + offset + latency)
        for code, n in output["errors"].items():
            phase.errors[f"poll_{code}"] += n
    dispatched = phase.operations
    window_s = max([duration_s, *(o["window_s"] for o in outputs)])
    phase.primary = "poll"
    phase.operations = len(polls)
    phase.duration_s = window_s
    phase.started_at_s = go
    phase.extra.update({
        "target_poll_rate_per_s": rate, "channels": channels, "poller_processes": processes,
        "polls_sent": sum(o["sent"] for o in outputs),
        "achieved_poll_rate_per_s": round(len(polls) / window_s, 1),
        "poller_max_schedule_lag_ms": max(o["max_lag_ms"] for o in outputs),
        # The pollers share the machine with the scheduler: on two cores, what they
        # spend is what the scheduler cannot have.
        "poller_cores": round(sum(o["cpu_s"] for o in outputs) / window_s, 2),
        "dispatched": dispatched,
    })
    return phase

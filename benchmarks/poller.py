"""One process of the ``status_crowd`` phase's pollers (``python -m benchmarks.poller``).

Open loop: poll ``i`` is due at ``go + i / rate`` whatever happened to the polls before
it, and its latency is counted from that due time, so a slow answer (or a poller that
fell behind) shows in the latencies instead of silently lowering the rate (no
coordinated omission). Each channel is one waiting SDK user polling their own queued
job with their own token.

Protocol with the load generator, one JSON or word per line: it writes the settings
(address, rate_per_s, duration_s, channels, jobs as [token, job_id] pairs); this
process connects every channel and answers ``ready``; it writes ``go``; this process
polls and writes its result (``offsets_s``: due times since go, ``latencies_s``,
``from_send_s``, ``errors``, ``max_lag_ms``, ``sent``, ``cpu_s``: this process's CPU
time while polling). ``from_send_s`` times each poll
from when it actually left: far below ``latencies_s`` means this process fell behind
its schedule (the load generator, not the scheduler, was short of CPU).
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from typing import Any

import grpc

from benchmarks.clients import RPC_TIMEOUT_S, channel, close_all
from pb.mqc3_cloud.scheduler.v1 import submission_pb2, submission_pb2_grpc


async def _line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


async def crowd(settings: dict[str, Any]) -> dict[str, Any]:
    channels = [channel(settings["address"]) for _ in range(settings["channels"])]
    stubs = [submission_pb2_grpc.SubmissionServiceStub(c) for c in channels]
    jobs = settings["jobs"]
    requests = [submission_pb2.GetJobStatusRequest(token=jobs[i % len(jobs)][0],
                                                   job_id=jobs[i % len(jobs)][1])
                for i in range(len(channels))]
    await asyncio.gather(*(c.channel_ready() for c in channels))
    print("ready", flush=True)
    if await _line() != "go":
        raise SystemExit("poller: expected go")
    rate, total = settings["rate_per_s"], round(settings["rate_per_s"] * settings["duration_s"])
    offsets: list[float] = []
    latencies: list[float] = []
    from_send: list[float] = []  # the same polls timed from when they left: the poller's lag
    errors: Counter[str] = Counter()
    go = time.perf_counter()
    cpu_at_go = time.process_time()

    async def poll(i: int, due: float) -> None:
        user = i % len(stubs)
        sent = time.perf_counter()
        try:
            answer = await stubs[user].GetJobStatus(requests[user], timeout=RPC_TIMEOUT_S)
        except grpc.aio.AioRpcError as exc:
            errors[f"transport_{exc.code().name}"] += 1
            return
        if answer.error.code:
            errors[str(answer.error.code)] += 1
            return
        done = time.perf_counter()
        offsets.append(due - go)
        latencies.append(done - due)
        from_send.append(done - sent)

    tasks: set[asyncio.Task[None]] = set()
    lag_s = 0.0
    i = 0
    while i < total:
        now = time.perf_counter()
        while i < total and go + i / rate <= now:
            lag_s = max(lag_s, now - (go + i / rate))
            task = asyncio.create_task(poll(i, go + i / rate))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            i += 1
        if i < total:
            await asyncio.sleep(max(0.0, go + i / rate - time.perf_counter()))
    await asyncio.gather(*tasks)
    await close_all(channels)
    return {"offsets_s": offsets, "latencies_s": latencies, "from_send_s": from_send,
            "errors": dict(errors),
            "max_lag_ms": round(lag_s * 1000, 3), "sent": total,
            "window_s": time.perf_counter() - go, "cpu_s": time.process_time() - cpu_at_go}


async def main() -> None:
    settings = json.loads(await _line())
    print(json.dumps(await crowd(settings)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())

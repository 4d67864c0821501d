#!/usr/bin/env python3
"""Memory of queued jobs: bytes per job in the ledger (tracemalloc), and the process RSS.

    python benchmarks/memory.py [--jobs 100000] [--payload-bytes 1024] [--distinct-settings]
                                [--rss-target-mb 300] [--out FILE]

Builds a ``job_manager.ledger.Ledger`` (the queues, the live-job index and the quotas
the JobManager keeps) and admits into it the jobs a submission makes: a fresh job id,
settings object and program per job (equal settings, as a batch sends them; with
--distinct-settings each job's differ), owners shared as the token cache shares them;
each JobRecord is dropped once its job is queued, as after a submission. It measures
twice: first the RSS without tracemalloc (which would inflate it), then the traced
allocations. The service's libraries are imported first, so the RSS
is that of a scheduler process, not of a bare interpreter.
"""

from __future__ import annotations

import argparse
import gc
import json
import platform
import resource
import sys
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
MB = 1024 * 1024
RSS_TARGET_MB = 300


def rss_bytes() -> int:
    """This process's resident set size now (Linux), else its peak."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def build(jobs: int, payload_bytes: int, owners: int, distinct_settings: bool) -> Any:
    """A Ledger holding ``jobs`` queued jobs."""
    from common.clock import SystemClock
    from common.identity import Principal, Role, fingerprint
    from job_manager.ledger import Ledger
    from job_manager.limits import Limits, RoleLimits
    from job_manager.model import JobRecord, JobStatus, new_job_id
    from job_manager.queue import QueuedJob, SchedulingPolicy
    from pb.mqc3_cloud.scheduler.v1 import job_pb2

    clock = SystemClock()
    principals = [Principal(f"user-{i}", Role.DEVELOPER, fingerprint(f"token-{i}"))
                  for i in range(owners)]
    limits = Limits({role: RoleLimits(jobs, 1 << 30) for role in Role}, max_queue_bytes=1 << 50)
    ledger = Ledger(limits, SchedulingPolicy(), clock, timedelta(0))
    program = bytearray(b"." * payload_bytes)
    for i in range(jobs):
        principal = principals[i % owners]
        settings = job_pb2.JobExecutionSettings(backend="emulator",
                                                n_shots=100 + (i if distinct_settings else 0),
                                                role=principal.role.value)
        settings.timeout.seconds = 60
        now = clock.now()
        record = JobRecord(
            job_id=new_job_id(), status=JobStatus.QUEUED, backend=settings.backend,
            owner_name=principal.name, owner_fingerprint=principal.fingerprint,
            role=principal.role, settings=settings.SerializeToString(), timeout_s=60.0,
            input_size_bytes=payload_bytes, sdk_version=settings.role.replace("d", "d"),
            submitted_at=now, queued_at=now)
        ledger.admit(QueuedJob(record, bytes(program)), reserved=False)
    return ledger


def per_job_objects(ledger: Any) -> dict[str, int]:
    """The objects each queued job owns, by sys.getsizeof (containers not included)."""
    queue = ledger.queue("emulator")
    job = queue.get(next(iter(queue._jobs)))
    return {
        "QueuedJob": sys.getsizeof(job) + _dict_size(job),
        "program": sys.getsizeof(job.program),
        "job_id": sys.getsizeof(job.job_id),
        "settings": sys.getsizeof(job.settings),
        "timeout_s": sys.getsizeof(job.timeout_s),
        "age_key": sys.getsizeof(job.age_key),
        "rank_key": sys.getsizeof(job.rank_key),
    }


def _dict_size(instance: object) -> int:
    """The size of an instance's __dict__ (0 with __slots__)."""
    return sys.getsizeof(vars(instance)) if hasattr(instance, "__dict__") else 0


def measure(jobs: int, payload_bytes: int, owners: int, bare: bool, distinct_settings: bool,
            rss_target_mb: int) -> dict[str, Any]:
    if not bare:
        import scheduler.wiring.app  # noqa: F401 - the service's libraries, loaded as in production
    gc.collect()
    rss_before = rss_bytes()
    began = time.perf_counter()
    ledger = build(jobs, payload_bytes, owners, distinct_settings)
    build_s = time.perf_counter() - began
    rss_with_jobs = rss_bytes()
    assert ledger.live_count() == jobs
    index_bytes = sys.getsizeof(ledger.queue("emulator")._jobs)
    del ledger
    gc.collect()

    tracemalloc.start()
    traced_before = tracemalloc.get_traced_memory()[0]
    ledger = build(jobs, payload_bytes, owners, distinct_settings)
    traced = tracemalloc.get_traced_memory()[0] - traced_before
    tracemalloc.stop()
    assert ledger.live_count() == jobs  # alive until measured
    objects = per_job_objects(ledger)
    program_bytes = sys.getsizeof(bytes(payload_bytes))
    per_job = traced / jobs
    return {
        "jobs": jobs,
        "payload_bytes": payload_bytes,
        "owners": owners,
        "traced_bytes_per_job": round(per_job, 1),
        "traced_total_mb": round(traced / MB, 2),
        "program_object_bytes": program_bytes,
        "overhead_bytes_per_job": round(per_job - program_bytes, 1),
        "index_bytes_per_job": round(index_bytes / jobs, 1),
        "queue_bytes_per_job": round((traced - index_bytes) / jobs, 1),
        "rss_mb": {"before": round(rss_before / MB, 1), "with_jobs": round(rss_with_jobs / MB, 1),
                   "delta": round((rss_with_jobs - rss_before) / MB, 1)},
        "rss_bytes_per_job": round((rss_with_jobs - rss_before) / jobs, 1),
        "rss_target_mb": rss_target_mb,
        "rss_target_met": rss_with_jobs / MB < rss_target_mb,
        "distinct_settings": distinct_settings,
        "build_s": round(build_s, 2),
        "service_libraries_loaded": not bare,
        "object_bytes_per_job": objects,
        "container_bytes_per_job": round(per_job - sum(objects.values()), 1),
        "python": platform.python_version(),
        "measured_at": datetime.now(UTC).isoformat(),
    }


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python benchmarks/memory.py",
                                description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--jobs", type=int, default=100_000, help="queued jobs (default 100000)")
    p.add_argument("--payload-bytes", type=int, default=1024,
                   help="program size (default 1024)")
    p.add_argument("--owners", type=int, default=16, help="tokens the jobs belong to "
                   "(default 16)")
    p.add_argument("--bare", action="store_true",
                   help="do not import the service's libraries first (RSS of the queue alone)")
    p.add_argument("--distinct-settings", action="store_true",
                   help="each job's settings differ (none shared)")
    p.add_argument("--rss-target-mb", type=int, default=RSS_TARGET_MB,
                   help=f"the process RSS to stay under (default {RSS_TARGET_MB})")
    p.add_argument("--out", type=Path, default=None,
                   help="the JSON result (default benchmarks/out/memory-<timestamp>.json)")
    args = p.parse_args(argv)
    if args.jobs <= 0 or args.payload_bytes < 0 or args.owners <= 0:
        p.error("--jobs and --owners must be positive, --payload-bytes not negative")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    result = measure(args.jobs, args.payload_bytes, args.owners, args.bare,
                     args.distinct_settings, args.rss_target_mb)
    out = args.out or (ROOT / "benchmarks" / "out" /
                       f"memory-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    rss = result["rss_mb"]
    print(f"{result['jobs']} queued jobs of {result['payload_bytes']} B: "
          f"{result['traced_bytes_per_job']:.0f} B per job traced "
          f"({result['overhead_bytes_per_job']:.0f} B beyond the program), "
          f"{result['traced_total_mb']:.1f} MB in all")
    print(f"process RSS {rss['with_jobs']:.1f} MB with the jobs ({rss['before']:.1f} MB before, "
          f"+{rss['delta']:.1f} MB); target < {result['rss_target_mb']} MB: "
          f"{'met' if result['rss_target_met'] else 'MISSED'}; result {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

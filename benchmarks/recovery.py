#!/usr/bin/env python3
"""Recovery: how long a restarted scheduler (or a new leader) takes to serve N queued jobs.

    python benchmarks/recovery.py [--jobs 100000] [--payload-bytes 1024] [--data-dir DIR]
    python benchmarks/recovery.py --moto [--jobs 100000]

Standalone stores (a SQLite file and a payload directory) are filled once with N QUEUED
jobs as submissions make them (reused on later runs with the same --data-dir and
--jobs). Then a fresh JobManager over freshly opened stores recovers them, the way
``Scheduler.start`` does, and the time from the start of its recovery to the moment
its queues serve (the first hand-over answered) is printed with the process's RSS, the
CPU time it used and the CPU time of the event loop's thread alone (steadier than the
wall time on a shared machine; the store's thread reads meanwhile).

With --moto, the records go to a DynamoDB table of a moto server started as its own
process (S3 likewise), and the recovery lists them through the status index as a new
leader does; moto's speed, not DynamoDB's, is what it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from backend_manager import BackendTable  # noqa: E402
from backend_manager.status import RoleStatus, ServiceStatus  # noqa: E402
from common.clock import SystemClock  # noqa: E402
from common.identity import Role, fingerprint  # noqa: E402
from job_manager.limits import Limits, RoleLimits  # noqa: E402
from job_manager.manager import JobManager  # noqa: E402
from job_manager.model import JobRecord, JobStatus, new_job_id  # noqa: E402
from job_manager.stores.local_payload_store import SqliteInputsPayloadStore  # noqa: E402
from job_manager.stores.sqlite_job_store import SqliteJobStore  # noqa: E402
from job_manager.stores.url_signer import UrlSigner  # noqa: E402

BATCH = 2000
MOTO_PORT = 47231


def moto_stores(endpoint: str) -> tuple[Any, Any]:
    import boto3

    from job_manager.stores.dynamodb_job_store import DynamoDbJobStore, create_table
    from job_manager.stores.s3_payload_store import S3PayloadStore

    def client(service: Any) -> Any:
        return boto3.client(service, endpoint_url=endpoint, region_name="us-east-1",
                            aws_access_key_id="bench", aws_secret_access_key="bench")

    dynamodb, s3 = client("dynamodb"), client("s3")
    if "jobs" not in dynamodb.list_tables()["TableNames"]:
        create_table(dynamodb, "jobs")
        s3.create_bucket(Bucket="jobs")
    return DynamoDbJobStore(dynamodb, "jobs"), S3PayloadStore(s3, "jobs", SystemClock())


def stores(data_dir: Path) -> tuple[SqliteJobStore, SqliteInputsPayloadStore]:
    """The standalone stores as scheduler/wiring/standalone.py makes them."""
    jobs = SqliteJobStore(data_dir / "jobs.sqlite3")
    payloads = SqliteInputsPayloadStore(data_dir / "payloads",
                                        UrlSigner.from_key_file(data_dir / "url-signing.key"),
                                        base_url="http://127.0.0.1", clock=SystemClock(),
                                        jobs=jobs)
    return jobs, payloads


async def fill(data_dir: Path, count: int, payload_bytes: int, endpoint: str | None) -> None:
    marker = data_dir / f"filled-{count}-{payload_bytes}"
    if marker.exists():
        return
    jobs, payloads = moto_stores(endpoint) if endpoint else stores(data_dir)
    if not endpoint:
        await jobs.open()
    clock = SystemClock()
    owners = [fingerprint(f"token-{i}") for i in range(50)]
    program = os.urandom(payload_bytes)

    async def one(i: int) -> None:
        now = clock.now()
        record = JobRecord(job_id=new_job_id(), status=JobStatus.QUEUED, backend="emulator",
                           owner_name=f"user-{i % 50}", owner_fingerprint=owners[i % 50],
                           role=Role.DEVELOPER, settings=b"\x08\x01", timeout_s=60.0,
                           input_size_bytes=payload_bytes, submitted_at=now, queued_at=now)
        if isinstance(payloads, SqliteInputsPayloadStore):
            await payloads.create_with_input(record, program)  # as a submission writes it
        else:
            await payloads.put_input(record.job_id, program)
            await jobs.create(record)

    for start in range(0, count, BATCH):
        await asyncio.gather(*(one(i) for i in range(start, min(count, start + BATCH))))
    await jobs.close()
    await payloads.close()
    marker.touch()


def rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


async def recover(data_dir: Path, count: int, endpoint: str | None = None) -> None:
    jobs, payloads = moto_stores(endpoint) if endpoint else stores(data_dir)
    if not endpoint:
        await jobs.open()
    table = BackendTable({"emulator": {role: RoleStatus(ServiceStatus.AVAILABLE)
                                       for role in Role}})
    limits = Limits({role: RoleLimits(count * 2, 10 << 20) for role in Role},
                    max_queue_bytes=1 << 40)
    manager = JobManager(jobs=jobs, payloads=payloads, limits=limits, clock=SystemClock())
    manager.use_backends(table)
    started, cpu_started = time.perf_counter(), time.process_time()
    loop_cpu_started = time.thread_time()
    await manager.recover()
    recovered_s = time.perf_counter() - started
    first = await manager.assign("emulator")
    served_s = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    loop_cpu_s = time.thread_time() - loop_cpu_started  # the event loop's thread alone
    assert first is not None
    print(f"jobs={count} recovered_s={recovered_s:.2f} first_assignment_s={served_s:.2f} "
          f"cpu_s={cpu_s:.2f} loop_cpu_s={loop_cpu_s:.2f} "
          f"queued={manager.queue_length('emulator')} rss_mb={rss_mb():.0f}")
    await jobs.close()
    await payloads.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--payload-bytes", type=int, default=1024)
    parser.add_argument("--data-dir", type=Path, default=None)
    parser.add_argument("--moto", action="store_true", help="DynamoDB and S3 on a moto server")
    args = parser.parse_args()
    data_dir = args.data_dir or Path(tempfile.mkdtemp(prefix="mqc3-recovery-"))
    data_dir.mkdir(parents=True, exist_ok=True)
    server = None
    endpoint = None
    if args.moto:
        server = subprocess.Popen([str(Path(sys.executable).with_name("moto_server")),
                                   "-p", str(MOTO_PORT)], stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL)
        endpoint = f"http://127.0.0.1:{MOTO_PORT}"
        time.sleep(3)
    try:
        filling = time.perf_counter()
        asyncio.run(fill(data_dir, args.jobs, args.payload_bytes, endpoint))
        print(f"filled in {time.perf_counter() - filling:.1f} s")
        asyncio.run(recover(data_dir, args.jobs, endpoint))
    finally:
        if server is not None:
            server.terminate()


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""An example hardware node: takes jobs for one backend, "runs" them, uploads a result, reports.

    python examples/node.py --backend emulator [--address localhost:8081] [--jobs 1]

The "result" is a small protobuf-shaped message derived from the program, gzip-compressed
and PUT to the presigned URL exactly as a real node does it.
"""

from __future__ import annotations

import argparse
import gzip
import sys
import time
import urllib.request
from pathlib import Path

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pb.mqc3_cloud.scheduler.v1 import execution_pb2 as pb
from pb.mqc3_cloud.scheduler.v1 import execution_pb2_grpc


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def run_job(stub: execution_pb2_grpc.ExecutionServiceStub, job: pb.AssignNextJobResponse) -> None:
    """Pretend to run the job, upload a result, report success."""
    started = _now()
    program = job.job.program.SerializeToString()
    # Field 1 (bytes): a digest-like echo of the program, so the result depends on the input.
    echo = program[:64]
    raw = b"\x0a" + bytes([len(echo)]) + echo
    body = gzip.compress(raw)
    request = urllib.request.Request(
        job.upload_target.upload_url,
        data=body,
        method="PUT",
        headers={
            "Content-Type": "application/protobuf",
            "Content-Encoding": "gzip",
            "Content-Disposition": "attachment",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as answer:
        answer.read()
    finished = _now()
    report = pb.ReportExecutionResultRequest(
        job_id=job.job_id,
        status=pb.EXECUTION_STATUS_SUCCESS,
        actual_backend=job.job.settings.backend,
        version=pb.ExecutionVersion(simulator="example-node 1.0"),
    )
    report.uploaded_result.raw_size_bytes = len(raw)
    report.uploaded_result.encoded_size_bytes = len(body)
    for name in ("compile_started_at", "execution_started_at"):
        getattr(report.timestamps, name).CopyFrom(started)
    for name in ("compile_finished_at", "execution_finished_at"):
        getattr(report.timestamps, name).CopyFrom(finished)
    answer = stub.ReportExecutionResult(report, timeout=30)
    if answer.error.code:
        raise SystemExit(f"report refused: {answer.error.code}: {answer.error.description}")
    print(f"ran job {job.job_id} ({len(program)} bytes of program)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:8081", help="the execution port")
    parser.add_argument("--backend", default="emulator")
    parser.add_argument("--jobs", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--poll-s", type=float, default=0.5, help="pause when the queue is empty")
    args = parser.parse_args()
    done = 0
    with grpc.insecure_channel(args.address) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        while not args.jobs or done < args.jobs:
            job = stub.AssignNextJob(pb.AssignNextJobRequest(backend=args.backend), timeout=30)
            if job.error.code:
                raise SystemExit(f"assign refused: {job.error.code}: {job.error.description}")
            if not job.job_id:
                time.sleep(args.poll_s)
                continue
            run_job(stub, job)
            done += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

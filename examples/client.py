#!/usr/bin/env python3
"""An example SDK-style client: submits a job, waits for it, downloads the result.

    python examples/client.py --token "$MQC3_TOKEN" [--address localhost:8082] [--backend emulator]

The program is a small made-up circuit payload: the scheduler passes it through
without reading it, as it does the SDK's.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import time
import urllib.request
from pathlib import Path

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from pb.mqc3_cloud.program.v1 import quantum_program_pb2 as program_pb2
from pb.mqc3_cloud.scheduler.v1 import (
    job_pb2,
    submission_pb2_grpc,
)
from pb.mqc3_cloud.scheduler.v1 import submission_pb2 as pb

FINAL = {
    job_pb2.JOB_STATUS_COMPLETED,
    job_pb2.JOB_STATUS_FAILED,
    job_pb2.JOB_STATUS_CANCELLED,
    job_pb2.JOB_STATUS_TIMEOUT,
}


def download(url: str) -> bytes:
    """GET the result as the SDK does, undoing the gzip Content-Encoding."""
    request = urllib.request.Request(url, headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        body = answer.read()
        if answer.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
    return bytes(body)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:8082", help="the submission port")
    parser.add_argument("--token", default=os.environ.get("MQC3_TOKEN", ""))
    parser.add_argument("--backend", default="emulator")
    parser.add_argument("--timeout-s", type=float, default=120, help="give up after this long")
    args = parser.parse_args()
    with grpc.insecure_channel(args.address) as channel:
        stub = submission_pb2_grpc.SubmissionServiceStub(channel)
        request = pb.SubmitJobRequest(token=args.token, sdk_version="example-client 1.0")
        request.job.program.format = program_pb2.REPRESENTATION_FORMAT_CIRCUIT
        request.job.program.circuit = b"\x08\x02\x12\x04\x08\x01\x10\x00"  # a tiny made-up circuit
        request.job.settings.backend = args.backend
        request.job.settings.n_shots = 100
        request.job.settings.timeout.seconds = 60
        submitted = stub.SubmitJob(request, timeout=30)
        if submitted.error.code:
            raise SystemExit(
                f"submit refused: {submitted.error.code}: {submitted.error.description}"
            )
        job_id = submitted.job_id
        print(f"submitted job {job_id}", flush=True)
        deadline = time.monotonic() + args.timeout_s
        while True:
            status = stub.GetJobStatus(
                pb.GetJobStatusRequest(token=args.token, job_id=job_id), timeout=30
            )
            if status.error.code:
                raise SystemExit(f"status refused: {status.error.code}: {status.error.description}")
            if status.status in FINAL:
                break
            if time.monotonic() > deadline:
                raise SystemExit(f"job {job_id} still {job_pb2.JobStatus.Name(status.status)}")
            time.sleep(0.5)
        print(f"job {job_id} is {job_pb2.JobStatus.Name(status.status)}: {status.status_detail}")
        result = stub.GetJobResult(
            pb.GetJobResultRequest(token=args.token, job_id=job_id), timeout=30
        )
        if result.error.code or status.status != job_pb2.JOB_STATUS_COMPLETED:
            raise SystemExit(f"no result: {result.error.code} {result.status_detail}")
        body = download(result.result.result_url)
        print(f"downloaded {len(body)} bytes of result")
    return 0


if __name__ == "__main__":
    sys.exit(main())

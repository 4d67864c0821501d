#!/usr/bin/env python3
"""An example hardware node: takes jobs for one backend, "runs" them, uploads a result, reports.

    python examples/node.py --backend emulator [--address localhost:8081] [--jobs 1]
                            [--node-id lab-1] [--data-dir mqc3-data]

The "result" is a small protobuf-shaped message derived from the program, gzip-compressed
and PUT to the presigned URL exactly as a real node does it. With --node-id the node names
itself, and it beats for each job it runs (the scheduler's extension, docs/nodes.md): a
node whose job takes long beats every third of the timeout the answer names. It echoes
the hand-over its assignment named (x-mqc3-handover) in every call about the job, so that
a node whose job was lost and handed to another is told to stop instead of changing the
other's run (docs/nodes.md).

A standalone scheduler takes nodes that present the credential in its data directory's
node.secret (readable by the operator's account alone); this node sends it when it finds
the file, so run it as the account that runs the scheduler (docs/nodes.md).
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
from pb.mqc3_scheduler.extension.v1 import nodes_pb2, nodes_pb2_grpc

Metadata = tuple[tuple[str, str], ...]
HANDOVER_METADATA = "x-mqc3-handover"  # which hand-over of the job this node holds


def _now() -> Timestamp:
    stamp = Timestamp()
    stamp.GetCurrentTime()
    return stamp


def run_job(channel: grpc.Channel, job: pb.AssignNextJobResponse, metadata: Metadata,
            named: bool) -> None:
    """Pretend to run the job, upload a result, report success (``named``: and beat)."""
    stub = execution_pb2_grpc.ExecutionServiceStub(channel)
    started = _now()
    if named:  # the first beat opts the job in; this "run" is over long before a second
        beat = nodes_pb2_grpc.NodeServiceStub(channel).Heartbeat(
            nodes_pb2.HeartbeatRequest(job_id=job.job_id), metadata=metadata, timeout=30)
        if beat.error.code:
            raise SystemExit(f"heartbeat refused: {beat.error.code}: {beat.error.description}")
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
    answer = stub.ReportExecutionResult(report, metadata=metadata, timeout=30)
    if answer.error.code:
        raise SystemExit(f"report refused: {answer.error.code}: {answer.error.description}")
    print(f"ran job {job.job_id} ({len(program)} bytes of program)", flush=True)


def _credential(path: Path) -> Metadata:
    """The node credential in ``path`` as metadata; none when there is no such file."""
    try:
        secret = path.read_text().strip()
    except FileNotFoundError:
        return ()
    return (("authorization", f"Bearer {secret}"),)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--address", default="localhost:8081", help="the execution port")
    parser.add_argument("--backend", default="emulator")
    parser.add_argument("--jobs", type=int, default=0, help="stop after this many (0: never)")
    parser.add_argument("--poll-s", type=float, default=0.5, help="pause when the queue is empty")
    parser.add_argument("--node-id", default="", help="this node's name (x-mqc3-node-id)")
    parser.add_argument("--data-dir", type=Path, default=Path("mqc3-data"),
                        help="a standalone scheduler's data directory: its node.secret is sent "
                             "(default ./mqc3-data)")
    args = parser.parse_args()
    metadata: Metadata = (*_credential(args.data_dir / "node.secret"),
                          *((("x-mqc3-node-id", args.node_id),) if args.node_id else ()))
    done = 0
    with grpc.insecure_channel(args.address) as channel:
        stub = execution_pb2_grpc.ExecutionServiceStub(channel)
        while not args.jobs or done < args.jobs:
            job, call = stub.AssignNextJob.with_call(
                pb.AssignNextJobRequest(backend=args.backend), metadata=metadata, timeout=30)
            if job.error.code:
                raise SystemExit(f"assign refused: {job.error.code}: {job.error.description}")
            if not job.job_id:
                time.sleep(args.poll_s)
                continue
            handover = tuple((name, value) for name, value in call.initial_metadata()
                             if name == HANDOVER_METADATA)
            run_job(channel, job, (*metadata, *handover), bool(args.node_id))
            done += 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Exit 0 when the scheduler at ADDRESS answers SERVING on the gRPC health protocol.

    python deploy/healthcheck.py 127.0.0.1:8082 [--service NAME] [--timeout-s 2]

Used by the container's HEALTHCHECK; works on either port (plaintext only).
"""

from __future__ import annotations

import argparse
import sys

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("address")
    parser.add_argument("--service", default="")
    parser.add_argument("--timeout-s", type=float, default=2.0)
    args = parser.parse_args()
    try:
        with grpc.insecure_channel(args.address) as channel:
            answer = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=args.service), timeout=args.timeout_s)
    except grpc.RpcError as exc:
        print(f"unhealthy: {exc.code().name}", file=sys.stderr)
        return 1
    serving = answer.status == health_pb2.HealthCheckResponse.SERVING
    print(health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status))
    return 0 if serving else 1


if __name__ == "__main__":
    sys.exit(main())

"""A trivial grpc.aio server answering Empty with Empty: the floor under every RPC.

Run by the load generator as its own process (``python benchmarks/unary_server.py
--port N``), so its rate is measured with the same clients and the same split of CPU
between client and server as the scheduler's.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import grpc
from google.protobuf import empty_pb2

SERVICE = "mqc3bench.Trivial"
METHOD = f"/{SERVICE}/Ping"


async def _ping(request: empty_pb2.Empty, context: Any) -> empty_pb2.Empty:
    return empty_pb2.Empty()


async def serve(host: str, port: int) -> None:
    server = grpc.aio.server()
    handler = grpc.method_handlers_generic_handler(SERVICE, {
        "Ping": grpc.unary_unary_rpc_method_handler(
            _ping, request_deserializer=empty_pb2.Empty.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString),
    })
    server.add_generic_rpc_handlers((handler,))
    if server.add_insecure_port(f"{host}:{port}") == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
    await server.stop(0)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""The gRPC edge: admission, latency metrics, and every refusal in-band as an ErrorDetail."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError

from common.logs import REPEATABLE
from job_manager.manager import JobManager
from message_manager import SchedulerError
from pb.mqc3_cloud.common.v1 import error_detail_pb2
from scheduler.admission import Admission
from scheduler.forwarding import ForwardFailed
from scheduler.metadata import metadata_value
from scheduler.metrics import Metrics
from scheduler.replicas import NoLeader, Replicas

log = logging.getLogger(__name__)

STARTING = "the scheduler is starting (recovering its jobs); retry"
DRAINING = "the scheduler is shutting down; retry"
INTERRUPTED = "the work this call was waiting for was interrupted; retry"

Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext, JobManager], Awaitable[Response]]
Answer = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


class Edge:
    """What every call of one gRPC service passes through."""

    def __init__(self, service: str, replicas: Replicas, admission: Admission, metrics: Metrics,
                 shared_secret: str | None = None) -> None:
        self.service = service  # the full name, as in a method's path
        self.replicas = replicas  # which JobManager serves, and the road to the leader
        self.admission = admission
        self.metrics = metrics
        # Why calls are turned away (starting, draining), or None while serving.
        self.not_serving: str | None = STARTING
        self._expected = f"Bearer {shared_secret}".encode() if shared_secret else None

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        """With a shared secret set, refuse calls that do not present it."""
        if self._expected is None:
            return
        sent = (metadata_value(context, "authorization") or "").encode()
        if not hmac.compare_digest(sent, self._expected):
            raise SchedulerError("node_unauthenticated")


class EdgeServicer(Protocol):
    """A servicer whose methods are wrapped by :func:`in_band`."""

    edge: Edge


class MalformedRequest:
    """A request whose bytes are no message of the method's type; answered in band."""

    def __init__(self, size: int, why: str) -> None:
        self.size = size
        self.why = why


def _tolerant(parse: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def parse_or_mark(data: bytes) -> Any:
        try:
            return parse(data)
        except DecodeError as exc:
            return MalformedRequest(len(data), str(exc)[:80])

    return parse_or_mark


def add_servicer(add: Callable[[Any, Any], None], servicer: Any, server: grpc.aio.Server) -> None:
    """Register ``servicer`` with its generated ``add_*_to_server``, its requests parsed so
    that bytes which are no message reach the edge (INVALID_ARGUMENT in band) instead of
    failing in gRPC (transport UNKNOWN and a traceback in the log per call)."""
    registered: list[str] = []

    class Registrar:
        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass  # the same handlers come again, by name, just below

        def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
            tolerant = {method: handler._replace(
                request_deserializer=_tolerant(handler.request_deserializer))
                for method, handler in handlers.items()}
            server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(name, tolerant),))
            server.add_registered_method_handlers(name, tolerant)
            registered.append(name)

    add(servicer, Registrar())
    if not registered:
        raise RuntimeError("the generated code registered no service: regenerate pb/")


def error_detail(error: SchedulerError) -> error_detail_pb2.ErrorDetail:
    """The ErrorDetail a client sees for a refusal."""
    return error_detail_pb2.ErrorDetail(code=error.code, description=str(error))


def in_band(
    response_type: Callable[..., Response], *, limited: bool = True, leader: bool = False,
) -> Callable[[Handler[Response]], Answer[Response]]:
    """Admit, time and answer a servicer method, refusals and failures in ``error``.

    A SchedulerError becomes its catalogue entry; anything else is logged with its
    traceback and answered INTERNAL, so a client never sees a transport error for
    something the scheduler did. Past the service's limit of concurrent calls the
    answer is RESOURCE_EXHAUSTED at once, unless ``limited`` is False (calls that
    finish work already handed out, which refusing would only waste).

    The method runs with the JobManager that serves now; a ``leader`` method (one that
    changes jobs) runs where the leader is: here, or passed on (scheduler/replicas.py).
    """

    def wrap(handler: Handler[Response]) -> Answer[Response]:
        method = handler.__name__

        @functools.wraps(handler)
        async def answer(self: EdgeServicer, request: Any,
                         context: grpc.aio.ServicerContext) -> Response:
            edge = self.edge
            if edge.not_serving is not None:
                # Transport-level UNAVAILABLE, which the SDK retries (elsewhere, or here
                # once ready); an in-band error would end the user's run instead.
                await context.abort(grpc.StatusCode.UNAVAILABLE, edge.not_serving)
            if isinstance(request, MalformedRequest):
                edge.metrics.rpc_latency.labels(method, "INVALID_ARGUMENT").observe(0)
                log.warning("%s: %d bytes that are no request (%s)", method, request.size,
                            request.why, extra=REPEATABLE)
                malformed = SchedulerError("request_malformed", method=method)
                return response_type(error=error_detail(malformed))
            if limited and not edge.admission.try_enter():
                edge.metrics.rpc_latency.labels(method, "RESOURCE_EXHAUSTED").observe(0)
                refusal = SchedulerError("overloaded", limit=edge.admission.limit)
                return response_type(error=error_detail(refusal))
            started = time.perf_counter()
            code = "INTERNAL"
            try:
                edge.authorize(context)
                replicas = edge.replicas
                if leader:
                    response = await replicas.call_leader(
                        f"/{edge.service}/{method}", request, response_type, context,
                        lambda manager: handler(self, request, context, manager),
                        edge.admission.released if limited else contextlib.nullcontext)
                else:
                    response = await handler(self, request, context, replicas.manager)
                code = "OK"
                return response
            except SchedulerError as exc:
                code = exc.code
                return response_type(error=error_detail(exc))
            except NoLeader as exc:
                code = "UNAVAILABLE"  # transport-level: the SDK tries once more
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry")
                raise  # not reached: abort raises
            except ForwardFailed as exc:
                code = exc.code.name
                await context.abort(exc.code, exc.details)
                raise  # not reached: abort raises
            except asyncio.CancelledError:
                if _caller_left():
                    code = "CANCELLED"  # not a failure of ours: nobody is left to answer
                    raise
                # Work shared with other calls (a single flight) was cancelled under this
                # one, as at shutdown: answered, and retryable, rather than left hanging.
                code = "UNAVAILABLE"
                log.warning("%s: shared work was interrupted; answered UNAVAILABLE", method)
                await context.abort(grpc.StatusCode.UNAVAILABLE, INTERRUPTED)
                raise  # not reached: abort raises
            except Exception:
                log.exception("%s failed unexpectedly", method, extra=REPEATABLE)
                return response_type(error=error_detail(SchedulerError("unexpected")))
            finally:
                if limited:
                    edge.admission.leave()
                edge.metrics.rpc_latency.labels(method, code).observe(
                    time.perf_counter() - started)

        return answer

    return wrap


def _caller_left() -> bool:
    """Whether this call's own task is being cancelled (as gRPC does when a caller leaves)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0

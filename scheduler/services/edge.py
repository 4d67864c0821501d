"""The gRPC edge: admission (per service and per token), latency metrics, request ids, and
every refusal in-band as an ErrorDetail, with a reason and an incident id (docs/errors.md)."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import ipaddress
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Generic, Protocol, TypeVar

import grpc
from google.protobuf.message import DecodeError

from common.caller import CALLER_ADDRESS
from common.identity import fingerprint
from common.logs import REPEATABLE, enter_call, new_id
from job_manager.manager import JobManager
from message_manager import SchedulerError
from pb.mqc3_cloud.common.v1 import error_detail_pb2
from scheduler.access.admission import CALLER, Admission, TokenLimits
from scheduler.access.auth import TokenResolver
from scheduler.messages.metadata import (
    INCIDENT_METADATA,
    REASON_METADATA,
    REQUEST_ID_METADATA,
    metadata_value,
    request_id,
)
from scheduler.operations.metrics import Metrics
from scheduler.replication.forwarding import ForwardFailed
from scheduler.replication.replicas import NoLeader, Replicas

log = logging.getLogger(__name__)

STARTING = "the scheduler is starting (recovering its jobs); retry"
DRAINING = "the scheduler is shutting down; retry"
INTERRUPTED = "the work this call was waiting for was interrupted; retry"
# Answers that name an incident: the scheduler's trouble, or a refusal someone may ask about.
INCIDENT_CODES = frozenset({"INTERNAL", "UNAVAILABLE", "RESOURCE_EXHAUSTED"})

Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext, JobManager], Awaitable[Response]]
Answer = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]
# A handler bound to its servicer: the request, the call's context, the manager to run on.
Bound = Callable[[Any, grpc.aio.ServicerContext, JobManager], Awaitable[Response]]


class Edge:
    """What every call of one gRPC service passes through."""

    def __init__(self, service: str, replicas: Replicas, admission: Admission, metrics: Metrics,
                 shared_secret: str | None = None, tokens: TokenLimits | None = None,
                 resolver: TokenResolver | None = None) -> None:
        self.service = service  # the full name, as in a method's path
        self.replicas = replicas  # which JobManager serves, and the road to the leader
        self.admission = admission
        self.metrics = metrics
        self.tokens = tokens  # each token's share, on a port whose requests name a token
        self.resolver = resolver  # who a token is, on such a port
        # Why calls are turned away (starting, draining), or None while serving.
        self._not_serving: str | None = STARTING
        self._expected = f"Bearer {shared_secret}".encode() if shared_secret else None

    @property
    def not_serving(self) -> str | None:
        """Why calls are turned away now (starting, draining), or None while they are taken."""
        return self._not_serving

    def take_calls(self) -> None:
        """Take calls from now on (the scheduler has started, or a replica drains by
        passing them to the next leader)."""
        self._not_serving = None

    def turn_away(self, why: str) -> None:
        """Answer every call from now on UNAVAILABLE, saying ``why`` (draining)."""
        self._not_serving = why

    def authorize(self, context: grpc.aio.ServicerContext) -> None:
        """With a shared secret set, refuse calls that do not present it."""
        if self._expected is None:
            return
        sent = (metadata_value(context, "authorization") or "").encode()
        if not hmac.compare_digest(sent, self._expected):
            raise SchedulerError("node_unauthenticated")

    async def admit_caller(self, request: Any, caller: str | None,
                           end_share: Callable[[], None]) -> Callable[[], None]:
        """Before a leader's call may wait for a leader (issue 27, item 5): the token the
        request names resolved, so a made-up one is refused at once rather than held
        through a failover, and counted against its share from now on if this call was its
        first (what ends the call's share is returned). The servicer's own resolve is then
        this one. A call that need not wait is resolved by its servicer, as before."""
        token = getattr(request, "token", None)
        if self.resolver is None or not isinstance(token, str):
            return end_share
        await self.resolver.resolve_for_call(token)
        return end_share if end_share is not _nothing else _take_share(self.tokens, caller)


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


def error_detail(error: SchedulerError, method: str = "",
                 incident: str | None = None) -> error_detail_pb2.ErrorDetail:
    """The ErrorDetail a client sees for a refusal. One whose code is in INCIDENT_CODES
    ends with its reason and an incident id, ``[reason=queue_full incident=K7QX2M4A]``,
    and the incident is logged with the same id."""
    description = str(error)
    if incident is None and error.code in INCIDENT_CODES:
        incident = new_id()
    if incident is not None:
        description += f" [reason={error.key} incident={incident}]"
        log.warning("%s answered %s (%s), incident %s", method or "a call", error.code,
                    error.key, incident, extra={**REPEATABLE, "kind": error.key})
    return error_detail_pb2.ErrorDetail(code=error.code, description=description)


def refused(context: grpc.aio.ServicerContext, method: str, error: SchedulerError,
            incident: str | None = None) -> error_detail_pb2.ErrorDetail:
    """``error``'s ErrorDetail, its reason (and incident) also in the trailing metadata."""
    if incident is None and error.code in INCIDENT_CODES:
        incident = new_id()
    context.set_trailing_metadata(_trailing(context, error.key, incident))
    return error_detail(error, method, incident)


def _trailing(context: grpc.aio.ServicerContext, reason: str | None = None,
              incident: str | None = None) -> tuple[tuple[str, str], ...]:
    """The request id the caller sent, and a refusal's reason and incident id. A request
    id the scheduler made is not answered: two calls that differ only by whose job they
    name must be answered alike (docs/errors.md)."""
    named = ((REQUEST_ID_METADATA, request_id(context)), (REASON_METADATA, reason),
             (INCIDENT_METADATA, incident))
    return tuple((name, value) for name, value in named if value is not None)


async def _abort(context: grpc.aio.ServicerContext, method: str, code: grpc.StatusCode,
                 details: str) -> None:
    """End the call with a transport status; one in INCIDENT_CODES names an incident."""
    if code.name not in INCIDENT_CODES:
        await context.abort(code, details, _trailing(context))
        return  # not reached: abort raises
    incident = new_id()
    log.warning("%s answered transport %s, incident %s: %s", method, code.name, incident,
                details, extra={**REPEATABLE, "kind": code.name})
    await context.abort(code, f"{details} [incident={incident}]",
                        _trailing(context, incident=incident))


def _nothing() -> None:
    pass


def _take_share(tokens: TokenLimits | None, caller: str | None) -> Callable[[], None]:
    """Count the call against its token's share (SchedulerError past it); what ends it."""
    if tokens is None or caller is None or not tokens.enter(caller):
        return _nothing
    return lambda: tokens.leave(caller)


def _token_key(request: Any) -> str | None:
    """The fingerprint of the token a request names, or None when it names none."""
    token = getattr(request, "token", None)
    return fingerprint(token) if isinstance(token, str) and token else None


def caller_address(context: grpc.aio.ServicerContext) -> str:
    """Where a call came from, as one caller cannot vary it at will: an IPv4 address, or
    the /64 network of an IPv6 one (a host is given a whole /64); the port never counts.
    (Behind a load balancer every call has the balancer's address: docs/errors.md.)"""
    peer = context.peer() or ""
    kind, _, rest = peer.partition(":")
    host = rest.rpartition(":")[0].strip("[]")
    if kind not in ("ipv4", "ipv6") or not host:
        return peer  # a Unix socket, or a form gRPC does not use
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return host
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:  # an IPv4 caller on a dual-stack port
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network(f"{address}/64", strict=False))
    return str(address)


def in_band(
    response_type: Callable[..., Response], *, limited: bool = True, leader: bool = False,
) -> Callable[[Handler[Response]], Answer[Response]]:
    """Admit, time and answer a servicer method, refusals and failures in ``error``.

    A SchedulerError becomes its catalogue entry; anything else is logged with its
    traceback and answered INTERNAL, so a client never sees a transport error for
    something the scheduler did. Past the service's limit of concurrent calls a call
    waits its turn, and only past the waiting room is it answered RESOURCE_EXHAUSTED,
    unless ``limited`` is False (calls that finish work already handed out, which
    refusing would only waste); past the share of the token the request names it is
    refused at once (scheduler/access/admission.py).

    The method runs with the JobManager that serves now; a ``leader`` method (one that
    changes jobs) runs where the leader is: here, or passed on (scheduler/replication/replicas.py).
    """

    def wrap(handler: Handler[Response]) -> Answer[Response]:
        method = handler.__name__

        @functools.wraps(handler)
        async def answer(self: EdgeServicer, request: Any,
                         context: grpc.aio.ServicerContext) -> Response:
            call = _Call(self.edge, method, response_type, request, context, limited)
            return await call.answer(functools.partial(handler, self), leader)

        return answer

    return wrap


class _Call(Generic[Response]):
    """One call through an edge: turned away, admitted, run where it must run, then
    timed, counted and answered in band (see :func:`in_band`)."""

    def __init__(self, edge: Edge, method: str, response_type: Callable[..., Response],
                 request: Any, context: grpc.aio.ServicerContext, limited: bool) -> None:
        self._edge = edge
        self._method = method
        self._response_type = response_type
        self._request = request
        self._context = context
        self._limited = limited
        self._caller: str | None = None  # the fingerprint of the token the request names
        self._end_share = _nothing  # ends the call's place in its token's share
        self._code = "INTERNAL"  # the answer's code, for the call's metrics

    async def answer(self, handler: Bound[Response], leader: bool) -> Response:
        """The response to the call, ``handler`` run on the manager where it must run."""
        self._begin()
        if self._edge.not_serving is not None:
            # Transport-level UNAVAILABLE, which the SDK retries (elsewhere, or here
            # once ready); an in-band error would end the user's run instead.
            await _abort(self._context, self._method, grpc.StatusCode.UNAVAILABLE,
                         self._edge.not_serving)
        if isinstance(self._request, MalformedRequest):
            return self._malformed(self._request)
        self._caller = _token_key(self._request) if self._edge.tokens is not None else None
        try:
            await self._admit()
        except SchedulerError as refusal:
            return self._not_admitted(refusal)
        CALLER.set(self._caller)
        CALLER_ADDRESS.set(caller_address(self._context))
        return await self._served(handler, leader)

    def _begin(self) -> None:
        # gRPC serves each call in a task of its own: this holds for this call only.
        sent_id = request_id(self._context)
        enter_call(sent_id)
        if sent_id is not None:
            self._context.set_trailing_metadata(((REQUEST_ID_METADATA, sent_id),))

    def _malformed(self, request: MalformedRequest) -> Response:
        self._edge.metrics.rpc_observe(self._method, "INVALID_ARGUMENT", 0)
        log.warning("%s: %d bytes that are no request (%s)", self._method, request.size,
                    request.why, extra=REPEATABLE)
        malformed = SchedulerError("request_malformed", method=self._method)
        return self._response_type(error=refused(self._context, self._method, malformed))

    async def _admit(self) -> None:
        """A place in the token's share, then a slot of the service's (its turn, or
        SchedulerError when too many wait)."""
        self._end_share = _take_share(self._edge.tokens, self._caller)
        if self._limited and not self._edge.admission.try_enter():
            try:
                await self._edge.admission.enter()
            except BaseException:
                self._end_share()
                raise

    def _not_admitted(self, refusal: SchedulerError) -> Response:
        self._edge.metrics.rpc_observe(self._method, "RESOURCE_EXHAUSTED", 0)
        self._edge.metrics.refusals.labels(refusal.key).inc()
        return self._response_type(error=refused(self._context, self._method, refusal))

    async def _served(self, handler: Bound[Response], leader: bool) -> Response:
        """The handler's response, or the failure answered: in band, or as the
        transport-level status the SDK retries."""
        # The call's latency, on real time: the histogram measures the service's work.
        started = time.perf_counter()
        try:
            self._edge.authorize(self._context)
            response = await self._run(handler, leader)
            self._code = "OK"
            return response
        except SchedulerError as exc:
            return self._refused(exc)
        except NoLeader as exc:
            self._code = "UNAVAILABLE"  # transport-level: the SDK tries once more
            await _abort(self._context, self._method, grpc.StatusCode.UNAVAILABLE,
                         f"{exc}; retry")
            raise  # not reached: abort raises
        except ForwardFailed as exc:
            self._code = exc.code.name
            await _abort(self._context, self._method, exc.code, exc.details)
            raise  # not reached: abort raises
        except asyncio.CancelledError:
            await self._cancelled()
            raise
        except Exception:
            incident = new_id()
            log.exception("%s failed unexpectedly, incident %s", self._method, incident,
                          extra=REPEATABLE)
            unexpected = SchedulerError("unexpected")
            return self._response_type(
                error=refused(self._context, self._method, unexpected, incident))
        finally:
            if self._limited:
                self._edge.admission.leave()
            self._end_share()
            self._edge.metrics.rpc_observe(self._method, self._code,
                                           time.perf_counter() - started)

    async def _run(self, handler: Bound[Response], leader: bool) -> Response:
        """``handler`` on the manager that serves here, or (a leader's call) where the
        leader is."""
        replicas = self._edge.replicas
        if not leader:
            return await handler(self._request, self._context, replicas.manager)
        return await replicas.call_leader(
            f"/{self._edge.service}/{self._method}", self._request, self._response_type,
            self._context, lambda manager: handler(self._request, self._context, manager),
            self._edge.admission.released if self._limited else contextlib.nullcontext,
            self._before_waiting)

    async def _before_waiting(self) -> None:
        """Before a leader's call first waits: its token resolved and its share taken
        (Edge.admit_caller)."""
        self._end_share = await self._edge.admit_caller(self._request, self._caller,
                                                        self._end_share)

    def _refused(self, exc: SchedulerError) -> Response:
        self._code = exc.code
        if exc.code == "RESOURCE_EXHAUSTED":
            self._edge.metrics.refusals.labels(exc.key).inc()
        return self._response_type(error=refused(self._context, self._method, exc))

    async def _cancelled(self) -> None:
        """The call's task was cancelled: its caller left, or shared work under it was."""
        if _caller_left():
            self._code = "CANCELLED"  # not a failure of ours: nobody is left to answer
            return
        # Work shared with other calls (a single flight) was cancelled under this
        # one, as at shutdown: answered, and retryable, rather than left hanging.
        self._code = "UNAVAILABLE"
        await _abort(self._context, self._method, grpc.StatusCode.UNAVAILABLE, INTERRUPTED)


def _caller_left() -> bool:
    """Whether this call's own task is being cancelled (as gRPC does when a caller leaves)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0

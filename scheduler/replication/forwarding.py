"""Passing a call to the leader: the same request, over gRPC, to the port it publishes.

A replica that does not lead passes on what only the leader may do (docs/replicas.md),
with the caller's own credentials (the token in the request, the nodes' secret in the
``authorization`` metadata), the scheduler's ``x-mqc3-*`` metadata and the call's request
id, so the leader's log lines of the call carry the same one (docs/errors.md). The leader
checks them as for any call; a forwarded call is marked so it is never passed on again.
"""

from __future__ import annotations

import uuid
from typing import Any

import grpc

from common.logs import current_request_id
from scheduler.messages.metadata import REQUEST_ID_METADATA, metadata_value
from scheduler.messages.validation import IDEMPOTENCY_METADATA

FORWARDED_BY = "x-mqc3-forwarded-by"  # the replica that passed the call on
# An AssignNextJob passed on carries an id of its own, so that the follower can name the
# call to the leader when its node never received the answer (docs/replicas.md).
FORWARDED_CALL = "x-mqc3-forwarded-call"
# The services of the execution port (the protocol's, and the nodes' extension): their
# calls go to the leader's execution port, the rest to its submission port.
EXECUTION_PORT_SERVICES = ("/mqc3_cloud.scheduler.v1.ExecutionService/",
                           "/mqc3_scheduler.extension.v1.NodeService/")
_PASSED_ON = ("authorization", "x-mqc3-")
# A SubmitJob passed on gets an idempotency key when its caller sent none, so that
# passing it again after the leader died cannot make a second job (docs/replicas.md).
FORWARDED_KEY_PREFIX = "forwarded-"


class LeaderUnreachable(Exception):
    """The leader did not take the call (gone, draining, or no longer leading)."""


class ForwardFailed(Exception):
    """The leader's answer was a transport error other than UNAVAILABLE; passed back as is."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        super().__init__(details)
        self.code = code
        self.details = details


def on_execution_port(path: str) -> bool:
    """Whether the method at ``path`` is served on the execution port."""
    return path.startswith(EXECUTION_PORT_SERVICES)


def was_forwarded(context: grpc.aio.ServicerContext) -> bool:
    """Whether this call was passed on by another replica."""
    return metadata_value(context, FORWARDED_BY) is not None


class Forwarder:
    """One channel per leader address, made on first use and kept."""

    def __init__(self, me: str, submission: grpc.ChannelCredentials | None = None,
                 execution: grpc.ChannelCredentials | None = None) -> None:
        self._me = me
        # How each port is reached; None: plaintext, as between replicas behind a TLS edge.
        self._credentials = {False: submission, True: execution}
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def call(self, address: str, path: str, request: Any, response_type: Any,
                   metadata: list[tuple[str, str]], timeout_s: float,
                   answer_to: grpc.aio.ServicerContext | None = None) -> Any:
        """The leader's answer to ``request`` at ``address``; raises LeaderUnreachable.

        ``answer_to``: the caller's own call, given the leader's ``x-mqc3-*`` answer
        metadata (a hand-over's number, docs/nodes.md) as if this replica had answered.
        """
        channel = self._channel(address, self._credentials[on_execution_port(path)])
        method = channel.unary_unary(
            path, request_serializer=_serialize, response_deserializer=response_type.FromString)
        try:
            call = method(request, metadata=metadata, timeout=max(timeout_s, 0.001))
            answer = await call
            if answer_to is not None:
                passed = tuple((name, value) for name, value in await call.initial_metadata()
                               if name.startswith("x-mqc3-"))
                if passed:
                    await answer_to.send_initial_metadata(passed)
            return answer
        except grpc.aio.AioRpcError as exc:
            if exc.code() is grpc.StatusCode.UNAVAILABLE:
                raise LeaderUnreachable(exc.details() or "unavailable") from None
            raise ForwardFailed(exc.code(), exc.details() or "") from None

    def metadata(self, path: str, context: grpc.aio.ServicerContext) -> list[tuple[str, str]]:
        """What the call carries to the leader: made once per call, the same on each attempt."""
        sent = [(name, value if isinstance(value, str) else value.decode(errors="replace"))
                for name, value in (context.invocation_metadata() or ())
                if name.startswith(_PASSED_ON) and name not in (FORWARDED_BY, FORWARDED_CALL)]
        if path.endswith("/SubmitJob") and not any(n == IDEMPOTENCY_METADATA for n, _ in sent):
            sent.append((IDEMPOTENCY_METADATA, f"{FORWARDED_KEY_PREFIX}{uuid.uuid4().hex}"))
        request_id = current_request_id()
        if request_id is not None:
            sent.append((REQUEST_ID_METADATA, request_id))
        sent.append((FORWARDED_BY, self._me))
        return sent

    def _channel(self, address: str,
                 credentials: grpc.ChannelCredentials | None) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            channel = (grpc.aio.secure_channel(address, credentials) if credentials
                       else grpc.aio.insecure_channel(address))
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        """Close every channel."""
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()


def _serialize(message: Any) -> bytes:
    return message.SerializeToString()  # type: ignore[no-any-return]

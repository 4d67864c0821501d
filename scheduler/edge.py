"""The gRPC edge's error translation: every refusal travels in-band as an ErrorDetail."""

from __future__ import annotations

import functools
import logging
from typing import Any, Awaitable, Callable, TypeVar

import grpc

from message_manager import SchedulerError
from pb.mqc3_cloud.common.v1 import error_detail_pb2

log = logging.getLogger(__name__)

Response = TypeVar("Response")
Handler = Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]]


def error_detail(error: SchedulerError) -> error_detail_pb2.ErrorDetail:
    """The ErrorDetail a client sees for a refusal."""
    return error_detail_pb2.ErrorDetail(code=error.code, description=str(error))


def in_band(
    response_type: Callable[..., Response],
) -> Callable[[Handler[Response]], Handler[Response]]:
    """Answer a servicer method's refusals and failures in the response's ``error`` field.

    A SchedulerError becomes its catalogue entry; anything else is logged with its
    traceback and answered INTERNAL, so a client never sees a transport error for
    something the scheduler did.
    """

    def wrap(handler: Handler[Response]) -> Handler[Response]:
        @functools.wraps(handler)
        async def answer(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
            try:
                return await handler(self, request, context)
            except SchedulerError as exc:
                return response_type(error=error_detail(exc))
            except Exception:
                log.exception("%s failed unexpectedly", handler.__qualname__)
                return response_type(error=error_detail(SchedulerError("unexpected")))

        return answer

    return wrap

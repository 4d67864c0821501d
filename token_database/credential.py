"""The admin credential that guards a token database: who may reach it may mint admin tokens.

A token database that listens where other local accounts can connect (the standalone
scheduler's embedded one, on loopback) requires every call to carry
``authorization: Bearer <secret>``. The secret lives in a file readable by the
service's owner alone, so only the operator (and the scheduler itself) holds it.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from common import private_files

METADATA = "authorization"


def load_or_create_secret(path: Path) -> str:
    """The secret in ``path``, made (owner-readable only) the first time; one another
    account could have planted or read is refused (common/private_files.py)."""
    private_files.create_file(path, secrets.token_urlsafe(32).encode())
    secret = private_files.read_file(path, secret=True)
    assert secret is not None  # made just above, in a folder no one else may change
    return secret.decode().strip()


class PresentCredential(grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[misc]
    """Adds the secret to every call of a channel (the scheduler's own, an admin tool's)."""

    def __init__(self, secret: str) -> None:
        self._metadata = (METADATA, f"Bearer {secret}")

    async def intercept_unary_unary(self, continuation: Callable[..., Any],
                                    details: grpc.aio.ClientCallDetails, request: Any) -> Any:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), self._metadata)
        return await continuation(details._replace(metadata=metadata), request)


class RequireCredential(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Refuses, with UNAUTHENTICATED, every call that does not present the secret."""

    def __init__(self, secret: str) -> None:
        self._expected = f"Bearer {secret}".encode()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        sent = dict(details.invocation_metadata or ()).get(METADATA, "")
        sent_bytes = sent.encode() if isinstance(sent, str) else bytes(sent)
        if hmac.compare_digest(sent_bytes, self._expected):
            return await continuation(details)
        return grpc.unary_unary_rpc_method_handler(_refuse)


async def _refuse(request: Any, context: grpc.aio.ServicerContext) -> None:
    await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                        "this token database needs its admin credential")

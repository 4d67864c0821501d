"""The scheduler's HTTP side: /healthz, and in standalone mode the signed result URLs."""

from __future__ import annotations

import re
from collections.abc import Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from job_manager.stores.local_payload_store import KEPT_HEADERS, RESULTS_PATH, LocalPayloadStore

_RESULT_NAME = re.compile(r"^[0-9a-f-]{36}\.out\.proto\.gz$")
PAYLOADS_KEY = web.AppKey("payloads", LocalPayloadStore)


SERVING_KEY: web.AppKey[Callable[[], bool]] = web.AppKey("serving")
METRICS_KEY: web.AppKey[Callable[[], bytes]] = web.AppKey("metrics")


async def _healthz(request: web.Request) -> web.Response:
    if request.app[SERVING_KEY]():
        return web.Response(text="SERVING\n")
    return web.Response(status=503, text="NOT_SERVING\n")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS_KEY](),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def _authorized(request: web.Request) -> str:
    """The object name, once the request's signature is checked; 403/404 otherwise."""
    name = request.match_info["name"]
    if not _RESULT_NAME.match(name):
        raise web.HTTPNotFound(text="no such object\n")
    store = request.app[PAYLOADS_KEY]
    if not store.is_allowed(
        request.method, name, request.query.get("expires", ""), request.query.get("signature", "")
    ):
        raise web.HTTPForbidden(text="the URL's signature is invalid or has expired\n")
    return name


async def _put_result(request: web.Request) -> web.Response:
    name = _authorized(request)
    body = await request.read()
    await request.app[PAYLOADS_KEY].save_result(
        name, body, {h: request.headers[h] for h in KEPT_HEADERS if h in request.headers}
    )
    return web.Response(status=200)


async def _get_result(request: web.Request) -> web.Response:
    name = _authorized(request)
    stored = await request.app[PAYLOADS_KEY].load_result(name)
    if stored is None:
        raise web.HTTPNotFound(text="no result has been uploaded\n")
    # The body goes out as uploaded (gzip) with the upload's Content-Encoding, so
    # an HTTP client decompresses it, as it would from S3.
    return web.Response(body=stored.body, headers=stored.headers)


def build_http_app(serving: Callable[[], bool], *, payloads: LocalPayloadStore | None = None,
                   max_upload_bytes: int = 1024**2,
                   metrics: Callable[[], bytes] | None = None) -> web.Application:
    """The aiohttp application: /healthz always, /metrics and the result routes when given."""
    app = web.Application(client_max_size=max_upload_bytes)
    app[SERVING_KEY] = serving
    app.router.add_get("/healthz", _healthz)
    if metrics is not None:
        app[METRICS_KEY] = metrics
        app.router.add_get("/metrics", _metrics)
    if payloads is not None:
        app[PAYLOADS_KEY] = payloads
        app.router.add_put(RESULTS_PATH + "/{name}", _put_result)
        app.router.add_get(RESULTS_PATH + "/{name}", _get_result)
    return app

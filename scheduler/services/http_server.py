"""The scheduler's HTTP side: /healthz, and in standalone mode the signed result URLs."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST

from common import audit
from job_manager.stores import StoreError
from job_manager.stores.local_payload_store import KEPT_HEADERS, RESULTS_PATH, LocalPayloadStore

_RESULT_NAME = re.compile(r"^[0-9a-f-]{36}\.out\.proto\.gz$")
# What a node may PUT: the final result's name (requeues off, as the original), or one
# hand-over's own (docs/protocol.md, "Results when jobs may be queued again").
_UPLOAD_NAME = re.compile(r"^([0-9a-f-]{36})\.(?:handover-([0-9]{1,9})\.)?out\.proto\.gz$")
PAYLOADS_KEY = web.AppKey("payloads", LocalPayloadStore)


SERVING_KEY: web.AppKey[Callable[[], bool]] = web.AppKey("serving")
NOTES_KEY: web.AppKey[Callable[[], list[str]]] = web.AppKey("notes")
CHUNK_BYTES = 64 * 1024
BODY_IDLE_TIMEOUT_S = 30.0  # an upload that sends nothing for this long is dropped
DOWNLOAD_HEADERS = {
    "Content-Type": "application/protobuf",
    "Content-Disposition": "attachment",
    "X-Content-Type-Options": "nosniff",
}


@dataclass(frozen=True)
class Uploads:
    """Which results may be uploaded now, and how large one may be."""

    # (job id, hand-over or None for the final key) → may that result be uploaded now
    accepts: Callable[[str, int | None], bool]
    max_bytes: int
    wrote: Callable[[bool], None] = lambda ok: None  # whether a result could be written


UPLOADS_KEY: web.AppKey[Uploads] = web.AppKey("uploads", Uploads)
METRICS_KEY: web.AppKey[Callable[[], bytes]] = web.AppKey("metrics")


async def _healthz(request: web.Request) -> web.Response:
    notes = "".join(f"{note}\n" for note in request.app[NOTES_KEY]())
    if request.app[SERVING_KEY]():
        return web.Response(text=f"SERVING\n{notes}")
    return web.Response(status=503, text=f"NOT_SERVING\n{notes}")


async def _metrics(request: web.Request) -> web.Response:
    return web.Response(body=request.app[METRICS_KEY](),
                        headers={"Content-Type": CONTENT_TYPE_LATEST})


def _authorized(request: web.Request, names: re.Pattern[str] = _RESULT_NAME) -> str:
    """The object name, once the request's signature is checked; 403/404 otherwise."""
    name = request.match_info["name"]
    if not names.match(name):
        raise web.HTTPNotFound(text="no such object\n")
    store = request.app[PAYLOADS_KEY]
    if not store.is_allowed(
        request.method, name, request.query.get("expires", ""), request.query.get("signature", "")
    ):
        raise web.HTTPForbidden(text="the URL's signature is invalid or has expired\n")
    return name


async def _put_result(request: web.Request) -> web.Response:
    name = _authorized(request, _UPLOAD_NAME)
    matched = _UPLOAD_NAME.match(name)
    assert matched is not None  # checked by _authorized
    handover = int(matched.group(2)) if matched.group(2) is not None else None
    if not request.app[UPLOADS_KEY].accepts(matched.group(1), handover):
        raise web.HTTPConflict(text="the job is not running in this URL's hand-over: its "
                                    "result can no longer be uploaded here\n")
    limit = request.app[UPLOADS_KEY].max_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    sink = request.app[PAYLOADS_KEY].result_sink(name)
    try:
        while True:
            # The limit holds as bytes arrive, whatever Content-Length said; a sender that
            # stalls is dropped.
            async with asyncio.timeout(BODY_IDLE_TIMEOUT_S):
                chunk = await request.content.read(CHUNK_BYTES)
            if not chunk:
                break
            if sink.size + len(chunk) > limit:
                raise web.HTTPRequestEntityTooLarge(max_size=limit,
                                                    actual_size=sink.size + len(chunk))
            await sink.write(chunk)
        await sink.keep({h: request.headers[h] for h in KEPT_HEADERS if h in request.headers})
    except StoreError:
        # The disk refuses writes (read-only, full): health hears of it (docs: README,
        # Operations), and the node is told to try again rather than of a bug of ours.
        request.app[UPLOADS_KEY].wrote(False)
        await sink.discard()
        raise web.HTTPServiceUnavailable(text="the scheduler cannot store results now (its "
                                              "disk refuses writes); try again later\n") from None
    except TimeoutError:
        await sink.discard()
        raise web.HTTPRequestTimeout(text="the upload stalled\n") from None
    except BaseException:
        await sink.discard()
        raise
    request.app[UPLOADS_KEY].wrote(True)
    return web.Response(status=200)


async def _get_result(request: web.Request) -> web.Response:
    """A result, through its signed URL; every download of a job's result is audited
    (docs/audit.md) with its answer and the requester's address, never the signature."""
    name = request.match_info["name"]
    try:
        response = await _result(request)
    except web.HTTPException as exc:
        if _RESULT_NAME.match(name):
            _audit_download(request, name, str(exc.status))
        raise
    _audit_download(request, name)
    return response


def _audit_download(request: web.Request, name: str, refused_with: str = "") -> None:
    who = audit.Actor(name="signed URL", role="", address=request.remote or "")
    audit.record(who, "result.download", result=audit.REFUSED if refused_with else audit.OK,
                 code=refused_with, job_id=name.split(".", 1)[0])


async def _result(request: web.Request) -> web.Response:
    name = _authorized(request)
    stored = await request.app[PAYLOADS_KEY].load_result(name)
    if stored is None:
        raise web.HTTPNotFound(text="no result has been uploaded\n")
    # Fixed headers, whatever the uploader sent: never its own type or disposition. The
    # body goes out as uploaded; a gzip upload is answered with Content-Encoding: gzip,
    # so an HTTP client decompresses it, as it would from S3 (docs/protocol.md: the SDK relies
    # on it).
    headers = dict(DOWNLOAD_HEADERS)
    if stored.headers.get("Content-Encoding", "").strip().lower() == "gzip":
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=stored.body, headers=headers)


async def _one_request_per_connection(request: web.Request,
                                      response: web.StreamResponse) -> None:
    response.force_close()  # no keep-alive: see scheduler/access/http_guard.py


def build_http_app(serving: Callable[[], bool], *, payloads: LocalPayloadStore | None = None,
                   uploads: Uploads | None = None,
                   metrics: Callable[[], bytes] | None = None,
                   notes: Callable[[], list[str]] = list) -> web.Application:
    """The aiohttp application: /healthz always, /metrics and the result routes when given."""
    app = web.Application()
    app.on_response_prepare.append(_one_request_per_connection)
    app[SERVING_KEY] = serving
    app[NOTES_KEY] = notes
    app.router.add_get("/healthz", _healthz)
    if metrics is not None:
        app[METRICS_KEY] = metrics
        app.router.add_get("/metrics", _metrics)
    if payloads is not None:
        assert uploads is not None, "the result routes need to know which uploads to take"
        app[PAYLOADS_KEY] = payloads
        app[UPLOADS_KEY] = uploads
        app.router.add_put(RESULTS_PATH + "/{name}", _put_result)
        app.router.add_get(RESULTS_PATH + "/{name}", _get_result)
    return app

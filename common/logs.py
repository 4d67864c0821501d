"""Log set-up: text for people, one JSON object per line for log shippers; each line of a
call carries the call's request id (docs/errors.md)."""

from __future__ import annotations

import base64
import json
import logging
import secrets
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime


def new_id() -> str:
    """A short id people can quote (a request id, an incident id): 8 base32 characters."""
    return base64.b32encode(secrets.token_bytes(5)).decode()


class _CallId:
    """A call's request id: the caller's, or one made when first asked for (most calls
    write no line, so most never need one). One object per call, shared by the threads
    the call's context is copied into, so every line of the call names the same id."""

    __slots__ = ("_value",)

    def __init__(self, sent: str | None) -> None:
        self._value = sent

    def get(self) -> str:
        if self._value is None:
            self._value = new_id()
        return self._value


# The call being served, set where the call enters (the gRPC edge).
_CALL: ContextVar[_CallId | None] = ContextVar("call", default=None)


def enter_call(sent: str | None) -> None:
    """This task serves a call: ``sent`` is the caller's request id (None: made if needed)."""
    _CALL.set(_CallId(sent))


def current_request_id() -> str | None:
    """The request id of the call being served, or None outside any call."""
    call = _CALL.get()
    return call.get() if call is not None else None


class RequestIdFilter(logging.Filter):
    """Gives each record ``request_id`` (the call's, or None) and ``call`` (`` [id]`` or "")."""

    def filter(self, record: logging.LogRecord) -> bool:
        call_id = current_request_id()
        record.request_id = call_id
        record.call = f" [{call_id}]" if call_id else ""
        return True


class JsonFormatter(logging.Formatter):
    """Each record as one JSON object: time, level, logger, message (and the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None)
        if request_id:
            entry["request_id"] = request_id
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


# What a client can make the service log as often as it likes (bad requests, failing
# lookups) is marked ``extra=REPEATABLE``: at most BURST records of one kind per window
# reach the log, then one line says how many were left out. A record's kind is its logger
# and message template, and its ``kind`` attribute when it has one (a refusal's reason).
REPEATABLE = {"repeatable": True}
BURST = 10
WINDOW_S = 10.0


class RepeatLimit(logging.Filter):
    """Lets through at most BURST records of each kind (logger and message template) per
    WINDOW_S among those marked repeatable, and all of aiohttp's server errors' kinds."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._clock = clock
        self._windows: dict[tuple[str, str, str], list[float]] = {}  # kind → [start, count]

    def filter(self, record: logging.LogRecord) -> bool:
        if not (getattr(record, "repeatable", False) or record.name.startswith("aiohttp")):
            return True
        kind = (record.name, str(record.msg), str(getattr(record, "kind", "")))
        now = self._clock()
        window = self._windows.get(kind)
        if window is None or now - window[0] >= WINDOW_S:
            left_out = int(window[1]) - BURST if window is not None else 0
            if len(self._windows) > 1000:
                self._windows.clear()  # bounded: kinds are templates, few in practice
            self._windows[kind] = [now, 1.0]
            if left_out > 0:
                record.msg = f"{record.msg} (and {left_out} more like it left out)"
            return True
        window[1] += 1
        return window[1] <= BURST


def configure_logging(level: str, log_format: str) -> None:
    """Send the service's logs to stderr at ``level`` in ``log_format`` ("text" or "json")."""
    handler = logging.StreamHandler()
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s%(call)s: %(message)s"))
    handler.addFilter(RepeatLimit())
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # No line names a thread or a process: not gathering them for each record makes a
    # record cheaper (the logging HOWTO's "Optimization"), and a job logs a few.
    logging.logThreads = logging.logProcesses = logging.logMultiprocessing = False
    # Nor does one name the file, line or function that logged it: without a source file
    # to look for, logging no longer walks the stack for each record (the same HOWTO).
    logging._srcfile = None
    # Per-request chatter of libraries stays out of INFO.
    for noisy in ("aiohttp.access", "botocore", "boto3", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

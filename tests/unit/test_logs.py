"""Repeated failures a client can cause reach the log a bounded number of times; each line
of a call carries its request id."""

from __future__ import annotations

import contextvars
import json
import logging
import re

from common.logs import (
    BURST,
    REPEATABLE,
    WINDOW_S,
    JsonFormatter,
    RepeatLimit,
    RequestIdFilter,
    configure_logging,
    enter_call,
    new_id,
)


def _record(msg: str, *, repeatable: bool = True, name: str = "scheduler.services.edge",
            kind: str | None = None) -> logging.LogRecord:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, (), None)
    if repeatable:
        record.__dict__.update(REPEATABLE)
    if kind is not None:
        record.kind = kind
    return record


def test_a_repeated_kind_is_let_through_a_burst_per_window_then_counted() -> None:
    now = [0.0]
    limit = RepeatLimit(lambda: now[0])
    passed = [limit.filter(_record("bad bytes from %s")) for _ in range(BURST + 25)]
    assert passed.count(True) == BURST
    now[0] += WINDOW_S
    summary = _record("bad bytes from %s")
    assert limit.filter(summary)
    assert "25 more like it left out" in str(summary.msg)


def test_kinds_are_limited_apart_and_unmarked_records_never() -> None:
    limit = RepeatLimit(lambda: 0.0)
    for _ in range(BURST):
        assert limit.filter(_record("kind a"))
    assert limit.filter(_record("kind b"))
    assert all(limit.filter(_record("job %s QUEUED", repeatable=False)) for _ in range(100))
    assert not limit.filter(_record("kind a"))


def test_aiohttps_server_errors_are_limited_without_a_mark() -> None:
    limit = RepeatLimit(lambda: 0.0)
    passed = [limit.filter(_record("Error handling request", repeatable=False,
                                   name="aiohttp.server")) for _ in range(50)]
    assert passed.count(True) == BURST


def test_a_refusals_reason_is_a_kind_of_its_own() -> None:
    limit = RepeatLimit(lambda: 0.0)
    template = "%s answered %s (%s), incident %s"
    for _ in range(BURST):
        assert limit.filter(_record(template, kind="token_rate"))
    assert not limit.filter(_record(template, kind="token_rate"))
    assert limit.filter(_record(template, kind="too_many_jobs"))  # not drowned by a flood


def _lines_of(record: logging.LogRecord) -> tuple[str, dict[str, str]]:
    """``record`` as the text and the JSON format write it."""
    root = logging.getLogger()
    kept = root.handlers[:], root.level
    try:
        configure_logging("INFO", "text")
        [handler] = root.handlers
    finally:
        root.handlers[:], root.level = kept[0], kept[1]
    assert handler.filter(record)
    text = handler.format(record)
    return text, json.loads(JsonFormatter().format(record))


def test_each_line_of_a_call_carries_its_request_id_in_either_format() -> None:
    def in_a_call() -> tuple[str, dict[str, str]]:
        enter_call("req-42")
        return _lines_of(_record("job %s QUEUED", repeatable=False))

    text, entry = contextvars.copy_context().run(in_a_call)
    assert re.search(r" scheduler\.services\.edge \[req-42\]: job %s QUEUED$", text), text
    assert entry["request_id"] == "req-42"
    text, entry = _lines_of(_record("scheduler ready", repeatable=False))  # outside any call
    assert text.endswith(" scheduler.services.edge: scheduler ready") and "request_id" not in entry


def test_a_request_id_filter_reads_the_call_it_runs_in() -> None:
    record = _record("x", repeatable=False)
    def in_a_call() -> None:
        enter_call("a")
        RequestIdFilter().filter(record)

    contextvars.copy_context().run(in_a_call)
    assert record.request_id == "a"  # type: ignore[attr-defined]


def test_a_call_without_a_request_id_gets_one_made_once_for_all_its_lines() -> None:
    def in_a_call() -> list[str]:
        enter_call(None)
        # The first line is written in a thread the call handed work to (asyncio.to_thread
        # copies the context): the call's own lines after it name the same id.
        made = [contextvars.copy_context().run(
            lambda: _lines_of(_record("in a thread", repeatable=False))[1]["request_id"])]
        made.append(_lines_of(_record("line", repeatable=False))[1]["request_id"])
        made.append(_lines_of(_record("again", repeatable=False))[1]["request_id"])
        return made

    made = contextvars.copy_context().run(in_a_call)
    assert len(set(made)) == 1 and re.fullmatch(r"[A-Z2-7]{8}", made[0]), made
    other = contextvars.copy_context().run(in_a_call)
    assert other[0] != made[0]  # each call its own


def test_new_ids_are_short_and_quotable() -> None:
    ids = {new_id() for _ in range(100)}
    assert len(ids) == 100 and all(re.fullmatch(r"[A-Z2-7]{8}", i) for i in ids)

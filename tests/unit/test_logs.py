"""Repeated failures a client can cause reach the log a bounded number of times."""

from __future__ import annotations

import logging

from common.logs import BURST, REPEATABLE, WINDOW_S, RepeatLimit


def _record(msg: str, *, repeatable: bool = True,
            name: str = "scheduler.edge") -> logging.LogRecord:
    record = logging.LogRecord(name, logging.WARNING, __file__, 1, msg, (), None)
    if repeatable:
        record.__dict__.update(REPEATABLE)
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

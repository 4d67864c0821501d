"""deploy/grafana-dashboard.json asks only for metrics the scheduler exports."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from common.identity import Role
from job_manager.bookings import Booking
from job_manager.sessions import Session
from scheduler.operations.metrics import Metrics
from tests.contract.test_job_store_contract import full_record

NOW = datetime(2027, 1, 5, 9, 0, tzinfo=UTC)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana-dashboard.json"
_METRIC = re.compile(r"\bmqc3_[a-z0-9_]+")


def _used() -> set[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert exprs
    return {name for expr in exprs for name in _METRIC.findall(expr)}


def _exported() -> set[str]:
    """Every sample name a fresh Metrics exposes once each of its metrics was touched."""
    metrics = Metrics()
    record = full_record()
    metrics.submitted(record)
    metrics.refused("emulator", Role.GUEST.value, "INVALID_ARGUMENT")
    metrics.handed_over(record)
    metrics.given_back(record)
    metrics.finished(record)
    metrics.rpc_latency.labels("SubmitJob", "OK").observe(0.01)
    metrics.store_latency.labels("jobs", "get").observe(0.01)
    metrics.store_errors.labels("jobs", "get").inc()
    metrics.token_cache.labels("hit").inc()
    metrics.takeovers.inc()
    metrics.forwarded.labels("SubmitJob", "ok").inc()
    metrics.unreadable_records.inc()
    metrics.watch_queues(lambda: [("emulator", 1, 10, 0)])
    metrics.watch_free_space(lambda: 1)
    metrics.watch_reservations(lambda: (["emulator"], [_booking("emulator", 3600, ())],
                                        [_session("emulator", begun=True)]), lambda: NOW)
    return set(_samples(metrics))


def _samples(metrics: Metrics) -> dict[str, dict[tuple[tuple[str, str], ...], float]]:
    """Each sample's value, by name and labels."""
    text = metrics.exposition().decode()
    samples: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = (
                sample.value)
    return samples


def _booking(backend: str, starts_in_s: float, users: tuple[str, ...],
             length_s: float = 3600) -> Booking:
    starts_at = NOW + timedelta(seconds=starts_in_s)
    return Booking(f"b-{backend}-{starts_in_s}", backend, starts_at,
                   starts_at + timedelta(seconds=length_s), users, "root")


def _session(backend: str, begun: bool, ended: bool = False) -> Session:
    return Session(f"s-{backend}", "f" * 64, "alice", Role.DEVELOPER, backend,
                   NOW - timedelta(minutes=5), 3600, 60,
                   started_at=NOW - timedelta(minutes=4) if begun else None,
                   ended_at=NOW if ended else None)


def test_every_metric_the_dashboard_uses_is_exported() -> None:
    assert _used() - _exported() == set()


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    used = _used()
    for wanted in ("mqc3_queue_depth_jobs", "mqc3_job_queue_wait_seconds_bucket",
                   "mqc3_rpc_seconds_count", "mqc3_lease_takeovers_total",
                   "mqc3_replica_leading", "mqc3_session_holding",
                   "mqc3_booking_next_start_seconds", "mqc3_booking_open"):
        assert wanted in used


def test_the_reservation_gauges_say_who_holds_and_which_window_comes() -> None:
    metrics = Metrics()
    bookings = [_booking("emulator", -600, ("alice",)),  # open now, until +50 min
                _booking("emulator", 7200, ()),  # maintenance in 2 h
                _booking("emulator", 86400, ()),  # and again tomorrow: the next is in 2 h
                _booking("qpu", -7200, ("bob",)),  # ended an hour ago: no longer counts
                _booking("qpu", 60, ("bob",))]
    sessions = [_session("emulator", begun=True), _session("qpu", begun=False),
                _session("emulator-b", begun=True, ended=True)]
    leading = True
    metrics.watch_reservations(
        lambda: (["emulator", "qpu", "idle"], bookings, sessions) if leading else ([], [], []),
        lambda: NOW)
    samples = _samples(metrics)

    def by_backend(name: str) -> dict[str, float]:
        return {dict(labels)["backend"]: v for labels, v in samples[name].items()}

    def by_kind(name: str) -> dict[tuple[str, str], float]:
        return {(dict(labels)["backend"], dict(labels)["kind"]): v
                for labels, v in samples[name].items()}

    assert by_backend("mqc3_session_holding") == {
        "emulator": 1, "qpu": 0, "idle": 0, "emulator-b": 0}  # one not begun, one ended
    assert by_backend("mqc3_sessions_open") == {
        "emulator": 1, "qpu": 1, "idle": 0, "emulator-b": 0}
    assert by_kind("mqc3_booking_open") == {
        ("emulator", "user"): 1, ("emulator", "maintenance"): 0, ("qpu", "user"): 0,
        ("qpu", "maintenance"): 0, ("idle", "user"): 0, ("idle", "maintenance"): 0,
        ("emulator-b", "user"): 0, ("emulator-b", "maintenance"): 0}
    assert by_kind("mqc3_booking_next_start_seconds") == {
        ("emulator", "maintenance"): 7200, ("qpu", "user"): 60}  # none booked: no series
    leading = False  # a follower's view: nothing at all
    assert not {name for name in _samples(metrics) if "session" in name or "booking" in name}


def test_the_check_tells_exported_names_from_made_up_ones() -> None:
    exported = _exported()
    assert {"mqc3_queue_depth_jobs", "mqc3_lease_takeovers_total"} <= exported
    assert "mqc3_lease_takeovers" not in exported  # a counter is exposed as ..._total

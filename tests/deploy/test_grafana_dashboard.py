"""deploy/grafana-dashboard.json asks only for metrics the scheduler exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from common.identity import Role
from scheduler.operations.metrics import Metrics
from tests.contract.test_job_store_contract import full_record

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
    text = metrics.exposition().decode()
    return {sample.name for family in text_string_to_metric_families(text)
            for sample in family.samples}


def test_every_metric_the_dashboard_uses_is_exported() -> None:
    assert _used() - _exported() == set()


def test_the_dashboard_shows_what_operators_asked_for() -> None:
    used = _used()
    for wanted in ("mqc3_queue_depth_jobs", "mqc3_job_queue_wait_seconds_bucket",
                   "mqc3_rpc_seconds_count", "mqc3_lease_takeovers_total",
                   "mqc3_replica_leading"):
        assert wanted in used


def test_the_check_tells_exported_names_from_made_up_ones() -> None:
    exported = _exported()
    assert {"mqc3_queue_depth_jobs", "mqc3_lease_takeovers_total"} <= exported
    assert "mqc3_lease_takeovers" not in exported  # a counter is exposed as ..._total

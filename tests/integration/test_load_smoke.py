"""The load generator and the memory measurement run end to end with tiny counts.

Not a timed test: it asserts that every phase ran and every job is accounted for, so
the benchmarks never rot. The figures themselves are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("submit", "assign_probe", "drain", "steady", "lifecycle", "status", "status_live",
          "status_finished", "status_crowd", "cleanup")
TINY = ["--duration-s", "0.5", "--clients", "2", "--nodes", "2", "--rate", "20", "--jobs", "40",
        "--live-jobs", "6", "--lifecycle-jobs", "6", "--budget-lives", "2", "--crowd-rate", "100",
        "--crowd-channels", "4",
        # One life at a time: lives at once may share the leader's batched transactions
        # (docs/replicas.md), which only lowers the count; the budget is one life's.
        "--lifecycle-concurrency", "1"]
# A job's life (benchmarks/lifecycle.py) as the scheduler alone makes it, in AWS mode:
# the submission's object and fenced record, the QUEUED→RUNNING written alone, the
# report's result check, record written alone and result tag (docs/replicas.md, "Fence");
# polls and the result read cost nothing.
ONE_LIFE = {"s3.PutObject": 1, "dynamodb.TransactWriteItems": 1, "dynamodb.UpdateItem": 2,
            "s3.HeadObject": 1, "s3.PutObjectTagging": 1}


def _run(script: str, *args: str, timeout_s: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout_s)


@pytest.mark.parametrize("mode", ["standalone", "aws"])
def test_the_load_generator_runs_every_phase_and_accounts_for_every_job(
        tmp_path: Path, mode: str) -> None:
    out = tmp_path / "load.json"
    done = _run("load.py", "--mode", mode, *TINY, "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(out.read_text())
    assert result["ok"] and result["problems"] == []
    assert result["run"]["mode"] == mode
    ceilings = {"unary_ceiling", "unary_ceiling_end", "store_submit"}
    if mode == "aws":
        ceilings |= {"store_assign", "store_floor"}
    assert set(result["ceilings"]) == ceilings
    assert set(PHASES) <= set(result["phases"])
    for name, phase in {**result["ceilings"], **result["phases"]}.items():
        assert phase["operations"] > 0, name
        assert phase["errors"] == {}, name
        assert phase["latency_ms"][phase["primary_latency"]]["count"] > 0, name
    accounting = result["accounting"]
    assert accounting["ok"]
    assert accounting["accepted"] == accounting["assigned_once"] == accounting["reported"] > 0
    assert accounting["assigned_more_than_once"] == 0
    assert accounting["never_assigned"] == 0
    assert accounting["program_mismatches"] == 0
    assert accounting["unknown_assigned"] == 0
    assert result["run"]["children_exit_codes"]["scheduler"] == 0
    dispatch = ({"dispatch p50 ms", "dispatch p99 ms"} if mode == "standalone"
                else {"dispatch p50 / store floor p50", "dispatch p99 ms"})
    assert {row["target"] for row in result["targets"]} >= dispatch
    assert all(row["measured"] is not None for row in result["targets"]
               if row["target"] in dispatch)
    _the_new_measures_are_there(result, mode)
    for kind in ("latency", "rate"):  # drawn by default, beside the JSON
        assert (tmp_path / f"load-{kind}.png").stat().st_size > 10_000


def _the_new_measures_are_there(result: dict[str, Any], mode: str) -> None:
    """CPU and RSS per phase, the lifecycle's CPU per job, the crowd's polls and dispatch,
    the plots, and in AWS mode the store requests of a job's life counted by moto."""
    for name, phase in result["phases"].items():
        scheduler = phase["processes"]["scheduler"]
        assert scheduler["cpu_s"] is not None and scheduler["cpu_s"] >= 0, name
        assert scheduler["rss_mb"] > 0, name
    lifecycle = result["lifecycle"]
    assert lifecycle["jobs"] == 6
    assert lifecycle["scheduler_cpu_ms_per_job"] > 0
    targets = {row["target"]: row for row in result["targets"]}
    per_life = targets["scheduler CPU ms per job's life"]
    assert per_life["measured"] == lifecycle["scheduler_cpu_ms_per_job"]
    assert per_life["met"] == (per_life["measured"] <= float(per_life["goal"].split()[-1]))
    crowd = result["phases"]["status_crowd"]
    assert crowd["polls_sent"] == crowd["operations"] == 50
    assert crowd["latency_ms"]["dispatch"]["count"] == crowd["dispatched"] > 0
    steps = lifecycle["store_requests_per_step"]
    assert steps["status_waiting"] == steps["status_done"] == steps["result"] == {}
    if mode == "standalone":  # counted by the scheduler's own /metrics
        assert lifecycle["store_requests_per_job"] is None
        assert steps["submit"] == {"payloads.create_with_input": 1.0}
        return
    assert "moto" in result["phases"]["lifecycle"]["processes"]
    per_job = lifecycle["store_requests_per_job"]
    assert per_job["by_operation"] == {op: float(n) for op, n in ONE_LIFE.items()}
    assert per_job["total"] == sum(ONE_LIFE.values())
    assert steps["submit"] == {"dynamodb.TransactWriteItems": 1.0, "s3.PutObject": 1.0}
    # The nodes' uploads reach moto too, through their presigned URLs: not the scheduler's.
    assert result["phases"]["lifecycle"]["store_requests"]["presigned"] == {"s3.PutObject": 6}


def test_the_memory_measurement_writes_a_sane_result(tmp_path: Path) -> None:
    out = tmp_path / "memory.json"
    done = _run("memory.py", "--jobs", "2000", "--out", str(out))
    assert done.returncode == 0, done.stdout + done.stderr
    result = json.loads(out.read_text())
    assert result["jobs"] == 2000
    # Each job holds at least its 1 KB program, and far less than 100 KB in all.
    assert 1024 < result["traced_bytes_per_job"] < 100_000
    assert result["object_bytes_per_job"]["program"] >= 1024
    assert 0 < result["rss_mb"]["before"] <= result["rss_mb"]["with_jobs"]

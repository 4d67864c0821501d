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
PHASES = ("submit", "assign_probe", "drain", "steady", "status", "status_live",
          "status_finished", "cleanup")
TINY = ["--duration-s", "0.5", "--clients", "2", "--nodes", "2", "--rate", "20", "--jobs", "40",
        "--live-jobs", "6"]


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
        ceilings |= {"store_assign"}
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
    assert {row["target"] for row in result["targets"]} >= {"dispatch p50 ms", "dispatch p99 ms"}


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

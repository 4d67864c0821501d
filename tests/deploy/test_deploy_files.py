"""The deployment files hold what operators rely on (no container engine runs here)."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scheduler.app import Scheduler
from tests.helpers import local_config

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DEFAULT_GRACE_S = 10


def test_the_systemd_unit_verifies(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    assert tool is not None, "systemd-analyze is needed to check the unit"
    unit = (DEPLOY / "mqc3-scheduler.service").read_text()
    # Point ExecStart at an interpreter that exists here; everything else as shipped.
    local = unit.replace("/opt/mqc3-scheduler/.venv/bin/python", sys.executable)
    path = tmp_path / "mqc3-scheduler.service"
    path.write_text(local)
    result = subprocess.run([tool, "verify", str(path)], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_the_unit_restarts_on_failure_and_outwaits_the_grace() -> None:
    unit = (DEPLOY / "mqc3-scheduler.service").read_text()
    assert "Restart=on-failure" in unit
    assert "KillSignal=SIGTERM" in unit
    assert "EnvironmentFile=" in unit
    stop_s = int(re.search(r"TimeoutStopSec=(\d+)", unit).group(1))  # type: ignore[union-attr]
    assert stop_s > DEFAULT_GRACE_S


def test_the_image_runs_as_a_user_and_checks_grpc_health() -> None:
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK .*\n?.*deploy/healthcheck.py", dockerfile, re.MULTILINE)
    assert "pipenv sync" in dockerfile  # the locked set, as everywhere else


def test_the_compose_file_runs_aws_mode_against_localstack() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"localstack", "tokens", "scheduler"} <= set(services)
    command = services["scheduler"]["command"]
    assert "--dev" in command
    assert command[command.index("--endpoint") + 1] == "http://localstack:4566"
    for flag in ("--job_bucket_name_key", "--job_table_name_key",
                 "--backend_status_parameter_name", "--address_to_token_database"):
        assert flag in command
    assert services["scheduler"]["depends_on"]["localstack"]["condition"] == "service_healthy"
    grace = services["scheduler"]["stop_grace_period"]
    assert int(grace.rstrip("s")) > DEFAULT_GRACE_S
    init = (DEPLOY / "localstack-init.sh").read_text()
    for name in ("status-index", "job_expiry", "/mqc3/backend_status"):
        assert name in init


async def test_the_health_probe_says_serving_then_fails_when_stopped(tmp_path: Path) -> None:
    scheduler = Scheduler(local_config(tmp_path / "data"))
    await scheduler.start()
    address = f"127.0.0.1:{scheduler.submission_port}"
    probe = [sys.executable, str(DEPLOY / "healthcheck.py"), address, "--timeout-s", "2"]
    try:
        serving = await _run(probe)
        assert serving.returncode == 0, serving.stderr
        assert "SERVING" in serving.stdout
    finally:
        await scheduler.stop(grace_s=0)
    stopped = await _run(probe)
    assert stopped.returncode == 1


async def _run(command: list[str]) -> subprocess.CompletedProcess[str]:
    import asyncio

    return await asyncio.to_thread(subprocess.run, command, capture_output=True, text=True,
                                   timeout=30)


@pytest.mark.parametrize("name", ["healthcheck.py"])
def test_deploy_scripts_are_executable(name: str) -> None:
    assert (DEPLOY / name).stat().st_mode & 0o111

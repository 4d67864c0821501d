"""The deployment files hold what operators rely on (no container engine runs here)."""

from __future__ import annotations

import fnmatch
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scheduler.wiring.app import Scheduler
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
    assert int(re.search(r"LimitNOFILE=(\d+)", unit).group(1)) >= 65536  # type: ignore[union-attr]
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


def test_the_compose_file_runs_two_replicas_against_localstack_behind_one_address() -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    assert {"localstack", "tokens", "scheduler-a", "scheduler-b", "balancer"} <= set(services)
    a, b = services["scheduler-a"], services["scheduler-b"]
    assert a["command"] == b["command"] and a["build"] == b["build"]  # the same replica twice
    for name, replica in (("scheduler-a", a), ("scheduler-b", b)):
        assert replica["environment"]["SCHEDULER_ADVERTISE_HOST"] == name
        assert "ports" not in replica  # reached through the balancer only
    assert services["balancer"]["ports"] == ["127.0.0.1:8081:8081", "127.0.0.1:8082:8082"]
    balancer = (DEPLOY / "nginx-grpc.conf").read_text()
    for port in ("8081", "8082"):
        assert f"scheduler-a:{port}" in balancer and f"scheduler-b:{port}" in balancer
    assert balancer.count("grpc_pass grpc://") == 2
    command = a["command"]
    assert "--dev" in command
    assert command[command.index("--endpoint") + 1] == "http://localstack:4566"
    for flag in ("--job_bucket_name_key", "--job_table_name_key",
                 "--backend_status_parameter_name", "--address_to_token_database"):
        assert flag in command
    assert a["depends_on"]["localstack"]["condition"] == "service_healthy"
    assert a["ulimits"]["nofile"] >= 65536
    grace = b["stop_grace_period"]
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


# --- what goes into the image ------------------------------------------------------------------
def _ignored(relative: str, patterns: list[str]) -> bool:
    """Whether .dockerignore's patterns (the subset of its syntax we use) exclude a path."""
    parts = relative.split("/")
    for pattern in patterns:
        anywhere = pattern.startswith("**/")
        bare = pattern.removeprefix("**/")
        candidates = parts if anywhere else parts[:1]
        if any(fnmatch.fnmatch(part, bare) for part in candidates):
            return True
        if fnmatch.fnmatch(relative, bare):
            return True
    return False


def image_files(context: Path) -> set[str]:
    """The files the Dockerfile's COPY lines take from ``context``, after .dockerignore."""
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    files: set[str] = set()
    for line in re.findall(r"^COPY\s+(.+)$", dockerfile, re.MULTILINE):
        sources = [w for w in line.split() if not w.startswith("--")][:-1]
        for source in sources:
            path = context / source
            found = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
            files |= {str(p.relative_to(context)) for p in found
                      if not _ignored(str(p.relative_to(context)), patterns)}
    return files


def test_the_image_holds_no_secret_no_state_and_no_virtualenv(tmp_path: Path) -> None:
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                             check=True).stdout.split()
    for name in tracked:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ROOT / name, tmp_path / name)
    # What an operator's working copy holds beside the code.
    planted = ["mqc3-data/url-signing.key", "mqc3-data/tokens.sqlite3", ".venv/bin/python",
               "scheduler/__pycache__/app.cpython-311.pyc", "deploy/server.key", ".env",
               "job_manager/jobs.sqlite3-wal"]
    for name in planted:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("secret")
    files = image_files(tmp_path)
    assert "scheduler.py" in files and "scheduler/wiring/app.py" in files
    assert "message_manager/messages.toml" in files and "deploy/healthcheck.py" in files
    assert "backend_manager/default_backends.toml" in files  # the package's default table
    # Every package the service imports (docs/design.md, "Where things live").
    for package in ("scheduler", "job_manager", "backend_manager", "message_manager",
                    "token_database", "leadership", "common", "pb"):
        assert f"{package}/__init__.py" in files, package
    assert not set(planted) & files
    assert not [f for f in files if f.startswith(("tests/", ".git", "benchmarks/"))]

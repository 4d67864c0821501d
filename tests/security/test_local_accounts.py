"""Other accounts on the same machine are strangers (issue 26, points 3 and 4).

- Standalone, the execution port takes only nodes that present the data directory's
  node.secret (unless the operator opts out); a second, unprivileged account can neither
  read it nor take a job or report one without it.
- A job handed to a named node takes its reports, URL renewals and beats from that name
  only: leaving the name out does not pass.
- A data directory, or a file in it, that another account owns or may write, or that is a
  symbolic link, stops the start with one line naming it; ``tokens create`` makes the
  directory 0700 and the token database 0600 from the first command.

The tests that need a second account run as root (as CI does) and make one
(``mqc3-stranger``); a process drops to it before it acts.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import grpc
import pytest

from pb.mqc3_cloud.scheduler.v1 import execution_pb2, execution_pb2_grpc, submission_pb2_grpc
from pb.mqc3_scheduler.extension.v1 import nodes_pb2, nodes_pb2_grpc
from scheduler.wiring.app import Scheduler
from scheduler.wiring.standalone import node_secret_path
from tests.helpers import (
    TEST_BACKENDS_TOML,
    Clients,
    local_config,
    standalone_token,
    submit_request,
)
from tests.integration.processes import ROOT, Ports, create_token, scheduler_process

STRANGER = "mqc3-stranger"
START_TIMEOUT_S = 30  # a refusal comes within a second or two
ASSIGN = execution_pb2.AssignNextJobRequest(backend="emulator")


def _report(job_id: str) -> execution_pb2.ReportExecutionResultRequest:
    return execution_pb2.ReportExecutionResultRequest(
        job_id=job_id, status=execution_pb2.EXECUTION_STATUS_SUCCESS)


# --- a second account, and a place it can reach -----------------------------------------

@pytest.fixture(scope="session")
def stranger() -> pwd.struct_passwd:
    """An unprivileged account of this machine, made when missing (needs root)."""
    try:
        return pwd.getpwnam(STRANGER)
    except KeyError:
        pass
    if os.geteuid() != 0:
        pytest.skip(f"needs root to make the account {STRANGER} (CI runs as root)")
    subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                    STRANGER], check=True, capture_output=True, timeout=30)
    return pwd.getpwnam(STRANGER)


@pytest.fixture
def shared() -> Iterator[Path]:
    """A folder every account may enter (0755), unlike pytest's own (0700): what guards a
    data directory made here is its own modes alone."""
    path = Path(tempfile.mkdtemp(prefix="mqc3-local-accounts-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# The stranger: started as root so it can load its modules (the interpreter may live where
# the stranger cannot read), it drops to the stranger's account before it touches anything.
STRANGER_SCRIPT = """
import json, os, sys
import grpc
import grpc._channel  # insecure_channel imports it at its first call: load it while root
from pb.mqc3_cloud.scheduler.v1 import execution_pb2 as pb, execution_pb2_grpc
uid, gid, address, secret_path, job_id = int(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:]
os.setgroups([]); os.setgid(gid); os.setuid(uid)
seen = {"uid": os.getuid(), "euid": os.geteuid()}
try:
    with open(secret_path) as f:
        seen["secret"] = f.read()
except PermissionError:
    seen["secret"] = None
with grpc.insecure_channel(address) as channel:
    stub = execution_pb2_grpc.ExecutionServiceStub(channel)
    taken = stub.AssignNextJob(pb.AssignNextJobRequest(backend="emulator"), timeout=10)
    seen["assign"] = [taken.error.code, taken.job_id, taken.job.program.ByteSize()]
    forged = stub.ReportExecutionResult(pb.ReportExecutionResultRequest(
        job_id=job_id, status=pb.EXECUTION_STATUS_SUCCESS),
        metadata=(("authorization", "Bearer a-guess"),), timeout=10)
    seen["report"] = forged.error.code
print(json.dumps(seen))
"""


def _as_stranger(account: pwd.struct_passwd, *args: str) -> dict[str, object]:
    done = subprocess.run([sys.executable, "-c", STRANGER_SCRIPT, str(account.pw_uid),
                           str(account.pw_gid), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    seen: dict[str, object] = json.loads(done.stdout)
    return seen


def test_another_account_can_neither_read_the_node_credential_nor_act_as_a_node(
        stranger: pwd.struct_passwd, shared: Path) -> None:
    data_dir = shared / "data"
    token = create_token(data_dir, "alice", "developer")
    with scheduler_process(data_dir, shared / "scheduler.log", open_nodes=False) as scheduler, \
            grpc.insecure_channel(scheduler.submission_address) as users, \
            grpc.insecure_channel(scheduler.execution_address) as nodes:
        submitted = submission_pb2_grpc.SubmissionServiceStub(users).SubmitJob(
            submit_request(token, payload=b"a private circuit"), timeout=10)
        assert submitted.error.code == "", submitted.error
        seen = _as_stranger(stranger, scheduler.execution_address,
                            str(node_secret_path(data_dir)), submitted.job_id)
        assert seen["uid"] == seen["euid"] == stranger.pw_uid
        assert seen["secret"] is None  # the credential is the operator's alone
        assert seen["assign"] == ["UNAUTHENTICATED", "", 0]  # no job, no program
        assert seen["report"] == "UNAUTHENTICATED"
        # The operator's own node, with the credential, gets the job untouched.
        secret = node_secret_path(data_dir).read_text().strip()
        taken = execution_pb2_grpc.ExecutionServiceStub(nodes).AssignNextJob(
            ASSIGN, metadata=(("authorization", f"Bearer {secret}"),), timeout=10)
        assert (taken.error.code, taken.job_id) == ("", submitted.job_id)
        assert taken.job.program.circuit == b"a private circuit"
    assert stat.S_IMODE(node_secret_path(data_dir).stat().st_mode) == 0o600


# --- the node credential over real gRPC -------------------------------------------------

@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[tuple[Scheduler, Clients, str]]:
    """A standalone scheduler whose nodes must present node.secret, and alice's token."""
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    scheduler = Scheduler(local_config(data_dir, open_nodes=False))
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    try:
        yield scheduler, clients, standalone_token(data_dir, "alice", "developer")
    finally:
        await clients.close()
        await scheduler.stop(grace_s=0)


async def test_a_node_without_the_credential_is_refused_and_with_it_served(
        guarded: tuple[Scheduler, Clients, str]) -> None:
    scheduler, clients, alice = guarded
    submitted = await clients.submission.SubmitJob(submit_request(alice))
    beats = nodes_pb2_grpc.NodeServiceStub(clients._channels[1])
    for sent in ((), (("authorization", "Bearer not-the-secret"),)):
        refused = await clients.execution.AssignNextJob(ASSIGN, metadata=sent, timeout=10)
        assert (refused.error.code, refused.job_id) == ("UNAUTHENTICATED", "")
        assert "node.secret" in refused.error.description
        report = await clients.execution.ReportExecutionResult(_report(submitted.job_id),
                                                               metadata=sent, timeout=10)
        beat = await beats.Heartbeat(nodes_pb2.HeartbeatRequest(job_id=submitted.job_id),
                                     metadata=sent, timeout=10)
        assert report.error.code == beat.error.code == "UNAUTHENTICATED"
    assert scheduler.config.local is not None
    secret = node_secret_path(scheduler.config.local.data_dir).read_text().strip()
    taken = await clients.execution.AssignNextJob(
        ASSIGN, metadata=(("authorization", f"Bearer {secret}"),), timeout=10)
    assert (taken.error.code, taken.job_id) == ("", submitted.job_id)


async def test_the_operator_may_open_the_port_and_is_warned(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data_dir = tmp_path / "data"
    scheduler = Scheduler(local_config(data_dir))  # --insecure-execution
    await scheduler.start()
    try:
        clients = Clients(scheduler.submission_port, scheduler.execution_port)
        assert (await clients.assign()).error.code == ""
        await clients.close()
    finally:
        await scheduler.stop(grace_s=0)
    assert not node_secret_path(data_dir).exists()
    assert any("takes nodes with no credential" in r.getMessage() for r in caplog.records
               if r.levelname == "WARNING")


# --- a job handed to a named node --------------------------------------------------------

LAB_1 = (("x-mqc3-node-id", "lab-1"),)


async def test_a_job_taken_by_a_named_node_refuses_a_caller_that_names_none(
        tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
    scheduler = Scheduler(local_config(data_dir))
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    try:
        alice = standalone_token(data_dir, "alice", "developer")
        job_id = (await clients.submission.SubmitJob(submit_request(alice))).job_id
        taken = await clients.execution.AssignNextJob(ASSIGN, metadata=LAB_1, timeout=10)
        assert taken.job_id == job_id
        beats = nodes_pb2_grpc.NodeServiceStub(clients._channels[1])
        calls = (
            clients.execution.ReportExecutionResult(_report(job_id), timeout=10),
            clients.execution.RefreshUploadUrl(
                execution_pb2.RefreshUploadUrlRequest(job_id=job_id), timeout=10),
            beats.Heartbeat(nodes_pb2.HeartbeatRequest(job_id=job_id), timeout=10),
        )
        for call in calls:
            answer = await call
            assert answer.error.code == "FAILED_PRECONDITION", answer
            assert "another node" in answer.error.description
        renewed = await clients.execution.RefreshUploadUrl(
            execution_pb2.RefreshUploadUrlRequest(job_id=job_id), metadata=LAB_1, timeout=10)
        assert renewed.error.code == ""
    finally:
        await clients.close()
        await scheduler.stop(grace_s=0)


# --- a data directory someone else prepared ------------------------------------------------

def _start(data_dir: Path, log_path: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    """``scheduler.py --local`` on free ports, expected to stop at start."""
    ports = Ports.free()
    return subprocess.run(
        [sys.executable, str(ROOT / "scheduler.py"), "--local", "--data-dir", str(data_dir),
         "--host", "127.0.0.1", "--port-for-submission", str(ports.submission),
         "--port-for-execution", str(ports.execution),
         "--port-for-token-database", str(ports.token_database),
         "--http-port", str(ports.http), "--metrics-port", str(ports.metrics), *flags],
        cwd=ROOT, capture_output=True, text=True, timeout=START_TIMEOUT_S)


def _refused_in_one_line(done: subprocess.CompletedProcess[str], path: Path, why: str) -> None:
    assert done.returncode != 0, done.stderr
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "cannot start" in lines[0] and f"{path}:" in lines[0] and why in lines[0], lines


def _listing(data_dir: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(data_dir)): (p.lstat().st_mode, p.lstat().st_uid)
            for p in data_dir.rglob("*")}


def _group_writable(data_dir: Path) -> None:
    data_dir.chmod(0o770)


def _world_writable_payloads(data_dir: Path) -> None:
    (data_dir / "payloads").mkdir()
    (data_dir / "payloads").chmod(0o777)


def _readable_secret(data_dir: Path) -> None:
    (data_dir / "node.secret").write_text("x" * 43)
    (data_dir / "node.secret").chmod(0o644)


def _link(name: str) -> Callable[[Path], None]:
    def plant(data_dir: Path) -> None:
        (data_dir / name).symlink_to(data_dir.parent / f"{name}-target")
    return plant


PLANTED: dict[str, tuple[Callable[[Path], None], str, str]] = {
    # case: (how the directory is spoilt, the path named, the words that say why)
    "group-writable directory": (_group_writable, "", "may write"),
    "world-writable payloads": (_world_writable_payloads, "payloads", "may write"),
    "backends.toml a link": (_link("backends.toml"), "backends.toml", "symbolic link"),
    "url-signing.key a link": (_link("url-signing.key"), "url-signing.key", "symbolic link"),
    "a secret others may read": (_readable_secret, "node.secret", "readable by group or others"),
}


@pytest.mark.parametrize("case", sorted(PLANTED))
def test_a_spoilt_data_directory_stops_the_start_in_one_line_and_changes_nothing(
        case: str, shared: Path) -> None:
    data_dir = shared / "data"
    data_dir.mkdir(mode=0o700)
    spoil, name, why = PLANTED[case]
    spoil(data_dir)
    before = _listing(data_dir)
    done = _start(data_dir, shared / "scheduler.log")
    _refused_in_one_line(done, data_dir / name if name else data_dir, why)
    assert _listing(data_dir) == before
    assert not (shared / f"{name}-target").exists()  # nothing made through a link


@pytest.mark.parametrize("planted", ["", "token-database.secret", "url-signing.key"])
def test_a_directory_or_secret_another_account_owns_stops_the_start(
        planted: str, stranger: pwd.struct_passwd, shared: Path) -> None:
    data_dir = shared / "data"
    data_dir.mkdir(mode=0o700)
    path = data_dir / planted if planted else data_dir
    if planted:
        path.write_text("a planted secret " * 4)
        path.chmod(0o600)
    os.chown(path, stranger.pw_uid, stranger.pw_gid)
    before = _listing(data_dir)
    done = _start(data_dir, shared / "scheduler.log")
    _refused_in_one_line(done, path, f"another account (uid {stranger.pw_uid})")
    assert _listing(data_dir) == before


def test_tokens_create_makes_a_private_directory_whatever_the_umask(tmp_path: Path) -> None:
    data_dir = tmp_path / "fresh"
    made = subprocess.run(
        [sys.executable, str(ROOT / "scheduler.py"), "tokens", "--data-dir", str(data_dir),
         "create", "--name", "alice", "--role", "developer"],
        cwd=ROOT, capture_output=True, text=True, timeout=30, preexec_fn=lambda: os.umask(0))
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    for path in data_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path


def test_tokens_create_refuses_a_spoilt_directory_in_one_line(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    data_dir.chmod(0o777)
    done = subprocess.run(
        [sys.executable, str(ROOT / "scheduler.py"), "tokens", "--data-dir", str(data_dir),
         "create", "--name", "alice", "--role", "developer"],
        cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert done.stdout == "" and done.stderr.count("\n") == 1, done.stderr
    assert f"{data_dir}:" in done.stderr and "may write" in done.stderr
    assert list(data_dir.iterdir()) == []

"""Fixtures shared by every test folder."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio

from common import audit
from emulators.server import EmulatorServer
from scheduler.wiring.app import Scheduler
from tests.helpers import (
    TEST_BACKENDS_TOML,
    AwsNames,
    Clients,
    TokenDatabase,
    aws_config,
    create_aws_resources,
    local_config,
    standalone_token,
)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """One moto server on loopback for the whole run (HTTP, so presigned URLs work), without
    moto's whole-table copy per transaction action (docs/emulators.md)."""
    server = EmulatorServer().start()
    yield server.endpoint
    server.stop()


@pytest.fixture(scope="session")
def plain_moto_endpoint() -> Iterator[str]:
    """moto as it comes, for the store contracts that must hold on both."""
    server = EmulatorServer(plain_moto=True).start()
    yield server.endpoint
    server.stop()


@pytest.fixture
def aws_names(moto_endpoint: str) -> AwsNames:
    """Fresh AWS resources for one test."""
    return create_aws_resources(moto_endpoint, uuid.uuid4().hex[:12])


@pytest.fixture
def audit_log(tmp_path: Path) -> Iterator[Path]:
    """This process's audit stream (common/audit.py), sent to a file for the test."""
    path = tmp_path / "audit.jsonl"
    audit.configure_audit(path)
    yield path
    audit.configure_audit(None)


@pytest.fixture
async def token_database(tmp_path: Path) -> AsyncIterator[TokenDatabase]:
    """A standalone TokenDatabaseService for AWS-mode schedulers."""
    database = TokenDatabase(tmp_path / "tokens.sqlite3")
    await database.start()
    yield database
    await database.stop()


@pytest.fixture(params=["standalone", "aws"])
def mode(request: pytest.FixtureRequest) -> str:
    """Run a test once per mode."""
    return str(request.param)


class Running:
    """A started scheduler with clients and a way to mint tokens."""

    def __init__(
        self,
        scheduler: Scheduler,
        clients: Clients,
        tokens: TokenDatabase | None,
        data_dir: Path | None,
    ) -> None:
        self.scheduler = scheduler
        self.clients = clients
        self._tokens = tokens
        self.data_dir = data_dir

    @property
    def token_database(self) -> TokenDatabase | None:
        """AWS mode: the TokenDatabaseService the scheduler asks (standalone: None)."""
        return self._tokens

    def token(self, name: str = "alice", role: str = "developer") -> str:
        if self._tokens is not None:
            return self._tokens.token(name, role)
        assert self.data_dir is not None
        return standalone_token(self.data_dir, name, role)


@contextlib.asynccontextmanager
async def scheduler_in(mode: str, tmp_path: Path, request: pytest.FixtureRequest,
                       token_database: TokenDatabase, env: dict[str, str] | None = None,
                       *flags: str) -> AsyncIterator[Running]:
    """A started scheduler in ``mode`` on loopback, with the test backends, and its clients."""
    names: AwsNames | None = None
    if mode != "standalone":
        names = request.getfixturevalue("aws_names")
    async with _started(mode, tmp_path, names, token_database, env, *flags) as started:
        yield started


@contextlib.asynccontextmanager
async def _started(mode: str, directory: Path, names: AwsNames | None,
                   token_database: TokenDatabase, env: dict[str, str] | None,
                   *flags: str) -> AsyncIterator[Running]:
    tokens: TokenDatabase | None = None
    data_dir: Path | None = None
    if mode == "standalone":
        data_dir = directory / "data"
        data_dir.mkdir(exist_ok=True)
        (data_dir / "backends.toml").write_text(TEST_BACKENDS_TOML)
        config = local_config(data_dir, *flags, env=env)
    else:
        assert names is not None
        tokens = token_database
        config = aws_config(names, tokens.address, *flags, env=env)
    scheduler = Scheduler(config)
    await scheduler.start()
    clients = Clients(scheduler.submission_port, scheduler.execution_port)
    try:
        yield Running(scheduler, clients, tokens, data_dir)
    finally:
        await clients.close()
        await scheduler.stop(grace_s=0)


@pytest.fixture
async def running(mode: str, tmp_path: Path, request: pytest.FixtureRequest,
                  token_database: TokenDatabase) -> AsyncIterator[Running]:
    """A scheduler in each mode, on loopback, with the test backends."""
    async with scheduler_in(mode, tmp_path, request, token_database) as started:
        yield started


# --- one scheduler per mode for a whole module ------------------------------------------------
# Starting a scheduler costs more than most calls a test makes. Tests whose calls change
# nothing another test reads (refusals, reads of what does not exist, jobs read back only
# with tokens of their own) may share one: they take ``shared`` instead of ``running`` and
# are marked SHARED, so that they run in the module's event loop, where that scheduler
# serves. Each uses tokens of its own (listings, quotas and call budgets are per token) and
# checks what its own calls changed (a count before and after), never that the scheduler
# is empty. A test that books a backend or reads every user's jobs keeps a scheduler of its
# own, and so does one that takes a job from a queue, unless the module's shared tests all
# leave that queue empty (tests/security/test_ownership.py).
SHARED = pytest.mark.asyncio(loop_scope="module")


@pytest_asyncio.fixture(scope="module", loop_scope="module", params=["standalone", "aws"])
async def shared(request: pytest.FixtureRequest,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Running]:
    """A scheduler in each mode shared by a module's SHARED tests."""
    mode = str(request.param)
    directory = tmp_path_factory.mktemp(f"shared-{mode}")
    tokens = TokenDatabase(directory / "tokens.sqlite3")
    await tokens.start()
    try:
        names = None
        if mode != "standalone":
            names = create_aws_resources(request.getfixturevalue("moto_endpoint"),
                                         uuid.uuid4().hex[:12])
        async with _started(mode, directory, names, tokens, None) as started:
            yield started
    finally:
        await tokens.stop()

"""One typed configuration, built from the command line and the environment, checked once.

Flags and variables keep the names and defaults of the service this one replaces;
new settings follow its ``SCHEDULER_*`` style.
"""

from __future__ import annotations

import argparse
import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Mapping, Sequence, TypedDict, TypeVar

from common.audit import DESTINATION_VARIABLE as AUDIT_LOG_VARIABLE
from common.identity import Role
from job_manager.budgets import BudgetRules, parse_budget_rules
from job_manager.limits import Limits, RoleLimits
from job_manager.queue import SchedulingPolicy
from job_manager.sessions import SessionLimits
from job_manager.stores.dynamodb_job_store import STATUS_INDEX
from scheduler.access.admission import (
    LEADER_WAIT_MAX_BYTES,
    LEADER_WAIT_MAX_CALLS,
    CallLimits,
    TokenShare,
)
from scheduler.operations.housekeeping import Retention

MB = 1024 * 1024
T = TypeVar("T")
N = TypeVar("N", bound=float)


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it."""


@dataclass(frozen=True)
class TlsConfig:
    """A port's certificate and key (PEM), and for mTLS the CA that signs client certificates."""

    cert_chain: bytes = field(repr=False)
    private_key: bytes = field(repr=False)
    client_ca: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class AwsConfig:
    """Production: DynamoDB, S3 and SSM."""

    region: str
    job_bucket_name_key: str
    job_table_name_key: str
    backend_status_parameter_name: str
    status_index: str = STATUS_INDEX  # the jobs table's GSI on ``status``
    access_key_id: str | None = None
    secret_access_key: str | None = field(default=None, repr=False)
    endpoint: str | None = None  # only with --dev (LocalStack, moto)
    s3_endpoint: str | None = None  # only with --dev
    execution_secret_parameter: str | None = None  # SSM parameter with the nodes' secret


@dataclass(frozen=True)
class LocalConfig:
    """Standalone: everything under one data directory."""

    data_dir: Path
    token_database_port: int  # the embedded token database listens here
    http_port: int  # signed upload/download URLs are served here
    public_url: str | None  # how nodes and users reach the HTTP port; None: http://host:port
    # Nodes present node.secret from the data directory, for want of another credential
    # (a shared secret, mTLS) or the operator's --insecure-execution: other local accounts
    # reach the port on loopback too (docs/nodes.md).
    node_secret: bool = True


@dataclass(frozen=True)
class ReplicaConfig:
    """AWS mode's replicas (docs/replicas.md): the lease, and how long a call waits for a leader."""

    lease_duration_s: float = 6.0  # a lease not renewed for this long may be taken
    lease_renew_s: float = 1.5  # how often the leader renews it (and followers read it)
    leader_wait_s: float = 30.0  # how long a call waits for a leader, within its deadline
    leader_wait_max_calls: int = LEADER_WAIT_MAX_CALLS  # calls that may wait for one at once
    leader_wait_max_bytes: int = LEADER_WAIT_MAX_BYTES  # and the bytes of their requests
    advertise_host: str = ""  # how the other replicas reach this one; "" for the host name


@dataclass(frozen=True)
class NodeConfig:
    """What the scheduler watches of its nodes (docs/nodes.md)."""

    quiet_after_s: float = 300.0  # a backend no node asked for work this long is quiet
    heartbeat_timeout_s: float = 30.0  # a beating job is lost after this long without a beat


@dataclass(frozen=True)
class Config:
    """Everything the scheduler needs to start."""

    host: str
    submission_port: int
    execution_port: int
    submission_host: str  # an address given with the port (--port-for-submission [::]:8082)
    execution_host: str  # wins over --host for that port
    token_database_address: str
    submission_max_concurrent_rpcs: int
    execution_max_concurrent_rpcs: int
    # Calls that wait for a slot past those (docs/errors.md, "Calls in progress").
    submission_max_waiting_rpcs: int
    execution_max_waiting_rpcs: int
    submission_max_message_bytes: int
    execution_max_message_bytes: int
    limits: Limits
    policy: SchedulingPolicy
    max_assign_wait_s: float
    report_grace_s: float
    idempotency_window_s: float
    max_watches_per_token: int  # open WatchJob streams per token (the extension)
    max_requeues: int  # a lost node's job queued again at most this often; 0: never
    session_limits: Mapping[Role, SessionLimits]
    budgets: BudgetRules
    unify_backends: bool
    backend_reload_interval_s: float
    token_cache_ttl_s: float
    token_cache_miss_ttl_s: float
    token_cache_max_entries: int
    shutdown_grace_s: float
    metrics_port: int
    log_level: str
    log_format: str
    store_unhealthy_after_s: float
    audit_log: Path | None = None  # the audit stream's file (docs/audit.md); None: stderr
    http_header_timeout_s: float = 10.0
    # One address's connections on each HTTP port; None: half the port's cap (http_guard.py)
    http_max_connections_per_address: int | None = None
    max_result_bytes: int = 1024 * MB
    retention: Retention = field(default_factory=Retention)
    submission_tls: TlsConfig | None = None
    execution_tls: TlsConfig | None = None
    execution_secret: str | None = field(default=None, repr=False)
    replicas: ReplicaConfig = field(default_factory=ReplicaConfig)
    nodes: NodeConfig = field(default_factory=NodeConfig)
    calls: CallLimits = field(default_factory=CallLimits)  # each token's share (issue 19)
    aws: AwsConfig | None = None
    local: LocalConfig | None = None

    @property
    def mode(self) -> str:
        """ "standalone" or "aws"."""
        return "standalone" if self.local is not None else "aws"


@dataclass(frozen=True)
class ListenAddress:
    """A port to listen on, and the address to listen at when the flag named one."""

    host: str | None
    port: int


def listen_address(text: str) -> ListenAddress:
    """``8082``, ``0.0.0.0:8082``, ``[::]:8082`` or ``127.0.0.1:8082``: the original's forms."""
    host, colon, port_text = text.strip().rpartition(":")
    if not colon:
        host = ""
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isascii() or not port_text.isdecimal():
        raise ValueError(text)
    if colon and not host:
        raise ValueError(text)
    return ListenAddress(host or None, int(port_text))


listen_address.__name__ = "port or host:port"  # how argparse names it in an error


def _parser(env: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="scheduler.py",
        description="MQC3 job scheduler. `scheduler.py tokens --help` manages standalone tokens. "
        "AWS_REGION, JOB_BUCKET_NAME_KEY, DYNAMODB_JOB_TABLE_NAME_KEY, "
        "BACKEND_STATUS_PARAMETER_NAME and DYNAMODB_JOB_TABLE_GSI_NAME give the defaults of "
        "their flags, as for the service this one replaces.",
    )
    # In the order --help lists them.
    _add_service_ports(p)
    _add_aws_flags(p, env)
    _add_queue_flags(p)
    _add_mode_flags(p)
    _add_observability_flags(p)
    _add_credential_flags(p)
    _add_host_flag(p)
    return p


def _add_service_ports(p: argparse.ArgumentParser) -> None:
    """Where the two services listen, and where AWS mode's token database answers."""
    p.add_argument(
        "--port-for-submission",
        type=listen_address,
        default=ListenAddress(None, 8082),
        help="port (or host:port, [::]:port) of SubmissionService, for users (default 8082)",
    )
    p.add_argument(
        "--port-for-execution",
        type=listen_address,
        default=ListenAddress(None, 8081),
        help="port (or host:port) of ExecutionService, for hardware nodes (default 8081)",
    )
    p.add_argument(
        "-t",
        "-at",
        "--address_to_token_database",
        default="localhost:8084",
        help="host:port of TokenDatabaseService (AWS mode; default localhost:8084)",
    )


def _add_aws_flags(p: argparse.ArgumentParser, env: Mapping[str, str]) -> None:
    """AWS mode: credentials, region, the SSM parameters naming its resources, endpoints."""
    p.add_argument("-k", "--aws_access_key_id", default=None, help="AWS access key id")
    p.add_argument("-s", "--aws_secret_access_key", default=None, help="AWS secret access key")
    p.add_argument("--region", default=env.get("AWS_REGION") or "ap-northeast-1",
                   help="AWS region (default $AWS_REGION, else ap-northeast-1)")
    p.add_argument(
        "--job_bucket_name_key", default=env.get("JOB_BUCKET_NAME_KEY") or None,
        help="SSM parameter holding the job bucket's name (default $JOB_BUCKET_NAME_KEY)",
    )
    p.add_argument(
        "--job_table_name_key", default=env.get("DYNAMODB_JOB_TABLE_NAME_KEY") or None,
        help="SSM parameter holding the job table's name (default $DYNAMODB_JOB_TABLE_NAME_KEY)",
    )
    p.add_argument(
        "--backend_status_parameter_name",
        default=env.get("BACKEND_STATUS_PARAMETER_NAME") or None,
        help="SSM parameter holding the backend status TOML "
        "(default $BACKEND_STATUS_PARAMETER_NAME)",
    )
    p.add_argument(
        "--job_table_gsi_name",
        default=env.get("DYNAMODB_JOB_TABLE_GSI_NAME") or STATUS_INDEX,
        help=f"the jobs table's index on status (default $DYNAMODB_JOB_TABLE_GSI_NAME, "
        f"else {STATUS_INDEX})",
    )
    p.add_argument("--endpoint", default=None, help="AWS endpoint URL (needs --dev)")
    p.add_argument("--s3_endpoint", default=None, help="S3 endpoint URL (needs --dev)")


def _add_queue_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--unify-backends",
        "--unify_backends",
        "--unify-backend",
        dest="unify_backends",
        action="store_true",
        help="one queue for every backend",
    )


def _add_mode_flags(p: argparse.ArgumentParser) -> None:
    """AWS mode against emulators, or standalone and its data directory and ports."""
    p.add_argument("--dev", action="store_true", help="use AWS emulators (LocalStack, moto)")
    p.add_argument(
        "--local",
        action="store_true",
        help="standalone mode: SQLite, local files, embedded token database",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=Path("mqc3-data"),
        help="standalone mode's data directory (default ./mqc3-data)",
    )
    p.add_argument(
        "--port-for-token-database",
        type=int,
        default=8084,
        help="standalone: port of the embedded token database (default 8084)",
    )
    p.add_argument(
        "--http-port",
        type=int,
        default=8083,
        help="standalone: port of the signed-URL HTTP endpoint (default 8083)",
    )
    p.add_argument(
        "--public-url",
        default=None,
        help="standalone: base URL nodes and users reach the HTTP port at "
        "(default http://<host>:<http-port>)",
    )


def _add_observability_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--metrics-port", type=int, default=8085,
                   help="HTTP port of /metrics and /healthz (default 8085)")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="log lines as text or as one JSON object each (default text)")


def _add_credential_flags(p: argparse.ArgumentParser) -> None:
    """TLS on each port, and what the execution port asks of nodes."""
    p.add_argument("--tls-cert", type=Path, help="PEM certificate chain of the submission port")
    p.add_argument("--tls-key", type=Path, help="PEM private key of the submission port")
    p.add_argument("--execution-tls-cert", type=Path,
                   help="PEM certificate chain of the execution port")
    p.add_argument("--execution-tls-key", type=Path, help="PEM private key of the execution port")
    p.add_argument("--execution-client-ca", type=Path,
                   help="PEM CA bundle: the execution port then requires client certificates")
    p.add_argument("--insecure-execution", action="store_true",
                   help="let the execution port take nodes with no credential, beyond "
                        "loopback or (standalone) from any local account: anyone who reaches "
                        "it takes every user's program")
    p.add_argument("--execution-secret-parameter", default=None,
                   help="AWS mode: SSM parameter holding the nodes' shared secret "
                        "(else SCHEDULER_EXECUTION_SECRET)")


def _add_host_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--host",
        default=None,
        help="address to listen on (default 127.0.0.1 standalone, 0.0.0.0 AWS)",
    )


def _env(
    env: Mapping[str, str],
    name: str,
    parse: Callable[[str], T],
    default: T,
    check: Callable[[T], bool] = lambda _: True,
    rule: str = "",
) -> T:
    text = env.get(name)
    if text is None or text == "":
        return default
    try:
        value = parse(text)
    except ValueError:
        raise ConfigError(f"{name}={text!r} is not a valid {parse.__name__}") from None
    if not check(value):
        raise ConfigError(f"{name}={text!r}: {rule}")
    return value


def _positive_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _env(env, name, int, default, lambda v: v > 0, "must be a positive integer")


def _non_negative_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _env(env, name, int, default, lambda v: v >= 0, "must be zero or more")


def _positive_float(env: Mapping[str, str], name: str, default: float) -> float:
    return _env(env, name, float, default, lambda v: v > 0, "must be a positive number")


def _positive_int_or_unset(env: Mapping[str, str], name: str) -> int | None:
    """A positive integer, or None when unset (the setting's default is computed later)."""
    return _positive_int(env, name, 1) if env.get(name) else None


def _optional_cap(env: Mapping[str, str], name: str, parse: Callable[[str], N]) -> N | None:
    """A cap an operator may set; unset (the default) means none, as in the original."""
    if not env.get(name):
        return None
    return _env(env, name, parse, parse("1"), lambda v: v > 0,
                "must be a positive number (leave it unset for no cap)")


_ROLE_DEFAULTS = {
    # role: (concurrent jobs, job bytes), the original's defaults
    Role.ADMIN: (1000, 10 * MB),
    Role.DEVELOPER: (10, 10 * MB),
    Role.GUEST: (5, 1 * MB),
}


def _limits(env: Mapping[str, str], max_assignment_bytes: int) -> Limits:
    by_role = {}
    for role, (jobs, job_bytes) in _ROLE_DEFAULTS.items():
        suffix = role.value.upper()
        by_role[role] = RoleLimits(
            max_concurrent_jobs=_positive_int(env, f"SCHEDULER_MAX_CONCURRENT_JOBS_{suffix}", jobs),
            max_job_bytes=_positive_int(env, f"SCHEDULER_MAX_JOB_BYTES_{suffix}", job_bytes),
            max_timeout_s=_optional_cap(env, f"SCHEDULER_MAX_TIMEOUT_S_{suffix}", float),
        )
    return Limits(
        by_role=by_role,
        max_queue_bytes=_positive_int(env, "SCHEDULER_MAX_QUEUE_BYTES", 100 * MB),
        max_queue_share=_env(env, "SCHEDULER_MAX_QUEUE_SHARE", float, 0.5,
                             lambda v: 0 < v <= 1, "must be more than 0 and at most 1"),
        max_shots=_optional_cap(env, "SCHEDULER_MAX_SHOTS", int),
        max_assignment_bytes=max_assignment_bytes,
    )


def _policy(env: Mapping[str, str]) -> SchedulingPolicy:
    defaults = SchedulingPolicy()  # the policy's own defaults are the settings' defaults
    return SchedulingPolicy(
        max_wait_s=_positive_float(env, "SCHEDULER_MAX_WAIT_S", defaults.max_wait_s),
        timeout_weight=_env(env, "SCHEDULER_TIMEOUT_WEIGHT", float, defaults.timeout_weight,
                            lambda v: v >= 0, "must be zero or more"),
        role_weights={
            role: _positive_float(env, f"SCHEDULER_ROLE_WEIGHT_{role.value.upper()}", weight)
            for role, weight in defaults.role_weights.items()
        },
    )


def _session_limits(env: Mapping[str, str]) -> dict[Role, SessionLimits]:
    """What each role's sessions may ask for (docs/reservations.md, "Sessions")."""
    defaults = SessionLimits()
    default_length = _positive_float(env, "SCHEDULER_SESSION_DEFAULT_LENGTH_S",
                                     defaults.default_length_s)
    default_idle = _positive_float(env, "SCHEDULER_SESSION_DEFAULT_IDLE_S",
                                   defaults.default_idle_timeout_s)
    limits = {}
    for role in Role:
        suffix = role.value.upper()
        longest = _positive_float(env, f"SCHEDULER_SESSION_MAX_LENGTH_S_{suffix}",
                                  defaults.max_length_s)
        idlest = _positive_float(env, f"SCHEDULER_SESSION_MAX_IDLE_S_{suffix}",
                                 defaults.max_idle_timeout_s)
        limits[role] = SessionLimits(longest, idlest, min(default_length, longest),
                                     min(default_idle, idlest))
    return limits


def _budgets(env: Mapping[str, str]) -> BudgetRules:
    """The QPU-time budgets SCHEDULER_BUDGETS_FILE gives (none when unset)."""
    name = env.get("SCHEDULER_BUDGETS_FILE")
    if not name:
        return BudgetRules()
    text = _read("SCHEDULER_BUDGETS_FILE", Path(name)).decode("utf-8", errors="replace")
    try:
        return parse_budget_rules(text)
    except ValueError as exc:
        raise ConfigError(f"SCHEDULER_BUDGETS_FILE {name}: {exc}") from None


def _read(flag: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{flag} {path}: cannot be read ({exc.strerror})") from None


def _tls(cert_flag: str, cert: Path | None, key_flag: str, key: Path | None,
         ca: Path | None = None) -> TlsConfig | None:
    if cert is None and key is None:
        if ca is not None:
            raise ConfigError("--execution-client-ca needs --execution-tls-cert and "
                              "--execution-tls-key")
        return None
    if cert is None or key is None:
        raise ConfigError(f"{cert_flag} and {key_flag} go together")
    return TlsConfig(cert_chain=_read(cert_flag, cert), private_key=_read(key_flag, key),
                     client_ca=_read("--execution-client-ca", ca) if ca else None)


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


def _log_level(env: Mapping[str, str]) -> str:
    level = (env.get("SCHEDULER_LOG_LEVEL") or "INFO").upper()
    if level not in LOG_LEVELS:
        raise ConfigError(f"SCHEDULER_LOG_LEVEL={level!r}: use one of {', '.join(LOG_LEVELS)}")
    return level


# --- the audit stream (common/audit.py, docs/audit.md) ---------------------------------

def audit_log(env: Mapping[str, str]) -> Path | None:
    """The file SCHEDULER_AUDIT_LOG names for the audit stream, or None for stderr."""
    text = env.get(AUDIT_LOG_VARIABLE, "").strip()
    if not text:
        return None
    path = Path(text)
    if not path.parent.is_dir():
        raise ConfigError(f"{AUDIT_LOG_VARIABLE}={text!r}: its directory does not exist")
    if path.is_dir():
        raise ConfigError(f"{AUDIT_LOG_VARIABLE}={text!r}: is a directory; name a file")
    return path


def _check_port(flag: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ConfigError(f"{flag} {port}: a port is between 0 and 65535")


def load_config(argv: Sequence[str], env: Mapping[str, str], *, serving: bool = True) -> Config:
    """Parse flags and environment into a Config; ConfigError names the first bad setting.

    ``serving`` False: for commands that open no port (``migrate``), whose listeners
    are not checked.
    """
    # Settings are checked in this order: the first bad one is the one named.
    args = _parser(env).parse_args(list(argv))
    execution_max_message_bytes = _positive_int(env, "SCHEDULER_EXECUTION_MAX_MESSAGE_LENGTH",
                                                10 * MB)
    _check_ports(args)
    host = args.host or ("127.0.0.1" if args.local else "0.0.0.0")
    aws, local, token_database_address = _mode(args, env)
    if serving:
        _check_node_credential(args, env, args.port_for_execution.host or host)
    limits = _limits(env, execution_max_message_bytes)
    return Config(
        **_listeners(args, host),
        token_database_address=token_database_address,
        **_calls_in_progress(env, execution_max_message_bytes),
        **_jobs(args, env, limits),
        **_token_cache(env),
        **_operation(args, env),
        **_http_side(env),
        **_credentials(args, env),
        replicas=_replicas(env, limits.max_queue_bytes),
        nodes=_nodes(env),
        calls=_call_limits(env),
        aws=aws,
        local=local,
    )


def _check_ports(args: argparse.Namespace) -> None:
    for flag, port in (
        ("--port-for-submission", args.port_for_submission.port),
        ("--port-for-execution", args.port_for_execution.port),
        ("--port-for-token-database", args.port_for_token_database),
        ("--http-port", args.http_port),
        ("--metrics-port", args.metrics_port),
    ):
        _check_port(flag, port)


def _mode(args: argparse.Namespace, env: Mapping[str, str],
          ) -> tuple[AwsConfig | None, LocalConfig | None, str]:
    """AWS mode's settings or standalone's, and where the token database answers then."""
    if args.local and args.execution_secret_parameter:
        raise ConfigError("--execution-secret-parameter is for AWS mode; standalone reads "
                          "SCHEDULER_EXECUTION_SECRET")
    if args.local:
        return None, _local_config(args, env), f"127.0.0.1:{args.port_for_token_database}"
    return _aws_config(args), None, args.address_to_token_database


def _local_config(args: argparse.Namespace, env: Mapping[str, str]) -> LocalConfig:
    public_url = args.public_url
    if public_url is not None and not public_url.startswith(("http://", "https://")):
        raise ConfigError(f"--public-url {public_url!r} must start with http:// or https://")
    return LocalConfig(
        data_dir=args.data_dir,
        token_database_port=args.port_for_token_database,
        http_port=args.http_port,
        public_url=public_url,
        node_secret=not (args.insecure_execution or env.get("SCHEDULER_EXECUTION_SECRET")
                         or args.execution_client_ca),
    )


# --- the sections of a Config, each a part of its fields -----------------------------------

class _Listeners(TypedDict):
    host: str
    submission_port: int
    execution_port: int
    submission_host: str
    execution_host: str


def _listeners(args: argparse.Namespace, host: str) -> _Listeners:
    return _Listeners(
        host=host,
        submission_port=args.port_for_submission.port,
        execution_port=args.port_for_execution.port,
        submission_host=args.port_for_submission.host or host,
        execution_host=args.port_for_execution.host or host,
    )


class _CallsInProgress(TypedDict):
    submission_max_concurrent_rpcs: int
    execution_max_concurrent_rpcs: int
    submission_max_waiting_rpcs: int
    execution_max_waiting_rpcs: int
    submission_max_message_bytes: int
    execution_max_message_bytes: int


def _calls_in_progress(env: Mapping[str, str],
                       execution_max_message_bytes: int) -> _CallsInProgress:
    return _CallsInProgress(
        submission_max_concurrent_rpcs=_positive_int(env, "SCHEDULER_SUBMISSION_MAX_WORKERS", 100),
        execution_max_concurrent_rpcs=_positive_int(env, "SCHEDULER_EXECUTION_MAX_WORKERS", 10),
        submission_max_waiting_rpcs=_non_negative_int(env, "SCHEDULER_SUBMISSION_MAX_WAITING",
                                                      1000),
        execution_max_waiting_rpcs=_non_negative_int(env, "SCHEDULER_EXECUTION_MAX_WAITING", 100),
        submission_max_message_bytes=_positive_int(
            env, "SCHEDULER_SUBMISSION_MAX_MESSAGE_LENGTH", 10 * MB
        ),
        execution_max_message_bytes=execution_max_message_bytes,
    )


class _Jobs(TypedDict):
    limits: Limits
    policy: SchedulingPolicy
    session_limits: Mapping[Role, SessionLimits]
    budgets: BudgetRules
    max_assign_wait_s: float
    report_grace_s: float
    idempotency_window_s: float
    max_watches_per_token: int
    max_requeues: int
    unify_backends: bool
    backend_reload_interval_s: float


def _jobs(args: argparse.Namespace, env: Mapping[str, str], limits: Limits) -> _Jobs:
    return _Jobs(
        limits=limits,
        policy=_policy(env),
        session_limits=_session_limits(env),
        budgets=_budgets(env),
        max_assign_wait_s=_positive_int(env, "SCHEDULER_MAX_ASSIGN_WAIT_MS", 20_000) / 1000,
        report_grace_s=_positive_float(env, "SCHEDULER_REPORT_GRACE_S", 60.0),
        idempotency_window_s=_positive_float(env, "SCHEDULER_IDEMPOTENCY_WINDOW_S", 86_400.0),
        max_watches_per_token=_positive_int(env, "SCHEDULER_MAX_WATCHES_PER_TOKEN", 100),
        max_requeues=_env(env, "SCHEDULER_MAX_REQUEUES", int, 0, lambda v: 0 <= v <= 100,
                          "must be an integer from 0 (off) to 100"),
        unify_backends=args.unify_backends,
        backend_reload_interval_s=_positive_float(env, "SCHEDULER_BACKEND_RELOAD_S", 10.0),
    )


class _TokenCache(TypedDict):
    token_cache_ttl_s: float
    token_cache_miss_ttl_s: float
    token_cache_max_entries: int


def _token_cache(env: Mapping[str, str]) -> _TokenCache:
    return _TokenCache(
        token_cache_ttl_s=_positive_float(env, "SCHEDULER_TOKEN_CACHE_TTL_S", 60.0),
        token_cache_miss_ttl_s=_positive_float(env, "SCHEDULER_TOKEN_CACHE_MISS_TTL_S", 5.0),
        token_cache_max_entries=_positive_int(env, "SCHEDULER_TOKEN_CACHE_MAX_ENTRIES", 10_000),
    )


class _Operation(TypedDict):
    shutdown_grace_s: float
    metrics_port: int
    log_level: str
    log_format: str
    store_unhealthy_after_s: float
    audit_log: Path | None


def _operation(args: argparse.Namespace, env: Mapping[str, str]) -> _Operation:
    """Stopping, metrics, logs, health and the audit stream."""
    return _Operation(
        shutdown_grace_s=_positive_float(env, "SCHEDULER_SHUTDOWN_GRACE_S", 10.0),
        metrics_port=args.metrics_port,
        log_level=_log_level(env),
        log_format=args.log_format,
        store_unhealthy_after_s=_positive_float(env, "SCHEDULER_STORE_UNHEALTHY_AFTER_S", 30.0),
        audit_log=audit_log(env),
    )


class _HttpSide(TypedDict):
    http_header_timeout_s: float
    http_max_connections_per_address: int | None
    max_result_bytes: int
    retention: Retention


def _http_side(env: Mapping[str, str]) -> _HttpSide:
    """The HTTP side's connections, and (standalone) the results it takes and keeps."""
    return _HttpSide(
        http_header_timeout_s=_positive_float(env, "SCHEDULER_HTTP_HEADER_TIMEOUT_S", 10.0),
        http_max_connections_per_address=_positive_int_or_unset(
            env, "SCHEDULER_HTTP_MAX_CONNECTIONS_PER_ADDRESS"),
        max_result_bytes=_positive_int(env, "SCHEDULER_MAX_RESULT_BYTES", 1024 * MB),
        retention=Retention(
            finished_jobs=timedelta(days=_positive_float(env, "SCHEDULER_RETENTION_DAYS", 30.0)),
            min_free_bytes=_positive_int(env, "SCHEDULER_MIN_FREE_BYTES", 1024 * MB)),
    )


class _Credentials(TypedDict):
    submission_tls: TlsConfig | None
    execution_tls: TlsConfig | None
    execution_secret: str | None


def _credentials(args: argparse.Namespace, env: Mapping[str, str]) -> _Credentials:
    return _Credentials(
        submission_tls=_tls("--tls-cert", args.tls_cert, "--tls-key", args.tls_key),
        execution_tls=_tls("--execution-tls-cert", args.execution_tls_cert,
                           "--execution-tls-key", args.execution_tls_key,
                           args.execution_client_ca),
        execution_secret=env.get("SCHEDULER_EXECUTION_SECRET") or None,
    )


def _replicas(env: Mapping[str, str], max_queue_bytes: int) -> ReplicaConfig:
    duration_s = _positive_float(env, "SCHEDULER_LEASE_DURATION_S", 6.0)
    renew_s = _positive_float(env, "SCHEDULER_LEASE_RENEW_S", 1.5)
    if renew_s * 2 > duration_s:
        raise ConfigError(f"SCHEDULER_LEASE_RENEW_S ({renew_s:g}) must be at most half of "
                          f"SCHEDULER_LEASE_DURATION_S ({duration_s:g}): a leader must be able "
                          f"to miss one renewal without losing the lease")
    return ReplicaConfig(
        lease_duration_s=duration_s,
        lease_renew_s=renew_s,
        leader_wait_s=_positive_float(env, "SCHEDULER_LEADER_WAIT_S", 30.0),
        leader_wait_max_calls=_positive_int(env, "SCHEDULER_LEADER_WAIT_MAX_CALLS",
                                            LEADER_WAIT_MAX_CALLS),
        # Unset: twice the queue budget (scheduler/access/admission.py says why).
        leader_wait_max_bytes=_positive_int(env, "SCHEDULER_LEADER_WAIT_MAX_BYTES",
                                            2 * max_queue_bytes),
        advertise_host=env.get("SCHEDULER_ADVERTISE_HOST", "").strip(),
    )


def _nodes(env: Mapping[str, str]) -> NodeConfig:
    return NodeConfig(
        quiet_after_s=_positive_float(env, "SCHEDULER_NODE_QUIET_S", 300.0),
        heartbeat_timeout_s=_positive_float(env, "SCHEDULER_HEARTBEAT_TIMEOUT_S", 30.0),
    )


# --- each token's share of the calls (scheduler/access/admission.py, docs/errors.md) -------------


def _call_limits(env: Mapping[str, str]) -> CallLimits:
    defaults = CallLimits()
    by_role = {}
    for role, share in defaults.by_role.items():
        suffix = role.value.upper()
        by_role[role] = TokenShare(
            max_in_flight=_positive_int(env, f"SCHEDULER_MAX_CALLS_IN_FLIGHT_PER_TOKEN_{suffix}",
                                        share.max_in_flight),
            rate_per_s=_positive_float(env, f"SCHEDULER_MAX_CALL_RATE_PER_TOKEN_{suffix}",
                                       share.rate_per_s))
    return CallLimits(
        by_role=by_role,
        token_lookup_rate_per_s=_positive_float(env, "SCHEDULER_NEW_TOKEN_LOOKUP_RATE",
                                                defaults.token_lookup_rate_per_s),
        unknown_tokens_kept=_positive_int(env, "SCHEDULER_TOKEN_CACHE_MISS_MAX_ENTRIES",
                                          defaults.unknown_tokens_kept),
        job_miss_rate_per_token_s=_positive_float(env, "SCHEDULER_JOB_MISS_RATE_PER_TOKEN",
                                                  defaults.job_miss_rate_per_token_s),
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_node_credential(args: argparse.Namespace, env: Mapping[str, str], host: str) -> None:
    """The execution port hands every user's program to whoever calls it: beyond loopback
    it needs a node credential, unless the operator says otherwise."""
    credential = (env.get("SCHEDULER_EXECUTION_SECRET") or args.execution_secret_parameter
                  or args.execution_client_ca)
    if credential or args.insecure_execution or _is_loopback(host):
        return
    raise ConfigError(
        f"--port-for-execution listens on {host}, beyond loopback, with no node credential: "
        f"anyone who reaches it takes every user's program; set SCHEDULER_EXECUTION_SECRET "
        f"(or --execution-secret-parameter, or --execution-client-ca for mTLS), or run with "
        f"--insecure-execution to accept that")


def _aws_config(args: argparse.Namespace) -> AwsConfig:
    for flag, value in (
        ("--job_bucket_name_key", args.job_bucket_name_key),
        ("--job_table_name_key", args.job_table_name_key),
        ("--backend_status_parameter_name", args.backend_status_parameter_name),
    ):
        if not value:
            raise ConfigError(f"{flag} is required in AWS mode (or run standalone with --local)")
    for flag, value in (("--endpoint", args.endpoint), ("--s3_endpoint", args.s3_endpoint)):
        if value and not args.dev:
            raise ConfigError(f"{flag} is for development against emulators: add --dev")
    if bool(args.aws_access_key_id) != bool(args.aws_secret_access_key):
        raise ConfigError("-k/--aws_access_key_id and -s/--aws_secret_access_key go together")
    return AwsConfig(
        region=args.region,
        job_bucket_name_key=args.job_bucket_name_key,
        job_table_name_key=args.job_table_name_key,
        backend_status_parameter_name=args.backend_status_parameter_name,
        status_index=args.job_table_gsi_name,
        access_key_id=args.aws_access_key_id,
        secret_access_key=args.aws_secret_access_key,
        endpoint=args.endpoint,
        s3_endpoint=args.s3_endpoint,
        execution_secret_parameter=args.execution_secret_parameter,
    )

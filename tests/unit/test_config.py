"""Flags and environment → one checked Config; every bad value named in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.identity import Role
from scheduler.wiring.config import MB, ConfigError, load_config

TABLE_FLAGS = ["--job_bucket_name_key", "/b", "--job_table_name_key", "/t",
               "--backend_status_parameter_name", "/s"]
AWS_FLAGS = [*TABLE_FLAGS, "--insecure-execution"]  # the node credential has its own tests


def test_defaults_are_those_of_the_original_service() -> None:
    config = load_config(AWS_FLAGS, {})
    assert (config.submission_port, config.execution_port) == (8082, 8081)
    assert config.token_database_address == "localhost:8084"
    assert config.submission_max_concurrent_rpcs == 100
    assert config.execution_max_concurrent_rpcs == 10
    # Past the workers, calls wait (as in the original's thread pools), within bounds.
    assert (config.submission_max_waiting_rpcs, config.execution_max_waiting_rpcs) == (1000, 100)
    assert config.submission_max_message_bytes == config.execution_max_message_bytes == 10 * MB
    assert config.limits.max_queue_bytes == 100 * MB
    jobs = {role: limits.max_concurrent_jobs for role, limits in config.limits.by_role.items()}
    assert jobs == {Role.ADMIN: 1000, Role.DEVELOPER: 10, Role.GUEST: 5}
    sizes = {role: limits.max_job_bytes for role, limits in config.limits.by_role.items()}
    assert sizes == {Role.ADMIN: 10 * MB, Role.DEVELOPER: 10 * MB, Role.GUEST: 1 * MB}
    # The original caps neither a job's timeout nor its shots: by default, neither do we.
    timeouts = {role: limits.max_timeout_s for role, limits in config.limits.by_role.items()}
    assert timeouts == {Role.ADMIN: None, Role.DEVELOPER: None, Role.GUEST: None}
    assert config.limits.max_shots is None
    assert config.policy.max_wait_s == 1800
    assert config.max_assign_wait_s == 20
    assert config.report_grace_s == 60
    assert config.mode == "aws" and config.host == "0.0.0.0"


def test_environment_overrides_the_defaults() -> None:
    env = {"SCHEDULER_MAX_CONCURRENT_JOBS_GUEST": "7", "SCHEDULER_MAX_QUEUE_BYTES": "1234",
           "SCHEDULER_ROLE_WEIGHT_ADMIN": "8", "SCHEDULER_MAX_ASSIGN_WAIT_MS": "500"}
    env |= {"SCHEDULER_MAX_TIMEOUT_S_DEVELOPER": "600", "SCHEDULER_MAX_SHOTS": "1000"}
    config = load_config(AWS_FLAGS, env)
    assert config.limits.by_role[Role.DEVELOPER].max_timeout_s == 600
    assert config.limits.by_role[Role.GUEST].max_timeout_s is None
    assert config.limits.max_shots == 1000
    assert config.limits.by_role[Role.GUEST].max_concurrent_jobs == 7
    assert config.limits.max_queue_bytes == 1234
    assert config.policy.role_weights[Role.ADMIN] == 8
    assert config.max_assign_wait_s == 0.5


def test_each_tokens_share_is_set_per_role_and_generous_by_default() -> None:
    default = load_config(AWS_FLAGS, {}).calls
    shares = {role: (share.max_in_flight, share.rate_per_s)
              for role, share in default.by_role.items()}
    assert shares == {Role.ADMIN: (50, 10000), Role.DEVELOPER: (20, 100), Role.GUEST: (10, 50)}
    env = {"SCHEDULER_MAX_CALLS_IN_FLIGHT_PER_TOKEN_GUEST": "3",
           "SCHEDULER_MAX_CALL_RATE_PER_TOKEN_DEVELOPER": "2.5",
           "SCHEDULER_NEW_TOKEN_LOOKUP_RATE": "7", "SCHEDULER_JOB_MISS_RATE_PER_TOKEN": "0.5",
           "SCHEDULER_TOKEN_CACHE_MISS_MAX_ENTRIES": "99"}
    calls = load_config(AWS_FLAGS, env).calls
    assert calls.by_role[Role.GUEST].max_in_flight == 3
    assert calls.by_role[Role.DEVELOPER].rate_per_s == 2.5
    assert calls.by_role[Role.ADMIN] == default.by_role[Role.ADMIN]
    assert (calls.token_lookup_rate_per_s, calls.job_miss_rate_per_token_s,
            calls.unknown_tokens_kept) == (7, 0.5, 99)


@pytest.mark.parametrize("spelling", ["--unify-backends", "--unify_backends", "--unify-backend"])
def test_every_spelling_of_unify_backends_is_accepted(spelling: str) -> None:
    assert load_config([*AWS_FLAGS, spelling], {}).unify_backends


def test_standalone_mode_listens_on_loopback_by_default(tmp_path: Path) -> None:
    config = load_config(["--local", "--data-dir", str(tmp_path)], {})
    assert config.mode == "standalone" and config.host == "127.0.0.1"
    assert config.local is not None and config.local.data_dir == tmp_path


@pytest.mark.parametrize(
    ("argv", "env", "named"),
    [
        ([], {}, "--job_bucket_name_key"),
        ([*AWS_FLAGS, "--endpoint", "http://x"], {}, "--dev"),
        ([*AWS_FLAGS, "-k", "key"], {}, "--aws_secret_access_key"),
        ([*AWS_FLAGS, "--port-for-submission", "70000"], {}, "--port-for-submission"),
        (AWS_FLAGS, {"SCHEDULER_MAX_QUEUE_BYTES": "lots"}, "SCHEDULER_MAX_QUEUE_BYTES"),
        (AWS_FLAGS, {"SCHEDULER_MAX_CONCURRENT_JOBS_GUEST": "0"},
         "SCHEDULER_MAX_CONCURRENT_JOBS_GUEST"),
        (AWS_FLAGS, {"SCHEDULER_TIMEOUT_WEIGHT": "-1"}, "SCHEDULER_TIMEOUT_WEIGHT"),
        (AWS_FLAGS, {"SCHEDULER_SUBMISSION_MAX_WAITING": "-1"}, "SCHEDULER_SUBMISSION_MAX_WAITING"),
        (AWS_FLAGS, {"SCHEDULER_EXECUTION_MAX_WAITING": "x"}, "SCHEDULER_EXECUTION_MAX_WAITING"),
        (AWS_FLAGS, {"SCHEDULER_MAX_SHOTS": "0"}, "SCHEDULER_MAX_SHOTS"),
        (AWS_FLAGS, {"SCHEDULER_HTTP_MAX_CONNECTIONS_PER_ADDRESS": "0"},
         "SCHEDULER_HTTP_MAX_CONNECTIONS_PER_ADDRESS"),
        (AWS_FLAGS, {"SCHEDULER_MAX_TIMEOUT_S_GUEST": "soon"}, "SCHEDULER_MAX_TIMEOUT_S_GUEST"),
        ([*AWS_FLAGS, "--tls-cert", "/nonexistent.crt"], {}, "--tls-key"),
        ([*AWS_FLAGS, "--tls-cert", "/nonexistent.crt", "--tls-key", "/nonexistent.key"], {},
         "--tls-cert"),
        ([*AWS_FLAGS, "--execution-client-ca", "/ca.crt"], {}, "--execution-client-ca"),
        (["--local", "--execution-secret-parameter", "/x"], {}, "--execution-secret-parameter"),
        (["--local", "--public-url", "ftp://x"], {}, "--public-url"),
        (AWS_FLAGS, {"SCHEDULER_LOG_LEVEL": "chatty"}, "SCHEDULER_LOG_LEVEL"),
        (AWS_FLAGS, {"SCHEDULER_AUDIT_LOG": "/nonexistent-dir/audit.jsonl"},
         "SCHEDULER_AUDIT_LOG"),
        (AWS_FLAGS, {"SCHEDULER_MAX_CALL_RATE_PER_TOKEN_GUEST": "0"},
         "SCHEDULER_MAX_CALL_RATE_PER_TOKEN_GUEST"),
        (AWS_FLAGS, {"SCHEDULER_NEW_TOKEN_LOOKUP_RATE": "many"}, "SCHEDULER_NEW_TOKEN_LOOKUP_RATE"),
    ],
)
def test_a_bad_setting_is_named(argv: list[str], env: dict[str, str], named: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(argv, env)
    message = str(info.value)
    assert named in message
    assert "\n" not in message


def test_a_config_never_shows_key_material(tmp_path: Path) -> None:
    (tmp_path / "c.pem").write_text("CERT-PEM")
    (tmp_path / "k.pem").write_text("SECRET-KEY-PEM")
    config = load_config([*AWS_FLAGS, "--tls-cert", str(tmp_path / "c.pem"),
                          "--tls-key", str(tmp_path / "k.pem")],
                         {"SCHEDULER_EXECUTION_SECRET": "node-secret"})
    shown = repr(config)
    assert "SECRET-KEY-PEM" not in shown and "node-secret" not in shown


def test_a_config_never_shows_the_aws_secret_key() -> None:
    config = load_config([*AWS_FLAGS, "-k", "AKIDEXAMPLE", "-s", "aws-secret-value"], {})
    assert config.aws is not None and config.aws.secret_access_key == "aws-secret-value"
    assert "aws-secret-value" not in repr(config)


# --- the original's command line and environment ---------------------------------------------
@pytest.mark.parametrize(("given", "host", "port"), [
    ("8082", "0.0.0.0", 8082),  # a bare port listens at --host
    ("[::]:8082", "::", 8082),  # the original's default form
    ("0.0.0.0:9082", "0.0.0.0", 9082),
    ("127.0.0.1:8082", "127.0.0.1", 8082),
    ("localhost:0", "localhost", 0),
])
def test_a_port_flag_takes_an_address_or_a_port(given: str, host: str, port: int) -> None:
    config = load_config([*AWS_FLAGS, "--port-for-submission", given,
                          "--port-for-execution", given], {})
    assert (config.submission_host, config.submission_port) == (host, port)
    assert (config.execution_host, config.execution_port) == (host, port)


@pytest.mark.parametrize("given", ["[::]:", ":8082", "host", "8082x", "-1", "[::]:80:80x"])
def test_a_port_flag_that_is_neither_is_refused_naming_it(
        given: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_config([*AWS_FLAGS, "--port-for-execution", given], {})
    assert "--port-for-execution" in capsys.readouterr().err


@pytest.mark.parametrize("spelling", ["-t", "-at", "--address_to_token_database"])
def test_every_spelling_of_the_token_database_address_is_accepted(spelling: str) -> None:
    assert load_config([*AWS_FLAGS, spelling, "tokens:9"], {}).token_database_address == "tokens:9"


ORIGINAL_ENV = {
    "AWS_REGION": "us-west-2",
    "JOB_BUCKET_NAME_KEY": "/env/bucket",
    "DYNAMODB_JOB_TABLE_NAME_KEY": "/env/table",
    "BACKEND_STATUS_PARAMETER_NAME": "/env/backends",
    "DYNAMODB_JOB_TABLE_GSI_NAME": "by-status",
}


def test_the_originals_environment_gives_the_flags_defaults() -> None:
    config = load_config(["--insecure-execution"], ORIGINAL_ENV)
    assert config.aws is not None
    assert (config.aws.region, config.aws.job_bucket_name_key, config.aws.job_table_name_key,
            config.aws.backend_status_parameter_name, config.aws.status_index) == (
        "us-west-2", "/env/bucket", "/env/table", "/env/backends", "by-status")


def test_flags_win_over_the_originals_environment() -> None:
    config = load_config([*AWS_FLAGS, "--region", "eu-west-1", "--job_table_gsi_name", "idx"],
                         ORIGINAL_ENV)
    assert config.aws is not None
    assert (config.aws.region, config.aws.job_bucket_name_key, config.aws.status_index) == (
        "eu-west-1", "/b", "idx")


def test_without_the_environment_the_status_index_is_the_originals() -> None:
    config = load_config(AWS_FLAGS, {})
    assert config.aws is not None and config.aws.status_index == "status-index"


# --- the execution port is closed by default beyond loopback ---------------------------------
@pytest.mark.parametrize("address", ["8081", "[::]:8081", "0.0.0.0:8081", "10.0.0.5:8081"])
def test_the_execution_port_beyond_loopback_needs_a_node_credential(address: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config([*TABLE_FLAGS, "--port-for-execution", address], {})
    message = str(refused.value)
    assert "SCHEDULER_EXECUTION_SECRET" in message and "--insecure-execution" in message
    assert "\n" not in message


@pytest.mark.parametrize(("extra", "env"), [
    (["--port-for-execution", "127.0.0.1:8081"], {}),
    (["--port-for-execution", "[::1]:8081"], {}),
    (["--host", "localhost"], {}),
    ([], {"SCHEDULER_EXECUTION_SECRET": "s3cret"}),
    (["--execution-secret-parameter", "/nodes/secret"], {}),
    (["--insecure-execution"], {}),
])
def test_loopback_a_credential_or_an_explicit_flag_opens_it(extra: list[str],
                                                          env: dict[str, str]) -> None:
    load_config([*TABLE_FLAGS, *extra], env)


def test_standalone_on_loopback_needs_nothing_and_beyond_it_a_credential(tmp_path: Path) -> None:
    load_config(["--local", "--data-dir", str(tmp_path)], {})
    with pytest.raises(ConfigError):
        load_config(["--local", "--data-dir", str(tmp_path), "--host", "0.0.0.0"], {})

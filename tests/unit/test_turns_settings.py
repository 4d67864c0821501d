"""The settings of bookings, sessions and budgets, checked at start: a budgets file that is
not what parse_budget_rules reads, or a session limit that is not a positive number, stops
the process with one line naming the setting (scheduler/wiring/config.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.identity import Role
from job_manager.budgets import Budget, BudgetRules, Period
from job_manager.sessions import SessionLimits
from scheduler.wiring.config import ConfigError, load_config

AWS_FLAGS = ["--job_bucket_name_key", "/b", "--job_table_name_key", "/t",
             "--backend_status_parameter_name", "/s", "--insecure-execution"]
BUDGETS = "SCHEDULER_BUDGETS_FILE"


def refusal(env: dict[str, str]) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(AWS_FLAGS, env)
    message = str(info.value)
    assert "\n" not in message, message
    return message


def budgets_file(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "budgets.toml"
    path.write_text(text)
    return {BUDGETS: str(path)}


@pytest.mark.parametrize(("text", "why"), [
    ('[roles.developer\nperiod = "day"', "not TOML"),
    ('[roles.wizard]\nperiod = "day"\nshots = 1', "[roles.wizard]: no such role"),
    ('[roles.guest]\nperiod = "day"\nqpu_seconds = -1', "qpu_seconds must be a number"),
    ('[roles.guest]\nperiod = "day"\nshots = -1', "shots must be a whole number"),
    ('[roles.guest]\nperiod = "day"\nqpu_seconds = -0.000001', "qpu_seconds must be"),
    ('[roles.guest]\nperiod = "day"\nshots = true', "shots must be a whole number"),
    ('[roles.guest]\nperiod = "day"\nqpu_seconds = false', "qpu_seconds must be a number"),
    ('[roles.guest]\nperiod = "day"\nqpu_seconds = nan', "qpu_seconds must be a number"),
    ('[roles.guest]\nperiod = "day"\nqpu_seconds = "600"', "qpu_seconds must be a number"),
    ('[roles.guest]\nperiod = "day"\nshots = 1.5', "shots must be a whole number"),
    ('[roles.guest]\nperiod = "week"\nshots = 1', 'period must be "day" or "month"'),
    ('[roles.guest]\nshots = 1', 'period must be "day" or "month"'),
    ('[roles.guest]\nperiod = "day"', "give qpu_seconds, shots or both"),
    ('[roles.guest]\nperiod = "day"\nshot = 1', "unknown keys ['shot']"),
    ('[groups.a]\nperiod = "day"\nshots = 1', "unknown tables ['groups']"),
    ('users = 5', "[users] must hold one table per name"),
    ('[users]\nalice = 5', "[users] must hold one table per name"),
    ('[users."alice"]\nperiod = "month"\nshots = -9223372036854775808',
     '[users."alice"]: shots must be a whole number'),
])
def test_a_budgets_file_that_is_wrong_stops_the_start_naming_the_setting(
        tmp_path: Path, text: str, why: str) -> None:
    message = refusal(budgets_file(tmp_path, text))
    assert message.startswith(f"{BUDGETS} {tmp_path / 'budgets.toml'}: ")
    assert why in message


def test_a_budgets_file_that_cannot_be_read_is_named(tmp_path: Path) -> None:
    message = refusal({BUDGETS: str(tmp_path / "missing.toml")})
    assert message.startswith(f"{BUDGETS} {tmp_path / 'missing.toml'}: cannot be read")


def test_a_budgets_file_that_is_not_utf8_is_named_not_crashed_on(tmp_path: Path) -> None:
    path = tmp_path / "budgets.toml"
    path.write_bytes(b'[roles.guest]\nperiod = "day"\nshots = 1\n# \xff\xfe\n[x\n')
    assert BUDGETS in refusal({BUDGETS: str(path)})


def test_budgets_at_their_extremes_are_taken_as_written(tmp_path: Path) -> None:
    env = budgets_file(tmp_path, (
        '[roles.guest]\nperiod = "day"\nshots = 0\nqpu_seconds = 0\n'
        '[roles.admin]\nperiod = "month"\nshots = 9223372036854775807\n'
        '[users."alice"]\nperiod = "month"\nqpu_seconds = 1e-9\n'
        '[users." spaced name "]\nperiod = "day"\nshots = 1\n'))
    rules = load_config(AWS_FLAGS, env).budgets
    assert rules == BudgetRules(
        {Role.GUEST: Budget(Period.DAY, 0.0, 0),
         Role.ADMIN: Budget(Period.MONTH, None, 9223372036854775807)},
        {"alice": Budget(Period.MONTH, 1e-9, None),
         " spaced name ": Budget(Period.DAY, None, 1)})


def test_no_budgets_file_no_budgets() -> None:
    assert not load_config(AWS_FLAGS, {}).budgets
    assert not load_config(AWS_FLAGS, {BUDGETS: ""}).budgets


@pytest.mark.parametrize("name", [
    "SCHEDULER_SESSION_DEFAULT_LENGTH_S", "SCHEDULER_SESSION_DEFAULT_IDLE_S",
    "SCHEDULER_SESSION_MAX_LENGTH_S_GUEST", "SCHEDULER_SESSION_MAX_IDLE_S_ADMIN",
    "SCHEDULER_SESSION_MAX_LENGTH_S_DEVELOPER",
])
@pytest.mark.parametrize("value", ["0", "-1", "soon", "nan", ""])
def test_a_session_limit_that_is_not_a_positive_number_is_named(name: str, value: str) -> None:
    if value == "":
        assert load_config(AWS_FLAGS, {name: value}).session_limits  # unset: the default
        return
    assert name in refusal({name: value})


def test_session_limits_per_role_and_defaults_within_them() -> None:
    limits = load_config(AWS_FLAGS, {
        "SCHEDULER_SESSION_DEFAULT_LENGTH_S": "7200", "SCHEDULER_SESSION_DEFAULT_IDLE_S": "30",
        "SCHEDULER_SESSION_MAX_LENGTH_S_GUEST": "600",
        "SCHEDULER_SESSION_MAX_IDLE_S_GUEST": "10"}).session_limits
    assert limits[Role.GUEST] == SessionLimits(600, 10, 600, 10)  # defaults cut to the limits
    assert limits[Role.DEVELOPER] == SessionLimits(8 * 3600, 600, 7200, 30)

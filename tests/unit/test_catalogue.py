"""The error catalogue: every key the code raises exists, and every entry renders."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from message_manager import SchedulerError, default_catalogue
from message_manager.catalogue import ALLOWED_CODES
from tools.generate_error_keys import render

ROOT = Path(__file__).resolve().parents[2]
RAISED = re.compile(r'SchedulerError\(\s*"([a-z_]+)"')


def _raised_keys() -> set[str]:
    keys: set[str] = set()
    for folder in ("job_manager", "scheduler", "backend_manager", "message_manager"):
        for path in (ROOT / folder).rglob("*.py"):
            keys.update(RAISED.findall(path.read_text()))
    return keys


def test_every_raised_key_is_in_the_catalogue() -> None:
    missing = _raised_keys() - default_catalogue().keys()
    assert not missing


def test_every_catalogue_entry_is_used() -> None:
    unused = default_catalogue().keys() - _raised_keys()
    assert not unused


@pytest.mark.parametrize("key", sorted(default_catalogue().keys()))
def test_every_entry_renders_with_its_fields(key: str) -> None:
    entry = default_catalogue().entry(key)
    assert entry.code in ALLOWED_CODES
    text = entry.render({name: f"<{name}>" for name in entry.fields})
    assert text and "{" not in text


def test_a_misspelt_key_fails_loudly() -> None:
    with pytest.raises(KeyError):
        SchedulerError("no_such_entry")  # type: ignore[arg-type]  # mypy refuses it too


def test_the_keys_mypy_checks_are_the_catalogues() -> None:
    assert (ROOT / "message_manager" / "keys.py").read_text() == render(), (
        "message_manager/keys.py is out of date: run `python tools/generate_error_keys.py`")


def test_a_missing_field_fails_loudly() -> None:
    with pytest.raises(KeyError):
        SchedulerError("job_not_found")


def test_every_reason_is_documented_under_its_code() -> None:
    rows = {line.split("|")[1].strip(): set(re.findall(r"`([a-z_]+)`", line))
            for line in (ROOT / "docs" / "errors.md").read_text().splitlines()
            if line.startswith("| ") and line.split("|")[1].strip() in ALLOWED_CODES}
    catalogue = default_catalogue()
    documented = {(code, key) for code, keys in rows.items() for key in keys}
    assert documented == {(catalogue.entry(key).code, key) for key in catalogue.keys()}

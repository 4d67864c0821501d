"""Facts written in two places agree: the README's settings and the configuration, the
jobs table of create_table and of the LocalStack script, the default backend table of a
standalone data directory and of LocalStack."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from backend_manager.status import DEFAULT_BACKENDS_TOML, parse_backend_table
from job_manager.stores.dynamodb_job_store import create_table
from scheduler.wiring.config import load_config

ROOT = Path(__file__).resolve().parents[2]
ROLE_SUFFIXES = ("_ADMIN", "_DEVELOPER", "_GUEST")


class Recording(Mapping[str, str]):
    """An empty environment that remembers every variable the configuration asks for."""

    def __init__(self) -> None:
        self.asked: set[str] = set()

    def __getitem__(self, name: str) -> str:
        self.asked.add(name)
        raise KeyError(name)

    def get(self, name: str, default: Any = None) -> Any:
        self.asked.add(name)
        return default

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _readme_section(title: str) -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index(f"## {title}")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def _documented_variables() -> set[str]:
    """SCHEDULER_* names of the README's table, `X_ADMIN` / `_DEVELOPER` / `_GUEST` expanded."""
    names: set[str] = set()
    for row in _readme_section("Environment variables").splitlines():
        if not row.startswith("| `SCHEDULER_"):
            continue
        cell = row.split("|")[1]
        first, *rest = re.findall(r"`([A-Z_]+)`", cell)
        names.add(first)
        stem = first.removesuffix("_ADMIN")
        names.update(stem + suffix for suffix in rest)
    return names


def test_every_setting_the_configuration_reads_is_in_the_readme_and_no_other() -> None:
    env = Recording()
    load_config(["--job_bucket_name_key", "/b", "--job_table_name_key", "/t",
                 "--backend_status_parameter_name", "/s", "--insecure-execution"], env)
    read = {name for name in env.asked if name.startswith("SCHEDULER_")}
    documented = _documented_variables()
    assert read - documented == set(), "read by scheduler/wiring/config.py, missing from the README"
    assert documented - read == set(), "in the README, read by nothing"


class RecordingClient:
    """Takes create_table's calls and keeps what the table is made of."""

    def __init__(self) -> None:
        self.table: dict[str, Any] = {}
        self.ttl: dict[str, Any] = {}

    def create_table(self, **table: Any) -> None:
        self.table = table

    def get_waiter(self, name: str) -> Any:
        return type("Waiter", (), {"wait": lambda self, **kwargs: None})()

    def update_time_to_live(self, **ttl: Any) -> None:
        self.ttl = ttl


def _script_table() -> dict[str, Any]:
    """The jobs table deploy/localstack-init.sh creates, from its AWS CLI arguments."""
    script = (ROOT / "deploy" / "localstack-init.sh").read_text().replace("\\\n", " ")
    create = next(line for line in script.splitlines() if "dynamodb create-table" in line)
    words = shlex.split(create)
    after = {words[i]: words[i + 1] for i in range(len(words) - 1) if words[i].startswith("--")}
    attributes = [dict(pair.split("=") for pair in word.split(","))
                  for word in words[words.index("--attribute-definitions") + 1:]
                  if word.startswith("AttributeName=") and "AttributeType" in word]
    key = dict(pair.split("=") for pair in after["--key-schema"].split(","))
    ttl_line = next(line for line in script.splitlines() if "update-time-to-live" in line)
    return {"attributes": attributes, "key": key,
            "indexes": json.loads(after["--global-secondary-indexes"]),
            "ttl": re.search(r"AttributeName=(\w+)", ttl_line).group(1)}  # type: ignore[union-attr]


def test_the_localstack_script_makes_the_table_create_table_makes() -> None:
    client = RecordingClient()
    create_table(client, "t")
    script = _script_table()
    assert script["attributes"] == client.table["AttributeDefinitions"]
    assert [script["key"]] == client.table["KeySchema"]
    assert script["indexes"] == client.table["GlobalSecondaryIndexes"]
    assert script["ttl"] == client.ttl["TimeToLiveSpecification"]["AttributeName"]


# A stand-in for LocalStack's AWS CLI: each SSM parameter the script puts is written to a
# file of its own in $RECORDED, named after the parameter.
AWSLOCAL = """#!/bin/bash
[ "$1 $2" = "ssm put-parameter" ] || exit 0
while [ $# -gt 0 ]; do
  case "$1" in --name) name=$2 ;; --value) value=$2 ;; esac
  shift
done
printf '%s' "$value" > "$RECORDED/${name//\\//_}"
"""


def test_the_localstack_script_puts_the_standalone_default_backend_table(
        tmp_path: Path) -> None:
    deploy = ROOT / "deploy"
    script = deploy / "localstack-init.sh"
    # The file the script reads unless told otherwise is the one compose.yaml mounts there...
    default = re.search(r"\$\{BACKENDS_TOML:-([^}]+)\}", script.read_text())
    assert default is not None, "the script reads no backend table file"
    compose = yaml.safe_load((deploy / "compose.yaml").read_text())
    mounts = {target: source for source, target, *_ in
              (volume.split(":") for volume in compose["services"]["localstack"]["volumes"])}
    mounted = (deploy / mounts[default.group(1)]).resolve()
    assert mounted == ROOT / "backend_manager" / "default_backends.toml"
    # ...and what it puts in SSM is that file: the table a standalone data directory gets.
    (tmp_path / "awslocal").write_text(AWSLOCAL)
    (tmp_path / "awslocal").chmod(0o755)
    recorded = tmp_path / "recorded"
    recorded.mkdir()
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}",
           "RECORDED": str(recorded), "BACKENDS_TOML": str(mounted)}
    subprocess.run(["bash", str(script)], env=env, check=True, timeout=30)
    put = (recorded / "_mqc3_backend_status").read_text()
    assert put == DEFAULT_BACKENDS_TOML.rstrip("\n")  # $(...) drops the last newline
    assert parse_backend_table(put) == parse_backend_table(DEFAULT_BACKENDS_TOML)

"""The DynamoDB contracts hold on moto as it comes and on the emulator's moto without its
whole-table copy (docs/emulators.md): every test that takes ``dynamodb_endpoint`` runs on
both."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["moto", "plain-moto"])
def dynamodb_endpoint(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue(
        "moto_endpoint" if request.param == "moto" else "plain_moto_endpoint"))


def endpoint_of(request: pytest.FixtureRequest) -> str:
    """For a store fixture parametrized by backend: "dynamodb" is the emulator's moto,
    "dynamodb-plain-moto" moto as it comes."""
    plain = str(request.param).endswith("plain-moto")
    return str(request.getfixturevalue("plain_moto_endpoint" if plain else "moto_endpoint"))

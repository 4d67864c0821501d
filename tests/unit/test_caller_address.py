"""What a budget per caller address is keyed by (scheduler/services/edge.py, caller_address)."""

from __future__ import annotations

from typing import Any

import pytest

from scheduler.services.edge import caller_address


class _Peer:
    def __init__(self, peer: str) -> None:
        self._peer = peer

    def peer(self) -> str:
        return self._peer


@pytest.mark.parametrize(("peer", "address"), [
    ("ipv4:127.0.0.1:52100", "127.0.0.1"),
    ("ipv4:10.1.2.3:1", "10.1.2.3"),
    # A host is given a whole /64: its addresses are one caller.
    ("ipv6:[2001:db8:1:2:aaaa::1]:443", "2001:db8:1:2::/64"),
    ("ipv6:[2001:db8:1:2:ffff::9]:80", "2001:db8:1:2::/64"),
    ("ipv6:[::1]:8082", "::/64"),
    # An IPv4 caller on a dual-stack port is its IPv4 address, not a /64 shared by all.
    ("ipv6:[::ffff:192.0.2.7]:5000", "192.0.2.7"),
    ("unix:/run/mqc3.sock", "unix:/run/mqc3.sock"),
    ("unix:/run/mqc3:1.sock", "unix:/run/mqc3:1.sock"),  # a colon in a path is no port
    ("", ""),
])
def test_a_caller_is_its_address_without_the_port(peer: str, address: str) -> None:
    context: Any = _Peer(peer)
    assert caller_address(context) == address

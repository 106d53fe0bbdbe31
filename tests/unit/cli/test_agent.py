"""HOST:PORT options (`agent --api/--dns`, `proxy --listen/--admin`): a malformed host is bad
input (exit 2, naming the option), not a failure to bind."""

from __future__ import annotations

import pytest

from dockmesh.cli.agent import parse_hostport
from dockmesh.errors import UsageError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8500", ("127.0.0.1", 8500)),
        ("[::1]:0", ("::1", 0)),
        ("::1:53", ("::1", 53)),
        ("localhost:1", ("localhost", 1)),
        ("my-host.lan:80", ("my-host.lan", 80)),
    ],
)
def test_addresses_and_names_are_taken(value: str, expected: tuple[str, int]) -> None:
    assert parse_hostport(value, "--api") == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("[::1:0", "unbalanced brackets"),
        ("::1]:0", "unbalanced brackets"),
        ("[127.0.0.1]:0", "brackets hold an IPv6 address"),
        ("999.1.1.1:0", "not an IP address or a host name"),
        ("10.2.3.4.5:0", "not an IP address or a host name"),
        ("a b:0", "not an IP address or a host name"),
    ],
)
def test_a_malformed_host_is_bad_input(value: str, reason: str) -> None:
    with pytest.raises(UsageError, match=reason) as e:
        parse_hostport(value, "--api")
    assert str(e.value).startswith(f"--api {value!r}")

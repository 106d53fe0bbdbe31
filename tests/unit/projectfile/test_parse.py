from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.projectfile.parse import PortMapping, parse_duration_ns, parse_port

UNITS = {"ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


@given(
    st.lists(st.tuples(st.integers(0, 999), st.sampled_from(list(UNITS))), min_size=1, max_size=4)
)
def test_duration_sums_its_parts(parts: list[tuple[int, str]]) -> None:
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration_ns(text) == sum(n * UNITS[u] for n, u in parts)


@pytest.mark.parametrize("bad", ["", "2", "s", "2x", "2s3", "-1s", "1 s"])
def test_bad_durations(bad: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration_ns(bad)


def test_numbers_are_seconds() -> None:
    assert parse_duration_ns(2) == 2 * 10**9
    assert parse_duration_ns("1.5s") == 1_500_000_000


ports = st.integers(1, 65535)
hosts = st.sampled_from([None, "127.0.0.1", "0.0.0.0", "::1"])


@given(ports, st.one_of(st.none(), ports), hosts, st.sampled_from(["tcp", "udp"]))
def test_port_round_trip(cport: int, hport: int | None, host: str | None, proto: str) -> None:
    h = "" if host is None else (f"[{host}]" if ":" in host else host)
    hp = "" if hport is None else str(hport)
    if host is not None:
        text = f"{h}:{hp}:{cport}"
    elif hport is not None:
        text = f"{hp}:{cport}"
    else:
        text = str(cport)
    text += f"/{proto}"
    assert parse_port(text) == PortMapping(cport, proto, host, hport)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        ("70000", "outside"),
        ("a:80", "not a port"),
        ("1:2:3:4", "expected"),
        ("80/icmp", "protocol"),
        ("nothost:80:80", "not an IP"),
    ],
)
def test_bad_ports(bad: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        parse_port(bad)

"""The observation routes' questions parsed from a client's raw query string
(dockmesh.api.observe_query): any bytes give a question or a 400 with one line, Docker's names
and ids pass unchanged, and the work asked for stays bounded."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import quote_from_bytes, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.api.errors import ApiError
from dockmesh.api.observe_query import (
    MAX_CONTAINERS,
    MAX_DOCTOR_TIMEOUT_S,
    MAX_PROBE_TIMEOUT_S,
    ProbeQuestion,
    container_name,
    parse_doctor,
    parse_flows,
    parse_probe,
    parse_stats,
    parse_timeout,
)

DOCKER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,254}")
names = st.from_regex(DOCKER_NAME, fullmatch=True)


def one_line_400(e: ApiError) -> None:
    assert e.status == 400
    assert e.reason and "\n" not in e.reason and "\r" not in e.reason
    assert len(e.reason) < 300


@given(st.binary(max_size=400))
def test_any_bytes_as_a_container_are_a_name_or_a_one_line_400(raw: bytes) -> None:
    try:
        name = container_name(raw)
    except ApiError as e:
        one_line_400(e)
        return
    assert DOCKER_NAME.fullmatch(name)
    assert raw.decode("ascii").removeprefix("/") == name


@given(names)
def test_docker_names_and_ids_pass_unchanged_through_the_query_string(name: str) -> None:
    q = parse_doctor(urlencode({"container": name}).encode())
    assert q.container == name and q.timeout_s == 1.0
    assert parse_doctor(urlencode({"container": "/" + name}).encode()).container == name
    assert parse_stats(urlencode([("container", name)] * 2).encode()).containers == (name,)


@given(st.binary(max_size=300))
def test_any_bytes_as_a_raw_query_string_are_a_question_or_a_one_line_400(raw: bytes) -> None:
    for parse in (parse_stats, parse_doctor, parse_flows, parse_probe):
        try:
            parse(raw)
        except ApiError as e:
            one_line_400(e)


@given(st.binary(min_size=1, max_size=60))
def test_percent_escaped_bytes_are_judged_as_the_bytes_they_stand_for(raw: bytes) -> None:
    query = b"container=" + quote_from_bytes(raw, safe="").encode()
    try:
        got = parse_doctor(query).container
    except ApiError as e:
        one_line_400(e)
        return
    assert got == raw.decode("ascii").removeprefix("/")


def test_names_that_are_not_dockers_are_refused_with_the_reason() -> None:
    for bad in (b"", b"a\nb", b"-x", b".x", b"a b", b"a/b", b"\xff", b"x" * 300, b"a;rm"):
        with pytest.raises(ApiError) as e:
            container_name(bad)
        one_line_400(e.value)
    with pytest.raises(ApiError, match="not a container name or id"):
        parse_doctor(b"container=a%0Ab")


def test_the_work_asked_for_is_bounded() -> None:
    many = "&".join(f"container=c{i}" for i in range(MAX_CONTAINERS + 1)).encode()
    with pytest.raises(ApiError, match=f"at most {MAX_CONTAINERS}"):
        parse_stats(many)
    assert len(parse_stats(many.rsplit(b"&", 1)[0]).containers) == MAX_CONTAINERS
    assert parse_timeout(b"2.5s") == 2.5 and parse_timeout(b"0.05") == 0.05
    for bad in (b"nan", b"inf", b"-1", b"0", b"6", b"1e9", b"x", b""):
        with pytest.raises(ApiError):
            parse_timeout(bad)
    assert parse_timeout(str(MAX_DOCTOR_TIMEOUT_S).encode()) == MAX_DOCTOR_TIMEOUT_S
    with pytest.raises(ApiError, match="given 2 times"):
        parse_doctor(b"container=a&container=b")
    with pytest.raises(ApiError, match="missing"):
        parse_doctor(b"timeout=1")
    with pytest.raises(ApiError, match="longer than"):
        parse_stats(b"container=" + b"a" * 20000)


def test_unknown_parameters_and_values_are_refused_not_ignored() -> None:
    with pytest.raises(ApiError, match="unknown parameter 'pid'"):
        parse_stats(b"pid=1")
    with pytest.raises(ApiError, match="unknown parameter"):
        parse_flows(b"%ff=1")
    assert parse_flows(b"").by == "container"
    assert parse_flows(b"by=service").by == "service"
    with pytest.raises(ApiError, match="'container' or 'service'"):
        parse_flows(b"by=host")
    assert parse_stats(b"").containers == ()


addresses = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).filter(
    lambda a: not (a.is_unspecified or a.is_multicast)
)


@given(
    names,
    addresses,
    st.sampled_from(["icmp", "tcp", "udp"]),
    st.integers(1, 65535),
    st.floats(0.05, MAX_PROBE_TIMEOUT_S),
    st.sampled_from([None, True, False]),
    st.sampled_from(["datagram", "dns"]),
    st.booleans(),
)
def test_a_probe_question_the_cli_writes_is_the_one_the_agent_reads(
    name: str,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    proto: str,
    port: int,
    timeout: float,
    expected: bool | None,
    payload: str,
    expect_reply: bool,
) -> None:
    params = [("container", name), ("address", address.exploded), ("proto", proto)]
    if proto != "icmp":
        params.append(("port", str(port)))
    if proto == "udp":
        params += [("payload", payload), ("expect_reply", str(expect_reply).lower())]
    params.append(("timeout", repr(timeout)))
    if expected is not None:
        params.append(("expected", str(expected).lower()))
    q = parse_probe(urlencode(params).encode())
    assert q == ProbeQuestion(
        name,
        str(address),
        proto,
        None if proto == "icmp" else port,
        timeout,
        payload if proto == "udp" else "datagram",
        expect_reply if proto == "udp" else True,
        expected,
    )


@given(st.binary(max_size=80))
def test_any_bytes_as_a_probes_address_are_one_address_or_a_one_line_400(raw: bytes) -> None:
    query = b"container=a&address=" + quote_from_bytes(raw, safe="").encode()
    try:
        q = parse_probe(query)
    except ApiError as e:
        one_line_400(e)
        return
    addr = ipaddress.ip_address(raw.decode("ascii"))
    assert q.address == str(addr) and not addr.is_unspecified and not addr.is_multicast


def test_a_probe_asks_for_one_bounded_thing() -> None:
    assert parse_probe(b"container=a&address=10.0.0.2").protocol == "icmp"
    assert parse_probe(b"container=a&address=10.0.0.2&port=80").protocol == "tcp"
    for bad, why in (
        (b"container=a&address=10.0.0.2&proto=icmp&port=80", "has none"),
        (b"container=a&address=10.0.0.2&proto=udp", "missing"),
        (b"container=a&address=10.0.0.2&port=65536", "1 to 65535"),
        (b"container=a&address=10.0.0.2&port=%2B80", "1 to 65535"),
        (b"container=a&address=10.0.0.2&port=080080", "1 to 65535"),
        (b"container=a&address=10.0.0.2&proto=sctp&port=1", "'icmp', 'tcp' or 'udp'"),
        (b"container=a&address=10.0.0.2&port=1&payload=dns", "UDP probe only"),
        (b"container=a&address=10.0.0.2&timeout=11", "from 0.05 to 10"),
        (b"container=a&address=0.0.0.0", "not one destination"),
        (b"container=a&address=ff02::1", "not one destination"),
        (b"container=a&address=fe80::1%25eth0", "not an IPv4 or IPv6"),
        (b"container=a&address=localhost", "not an IPv4 or IPv6"),
        (b"container=a&address=10.0.0.2&expected=maybe", "true or false"),
        (b"container=a&address=10.0.0.2&address=10.0.0.3", "given 2 times"),
        (b"container=a&address=10.0.0.2&pid=1", "unknown parameter"),
        (b"address=10.0.0.2", "container: missing"),
        (b"container=a", "address: missing"),
    ):
        with pytest.raises(ApiError, match=why) as e:
            parse_probe(bad)
        one_line_400(e.value)

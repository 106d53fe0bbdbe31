from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.projectfile.parse import (
    PortMapping,
    http_path_problem,
    image_reference_problem,
    parse_duration_ns,
    parse_port,
    split_command,
    substitute,
    template_names,
)

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


@pytest.mark.parametrize(
    ("text", "host_ip"),
    [("[0:0::1]:80:80", "::1"), ("[::]:80:80", "::"), ("0.0.0.0:80:80", "0.0.0.0")],
)
def test_host_addresses_take_one_spelling(text: str, host_ip: str) -> None:
    assert parse_port(text).host_ip == host_ip


def test_a_zone_index_is_refused() -> None:
    with pytest.raises(ValueError, match="zone index"):
        parse_port("[fe80::1%eth0]:80:80")


@given(st.text(st.characters(categories=["Nd"]), min_size=1, max_size=5))
def test_ports_take_ascii_digits_only(digits: str) -> None:
    if digits.isascii():
        return
    for text in (digits, f"{digits}:80", f"80:{digits}"):
        with pytest.raises(ValueError, match="not a port number"):
            parse_port(text)


# --- commands and templates -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("echo 'a", "unbalanced quote"),
        ('echo "a', "unbalanced quote"),
        ("echo a\\", "trailing backslash"),
    ],
)
def test_commands_that_do_not_split(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        split_command(text)


def test_commands_split_as_a_shell_would() -> None:
    assert split_command("sh -c 'echo \"$X\"' x\\ y") == ["sh", "-c", 'echo "$X"', "x y"]


def test_templates() -> None:
    text = "{{replica}} {{ name }} {{  service}} {{.Name}} {{ nope }} {{ 1x }}"
    assert template_names(text) == ["replica", "name", "service", "nope"]
    values = {"replica": "3", "name": "p-w-3", "service": "w"}
    assert substitute(text, values) == "3 p-w-3 w {{.Name}} {{ nope }} {{ 1x }}"


@given(st.text(max_size=30), st.sampled_from(["replica", "service", "project", "name"]))
def test_substitution_replaces_exactly_the_named_templates(text: str, name: str) -> None:
    marked = f"{text}{{{{ {name} }}}}{text}"
    out = substitute(marked, {name: "VALUE"})
    assert out == substitute(text, {name: "VALUE"}) + "VALUE" + substitute(text, {name: "VALUE"})


# --- image references and check paths ------------------------------------------------------


def test_image_references() -> None:
    assert image_reference_problem("registry:5000/a/b:c@sha256:" + "f" * 64) is None
    assert image_reference_problem("UPPER") == "'UPPER': repository names are lowercase ('upper')"


def test_http_paths() -> None:
    assert http_path_problem("/a%zz?q=1#f") is None
    assert http_path_problem("/a b") is not None
    assert http_path_problem("/\x7f") is not None
    assert http_path_problem("x") == "'x': a path starts with '/'"

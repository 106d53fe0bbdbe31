"""Naming the engines (dockmesh.engine.backend): `--engine` values as `URL` or `NAME=URL`, the
first one `local` when it is unnamed, the others after their socket or host, a name never given twice,
and a value that is not an engine URL refused with the value in the message. (The interface
itself: every backend against the real engine in tests/integration/test_backend.py.)"""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.engine.backend import DEFAULT_URL, EngineRef, default_url, parse_engine_refs


def test_the_default_engine_is_docker_host_else_the_local_socket() -> None:
    assert default_url("tcp://10.0.0.2:2375") == "tcp://10.0.0.2:2375"
    assert default_url(None) == default_url("") == DEFAULT_URL == "unix:///var/run/docker.sock"


def test_engines_are_named_local_then_after_their_socket_or_host() -> None:
    assert parse_engine_refs([], "unix:///run/docker.sock") == [
        EngineRef("local", "unix:///run/docker.sock")
    ]
    assert parse_engine_refs(
        [
            "unix:///run/docker.sock",
            "unix:///run/user/1000/podman.sock",
            "tcp://Builder.lan:2375",
            "edge=ssh://me@10.0.0.5",
            "unix:///",
        ],
        DEFAULT_URL,
    ) == [
        EngineRef("local", "unix:///run/docker.sock"),
        EngineRef("podman", "unix:///run/user/1000/podman.sock"),
        EngineRef("builder.lan", "tcp://Builder.lan:2375"),
        EngineRef("edge", "ssh://me@10.0.0.5"),
        EngineRef("unix", "unix:///"),
    ]


def test_a_name_given_twice_is_numbered() -> None:
    refs = parse_engine_refs(["a=tcp://h:1", "a=tcp://h:2", "tcp://x:1", "tcp://x:2"], DEFAULT_URL)
    assert [r.name for r in refs] == ["a", "a-2", "x", "x-4"]
    # A numbered name someone already gave is skipped.
    refs = parse_engine_refs(["a-3=tcp://h:1", "a=tcp://h:2", "a=tcp://h:3"], DEFAULT_URL)
    assert [r.name for r in refs] == ["a-3", "a", "a-4"]
    assert len({r.name for r in parse_engine_refs(["tcp://x:1"] * 5, DEFAULT_URL)}) == 5


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("/run/docker.sock", "expected a URL such as unix:///run/docker.sock"),
        ("name=/run/docker.sock", "expected a URL"),
        ("ftp://host", "unknown scheme 'ftp'"),
        # Read by docker-py only once connecting: a ValueError there was an internal error.
        ("tcp://h:notaport", "Port could not be cast"),
        ("tcp://h:99999", "Port out of range"),
        ("http://[::1", "Invalid IPv6 URL"),
        ("tcp://", "no host"),
        ("ssh://", "no host"),
    ],
)
def test_a_value_that_is_not_an_engine_url(value: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(f"--engine {value!r}: {why}")):
        parse_engine_refs([value], DEFAULT_URL)


def test_a_bad_default_is_named_for_where_it_came_from() -> None:
    """No --engine given: the default is the caller's ($DOCKER_HOST), and the message says so
    rather than blame an --engine the user never gave."""
    with pytest.raises(ValueError, match=r"^\$DOCKER_HOST 'garbage': expected a URL"):
        parse_engine_refs([], "garbage", default_from="$DOCKER_HOST")
    with pytest.raises(ValueError, match=r"^\$DOCKER_HOST 'tcp://h:x': Port"):
        parse_engine_refs([], "tcp://h:x", default_from="$DOCKER_HOST")


@given(
    st.lists(
        st.tuples(
            st.none() | st.text("ax-2345", min_size=1, max_size=4),
            st.sampled_from(
                ["unix:///run/a.sock", "unix:///b", "tcp://h:1", "http://h", "ssh://u@h"]
            ),
        ),
        max_size=8,
    )
)
def test_every_value_is_one_engine_with_a_name_of_its_own(
    values: list[tuple[str | None, str]],
) -> None:
    given_ = [url if name is None else f"{name}={url}" for name, url in values]
    refs = parse_engine_refs(given_, DEFAULT_URL)
    assert [r.url for r in refs] == ([url for _, url in values] or [DEFAULT_URL])
    assert len({r.name for r in refs}) == len(refs)
    assert all(r.name for r in refs)

"""Which agent answers for which container, and several hosts' documents as one
(dockmesh.cli.remote): pure decisions, no agent asked."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.cli.remote import (
    Route,
    agent_route,
    elsewhere,
    merge_flows,
    merge_stats,
    split_by_route,
)
from dockmesh.errors import UsageError
from tests.unit.topos import container


def on(engine: str, name: str) -> object:
    return replace(container(name, {"n": "10.0.0.2"}), engine=engine)


def test_containers_of_engines_with_an_agent_go_to_that_agent_in_order() -> None:
    a, b, c, d = on("local", "a"), on("host2", "b"), on("host3", "c"), on("host2", "d")
    routes = {"host2": Route("host2", "http://10.0.0.12:8500"), "host3": Route("host3", "x")}
    here, away = split_by_route([a, b, c, d], routes)  # type: ignore[list-item]
    assert here == [a]
    assert away == {"host2": [b, d], "host3": [c]}
    assert split_by_route([a, b], {}) == ([a, b], {})  # type: ignore[list-item]


@given(st.lists(st.sampled_from(["local", "host1", "host2"]), max_size=8))
def test_every_container_is_read_once_either_here_or_by_one_agent(engines: list[str]) -> None:
    cs = [on(e, f"c{i}") for i, e in enumerate(engines)]
    routes = {"host2": Route("host2", "http://h2:8500")}
    here, away = split_by_route(cs, routes)  # type: ignore[arg-type]
    seen = here + [c for group in away.values() for c in group]
    assert sorted(c.name for c in seen) == sorted(c.name for c in cs)  # type: ignore[attr-defined]
    assert all(c.engine not in routes for c in here)


def test_agent_urls() -> None:
    assert agent_route("http://10.0.0.12:8500").url == "http://10.0.0.12:8500"
    assert agent_route("http://h2").url == "http://h2:8500"
    assert agent_route("http://[::1]:9000/").url == "http://[::1]:9000"
    for bad in ("https://h:1", "h2:8500", "http://", "http://h:x", "http://h:1/v1/x", "file:///x"):
        with pytest.raises(UsageError):
            agent_route(bad)


def test_stats_documents_merge_in_the_topologys_order() -> None:
    here = {"containers": [{"id": "a"}, {"id": "c"}], "elapsed_s": 0.1}
    away = {"containers": [{"id": "b"}, {"id": "z"}], "elapsed_s": 0.2}
    doc = merge_stats([here, away], ["a", "b", "c"], 0.25)
    assert [c["id"] for c in doc["containers"]] == ["a", "b", "c", "z"]  # type: ignore[attr-defined]
    assert doc["elapsed_s"] == 0.25


def edge(src: str, nbytes: int) -> dict[str, object]:
    return {"src": src, "dst": "d", "proto": "tcp", "port": 80, "bytes": nbytes}


def test_flows_documents_merge_sorted_as_flows_sorts_and_the_weakest_accounting() -> None:
    one = {"edges": [edge("a", 5), edge("b", 1)], "accounting": "on"}
    two = {"edges": [edge("c", 9)], "accounting": "enabled"}
    doc = merge_flows([one, two], 0.5)
    assert [e["src"] for e in doc["edges"]] == ["c", "a", "b"]  # type: ignore[attr-defined]
    assert doc["accounting"] == "enabled"
    assert merge_flows([one, {"edges": [], "accounting": "off"}], 0)["accounting"] == "off"
    assert merge_flows([], 0) == {"edges": [], "accounting": "on", "elapsed_s": 0}


def test_a_pid_not_shown_to_be_the_containers_is_elsewhere() -> None:
    import os

    me = replace(container("web", {"n": "10.0.0.2"}), pid=os.getpid())  # not its cgroup
    said = elsewhere(me)
    assert "not on this machine" in said and "--agent" in said
    assert elsewhere(replace(me, pid=None)) == ""
    assert elsewhere(replace(me, state="exited")) == ""

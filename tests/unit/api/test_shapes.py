"""The catalog's values in Consul's JSON shapes (dockmesh.api.shapes): the keys a Consul
client reads, a node ID that stays the same across restarts, intervals written the way Consul
writes durations, KV values in base64 (null when empty), and Consul's own serfHealth check
first in every health entry."""

from __future__ import annotations

import base64
import uuid

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.api.shapes import (
    NodeInfo,
    agent_service_json,
    catalog_service_json,
    check_json,
    health_entry_json,
    kv_json,
    node_json,
    serf_health_json,
    service_json,
)
from dockmesh.catalog.state import Entry
from dockmesh.model.catalog import CheckKind, CheckSpec, CheckState, Instance, KVEntry
from dockmesh.model.durations import parse_duration_ns

NODE = NodeInfo("box", "dc9", "10.0.0.1")
API = Instance("api-1", "api", "10.0.0.2", 8080, ("v1", "canary"), {"team": "x"}, weight=3)


def test_the_node_id_is_a_uuid_that_follows_the_name_only() -> None:
    assert uuid.UUID(NODE.id).version == 5
    assert NodeInfo("box").id == NODE.id != NodeInfo("other").id
    assert node_json(NODE, 42) == {
        "ID": NODE.id,
        "Node": "box",
        "Address": "10.0.0.1",
        "Datacenter": "dc9",
        "TaggedAddresses": {"lan": "10.0.0.1", "wan": "10.0.0.1"},
        "Meta": {"consul-network-segment": ""},
        "CreateIndex": 1,
        "ModifyIndex": 42,
    }


def test_an_instance_in_each_of_consul_s_shapes() -> None:
    svc = service_json(API, 7)
    assert svc == {
        "ID": "api-1",
        "Service": "api",
        "Tags": ["v1", "canary"],
        "Address": "10.0.0.2",
        "Meta": {"team": "x"},
        "Port": 8080,
        "Weights": {"Passing": 3, "Warning": 1},
        "EnableTagOverride": False,
        "CreateIndex": 7,
        "ModifyIndex": 7,
    }
    agent = agent_service_json(API, NODE)
    assert agent["Datacenter"] == "dc9" and "CreateIndex" not in agent
    assert {k: v for k, v in agent.items() if k != "Datacenter"} == {
        k: v for k, v in svc.items() if not k.endswith("Index")
    }
    row = catalog_service_json(API, NODE, 7)
    assert (row["Node"], row["ID"], row["Address"]) == ("box", NODE.id, "10.0.0.1")
    assert {k.removeprefix("Service"): v for k, v in row.items() if k.startswith("Service")} == {
        "Kind": "",
        "ID": "api-1",
        "Name": "api",
        "Tags": ["v1", "canary"],
        "Address": "10.0.0.2",
        "Weights": {"Passing": 3, "Warning": 1},
        "Meta": {"team": "x"},
        "Port": 8080,
        "EnableTagOverride": False,
    }


@pytest.mark.parametrize(
    ("kind", "interval", "timeout", "written"),
    [
        ("http", 10.0, 5.0, ("10s", "5s")),
        ("tcp", 90.0, 0.25, ("90s", "250ms")),
        ("ttl", 10.0, 5.0, ("", "")),
        ("http", 0.0, 0.0, ("", "")),
    ],
)
def test_a_check_s_interval_and_timeout_as_consul_writes_durations(
    kind: CheckKind, interval: float, timeout: float, written: tuple[str, str]
) -> None:
    spec = CheckSpec(
        "chk",
        "web health",
        kind,
        service_id="api-1",
        interval_s=interval,
        timeout_s=timeout,
    )
    doc = check_json(CheckState(spec, "warning", "slow", modify_index=9), API, NODE)
    assert (doc["Interval"], doc["Timeout"]) == written
    assert (doc["CheckID"], doc["Name"], doc["Status"], doc["Output"], doc["Type"]) == (
        "chk",
        "web health",
        "warning",
        "slow",
        kind,
    )
    assert (doc["ServiceID"], doc["ServiceName"], doc["ServiceTags"]) == (
        "api-1",
        "api",
        ["v1", "canary"],
    )
    assert doc["CreateIndex"] == doc["ModifyIndex"] == 9


@given(st.floats(0.001, 10**6, allow_nan=False))
def test_any_interval_is_written_as_a_duration_consul_reads_back(seconds: float) -> None:
    spec = CheckSpec("c", "c", "http", interval_s=seconds)
    text = check_json(CheckState(spec, "passing"), None, NODE)["Interval"]
    assert parse_duration_ns(text) == round(seconds * 1e9)


def test_a_node_check_names_no_service() -> None:
    doc = check_json(CheckState(CheckSpec("n", "n", "ttl", ttl_s=5), "critical"), None, NODE)
    assert (doc["ServiceID"], doc["ServiceName"], doc["ServiceTags"]) == ("", "", [])


def test_a_health_entry_lists_serf_health_first() -> None:
    spec = CheckSpec("chk", "chk", "tcp", service_id="api-1")
    entry = Entry(API, (CheckState(spec, "passing"),))
    doc = health_entry_json(entry, NODE, 12)
    assert doc["Node"] == node_json(NODE, 12)
    assert doc["Service"] == service_json(API, 12)
    assert [c["CheckID"] for c in doc["Checks"]] == ["serfHealth", "chk"]
    assert doc["Checks"][0] == serf_health_json(NODE)
    assert serf_health_json(NODE)["Status"] == "passing"


@given(st.binary(max_size=64), st.integers(0, 2**32 - 1))
def test_a_kv_value_is_base64_and_null_when_empty(value: bytes, flags: int) -> None:
    doc = kv_json(KVEntry("a/b", value, flags, 3, 5, 0))
    assert (doc["Key"], doc["Flags"], doc["CreateIndex"], doc["ModifyIndex"]) == (
        "a/b",
        flags,
        3,
        5,
    )
    if value:
        assert base64.b64decode(doc["Value"]) == value
    else:
        assert doc["Value"] is None


def test_an_instance_another_host_published_lives_on_that_host_s_node() -> None:
    """From the shared catalog: its Node is the host that runs it, in every shape; this
    agent's own instances stay on this agent's node."""
    from dockmesh.catalog.sharing import Published, remote_instance

    inst, checks = remote_instance("host2", Published("t1", "web", "10.9.0.5", 8080))
    state = CheckState(checks[0], "passing")
    doc = health_entry_json(Entry(inst, (state,)), NODE, 7)
    assert (doc["Node"]["Node"], doc["Node"]["Address"]) == ("host2", "10.9.0.5")
    assert doc["Node"]["Datacenter"] == "dc9"
    assert {c["Node"] for c in doc["Checks"]} == {"host2"}
    row = catalog_service_json(inst, NODE, 7)
    assert (row["Node"], row["Address"], row["ServiceAddress"]) == ("host2", "10.9.0.5", "10.9.0.5")
    assert check_json(state, inst, NODE)["Node"] == "host2"
    assert catalog_service_json(API, NODE, 7)["Node"] == "box"

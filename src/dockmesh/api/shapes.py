"""The catalog's values → Consul's JSON shapes. Pure.

Field names and nesting are Consul's (`/v1/health/service`: `Node`, `Service`, `Checks`), so
clients written for Consul read them unchanged. dockmesh is one agent that is its own server:
every instance lives on the one node described by `NodeInfo`.

Consul keeps a create and a modify index per row; dockmesh's catalog keeps them per KV entry
and per check, and per service topic otherwise, so an instance's indexes are its service's.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass
from typing import Any

from dockmesh.catalog.sharing import REMOTE_ENGINE
from dockmesh.catalog.state import Entry
from dockmesh.model.catalog import CheckSpec, CheckState, Instance, KVEntry
from dockmesh.model.durations import format_duration_ns

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class NodeInfo:
    name: str = "dockmesh"
    datacenter: str = "dc1"
    address: str = "127.0.0.1"

    @property
    def id(self) -> str:
        # Consul node IDs are UUIDs; one derived from the name stays the same across restarts.
        return str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}.node.dockmesh"))


def host_node(inst: Instance | None, node: NodeInfo) -> NodeInfo:
    """The node an instance lives on, as Consul names it: this agent's, or, for one another
    host's agent published (the shared catalog), that host — its node name, and the
    instance's address as the node's (the only one of that host known here). Clients that
    group or pin by `Node` then see where an instance runs, as in a Consul cluster."""
    if inst is not None and inst.engine.startswith(REMOTE_ENGINE):
        name = inst.meta.get("node") or inst.engine[len(REMOTE_ENGINE) :]
        return NodeInfo(name, node.datacenter, inst.address)
    return node


def _weights(inst: Instance) -> JSON:
    return {"Passing": inst.weight, "Warning": 1}


def node_json(node: NodeInfo, index: int) -> JSON:
    return {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": {"lan": node.address, "wan": node.address},
        "Meta": {"consul-network-segment": ""},
        "CreateIndex": 1,
        "ModifyIndex": index,
    }


def service_json(inst: Instance, index: int) -> JSON:
    """An instance as `/v1/health/service`'s `Service`."""
    return {
        "ID": inst.id,
        "Service": inst.service,
        "Tags": list(inst.tags),
        "Address": inst.address,
        "Meta": dict(inst.meta),
        "Port": inst.port,
        "Weights": _weights(inst),
        "EnableTagOverride": False,
        "CreateIndex": index,
        "ModifyIndex": index,
    }


def agent_service_json(inst: Instance, node: NodeInfo) -> JSON:
    """An instance as a value of `/v1/agent/services`."""
    return {
        "ID": inst.id,
        "Service": inst.service,
        "Tags": list(inst.tags),
        "Meta": dict(inst.meta),
        "Port": inst.port,
        "Address": inst.address,
        "Weights": _weights(inst),
        "EnableTagOverride": False,
        "Datacenter": node.datacenter,
    }


def catalog_service_json(inst: Instance, node: NodeInfo, index: int) -> JSON:
    """An instance as a row of `/v1/catalog/service/<name>`."""
    node = host_node(inst, node)
    return {
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": {"lan": node.address, "wan": node.address},
        "NodeMeta": {"consul-network-segment": ""},
        "ServiceKind": "",
        "ServiceID": inst.id,
        "ServiceName": inst.service,
        "ServiceTags": list(inst.tags),
        "ServiceAddress": inst.address,
        "ServiceWeights": _weights(inst),
        "ServiceMeta": dict(inst.meta),
        "ServicePort": inst.port,
        "ServiceEnableTagOverride": False,
        "CreateIndex": index,
        "ModifyIndex": index,
    }


def _duration(seconds: float | None) -> str:
    if not seconds:
        return ""
    return format_duration_ns(round(seconds * 1e9))


def check_json(state: CheckState, inst: Instance | None, node: NodeInfo) -> JSON:
    """A check as `/v1/health/checks/<name>` and `/v1/agent/checks` show it."""
    spec = state.spec
    return {
        "Node": host_node(inst, node).name,
        "CheckID": spec.id,
        "Name": spec.name,
        "Status": state.status,
        "Notes": spec.notes,
        "Output": state.output,
        "ServiceID": spec.service_id or "",
        "ServiceName": inst.service if inst else "",
        "ServiceTags": list(inst.tags) if inst else [],
        "Type": spec.kind,
        "Interval": _duration(spec.interval_s) if spec.kind in ("http", "tcp") else "",
        "Timeout": _duration(spec.timeout_s) if spec.kind in ("http", "tcp") else "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": state.modify_index,
        "ModifyIndex": state.modify_index,
    }


def serf_health_json(node: NodeInfo) -> JSON:
    """Consul lists its node's own `serfHealth` check with every instance; clients that
    count or show an entry's checks expect it. dockmesh's node is this process: passing
    whenever it answers."""
    return {
        "Node": node.name,
        "CheckID": "serfHealth",
        "Name": "Serf Health Status",
        "Status": "passing",
        "Notes": "",
        "Output": "Agent alive and reachable",
        "ServiceID": "",
        "ServiceName": "",
        "ServiceTags": [],
        "Type": "",
        "Interval": "",
        "Timeout": "",
        "ExposedPort": 0,
        "Definition": {},
        "CreateIndex": 1,
        "ModifyIndex": 1,
    }


def health_entry_json(entry: Entry, node: NodeInfo, index: int) -> JSON:
    """One row of `/v1/health/service/<name>`."""
    inst = entry.instance
    node = host_node(inst, node)
    return {
        "Node": node_json(node, index),
        "Service": service_json(inst, index),
        "Checks": [serf_health_json(node)] + [check_json(c, inst, node) for c in entry.checks],
    }


def kv_json(entry: KVEntry) -> JSON:
    """A KV entry as `/v1/kv/<key>` shows it: the value in base64, null when empty (Consul
    stores an empty body as no value)."""
    return {
        "LockIndex": entry.lock_index,
        "Key": entry.key,
        "Flags": entry.flags,
        "Value": base64.b64encode(entry.value).decode("ascii") if entry.value else None,
        "CreateIndex": entry.create_index,
        "ModifyIndex": entry.modify_index,
    }


def member_json(node: NodeInfo, version: str) -> JSON:
    """This agent as a row of `/v1/agent/members`: a serf member, alive (Status 1), with the
    tags a Consul server gossips (its role, datacenter and protocol versions)."""
    return {
        "Name": node.name,
        "Addr": node.address,
        "Port": 8301,
        "Tags": {
            "build": f"{version}:dockmesh",
            "dc": node.datacenter,
            "id": node.id,
            "port": "8300",
            "role": "consul",
            "segment": "",
            "vsn": "2",
            "vsn_max": "3",
            "vsn_min": "2",
        },
        "Status": 1,
        "ProtocolMin": 1,
        "ProtocolMax": 5,
        "ProtocolCur": 2,
        "DelegateMin": 2,
        "DelegateMax": 5,
        "DelegateCur": 4,
    }


def node_services_json(node: NodeInfo, services: list[JSON], index: int) -> JSON:
    """`/v1/catalog/node/<node>`: the node and its services by ID (`service_json` rows)."""
    return {"Node": node_json(node, index), "Services": {s["ID"]: s for s in services}}


def agent_health_json(status: str, inst: Instance, checks: list[JSON], node: NodeInfo) -> JSON:
    """One instance in `/v1/agent/health/service/name/<name>`: its checks' worst status."""
    return {
        "AggregatedStatus": status,
        "Service": agent_service_json(inst, node),
        "Checks": checks,
    }


def filter_samples(node: NodeInfo) -> dict[str, JSON]:
    """One row of each kind `?filter=` reads, lists holding one element and maps one key,
    so `filter.shape_of` sees every field's type: `service` (`/v1/health/service`'s
    `Service`), `agent_service`, `catalog_service`, `health_entry`, `check`, `node`."""
    inst = Instance("i", "s", "127.0.0.1", 1, tags=("t",), meta={"k": "v"})
    check = CheckState(CheckSpec("c", "c", "ttl", service_id="i"), "passing")
    return {
        "service": service_json(inst, 1),
        "agent_service": agent_service_json(inst, node),
        "catalog_service": catalog_service_json(inst, node, 1),
        "health_entry": health_entry_json(Entry(inst, (check,)), node, 1),
        "check": check_json(check, inst, node),
        "node": node_json(node, 1),
    }

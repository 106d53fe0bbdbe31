"""Small topologies (pure values, no engine) for the tests of everything that reads one: a network,
a container on networks, a topology of them."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

from dockmesh.model.topology import (
    Attachment,
    Container,
    EngineInfo,
    EngineState,
    IpamPool,
    Network,
    Topology,
    build_topology,
)


def _id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def network(name: str, subnet: str | None, *, internal: bool = False, icc: bool = True) -> Network:
    options = {} if icc else {"com.docker.network.bridge.enable_icc": "false"}
    return Network(
        _id(name),
        name,
        "local",
        "bridge",
        internal=internal,
        ipam=(IpamPool(subnet),) if subnet else (),
        options=options,
    )


def container(
    name: str,
    on: Mapping[str, str | tuple[str, str | None]],
    labels: Mapping[str, str] | None = None,
    *,
    state: str = "running",
    pid: int | None = 100,
    aliases: Sequence[str] = (),
) -> Container:
    """`on`: network name → IPv4 address (or (IPv4, IPv6))."""
    atts = []
    for net, addr in on.items():
        v4, v6 = (addr, None) if isinstance(addr, str) else addr
        atts.append(
            Attachment(_id(net), net, ipv4=v4, ipv6=v6, aliases=(*aliases, _id(name)[:12], name))
        )
    return Container(
        _id(name),
        name,
        "local",
        "dockmesh/toolbox",
        state,
        pid=pid if state == "running" else None,
        hostname=name,
        attachments=tuple(atts),
        labels=dict(labels or {}),
    )


def topology(networks: Sequence[Network], containers: Sequence[Container]) -> Topology:
    st = EngineState(EngineInfo("local", "unix:///x"))
    for n in networks:
        st.upsert_network(n)
    for c in containers:
        st.upsert_container(c)
    return build_topology([st], 1)

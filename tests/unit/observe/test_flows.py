"""Conntrack messages → flows → container edges."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.model.topology import (
    Attachment,
    Container,
    EngineInfo,
    IpamPool,
    Network,
    Topology,
)
from dockmesh.observe.flows import (
    ConntrackFlow,
    Tuple5,
    aggregate,
    flows_json,
    parse_conntrack_message,
)
from tests.outcomes import Outcomes


def msg(
    src: str,
    dst: str,
    sport: int,
    dport: int,
    rsrc: str,
    rdst: str,
    *,
    proto: int = 6,
    counters: tuple[int, int, int, int] | None = (3, 300, 2, 2000),
) -> dict[str, Any]:
    def tup(s: str, d: str, sp: int, dp: int) -> dict[str, Any]:
        return {
            "attrs": [
                ("CTA_TUPLE_IP", {"attrs": [("CTA_IP_V4_SRC", s), ("CTA_IP_V4_DST", d)]}),
                (
                    "CTA_TUPLE_PROTO",
                    {
                        "attrs": [
                            ("CTA_PROTO_NUM", proto),
                            ("CTA_PROTO_SRC_PORT", sp),
                            ("CTA_PROTO_DST_PORT", dp),
                        ]
                    },
                ),
            ]
        }

    attrs: list[tuple[str, Any]] = [
        ("CTA_TUPLE_ORIG", tup(src, dst, sport, dport)),
        ("CTA_TUPLE_REPLY", tup(rsrc, rdst, dport, sport)),
        ("CTA_STATUS", 398),
    ]
    if counters:
        attrs.append(
            (
                "CTA_COUNTERS_ORIG",
                {
                    "attrs": [
                        ("CTA_COUNTERS_PACKETS", counters[0]),
                        ("CTA_COUNTERS_BYTES", counters[1]),
                    ]
                },
            )
        )
        attrs.append(
            (
                "CTA_COUNTERS_REPLY",
                {
                    "attrs": [
                        ("CTA_COUNTERS_PACKETS", counters[2]),
                        ("CTA_COUNTERS_BYTES", counters[3]),
                    ]
                },
            )
        )
    return {"attrs": attrs}


def topo() -> Topology:
    net = Network("n1", "backend", "local", "bridge", ipam=(IpamPool("10.9.0.0/24", "10.9.0.1"),))

    def c(name: str, ip: str, service: str | None = None) -> Container:
        labels = {"dockmesh.service": service} if service else {}
        return Container(
            id=name * 8,
            name=name,
            engine="local",
            image="x",
            state="running",
            attachments=(Attachment("n1", "backend", ipv4=ip),),
            labels=labels,
        )

    return Topology(
        1,
        (EngineInfo("local", "unix:///var/run/docker.sock"),),
        (net,),
        (c("gateway", "10.9.0.2"), c("api-1", "10.9.0.3", "api"), c("api-2", "10.9.0.4", "api")),
    )


def test_message_parses_with_counters() -> None:
    f = parse_conntrack_message(msg("10.9.0.2", "10.9.0.3", 40000, 8080, "10.9.0.3", "10.9.0.2"))
    assert f == ConntrackFlow(
        6,
        Tuple5("10.9.0.2", "10.9.0.3", 40000, 8080),
        Tuple5("10.9.0.3", "10.9.0.2", 8080, 40000),
        3,
        300,
        2,
        2000,
    )
    assert parse_conntrack_message({"attrs": []}) is None
    assert parse_conntrack_message(None) is None


def test_edges_by_container_and_by_service() -> None:
    flows = [
        parse_conntrack_message(
            msg("10.9.0.2", "10.9.0.3", 40000 + i, 8080, "10.9.0.3", "10.9.0.2")
        )
        for i in range(3)
    ] + [parse_conntrack_message(msg("10.9.0.2", "10.9.0.4", 41000, 8080, "10.9.0.4", "10.9.0.2"))]
    # Host chatter on loopback and a published port DNATed to api-2.
    flows.append(
        parse_conntrack_message(msg("127.0.0.1", "127.0.0.1", 1, 2, "127.0.0.1", "127.0.0.1"))
    )
    flows.append(
        parse_conntrack_message(msg("10.9.0.1", "192.168.1.5", 5, 18080, "10.9.0.4", "10.9.0.1"))
    )
    real = [f for f in flows if f is not None]
    edges = aggregate(real, topo())
    got = {(e.src, e.dst, e.port): (e.connections, e.bytes) for e in edges}
    assert got == {
        ("gateway", "api-1", 8080): (3, 6900),
        ("gateway", "api-2", 8080): (1, 2300),
        ("gateway:backend", "api-2", 18080): (1, 2300),
    }
    by_service = aggregate(real, topo(), by="service")
    assert {(e.src, e.dst, e.port, e.connections) for e in by_service} == {
        ("gateway", "api", 8080, 4),
        ("gateway:backend", "api", 18080, 1),
    }
    doc = flows_json(edges, "on", 0.001)
    assert doc["edges"][0]["bytes"] == 6900  # type: ignore[index]


def test_without_accounting_connections_still_count() -> None:
    f = parse_conntrack_message(
        msg("10.9.0.2", "10.9.0.3", 1, 80, "10.9.0.3", "10.9.0.2", counters=None)
    )
    assert f is not None
    (e,) = aggregate([f], topo())
    assert (e.connections, e.bytes, e.packets) == (1, 0, 0)


leaf = st.one_of(st.none(), st.integers(-5, 2**70), st.text(max_size=5), st.ip_addresses().map(str))
names = st.sampled_from(
    [
        "CTA_TUPLE_ORIG",
        "CTA_TUPLE_REPLY",
        "CTA_TUPLE_IP",
        "CTA_TUPLE_PROTO",
        "CTA_IP_V4_SRC",
        "CTA_IP_V4_DST",
        "CTA_IP_V6_SRC",
        "CTA_PROTO_NUM",
        "CTA_PROTO_SRC_PORT",
        "CTA_COUNTERS_ORIG",
        "CTA_COUNTERS_BYTES",
        "x",
    ]
)
trees = st.recursive(
    leaf,
    lambda kids: st.fixed_dictionaries({"attrs": st.lists(st.tuples(names, kids), max_size=5)}),
    max_leaves=25,
)


# Messages as a dump returns them (addresses of the topology's containers and others, any
# ports and counters), some with one attribute spoiled, and random trees: most parse, so the
# flow's properties are checked (random trees alone never hold both tuples).
addresses = st.sampled_from(["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.1", "fd00::1"])
ports = st.integers(-1, 70000)
counts = st.integers(-5, 2**64) | st.none() | st.text(max_size=2)
well_formed = st.builds(
    msg,
    addresses,
    addresses,
    ports,
    ports,
    addresses,
    addresses,
    proto=st.sampled_from([6, 17, 1, 132]),
    counters=st.none() | st.tuples(counts, counts, counts, counts),
)
spoiled = st.builds(
    lambda m, at, junk: {
        "attrs": [(name, junk if i == at else v) for i, (name, v) in enumerate(m["attrs"])]
    },
    well_formed,
    st.integers(0, 4),
    trees,
)


def test_any_message_parses_or_is_none() -> None:
    seen = Outcomes()

    @given(st.one_of(well_formed, spoiled, trees))
    def run(m: Any) -> None:
        f = parse_conntrack_message(m)
        if f is None:
            seen("none")
            return
        seen("flow")
        assert f.orig_bytes >= 0 and f.reply_packets >= 0
        assert f.orig_packets >= 0 and f.reply_bytes >= 0
        aggregate([f], topo())

    run()
    seen.require(flow=0.2, none=0.1)


def test_flows_drawn_as_directed_dashed_edges_on_the_dot_graph() -> None:
    from dockmesh.cli.render import topology_dot

    f = parse_conntrack_message(msg("10.9.0.2", "10.9.0.3", 1, 8080, "10.9.0.3", "10.9.0.2"))
    assert f is not None
    t = topo()
    dot = topology_dot(t, aggregate([f], t))
    (line,) = [x for x in dot.splitlines() if "dashed" in x]
    assert line.startswith(
        '  "ctr:local/gatewaygatewaygatewaygatewaygatewaygatewaygatewaygateway" -- '
    )
    assert "8080/tcp" in line and "2300 B" in line
    assert topology_dot(t) == topology_dot(t, [])

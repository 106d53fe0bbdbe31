"""`why`'s analysis over values: the steps, in order, with their verdicts."""

from __future__ import annotations

from dockmesh.codecs.icmp import echo_reply, echo_request
from dockmesh.codecs.procnet import Listener
from dockmesh.model.policy import Policy, PortRange, Rule, Selector
from dockmesh.model.topology import Topology
from dockmesh.policy.nft import parse_live
from dockmesh.policy.reach import Analysis, Observations, Step, analyze, parse_port
from tests.unit.policy.topos import container, network, topology


def chapter() -> Topology:
    return topology(
        [
            network("fe", "10.1.0.0/24"),
            network("be", "10.2.0.0/24"),
            network("db", "10.3.0.0/24", internal=True),
            network("quiet", "10.4.0.0/24", icc=False),
            network("bridge", "172.17.0.0/16"),
        ],
        [
            container(
                "front",
                {"fe": "10.1.0.2", "be": "10.2.0.2"},
                {"dockmesh.service": "front", "dockmesh.project": "a"},
                aliases=["web"],
            ),
            container(
                "back",
                {"be": "10.2.0.3", "db": "10.3.0.3", "quiet": "10.4.0.3"},
                {"dockmesh.service": "back", "dockmesh.project": "a"},
            ),
            container("data", {"db": "10.3.0.4"}, aliases=["database"]),
            container("q2", {"quiet": "10.4.0.4"}),
            container("web2", {"be": "10.2.0.9"}, {"dockmesh.project": "b"}, aliases=["web"]),
            container("b1", {"bridge": "172.17.0.2"}),
            container("b2", {"bridge": "172.17.0.3"}),
            container("off", {"be": "10.2.0.5"}, state="exited"),
        ],
    )


def checks(a: Analysis) -> dict[str, Step]:
    return {s.check: s for s in a.steps}


def test_no_shared_network_says_where_each_is() -> None:
    a = analyze(chapter(), None, "front", "data")
    assert not a.reachable
    assert [s.check for s in a.steps] == ["running", "shared_network", "dns"]
    assert "front is on fe, be; data is on db" in checks(a)["shared_network"].detail
    assert a.summary == "front cannot reach data: they share no network"


def test_backend_to_database_reachable_on_an_internal_network() -> None:
    port = parse_port("5432/tcp")
    assert isinstance(port, PortRange)
    facts = Observations(
        listening=[Listener("tcp", "0.0.0.0", 5432)], policy_note="no policy applied"
    )
    a = analyze(chapter(), None, "back", "data", port, facts)
    assert a.reachable and a.network == "db" and a.address == "10.3.0.4"
    assert [s.check for s in a.steps] == [
        "running",
        "shared_network",
        "internal",
        "icc",
        "policy",
        "dns",
        "listening",
    ]
    c = checks(a)
    assert "db is internal" in c["internal"].detail
    assert c["policy"].detail == "no policy applied: Docker's rules only"
    assert "database" in c["dns"].detail and "10.3.0.4" in c["dns"].detail
    assert a.summary == "back can reach data (10.3.0.4 on db) on 5432/tcp"


def test_loopback_only_listener_is_the_finding() -> None:
    a = analyze(
        chapter(),
        None,
        "back",
        "data",
        PortRange("tcp", 5432, 5432),
        Observations(listening=[Listener("tcp", "127.0.0.1", 5432)]),
    )
    assert not a.reachable
    assert "listens on 127.0.0.1:5432 only" in checks(a)["listening"].detail
    none = analyze(
        chapter(), None, "back", "data", PortRange("tcp", 5432, 5432), Observations(listening=[])
    )
    assert "nothing in data listens on 5432/tcp" in checks(none)["listening"].detail


def test_policy_step_names_the_rule_or_the_default() -> None:
    policy = Policy(
        "allow",
        (("be", "deny"),),
        (
            Rule(
                (Selector(service="front"),),
                (Selector(service="back"),),
                (PortRange("tcp", 8080, 8080),),
            ),
        ),
    )
    port = PortRange("tcp", 8080, 8080)
    a = analyze(chapter(), policy, "front", "back", port)
    assert a.reachable and checks(a)["policy"].detail.startswith(
        "rule 1 allows it: service=front -> service=back"
    )
    b = analyze(chapter(), policy, "back", "front", port)
    assert not b.reachable and "network be's default denies it" in checks(b)["policy"].detail
    # Over another shared network the default allows: back reaches q2? icc is off there.
    c = analyze(chapter(), policy, "back", "q2")
    assert not c.reachable and not checks(c)["icc"].ok


def test_default_bridge_has_no_dns_and_alias_collisions_are_flagged() -> None:
    a = analyze(chapter(), None, "b1", "b2")
    assert a.reachable and not checks(a)["dns"].ok
    assert "default bridge network has no DNS" in checks(a)["dns"].detail
    b = analyze(chapter(), None, "back", "front")
    assert "alias 'web' on be also names web2 of another project" in checks(b)["dns"].detail


def test_stopped_and_missing_containers() -> None:
    a = analyze(chapter(), None, "front", "off")
    assert not a.reachable and "off is not running" in a.summary
    assert analyze(chapter(), None, "front", "ghost").summary == "ghost does not exist"


def test_host_sees_published_ports() -> None:
    a = analyze(chapter(), None, "host", "back", PortRange("tcp", 80, 80))
    assert a.reachable and a.address == "10.2.0.3"
    assert [s.check for s in a.steps] == ["running", "shared_network", "published"]


def test_port_argument() -> None:
    assert parse_port("8080") == PortRange("tcp", 8080, 8080)
    assert isinstance(parse_port("1-2/tcp"), str)
    assert isinstance(parse_port("icmp"), str)


def test_echo_request_round_trips_through_a_reply() -> None:
    req = echo_request(0x1234, 7)
    # The kernel's reply: the request's ICMP with type 0 behind a 20-byte IPv4 header.
    reply = b"\x45" + b"\0" * 19 + b"\x00" + req[1:]
    assert echo_reply(reply) == (0x1234, 7)
    assert echo_reply(b"\x45" + b"\0" * 19 + req) is None  # a request is not a reply
    assert echo_reply(b"short") is None


def test_parse_live_reads_elements_counters_and_the_hash() -> None:
    doc = {
        "nftables": [
            {"metainfo": {"json_schema_version": 1}},
            {"table": {"family": "inet", "name": "t", "handle": 1}},
            {
                "set": {
                    "family": "inet",
                    "name": "s0_4",
                    "table": "t",
                    "type": "ipv4_addr",
                    "elem": ["10.0.0.2"],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "n0_4",
                    "table": "t",
                    "type": "ipv4_addr",
                    "flags": ["interval"],
                    "elem": [
                        {"prefix": {"addr": "10.1.0.0", "len": 24}},
                        {"range": ["10.2.0.0", "10.2.1.255"]},
                    ],
                }
            },
            {
                "set": {
                    "family": "inet",
                    "name": "s0_6",
                    "table": "t",
                    "type": "ipv6_addr",
                    "elem": ["fd00:0::1"],
                }
            },
            {"chain": {"family": "inet", "table": "t", "name": "forward", "handle": 2}},
            {
                "rule": {
                    "family": "inet",
                    "table": "t",
                    "chain": "forward",
                    "handle": 3,
                    "comment": "dockmesh policy abc",
                    "expr": [{"accept": None}],
                }
            },
            {
                "rule": {
                    "family": "inet",
                    "table": "t",
                    "chain": "forward",
                    "handle": 4,
                    "comment": "rule 1",
                    "expr": [{"counter": {"packets": 3, "bytes": 180}}, {"accept": None}],
                }
            },
        ]
    }
    live = parse_live(doc, "t")
    assert live.structure_hash == "abc"
    assert live.elements == {
        "s0_4": frozenset({"10.0.0.2"}),
        "n0_4": frozenset({"10.1.0.0/24", "10.2.0.0/23"}),
        "s0_6": frozenset({"fd00::1"}),
    }
    assert [(r.comment, r.packets) for r in live.rules] == [
        ("dockmesh policy abc", None),
        ("rule 1", 3),
    ]

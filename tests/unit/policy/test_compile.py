"""The compiler: golden rulesets, and the compiled verdict equal to the model's for every pair
of endpoints of random topologies under random policies."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.policy import Policy, PortRange, Rule, Selector, parse_policy
from dockmesh.model.topology import PortBinding, Topology
from dockmesh.policy.compile import (
    HASH_TAG,
    PortMap,
    bridge_name,
    compile_policy,
    document,
    element_delta,
    full_transaction,
    remove_transaction,
)
from dockmesh.policy.decide import decide
from dockmesh.policy.evaluate import Packet, evaluate
from dockmesh.testing.nft import MemoryNft
from tests.unit.topos import container, network, topology

GOLDEN = Path(__file__).parent / "golden"


def chapter() -> Topology:
    """The D2 layout: one network, gateway, api, an unlisted container; plus a second network."""
    return topology(
        [network("seg", "10.242.0.0/24"), network("other", "10.9.0.0/24")],
        [
            container("gw", {"seg": "10.242.0.2"}, {"dockmesh.service": "gateway"}),
            container("api", {"seg": ("10.242.0.3", "fd00::3")}, {"dockmesh.service": "api"}),
            container("oth", {"seg": "10.242.0.4", "other": "10.9.0.2"}),
            container("old", {"seg": "10.242.0.9"}, {"dockmesh.service": "api"}, state="exited"),
        ],
    )


def seg_policy() -> Policy:
    policy, problems = parse_policy(
        {
            "default": "allow",
            "networks": {"seg": {"default": "deny"}},
            "rules": [
                {
                    "from": {"service": "gateway"},
                    "to": {"service": "api"},
                    "ports": ["8080/tcp", "9000-9010/tcp", "icmp"],
                }
            ],
        }
    )
    assert policy is not None and not problems
    return policy


def golden(name: str, doc: Any) -> None:
    """`doc` equals the golden file `name`. A missing golden file fails like a different one:
    writing it here would pass whatever the compiler produced. DOCKMESH_UPDATE_GOLDEN=1
    (re)writes the files deliberately; review the diff before committing them."""
    path = GOLDEN / name
    text = json.dumps(doc, indent=1, sort_keys=True) + "\n"
    if os.environ.get("DOCKMESH_UPDATE_GOLDEN") == "1":
        path.write_text(text)
    how = "DOCKMESH_UPDATE_GOLDEN=1 pytest tests/unit/policy/test_compile.py writes it"
    assert path.exists(), f"golden file {path} is missing ({how})"
    assert text == path.read_text(), f"{name} differs from the golden file ({how})"


def test_golden_enforce() -> None:
    rs = compile_policy(seg_policy(), chapter(), "enforce", "dockmesh")
    golden("seg-enforce.json", document(full_transaction(rs)))


def test_golden_audit_default_deny() -> None:
    policy = Policy(
        "deny",
        (("other", "allow"),),
        (Rule((Selector(),), (Selector(network="seg"),), (PortRange("udp", 53, 53),)),),
    )
    rs = compile_policy(policy, chapter(), "audit", "dmtx")
    golden("deny-audit.json", document(full_transaction(rs)))


def test_golden_remove() -> None:
    golden("remove.json", document(remove_transaction("dockmesh")))


def test_seg_verdicts() -> None:
    topo, policy = chapter(), seg_policy()
    rs = compile_policy(policy, topo)

    def verdict(s: str, d: str, proto: str = "tcp", port: int | None = 8080) -> str:
        return evaluate(rs, Packet(s, d, proto, port)).verdict

    assert verdict("10.242.0.2", "10.242.0.3") == "accept"  # gateway → api:8080
    assert verdict("10.242.0.2", "10.242.0.3", port=9005) == "accept"
    assert verdict("10.242.0.2", "10.242.0.3", "icmp", None) == "accept"
    assert verdict("10.242.0.2", "10.242.0.3", port=22) == "drop"
    assert verdict("10.242.0.3", "10.242.0.2") == "drop"  # api → gateway
    assert verdict("10.242.0.4", "10.242.0.3") == "drop"  # unlisted → api
    assert verdict("10.242.0.4", "10.242.0.2") == "drop"
    assert verdict("10.242.0.77", "10.242.0.3") == "drop"  # a container nobody has seen yet
    assert verdict("10.9.0.2", "10.9.0.3") == "accept"  # another network: default allow
    # Return traffic is not the policy's.
    assert (
        evaluate(rs, Packet("10.242.0.3", "10.242.0.2", "tcp", 40000, "established")).verdict
        == "accept"
    )
    # A connection to a published port (DNAT-ed to api) is judged like any other.
    assert (
        evaluate(rs, Packet("10.242.0.4", "10.242.0.3", "tcp", 8080, dnat=True)).verdict == "drop"
    )
    # The rule between two services is elements of a concatenated set; the stopped api
    # container's address is in none.
    pairs = rs.set("a_port_4").elements  # type: ignore[union-attr]
    assert "10.242.0.2 . 10.242.0.3 . tcp . 8080" in pairs
    assert "10.242.0.2 . 10.242.0.3 . tcp . 9000-9010" in rs.set("a_range_4").elements  # type: ignore[union-attr]
    assert not any("10.242.0.9" in e for e in pairs)
    assert rs.set("n0_4").elements == frozenset({"10.242.0.0/24"})  # type: ignore[union-attr]


def test_both_sides_of_an_allowed_flow_are_bound_to_their_ports() -> None:
    """gateway may reach api: a reply forged as api (or a packet forged as gateway) from
    another port is no part of their flow, though conntrack would say established."""
    topo = chapter()
    ports = ports_of(topo)
    rs = compile_policy(seg_policy(), topo, ports=ports)
    port = {c.name: ports[(c.id, "seg")] for c in topo.containers if c.name != "old"}
    gw, api = ("10.242.0.2", port["gw"]), ("10.242.0.3", port["api"])
    for (src, real), (dst, _) in ((gw, api), (api, gw)):
        br = bridge_of(topo, "seg")
        for on, verdict in ((real, "accept"), (port["oth"], "drop")):
            packet = Packet(src, dst, "tcp", 40000, "established", iif=br, oif=br, port=on)
            assert evaluate(rs, packet).verdict == verdict, (src, on)


def test_audit_drops_nothing_but_marks_it() -> None:
    rs = compile_policy(seg_policy(), chapter(), "audit")
    out = evaluate(rs, Packet("10.242.0.3", "10.242.0.2", "tcp", 8080))
    assert out.verdict == "accept" and out.audited


def test_structure_depends_on_the_policy_alone() -> None:
    topo = chapter()
    a = compile_policy(seg_policy(), topo)
    moved = topology(
        [network("seg", "10.242.0.0/24")],
        [container("api", {"seg": "10.242.0.50"}, {"dockmesh.service": "api"})],
    )
    b = compile_policy(seg_policy(), moved)
    assert a.structure_hash == b.structure_hash and a.rules == b.rules
    delta = element_delta(a.elements(), b)
    assert delta is not None
    verbs = [next(iter(c)) for c in delta]
    assert verbs == sorted(verbs, key=lambda v: v != "delete")  # deletions first
    assert compile_policy(seg_policy(), topo, "audit").structure_hash != a.structure_hash
    assert element_delta(a.elements(), compile_policy(Policy("deny"), topo)) is None
    assert element_delta(a.elements(), a) == []


# --- the compiled ruleset agrees with the model ------------------------------------------------

SERVICES = ["a", "b", "c"]
LABELS = st.fixed_dictionaries(
    {},
    optional={
        "dockmesh.service": st.sampled_from(SERVICES),
        "com.docker.compose.service": st.sampled_from(SERVICES),
        "dockmesh.project": st.sampled_from(["p", "q"]),
        "team": st.sampled_from(["x", "y"]),
    },
)
NETS = ["n0", "n1", "n2"]


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    nets = [
        network(n, f"10.{i}.0.0/24" if i < 2 or draw(st.booleans()) else None)
        for i, n in enumerate(NETS)
    ]
    count = draw(st.integers(0, 7))
    cs = []
    for k in range(count):
        on: dict[str, str | tuple[str, str | None]] = {}
        for i, n in enumerate(NETS):
            if draw(st.booleans()):
                v4 = f"10.{i}.0.{k + 2}" if nets[i].ipam else f"10.99.{i}.{k + 2}"
                v6 = f"fd00:{i}::{k + 2}" if draw(st.booleans()) else None
                on[n] = (v4, v6)
        state = draw(st.sampled_from(["running", "running", "exited"]))
        cs.append(container(f"c{k}", on, draw(LABELS), state=state))
    return topology(nets, cs)


CONTAINERS = st.builds(
    Selector,
    service=st.sampled_from([None, None, *SERVICES]),
    container=st.sampled_from([None, None, None, "c0", "c1"]),
    network=st.sampled_from([None, None, *NETS]),
    labels=st.sampled_from([(), (), (("team", "x"),), (("team", None),)]),
    project=st.sampled_from([None, None, "p"]),
)
ADDRESSES = st.sampled_from(
    [
        Selector(cidr="10.0.0.0/24"),
        Selector(cidr="10.1.0.0/16"),
        Selector(cidr="10.0.0.2/32"),
        Selector(cidr="fd00:1::/64"),
        Selector(world=True),
    ]
)
SELECTOR = st.one_of(CONTAINERS, CONTAINERS, CONTAINERS, ADDRESSES)
PORTS = st.lists(
    st.sampled_from(
        [
            PortRange("tcp", 80, 80),
            PortRange("tcp", 8000, 8100),
            PortRange("udp", 53, 53),
            PortRange("icmp"),
            PortRange("sctp"),
        ]
    ),
    max_size=3,
    unique=True,
).map(tuple)
POLICIES = st.builds(
    Policy,
    default=st.sampled_from(["allow", "deny"]),
    networks=st.dictionaries(st.sampled_from(NETS), st.sampled_from(["allow", "deny"])).map(
        lambda d: tuple(sorted(d.items()))
    ),
    rules=st.lists(
        st.builds(
            Rule,
            st.lists(SELECTOR, min_size=1, max_size=2, unique=True).map(tuple),
            st.lists(SELECTOR, min_size=1, max_size=2, unique=True).map(tuple),
            PORTS,
            st.sampled_from(["allow", "allow", "deny"]),
        ),
        max_size=4,
    ).map(tuple),
)
PROBES = [
    ("tcp", 80),
    ("tcp", 8050),
    ("tcp", 22),
    ("udp", 53),
    ("udp", 54),
    ("icmp", None),
    ("sctp", 9),
]


def ports_of(topo: Topology) -> PortMap:
    """Each running endpoint's bridge port, named as Docker would (veth + a number)."""
    out: dict[tuple[str, str], str] = {}
    for k, c in enumerate(topo.containers):
        for j, a in enumerate(c.attachments):
            out[(c.id, a.network)] = f"veth{k:03d}{j}"
    return out


def bridge_of(topo: Topology, network_name: str) -> str | None:
    n = next(n for n in topo.networks if n.name == network_name)
    return bridge_name(n)


@settings(max_examples=300, deadline=None)
@given(topologies(), POLICIES)
def test_compiled_verdict_equals_the_model_for_every_pair(topo: Topology, policy: Policy) -> None:
    ports = ports_of(topo)
    rs = compile_policy(policy, topo, ports=ports)
    audit = compile_policy(policy, topo, "audit", ports=ports)
    running = [c for c in topo.containers if c.running]
    for s in running:
        for d in running:
            if s is d:
                continue
            for sa in s.attachments:
                da = d.attachment(sa.network_id)
                if da is None:
                    continue
                br = bridge_of(topo, sa.network)
                for fam in ("ipv4", "ipv6"):
                    saddr, daddr = getattr(sa, fam), getattr(da, fam)
                    if saddr is None or daddr is None:
                        continue
                    family = 4 if fam == "ipv4" else 6
                    for proto, port in PROBES:
                        model = decide(policy, s, d, sa.network, proto, port, family).allowed
                        packet = Packet(
                            saddr,
                            daddr,
                            proto,
                            port,
                            iif=br,
                            oif=br,
                            port=ports[(s.id, sa.network)],
                        )
                        # Leaving by the destination's own port changes nothing.
                        packet = dataclasses.replace(packet, out_port=ports[(d.id, sa.network)])
                        out = evaluate(rs, packet)
                        assert (out.verdict == "accept") == model, (
                            s.name,
                            d.name,
                            sa.network,
                            fam,
                            proto,
                            port,
                            out.rule,
                        )
                        assert evaluate(audit, packet).verdict == "accept"
                        assert evaluate(audit, packet).audited == (not model)
                    claimed = rs.set(f"claimed_{family}")
                    bound = claimed is not None
                    # Forged into a flow conntrack knows (the addresses and ports are all it
                    # knows a flow by): judged as the same packet would be as a new one.
                    if claimed is not None and saddr in claimed.elements:
                        for proto, port in PROBES:
                            new = Packet(saddr, daddr, proto, port, iif=br, oif=br, port="veth999")
                            est = dataclasses.replace(new, ct_state="established")
                            assert evaluate(rs, est).verdict == evaluate(rs, new).verdict
                    # A bound address is delivered by its own port only (not to a port that
                    # claimed it with ARP or neighbour discovery), established traffic too.
                    if claimed is not None and daddr in claimed.elements:
                        stolen = Packet(saddr, daddr, "udp", 53, "established", iif=br, oif=br,
                                        port=ports[(s.id, sa.network)], out_port="veth999")  # fmt: skip
                        assert evaluate(rs, stolen).verdict == "drop"
                    # Any packet in a VLAN tag from a container's port is dropped.
                    tagged = Packet(
                        saddr, daddr, "udp", 53, iif=br, oif=br, port=ports[(s.id, sa.network)],
                        tagged=True,
                    )  # fmt: skip
                    assert evaluate(rs, tagged).verdict == "drop"
                    # The same packet from another port (a forged source) or from an address
                    # nobody has confirmed is accepted by no rule about containers; a `cidr`
                    # or `world` rule is about addresses, whoever sends from them, unless the
                    # address is bound to another container's port.
                    for forged in (
                        Packet(saddr, daddr, "tcp", 80, iif=br, oif=br, port="veth999"),
                        Packet(saddr, daddr, "icmp", None, iif=br, oif=br, port="veth999"),
                    ):
                        out = evaluate(rs, forged)
                        if out.rule is None or out.rule.action != "accept":
                            continue
                        assert out.rule.origin[0] != "rules", out.rule
                        if out.rule.origin[0] == "rule":
                            index = out.rule.origin[1]
                            assert isinstance(index, int)
                            assert any(x.is_address for x in policy.rules[index].sources)
                            assert not (bound and out.unconfirmed), out.rule


@settings(max_examples=100, deadline=None)
@given(topologies(), topologies(), POLICIES)
def test_element_delta_turns_one_ruleset_into_the_other(
    t1: Topology, t2: Topology, policy: Policy
) -> None:
    a = compile_policy(policy, t1, ports=ports_of(t1))
    b = compile_policy(policy, t2, ports=ports_of(t2))
    delta = element_delta(a.elements(), b)
    assert delta is not None
    # The kernel's double refuses what nft would: a missing element deleted, an element
    # added twice, overlapping elements in an interval set (so deletions must go first).
    nft = MemoryNft()
    nft.run(full_transaction(a))
    nft.run(delta)
    for s in b.sets:
        assert nft.elements(b.table, s.name, s.table_family) == s.elements, s.name


def test_the_compiled_table_carries_the_marker() -> None:
    topo = topology([network("n", "10.0.0.0/24")], [container("a", {"n": "10.0.0.2"})])
    rs = compile_policy(Policy(), topo, "enforce", "t")
    rules = [c["add"]["rule"] for c in full_transaction(rs) if "rule" in c.get("add", {})]
    assert rules[0]["comment"].startswith(HASH_TAG)


def dual_stack() -> Topology:
    v6 = [
        dataclasses.replace(n, enable_ipv6=True)
        for n in (
            network("d1", "10.30.0.0/24"),
            network("d2", "10.31.0.0/24"),
            network("quiet", "10.32.0.0/24", icc=False),
        )
    ]
    return topology(
        v6,
        [
            container("a", {"d1": ("10.30.0.2", "fd00:30::2")}, {"dockmesh.service": "a"}),
            container("b", {"d1": ("10.30.0.3", "fd00:30::3")}, {"dockmesh.service": "b"}),
            container("c", {"d2": ("10.31.0.2", "fd00:31::2")}),
            container("q1", {"quiet": ("10.32.0.2", "fd00:32::2")}),
            container("q2", {"quiet": ("10.32.0.3", "fd00:32::3")}),
        ],
    )


def test_neighbour_discovery_passes_a_default_deny_and_link_local_does_not() -> None:
    topo = dual_stack()
    policy = Policy("deny", (), (Rule((Selector(service="a"),), (Selector(service="b"),)),))
    ports = ports_of(topo)
    rs = compile_policy(policy, topo, ports=ports)
    br = bridge_of(topo, "d1")
    a_port = ports[(topo.containers[0].id, "d1")]
    b_port = ports[(topo.containers[1].id, "d1")]
    for kind in ("nd-neighbor-solicit", "nd-neighbor-advert", "nd-router-solicit"):
        nd = Packet(
            "fe80::42:aff:fe1e:3", "fe80::42:aff:fe1e:2", "icmp", None,
            iif=br, oif=br, port=b_port, icmp_type=kind, hoplimit=255,
        )  # fmt: skip
        assert evaluate(rs, nd).verdict == "accept", kind
    routed = Packet(
        "fd00:30::3", "fd00:30::2", "icmp", None,
        iif=br, oif=br, port=b_port, icmp_type="nd-neighbor-advert", hoplimit=254,
    )  # fmt: skip
    assert evaluate(rs, routed).verdict == "drop"  # not link-local: the policy decides
    ping_ll = Packet("fe80::42:aff:fe1e:2", "fe80::42:aff:fe1e:3", "icmp", None,
                     iif=br, oif=br, port=a_port)  # fmt: skip
    assert evaluate(rs, ping_ll).verdict == "drop"
    # The allowed pair over both families; the reverse direction over neither.
    for s_, d_ in (("10.30.0.2", "10.30.0.3"), ("fd00:30::2", "fd00:30::3")):
        assert evaluate(rs, Packet(s_, d_, "tcp", 80, iif=br, oif=br, port=a_port)).verdict == (
            "accept"
        )
        assert evaluate(rs, Packet(d_, s_, "tcp", 80, iif=br, oif=br, port=b_port)).verdict == (
            "drop"
        )


def test_docker_isolation_holds_for_ipv6_as_for_ipv4() -> None:
    topo = dual_stack()
    ports = ports_of(topo)
    rs = compile_policy(Policy(), topo, ports=ports)  # allows everything itself
    d1, d2, quiet = (bridge_of(topo, n) for n in ("d1", "d2", "quiet"))
    a_port = ports[(topo.containers[0].id, "d1")]
    q_port = ports[(topo.containers[3].id, "quiet")]
    across6 = Packet("fd00:30::2", "fd00:31::2", "tcp", 80, iif=d1, oif=d2, port=a_port)
    assert evaluate(rs, across6).verdict == "drop"
    across4 = Packet("10.30.0.2", "10.31.0.2", "tcp", 80, iif=d1, oif=d2, port=a_port)
    assert evaluate(rs, across4).verdict == "accept"  # Docker's own rules drop it
    inside = Packet("fd00:30::2", "fd00:30::3", "tcp", 80, iif=d1, oif=d1, port=a_port)
    assert evaluate(rs, inside).verdict == "accept"
    no_icc = Packet("fd00:32::2", "fd00:32::3", "tcp", 80, iif=quiet, oif=quiet, port=q_port)
    assert evaluate(rs, no_icc).verdict == "drop"
    out = Packet("fd00:30::2", "fd00:99::1", "tcp", 80, iif=d1, oif="eth0", port=a_port)
    assert evaluate(rs, out).verdict == "accept"


def test_a_deny_rule_wins_over_an_allow_rule_and_a_new_bridge_is_denied() -> None:
    topo = dual_stack()
    ports = ports_of(topo)
    a, b = Selector(service="a"), Selector(service="b")
    policy = Policy(
        "deny",
        (),
        (
            Rule((a,), (b,)),
            Rule((Selector(cidr="10.30.0.0/24"),), (b,), (PortRange("tcp", 22, 22),), "deny"),
        ),
    )
    rs = compile_policy(policy, topo, ports=ports)
    br = bridge_of(topo, "d1")
    port = ports[(topo.containers[0].id, "d1")]
    ok = Packet("10.30.0.2", "10.30.0.3", "tcp", 80, iif=br, oif=br, port=port)
    ssh = Packet("10.30.0.2", "10.30.0.3", "tcp", 22, iif=br, oif=br, port=port)
    assert evaluate(rs, ok).verdict == "accept"
    out = evaluate(rs, ssh)
    assert out.verdict == "drop" and out.rule is not None and out.rule.comment == "deny rule 2"
    assert (
        decide(policy, topo.containers[0], topo.containers[1], "d1", "tcp", 22)
        .text(policy)
        .startswith("rule 2 denies it")
    )
    # A network made while no agent ran: its subnet is in no set, its bridge name says Docker.
    new = Packet("10.77.0.2", "10.77.0.3", "tcp", 80, iif="br-0123456789ab", oif="br-0123456789ab")
    assert evaluate(rs, new).verdict == "drop"
    # The world reaching a container through a published port: no rule denies it.
    world = Packet("192.0.2.9", "10.30.0.3", "tcp", 80, iif="eth0", oif=br, dnat=True)
    assert evaluate(rs, world).verdict == "accept"


def test_world_and_cidr_sides_egress() -> None:
    topo = dual_stack()
    ports = ports_of(topo)
    policy = Policy(
        "allow",
        (),
        (
            Rule((Selector(service="a"),), (Selector(world=True),), (), "deny"),
            Rule((Selector(service="b"),), (Selector(cidr="192.0.2.0/24"),), (), "deny"),
        ),
    )
    rs = compile_policy(policy, topo, ports=ports)
    br = bridge_of(topo, "d1")
    a_port = ports[(topo.containers[0].id, "d1")]
    b_port = ports[(topo.containers[1].id, "d1")]
    out = Packet("10.30.0.2", "198.51.100.7", "tcp", 443, iif=br, oif="eth0", port=a_port)
    assert evaluate(rs, out).verdict == "drop"
    inside = Packet("10.30.0.2", "10.30.0.3", "tcp", 443, iif=br, oif=br, port=a_port)
    assert evaluate(rs, inside).verdict == "accept"
    b_out = Packet("10.30.0.3", "192.0.2.1", "tcp", 443, iif=br, oif="eth0", port=b_port)
    assert evaluate(rs, b_out).verdict == "drop"
    b_other = Packet("10.30.0.3", "198.51.100.7", "tcp", 443, iif=br, oif="eth0", port=b_port)
    assert evaluate(rs, b_other).verdict == "accept"


def test_a_published_port_reached_through_the_host_is_judged_as_the_container() -> None:
    web = dataclasses.replace(
        container("web", {"d1": ("10.30.0.3", None)}, {"dockmesh.service": "web"}),
        ports=(PortBinding(8080, "tcp", "0.0.0.0", 30080),),
    )
    topo = topology(
        [network("d1", "10.30.0.0/24"), network("d2", "10.31.0.0/24")],
        [
            web,
            container("fe", {"d2": "10.31.0.2"}, {"dockmesh.service": "fe"}),
            container("ops", {"d2": "10.31.0.3"}, {"dockmesh.service": "ops"}),
        ],
    )
    policy = Policy(
        "deny",
        (),
        (
            Rule(
                (Selector(service="fe"),),
                (Selector(service="web"),),
                (PortRange("tcp", 8080, 8080),),
            ),
        ),
    )
    rs = compile_policy(policy, topo)
    assert rs.set("pub_4").elements == {"10.31.0.3 . tcp . 30080"}  # type: ignore[union-attr]
    by_proxy = Packet("10.31.0.3", "10.31.0.1", "tcp", 30080, hook="input")
    assert evaluate(rs, by_proxy).verdict == "drop"
    assert evaluate(rs, dataclasses.replace(by_proxy, saddr="10.31.0.2")).verdict == "accept"
    assert evaluate(rs, dataclasses.replace(by_proxy, dport=22)).verdict == "accept"

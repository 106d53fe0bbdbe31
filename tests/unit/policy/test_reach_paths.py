"""`why`'s analysis on every real path, over values: both families on dual-stack networks
(Docker 20.10 isolates IPv4 only), the address a name resolves to from the source, a
host-network destination, shared namespaces, and what a command line's names stand for."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.codecs.procnet import Listener
from dockmesh.model.policy import Policy, PortRange, Rule, Selector
from dockmesh.model.topology import Container, IpamPool, Network, Topology
from dockmesh.policy.reach import (
    Analysis,
    Observations,
    analyze,
    families_of,
    holders_of,
    resolve_name,
)
from tests.unit.topos import _id, container, topology

TCP80 = PortRange("tcp", 80, 80)


def net6(name: str, i: int, *, internal: bool = False, icc: bool = True) -> Network:
    options = {} if icc else {"com.docker.network.bridge.enable_icc": "false"}
    return Network(
        _id(name),
        name,
        "local",
        "bridge",
        internal=internal,
        enable_ipv6=True,
        ipam=(IpamPool(f"10.{i}.0.0/24"), IpamPool(f"fd00:{i}::/64")),
        options=options,
    )


def dual() -> Topology:
    return topology(
        [net6("a", 1), net6("b", 2), net6("quiet", 3, icc=False), net6("inner", 4, internal=True)],
        [
            container("x", {"a": ("10.1.0.2", "fd00:1::2"), "b": ("10.2.0.2", "fd00:2::2")}),
            # On b first, then a: the topology's first shared network is b.
            container("m", {"b": ("10.2.0.3", "fd00:2::3"), "a": ("10.1.0.3", "fd00:1::3")}),
            container("y", {"b": ("10.2.0.4", "fd00:2::4")}, aliases=["why"]),
            container("q1", {"quiet": ("10.3.0.2", "fd00:3::2")}),
            container("q2", {"quiet": ("10.3.0.3", "fd00:3::3")}),
            container("in1", {"inner": ("10.4.0.2", "fd00:4::2")}),
            container("v4", {"a": "10.1.0.9"}, {"com.docker.compose.service": "svc"}),
            container("v4b", {"a": "10.1.0.10"}, {"com.docker.compose.service": "svc"}),
            replace(container("hostly", {}), network_mode="host"),
            replace(container("hostly2", {}), network_mode="host"),
            replace(container("side", {}), network_mode=f"container:{_id('x')}"),
        ],
    )


def fam(a: Analysis, family: int) -> Analysis:
    return next(x for x in a.per_family if x.family == family)


def step(a: Analysis, check: str) -> str:
    return next(s.detail for s in a.steps if s.check == check)


# --- both families ----------------------------------------------------------------------------


def test_both_families_each_analysed_and_the_worse_decides() -> None:
    topo = dual()
    assert families_of(topo, "x", "m") == (4, 6)
    assert families_of(topo, "x", "v4") == (4,)
    a = analyze(topo, None, "x", "y")
    assert [f.family for f in a.per_family] == [4, 6]
    assert a.reachable and fam(a, 6).address == "fd00:2::4"
    assert a.steps[-1].check == "ipv6" and a.steps[-1].ok
    doc = a.to_json()
    assert [f["family"] for f in doc["families"]] == [4, 6]
    assert doc["address"] == "10.2.0.4"  # the first family's, as before


def test_enable_icc_false_drops_ipv4_only() -> None:
    a = analyze(dual(), None, "q1", "q2", TCP80)
    assert not a.reachable  # the worse: IPv4
    assert not fam(a, 4).reachable and fam(a, 6).reachable
    assert "IPv4 only" in step(fam(a, 6), "icc")
    # Where Docker writes ip6tables rules, IPv6 is isolated as IPv4.
    strict = analyze(dual(), None, "q1", "q2", TCP80, Observations(docker_ip6tables=True))
    assert not fam(strict, 6).reachable


def test_ipv6_between_networks_is_routed_unless_the_policy_drops_it() -> None:
    topo = dual()
    a = analyze(topo, None, "q1", "y", TCP80)
    v4, v6 = fam(a, 4), fam(a, 6)
    assert "Docker isolates" in step(v4, "shared_network")
    assert v6.reachable and "does not isolate IPv6" in step(v6, "shared_network")
    assert v6.address == "fd00:2::4" and "routed" in v6.summary
    # Any applied policy brings Docker's isolation to IPv6 (the table drops IPv6 between
    # two Docker bridges, as Docker drops IPv4), whatever its rules say: a policy never opens
    # what Docker closes.
    for policy in (
        Policy(default="deny"),
        Policy(networks=(("quiet", "deny"),)),
        Policy(
            default="deny",
            rules=(Rule((Selector(container="q1"),), (Selector(container="y"),), (TCP80,)),),
        ),
    ):
        under = fam(analyze(topo, policy, "q1", "y", TCP80), 6)
        assert not under.reachable, policy
        assert "Docker's isolation, for IPv6" in step(under, "policy"), policy


def test_an_internal_only_network_has_no_ipv6_route_out() -> None:
    a = analyze(dual(), None, "in1", "y")
    assert not fam(a, 6).reachable
    assert "no IPv6 route" in step(fam(a, 6), "shared_network")
    # Docker writing ip6tables rules: isolated as IPv4 is.
    strict = analyze(dual(), None, "q1", "y", observed=Observations(docker_ip6tables=True))
    assert "Docker isolates" in step(fam(strict, 6), "shared_network")


# --- the address a name resolves to from SRC --------------------------------------------------


def test_the_network_is_the_one_the_name_resolves_on() -> None:
    topo = dual()
    deny_a = Policy(networks=(("a", "deny"),))
    # Without asking the source's resolver: the first shared network that lets it through.
    blind = analyze(topo, deny_a, "x", "m")
    assert blind.reachable and blind.network == "b"
    seen = Observations(target="m", resolved={"m": ["10.1.0.3", "fd00:1::3"]})
    a = analyze(topo, deny_a, "x", "m", observed=seen)
    assert not a.reachable and a.network == "a" and a.address == "10.1.0.3"
    assert fam(a, 6).address == "fd00:1::3" and not fam(a, 6).reachable
    assert "resolves from the source to 10.1.0.3 (on a)" in step(a, "shared_network")
    # No AAAA answer: by address, and said.
    only4 = Observations(target="m", resolved={"m": ["10.1.0.3"]})
    v6 = fam(analyze(topo, None, "x", "m", observed=only4), 6)
    assert "no AAAA answer" in step(v6, "shared_network") and v6.network == "b"


# --- the host's network, one namespace ---------------------------------------------------------


def test_a_host_network_destination_is_reached_at_the_sources_gateway() -> None:
    topo = dual()
    seen = Observations(listening=[Listener("tcp", "0.0.0.0", 80)])
    a = analyze(topo, Policy(default="deny"), "v4", "hostly", TCP80, seen)
    assert a.reachable and a.address == "10.1.0.1" and a.network == "a"
    assert [s.check for s in a.steps] == ["running", "host_network", "listening"]
    assert "input hook, not forward" in step(a, "host_network")
    six = analyze(topo, None, "x", "hostly", TCP80, seen)
    assert fam(six, 6).address == "fd00:1::1"
    assert not fam(six, 6).reachable  # 0.0.0.0 takes no IPv6
    assert "0.0.0.0" in step(fam(six, 6), "listening")


def test_one_namespace_is_loopback_in_the_family_the_server_listens_on() -> None:
    topo = dual()
    for src, dst in (("x", "side"), ("side", "x"), ("hostly", "hostly2"), ("host", "hostly")):
        a = analyze(topo, Policy(default="deny"), src, dst)
        assert a.reachable and [s.check for s in a.steps] == ["running", "shared_namespace"], a
        assert a.address == "127.0.0.1" and len(a.per_family) == 1
    on6 = Observations(listening=[Listener("tcp", "::1", 80)])
    a = analyze(topo, None, "side", "x", TCP80, on6)
    assert a.reachable and a.address == "::1"
    assert "x's network namespace" in step(a, "shared_namespace")
    assert "side joined it" in step(a, "shared_namespace")


# --- names on the command line -----------------------------------------------------------------


def test_names_stand_for_containers_aliases_and_services() -> None:
    topo = dual()
    x = resolve_name(topo, "x")
    assert x.kind == "container" and [c.name for c in x.containers] == ["x"]
    assert resolve_name(topo, "host").kind == "host"
    why = resolve_name(topo, "why")
    assert why.kind == "alias" and [c.name for c in why.containers] == ["y"]
    svc = resolve_name(topo, "svc")
    assert svc.kind == "service" and [c.name for c in svc.containers] == ["v4", "v4b"]
    assert resolve_name(topo, "nothing").kind == "unknown"
    assert [c.name for c in holders_of(topo, ["fd00:2:0::4", "10.1.0.9", "bad"])] == ["v4", "y"]
    assert svc.to_json() == {"argument": "svc", "kind": "service", "containers": ["v4", "v4b"]}


# --- properties over random dual-stack topologies ---------------------------------------------

NETS = ("a", "b", "c")


@st.composite
def topologies(draw: st.DrawFn) -> Topology:
    nets = [
        net6(n, i + 1, internal=draw(st.booleans()), icc=draw(st.booleans()))
        for i, n in enumerate(NETS)
    ]
    cs: list[Container] = []
    for k in range(draw(st.integers(2, 5))):
        on = draw(st.lists(st.sampled_from(range(3)), min_size=1, max_size=3, unique=True))
        six = draw(st.booleans())
        addrs = {
            NETS[i]: (f"10.{i + 1}.0.{k + 2}", f"fd00:{i + 1}::{k + 2}" if six else None)
            for i in on
        }
        cs.append(container(f"c{k}", addrs, {"dockmesh.service": draw(st.sampled_from("st"))}))
    return topology(nets, cs)


POLICIES = (
    st.builds(
        Policy,
        default=st.sampled_from(["allow", "deny"]),
        networks=st.dictionaries(st.sampled_from(NETS), st.sampled_from(["allow", "deny"])).map(
            lambda d: tuple(sorted(d.items()))
        ),
        rules=st.lists(
            st.builds(
                Rule,
                st.just((Selector(service="s"),)),
                st.sampled_from([(Selector(service="t"),), (Selector(network="b"),)]),
                st.just(()),
            ),
            max_size=2,
        ).map(tuple),
    )
    | st.none()
)


@settings(max_examples=150, deadline=None)
@given(topologies(), POLICIES, st.booleans())
def test_the_verdict_is_the_worse_familys_and_ipv6_is_never_said_isolated_by_docker(
    topo: Topology, policy: Policy | None, ip6tables: bool
) -> None:
    seen = Observations(docker_ip6tables=ip6tables)
    for s in topo.containers:
        for d in topo.containers:
            if s is d:
                continue
            a = analyze(topo, policy, s.name, d.name, TCP80, seen)
            fams = families_of(topo, s.name, d.name)
            assert tuple(x.family for x in a.per_family) == fams
            assert a.reachable == all(x.reachable for x in a.per_family)
            for x in a.per_family:
                assert x.family == 4 or x.address is None or ":" in x.address
                if x.family == 6 and not ip6tables:
                    assert not any("Docker isolates" in st_.detail for st_ in x.steps), x
                    assert all(st_.ok for st_ in x.steps if st_.check == "icc"), x
            if ip6tables and fams == (4, 6) and _symmetric(s) and _symmetric(d):
                # Docker writing IPv6 rules: IPv6 is isolated exactly as IPv4.
                v4, v6 = a.per_family
                assert v4.reachable == v6.reachable, (v4, v6)


def _symmetric(c: Container) -> bool:
    return all(a.ipv4 and a.ipv6 for a in c.attachments)


@settings(max_examples=100, deadline=None)
@given(topologies())
def test_every_container_name_and_alias_resolves_to_its_holders(topo: Topology) -> None:
    for c in topo.containers:
        assert resolve_name(topo, c.name).containers == (c,)
        for a in c.attachments:
            assert c in holders_of(topo, [x for x in (a.ipv4, a.ipv6) if x])


def test_the_host_reaches_a_joined_container_at_its_owners_address() -> None:
    a = analyze(dual(), None, "host", "side")
    assert a.reachable and a.dst == "side" and a.address == "10.1.0.2"
    assert "side lives in x's network namespace" in a.summary


def test_an_audited_ipv6_drop_is_said_as_one_that_would_be() -> None:
    from dockmesh.policy.compile import compile_policy

    topo = dual()
    policy = Policy(default="deny")
    rs = compile_policy(policy, topo, "audit")
    a = analyze(topo, policy, "q1", "y", TCP80, ruleset=rs)
    v6 = fam(a, 6)
    assert v6.reachable and "would drop it" in step(v6, "policy")
    assert "(audit mode: logged, not dropped)" in step(v6, "policy")


@given(st.sampled_from(["apps", "web", "zz"]), st.booleans())
def test_tasks_on_the_ingress_network_talk_over_their_own_overlay(
    name: str, ingress_first: bool
) -> None:
    """Every task of a service with published ports is on the swarm's ingress network too;
    the connection between two tasks is analysed on their own overlay, whatever the names'
    or the attachments' order."""
    from dataclasses import replace as with_

    from tests.unit.topos import network

    ov = with_(network(name, "10.9.1.0/24"), driver="overlay", scope="swarm")
    ingress = with_(
        network("ingress", "10.0.0.0/24"), driver="overlay", scope="swarm", ingress=True
    )
    order = ["ingress", name] if ingress_first else [name, "ingress"]
    addrs = {"ingress": ("10.0.0.5", "10.0.0.6"), name: ("10.9.1.5", "10.9.1.6")}
    t1 = container("t1", {n: addrs[n][0] for n in order})
    t2 = container("t2", {n: addrs[n][1] for n in order})
    topo = topology([ov, ingress], [t1, t2])
    a = analyze(topo, None, "t1", "t2", PortRange("tcp", 8080, 8080), with_dns=False)
    assert a.network == name and a.address == "10.9.1.6"

"""`why`'s analysis over values: the steps, in order, with their verdicts."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from dockmesh.codecs.procnet import Listener
from dockmesh.model.policy import Policy, PortRange, Rule, Selector
from dockmesh.model.topology import Topology
from dockmesh.policy.reach import Analysis, Observations, Step, analyze, parse_port
from tests.unit.topos import container, network, topology


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


# --- a host-mode source, a container to itself, a stale table ---------------------------------


def small() -> Any:
    return topology(
        [network("n", "10.0.0.0/24"), network("m", "10.1.0.0/24")],
        [
            container("a", {"n": "10.0.0.2"}, {"dockmesh.service": "a"}),
            container("b", {"n": "10.0.0.3"}, {"dockmesh.service": "b"}),
            container("lonely", {"m": "10.1.0.2"}),
            replace(container("hostly", {}), network_mode="host"),
        ],
    )


def test_a_host_mode_source_is_the_host() -> None:
    deny = Policy(default="deny")
    a = analyze(small(), deny, "hostly", "b")
    assert a.reachable and a.src == "hostly"
    assert a.steps[0].check == "host_network"
    assert "network_mode host" in a.summary and a.address == "10.0.0.3"
    # The same verdict as from the host itself.
    assert analyze(small(), deny, "host", "b").reachable


def test_a_container_reaches_itself_whatever_the_policy() -> None:
    for policy in (None, Policy(default="deny"), Policy(networks=(("n", "deny"),))):
        a = analyze(small(), policy, "a", "a")
        assert a.reachable, a
        assert [s.check for s in a.steps] == ["running", "self"]
        assert "forward hook" in a.steps[1].detail
        assert a.address == "10.0.0.2"
    # Even one on a network of its own, shared with nobody.
    assert analyze(small(), None, "lonely", "lonely").reachable


def test_a_stale_table_is_said_in_the_policy_step() -> None:
    stale = "table inet t is not in sync with the topology"
    a = analyze(small(), Policy(), "a", "b", observed=Observations(policy_stale=stale))
    step = next(s for s in a.steps if s.check == "policy")
    assert stale in step.detail
    fresh = analyze(small(), Policy(), "a", "b")
    assert "not in sync" not in next(s for s in fresh.steps if s.check == "policy").detail


def joined() -> Topology:
    """`docker run --network container:a`: `side` lives in a's namespace, `orphan` in the
    namespace of a container the topology lacks, `late` in that of a stopped one."""
    base = small()
    a = base.container("a")
    assert a is not None
    return topology(
        [network("n", "10.0.0.0/24"), network("m", "10.1.0.0/24")],
        [
            *base.containers,
            replace(container("side", {}), network_mode=f"container:{a.id}"),
            replace(container("orphan", {}), network_mode="container:" + "f" * 64),
            container("down", {"n": "10.0.0.9"}, state="exited"),
            replace(container("late", {}), network_mode="container:down"),
        ],
    )


def test_a_container_in_anothers_namespace_is_analysed_as_that_one() -> None:
    """Seen as `dockmesh why adv2q-shared adv2q-a2 --probe` with adv2q-shared started with
    `--network container:adv2q-a1`: the analysis said "no network in common: adv2q-shared is
    on no network" (exit 1) while the probe got an echo reply; and the reverse had "nothing
    to probe (no IPv4 address)"."""
    topo = joined()
    deny_b = Policy(
        default="deny", rules=(Rule((Selector(service="b"),), (Selector(service="a"),)),)
    )
    out = analyze(topo, None, "side", "b")
    assert out.reachable and out.src == "side" and out.dst == "b"
    assert out.address == "10.0.0.3" and out.network == "n"
    assert "side lives in a's network namespace" in out.steps[0].detail
    back = analyze(topo, deny_b, "b", "side")  # the policy sees a's address: a's rules
    assert back.reachable and back.address == "10.0.0.2", back
    assert not analyze(topo, deny_b, "side", "b").reachable  # a → b is not allowed
    # Into its owner's namespace (and back): one namespace, over loopback, no hook between.
    for src, dst in (("side", "a"), ("a", "side")):
        into = analyze(topo, Policy(default="deny"), src, dst)
        assert [s.check for s in into.steps] == ["running", "shared_namespace"], into
        assert into.reachable and into.address == "127.0.0.1"
        assert "share one network namespace, a's" in into.steps[1].detail
    assert not analyze(topo, None, "side", "lonely").reachable
    for name, why in (("orphan", "does not exist"), ("late", "down is not running")):
        a = analyze(topo, None, name, "b")
        assert not a.reachable and why in a.summary, a


def test_an_unreadable_record_with_its_table_in_force_is_not_dockers_rules_only() -> None:
    """Seen as `why A B` with `$DOCKMESH_POLICY_DIR/<table>.json` garbled while the agent kept
    the table ('keeping the table as it is'): the policy step said "Docker's rules only" and
    ✓, while the kernel dropped the echo (the probe disagreed)."""
    note = "the recorded policy is unreadable (t.json: Expecting value)"
    stale = "table inet t is in the kernel, with rules the record no longer says"
    seen = Observations(policy_note=note, policy_stale=stale)
    detail = checks(analyze(small(), None, "a", "b", observed=seen))["policy"].detail
    assert stale in detail and "Docker's rules only" not in detail
    alone = Observations(policy_note="no policy applied")
    detail = checks(analyze(small(), None, "a", "b", observed=alone))["policy"].detail
    assert detail == "no policy applied: Docker's rules only"

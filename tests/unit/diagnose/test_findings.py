"""The doctor's plan and findings over gathered evidence (no namespace entered)."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.codecs.procnet import Listener, Route
from dockmesh.codecs.resolvconf import ResolvConf
from dockmesh.diagnose.findings import (
    DnsAnswer,
    Evidence,
    Link,
    Ping,
    findings,
    plan_checks,
    sections,
)
from dockmesh.model.policy import Policy, Rule, Selector
from dockmesh.model.topology import (
    Attachment,
    Container,
    EngineInfo,
    IpamPool,
    Network,
    PortBinding,
    Topology,
)

NET = Network("n1", "app", "local", "bridge", ipam=(IpamPool("10.9.0.0/24", "10.9.0.1"),))
OTHER = Network(
    "n2",
    "other",
    "local",
    "bridge",
    ipam=(IpamPool("10.8.0.0/24"),),
    options={"com.docker.network.driver.mtu": "1400"},
)


def ctr(
    name: str,
    ip: str,
    *,
    project: str | None = None,
    net: Network = NET,
    aliases: tuple[str, ...] = (),
    ports: tuple[PortBinding, ...] = (),
    health: str | None = None,
    state: str = "running",
) -> Container:
    labels = {"dockmesh.project": project} if project else {}
    return Container(
        id=(name * 64)[:64],
        name=name,
        engine="local",
        image="x",
        state=state,
        pid=1,
        health=health,
        hostname=name,
        attachments=(
            Attachment(
                net.id,
                net.name,
                ipv4=ip,
                mac=f"02:42:0a:09:00:{ip.split('.')[-1]:0>2}",
                aliases=aliases,
            ),
        ),
        ports=ports,
        labels=labels,
    )


def topo(*cs: Container) -> Topology:
    return Topology(1, (EngineInfo("local", "unix:///x"),), (NET, OTHER), cs)


def healthy_facts(c: Container, t: Topology) -> Evidence:
    plan = plan_checks(t, c, {"n1": 1500})
    a = c.attachments[0]
    return Evidence(
        c,
        plan,
        links=(
            Link("lo", None, 65536, "unknown", ("127.0.0.1/8",)),
            Link("eth0", a.mac, 1500, "up", (f"{a.ipv4}/24",)),
        ),
        routes=(Route("0.0.0.0/0", "10.9.0.1", "eth0"), Route("10.9.0.0/24", None, "eth0")),
        resolv=ResolvConf(("127.0.0.11",), (), ("ndots:0",)),
        listeners=(
            Listener("tcp", "0.0.0.0", 8080),
            Listener("udp", "127.0.0.11", 40000),
            Listener("tcp", "127.0.0.11", 40001),
        ),
        dns=tuple(DnsAnswer(q, q.expected, "NOERROR") for q in plan.questions),
        pings=tuple(Ping(k, n, addr, 0.1) for k, n, addr in plan.pings),
    )


def codes(f: Evidence) -> list[str]:
    return [x.code for x in findings(f)]


def test_a_healthy_container_has_no_findings_and_docker_dns_is_not_its_listener() -> None:
    web, db = ctr("web", "10.9.0.2", project="p"), ctr("db", "10.9.0.3", project="p")
    t = topo(web, db)
    f = healthy_facts(web, t)
    assert codes(f) == []
    assert [q.name for q in f.plan.questions] == ["db"]
    assert [(k, a) for k, _, a in f.plan.pings] == [("gateway", "10.9.0.1"), ("peer", "10.9.0.3")]
    s = sections(f)
    assert s["listening"] == [{"proto": "tcp", "address": "0.0.0.0", "port": 8080}]


def test_loopback_only_listener_is_found_and_an_error_when_published() -> None:
    web = ctr("web", "10.9.0.2")
    f = healthy_facts(web, topo(web))
    f.listeners = (Listener("tcp", "127.0.0.1", 9000),)
    (found,) = findings(f)
    assert (found.severity, found.code) == ("warning", "loopback-only")
    assert "127.0.0.1:9000" in found.message and "0.0.0.0:9000" in found.fix
    pub = ctr("web", "10.9.0.2", ports=(PortBinding(9000, "tcp", "0.0.0.0", 19000),))
    f = healthy_facts(pub, topo(pub))
    f.listeners = (Listener("tcp", "127.0.0.1", 9000),)
    assert [(x.severity, x.code) for x in findings(f)] == [("error", "loopback-only")]


def test_published_port_with_nothing_listening() -> None:
    web = ctr("web", "10.9.0.2", ports=(PortBinding(80, "tcp", None, 8000),))
    f = healthy_facts(web, topo(web))
    assert codes(f) == ["published-not-listening"]


def test_mtu_mismatch_no_route_unhealthy_and_no_default_route() -> None:
    web, db = ctr("web", "10.9.0.2", health="unhealthy"), ctr("db", "10.9.0.3")
    f = healthy_facts(web, topo(web, db))
    f.links = (Link("eth0", web.attachments[0].mac, 1450, "up", ()),)
    f.routes = ()
    got = codes(f)
    assert got[:2] == ["unhealthy", "no-route"]
    assert set(got) == {"unhealthy", "no-route", "mtu-mismatch", "no-default-route"}


def test_network_none_is_said_as_chosen_without_advice_the_engine_refuses() -> None:
    """`docker run --network none`: only loopback, no default route. The advice was
    `docker network connect bridge`, which the engine refuses for such a container."""
    alone = replace(ctr("alone", "10.9.0.2"), attachments=(), network_mode="none")
    f = healthy_facts(ctr("alone", "10.9.0.2"), topo(alone))
    f = replace(f, container=alone, plan=plan_checks(topo(alone), alone, {}))
    f.links = (Link("lo", None, 65536, "unknown", ("127.0.0.1/8",)),)
    f.routes = ()
    got = findings(f)
    assert [(x.severity, x.code) for x in got if x.code != "no-listeners"] == [
        ("info", "network-none")
    ]
    assert all("network connect" not in x.fix for x in got)


def test_name_resolving_to_several_projects() -> None:
    web = ctr("web", "10.9.0.2", project="a")
    x = ctr("x", "10.9.0.3", project="a", aliases=("db",))
    y = ctr("y", "10.9.0.4", project="b", aliases=("db",))
    f = healthy_facts(web, topo(web, x, y))
    (q,) = [q for q in f.plan.questions if q.name == "db"]
    assert q.expected == ("10.9.0.3", "10.9.0.4")
    found = [x for x in findings(f) if x.code == "dns-ambiguous"]
    assert len(found) == 1 and "x (a)" in found[0].message and "y (b)" in found[0].message


def test_peer_on_no_shared_network_and_unresolved_and_unreachable() -> None:
    web = ctr("web", "10.9.0.2", project="p")
    db = ctr("db", "10.9.0.3", project="p")
    lonely = ctr("cache", "10.8.0.2", project="p", net=OTHER)
    f = healthy_facts(web, topo(web, db, lonely))
    f.dns = tuple(DnsAnswer(d.question, None) for d in f.dns)
    f.pings = tuple(Ping(p.kind, p.target, p.address, None) for p in f.pings)
    assert set(codes(f)) == {
        "no-shared-network",
        "dns-unresolved",
        "peer-unreachable",
        "gateway-unreachable",
    }


def test_not_running_is_the_only_finding() -> None:
    web = ctr("web", "10.9.0.2", state="exited")
    f = Evidence(web, plan_checks(topo(web), web))
    assert codes(f) == ["not-running"]
    assert f.plan.pings == ()


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["tcp", "udp"]), st.ip_addresses(v=4).map(str), st.integers(1, 65535)
        ),
        max_size=6,
    ),
    st.lists(st.integers(1, 65535), max_size=3),
    st.integers(576, 9000),
)
def test_findings_always_have_a_severity_and_a_message(
    listeners: list[tuple[str, str, int]], published: list[int], mtu: int
) -> None:
    web = ctr("web", "10.9.0.2", ports=tuple(PortBinding(p, "tcp", None, p) for p in published))
    f = healthy_facts(web, topo(web, ctr("db", "10.9.0.3")))
    f.listeners = tuple(Listener(*x) for x in listeners)
    f.links = (Link("eth0", web.attachments[0].mac, mtu, "up", ()),)
    out = findings(f)
    assert all(x.severity in ("error", "warning", "info") and x.message for x in out)
    severities = [x.severity for x in out]
    assert severities == sorted(severities, key=["error", "warning", "info"].index)
    for p in published:
        served = any(proto == "tcp" and port == p for proto, _, port in listeners)
        assert served or any(x.code == "published-not-listening" for x in out)


# --- the container's own names, project files, the host's network, shared namespaces ---------


def test_a_name_the_container_answers_to_itself_is_no_unexpected_answer() -> None:
    """Replicas of one service share an alias: Docker's DNS answers it with every replica,
    the asking one too. That read as 'resolves to A, B, expected B'."""
    one = ctr("api-1", "10.9.0.2", project="p", aliases=("api",))
    two = ctr("api-2", "10.9.0.3", project="p", aliases=("api",))
    f = healthy_facts(one, topo(one, two))
    (q,) = [q for q in f.plan.questions if q.name == "api"]
    assert q.expected == ("10.9.0.2", "10.9.0.3")
    assert {c for c, _ in q.holders} == {"api-1", "api-2"}
    assert codes(f) == []
    # Another project's container carrying this one's own name as an alias: the name is its
    # own, not a collision of projects.
    web = ctr("web", "10.9.0.2", project="a")
    other = ctr("x", "10.9.0.4", project="b", aliases=("web",))
    f = healthy_facts(web, topo(web, other))
    (q,) = [q for q in f.plan.questions if q.name == "web"]
    assert q.expected == ("10.9.0.2", "10.9.0.4") and q.holders == (("x", "b"),)
    f.dns = tuple(
        DnsAnswer(d.question, ("10.9.0.2", "10.9.0.4"), "NOERROR") if d.question is q else d
        for d in f.dns
    )
    assert "dns-unexpected" not in codes(f) and "dns-ambiguous" not in codes(f)


def filed(c: Container) -> Container:
    return replace(c, labels={**c.labels, "com.docker.compose.service": c.name})


def test_members_a_project_file_puts_apart_get_no_connect_advice() -> None:
    web = filed(ctr("web", "10.9.0.2", project="p"))
    db = filed(ctr("db", "10.8.0.2", project="p", net=OTHER))
    f = healthy_facts(web, topo(web, db))
    (said,) = [x for x in findings(f) if x.code in ("separated", "no-shared-network")]
    assert (said.severity, said.code) == ("info", "separated")
    assert "project file" in said.message and said.fix == ""
    # A policy rule between them: meant to talk, so a warning; the fix is the file's.
    rule = Rule((Selector(container="web"),), (Selector(container="db"),))
    plan = plan_checks(topo(web, db), web, {"n1": 1500}, policy=Policy(rules=(rule,)))
    (warn,) = [x for x in findings(replace(f, plan=plan)) if x.code == "no-shared-network"]
    assert warn.severity == "warning" and "allows traffic" in warn.message
    assert "docker network connect" not in warn.fix
    # No file, but a policy that denies by default: kept apart on purpose too.
    web, db = ctr("web", "10.9.0.2", project="p"), ctr("db", "10.8.0.2", project="p", net=OTHER)
    plan = plan_checks(topo(web, db), web, {"n1": 1500}, policy=Policy(default="deny"))
    f = replace(healthy_facts(web, topo(web, db)), plan=plan)
    assert "separated" in codes(f) and "no-shared-network" not in codes(f)


def test_a_host_network_container_is_one_finding() -> None:
    hostly = replace(ctr("hostly", "10.9.0.9", project="p"), network_mode="host", attachments=())
    members = [ctr(f"m{i}", f"10.8.0.{i + 2}", project="p", net=OTHER) for i in range(4)]
    t = topo(hostly, *members)
    f = Evidence(hostly, plan_checks(t, hostly))
    assert [(x.severity, x.code) for x in findings(f)] == [("info", "host-network")]
    # And no member is told to connect to it.
    f = healthy_facts(members[0], t)
    assert "no-shared-network" not in codes(f)


def test_a_shared_namespace_is_named_from_both_sides() -> None:
    owner = ctr("owner", "10.9.0.2", project="p")
    side = replace(
        ctr("side", "10.9.0.9", project="p"),
        network_mode=f"container:{owner.id}",
        attachments=(),
    )
    peer = ctr("peer", "10.9.0.3", project="p")
    t = topo(owner, side, peer)
    joined = plan_checks(t, side)
    assert joined.owner == "owner" and [n.name for n in joined.networks] == ["app"]
    assert [p.name for p in joined.peers] == ["peer"] and joined.strangers == ()
    f = Evidence(side, joined)
    (said,) = [x for x in findings(f) if x.code == "shared-namespace"]
    assert "side lives in owner's network namespace" in said.message
    f = healthy_facts(owner, t)
    assert f.plan.sharers == ("side",) and "no-shared-network" not in codes(f)
    (said,) = [x for x in findings(f) if x.code == "shared-namespace"]
    assert "side lives in owner's" in said.message
    assert sections(f)["namespace"] == {"owner": None, "shared_with": ["side"]}


@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from(["app", "other", "host", "joined"])),
        min_size=1,
        max_size=6,
    )
)
def test_no_connect_advice_between_members_a_file_made(
    members: list[tuple[bool, str]],
) -> None:
    me = filed(ctr("me", "10.9.0.2", project="p"))
    cs = [me]
    for i, (by_file, where) in enumerate(members):
        c = ctr(f"c{i}", f"10.8.0.{i + 2}", project="p", net=OTHER if where == "other" else NET)
        if where == "host":
            c = replace(c, network_mode="host", attachments=())
        if where == "joined":
            c = replace(c, network_mode=f"container:{me.id}", attachments=())
        cs.append(filed(c) if by_file else c)
    out = findings(healthy_facts(me, topo(*cs)))
    for x in out:
        if "docker network connect" in x.fix and x.code == "no-shared-network":
            name = x.message.split()[0]
            stranger = next(c for c in cs if c.name == name)
            assert "com.docker.compose.service" not in stranger.labels
            assert stranger.network_mode == ""
    assert sum(1 for x in out if x.code == "separated") <= 1


QUIET = Network(
    "n3",
    "quiet",
    "local",
    "bridge",
    ipam=(IpamPool("10.7.0.0/24"),),
    options={"com.docker.network.bridge.enable_icc": "false"},
)


def test_a_peer_behind_enable_icc_false_is_pinged_where_icc_lets_it_and_else_said_so() -> None:
    def two(name: str, last: int, nets: tuple[Network, ...]) -> Container:
        c = ctr(name, f"10.7.0.{last}", net=nets[0])
        extra = tuple(
            Attachment(n.id, n.name, ipv4=f"{n.ipam[0].subnet[:-5]}.{last}") for n in nets[1:]
        )
        return replace(c, attachments=c.attachments + extra)

    a, b = two("a", 2, (QUIET, NET)), two("b", 3, (QUIET, NET))
    t = Topology(1, (EngineInfo("local", "unix:///x"),), (NET, OTHER, QUIET), (a, b))
    (peer,) = plan_checks(t, a).peers
    assert (peer.address, peer.network, peer.icc_off) == ("10.9.0.3", "app", False)
    # Only the quiet network in common: the echo is dropped by Docker, as configured.
    a, b = ctr("a", "10.7.0.2", net=QUIET), ctr("b", "10.7.0.3", net=QUIET)
    t = Topology(1, (EngineInfo("local", "unix:///x"),), (NET, OTHER, QUIET), (a, b))
    f = Evidence(a, plan_checks(t, a))
    f.pings = tuple(Ping(k, n, addr, None) for k, n, addr in f.plan.pings if k == "peer")
    (said,) = [x for x in findings(f) if x.code == "peer-unreachable"]
    assert said.severity == "info" and "enable_icc=false on quiet" in said.message


def test_a_catalog_name_two_projects_register_is_said_with_each_scoped_name() -> None:
    labels = {"dockmesh.service": "api", "dockmesh.port": "8080"}
    a = ctr("a-api-1", "10.9.0.2", project="a")
    b = ctr("b-api-1", "10.9.0.3", project="b")
    a, b = (replace(c, labels={**c.labels, **labels}) for c in (a, b))
    f = healthy_facts(a, topo(a, b))
    (found,) = [x for x in findings(f) if x.code == "name-collision"]
    assert found.severity == "warning" and "answers none of them" in found.message
    assert "api.a.service.dockmesh or api.b.service.dockmesh" in found.fix
    alone = ctr("a-api-1", "10.9.0.2", project="a")
    alone = replace(alone, labels={**alone.labels, **labels})
    assert "name-collision" not in codes(healthy_facts(alone, topo(alone)))

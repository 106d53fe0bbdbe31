"""The policy on an overlay network: the topology its namespace sees on each host, the ports
its members are bound to there, and the verdicts, equal to the model's for every pair on every
host the packet passes."""

from __future__ import annotations

import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.policy import Policy, Rule, Selector
from dockmesh.model.topology import EngineInfo, EngineState, Topology, build_topology
from dockmesh.policy.compile import compile_policy
from dockmesh.policy.decide import decide
from dockmesh.policy.evaluate import Packet, evaluate
from dockmesh.policy.overlay import (
    VXLAN_PORT,
    netns_name,
    overlay_networks,
    overlay_ports,
    overlay_topology,
)
from tests.unit.policy.test_compile import LABELS, POLICIES, PROBES
from tests.unit.topos import container, network, topology

OVERLAY = "ov"
HOSTS = ("h1", "h2")
BRIDGE = "br0"  # the overlay namespace's bridge, the same name on every host


def overlay_net(subnet: str | None = "10.0.0.0/24"):  # type: ignore[no-untyped-def]
    return dataclasses.replace(network(OVERLAY, subnet), driver="overlay", scope="swarm")


@st.composite
def overlays(draw: st.DrawFn) -> Topology:
    """An overlay (and a bridge, n1, as the rest of the host), containers on two engines."""
    nets = [
        overlay_net("10.0.0.0/24" if draw(st.booleans()) else None),
        network("n1", "10.1.0.0/24"),
    ]
    cs = []
    for k in range(draw(st.integers(0, 6))):
        on: dict[str, str | tuple[str, str | None]] = {}
        if draw(st.booleans()) or k < 2:
            v6 = f"fd00::{k + 2}" if draw(st.booleans()) else None
            on[OVERLAY] = (f"10.0.0.{k + 2}", v6)
        if draw(st.booleans()):
            on["n1"] = f"10.1.0.{k + 2}"
        state = draw(st.sampled_from(["running", "running", "exited"]))
        c = container(f"c{k}", on, draw(LABELS), state=state)
        cs.append(dataclasses.replace(c, engine=draw(st.sampled_from(HOSTS))))
    return topology(nets, cs)


def veth(c_index: int) -> str:
    return f"veth{c_index}"


def local_ports(view: Topology, host: str) -> dict[tuple[str, str], str]:
    return {
        (c.id, a.network): veth(k)
        for k, c in enumerate(view.containers)
        if c.engine == host
        for a in c.attachments
    }


def test_the_view_is_the_overlay_and_its_running_members_on_every_engine() -> None:
    topo = topology(
        [overlay_net(), network("n1", "10.1.0.0/24")],
        [
            dataclasses.replace(
                container("a", {OVERLAY: "10.0.0.2", "n1": "10.1.0.2"}), engine="h1"
            ),
            dataclasses.replace(container("b", {OVERLAY: "10.0.0.3"}), engine="h2"),
            dataclasses.replace(container("c", {"n1": "10.1.0.4"}), engine="h2"),
            dataclasses.replace(container("d", {OVERLAY: "10.0.0.5"}, state="exited"), engine="h2"),
        ],
    )
    [ov] = overlay_networks(topo)
    assert netns_name(ov) == "1-" + ov.id[:10]
    view = overlay_topology(topo, ov)
    assert [n.name for n in view.networks] == [OVERLAY]
    assert [(c.name, [a.network for a in c.attachments]) for c in view.containers] == [
        ("a", [OVERLAY]),
        ("b", [OVERLAY]),
    ]
    ports = overlay_ports(view, "h2", {(view.containers[1].id, OVERLAY): "veth3"})
    assert ports == {
        (view.containers[0].id, OVERLAY): VXLAN_PORT,
        (view.containers[1].id, OVERLAY): "veth3",
    }
    # A bridge network is no overlay; neither is the routing mesh's ingress.
    ingress = dataclasses.replace(overlay_net(), ingress=True)
    assert overlay_networks(topology([ingress, network("n1", None)], [])) == []


@settings(max_examples=200, deadline=None)
@given(overlays(), POLICIES)
def test_each_hosts_overlay_table_gives_the_models_verdict_for_every_pair(
    topo: Topology, policy: Policy
) -> None:
    """On each host, the overlay's table judges every packet that passes there — from a
    local member's veth, or from vxlan0 (another host's member) to a local one — as the
    model judges it on that network; a local member that sends with another member's address
    is accepted by no rule about containers."""
    [ov] = overlay_networks(topo)
    view = overlay_topology(topo, ov)
    for host in HOSTS:
        local = local_ports(view, host)
        ports = overlay_ports(view, host, local)
        rs = compile_policy(policy, view, ports=ports)
        # Where each member's frames really enter this host's br0 (not read from `ports`: the
        # binding under test).
        wire = {
            c.id: veth(k) if c.engine == host else "vxlan0" for k, c in enumerate(view.containers)
        }
        for s in view.containers:
            for d in view.containers:
                if s is d or (s.engine != host and d.engine != host):
                    continue  # a packet between two other hosts never passes here
                (sa,), (da,) = s.attachments, d.attachments
                for fam in ("ipv4", "ipv6"):
                    saddr, daddr = getattr(sa, fam), getattr(da, fam)
                    if saddr is None or daddr is None:
                        continue
                    family = 4 if fam == "ipv4" else 6
                    full_s = next(c for c in topo.containers if c.id == s.id)
                    full_d = next(c for c in topo.containers if c.id == d.id)
                    for proto, port in PROBES:
                        model = decide(policy, full_s, full_d, OVERLAY, proto, port, family)
                        packet = Packet(
                            saddr, daddr, proto, port, iif=BRIDGE, oif=BRIDGE,
                            port=wire[s.id], out_port=wire[d.id],
                        )  # fmt: skip
                        out = evaluate(rs, packet)
                        assert (out.verdict == "accept") == model.allowed, (host, s, d, out.rule)
                    # Forged: a local member other than s sends with s's address.
                    for k, m in enumerate(view.containers):
                        if m.engine != host or m is s or m is d:
                            continue
                        forged = Packet(
                            saddr, daddr, "tcp", 80, iif=BRIDGE, oif=BRIDGE,
                            port=veth(k), out_port=wire[d.id],
                        )  # fmt: skip
                        out = evaluate(rs, forged)
                        if out.rule is None or out.rule.action != "accept":
                            continue
                        assert out.rule.origin[0] != "rules", out.rule
                        if out.rule.origin[0] == "rule":
                            index = out.rule.origin[1]
                            assert isinstance(index, int)
                            assert any(x.is_address for x in policy.rules[index].sources)


def test_a_local_member_that_forges_a_remote_members_address_is_not_accepted() -> None:
    """c0 (h1) may reach c1 (h2). On h2, c2 sends as c0: c0's address is bound to vxlan0 there,
    so the frame from c2's veth is unconfirmed and falls to the default deny; c0's own frame,
    from vxlan0, is accepted."""
    cs = [
        dataclasses.replace(container("c0", {OVERLAY: "10.0.0.2"}), engine="h1"),
        dataclasses.replace(container("c1", {OVERLAY: "10.0.0.3"}), engine="h2"),
        dataclasses.replace(container("c2", {OVERLAY: "10.0.0.4"}), engine="h2"),
    ]
    topo = topology([overlay_net()], cs)
    policy = Policy(
        "deny", (), (Rule((Selector(container="c0"),), (Selector(container="c1"),), (), "allow"),)
    )
    [ov] = overlay_networks(topo)
    view = overlay_topology(topo, ov)
    ports = overlay_ports(view, "h2", {(cs[1].id, OVERLAY): "veth1", (cs[2].id, OVERLAY): "veth2"})
    rs = compile_policy(policy, view, ports=ports)
    packet = Packet("10.0.0.2", "10.0.0.3", "tcp", 80, iif=BRIDGE, oif=BRIDGE, out_port="veth1")
    forged = evaluate(rs, dataclasses.replace(packet, port="veth2"))
    assert forged.verdict == "drop" and forged.unconfirmed
    assert evaluate(rs, dataclasses.replace(packet, port=VXLAN_PORT)).verdict == "accept"
    # And a frame to c0's address leaves h2 by vxlan0 only (not by a veth that claimed it).
    to_c0 = Packet("10.0.0.3", "10.0.0.2", "tcp", 80, "established", iif=BRIDGE, oif=BRIDGE,
                   port="veth1", out_port="veth2")  # fmt: skip
    assert evaluate(rs, to_c0).verdict == "drop"
    assert evaluate(rs, dataclasses.replace(to_c0, out_port=VXLAN_PORT)).verdict == "accept"


def test_why_says_where_an_overlay_policy_judges_the_packet() -> None:
    from dockmesh.model.policy import PortRange
    from dockmesh.policy.reach import analyze

    cs = [
        dataclasses.replace(container("front", {OVERLAY: "10.0.0.2"}), engine="host1"),
        dataclasses.replace(container("api", {OVERLAY: "10.0.0.3"}), engine="host2"),
        dataclasses.replace(container("db", {OVERLAY: "10.0.0.4"}), engine="host2"),
    ]
    states = []
    for host in ("host1", "host2"):
        st = EngineState(EngineInfo(host, f"unix:///{host}"))
        st.upsert_network(dataclasses.replace(overlay_net(), engine=host))
        for c in cs:
            if c.engine == host:
                st.upsert_container(c)
        states.append(st)
    topo = build_topology(states, 1)
    policy = Policy(
        "deny",
        (),
        (Rule((Selector(container="front"),), (Selector(container="api"),), (), "allow"),),
    )
    tcp = PortRange("tcp", 8080, 8080)
    across = analyze(topo, policy, "db", "front", tcp, with_dns=False)
    assert not across.reachable
    assert across.summary.endswith(
        "the policy's default denies it (8080/tcp on ov; judged in ov's namespace on host2 "
        "and host1)"
    ), across.summary
    within = analyze(topo, policy, "api", "db", tcp, with_dns=False)
    assert "judged in ov's namespace on host2)" in within.summary
    assert analyze(topo, policy, "front", "api", tcp, with_dns=False).reachable
    # No policy: nothing is judged there, nothing said.
    assert "namespace" not in analyze(topo, None, "db", "front", tcp, with_dns=False).summary

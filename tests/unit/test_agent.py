"""The agent's own decisions (the parts it wires are tested where they live)."""

from __future__ import annotations


def test_the_agent_serves_dns_on_every_bridge_gateway() -> None:
    from dockmesh.agent import bridge_gateways
    from dockmesh.model.topology import EngineInfo, IpamPool, Network, Topology

    nets = (
        Network("1", "given", "local", "bridge", ipam=(IpamPool("10.1.0.0/24", "10.1.0.254"),)),
        Network("2", "default", "local", "bridge", ipam=(IpamPool("10.2.0.0/24"),)),
        Network(
            "3", "ranged", "local", "bridge", ipam=(IpamPool("10.3.0.0/24", None, "10.3.0.64/26"),)
        ),
        Network("4", "v6", "local", "bridge", ipam=(IpamPool("fd00::/64", "fd00::1"),)),
        Network("5", "ov", "local", "overlay", ipam=(IpamPool("10.5.0.0/24", "10.5.0.1"),)),
    )
    topo = Topology(1, (EngineInfo("local", "x"),), nets, ())
    assert bridge_gateways(topo) == {"10.1.0.254", "10.2.0.1", "10.3.0.64"}

"""Renderings of the topology and the plan (pure)."""

from __future__ import annotations

import io

from rich.console import Console

from dockmesh.cli.render import plan_table, topology_dot, topology_tree
from dockmesh.model.topology import build_topology
from dockmesh.projectfile.plan import Change, Plan
from tests.unit.model.test_topology import CTR, NET, state


def text_of(renderable: object) -> str:
    buf = io.StringIO()
    Console(file=buf, width=200, color_system=None).print(renderable)
    return buf.getvalue()


def test_tree_shows_networks_endpoints_flags_and_ports() -> None:
    topo = build_topology([state("local", [NET], [CTR])], 4)
    out = text_of(topology_tree(topo))
    assert "topology v4" in out
    assert "demo_database  bridge  10.77.3.0/24 gw 10.77.3.1 range 10.77.3.0/28  internal" in out
    assert "demo-user-db-1  10.77.3.2  02:42:0a:4d:03:02  aliases: user-db  [healthy]" in out
    assert "ports 127.0.0.1:18080→8080/tcp" in out


def test_dot_is_a_graph_with_an_edge_per_endpoint() -> None:
    topo = build_topology([state("local", [NET], [CTR])], 1)
    dot = topology_dot(topo)
    assert dot.startswith("graph dockmesh {\n") and dot.endswith("}\n")
    assert dot.count(" -- ") == 1
    assert 'label="10.77.3.2\\nuser-db"' in dot


def test_plan_table() -> None:
    plan = Plan("p", (Change("replace", "container", "p-a-1", "changed: environment"),), ())
    out = text_of(plan_table(plan))
    assert "replace" in out and "p-a-1" in out and "changed: environment" in out

"""Renderings of the topology and the plan (dockmesh.cli.render, pure); `topology --dot` with
names Graphviz would misread: every quoted string ends where it should, IDs stay distinct,
labels show the names."""

from __future__ import annotations

import copy
import io
import re
import shutil
import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from dockmesh.cli.render import plan_table, topology_dot, topology_tree
from dockmesh.model.topology import Topology, build_topology
from dockmesh.projectfile.plan import Change, Plan
from dockmesh.projectfile.problems import visible
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


# --- names Graphviz would misread -------------------------------------------------------

NASTY = 'a"b\\c\\\nd\r\te\u202e:smile: [bold] é漢 \\N\\l\\'


def topology(
    engine: str, net_name: str, net_id: str, ctr_name: str, aliases: list[str]
) -> Topology:
    net = copy.deepcopy(NET)
    net["Name"], net["Id"] = net_name, net_id
    ctr = copy.deepcopy(CTR)
    ctr["Name"], ctr["Id"] = "/" + ctr_name, ctr_name + "-id"
    endpoint = ctr["NetworkSettings"]["Networks"].pop("demo_database")
    endpoint["NetworkID"], endpoint["Aliases"] = net_id, aliases
    ctr["NetworkSettings"]["Networks"][net_name] = endpoint
    return build_topology([state(engine, [net], [ctr])], 1)


# Graphviz's lexer inside quotes: `\\"` is a quote, `\\\\` two backslashes; nothing else
# escapes, so a backslash with any other character can be read as a pair as well.
TOKEN = re.compile(r'\s*("(?:[^"\\]|\\.)*"|--|[\[\];,=]|[^\s\[\];,="]+)')


def tokens(line: str) -> list[str]:
    out, i = [], 0
    while i < len(line.rstrip()):
        m = TOKEN.match(line, i)
        assert m is not None, f"unterminated string in {line!r}"
        out.append(m.group(1))
        i = m.end()
    return out


def unquote(token: str) -> str:
    assert token.startswith('"') and token.endswith('"') and len(token) >= 2, token
    return token[1:-1].replace('\\"', '"')


def label_lines(label: str) -> list[str]:
    """A label's lines as Graphviz shows them: `\\n` breaks, `\\\\` is a backslash."""
    lines, current, i = [], "", 0
    while i < len(label):
        if label[i] == "\\" and i + 1 < len(label):
            if label[i + 1] == "n":
                lines.append(current)
                current = ""
            else:
                current += label[i + 1]
            i += 2
        else:
            current += label[i]
            i += 1
    return [*lines, current]


def statements(dot: str) -> list[tuple[list[str], dict[str, str]]]:
    """(IDs, attributes) of each node and edge line."""
    out = []
    for line in dot.splitlines()[3:-1]:
        parts = tokens(line)
        assert parts[-2:] == ["]", ";"], line
        opening = parts.index("[")
        ids = [unquote(t) for t in parts[:opening] if t != "--"]
        inside = [t for t in parts[opening + 1 : -2] if t != ","]
        attrs = {inside[i]: inside[i + 2] for i in range(0, len(inside), 3)}
        assert all(inside[i + 1] == "=" for i in range(0, len(inside), 3)), line
        labels = {k: unquote(v) for k, v in attrs.items() if v.startswith('"')}
        out.append((ids, labels))
    return out


names = st.text(st.characters(codec="utf-8"), min_size=1, max_size=12)


@settings(max_examples=100, deadline=None)
@given(names, names, names, names, st.lists(names, max_size=2))
def test_any_names_make_well_formed_dot(
    engine: str, net_name: str, net_id: str, ctr_name: str, aliases: list[str]
) -> None:
    topo = topology(engine, net_name, net_id, ctr_name, aliases)
    dot = topology_dot(topo)
    [(net_ids, net), (ctr_ids, ctr), (edge_ids, edge)] = statements(dot)
    # the edge joins the two nodes, whose IDs differ
    assert edge_ids == [*ctr_ids, *net_ids]
    assert net_ids != ctr_ids
    # the labels show the names
    [n], [c] = topo.networks, topo.containers
    assert label_lines(net["label"])[0] == visible(n.name)
    assert label_lines(ctr["label"]) == [visible(c.name), visible(c.engine)]
    [ep] = topo.endpoints_of(n)
    want = [ep.ipv4 or ""]
    if ep.aliases:  # the model drops the container's own names from them
        want.append(visible(",".join(ep.aliases)))
    assert label_lines(edge["label"]) == want


@settings(max_examples=50, deadline=None)
@given(names, names)
def test_distinct_names_get_distinct_ids(a: str, b: str) -> None:
    ids = {
        statements(topology_dot(topology("local", "net", "n", name, [])))[1][0][0]
        for name in (a, b)
    }
    assert len(ids) == len({a, b})


def test_graphviz_reads_it_and_shows_the_names() -> None:
    if shutil.which("dot") is None:
        pytest.fail("Graphviz's dot is missing: scripts/setup.sh installs it (graphviz)")
    dot = topology_dot(topology(NASTY, NASTY, NASTY, NASTY, [NASTY, "x\\"]))
    done = subprocess.run(["dot", "-Tsvg"], input=dot.encode(), capture_output=True, check=False)
    assert done.returncode == 0
    assert done.stderr == b""
    texts = re.findall(r"<text[^>]*>(.*?)</text>", done.stdout.decode())
    shown = visible(NASTY).replace("&", "&amp;").replace('"', "&quot;")
    assert texts.count(shown) == 3  # the network's and the container's names, the engine's
    assert f"{shown},x\\" in texts  # the endpoint's aliases

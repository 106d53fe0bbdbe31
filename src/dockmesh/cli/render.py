"""Human renderings of reports: rich trees and tables, Graphviz source. Pure: values in, text
or rich renderables out."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING
from urllib.parse import quote

from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from dockmesh.model.topology import Container, Network, Topology
from dockmesh.projectfile.problems import visible

if TYPE_CHECKING:  # the plan's module brings pydantic, which `topology` does without
    from dockmesh.observe.flows import Edge
    from dockmesh.projectfile.plan import Plan

_HIDDEN_WHEN_EMPTY = {"host", "none"}


def _ports(c: Container) -> str:
    out = []
    for p in c.ports:
        if p.host_port is None:
            continue
        host = f"{p.host_ip}:" if p.host_ip else ""
        out.append(f"{host}{p.host_port}→{p.container_port}/{p.protocol}")
    return ", ".join(out)


def _network_label(n: Network) -> Text:
    t = Text()
    t.append(n.name, style="bold cyan")
    t.append(f"  {n.driver}", style="dim")
    if n.scope != "local":
        t.append(f" ({n.scope})", style="dim")
    for pool in n.ipam:
        t.append(f"  {pool.subnet}")
        if pool.gateway:
            t.append(f" gw {pool.gateway}", style="dim")
        if pool.ip_range:
            t.append(f" range {pool.ip_range}", style="dim")
    if n.internal:
        t.append("  internal", style="bold yellow")
    if n.attachable:
        t.append("  attachable", style="magenta")
    if len(n.engines) > 1:
        t.append(f"  engines: {', '.join(n.engines)}", style="green")
    return t


def topology_tree(topo: Topology) -> Tree:
    engines = ", ".join(f"{e.name} ({e.server_version})" for e in topo.engines)
    root = Tree(Text.assemble(("topology ", "bold"), (f"v{topo.version}", "dim"), "  ", engines))
    by_id = {(c.engine, c.id): c for c in topo.containers}
    for n in topo.networks:
        eps = topo.endpoints_of(n)
        if not eps and n.name in _HIDDEN_WHEN_EMPTY:
            continue
        branch = root.add(_network_label(n))
        for ep in eps:
            c = by_id.get((ep.engine, ep.container_id))
            line = Text()
            line.append(ep.container, style="bold")
            if len(topo.engines) > 1:
                line.append(f" @{ep.engine}", style="green")
            line.append(f"  {ep.ipv4 or '-'}")
            if ep.ipv6:
                line.append(f" {ep.ipv6}")
            if ep.mac:
                line.append(f"  {ep.mac}", style="dim")
            if ep.aliases:
                line.append(f"  aliases: {', '.join(ep.aliases)}", style="magenta")
            if c is not None:
                if not c.running:
                    line.append(f"  [{c.state}]", style="red")
                elif c.health:
                    line.append(
                        f"  [{c.health}]", style="green" if c.health == "healthy" else "yellow"
                    )
                ports = _ports(c)
                if ports:
                    line.append(f"  ports {ports}", style="blue")
            branch.add(line)
    loose = [c for c in topo.containers if not c.attachments]
    if loose:
        branch = root.add(Text("no network", style="bold dim"))
        for c in loose:
            branch.add(Text.assemble((c.name, "bold"), f"  {c.network_mode or '-'}  [{c.state}]"))
    return root


def _dot_id(kind: str, value: str) -> str:
    """A quoted Graphviz ID that no name can break out of or make collide with another:
    percent-encoded, so it holds no quote, backslash, newline or anything Graphviz's lexer
    treats specially, yet plain names read as they are."""
    return '"' + quote(f"{kind}:{value}", safe=":/@+=,") + '"'


def _dot_label(*lines: str) -> str:
    """A quoted Graphviz label showing `lines` literally: in labels a backslash starts an
    escape (`\\N` is the node's name, `\\l` ends a line), so each one is doubled; the quote is
    the lexer's only escape; characters that do not print are shown as their escapes, since
    older Graphviz versions drop a raw newline inside quotes."""
    parts = (visible(line).replace("\\", "\\\\").replace('"', '\\"') for line in lines)
    return '"' + "\\n".join(parts) + '"'


def _flow_node(topo: Topology, kind: str, name: str) -> str | None:
    """The node a flow's end is drawn at: its container, or the network of a gateway."""
    if kind == "container":
        c = topo.container(name)
        return _dot_id("ctr", c.engine + "/" + c.id) if c is not None else None
    if kind == "gateway":
        n = topo.network(name.removeprefix("gateway:"))
        return _dot_id("net", n.id) if n is not None else None
    return None


def _flow_edges(topo: Topology, flows: Sequence[Edge]) -> list[str]:
    """Conntrack flows (who talked to whom) as dashed arrows with their port and bytes. The graph is
    undirected, so the direction is drawn (dir=forward) rather than declared."""
    lines = []
    for e in flows:
        a, b = _flow_node(topo, e.src_kind, e.src), _flow_node(topo, e.dst_kind, e.dst)
        if a is None or b is None:
            continue
        label = _dot_label(f"{e.port}/{e.proto}" if e.port else e.proto, f"{e.bytes} B")
        lines.append(
            f'  {a} -- {b} [dir=forward, style=dashed, color="#cc5500", '
            f'fontcolor="#cc5500", label={label}];'
        )
    return lines


def topology_dot(topo: Topology, flows: Sequence[Edge] = ()) -> str:
    lines = ["graph dockmesh {", "  graph [rankdir=LR];", "  node [fontname=Helvetica];"]
    for n in topo.networks:
        eps = topo.endpoints_of(n)
        if not eps and n.name in _HIDDEN_WHEN_EMPTY:
            continue
        subnets = " ".join(p.subnet for p in n.ipam)
        extra = ("internal",) if n.internal else ()
        label = _dot_label(n.name, f"{n.driver} {subnets}", *extra)
        lines.append(
            f'  {_dot_id("net", n.id)} [shape=box, style=filled, fillcolor="#dde8ff", '
            f"label={label}];"
        )
    for c in topo.containers:
        color = "#ddffdd" if c.running else "#ffdddd"
        lines.append(
            f"  {_dot_id('ctr', c.engine + '/' + c.id)} [shape=ellipse, style=filled, "
            f'fillcolor="{color}", label={_dot_label(c.name, c.engine)}];'
        )
    for n in topo.networks:
        for ep in topo.endpoints_of(n):
            aliases = (",".join(ep.aliases),) if ep.aliases else ()
            label = _dot_label(ep.ipv4 or "", *aliases)
            lines.append(
                f"  {_dot_id('ctr', ep.engine + '/' + ep.container_id)} -- "
                f"{_dot_id('net', n.id)} [label={label}];"
            )
    lines.extend(_flow_edges(topo, flows))
    lines.append("}")
    return "\n".join(lines) + "\n"


_ACTION_STYLE = {"create": "green", "remove": "red", "replace": "yellow"}


def plan_table(plan: Plan) -> Table:
    table = Table(title=Text(f"plan for project {plan.project}"), title_justify="left")
    table.add_column("action")
    table.add_column("kind")
    table.add_column("name", style="bold")
    table.add_column("reason", style="dim")
    for c in plan.changes:
        # Names and reasons hold users' text: Text keeps `[bold]` or `:smile:` in them literal.
        table.add_row(
            Text(c.action, style=_ACTION_STYLE[c.action]), c.kind, Text(c.name), Text(c.reason)
        )
    return table


def ps_table(containers: Sequence[Container]) -> Table:
    """`dockmesh ps`: one row a container; its name never cut (the table gets narrower
    elsewhere, or wider than the screen)."""
    from dockmesh.model.labels import LABEL_SERVICE

    t = Table(box=None, pad_edge=False)
    t.add_column("NAME", no_wrap=True, overflow="ignore")
    t.add_column("SERVICE", no_wrap=True)
    t.add_column("STATE", no_wrap=True)
    t.add_column("PORTS")
    t.add_column("NETWORKS")
    for c in containers:
        state = c.state if c.health is None else f"{c.state} ({c.health})"
        style = "green" if c.running and c.health in (None, "healthy") else "yellow"
        t.add_row(
            Text(visible(c.name)),
            Text(visible(c.labels.get(LABEL_SERVICE, ""))),
            Text(state, style=style),
            Text(_ports(c)),
            Text(", ".join(sorted(a.network for a in c.attachments))),
        )
    return t

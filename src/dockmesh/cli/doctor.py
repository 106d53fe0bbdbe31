"""`dockmesh doctor CONTAINER`: a container's network, diagnosed from the host."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.console import Group
from rich.table import Table
from rich.text import Text

from dockmesh.cli.common import (
    EngineOpt,
    JsonOpt,
    UserError,
    finite,
    handle_errors,
    load_topology,
    out,
    print_json,
)
from dockmesh.cli.remote import AgentOpt

_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}


def _section(title: str, rows: list[list[str]], columns: list[str]) -> Table:
    table = Table(title=title, title_justify="left", show_edge=False)
    for col in columns:
        table.add_column(col)
    for row in rows:
        table.add_row(*(Text(x) for x in row))
    return table


def _cell(value: object) -> str:
    """A value for a table cell: one not known (null in --json) is '-', not 'None'."""
    return "-" if value is None else str(value)


def doctor_view(doc: Mapping[str, Any]) -> Group:
    s = doc["sections"]
    st = s["state"]
    parts: list[Any] = [
        Text.assemble(
            ("doctor ", "bold"),
            (doc["container"], "bold cyan"),
            f"  {st['state']}",
            f" ({st['health']})" if st["health"] else "",
            f"  pid {st['pid']}  image {st['image']}",
        )
    ]
    parts.append(
        _section(
            "networks",
            [
                [
                    n["name"],
                    n["driver"],
                    _cell(n["ipv4"]),
                    _cell(n["subnet"]),
                    _cell(n["gateway"]),
                    _cell(n["mac"]),
                    _cell(n["mtu"]),
                ]
                for n in s["networks"]
            ],
            ["network", "driver", "address", "subnet", "gateway", "mac", "mtu"],
        )
    )
    parts.append(
        _section(
            "interfaces",
            [
                [x["name"], x["state"], _cell(x["mac"]), _cell(x["mtu"]), " ".join(x["addresses"])]
                for x in s["interfaces"]
            ],
            ["interface", "state", "mac", "mtu", "addresses"],
        )
    )
    parts.append(
        _section(
            "routes",
            [[r["destination"], r["gateway"] or "-", r["interface"]] for r in s["routes"]],
            ["destination", "via", "dev"],
        )
    )
    parts.append(
        _section(
            "listening",
            [[x["proto"], f"{x['address']}:{x['port']}"] for x in s["listening"]],
            ["proto", "address"],
        )
    )
    if s["resolv_conf"]:
        r = s["resolv_conf"]
        parts.append(
            Text(
                f"resolv.conf: nameserver {' '.join(r['nameservers'])}"
                + (f"  search {' '.join(r['search'])}" if r["search"] else "")
                + (f"  options {' '.join(r['options'])}" if r["options"] else "")
            )
        )
    if s["dns"]:
        parts.append(
            _section(
                "dns (through 127.0.0.11, from its namespace)",
                [
                    [d["name"], " ".join(d["answers"] or []) or "-", " ".join(d["expected"])]
                    for d in s["dns"]
                ],
                ["name", "answers", "expected"],
            )
        )
    if s["connectivity"]:
        parts.append(
            _section(
                "connectivity (ICMP)",
                [
                    [
                        p["target"],
                        p["address"],
                        f"{p['rtt_ms']:.3f} ms" if p["reachable"] else "no answer",
                    ]
                    for p in s["connectivity"]
                ],
                ["target", "address", "round trip"],
            )
        )
    parts.append(Text("findings", style="bold"))
    if not doc["findings"]:
        parts.append(Text("  none: nothing wrong found", style="green"))
    for f in doc["findings"]:
        parts.append(
            Text.assemble(
                ("  " + f["severity"].upper(), _STYLE[f["severity"]]), f"  {f['message']}"
            )
        )
        if f["fix"]:
            parts.append(Text(f"      fix: {f['fix']}", style="dim"))
    return Group(*parts)


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    @handle_errors
    def doctor(
        container: Annotated[str, typer.Argument(help="Container name or id.")],
        timeout: Annotated[
            float,
            typer.Option(
                "--timeout",
                min=0.05,
                max=60.0,
                callback=finite,
                help="Seconds to wait for DNS and ICMP.",
            ),
        ] = 1.0,
        engine: EngineOpt = None,
        agent: AgentOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Diagnose one container's network from the host (no tools needed inside it):
        state, networks, ports, interfaces, routes, resolv.conf, listening sockets, DNS of
        its peers through Docker's DNS, connectivity to its gateway and peers; then findings,
        each with a fix. Exits 1 when a finding is an error. A container of another host
        (`--engine hostN` of a lab, or `--agent URL`) is diagnosed by that host's agent
        (--timeout at most 5 s there)."""
        doc = doctor_document_for(container, timeout, engine, agent)
        if json_out:
            print_json(doc)
        else:
            out.print(doctor_view(doc))
        if any(f["severity"] == "error" for f in doc["findings"]):
            raise typer.Exit(1)


def doctor_document_for(
    container: str, timeout: float, engine: list[str] | None, agent: str | None
) -> dict[str, Any]:
    """The doctor's document: asked of the container's host's agent when its engine has
    one (`cli.remote`), else gathered here — never for a container whose process this
    machine does not show to be its own."""
    from dockmesh.cli.remote import AgentError, agent_route, elsewhere, lab_routes, remote_doctor

    if engine and agent:
        raise UserError("--agent and --engine: give one or the other (the agent reads its engines)")
    if agent:
        return remote_doctor(agent_route(agent), container, timeout)
    routes = lab_routes(engine)
    topo = load_topology(engine)
    c = topo.container(container)
    if c is None:
        raise UserError(f"no container named {container!r}")
    if c.engine in routes:
        return remote_doctor(routes[c.engine], c.id, timeout)
    away = elsewhere(c)
    if away:
        raise AgentError(away)
    from dockmesh.cli.policy import _table, applied_policy
    from dockmesh.diagnose.doctor import doctor_document
    from dockmesh.host.netns import NetnsPool

    # What the applied policy says of members that share no network (a deny is meant);
    # a policy setting that cannot be read only leaves that unsaid.
    try:
        policy, _ = applied_policy(_table(None))
    except UserError:
        policy = None
    with NetnsPool(threads=1) as pool:
        doc, _ = doctor_document(topo, c, pool, timeout, policy)
    return doc

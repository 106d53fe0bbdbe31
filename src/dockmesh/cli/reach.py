"""`dockmesh why SRC DST` and `dockmesh matrix`: reachability, explained and observed."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from dockmesh.cli.common import (
    EXIT_FAILED,
    EngineOpt,
    JsonOpt,
    UserError,
    finite,
    handle_errors,
    load_topology,
    out,
    print_json,
)
from dockmesh.cli.policy import (
    TableOpt,
    _table,
    applied_policy,
    policy_staleness,
)
from dockmesh.model.policy import PortRange, Selector, parse_selector_arg

if TYPE_CHECKING:
    from dockmesh.model.topology import Container, Topology
    from dockmesh.policy.reach import Analysis, Observations

PortOpt = Annotated[
    str | None, typer.Option("--port", help="PORT[/tcp|udp], e.g. 8080/tcp (default: ping).")
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds a probe waits for an answer.",
        min=0.05,
        # A bound above too: a probe's deadline is a time_t, and a pair that drops packets
        # holds `matrix` for as long as it says.
        max=60.0,
        callback=finite,
    ),
]


def _port(text: str | None) -> PortRange | None:
    from dockmesh.policy.reach import parse_port

    if text is None:
        return None
    p = parse_port(text)
    if isinstance(p, str):
        raise UserError(f"--port {p}")
    return p


def _observations_for(dst: Container | None, port: PortRange | None, note: str) -> Observations:
    from dockmesh.host.sockets import listening
    from dockmesh.policy.reach import Observations

    listens = None
    if dst is not None and dst.pid and port is not None and port.protocol in ("tcp", "udp"):
        listens = listening(dst.pid)
    return Observations(listening=listens, policy_note=note)


def register(app: typer.Typer) -> None:
    @app.command("why")
    @handle_errors
    def why(
        src: Annotated[str, typer.Argument(help="The source container (or 'host').")],
        dst: Annotated[str, typer.Argument(help="The destination container.")],
        port: PortOpt = None,
        probe: Annotated[
            bool, typer.Option("--probe", help="Also try it from SRC's namespace.")
        ] = False,
        timeout: TimeoutOpt = 1.0,
        table: TableOpt = None,
        engine: EngineOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Why SRC can or cannot reach DST: the steps a packet and a name lookup go through
        (running, shared network, internal, icc, policy, DNS, listening), then an optional
        live probe. Exits 0 when reachable, 1 when not (or when the probe fails)."""
        from dataclasses import replace

        from dockmesh.host.dockerdns import resolve_in
        from dockmesh.host.netns import NetnsError, NetnsPool
        from dockmesh.policy.reach import HOST, analyze

        p = _port(port)
        topo = load_topology(engine)
        for name in (src, dst):
            if name != HOST and topo.container(name) is None:
                raise UserError(f"no container named {name!r}")
        if dst == HOST:
            raise UserError("DST is a container (SRC may be 'host')")
        policy, note = applied_policy(_table(table))
        dcont = topo.container(dst)
        observations = _observations_for(dcont, p, note)
        # Asked with no policy too: a record that cannot be read may stand for a table that
        # is still in force.
        observations = replace(observations, policy_stale=policy_staleness(_table(table), topo))
        scont = topo.container(src) if src != HOST else None
        result: dict[str, Any] | None = None
        with NetnsPool(threads=2) as pool:
            if probe and scont is not None and scont.running and scont.pid and dcont:
                # Not asked (the namespace could not be entered) is not "no answer".
                with contextlib.suppress(NetnsError, OSError):
                    answers = resolve_in(pool, scont.pid, [dcont.name], timeout)
                    resolved = {r.name: list(r.addresses or ()) for r in answers}
                    observations = replace(observations, resolved=resolved)
            analysis = analyze(topo, policy, src, dst, p, observations)
            if probe:
                result = _probe_one(pool, topo, analysis, scont, dcont, p, timeout)
        doc = analysis.to_json()
        doc["probe"] = result
        if json_out:
            print_json(doc)
        else:
            _render_why(analysis, result)
        # A probe that was not made (UDP: ok is None) leaves the verdict to the analysis.
        failed = not analysis.reachable or (result is not None and result["ok"] is False)
        if failed:
            raise typer.Exit(EXIT_FAILED)

    @app.command("matrix")
    @handle_errors
    def matrix(
        port: PortOpt = None,
        select: Annotated[
            list[str] | None,
            typer.Option(
                "--select",
                help="KIND=VALUE (service=, container=, network=, label=, project=); "
                "several are a union. Default: every running container.",
            ),
        ] = None,
        timeout: TimeoutOpt = 1.0,
        table: TableOpt = None,
        engine: EngineOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Every ordered pair: the expected verdict (topology + policy) beside the observed
        one (probes from the source namespaces, in parallel). Mismatches first; exits 1 when
        there is any."""
        started = time.perf_counter()
        selectors = _selectors(select)
        p = _port(port)
        if p is not None and p.protocol != "tcp":
            # An unanswered UDP datagram says nothing: only TCP ports and ping are observed.
            raise UserError(f"--port {p.text()}: matrix probes TCP ports (or ping, without --port)")
        topo = load_topology(engine)
        _check_exist(topo, selectors)
        policy, note = applied_policy(_table(table))
        chosen = _chosen(topo, selectors)
        pairs = _matrix(topo, policy, note, chosen, p, timeout)
        mismatches = sum(1 for x in pairs if x["expected"] != x["observed"])
        doc = {
            "pairs": pairs,
            "mismatches": mismatches,
            "containers": len(chosen),
            "port": p.text() if p else None,
            "policy": note,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        if json_out:
            print_json(doc)
        else:
            _render_matrix(doc, [c.name for c in chosen])
        if mismatches:
            raise typer.Exit(EXIT_FAILED)


def _selectors(values: list[str] | None) -> list[Selector]:
    out: list[Selector] = []
    for v in values or ():
        s = parse_selector_arg(v)
        if isinstance(s, str):
            raise UserError(f"--select {s}")
        out.append(s)
    return out


def _check_exist(topo: Topology, selectors: list[Selector]) -> None:
    """A selector naming a container or a network that does not exist is bad input (a
    service or a label may simply have no container now)."""
    for s in selectors:
        if s.container is not None and topo.container(s.container) is None:
            raise UserError(f"--select container={s.container}: no container named so")
        if s.network is not None and topo.network(s.network) is None:
            raise UserError(f"--select network={s.network}: no network named so")


def _chosen(topo: Topology, selectors: list[Selector]) -> list[Container]:
    """Running containers with an IPv4 address chosen by any selector (all: none given)."""
    out = []
    for c in topo.containers:
        if not c.running or not c.pid:
            continue
        atts = [a for a in c.attachments if a.ipv4]
        if not atts:
            continue
        if selectors and not any(s.matches_endpoint(c, a.network) for s in selectors for a in atts):
            continue
        out.append(c)
    return out


def _matrix(
    topo: Topology,
    policy: Any,
    note: str,
    chosen: list[Container],
    port: PortRange | None,
    timeout: float,
) -> list[dict[str, Any]]:
    from dockmesh.diagnose.sweep import Probe, sweep_confirmed
    from dockmesh.host.netns import NetnsPool
    from dockmesh.policy.reach import analyze

    observations = {c.name: _observations_for(c, port, note) for c in chosen}
    analyses: dict[Hashable, Analysis] = {}
    probes: list[Probe] = []
    tcp = port is not None and port.protocol == "tcp"
    for s in chosen:
        for d in chosen:
            if s is d:
                continue
            a = analyze(topo, policy, s.name, d.name, port, observations[d.name], with_dns=False)
            address = a.address or next(x.ipv4 for x in d.attachments if x.ipv4)
            if address is None or ":" in address:
                continue
            key = (s.name, d.name)
            analyses[key] = a
            probes.append(Probe(key, s.pid, address, port.first if tcp and port else None))
    with NetnsPool(threads=4) as pool:
        expected = {k: a.reachable for k, a in analyses.items()}
        seen = sweep_confirmed(pool, probes, expected, timeout_s=timeout)
    pairs = []
    for probe in probes:
        a = analyses[probe.key]
        o = seen[probe.key]
        reason = next((st.detail for st in a.steps if not st.ok), "")
        pairs.append(
            {
                "src": a.src,
                "dst": a.dst,
                "expected": a.reachable,
                "observed": o.ok,
                "network": a.network,
                "address": probe.address,
                "reason": reason or next((st.detail for st in a.steps if st.check == "policy"), ""),
                "detail": o.detail,
                "latency_ms": o.latency_ms,
            }
        )
    pairs.sort(key=lambda x: (x["expected"] == x["observed"], x["src"], x["dst"]))
    return pairs


def _probe_one(
    pool: Any,
    topo: Topology,
    analysis: Analysis,
    src: Container | None,
    dst: Container | None,
    port: PortRange | None,
    timeout: float,
) -> dict[str, Any]:
    from dockmesh.diagnose.sweep import Probe, sweep_confirmed

    address = analysis.address
    if address is None and dst is not None:
        address = next((a.ipv4 for a in dst.attachments if a.ipv4), None)
    for c in (src, dst):
        if c is not None and (not c.running or not c.pid):
            return {"ok": False, "latency_ms": None, "detail": f"{c.name} is not running"}
    if dst is None or address is None or ":" in address:
        return {"ok": False, "latency_ms": None, "detail": "nothing to probe (no IPv4 address)"}
    number = port.first if port is not None and port.protocol == "tcp" else None
    if port is not None and port.protocol != "tcp":
        return {"ok": None, "latency_ms": None, "detail": f"{port.protocol} is not probed"}
    # Confirmed as matrix confirms: a probe that disagrees with the analysis is tried again
    # before it is reported. Docker's own isolation has gaps of its own: each network it
    # creates re-inserts FORWARD's jump to DOCKER-ISOLATION-STAGE-1 (delete, then insert),
    # and an echo sent in between crosses isolated bridges.
    probe = Probe("x", src.pid if src else None, address, number)
    o = sweep_confirmed(pool, [probe], {"x": analysis.reachable}, timeout_s=timeout)["x"]
    kind = f"TCP connect to {address}:{number}" if number else f"ping {address}"
    # A failed probe has no latency (a refusal's round trip is not one to DST's service).
    latency = o.latency_ms if o.ok else None
    return {"ok": o.ok, "latency_ms": latency, "detail": f"{kind}: {o.detail}"}


def _mark(ok: bool | None) -> Text:
    if ok is None:
        return Text("-", style="dim")
    return Text("✓", style="green") if ok else Text("✗", style="red")


def _render_why(a: Analysis, probe: dict[str, Any] | None) -> None:
    style = "bold green" if a.reachable else "bold red"
    out.print(Text(a.summary, style=style))
    t = Table("", "check", "detail", show_header=False, box=None, pad_edge=False)
    for s in a.steps:
        t.add_row(_mark(s.ok), s.check, Text(s.detail))
    out.print(t)
    if probe is not None:
        line = Text("probe: ")
        line.append_text(_mark(probe["ok"]))
        line.append(" " + str(probe["detail"]))
        if probe["latency_ms"] is not None:
            line.append(f" ({probe['latency_ms']:.2f} ms)")
        out.print(line)
        if probe["ok"] is not None and bool(probe["ok"]) != a.reachable:
            out.print(
                Text(
                    "the probe disagrees with the analysis: something the topology does not "
                    "show decides (a firewall rule, a route, the application)",
                    style="yellow",
                )
            )


def _render_matrix(doc: dict[str, Any], names: list[str]) -> None:
    pairs = doc["pairs"]
    bad = [x for x in pairs if x["expected"] != x["observed"]]
    if bad:
        t = Table("src", "dst", "expected", "observed", "why expected", "probe", title="mismatches")
        for x in bad:
            t.add_row(
                x["src"], x["dst"], _mark(x["expected"]), _mark(x["observed"]),
                Text(x["reason"]), Text(x["detail"]),
            )  # fmt: skip
        out.print(t)
    if 0 < len(names) <= 40:
        cell = {(x["src"], x["dst"]): x for x in pairs}
        grid = Table("src \\ dst", *[str(i + 1) for i in range(len(names))], box=None)
        for i, s in enumerate(names):
            row: list[Text | str] = [f"{i + 1} {s}"]
            for d in names:
                x = cell.get((s, d))
                if x is None:
                    row.append(Text("·", style="dim"))
                elif x["expected"] != x["observed"]:
                    row.append(Text("!", style="bold yellow"))
                else:
                    row.append(_mark(x["observed"]))
            grid.add_row(*row)
        out.print(grid)
    reach = sum(1 for x in pairs if x["observed"])
    out.print(
        f"{len(pairs)} pairs, {reach} reachable, {doc['mismatches']} mismatches "
        f"({doc['policy']}; {doc['elapsed_s']:.2f} s)",
        markup=False,
        highlight=False,
    )

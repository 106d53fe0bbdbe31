"""`dockmesh stats`, `top`, `flows`, `report`: what the containers' networks carry, read from
the host."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer
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
)
from dockmesh.cli.common import print_json as print_json
from dockmesh.cli.remote import AgentOpt

if TYPE_CHECKING:
    from dockmesh.observe.rates import RateRow

log = logging.getLogger(__name__)


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def _name_column(table: Table) -> None:
    """The container's name is never cut with an ellipsis: on a terminal too narrow for the
    table it folds onto a second line (piped, the table is as wide as it needs)."""
    table.add_column("container", overflow="fold")


def stats_table(containers: Sequence[Mapping[str, Any]]) -> Table:
    """From `stats --json`'s containers: the same table whether this machine read them or
    their host's agent did."""
    table = Table(title="interface counters", title_justify="left")
    _name_column(table)
    for col in ("interface", "network", "rx", "tx", "rx pkts", "tx pkts"):
        table.add_column(col, justify="right" if col.startswith(("rx", "tx")) else "left")
    table.add_column("errors/drops", justify="right")
    for c in containers:
        if c.get("error"):
            table.add_row(Text(c["name"]), "-", "-", "", "", "", "", Text(c["error"], style="red"))
        for k in c["interfaces"]:
            bad = k["rx_errors"] + k["tx_errors"] + k["rx_dropped"] + k["tx_dropped"]
            table.add_row(
                Text(c["name"], style="bold"),
                k["name"],
                Text(k["network"] or "?"),
                _human_bytes(k["rx_bytes"]),
                _human_bytes(k["tx_bytes"]),
                str(k["rx_packets"]),
                str(k["tx_packets"]),
                Text(str(bad), style="red" if bad else "dim"),
            )
    return table


def rates_table(rows: list[RateRow], interval_s: float, elapsed_s: float) -> Table:
    table = Table(
        title=f"dockmesh top  (every {interval_s:g} s; read in {elapsed_s * 1000:.1f} ms)",
        title_justify="left",
    )
    _name_column(table)
    for col in ("interface", "network", "rx/s", "tx/s", "rx pkt/s", "tx pkt/s"):
        table.add_column(col, justify="right" if "/s" in col else "left")
    table.add_column("err+drop/s", justify="right")
    for r in rows:
        table.add_row(
            Text(r.container, style="bold"),
            r.interface,
            Text(r.network or "?"),
            _human_bytes(r.rx_bytes_s) + "/s",
            _human_bytes(r.tx_bytes_s) + "/s",
            f"{r.rx_packets_s:.0f}",
            f"{r.tx_packets_s:.0f}",
            Text(f"{r.errors_s:.0f}", style="red" if r.errors_s else "dim"),
        )
    return table


def flows_table(edges: Sequence[Mapping[str, Any]]) -> Table:
    """From `flows --json`'s edges (this machine's table, or a host agent's)."""
    table = Table(title="flows (conntrack)", title_justify="left")
    for col in ("from", "to", "port", "conns", "packets", "bytes →", "bytes ←"):
        table.add_column(col, justify="left" if col in ("from", "to") else "right")
    for e in edges:
        table.add_row(
            Text(e["src"], style="bold"),
            Text(e["dst"], style="bold"),
            f"{e['port']}/{e['proto']}" if e["port"] else e["proto"],
            str(e["connections"]),
            str(e["packets"]),
            _human_bytes(e["bytes_forward"]),
            _human_bytes(e["bytes_reply"]),
        )
    return table


QUIT_KEYS = frozenset("qQ")


def _quit_within(key: Callable[[float], str], seconds: float) -> bool:
    """Waits `seconds` for the next refresh; True when `q` was pressed meanwhile (other keys
    are read and ignored)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        if key(left) in QUIT_KEYS:
            return True
    return False


@contextlib.contextmanager
def _keys() -> Iterator[Callable[[float], str]]:
    """`key(timeout)`: the key pressed within `timeout` seconds, else "". On a terminal the
    keys come without Enter (cbreak: Ctrl-C still interrupts), and the terminal is put back
    as it was; when stdin is not one, it only waits."""
    import select
    import termios
    import tty

    try:
        fd = sys.stdin.fileno() if sys.stdin is not None and sys.stdin.isatty() else None
    except (OSError, ValueError):
        fd = None
    if fd is None:

        def wait(timeout: float) -> str:
            time.sleep(timeout)
            return ""

        yield wait
        return
    saved = termios.tcgetattr(fd)
    tty.setcbreak(fd)

    def read(timeout: float) -> str:
        ready, _, _ = select.select([fd], [], [], timeout)
        return os.read(fd, 1).decode("utf-8", "replace") if ready else ""

    try:
        yield read
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def register(app: typer.Typer) -> None:
    @app.command("stats")
    @handle_errors
    def stats(
        containers: Annotated[
            list[str] | None, typer.Argument(help="Containers to show (default: all).")
        ] = None,
        engine: EngineOpt = None,
        agent: AgentOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Per container and interface (mapped to its Docker network): bytes, packets, errors
        and drops, read from /proc/<pid>/net/dev on the host — no tools in the containers.
        A container of another host (`--engine hostN` of a lab, or `--agent URL`) is read by
        that host's agent."""
        doc = stats_document(containers or [], engine, agent)
        if json_out:
            print_json(doc)
        else:
            out.print(stats_table(doc["containers"]))
            out.print(Text(f"read in {doc['elapsed_s'] * 1000:.1f} ms", style="dim"))

    @app.command("top")
    @handle_errors
    def top(
        interval: Annotated[
            float,
            typer.Option(
                "--interval",
                "-n",
                min=0.1,
                max=3600.0,
                callback=finite,
                help="Seconds between refreshes.",
            ),
        ] = 1.0,
        sort: Annotated[
            str,
            typer.Option("--sort", help="Order by: total, rx, tx, packets, errors, name."),
        ] = "total",
        limit: Annotated[int, typer.Option("--limit", min=1, help="Rows shown.")] = 30,
        iterations: Annotated[
            int, typer.Option("--iterations", min=0, help="Refreshes before exiting (0: forever).")
        ] = 0,
        engine: EngineOpt = None,
    ) -> None:
        """Live rates per container and interface, sorted, refreshing in place (q or Ctrl-C
        stops). The topology is re-read every 10 refreshes to follow new containers."""
        from rich.live import Live

        from dockmesh.observe.rates import SORT_KEYS, rates
        from dockmesh.observe.sample import sample, targets

        if sort not in SORT_KEYS:
            raise UserError(f"--sort {sort!r}: choose one of {', '.join(SORT_KEYS)}")
        topo = load_topology(engine)
        prev = sample(targets(topo))
        n = 0
        first = rates_table([], interval, prev.elapsed_s)
        with _keys() as key, Live(first, console=out, auto_refresh=False) as live:
            while iterations == 0 or n < iterations:
                if _quit_within(key, interval):
                    return
                n += 1
                if n % 10 == 0:
                    topo = load_topology(engine)
                cur = sample(targets(topo))
                rows = rates(prev.containers, cur.containers, cur.taken_at - prev.taken_at, sort)
                live.update(rates_table(rows[:limit], interval, cur.elapsed_s), refresh=True)
                prev = cur

    @app.command("flows")
    @handle_errors
    def flows(
        by: Annotated[
            str, typer.Option("--by", help="Aggregate to 'container' or 'service' edges.")
        ] = "container",
        engine: EngineOpt = None,
        agent: AgentOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Who talks to whom: the kernel's connection tracking (netlink) aggregated to
        container or service edges with packets and bytes. Byte counts need conntrack
        accounting (net.netfilter.nf_conntrack_acct), which this turns on when it is off:
        connections opened before then count no bytes. Another host's table (`--engine
        hostN` of a lab, or `--agent URL`) is read by that host's agent."""
        if by not in ("container", "service"):
            raise UserError("--by: 'container' or 'service'")
        doc = flows_document(by, engine, agent)
        if json_out:
            print_json(doc)
            return
        out.print(flows_table(doc["edges"]))
        if doc["accounting"] != "on":
            out.print(
                Text(
                    "conntrack accounting was off and is now on: "
                    "byte counts start with new connections",
                    style="yellow",
                )
            )

    @app.command("report")
    @handle_errors
    def report(
        duration: Annotated[
            float,
            typer.Option(
                "--duration",
                min=0.0,
                max=86400.0,
                callback=finite,
                help="Seconds of traffic to measure.",
            ),
        ] = 5.0,
        timeout: Annotated[
            float,
            typer.Option(
                "--timeout",
                min=0.05,
                max=60.0,
                callback=finite,
                help="Seconds the connectivity probes wait for an answer (all at once).",
            ),
        ] = 1.0,
        table: Annotated[
            str | None,
            typer.Option(
                "--table",
                help="The policy's nftables table: $DOCKMESH_POLICY_TABLE, else dockmesh.",
            ),
        ] = None,
        engine: EngineOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """The network report: topology, traffic over --duration (counter deltas and flows)
        and connectivity (ICMP from each container to the next on every network, all
        probes at once). A pair that does not answer is 'denied' with the rule or default
        that drops it when the applied policy says so; 'unreachable' only when it should
        answer."""
        from dockmesh.cli.obsreport import gather_report, report_summary

        doc = gather_report(load_topology(engine), duration, timeout, table)
        if json_out:
            print_json(doc)
        else:
            out.print(report_summary(doc))


def _one_source(engine: list[str] | None, agent: str | None) -> None:
    if engine and agent:
        raise UserError("--agent and --engine: give one or the other (the agent reads its engines)")


def stats_document(
    names: Sequence[str], engine: list[str] | None, agent: str | None
) -> dict[str, Any]:
    """`stats --json`'s document: containers of engines with an agent route read by that
    agent, the others here (a pid this machine does not show to be the container's is
    never read: `observe.sample` says so in its row)."""
    from dockmesh.cli.remote import (
        agent_route,
        lab_routes,
        merge_stats,
        remote_stats,
        split_by_route,
    )
    from dockmesh.observe.counters import local_engines, readable, stats_json
    from dockmesh.observe.sample import sample, targets

    _one_source(engine, agent)
    start = time.perf_counter()
    if agent:
        return remote_stats(agent_route(agent), names)
    routes = lab_routes(engine)
    topo = load_topology(engine)
    if names:
        found = [c for c in (topo.container(n) for n in names) if c is not None]
        local = local_engines(topo) | frozenset(routes)
        wanted = [c for c in found if readable(c, local)]
        if not wanted:
            raise UserError(f"no running container named {', '.join(names)}")
    else:
        wanted = targets(topo) + [c for c in topo.containers if c.engine in routes and c.running]
        wanted = list({c.id: c for c in wanted}.values())
    here, away = split_by_route(wanted, routes)
    docs: list[dict[str, Any]] = []
    if here:
        s = sample(here)
        docs.append(stats_json(s.containers, s.elapsed_s))
    for eng, cs in away.items():
        got = remote_stats(routes[eng], [c.id for c in cs])
        # Named as this command knows the engine (`hostN`), as a read here would name it:
        # the agent calls its one engine by its own name.
        asked = {c.id for c in cs}
        for row in got.get("containers", ()):
            if isinstance(row, dict) and row.get("id") in asked:
                row["engine"] = eng
        docs.append(got)
    if len(docs) == 1:  # one source: its own document, as it measured it
        return docs[0]
    return merge_stats(docs, [c.id for c in wanted], time.perf_counter() - start)


def flows_document(by: str, engine: list[str] | None, agent: str | None) -> dict[str, Any]:
    """`flows --json`'s document: each host's conntrack table read by that host's agent
    for engines with a route; this machine's own table when any engine is read here."""
    from dockmesh.cli.common import engine_refs
    from dockmesh.cli.remote import agent_route, lab_routes, merge_flows, remote_flows
    from dockmesh.observe.conntrack import dump, ensure_accounting
    from dockmesh.observe.flows import aggregate, flows_json

    _one_source(engine, agent)
    start = time.perf_counter()
    if agent:
        return remote_flows(agent_route(agent), by)
    routes = lab_routes(engine)
    docs = [remote_flows(r, by) for r in routes.values()]
    if not engine or any(ref.name not in routes for ref in engine_refs(engine)):
        accounting = ensure_accounting()
        topo = load_topology(engine)
        t0 = time.perf_counter()
        edges = aggregate(dump(), topo, by=by)
        docs.insert(0, flows_json(edges, accounting, time.perf_counter() - t0))
    if len(docs) == 1:
        return docs[0]
    return merge_flows(docs, time.perf_counter() - start)

"""`dockmesh bench latency|bandwidth SRC DST`: measured between two containers' namespaces
from the host; the containers need no tools."""

from __future__ import annotations

from typing import Annotated

import typer
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
from dockmesh.model.topology import Container

app = typer.Typer(
    help="Latency and bandwidth between two containers, from the host.", no_args_is_help=True
)


def _default_port(dst: Container) -> int:
    """The one TCP port DST listens on beyond its loopback (from its /proc/<pid>/net/tcp*),
    else its one published or exposed port."""
    from dockmesh.host.sockets import listening

    listeners = listening(dst.pid, ("tcp", "tcp6")) if dst.pid else None
    ports = {x.port for x in listeners or () if not x.loopback_only}
    if len(ports) == 1:
        return ports.pop()
    declared = {p.container_port for p in dst.ports if p.protocol == "tcp"}
    if not ports and len(declared) == 1:
        return declared.pop()
    found = ", ".join(str(p) for p in sorted(ports)) or "none"
    raise UserError(f"which port of {dst.name}? it listens on {found}: give --port")


def _target(engine: list[str] | None, src: str, dst: str):  # type: ignore[no-untyped-def]
    from dockmesh.diagnose.latency import ProbeError, pick_target

    try:
        return pick_target(load_topology(engine), src, dst)
    except ProbeError as e:
        raise UserError(str(e)) from None


@app.command("latency")
@handle_errors
def latency(
    src: Annotated[str, typer.Argument(help="Container the probes leave from.")],
    dst: Annotated[str, typer.Argument(help="Container they go to.")],
    mode: Annotated[
        str, typer.Option("--mode", help="icmp (echo), tcp (connect) or http (GET /).")
    ] = "tcp",
    port: Annotated[
        int | None,
        typer.Option("--port", min=1, max=65535, help="DST's port (default: the one it serves)."),
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, max=1_000_000)] = 100,
    interval: Annotated[
        float,
        typer.Option(
            "--interval", min=0.0, max=60.0, callback=finite, help="Seconds between samples."
        ),
    ] = 0.0,
    timeout: Annotated[
        float,
        typer.Option("--timeout", min=0.01, max=60.0, callback=finite, help="Seconds per sample."),
    ] = 1.0,
    engine: EngineOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """COUNT samples of ICMP echo, TCP connect or HTTP GET from SRC's namespace to DST's
    address on a network they share: min/avg/p50/p95/p99/max/stddev and a histogram."""
    from dockmesh.diagnose.latency import ProbeError, measure
    from dockmesh.diagnose.samples import histogram, histogram_lines, summarize
    from dockmesh.host.netns import NetnsPool

    if mode not in ("icmp", "tcp", "http"):
        raise UserError("--mode: icmp, tcp or http")
    target = _target(engine, src, dst)
    if mode != "icmp" and port is None:
        port = _default_port(target.dst)
    with NetnsPool(threads=1) as pool:
        try:
            samples, lost = measure(pool, target, mode, count, port, timeout, interval)
        except ProbeError as e:
            raise UserError(str(e)) from None
    summary = summarize(samples, lost)
    if json_out:
        print_json(
            {
                **summary.to_json(),
                "mode": mode,
                "src": target.src.name,
                "dst": target.dst.name,
                "address": target.address,
                "port": port,
                "network": target.network,
            }
        )
    else:
        where = f"{target.address}:{port}" if port else target.address
        out.print(
            Text(
                f"{mode} {target.src.name} → {target.dst.name} ({where} on {target.network}): "
                f"{summary.samples} samples, {summary.lost} lost",
                style="bold",
            )
        )
        s = summary
        out.print(
            f"min {s.min_ms:.3f}  avg {s.avg_ms:.3f}  p50 {s.p50_ms:.3f}  p95 {s.p95_ms:.3f}  "
            f"p99 {s.p99_ms:.3f}  max {s.max_ms:.3f}  stddev {s.stddev_ms:.3f} ms",
            markup=False,
            highlight=False,
        )
        for line in histogram_lines(histogram(samples)):
            out.print(line, markup=False, highlight=False)
    if not samples:
        raise typer.Exit(1)


@app.command("bandwidth")
@handle_errors
def bandwidth(
    src: Annotated[str, typer.Argument(help="Container that sends.")],
    dst: Annotated[str, typer.Argument(help="Container that receives.")],
    seconds: Annotated[float, typer.Option("--seconds", min=0.1, max=3600, callback=finite)] = 3.0,
    tool: Annotated[
        str, typer.Option("--tool", help="dockmesh (a stream from the host) or iperf3.")
    ] = "dockmesh",
    engine: EngineOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """A TCP stream from SRC's namespace to DST's for SECONDS, driven from the host (or the
    host's iperf3 run in both namespaces with --tool iperf3): bits per second."""
    from dockmesh.diagnose.bandwidth import iperf3, stream
    from dockmesh.diagnose.latency import ProbeError
    from dockmesh.host.netns import NetnsPool

    if tool not in ("dockmesh", "iperf3"):
        raise UserError("--tool: dockmesh or iperf3")
    target = _target(engine, src, dst)
    try:
        if tool == "iperf3":
            result = iperf3(target, seconds)
        else:
            with NetnsPool(threads=1) as pool:
                result = stream(pool, target, seconds)
    except ProbeError as e:
        raise UserError(str(e)) from None
    if json_out:
        print_json(
            {
                **result.to_json(),
                "src": target.src.name,
                "dst": target.dst.name,
                "address": target.address,
                "network": target.network,
            }
        )
    else:
        out.print(
            f"{target.src.name} → {target.dst.name} on {target.network}: "
            f"{result.bits_per_second / 1e9:.2f} Gbit/s ({result.bytes / 1e6:.0f} MB in "
            f"{result.seconds:.2f} s, {result.tool})",
            markup=False,
            highlight=False,
        )

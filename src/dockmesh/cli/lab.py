"""`dockmesh lab`: several Docker hosts on this machine (engines in network namespaces, a
swarm, etcd, an agent per host), and the failures to practise on them."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from dockmesh.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILED,
    JsonOpt,
    UserError,
    err,
    fail,
    handle_errors,
    out,
    print_json,
)
from dockmesh.lab.plan import DEFAULT_NAME, LabPlanError, check_name, parse_target

app = typer.Typer(
    help="Several Docker hosts on this machine: engines in network namespaces, a swarm, etcd "
    "and an agent per host; failures to practise on them.",
    no_args_is_help=True,
)


def lab_name_default() -> str:
    """The lab the commands (and `--engine hostN`) mean: $DOCKMESH_LAB, else `lab`."""
    return os.environ.get("DOCKMESH_LAB") or DEFAULT_NAME


NameOpt = Annotated[
    str | None,
    typer.Option("--name", help="Which lab (default: $DOCKMESH_LAB, else 'lab')."),
]

P = ParamSpec("P")
R = TypeVar("R")


def lab_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """The lab's own exceptions on the exit-code contract (the rest: `handle_errors`)."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        from dockmesh.lab.run import LabError
        from dockmesh.lab.state import LabStateError

        try:
            return fn(*args, **kwargs)
        except (LabPlanError, LabStateError) as e:
            fail(f"dockmesh: {e}", EXIT_BAD_INPUT)
        except LabError as e:
            fail(f"dockmesh: lab: {e}", EXIT_FAILED)

    return wrapper


def _name(name: str | None) -> str:
    # An explicit empty --name is refused, not read as the default: `--name "$LAB"` with
    # $LAB unset must not act on the lab named `lab`.
    return check_name(lab_name_default() if name is None else name)


@app.command("up")
@handle_errors
@lab_errors
def up(
    hosts: Annotated[int, typer.Option("--hosts", min=1, help="How many Docker hosts.")] = 2,
    etcd: Annotated[
        int, typer.Option("--etcd", help="etcd members for the shared catalog: 0, 1 or 3.")
    ] = 1,
    managers: Annotated[
        int, typer.Option("--managers", min=1, help="Swarm managers (host1…hostK).")
    ] = 1,
    subnet: Annotated[
        str | None,
        typer.Option(
            "--subnet",
            help="The lab's addresses, a /24 or larger in 10.0.0.0/8 (default: the first free "
            "one from 10.251.0.0/24).",
        ),
    ] = None,
    image: Annotated[
        list[str] | None,
        typer.Option(
            "--image",
            help="An image to copy from this machine's engine into every lab engine; repeat "
            "(default: dockmesh/toolbox and dockmesh/python, those present).",
        ),
    ] = None,
    name: NameOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Start a lab: N engines, each in its own network namespace, joined by a switch; a
    swarm; etcd; an agent per host. `lab down` removes it."""
    from dockmesh.lab import run

    lab = _name(name)
    t0 = time.monotonic()
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(f"lab {lab}: {hosts} host(s), {etcd} etcd member(s)")

        def say(msg: str) -> None:
            progress.update(task, description=f"lab {lab}: after {msg}")
            if not json_out:
                err.print(f"[green]✓[/] {msg} [dim]({time.monotonic() - t0:.1f} s)[/]")

        state = run.up(lab, hosts, etcd, managers, subnet, image, progress=say)
    if json_out:
        print_json(run.status(lab) | {"up_seconds": state.up_seconds})
        return
    plan = state.plan()
    err.print(
        f"lab {lab} up in {state.up_seconds:.1f} s: "
        + ", ".join(f"{h.name} {h.address}" for h in plan.hosts)
        + (f"; etcd {', '.join(e.address for e in plan.etcd)}" if plan.etcd else "")
    )
    if not state.shared_store and plan.etcd:
        err.print(
            "[yellow]note:[/] this agent has no --store: each host's agent knows its own host"
        )
    err.print(f"try: dockmesh lab exec host1 -- docker node ls   (--name {lab}: other labs)")


@app.command("down")
@handle_errors
@lab_errors
def down(name: NameOpt = None) -> None:
    """Remove the lab: its processes (by pid), namespaces, links, directories. No lab: nothing
    to do (exit 0)."""
    from dockmesh.lab import run

    lab = _name(name)
    t0 = time.monotonic()

    def say(msg: str) -> None:
        err.print(f"[green]✓[/] {msg} [dim]({time.monotonic() - t0:.1f} s)[/]")

    if run.down(lab, progress=say):
        err.print(f"lab {lab} removed ({time.monotonic() - t0:.1f} s)")
    else:
        err.print(f"no lab {lab!r} is up")


@app.command("status")
@handle_errors
@lab_errors
def status(name: NameOpt = None, json_out: JsonOpt = False) -> None:
    """Hosts (engine, swarm role, agent) and etcd members (health, leader)."""
    from dockmesh.lab import run

    doc = run.status(_name(name))
    if json_out:
        print_json(doc)
        return
    _render_status(doc)


def _mark(ok: bool) -> str:
    return "[green]ok[/]" if ok else "[red]down[/]"


def _render_status(doc: dict[str, Any]) -> None:
    t = Table(title=f"lab {doc['name']} on {doc['subnet']}", title_justify="left")
    for col in ("host", "address", "engine", "swarm", "agent"):
        t.add_column(col)
    for h in doc["hosts"]:
        t.add_row(
            h["name"], h["address"], _mark(h["engine_ok"]), h["swarm_role"], _mark(h["agent_ok"])
        )
    out.print(t)
    if doc["etcd"]:
        e = Table(title_justify="left")
        for col in ("etcd", "address", "health", "leader"):
            e.add_column(col)
        for m in doc["etcd"]:
            e.add_row(m["name"], m["address"], _mark(m["healthy"]), "yes" if m["leader"] else "")
        out.print(e)
    store = "shared through etcd" if doc["shared_store"] else "one per host"
    out.print(f"catalog: {store}")
    if doc["partitions"]:
        out.print("partitions: " + "; ".join(doc["partitions"]))


@app.command(
    "exec",
    context_settings={"allow_interspersed_args": False},
)
@handle_errors
@lab_errors
def exec_(
    host: Annotated[str, typer.Argument(help="A lab host: host1, host2, …")],
    cmd: Annotated[list[str] | None, typer.Argument(help="The command (after --).")] = None,
    name: NameOpt = None,
) -> None:
    """Run CMD in HOST's network namespace, with DOCKER_HOST set to its engine and its
    agent's DNS in /etc/resolv.conf; exits with CMD's exit code."""
    from dockmesh.lab import run

    # Options end at HOST (so CMD's own options stay CMD's): a `--` after it is ours.
    cmd = cmd or []
    if cmd and cmd[0] == "--":
        cmd = cmd[1:]
    if not cmd:
        raise UserError("lab exec: no command (dockmesh lab exec HOST -- CMD…)")
    argv, env = run.exec_argv(run.require(_name(name)), host, cmd)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as e:
        fail(f"dockmesh: lab exec: {e}", EXIT_FAILED)


@app.command("partition")
@handle_errors
@lab_errors
def partition(
    host: Annotated[str, typer.Argument(help="The host to cut off.")],
    peer: Annotated[
        str,
        typer.Option("--from", help="Only from 'etcd' (every member) or another host."),
    ] = "",
    name: NameOpt = None,
) -> None:
    """Drop HOST's lab traffic (in the switch: both ways) until `lab heal`."""
    from dockmesh.lab import run

    part = run.partition(_name(name), host, peer)
    err.print(f"partitioned: {part}")


@app.command("heal")
@handle_errors
@lab_errors
def heal(name: NameOpt = None) -> None:
    """Remove every partition."""
    from dockmesh.lab import run

    n = run.heal(_name(name))
    err.print(f"healed {n} partition(s)")


TargetArg = Annotated[
    str, typer.Argument(help="agent@HOST, engine@HOST or etcd@N (e.g. agent@host2, etcd@1).")
]


@app.command("kill")
@handle_errors
@lab_errors
def kill(target: TargetArg, name: NameOpt = None) -> None:
    """SIGKILL one of the lab's processes (no goodbye: an agent's lease runs out)."""
    from dockmesh.lab import run

    t = parse_target(target)
    was = run.stop(_name(name), t, sig=signal.SIGKILL)
    err.print(f"killed {t}" if was else f"{t} was not running")


@app.command("stop")
@handle_errors
@lab_errors
def stop(target: TargetArg, name: NameOpt = None) -> None:
    """Stop one of the lab's processes (SIGTERM, SIGKILL after 30 s)."""
    from dockmesh.lab import run

    t = parse_target(target)
    was = run.stop(_name(name), t)
    err.print(f"stopped {t}" if was else f"{t} was not running")


@app.command("start")
@handle_errors
@lab_errors
def start(target: TargetArg, name: NameOpt = None) -> None:
    """Start one of the lab's processes again; returns once it answers."""
    from dockmesh.lab import run

    t = parse_target(target)
    pid = run.start(_name(name), t)
    err.print(f"started {t} (pid {pid})")

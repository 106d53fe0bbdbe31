"""What every command shares: consoles, the exit-code contract, engine options, JSON output."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, ParamSpec, TypeVar

import typer
from rich.console import Console

from dockmesh.engine.backend import EngineBackend, EngineRef, default_url, parse_engine_refs
from dockmesh.errors import BuildError, EngineError, Interrupted, SpecError, UsageError
from dockmesh.projectfile.problems import visible

if TYPE_CHECKING:
    from dockmesh.lab.state import LabState
    from dockmesh.model.topology import Topology

# Names, values and file names come from users: `:smile:` in them must stay text, not turn
# into an emoji (markup is off where they are printed: `[bold]` stays text too).
#
# On a terminal, the terminal's width; piped or redirected, as wide as the lines are: a
# container's name cut at 80 columns is lost to `grep` and to scripts (rich would take 80, or
# $COLUMNS). Colour only on a terminal (rich's rule), and never with $NO_COLOR set (rich reads
# it).
PIPED_WIDTH = 10_000


def _console(stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    try:
        terminal = stream.isatty()
    except (AttributeError, ValueError):  # replaced by something that is no file, or closed
        terminal = False
    return Console(stderr=stderr, emoji=False, width=None if terminal else PIPED_WIDTH)


out = _console(stderr=False)
err = _console(stderr=True)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_CHANGES = 0, 1, 2, 3

EngineOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--engine",
        help="Engine URL or NAME=URL; repeat for several engines "
        "(default: $DOCKER_HOST or the local socket).",
    ),
]
# For the commands that act on one engine (plan, up, down, images build).
OneEngineOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--engine",
        help="Engine URL or NAME=URL (default: $DOCKER_HOST or the local socket).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document.")]


# Bad input: exit 2 with this one-line reason.
UserError = UsageError
EXIT_INTERRUPTED = 130


def finite(value: float) -> float:
    """The callback of every float option: click reads `nan` and `inf` as floats, and they
    pass every `min=`/`max=` (comparisons with NaN are false), so a number option given one
    would wait for ever or fail deep inside. A usage error instead: one line, exit 2."""
    if not math.isfinite(value):
        raise typer.BadParameter(f"{value} is not a finite number")
    return value


def fail(message: str, code: int) -> NoReturn:
    # One line, as the exit-code contract promises, whatever a file name or an engine's
    # answer inside the message holds.
    err.print(visible(message), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(code)


P = ParamSpec("P")
R = TypeVar("R")


def handle_errors(fn: Callable[P, R]) -> Callable[P, R]:
    """Maps dockmesh's exceptions onto the exit-code contract."""

    @wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return fn(*args, **kwargs)
        except SpecError as e:
            for line in e.lines:
                err.print(line, markup=False, highlight=False, soft_wrap=True)
            raise typer.Exit(EXIT_BAD_INPUT) from None
        except UserError as e:
            fail(f"dockmesh: {e}", EXIT_BAD_INPUT)
        except Interrupted as e:
            fail(f"dockmesh: interrupted: {e}", EXIT_INTERRUPTED)
        except (EngineError, BuildError) as e:
            fail(f"dockmesh: {e}", EXIT_FAILED)
        except BrokenPipeError:
            # The reader went away (`dockmesh logs -f | head -1`): nothing to say, as a program
            # killed by SIGPIPE says nothing. Stdout is pointed at /dev/null so that the flush
            # at exit does not fail again ("Exception ignored … BrokenPipeError").
            with contextlib.suppress(OSError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise typer.Exit(EXIT_FAILED) from None
        except OSError as e:
            fail(f"dockmesh: {e}", EXIT_FAILED)
        except KeyboardInterrupt:
            fail("dockmesh: interrupted", EXIT_INTERRUPTED)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except Exception as e:
            # A container that died under a probe, or no right to enter it: the command
            # failed, one line. (Looked up lazily: the module is not loaded at start-up.)
            netns = sys.modules.get("dockmesh.host.netns")
            if netns is not None and isinstance(e, netns.NetnsError):
                fail(f"dockmesh: {e}", EXIT_FAILED)
            # A bug: one line for the user, the whole story for whoever debugs it.
            if os.environ.get("DOCKMESH_DEBUG"):
                raise
            fail(
                f"dockmesh: internal error: {type(e).__name__}: {e} "
                "(run again with DOCKMESH_DEBUG=1 for the traceback, and report it)",
                EXIT_FAILED,
            )

    return wrapper


LAB_HOST = re.compile(r"host[1-9][0-9]*")


def lab_engine(value: str) -> str:
    """An `--engine` value as given, or `hostN=unix://…` when it is the bare name of a host
    of the running lab (`dockmesh lab`; $DOCKMESH_LAB names which): the one place a lab host
    name becomes its engine."""
    if not LAB_HOST.fullmatch(value):
        return value
    from dockmesh.lab.state import engine_url

    lab, state = current_lab(value)
    url = engine_url(state, value)
    if url is None:
        raise UserError(f"--engine {value!r}: lab {lab!r} has hosts host1 to host{state.hosts}")
    return f"{value}={url}"


def current_lab(value: str) -> tuple[str, LabState]:
    """The running lab ($DOCKMESH_LAB names which) and its state, for the `--engine` value
    `value` that names one of its hosts; a usage error when none is up."""
    from dockmesh.lab.plan import DEFAULT_NAME, LabPlanError, check_name, state_file
    from dockmesh.lab.state import LabStateError, parse_state

    try:
        lab = check_name(os.environ.get("DOCKMESH_LAB") or DEFAULT_NAME)
    except LabPlanError as e:
        raise UserError(f"$DOCKMESH_LAB: {e}") from None
    path = state_file(lab)
    try:
        with open(path, "rb") as f:
            return lab, parse_state(f.read(), path)
    except FileNotFoundError:
        raise UserError(
            f"--engine {value!r}: no lab {lab!r} is up (a lab host name needs `dockmesh lab up`;"
            " an engine is a URL such as unix:///run/docker.sock)"
        ) from None
    except LabStateError as e:
        raise UserError(str(e)) from None


def engine_refs(values: list[str] | None) -> list[EngineRef]:
    """--engine's values (a lab host name resolved by `lab_engine`), else $DOCKER_HOST, else
    the local socket."""
    try:
        return parse_engine_refs(
            [lab_engine(v) for v in values or []],
            default_url(os.environ.get("DOCKER_HOST")),
            "$DOCKER_HOST",
        )
    except ValueError as e:
        raise UserError(str(e)) from None


def connect(values: list[str] | None) -> list[EngineBackend]:
    from dockmesh.engine.docker import DockerBackend

    return [DockerBackend(r) for r in engine_refs(values)]


def connect_one(values: list[str] | None) -> EngineBackend:
    """The one engine of a command that acts on one (`OneEngineOpt`): a second --engine is a
    usage error, not silently ignored."""
    if values and len(values) > 1:
        raise UserError(f"--engine: this command acts on one engine; {len(values)} were given")
    return connect(values)[0]


def load_topology(engine: list[str] | None) -> Topology:
    """From a running agent when one answers (and no --engine was given), else the engines."""
    if not engine:
        from dockmesh.agentclient import agent_topology

        topo = agent_topology()
        if topo is not None:
            return topo
    from dockmesh.model.topology import build_topology

    clients = connect(engine)
    return build_topology([c.snapshot() for c in clients], version=1)


def print_json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    sys.stdout.flush()

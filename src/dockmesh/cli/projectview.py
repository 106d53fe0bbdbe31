"""`dockmesh ps`, `logs`, `config`: a project's containers, their output, and its file as
dockmesh reads it — what `docker compose ps|logs|config` show."""

from __future__ import annotations

import queue
import signal
import sys
import threading
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dockmesh.cli.common import (
    JsonOpt,
    OneEngineOpt,
    UserError,
    connect_one,
    engine_refs,
    err,
    handle_errors,
    out,
    print_json,
)
from dockmesh.cli.projectargs import FileArg, FileOpt, LongFileOpt, ProjectOpt
from dockmesh.model.labels import LABEL_PROJECT, LABEL_REPLICA, LABEL_SERVICE

if TYPE_CHECKING:
    from dockmesh.model.topology import Container


def project_containers(containers: Iterable[Container], project: str) -> list[Container]:
    """The project's containers by service, then replica."""

    def key(c: Container) -> tuple[str, int, str]:
        replica = c.labels.get(LABEL_REPLICA, "")
        return (c.labels.get(LABEL_SERVICE, ""), int(replica) if replica.isdigit() else 0, c.name)

    return sorted((c for c in containers if c.labels.get(LABEL_PROJECT) == project), key=key)


def ps_json(project: str, containers: Sequence[Container]) -> dict[str, Any]:
    return {
        "project": project,
        "containers": [
            {
                "name": c.name,
                "service": c.labels.get(LABEL_SERVICE),
                "replica": int(r) if (r := c.labels.get(LABEL_REPLICA, "")).isdigit() else None,
                "image": c.image,
                "state": c.state,
                "health": c.health,
                "ports": [p.to_json() for p in c.ports],
                "networks": sorted(a.network for a in c.attachments),
            }
            for c in containers
        ],
    }


def chosen(
    containers: Sequence[Container], services: Sequence[str], project: str
) -> list[Container]:
    """The containers of the SERVICEs named (all without a name); an unknown one is bad
    input."""
    if not services:
        return list(containers)
    have = {c.labels.get(LABEL_SERVICE) for c in containers}
    unknown = [s for s in services if s not in have]
    if unknown:
        listed = ", ".join(sorted(s for s in have if s)) or "none"
        raise UserError(
            f"no container of service {unknown[0]!r} in project {project!r} (services: {listed})"
        )
    return [c for c in containers if c.labels.get(LABEL_SERVICE) in services]


class LineSplitter:
    """A container's stream of chunks as whole lines, each prefixed with its container's name
    (as compose does: `NAME | line`); the last line, unfinished, when the stream ends."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix
        self._rest = b""

    # A line is cut into pieces of at most this many bytes: a container that never writes a
    # newline (`yes | tr -d '\\n'`) was held whole in memory, each chunk copying all of it.
    MAX_LINE = 64 * 1024

    def feed(self, chunk: bytes) -> list[str]:
        data = self._rest + chunk
        *lines, rest = data.split(b"\n")
        out: list[str] = []
        for line in lines:  # (one that ends here may still be longer than a piece)
            line = self._cut(line, out)
            out.append(self._line(line))
        self._rest = self._cut(rest, out)
        return out

    def _cut(self, raw: bytes, out: list[str]) -> bytes:
        """Whole pieces of `raw` past MAX_LINE go to `out`; what is left is returned."""
        while len(raw) > self.MAX_LINE:
            cut = self.MAX_LINE
            # Not inside a UTF-8 character: back over its continuation bytes (10xxxxxx).
            while cut > self.MAX_LINE - 3 and raw[cut] & 0xC0 == 0x80:
                cut -= 1
            out.append(self._line(raw[:cut]))
            raw = raw[cut:]
        return raw

    def end(self) -> list[str]:
        rest, self._rest = self._rest, b""
        return [self._line(rest)] if rest else []

    def _line(self, raw: bytes) -> str:
        return self.prefix + raw.rstrip(b"\r").decode("utf-8", "replace") + "\n"


def _prefixes(names: Sequence[str]) -> dict[str, str]:
    width = max((len(n) for n in names), default=0)
    return {n: f"{n:<{width}} | " for n in names}


def _write(lines: Iterable[str]) -> None:
    for line in lines:
        sys.stdout.write(line)
    sys.stdout.flush()


def register(app: typer.Typer) -> None:
    from dockmesh.cli.project import resolve_name

    @app.command("ps")
    @handle_errors
    def ps(
        file: FileOpt = None,
        project: ProjectOpt = None,
        engine: OneEngineOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """The project's containers: service, state (and health), ports and networks."""
        from dockmesh.model.topology import build_topology

        name = resolve_name(None, file, project)
        live = build_topology([connect_one(engine).snapshot()], version=1)
        ctrs = project_containers(live.containers, name)
        if json_out:
            print_json(ps_json(name, ctrs))
            return
        if not ctrs:
            err.print(f"project {name}: no containers", markup=False, highlight=False)
            return
        from dockmesh.cli.render import ps_table

        out.print(ps_table(ctrs))

    @app.command("logs")
    @handle_errors
    def logs(
        services: Annotated[
            list[str] | None,
            typer.Argument(
                metavar="[SERVICE]...", help="Only these services' containers (default: all)."
            ),
        ] = None,
        follow: Annotated[
            bool,
            typer.Option("--follow", "-f", help="Keep printing new output until Ctrl-C."),
        ] = False,
        tail: Annotated[
            int | None,
            typer.Option(
                "--tail", "-n", metavar="N", min=0, help="Only the last N lines of each container."
            ),
        ] = None,
        timestamps: Annotated[
            bool, typer.Option("--timestamps", "-t", help="Each line with the engine's time.")
        ] = False,
        file: LongFileOpt = None,
        project: ProjectOpt = None,
        engine: OneEngineOpt = None,
    ) -> None:
        """The output of the project's containers, each line after its container's name
        (`-f` is --follow here, as in `docker compose logs -f`; the file is --file)."""
        from dockmesh.engine.docker import DockerBackend
        from dockmesh.model.topology import build_topology

        name = resolve_name(None, file, project)
        backend = connect_one(engine)
        live = build_topology([backend.snapshot()], version=1)
        ctrs = chosen(project_containers(live.containers, name), services or [], name)
        if not ctrs:
            err.print(f"project {name}: no containers", markup=False, highlight=False)
            return
        # A backend of its own for the streams: docker-py's, whose logs the engine streams.
        streamer = DockerBackend(engine_refs(engine)[0])
        prefixes = _prefixes([c.name for c in ctrs])
        if not follow:
            for c in ctrs:
                split = LineSplitter(prefixes[c.name])
                for chunk in streamer.log_stream(c.id, False, tail, timestamps):
                    _write(split.feed(chunk))
                _write(split.end())
            return
        _follow(streamer, ctrs, prefixes, tail, timestamps)

    @app.command("config")
    @handle_errors
    def config(
        file_arg: FileArg = None,
        file: FileOpt = None,
        project: ProjectOpt = None,
        json_out: Annotated[bool, typer.Option("--json", help="Print it as JSON.")] = False,
    ) -> None:
        """The topology file as dockmesh reads it (its project named), as YAML; a file that
        is wrong prints its problems (exit 2). Reads no engine."""
        from dockmesh.cli.project import loaded_file
        from dockmesh.errors import SpecError
        from dockmesh.projectfile.load import format_problems

        loaded = loaded_file(file_arg, file, project)
        if loaded.shape_problems:
            raise SpecError(
                format_problems(loaded.filename, list(loaded.shape_problems), loaded.lines)
            )
        # What the file says, as resolved (variables substituted, the default network added;
        # defaults it left out stay out), its project named. A `$` in a value is written
        # `$$`, so that the output reads back in as the same file.
        doc = _dollars(loaded.spec.model_dump(mode="json", exclude_unset=True))
        doc = {"project": loaded.project, **{k: v for k, v in doc.items() if k != "project"}}
        if json_out:
            print_json(doc)
            return
        import yaml

        sys.stdout.write(yaml.safe_dump(doc, sort_keys=False, allow_unicode=True))


def _follow(
    streamer: Any,
    ctrs: Sequence[Container],
    prefixes: dict[str, str],
    tail: int | None,
    timestamps: bool,
) -> None:
    """Every container's stream read by a thread of its own, printed by this one as lines
    come; Ctrl-C closes the streams and ends the command (exit 0), as `docker logs -f`."""
    lines: queue.Queue[str | None] = queue.Queue()
    streams = [streamer.log_stream(c.id, True, tail, timestamps) for c in ctrs]

    def pump(stream: Any, prefix: str) -> None:
        split = LineSplitter(prefix)
        try:
            for chunk in stream:
                for line in split.feed(chunk):
                    lines.put(line)
            for line in split.end():
                lines.put(line)
        except Exception as e:  # one container's stream broke: say so, keep the others
            lines.put(f"{prefix}(stream ended: {e})\n")
        finally:
            lines.put(None)

    for stream, c in zip(streams, ctrs, strict=True):
        threading.Thread(target=pump, args=(stream, prefixes[c.name]), daemon=True).start()
    running = len(streams)
    # Ctrl-C only sets a flag: a KeyboardInterrupt raised inside the queue's wait could leave
    # its lock half-released ("release unlocked lock"); the loop looks at the flag instead.
    stop = threading.Event()
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, lambda _n, _f: stop.set())
    try:
        while running and not stop.is_set():
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line is None:
                running -= 1
            else:
                sys.stdout.write(line)
                if lines.empty():
                    sys.stdout.flush()
        sys.stdout.flush()
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        for s in streams:
            s.close()


def _dollars(value: Any) -> Any:
    """`value` with every `$` of its strings written `$$` (the file's escape)."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_dollars(v) for v in value]
    if isinstance(value, dict):
        return {k: _dollars(v) for k, v in value.items()}
    return value

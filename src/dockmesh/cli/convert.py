"""`dockmesh convert`: a Compose file → the equivalent dockmesh.yaml."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dockmesh.cli.common import err, handle_errors

if TYPE_CHECKING:
    from dockmesh.projectfile.context import EngineContext
    from dockmesh.projectfile.schema import Spec


def register(app: typer.Typer) -> None:
    @app.command("convert")
    @handle_errors
    def convert(
        file: Annotated[str, typer.Argument(help="The Compose file (docker-compose.yml).")],
        output: Annotated[
            str | None,
            typer.Option("--output", "-o", help="Write the dockmesh.yaml here (default: stdout)."),
        ] = None,
        force: Annotated[
            bool, typer.Option("--force", help="Overwrite the --output file if it exists.")
        ] = False,
    ) -> None:
        """Write the dockmesh.yaml equivalent of a Compose file. What has no equivalent is
        left out and named on stderr, each at its line."""
        import yaml

        from dockmesh.errors import SpecError, UsageError
        from dockmesh.projectfile.convert import convert_compose
        from dockmesh.projectfile.load import environment, format_problems, load_spec_bytes
        from dockmesh.projectfile.yamlpos import MAX_FILE_BYTES, load_located_bytes

        if not os.path.isfile(file):
            raise UsageError(f"{file}: no such file")
        if output is not None:
            _check_output(file, output, force)
        with open(file, "rb") as f:
            located = load_located_bytes(f.read(MAX_FILE_BYTES + 1))
        if located.data is None or located.problems:
            raise SpecError(format_problems(file, located.problems, located.lines))
        data, notes = convert_compose(located.data)
        for line in format_problems(file, notes, located.lines):
            err.print(line, markup=False, highlight=False, soft_wrap=True)
        text = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=100)
        # What was converted is checked as `up` would check it (with no engine): a value
        # Compose takes and dockmesh refuses (a port range, …) is said here, at the Compose
        # file's line, and nothing is written — not at `up`, in a file already written.
        if len(text.encode()) > MAX_FILE_BYTES:
            # Aliases are written out in full: a 200 KB file made 2 MB, which `up` refuses;
            # said as "the file is larger than 1 MiB", of a Compose file that is not.
            raise SpecError(
                [
                    f"{file}:1: (file): converted, it would be larger than the "
                    f"{MAX_FILE_BYTES >> 20} MiB a topology file may be (its aliases written "
                    "out in full); give each value once"
                ]
            )
        # The file keeps its `${…}` as written and names its env_files: what they hold is
        # `up`'s to judge with the variables and files there are then. As they are now, a
        # `.env` it cannot read, an env_file not there yet, a variable not set (`${IMAGE:?}`,
        # `ports: ["${PORT}:80"]`) are said, and stop nothing: they stopped the conversion
        # of a file that converted before.
        try:
            variables: Mapping[str, str] = environment(file, os.environ)
        except SpecError as e:
            for line in e.lines:
                err.print(f"{line}{_NOW}", markup=False, highlight=False, soft_wrap=True)
            variables = os.environ
        loaded = load_spec_bytes(text.encode(), file, variables, dotenv=False)
        # Found in the converted text, said at the Compose file's lines (the paths,
        # services.NAME.…, are the same in both).
        wrong = [replace(p, line=None) for p in loaded.problems(_any_host(loaded.spec))]
        now = [replace(p, message=p.message + _NOW) for p in wrong if _of_now(data, p.path)]
        for line in format_problems(file, now, located.lines):
            err.print(line, markup=False, highlight=False, soft_wrap=True)
        wrong = [p for p in wrong if not _of_now(data, p.path)]
        if wrong:
            raise SpecError(format_problems(file, wrong, located.lines))
        if output is None:
            typer.echo(text, nl=False)
        else:
            _write(output, text)


_NOW = " (as the variables and files are now; `up` checks it again)"


def _of_now(data: Any, path: tuple[str | int, ...]) -> bool:
    """Whether a problem of the converted file depends on what the environment and the
    host's files hold, not on what the file says: a problem in an env_file (another file), at
    a value holding a variable (or inside one), a parent interface from a variable, or a
    service_healthy where either side's replicas is a variable (`${N:-0}`)."""
    if path[:1] == ("services",) and len(path) >= 3 and path[2] == "env_file":
        named = _at(data, path[:4])  # an empty path names no file, now or later
        return not (isinstance(named, str) and not named.strip())
    if len(path) == 5 and path[:1] == ("services",) and path[2:5:2] == ("depends_on", "condition"):
        for who in (path[1], path[3]):  # the dependent's replicas count too
            for at in (("replicas",), ("deploy", "replicas")):
                replicas = _at(data, ("services", who, *at))
                if isinstance(replicas, str) and _holds_variable(replicas):
                    return True
    if len(path) == 3 and path[0] == "networks" and path[2] == "parent":
        # Said at `parent` when the parent is not there: it may be the one in options.
        opt = _at(data, ("networks", path[1], "options", "parent"))
        if isinstance(opt, str) and _holds_variable(opt):
            return True
    node = data
    for key in path:
        if isinstance(node, str):
            break
        node = _at(node, (key,))
    return isinstance(node, str) and _holds_variable(node)


def _at(node: Any, path: tuple[str | int, ...]) -> Any:
    for key in path:
        if isinstance(node, dict):
            node = node.get(key)
        elif isinstance(node, list) and isinstance(key, int) and 0 <= key < len(node):
            node = node[key]
        else:
            return None
    return node


def _holds_variable(text: str) -> bool:
    """A `$VAR` or `${…}` well formed (a malformed one is refused whatever is set)."""
    import re

    from dockmesh.projectfile.interpolate import InterpolationError, substitute_variables

    if re.search(r"\$[{A-Za-z_]", text.replace("$$", "")) is None:
        return False
    try:
        substitute_variables(text, _Anything())
    except InterpolationError:
        return False
    return True


class _Anything(Mapping[str, str]):
    """Every variable set (to a short value): what a well-formed `${…}` could be given."""

    def __getitem__(self, name: str) -> str:
        return "x"

    def __contains__(self, name: object) -> bool:
        return True

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


def _any_host(spec: Spec) -> EngineContext:
    """The engine and host a converted file is checked against: one that has whatever the
    file needs of them (a swarm for overlay, ipvlan, the parent interfaces it names, as
    substituted: `${IFACE:-eth0}` names eth0), since `convert` says what dockmesh refuses in
    the file, not what this machine lacks."""
    from dockmesh.projectfile.context import EngineContext

    parents: set[str] = set()
    for net in spec.networks.values():
        if net is None:  # `lan:` with nothing under it
            continue
        for parent in (net.parent, net.options.get("parent")):
            if isinstance(parent, str):
                parents.add(parent)
    return EngineContext(swarm_active=True, ipvlan_available=True, interfaces=frozenset(parents))


def _check_output(file: str, output: str, force: bool) -> None:
    """--output must be a file of its own: never the Compose file itself (which --force would
    have replaced), a folder, or a symbolic link (writing through one changes a file
    elsewhere, a dangling one even makes it)."""
    from dockmesh.errors import UsageError

    if os.path.islink(output):
        target = os.readlink(output)
        raise UsageError(f"--output {output} is a symbolic link (to {target}): give a file")
    if os.path.isdir(output):
        raise UsageError(f"--output {output} is a folder: give a file's path")
    if os.path.exists(output):
        if os.path.samefile(file, output):
            raise UsageError(f"--output {output} is the Compose file itself: give another file")
        if not force:
            raise UsageError(f"{output} exists: give --force to overwrite it")
    folder = os.path.dirname(output) or "."
    if not os.path.isdir(folder):
        raise UsageError(f"--output {output}: no folder {folder}")


def _write(output: str, text: str) -> None:
    """Whole or not at all: a temporary file beside it, renamed over it."""
    from dockmesh.errors import UsageError

    folder = os.path.dirname(output) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".dockmesh-convert-", dir=folder)
    except OSError as e:
        raise UsageError(f"--output {output}: cannot be written: {e.strerror or e}") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, output)
    except OSError as e:
        os.unlink(tmp)
        raise UsageError(f"--output {output}: cannot be written: {e.strerror or e}") from None

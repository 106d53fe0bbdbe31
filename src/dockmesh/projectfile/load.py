"""Read a dockmesh.yaml: text → located data → Spec → (with the engine's context) validated
desired state.
Every problem is reported at once as `FILE:LINE: path: message`."""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path as FsPath

from dockmesh.errors import SpecError
from dockmesh.projectfile.context import EngineContext
from dockmesh.projectfile.desired import Desired, desired_state
from dockmesh.projectfile.interpolate import interpolate_document, parse_dotenv
from dockmesh.projectfile.parse import is_host_path
from dockmesh.projectfile.problems import Path, Problem, format_problem, line_of, visible
from dockmesh.projectfile.schema import Spec, parse_spec_partial, with_default_network
from dockmesh.projectfile.validate import validate
from dockmesh.projectfile.yamlpos import MAX_FILE_BYTES, load_located_bytes

MAX_REPORTED = 100  # problems printed; a generated file can have one per line


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    """A read file: its well-formed part as a Spec, and the shape problems of the rest."""

    filename: str
    spec: Spec
    project: str
    lines: dict[Path, int]
    shape_problems: tuple[Problem, ...] = ()
    left_out: frozenset[str] = frozenset()
    # `FILE:LINE: path: message` lines the user should see but that stop nothing (a variable
    # used without a value).
    warnings: tuple[str, ...] = ()

    def check(self, context: EngineContext) -> Desired:
        """Validates against what the engine and host hold; raises SpecError with every
        problem of the file, shape and meaning together."""
        problems = self.problems(context)
        if problems:
            raise SpecError(self._format(problems))
        return desired_state(self.spec, self.project)

    def problems(self, context: EngineContext) -> list[Problem]:
        """Every problem of the file, shape and meaning together (`check` raises them)."""
        # A value already wrong (a `${…}` that did not substitute) is not judged again.
        said = {p.path for p in self.shape_problems}
        return [
            *self.shape_problems,
            *(
                p
                for p in validate(self.spec, self.project, context, self.left_out)
                if p.path not in said
            ),
        ]

    def _format(self, problems: list[Problem]) -> list[str]:
        return format_problems(self.filename, problems, self.lines)


def format_problems(filename: str, problems: list[Problem], lines: dict[Path, int]) -> list[str]:
    """In file order, whatever order the checks found them in; at most MAX_REPORTED."""
    ordered = sorted(problems, key=lambda p: p.line or line_of(p.path, lines))
    out = [format_problem(filename, p, lines) for p in ordered[:MAX_REPORTED]]
    if len(ordered) > MAX_REPORTED:
        last = ordered[MAX_REPORTED - 1]
        more = Problem(("(file)",), f"{len(ordered) - MAX_REPORTED} more problems not shown")
        out.append(format_problem(filename, more, {(): last.line or line_of(last.path, lines)}))
    return out


def default_project(path: str) -> str:
    folder = os.path.basename(os.path.dirname(os.path.abspath(path))) or "default"
    return re.sub(r"[^a-z0-9_-]", "", folder.lower()) or "default"


DOTENV = ".env"
MAX_DOTENV_BYTES = 1024 * 1024


class EnvFileError(ValueError):
    """A `.env` or env_file that cannot be read as text; `line` where (1: the whole file)."""

    def __init__(self, message: str, line: int = 1) -> None:
        super().__init__(message)
        self.line = line


def read_env_file(path: str) -> str:
    """A variables file's text. Only a regular file: a FIFO (or a device) named as one would
    block the read forever, or never end; one larger than MAX_DOTENV_BYTES is refused, not
    cut short."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise EnvFileError(e.strerror or str(e)) from None
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise EnvFileError("a folder" if stat.S_ISDIR(mode) else "not a regular file")
    with os.fdopen(fd, "rb") as f:
        try:
            raw = f.read(MAX_DOTENV_BYTES + 1)
        except OSError as e:
            raise EnvFileError(e.strerror or str(e)) from None
    if len(raw) > MAX_DOTENV_BYTES:
        raise EnvFileError(f"larger than {MAX_DOTENV_BYTES >> 20} MiB")
    raw = raw.removeprefix(b"\xef\xbb\xbf")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw[: e.start].count(b"\n") + 1
        raise EnvFileError("not UTF-8; save the file as UTF-8", line) from None


def environment(path: str, env: Mapping[str, str]) -> Mapping[str, str]:
    """The variables a file's `${…}` take: `env` (the process's) over the `.env` file beside
    the topology file, as Compose reads them. Raises SpecError for a `.env` it cannot read."""
    dotenv = os.path.join(os.path.dirname(os.path.abspath(path)), DOTENV)
    if not os.path.isfile(dotenv):
        return env
    try:
        text = read_env_file(dotenv)
    except EnvFileError as e:
        raise SpecError([f"{dotenv}:{e.line}: (file): {e}"]) from None
    values, problems = parse_dotenv(text, env)
    if problems:
        raise SpecError([visible(f"{dotenv}:{line}: (env): {msg}") for line, msg in problems])
    return {**values, **env}


def _with_files(spec: Spec, base: str, problems: list[Problem]) -> Spec:
    """The spec with what it names on the host read or resolved against the file's folder
    `base`: each service's `env_file:` merged under its `environment:` (which wins, as in
    Compose; its values taken as written: Compose interpolates the project's `.env`, not an
    env_file), and bind mounts' sources made absolute. A file that cannot be read is a
    problem at its entry."""
    services = dict(spec.services)
    # Each file read once, however many services name it: 300 services naming one 1 MB file
    # read it 300 times (6 s, 325 MiB of copies of the same values).
    read: dict[str, tuple[dict[str, str], list[tuple[int, str]]] | EnvFileError] = {}
    for name, svc in spec.services.items():
        files = [svc.env_file] if isinstance(svc.env_file, str) else svc.env_file
        from_files: dict[str, str] = {}
        for i, rel in enumerate(files):
            at: Path = ("services", name, "env_file")
            at = at if isinstance(svc.env_file, str) else (*at, i)
            if not rel.strip():  # joined to the folder, it named the folder ("a folder")
                problems.append(Problem(at, "an empty path: name a NAME=value file"))
                continue
            full = os.path.join(base, os.path.expanduser(rel))
            if full not in read:
                try:
                    read[full] = parse_dotenv(read_env_file(full))
                except EnvFileError as e:
                    read[full] = e
            got = read[full]
            if isinstance(got, EnvFileError):
                where = f" (line {got.line})" if got.line > 1 else ""
                problems.append(Problem(at, f"{rel}: cannot be read{where}: {got}"))
                continue
            values, wrong = got
            problems.extend(Problem(at, f"{rel} line {line}: {msg}") for line, msg in wrong)
            from_files.update(values)
        volumes = [_bind_absolute(v, base) for v in svc.volumes]
        if from_files or volumes != svc.volumes:
            env = {**from_files, **svc.environment}
            services[name] = svc.model_copy(update={"environment": env, "volumes": volumes})
    return spec.model_copy(update={"services": services})


def _bind_absolute(text: str, base: str) -> str:
    """`./data:/x:ro` → `/the/file's/folder/data:/x:ro`; anything else as written."""
    source, colon, rest = text.partition(":")
    if not colon or not is_host_path(source):
        return text
    full = os.path.normpath(os.path.join(base, os.path.expanduser(source)))
    return f"{full}:{rest}"


def load_spec(path: str, env: Mapping[str, str] | None = None) -> LoadedSpec:
    """Reads a file. Raises SpecError when the file is wrong as YAML (too large, not UTF-8,
    malformed, tags, duplicate keys...) or is not a mapping, OSError when it cannot be read;
    other problems wait for `check`, so that all of them are reported at once. `env`: the
    variables `${…}` take (default: the process's), over the `.env` file beside `path`."""
    # One byte past the limit is enough to say the file is too large, and bounds the memory
    # a huge file (or a device that never ends) can take.
    with FsPath(path).open("rb") as f:
        raw = f.read(MAX_FILE_BYTES + 1)
    return load_spec_bytes(raw, path, env)


def load_spec_bytes(
    raw: bytes, path: str, env: Mapping[str, str] | None = None, *, dotenv: bool = True
) -> LoadedSpec:
    """`load_spec` of a file's bytes, read as if they were at `path` (its name in messages,
    its folder for `.env`, env_file and bind mounts). `dotenv=False`: `env` is all the
    variables there are (the caller read, or could not read, the `.env` file itself)."""
    located = load_located_bytes(raw)
    problems = list(located.problems)
    spec: Spec | None = None
    left_out: frozenset[str] = frozenset()
    warned: list[Problem] = []
    if located.data is not None:
        given = os.environ if env is None else env
        variables = environment(path, given) if dotenv else given
        data, wrong, warned = interpolate_document(located.data, variables)
        problems += wrong
        spec, shape, left_out = parse_spec_partial(data)
        # `image: !foo x` is one mistake: the tag. Its value's shape is not a second one.
        said = {p.path for p in [*located.problems, *wrong]}
        problems += [p for p in shape if p.path not in said]
    # A file wrong at the YAML level (a tag, a duplicate key) is refused before anything, an
    # engine included, looks at it; with its shape problems, which need no engine either.
    if spec is None or located.problems:
        raise SpecError(format_problems(path, problems, located.lines))
    base = os.path.dirname(os.path.abspath(path))
    spec = with_default_network(_with_files(spec, base, problems))
    project = spec.project if spec.project is not None else default_project(path)
    warnings = tuple(format_problems(path, warned, located.lines))
    return LoadedSpec(path, spec, project, located.lines, tuple(problems), left_out, warnings)

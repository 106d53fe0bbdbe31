"""The README's tour, run: the blocks marked `<!-- tour -->` are executed against the real
engine, command by command, and what the commands print now is compared with what the README
shows (or written into it with `--write`). `scripts/tour` runs this module;
`tests/integration/test_tour.py` fails when the two differ.

What a marked block holds: `$ COMMAND` lines, each followed by what it prints (stdout and
stderr together, as a terminal shows them). The commands run in a shell, in README order,
against one project: the tour's `demo` is brought up under a name of its own, four characters
like `demo` (`dmt` + a hex digit) so that the tables keep their widths, and taken down at the
end, on failure too. They run in a temporary folder holding a copy of examples/ in which the
examples' host ports (18080, 18081) and subnets (10.77.1-3.0/24) are ones the machine does not
hold now (a shared machine may run the demo, or another proxy on 18080); what the commands
print is mapped back. Nothing else on the engine is touched.

What truly varies is normalised, explicitly and nowhere else: the engine's ids (12 or 64 hex
digits) and trailing spaces (`normalise`); a warning that another project on the engine has
an `api` too (`_OTHERS_API`); the seconds `images build` took and the hash of the source tree
in dockmesh/python's inputs (`image_facts`). The image sizes in the prose are measured with
`docker image inspect` and must be within SIZE_TOLERANCE of the README's.

    scripts/tour            # exit 1 and a diff when the README's figures drifted
    scripts/tour --write    # rewrite them from what the commands print now (review the diff)
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import fcntl
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
MARK = "<!-- tour -->"
IMAGES_MARK = "<!-- tour: images -->"
PROJECT = "demo"  # the tour's project, as the README names it
LOCK = Path("/tmp/dockmesh-tour.lock")
SIZE_TOLERANCE = 0.15
# `up examples/changed.yaml` fails because the host port its status page publishes is taken:
# by the gateway's admin listener (examples/microservices.yaml), which the gateway opens a
# moment after it starts. The command waits for it, as a reader would have.
WAIT_FOR_PORT = {"examples/changed.yaml": ("127.0.0.1", 18081)}
# What the examples hold on the machine, fixed in their files: the tour runs on copies where
# each is one the machine does not hold now (a shared machine may run the demo, or another
# proxy on 18080), and says the README's in what it prints.
EXAMPLE_PORTS = ("18080", "18081")
EXAMPLE_SUBNETS = ("10.77.1.", "10.77.2.", "10.77.3.")


class Unavailable(Exception):
    """Every dmt<hex> project name is taken on the engine: the tour cannot run here now."""


@dataclass
class Command:
    text: str
    output: list[str] = field(default_factory=list)
    blank_before: bool = False


@dataclass
class Block:
    start: int  # index of the first line inside the fence
    end: int  # index of the closing fence
    commands: list[Command]


def blocks(lines: list[str], mark: str = MARK) -> list[Block]:
    """The fenced blocks right after a `mark` line."""
    found = []
    for i, line in enumerate(lines):
        if line.strip() != mark:
            continue
        if i + 1 >= len(lines) or not lines[i + 1].startswith("```"):
            raise ValueError(f"README.md:{i + 1}: {mark} is not followed by a fenced block")
        start = i + 2
        end = next(j for j in range(start, len(lines)) if lines[j].startswith("```"))
        found.append(Block(start, end, parse(lines[start:end])))
    return found


def parse(body: list[str]) -> list[Command]:
    commands: list[Command] = []
    blank = False
    for line in body:
        if line.startswith("$ "):
            commands.append(Command(line[2:], blank_before=blank))
            blank = False
        elif not line.strip():
            blank = True
        elif commands:
            if blank:
                commands[-1].output.append("")
            commands[-1].output.append(line)
            blank = False
        else:
            raise ValueError(f"output before any command: {line!r}")
    return commands


def render(commands: list[Command]) -> list[str]:
    out: list[str] = []
    for c in commands:
        if c.blank_before and out:
            out.append("")
        out.append(f"$ {c.text}")
        out.extend(c.output)
    return out


_IDS = re.compile(r"\b[0-9a-f]{64}\b|\b[0-9a-f]{12}\b")
_BUILD_LINE = re.compile(
    r"^✓ (?P<image>dockmesh/\w+):latest (?:up to date|built) "
    r"\((?P<seconds>[0-9.]+) s, inputs (?P<inputs>[0-9a-f]{12})\)$"
)


_OTHERS_API = re.compile(r"^warning: service name '[^']+' is used by projects ")


def normalise(line: str) -> str:
    """What varies from run to run, and only that: engine ids, and trailing spaces."""
    return _IDS.sub("<id>", line.rstrip())


def own_name(project: str) -> re.Pattern[str]:
    """`project` as a name part: `demo` in `demo-api-1`, `demo_backend`, `project demo`."""
    return re.compile(rf"\b{re.escape(project)}(?=[-_ .:]|$)")


def as_run(command: str, name: str) -> str:
    """The README's command for project `name`: `-p` on the project commands, and the names
    of its containers and networks in the docker commands."""
    command = re.sub(r"^dockmesh (plan|up|down) ", rf"dockmesh \1 -p {name} ", command)
    return own_name(PROJECT).sub(name, command)


@dataclass(frozen=True)
class Tour:
    name: str  # the project's name on the engine, for the README's `demo`
    folder: Path  # holds examples/, copied with `mapping` applied
    mapping: dict[str, str]  # the examples' ports and subnets → the copies'


def run_command(command: str, tour: Tour) -> list[str]:
    for path, (host, port) in WAIT_FOR_PORT.items():
        if path in command:
            wait_listening(host, int(tour.mapping[str(port)]))
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
        "DOCKMESH_AGENT": "http://127.0.0.1:9",  # the tour's commands read the engine
    }
    proc = subprocess.run(
        # The braces take a trailing `# comment` and `a; b` alike: stderr of all of it.
        ["sh", "-c", f"{{ {as_run(command, tour.name)}\n}} 2>&1"],
        cwd=tour.folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    back = {new: old for old, new in tour.mapping.items()}
    text = own_name(tour.name).sub(PROJECT, substitute(proc.stdout, back))
    # On a shared engine another project may have an `api` too (the demo's): `plan` and `up`
    # then warn of the collision. The README shows a machine with the tour's project alone.
    lines = [line.rstrip() for line in text.splitlines() if not _OTHERS_API.match(line)]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def wait_listening(host: str, port: int, deadline: float = 30) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if listening(host, port):
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {host}:{port} after {deadline} s")


def listening(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def client() -> Any:
    import docker

    return docker.APIClient(version="auto")


def free_port() -> str:
    """A port nothing listens on now, five digits like the example's."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = str(s.getsockname()[1])
        if len(port) == 5:
            return port


def remapping() -> dict[str, str]:
    """The examples' ports and subnets → ones this machine does not hold now."""
    from dockmesh.engine.backend import EngineRef, default_url
    from dockmesh.engine.docker import DockerBackend
    from dockmesh.model.ipam import pick_free_subnets
    from dockmesh.model.topology import build_topology
    from dockmesh.ops.context import taken_subnets

    backend = DockerBackend(EngineRef("local", default_url(os.environ.get("DOCKER_HOST"))))
    taken = taken_subnets(build_topology([backend.snapshot()], 1))
    subnets = pick_free_subnets(taken, len(EXAMPLE_SUBNETS), random.Random())
    mapping = {
        old: str(new.network_address)[:-1]
        for old, new in zip(EXAMPLE_SUBNETS, subnets, strict=True)
    }
    mapping.update({port: free_port() for port in EXAMPLE_PORTS})
    return mapping


def substitute(text: str, mapping: dict[str, str]) -> str:
    pattern = re.compile("|".join(re.escape(k) for k in sorted(mapping, key=len, reverse=True)))
    return pattern.sub(lambda m: mapping[m.group(0)], text)


def free_name(api: Any) -> str:
    """`dmt` + a hex digit that names nothing on the engine: as long as `demo`."""
    used = {(c.get("Labels") or {}).get("dockmesh.project") for c in api.containers(all=True)}
    used |= {(n.get("Labels") or {}).get("dockmesh.project") for n in api.networks()}
    names = [n.lstrip("/") for c in api.containers(all=True) for n in c.get("Names") or []]
    names += [n["Name"] for n in api.networks()]
    for digit in "0123456789abcdef":
        name = f"dmt{digit}"
        if name not in used and not any(n.startswith((f"{name}-", f"{name}_")) for n in names):
            return name
    raise Unavailable("no free dmt<hex> project name")


def remove_project(api: Any, name: str) -> None:
    import docker.errors

    for c in api.containers(all=True, filters={"label": f"dockmesh.project={name}"}):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(c["Id"], force=True, v=True)
    for n in api.networks(filters={"label": f"dockmesh.project={name}"}):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_network(n["Id"])


@contextlib.contextmanager
def tour_project() -> Iterator[Tour]:
    """A project of the tour's own, on copies of the examples, removed afterwards, on failure
    too. One tour at a time on a machine."""
    LOCK.touch(exist_ok=True)
    with LOCK.open("a") as lock, tempfile.TemporaryDirectory(prefix="dockmesh-tour") as tmp:
        fcntl.flock(lock, fcntl.LOCK_EX)
        api = client()
        mapping = remapping()
        folder = Path(tmp)
        shutil.copytree(ROOT / "examples", folder / "examples")
        for path in (folder / "examples").glob("*.yaml"):
            path.write_text(substitute(path.read_text(), mapping))
        name = free_name(api)
        try:
            yield Tour(name, folder, mapping)
        finally:
            subprocess.run(
                [sys.executable, "-m", "dockmesh", "down", "-p", name],
                cwd=folder,
                capture_output=True,
                timeout=300,
            )
            remove_project(api, name)


@dataclass
class Result:
    lines: list[str]  # the README with what the commands print now
    drift: list[str]  # a diff per block that differs, empty when none does


def run_tour(lines: list[str]) -> Result:
    """Runs the marked blocks in README order, then writes each back where it was (last
    first, so that a block whose length changed moves none before it)."""
    drift: list[str] = []
    ran: list[tuple[Block, list[str]]] = []
    with tour_project() as tour:
        for block in blocks(lines):
            now = [
                Command(c.text, run_command(c.text, tour), c.blank_before) for c in block.commands
            ]
            want, got = render(block.commands), render(now)
            if [normalise(x) for x in want] != [normalise(x) for x in got]:
                diff = difflib.unified_diff(want, got, "README.md", "now", n=1, lineterm="")
                drift.append("\n".join(diff))
            ran.append((block, got))
    new = list(lines)
    for block, got in reversed(ran):
        new[block.start : block.end] = got
    return Result(new, drift)


def image_facts(lines: list[str]) -> Result:
    """The `images build` block's lines and the sizes in the prose, against the images the
    engine holds: what `dockmesh images build` prints for them when nothing changed."""
    api = client()
    new = list(lines)
    drift: list[str] = []
    for block in blocks(lines, IMAGES_MARK):
        for i in range(block.start, block.end):
            m = _BUILD_LINE.match(lines[i])
            if lines[i].startswith("$ ") or not lines[i].strip():
                continue
            if not m:
                drift.append(f"README.md:{i + 1}: not a line `images build` prints: {lines[i]}")
                continue
            image = m.group("image")
            label = api.inspect_image(f"{image}:latest")["Config"]["Labels"] or {}
            inputs = label.get("dockmesh.image.inputs", "")[:12]
            # dockmesh/python's inputs hash the source tree: every commit changes it.
            if image == "dockmesh/toolbox" and inputs != m.group("inputs"):
                drift.append(
                    f"README.md:{i + 1}: {image}'s inputs are {inputs}, not {m.group('inputs')}"
                )
                new[i] = lines[i].replace(m.group("inputs"), inputs)
    size = re.compile(r"`(dockmesh/\w+)` \((\d+) MB\)")
    for i, line in enumerate(lines):
        for m in size.finditer(line):
            measured = api.inspect_image(f"{m.group(1)}:latest")["Size"] / 1e6
            shown = int(m.group(2))
            if abs(shown - measured) > SIZE_TOLERANCE * measured:
                drift.append(
                    f"README.md:{i + 1}: {m.group(1)} is {measured:.0f} MB, not {shown} MB"
                )
                new[i] = new[i].replace(m.group(0), f"`{m.group(1)}` ({measured:.0f} MB)")
    return Result(new, drift)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/tour", description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", action="store_true", help="rewrite the README's figures")
    args = parser.parse_args(argv)
    lines = README.read_text().split("\n")
    try:
        ran = run_tour(lines)
    except Unavailable as e:
        print(f"scripts/tour: cannot run the tour here now: {e}", file=sys.stderr)
        return 2
    facts = image_facts(ran.lines)
    drift = ran.drift + facts.drift
    for d in drift:
        print(d)
    if args.write:
        README.write_text("\n".join(facts.lines))
        print(f"README.md: {len(drift)} figure(s) rewritten" if drift else "README.md: unchanged")
        return 0
    return 1 if drift else 0


if __name__ == "__main__":
    sys.exit(main())

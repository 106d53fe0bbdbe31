"""`dockmesh agent install` / `agent uninstall`: the agent as a container (the `docker run`
line of ops.agentinstall, run by the docker command: what --print shows is what runs) or as a
systemd service on the host (--service)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from dockmesh.cli.common import JsonOpt, UserError, err, handle_errors, out, print_json
from dockmesh.errors import EngineError
from dockmesh.ops.agentinstall import (
    CONTAINER_STATE_DIR,
    DEFAULT_API,
    DEFAULT_DNS,
    DEFAULT_NAME,
    DEFAULT_STATE_DIR,
    ROLE,
    ROLE_LABEL,
    UNIT_DIR,
    UNIT_MARK,
    AgentInstall,
    compose_snippet,
    container_command,
    docker_run_args,
    docker_run_line,
    service_command,
    systemd_unit,
    unit_name,
    unit_path,
)

if TYPE_CHECKING:
    from dockmesh.codecs.hostdns import HostDnsPlan

# How long the agent has to answer its API once started (a loaded machine: several seconds).
ANSWER_S = 60.0
# The agent's own state files; the policy and CA folders beside them belong to
# `dockmesh policy apply` and `dockmesh ca`, and stay.
STATE_FILES = ("state.db", "state.db-wal", "state.db-shm", "state.db-journal")

NameOpt = Annotated[
    str, typer.Option("--name", help="The container's name (with --service: the unit's).")
]
StateDirOpt = Annotated[
    str,
    typer.Option("--state-dir", help="The host folder for the agent's state (its state.db)."),
]
ServiceOpt = Annotated[
    bool,
    typer.Option(
        "--service",
        help="A systemd service on the host instead of a container: it keeps its API and "
        "loopback DNS while the engine restarts.",
    ),
]
UnitDirOpt = Annotated[
    str, typer.Option("--unit-dir", help="Where --service writes the unit.", hidden=False)
]


def _docker(*args: str) -> subprocess.CompletedProcess[str]:
    docker = shutil.which("docker")
    if docker is None:
        raise UserError(
            "the docker command is not installed here: `dockmesh agent install --print` "
            "shows the docker run line and a compose snippet to use elsewhere"
        )
    return subprocess.run([docker, *args], capture_output=True, text=True)


def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no output)"


def _inspect(name: str) -> dict[str, Any] | None:
    """The container of exactly that name. Not `docker inspect NAME`: the engine also finds
    a container by a prefix of its ID, so `--name cafe` found another container whose ID
    starts so (and, were it an agent, replaced or removed it)."""
    found = _docker("ps", "-a", "--no-trunc", "--filter", f"name=^/{name}$", "--format", "{{.ID}}")
    if found.returncode != 0:
        raise EngineError(f"docker ps --filter name={name}: {_last_line(found.stderr)}")
    for cid in found.stdout.split():
        proc = _docker("container", "inspect", cid)
        if proc.returncode != 0:
            if "no such" in proc.stderr.lower():
                continue  # gone meanwhile
            raise EngineError(f"docker container inspect {name}: {_last_line(proc.stderr)}")
        docs = json.loads(proc.stdout)
        if docs and docs[0].get("Name") == f"/{name}":  # the filter is a regexp: `.` matches any
            return dict(docs[0])
    return None


def _image_id(image: str) -> str | None:
    proc = _docker("image", "inspect", "-f", "{{.Id}}", image)
    return proc.stdout.strip() if proc.returncode == 0 else None


def _is_agent(doc: dict[str, Any]) -> bool:
    labels = (doc.get("Config") or {}).get("Labels") or {}
    return bool(labels.get(ROLE_LABEL) == ROLE)


def _state_source(doc: dict[str, Any]) -> str | None:
    for m in doc.get("Mounts") or []:
        if m.get("Destination") == CONTAINER_STATE_DIR:
            return str(m.get("Source"))
    return None


def _same(doc: dict[str, Any], spec: AgentInstall, image_id: str) -> bool:
    """Runs from the same image with the same command and state folder: nothing to do."""
    running = bool((doc.get("State") or {}).get("Running"))
    cmd = (doc.get("Config") or {}).get("Cmd") or []
    return (
        running
        and doc.get("Image") == image_id
        and list(cmd) == container_command(spec)
        and _state_source(doc) == spec.state_path
    )


def _loopback(host: str) -> str:
    """Where to ask an API that listens on `host` (all addresses: loopback)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _api_url(api: tuple[str, int]) -> str:
    return f"http://{_loopback(api[0])}:{api[1]}"


def _answers(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url + "/v1/status/leader", timeout=1) as r:
            return bool(r.status == 200)
    except OSError:
        return False


def _wait_api(url: str, alive: Any) -> float:
    """Seconds until the agent answered; EngineError when it did not (or `alive()` says it
    died meanwhile)."""
    started = time.monotonic()
    while time.monotonic() - started < ANSWER_S:
        if _answers(url):
            return time.monotonic() - started
        problem = alive()
        if problem:
            raise EngineError(problem)
        time.sleep(0.2)
    raise EngineError(f"the agent did not answer on {url} within {ANSWER_S:.0f} s")


def _program() -> list[str]:
    """The installed dockmesh, as the service runs it: the console script beside this
    interpreter (a venv's or pipx's bin/), else the interpreter with `-m dockmesh`. Absolute,
    not resolved through symbolic links (a venv's python must stay the venv's)."""
    here = Path(sys.executable)
    if not here.is_absolute():
        here = Path.cwd() / here
    script = here.parent / "dockmesh"
    if script.is_file() and os.access(script, os.X_OK):
        return [str(script)]
    return [str(here), "-m", "dockmesh"]


def _systemd_runs() -> bool:
    """systemd is PID 1 (the test systemd itself uses: sd_booted)."""
    return os.path.isdir("/run/systemd/system")


def _spec(
    name: str, state_dir: str, api: str, dns: str, image: str, args: list[str] | None
) -> tuple[AgentInstall, tuple[str, int]]:
    from dockmesh.cli.agent import parse_hostport

    spec = AgentInstall(name, image, state_dir, api, dns, tuple(args or ()))
    problems = spec.problems()
    if problems:
        raise UserError(problems[0])
    api_at = parse_hostport(api, "--api")
    if dns.lower() not in ("off", "none"):
        parse_hostport(dns, "--dns")
    return spec, api_at


HostDnsOpt = Annotated[
    bool,
    typer.Option(
        "--host-dns",
        help="Also make the host resolve the agent's domain through its DNS (as "
        "`agent host-dns`: a systemd-resolved drop-in, else a dnsmasq rule).",
    ),
]


def _host_dns_plan(dns: str) -> HostDnsPlan:
    """The host's forwarding of the domain to the agent's DNS (`--dns`), planned: an address
    it cannot forward to, or a host with no resolver to configure, is refused before
    anything is installed."""
    from dockmesh.cli.agent import parse_hostport
    from dockmesh.codecs.hostdns import HostDnsError, HostDnsInputError
    from dockmesh.host.hostdns import plan_host_dns

    if dns.lower() in ("off", "none"):
        raise UserError("--host-dns needs the agent's DNS: --dns is off")
    host, port = parse_hostport(dns, "--dns")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening everywhere: the host asks it on loopback
    try:
        return plan_host_dns("dockmesh", host, port)
    except HostDnsInputError as e:
        raise UserError(f"--host-dns: {e}") from None
    except HostDnsError as e:
        raise UserError(f"--host-dns: {e}") from None


def _print_host_dns_plan(plan: HostDnsPlan) -> None:
    lines = [f"\n# The host resolving the domain (--host-dns): {plan.resolver}"]
    for f in plan.all_files():
        lines += [f"# --- {f.path}", *(f"# {x}" for x in f.text.rstrip("\n").splitlines())]
    lines.append(f"# then: {plan.restart.describe()}")
    out.print("\n".join(lines) + "\n", markup=False, highlight=False, end="", soft_wrap=True)


def _apply_host_dns(plan: HostDnsPlan, json_out: bool) -> dict[str, Any]:
    from dockmesh.codecs.hostdns import HostDnsError
    from dockmesh.host.hostdns import apply_host_dns

    try:
        done = apply_host_dns(plan)
    except HostDnsError as e:
        # The agent runs; what failed is the host's resolver, said as such.
        raise EngineError(f"the agent runs, but the host's DNS was not set up: {e}") from None
    if not json_out:
        for line in [*done, *plan.notes]:
            err.print(f"[green]✓[/] host DNS: {line}", highlight=False)
    return {"resolver": plan.resolver, "done": done}


def _ensure_image(image: str, default: str, json_out: bool) -> str:
    have = _image_id(image)
    if have is not None:
        return have
    if image != default:
        raise UserError(f"image {image} not found: build it first (dockmesh images build)")
    from dockmesh.cli.common import connect_one
    from dockmesh.images.build import build_python

    if not json_out:
        err.print(f"{image} is missing: building it (dockmesh images build python)")
    build_python(connect_one(None), lambda _msg: None)
    built = _image_id(image)
    if built is None:
        raise EngineError(f"{image} was built but the engine does not show it")
    return built


def _state_dir_ready(state_dir: str) -> None:
    """Makes the state folder, or says why it cannot be one, before anything is written or
    started (a state dir that was a file failed with an errno after the unit was written)."""
    d = Path(state_dir)
    if d.is_symlink() and not d.exists():
        raise UserError(f"--state-dir {state_dir}: a symbolic link to nothing ({os.readlink(d)})")
    if d.exists() and not d.is_dir():
        raise UserError(f"--state-dir {state_dir}: a file, not a folder")
    try:
        d.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"--state-dir {state_dir}: cannot be made: {e.strerror or e}") from None


def _unit_text(path: Path) -> str | None:
    """The unit file's text, None when there is none; a folder or other thing there is bad
    input, not a traceback."""
    if not path.exists() and not path.is_symlink():
        return None
    if not path.is_file():
        raise UserError(f"{path} is not a file: left alone")
    return path.read_text(errors="replace")


def _install_container(
    spec: AgentInstall, api_at: tuple[str, int], json_out: bool
) -> dict[str, Any]:
    from dockmesh.images.build import python_image

    _state_dir_ready(spec.state_path)
    image_id = _ensure_image(spec.image, python_image(), json_out)
    doc = _inspect(spec.name)
    url = _api_url(api_at)
    action = "started"
    if doc is not None:
        if not _is_agent(doc):
            raise UserError(
                f"a container named {spec.name} exists and is no dockmesh agent (no label "
                f"{ROLE_LABEL}={ROLE}): left alone; choose another --name"
            )
        if _same(doc, spec, image_id):
            action = "unchanged"
        else:
            rm = _docker("rm", "-f", str(doc["Id"]))
            if rm.returncode != 0:
                raise EngineError(f"docker rm -f {spec.name}: {_last_line(rm.stderr)}")
            action = "replaced"
    if action != "unchanged":
        run = _docker(*docker_run_args(spec)[1:])
        if run.returncode != 0:
            raise EngineError(f"docker run: {_last_line(run.stderr)}")

    def alive() -> str | None:
        now = _inspect(spec.name)
        if now is not None and (now.get("State") or {}).get("Running"):
            return None
        logs = _docker("logs", "--tail", "20", spec.name)
        return f"the agent's container {spec.name} stopped: {_last_line(logs.stdout + logs.stderr)}"

    seconds = _wait_api(url, alive)
    return {
        "mode": "container",
        "name": spec.name,
        "image": spec.image,
        "action": action,
        "api": url,
        "dns": spec.dns,
        "state_dir": spec.state_path,
        "started": True,
        "answered_after_s": round(seconds, 2),
        "command": docker_run_args(spec),
    }


def _install_service(
    spec: AgentInstall, api_at: tuple[str, int], unit_dir: str, json_out: bool
) -> dict[str, Any]:
    program = _program()
    text = systemd_unit(spec, program)
    path = Path(unit_path(spec, unit_dir))
    action = "written"
    old = _unit_text(path)
    if old is not None:
        if not old.startswith(UNIT_MARK):
            raise UserError(f"{path} exists and was not written by dockmesh: left alone")
        action = "unchanged" if old == text else "replaced"
    _state_dir_ready(spec.state_path)
    if action != "unchanged":
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text)
        tmp.replace(path)
    doc: dict[str, Any] = {
        "mode": "service",
        "name": spec.name,
        "unit": str(path),
        "action": action,
        "api": _api_url(api_at),
        "dns": spec.dns,
        "state_dir": spec.state_path,
        "command": service_command(spec, program),
        "started": False,
    }
    unit = unit_name(spec)
    systemd = _systemd_runs()
    if unit_dir.rstrip("/") != UNIT_DIR or not systemd:
        why = (
            f"the unit is not in {UNIT_DIR}"
            if systemd
            else "systemd is not running on this machine (PID 1 is not systemd)"
        )
        doc["note"] = (
            f"{why}: the unit is written, nothing started it. On a systemd host: "
            f"systemctl daemon-reload && systemctl enable --now {unit}; or run the agent "
            f"directly: {shlex.join(doc['command'])}"
        )
        if not json_out:
            err.print(f"[yellow]![/] {doc['note']}", markup=True, highlight=False)
        return doc
    for step in (["daemon-reload"], ["enable", unit], ["restart", unit]):
        proc = subprocess.run(["systemctl", *step], capture_output=True, text=True)
        if proc.returncode != 0:
            raise EngineError(f"systemctl {' '.join(step)}: {_last_line(proc.stderr)}")

    def alive() -> str | None:
        proc = subprocess.run(["systemctl", "is-failed", unit], capture_output=True, text=True)
        return f"{unit} failed: journalctl -u {unit}" if proc.stdout.strip() == "failed" else None

    doc["answered_after_s"] = round(_wait_api(str(doc["api"]), alive), 2)
    doc["started"] = True
    return doc


def _remove_state(state_dir: str) -> tuple[list[str], list[str]]:
    """Removes the agent's state files and then the folder if nothing else is in it: (what
    was removed, what was kept)."""
    removed: list[str] = []
    kept: list[str] = []
    d = Path(state_dir)
    if not d.is_dir():
        return removed, kept
    for f in STATE_FILES:
        p = d / f
        if p.is_file():
            p.unlink()
            removed.append(str(p))
    rest = sorted(p.name for p in d.iterdir())
    if rest:
        kept = [str(d / n) for n in rest]
    elif d.is_symlink():
        kept = [str(d)]  # a link someone made to put the state elsewhere: theirs, not ours
    else:
        d.rmdir()
        removed.append(str(d))
    return removed, kept


def register(group: typer.Typer) -> None:
    @group.command("install")
    @handle_errors
    def install(
        agent_args: Annotated[
            list[str] | None,
            typer.Argument(
                help="More of `dockmesh agent`'s options, after `--` (e.g. -- --no-gateway-dns).",
                show_default=False,
            ),
        ] = None,
        print_only: Annotated[
            bool,
            typer.Option(
                "--print",
                help="Print the docker run line and a compose snippet (with --service: the "
                "unit) and change nothing.",
            ),
        ] = False,
        service: ServiceOpt = False,
        name: NameOpt = DEFAULT_NAME,
        state_dir: StateDirOpt = DEFAULT_STATE_DIR,
        api: Annotated[
            str, typer.Option("--api", help="Where the agent's HTTP API listens (HOST:PORT).")
        ] = DEFAULT_API,
        dns: Annotated[
            str,
            typer.Option("--dns", help="Where its DNS server listens (HOST:PORT; 'off': none)."),
        ] = DEFAULT_DNS,
        image: Annotated[
            str | None,
            typer.Option(
                "--image",
                help="The agent's image (default dockmesh/python:latest, built when missing).",
                show_default=False,
            ),
        ] = None,
        unit_dir: UnitDirOpt = UNIT_DIR,
        host_dns: HostDnsOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Run the agent by itself: a container restarted with the engine (default), or a
        systemd service on the host (--service). Waits until its API answers. Idempotent:
        an agent already running as asked is left alone. With --host-dns the host resolves
        the agent's domain too (`agent host-dns`)."""
        from dockmesh.images.build import python_image

        spec, api_at = _spec(name, state_dir, api, dns, image or python_image(), agent_args)
        # Planned (and so checked) before anything is installed.
        dns_plan = _host_dns_plan(dns) if host_dns else None
        if print_only:
            extra = {"host_dns": dns_plan.to_json()} if dns_plan is not None else {}
            if service:
                text = systemd_unit(spec, _program())
                if json_out:
                    print_json({"unit_path": unit_path(spec, unit_dir), "unit": text, **extra})
                else:
                    out.print(f"# {unit_path(spec, unit_dir)}", markup=False, highlight=False)
                    out.print(text, markup=False, highlight=False, end="", soft_wrap=True)
            else:
                line = docker_run_line(spec)
                snippet = compose_snippet(spec)
                if json_out:
                    print_json(
                        {
                            "docker_run": docker_run_args(spec),
                            "command": line,
                            "compose": snippet,
                            **extra,
                        }
                    )
                else:
                    for chunk in (
                        "# The agent as a container (docker run):\n",
                        line + "\n",
                        "\n# Or in a compose file (docker compose up -d):\n",
                        snippet,
                    ):
                        out.print(chunk, markup=False, highlight=False, end="", soft_wrap=True)
            if dns_plan is not None and not json_out:
                _print_host_dns_plan(dns_plan)
            return
        if service:
            doc = _install_service(spec, api_at, unit_dir, json_out)
        else:
            doc = _install_container(spec, api_at, json_out)
        if dns_plan is not None:
            doc["host_dns"] = _apply_host_dns(dns_plan, json_out)
        if json_out:
            print_json(doc)
        elif doc["started"]:
            what = "container" if doc["mode"] == "container" else "service"
            verb = {"unchanged": "runs already", "replaced": "replaced and runs"}.get(
                doc["action"], "runs"
            )
            err.print(
                f"[green]✓[/] the agent {what} {spec.name} {verb}: API {doc['api']}, "
                f"DNS {spec.dns}, state in {spec.state_path}",
                highlight=False,
            )

    @group.command("uninstall")
    @handle_errors
    def uninstall(
        service: ServiceOpt = False,
        volumes: Annotated[
            bool,
            typer.Option(
                "--volumes",
                help="Also remove the agent's state (its state.db, then the folder if empty).",
            ),
        ] = False,
        name: NameOpt = DEFAULT_NAME,
        state_dir: Annotated[
            str | None,
            typer.Option(
                "--state-dir",
                help="The state folder --volumes removes (default: the container's, else "
                "/var/lib/dockmesh).",
                show_default=False,
            ),
        ] = None,
        unit_dir: UnitDirOpt = UNIT_DIR,
        host_dns: Annotated[
            bool,
            typer.Option(
                "--host-dns", help="Also undo `--host-dns` (what `agent host-dns` wrote)."
            ),
        ] = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Remove the agent's container (only one labelled dockmesh.role=agent) or its
        systemd unit (--service); with --volumes its state too, with --host-dns the host's
        forwarding of its domain. Nothing there: nothing to do."""
        spec = AgentInstall(name=name, state_dir=state_dir or DEFAULT_STATE_DIR)
        problems = spec.problems()
        if problems:
            raise UserError(problems[0])
        state = state_dir
        removed: list[str] = []
        if service:
            path = Path(unit_path(spec, unit_dir))
            old = _unit_text(path)
            if old is not None:
                if not old.startswith(UNIT_MARK):
                    raise UserError(f"{path} was not written by dockmesh: left alone")
                unit = unit_name(spec)
                live = unit_dir.rstrip("/") == UNIT_DIR and _systemd_runs()
                if live:
                    subprocess.run(["systemctl", "disable", "--now", unit], capture_output=True)
                path.unlink()
                if live:
                    subprocess.run(["systemctl", "daemon-reload"], capture_output=True)
                removed.append(str(path))
        else:
            doc = _inspect(name)
            if doc is not None:
                if not _is_agent(doc):
                    raise UserError(
                        f"the container {name} is no dockmesh agent (no label "
                        f"{ROLE_LABEL}={ROLE}): left alone"
                    )
                state = state or _state_source(doc)
                rm = _docker("rm", "-f", str(doc["Id"]))
                if rm.returncode != 0:
                    raise EngineError(f"docker rm -f {name}: {_last_line(rm.stderr)}")
                removed.append(f"container {name}")
        kept: list[str] = []
        unclaimed = volumes and not removed and state is None
        if unclaimed:
            # No agent was found as asked (the other mode's, say: `--service` forgotten): the
            # default folder may be the state of an agent that runs. Named, it goes.
            if Path(DEFAULT_STATE_DIR).is_dir():
                kept = [DEFAULT_STATE_DIR]
        elif volumes:
            more, kept = _remove_state(state or DEFAULT_STATE_DIR)
            removed += more
        if host_dns:
            from dockmesh.codecs.hostdns import HostDnsError
            from dockmesh.host.hostdns import remove_host_dns

            try:
                removed += [f"host DNS: {line}" for line in remove_host_dns()]
            except HostDnsError as e:
                raise EngineError(f"host DNS: {e}") from None
        if json_out:
            print_json({"removed": removed, "kept": kept})
            return
        if not removed:
            err.print("nothing to remove: no agent installed as asked", highlight=False)
        if unclaimed and kept:
            err.print(
                f"kept {DEFAULT_STATE_DIR}: no agent was removed, and another may use it "
                f"(give --state-dir {DEFAULT_STATE_DIR} to remove it)",
                highlight=False,
            )
            return
        for r in removed:
            err.print(f"[green]✓[/] removed {r}", highlight=False)
        for k in kept:
            err.print(f"kept {k} (not the agent's)", highlight=False)

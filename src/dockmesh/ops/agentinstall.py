"""How the agent is installed, as values and text: the container's `docker run` argument list
and its Compose equivalent, or the systemd unit that runs it on the host. Pure: settings in,
argument lists and text out; `dockmesh agent install` runs or writes what this gives.

The container shares the host's network and pid namespaces: the agent serves on the host's
loopback and on the bridges' gateways, and enters containers' network namespaces to check
them (setns: SYS_ADMIN, and SYS_PTRACE to open another process's namespace). Only the
capabilities it needs, not --privileged (which also fails where the engine itself runs with
fewer). A container agent goes down with the engine; the host service does not.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any

DEFAULT_NAME = "dockmesh-agent"
DEFAULT_IMAGE = "dockmesh/python:latest"
DEFAULT_STATE_DIR = "/var/lib/dockmesh"
DEFAULT_API = "127.0.0.1:8500"
DEFAULT_DNS = "127.0.0.1:8600"
UNIT_DIR = "/etc/systemd/system"
ROLE_LABEL = "dockmesh.role"
ROLE = "agent"
SOCKET = "/var/run/docker.sock"
# Where the state directory is inside the container: the agent's defaults (its state file,
# the policy directory `dockmesh policy apply` writes on the host) live under it.
CONTAINER_STATE_DIR = "/var/lib/dockmesh"
CAPABILITIES = ("SYS_ADMIN", "SYS_PTRACE", "NET_ADMIN", "NET_RAW")
SECURITY_OPTS = ("seccomp=unconfined", "apparmor=unconfined")
RESTART = "unless-stopped"
# The first line of a unit this module writes: `uninstall --service` removes only such a file.
UNIT_MARK = (
    "# Written by `dockmesh agent install --service` (`agent uninstall --service` removes it)"
)
DOCS_URL = "https://github.com/dockmesh/dockmesh"

# A container name as the engine accepts it; also a systemd unit name's characters.
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
# Characters a path may hold here: a volume's `SRC:DST` splits on ':' and a unit's line ends
# at a newline, so neither they nor other control characters belong in one.
_PATH_BAD = re.compile(r"[\x00-\x1f\x7f:,]")
# An image reference ([registry[:port]/]path[:tag][@digest]). It stands in `docker run`'s
# argument list where an option would be read as one: `--image=--privileged` made the
# printed line run a privileged container of the image `dockmesh`.
_IMAGE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/:@+-]*")


@dataclass(frozen=True, slots=True)
class AgentInstall:
    """One agent's installation. `api` and `dns` are HOST:PORT as `dockmesh agent` takes them
    (dns may be `off`); `agent_args` are more of `dockmesh agent`'s options, passed on."""

    name: str = DEFAULT_NAME
    image: str = DEFAULT_IMAGE
    state_dir: str = DEFAULT_STATE_DIR
    api: str = DEFAULT_API
    dns: str = DEFAULT_DNS
    agent_args: tuple[str, ...] = field(default_factory=tuple)

    def problems(self) -> list[str]:
        """What is wrong with these settings, one line each (empty: nothing)."""
        out = []
        if not _NAME.fullmatch(self.name):
            out.append(
                f"--name {self.name!r}: a letter or digit, then letters, digits, '_', '.' or '-'"
                " (at most 128)"
            )
        if not _IMAGE.fullmatch(self.image):
            out.append(
                f"--image {self.image!r}: an image reference, like dockmesh/python:latest "
                "(letters, digits and . _ / : @ + -, starting with a letter or digit)"
            )
        if not self.state_dir.startswith("/") or _PATH_BAD.search(self.state_dir):
            out.append(
                f"--state-dir {self.state_dir!r}: an absolute path without ':', ',' or"
                " control characters"
            )
        elif self.state_dir.rstrip("/") == "":
            out.append("--state-dir '/': the root cannot be the agent's state directory")
        for arg in self.agent_args:
            if any(c in arg for c in "\n\r\x00"):
                out.append(f"agent argument {arg!r}: holds a line break or NUL")
        return out

    @property
    def state_path(self) -> str:
        return self.state_dir.rstrip("/") or "/"

    def agent_command(self, state_dir: str) -> list[str]:
        """`dockmesh agent …`'s arguments (after the program), its state under `state_dir`."""
        return [
            "agent",
            "--api",
            self.api,
            "--dns",
            self.dns,
            "--state",
            f"{state_dir}/state.db",
            *self.agent_args,
        ]


def container_command(spec: AgentInstall) -> list[str]:
    """What the container runs (its image's command)."""
    return ["dockmesh", *spec.agent_command(CONTAINER_STATE_DIR)]


def docker_run_args(spec: AgentInstall) -> list[str]:
    """The `docker run` argument list that starts the agent's container, detached."""
    args = ["docker", "run", "-d", "--name", spec.name, "--restart", RESTART]
    args += ["--pid", "host", "--network", "host"]
    for cap in CAPABILITIES:
        args += ["--cap-add", cap]
    for opt in SECURITY_OPTS:
        args += ["--security-opt", opt]
    args += ["-v", f"{SOCKET}:{SOCKET}", "-v", f"{spec.state_path}:{CONTAINER_STATE_DIR}"]
    args += ["--label", f"{ROLE_LABEL}={ROLE}"]
    return [*args, spec.image, *container_command(spec)]


def docker_run_line(spec: AgentInstall) -> str:
    """docker_run_args as one shell command a user can paste."""
    return shlex.join(docker_run_args(spec))


def compose_snippet(spec: AgentInstall) -> str:
    """The same container as a Compose file's service (`docker compose up -d`)."""
    import yaml  # here: the command line starts without it

    service = {
        "image": spec.image,
        "container_name": spec.name,
        "command": container_command(spec),
        "restart": RESTART,
        "network_mode": "host",
        "pid": "host",
        "cap_add": list(CAPABILITIES),
        "security_opt": list(SECURITY_OPTS),
        "volumes": [f"{SOCKET}:{SOCKET}", f"{spec.state_path}:{CONTAINER_STATE_DIR}"],
        "labels": {ROLE_LABEL: ROLE},
    }
    # Compose substitutes `$VAR` in every value: a state dir or an agent argument with a `$`
    # would have lost it (`/srv/a$b` mounted as `/srv/a`). `$$` is Compose's literal `$`.
    text = yaml.safe_dump(
        {"services": {spec.name: _compose_literal(service)}},
        sort_keys=False,
        default_flow_style=False,
        width=1000,
    )
    return str(text)


def _compose_literal(value: Any) -> Any:
    """Every `$` in the strings of `value` written `$$`."""
    if isinstance(value, str):
        return value.replace("$", "$$")
    if isinstance(value, list):
        return [_compose_literal(v) for v in value]
    if isinstance(value, dict):
        return {k: _compose_literal(v) for k, v in value.items()}
    return value


def unit_name(spec: AgentInstall) -> str:
    return f"{spec.name}.service"


def unit_path(spec: AgentInstall, unit_dir: str = UNIT_DIR) -> str:
    return f"{unit_dir.rstrip('/')}/{unit_name(spec)}"


def systemd_quote(arg: str) -> str:
    """One ExecStart= argument as systemd reads it: `%` is a specifier and `$` a variable
    (both doubled); an argument with a space, a quote or a backslash goes in double quotes
    with `\\` and `"` escaped."""
    text = arg.replace("%", "%%").replace("$", "$$")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def systemd_env_quote(assignment: str) -> str:
    """One Environment= assignment as systemd reads it: `%` is a specifier there too, but `$`
    means nothing (doubled, as in ExecStart, it stayed `$$`)."""
    text = assignment.replace("%", "%%")
    if text and not re.search(r"[\s\"'\\;]", text):
        return text
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def service_command(spec: AgentInstall, program: list[str]) -> list[str]:
    """What the unit runs: `program` (the installed dockmesh) with the agent's arguments."""
    return [*program, *spec.agent_command(spec.state_path)]


def systemd_unit(spec: AgentInstall, program: list[str]) -> str:
    """A unit that runs the agent on the host as `program` (the installed dockmesh: an
    absolute path, or the interpreter and `-m dockmesh`). After the engine when it is there,
    but not bound to it: the agent keeps its API and loopback DNS while the engine restarts,
    and serves the gateways again once the bridges are back."""
    exec_start = " ".join(systemd_quote(a) for a in service_command(spec, program))
    env = ""
    if spec.state_path != DEFAULT_STATE_DIR:
        # `dockmesh policy apply` writes there: the two must agree (give it the same).
        policy = systemd_env_quote(f"DOCKMESH_POLICY_DIR={spec.state_path}/policy")
        env = f"Environment={policy}\n"
    return (
        f"{UNIT_MARK}\n"
        "[Unit]\n"
        "Description=dockmesh agent: discovery, health checks, the Consul API and DNS for Docker\n"
        f"Documentation={DOCS_URL}\n"
        "After=network-online.target docker.service\n"
        "Wants=network-online.target docker.service\n"
        "\n"
        "[Service]\n"
        "Type=simple\n"
        f"ExecStart={exec_start}\n"
        f"{env}"
        "Restart=always\n"
        "RestartSec=2\n"
        "KillSignal=SIGTERM\n"
        "TimeoutStopSec=30\n"
        "\n"
        "[Install]\n"
        "WantedBy=multi-user.target\n"
    )

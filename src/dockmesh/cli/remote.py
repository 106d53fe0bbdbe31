"""`stats`, `doctor`, `flows` and the probes of `why`/`matrix` for containers of another
host: that host's agent answers.

What this machine reads of a container (`/proc/<pid>`, its namespaces, the conntrack table)
is only this machine's. A container on another host has its pid in that host's pid
namespace, its traffic in that host's conntrack table: read here, a pid names some other
process or none. So a container whose engine belongs to another host is asked of that
host's agent (`GET /v1/dockmesh/stats|doctor|flows`, the same documents the commands print
with `--json`), and one whose pid this machine does not show to be its process (its cgroup
names it: `host.pidwatch.shown_here`) is never read here.

Which agent answers for an engine:
- `--engine hostN` (a host of the running `dockmesh lab`): that host's agent, at the host's
  lab address, over a socket made in the host's network namespace (the lab's subnet has no
  route from the machine's own namespace);
- `--agent URL` (`http://HOST:PORT`): that agent, for every container (a real host: its
  agent's API address);
- anything else: the engines are read here, and a container whose pid is not shown here is
  refused, never read.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlencode, urlsplit

import typer

from dockmesh.cli.common import LAB_HOST, UserError, current_lab
from dockmesh.model.topology import Container

if TYPE_CHECKING:
    from dockmesh.diagnose.sweep import Observed, Probe

AgentOpt = Annotated[
    str | None,
    typer.Option(
        "--agent",
        help="Ask the agent at URL (http://HOST:PORT: the containers' own host's) instead of "
        "reading this machine.",
    ),
]

MAX_BODY = 64 * 1024 * 1024
DEADLINE_S = 15.0  # a doctor waits up to twice its timeout (DNS, then ICMP) on the agent
ACCOUNTING_ORDER = ("on", "enabled", "off")  # merged: the worst one said


class AgentError(OSError):
    """The agent could not be asked, or could not answer (exit 1, one line)."""


@dataclass(frozen=True, slots=True)
class Route:
    """Where the agent that answers for an engine is: `url`, reached from the network
    namespace of `netns_pid` (None: this process's own)."""

    engine: str
    url: str
    netns_pid: int | None = None

    @property
    def label(self) -> str:
        return f"{self.engine}'s agent at {self.url}"


def agent_route(url: str) -> Route:
    """`--agent URL` as a route; a usage error for anything but http://HOST:PORT."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        raise UserError(f"--agent {url!r}: {e}") from None
    if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
        raise UserError(f"--agent {url!r}: expected http://HOST:PORT")
    # Without a port, the agent's default one.
    netloc = parts.netloc if port else f"{parts.netloc}:8500"
    return Route("agent", f"http://{netloc}")


def lab_routes(values: Sequence[str] | None) -> dict[str, Route]:
    """Engine name → its host's agent, for the `--engine` values that name hosts of the
    running lab (each lab host is a machine of its own: its agent answers for it)."""
    hosts = [v for v in values or () if LAB_HOST.fullmatch(v)]
    if not hosts:
        return {}
    from dockmesh.lab.plan import API_PORT, LabPlanError

    lab, state = current_lab(hosts[0])
    plan = state.plan()
    routes: dict[str, Route] = {}
    for name in hosts:
        try:
            host = plan.host(name)
        except LabPlanError as e:
            raise UserError(f"--engine {name!r}: {e}") from None
        pid = _in_netns(host.netns, (state.pids.get(f"{k}@{name}") for k in ("agent", "engine")))
        if pid is None:
            raise AgentError(
                f"lab {lab!r}: nothing of {name} runs (its agent answers for its containers: "
                f"`dockmesh lab start agent@{name}`)"
            )
        routes[name] = Route(name, f"http://{host.address}:{API_PORT}", pid)
    return routes


def _in_netns(netns: str, pids: Iterable[int | None]) -> int | None:
    """The first pid whose network namespace is the named one (`ip netns`'s bind mount):
    the pids come from the lab's state file, and one that ended may have been reused."""
    from dockmesh.lab.plan import NETNS_DIR

    try:
        want = os.stat(f"{NETNS_DIR}/{netns}")
    except OSError:
        return None
    for pid in pids:
        if pid is None:
            continue
        try:
            got = os.stat(f"/proc/{pid}/ns/net")
        except OSError:
            continue
        if (got.st_dev, got.st_ino) == (want.st_dev, want.st_ino):
            return pid
    return None


def split_by_route(
    containers: Iterable[Container], routes: Mapping[str, Route]
) -> tuple[list[Container], dict[str, list[Container]]]:
    """The containers read here, and per engine with an agent route those its agent is
    asked about (in the order given)."""
    here: list[Container] = []
    away: dict[str, list[Container]] = {}
    for c in containers:
        if c.engine in routes:
            away.setdefault(c.engine, []).append(c)
        else:
            here.append(c)
    return here, away


def elsewhere(c: Container) -> str:
    """Why `c` must not be read here ('' when it may): running with a pid this machine does
    not show to be its process."""
    from dockmesh.host.pidwatch import shown_here

    if not c.running or not c.pid or shown_here(c.pid, c.id):
        return ""
    return (
        f"{c.name}'s process (pid {c.pid} on engine {c.engine}) is not on this machine: "
        "ask its host's agent (--agent http://HOST:8500)"
    )


def merge_stats(
    docs: Sequence[Mapping[str, Any]], order: Sequence[str], elapsed_s: float
) -> dict[str, object]:
    """Several `stats --json` documents as one: containers in `order` (ids; those not in it
    after, as they came), elapsed the whole command's."""
    rows = [c for d in docs for c in d.get("containers", ())]
    rank = {cid: i for i, cid in enumerate(order)}
    rows.sort(key=lambda c: rank.get(str(c.get("id")), len(rank)))
    return {"containers": rows, "elapsed_s": round(elapsed_s, 6)}


def merge_flows(docs: Sequence[Mapping[str, Any]], elapsed_s: float) -> dict[str, object]:
    """Several `flows --json` documents (one per host's table) as one: edges sorted as
    `flows` sorts them, the accounting the least complete one said."""
    edges = [e for d in docs for e in d.get("edges", ())]
    edges.sort(key=lambda e: (-e["bytes"], e["src"], e["dst"], e["proto"], e["port"]))
    said = [str(d.get("accounting")) for d in docs]
    accounting = max(
        said or ["on"],
        key=lambda a: ACCOUNTING_ORDER.index(a) if a in ACCOUNTING_ORDER else len(ACCOUNTING_ORDER),
    )
    return {"edges": edges, "accounting": accounting, "elapsed_s": round(elapsed_s, 6)}


def _connect(route: Route, host: str, port: int, deadline_s: float) -> socket.socket:
    if route.netns_pid is None:
        return socket.create_connection((host, port), timeout=deadline_s)
    from dockmesh.host.netns import NetnsPool

    with NetnsPool(threads=1) as pool:
        sock = pool.socket(route.netns_pid)
    try:
        sock.setblocking(True)
        sock.settimeout(deadline_s)
        sock.connect((host, port))
    except BaseException:
        sock.close()
        raise
    return sock


def ask(
    route: Route, path: str, params: Sequence[tuple[str, str]], deadline_s: float = DEADLINE_S
) -> dict[str, Any]:
    """`GET path?params` of the route's agent, as a JSON object. A 400 or 404 is the user's
    (exit 2, with the agent's reason); anything else that is not a 200 with a JSON object
    is an `AgentError`."""
    from dockmesh.host.netns import NetnsError

    parts = urlsplit(route.url)
    host, port = parts.hostname or "", parts.port or 80
    target = f"{path}?{urlencode(params)}" if params else path
    try:
        sock = _connect(route, host, port, deadline_s)
        conn = http.client.HTTPConnection(host, port, timeout=deadline_s)
        conn.sock = sock
        try:
            conn.request("GET", target, headers={"Accept": "application/json"})
            resp = conn.getresponse()
            body = resp.read(MAX_BODY + 1)
        finally:
            conn.close()
    except (OSError, http.client.HTTPException, NetnsError) as e:
        raise AgentError(f"{route.label}: {e}") from None
    reason = " ".join(body[:300].decode("utf-8", "replace").split())
    if resp.status in (400, 404):
        raise UserError(f"{route.label}: {reason}")
    if resp.status != 200:
        raise AgentError(f"{route.label} answered {resp.status}: {reason}")
    if len(body) > MAX_BODY:
        raise AgentError(f"{route.label} sent more than {MAX_BODY} bytes")
    try:
        doc = json.loads(body)
    except ValueError as e:
        raise AgentError(f"{route.label}: the answer is not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise AgentError(f"{route.label}: the answer is not a JSON object")
    return doc


def remote_stats(route: Route, containers: Sequence[str]) -> dict[str, Any]:
    return ask(route, "/v1/dockmesh/stats", [("container", c) for c in containers])


def remote_doctor(route: Route, container: str, timeout_s: float) -> dict[str, Any]:
    return ask(
        route, "/v1/dockmesh/doctor", [("container", container), ("timeout", f"{timeout_s:g}")]
    )


def remote_flows(route: Route, by: str) -> dict[str, Any]:
    return ask(route, "/v1/dockmesh/flows", [("by", by)])


# Probes in flight at once through agents (`why`/`matrix` for sources on other hosts): each
# is one request that holds one of the agent's probe slots.
PROBE_REQUESTS = 8
MAX_AGENT_PROBE_TIMEOUT_S = 10.0  # the agent's bound (api.observe_query)


@dataclass(frozen=True, slots=True)
class RemoteProbe:
    """A probe for the agent of `route` to make from `container`'s namespace (its id)."""

    route: Route
    container: str
    probe: Probe
    expected: bool | None = None


def remote_probe(rp: RemoteProbe, timeout_s: float) -> Observed:
    """What `rp.route`'s agent observed. The timeout is bounded by what the agent accepts;
    the request waits for both of a confirmed probe's passes."""
    from dockmesh.diagnose.sweep import RETRY_TIMEOUT_S, dns_probe_payload, observed_from_json

    p = rp.probe
    t = min(timeout_s, MAX_AGENT_PROBE_TIMEOUT_S)
    params = [("container", rp.container), ("address", p.address)]
    if p.port is None:
        params.append(("proto", "icmp"))
    else:
        params += [("proto", p.protocol), ("port", str(p.port))]
        if p.protocol == "udp":
            dns = p.payload == dns_probe_payload()
            params += [
                ("payload", "dns" if dns else "datagram"),
                ("expect_reply", "true" if p.expect_reply else "false"),
            ]
    params.append(("timeout", f"{t:g}"))
    if rp.expected is not None:
        params.append(("expected", "true" if rp.expected else "false"))
    doc = ask(rp.route, "/v1/dockmesh/probe", params, t + max(RETRY_TIMEOUT_S, 2 * t) + 10.0)
    try:
        return observed_from_json(doc)
    except ValueError as e:
        raise AgentError(f"{rp.route.label}: the probe's answer is not one ({e})") from None


def remote_sweep(probes: Sequence[RemoteProbe], timeout_s: float) -> dict[Hashable, Observed]:
    """Each probe through its agent, a few at once: probe key → what was observed."""
    from concurrent.futures import ThreadPoolExecutor

    if not probes:
        return {}
    with ThreadPoolExecutor(max_workers=min(PROBE_REQUESTS, len(probes))) as ex:
        seen = list(ex.map(lambda rp: remote_probe(rp, timeout_s), probes))
    return {rp.probe.key: o for rp, o in zip(probes, seen, strict=True)}


def route_for(c: Container, routes: Mapping[str, Route], agent: Route | None) -> Route | None:
    """The agent that probes from `c`'s namespace: `--agent`'s, else its lab host's."""
    return agent if agent is not None else routes.get(c.engine)

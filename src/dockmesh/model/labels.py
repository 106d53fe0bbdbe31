"""Every `dockmesh.*` label (and the Compose labels that mean the same), and the codecs that
write and read them. No other module spells a label key: they name these constants.

Four families:
- what `up` stamps on what it creates (project, service, replica, the configuration's hash and
  the configuration itself), so that a later plan compares like with like and an object can be
  re-created from its own labels;
- the discovery labels (docs/http-api.md, "How containers become instances"), written by a
  topology file's `discovery:` or by hand on any container, and read by the catalog;
- the HTTP route labels (`dockmesh.http.*`, decoded in `model.httproute`), read by the agent
  into its instances' Meta for the proxy;
- Docker Compose's project and service labels, read wherever a container's project or
  service is asked for (`project_of`, `service_of`), so Compose's containers are named too.

Labels are user input (anyone can label a container): decoding never raises, it returns the
problems it found.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from dockmesh.model.canonical import canonical_json
from dockmesh.model.durations import parse_duration_ns

LABEL_PROJECT = "dockmesh.project"
# Every label `up` stamps but the project starts with this: a file may not set them itself.
STAMP_PREFIX = "dockmesh.spec."
LABEL_SERVICE = "dockmesh.spec.service"
LABEL_REPLICA = "dockmesh.spec.replica"
LABEL_HASH = "dockmesh.spec.hash"
LABEL_CONFIG = "dockmesh.spec.config"
LABEL_IMAGE_INPUTS = "dockmesh.image.inputs"

# Discovery (docs/http-api.md, "How containers become instances").
LABEL_DISCOVERY_SERVICE = "dockmesh.service"
LABEL_DISCOVERY_PORT = "dockmesh.port"
LABEL_DISCOVERY_TAGS = "dockmesh.tags"
LABEL_DISCOVERY_WEIGHT = "dockmesh.weight"
LABEL_DISCOVERY_NETWORK = "dockmesh.network"
# "true": this container claims the short name `<service>.service.<domain>` even where other
# projects have a service of that name (a topology file's explicit `discovery.name` writes it).
LABEL_DISCOVERY_SHORT_NAME = "dockmesh.short-name"
CHECK_PREFIX = "dockmesh.check."  # every check label starts with it
LABEL_CHECK_HTTP = "dockmesh.check.http"
LABEL_CHECK_TCP = "dockmesh.check.tcp"
LABEL_CHECK_INTERVAL = "dockmesh.check.interval"
LABEL_CHECK_TIMEOUT = "dockmesh.check.timeout"

# HTTP routes for `dockmesh proxy --project` (as Traefik's router labels): read from the
# container by the agent, carried into its instance's Meta (`model.httproute`).
HTTP_PREFIX = "dockmesh.http."  # every HTTP route label starts with it
LABEL_HTTP_HOST = "dockmesh.http.host"
LABEL_HTTP_PATH = "dockmesh.http.path"
LABEL_HTTP_STRIP_PREFIX = "dockmesh.http.strip_prefix"
LABEL_HTTP_MIDDLEWARES = "dockmesh.http.middlewares"
LABEL_HTTP_PORT = "dockmesh.http.port"
HTTP_LABELS = (
    LABEL_HTTP_HOST,
    LABEL_HTTP_PATH,
    LABEL_HTTP_STRIP_PREFIX,
    LABEL_HTTP_MIDDLEWARES,
    LABEL_HTTP_PORT,
)

# Docker Compose's.
COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_NETWORK = "com.docker.compose.network"  # on a network: the Compose file's own name

# Docker Swarm's, on a service's task containers (written by the engine, read by
# `model.swarm`). A service's own labels (`docker service create --label`) never reach its
# containers, and a worker's engine cannot list services: only these and the container labels
# (`--container-label`) are seen where the task runs.
SWARM_SERVICE_NAME = "com.docker.swarm.service.name"
SWARM_SERVICE_ID = "com.docker.swarm.service.id"
SWARM_TASK_ID = "com.docker.swarm.task.id"
SWARM_TASK_NAME = "com.docker.swarm.task.name"
SWARM_NODE_ID = "com.docker.swarm.node.id"

DISCOVERY_LABELS = (
    LABEL_DISCOVERY_SERVICE,
    LABEL_DISCOVERY_PORT,
    LABEL_DISCOVERY_TAGS,
    LABEL_DISCOVERY_WEIGHT,
    LABEL_DISCOVERY_NETWORK,
    LABEL_DISCOVERY_SHORT_NAME,
    LABEL_CHECK_HTTP,
    LABEL_CHECK_TCP,
    LABEL_CHECK_INTERVAL,
    LABEL_CHECK_TIMEOUT,
)
# What `up` stamps; the rest of an object's labels is its configuration's.
STAMP_LABELS = (LABEL_HASH, LABEL_CONFIG)

# A container's project, and its service, is named by any of these, first found first: a
# dockmesh project's label, then Compose's; for the service the catalog's name comes first,
# a swarm task's service last (so `why web …` and a policy's `service=web` mean its tasks).
PROJECT_LABELS = (LABEL_PROJECT, COMPOSE_PROJECT)
SERVICE_LABELS = (LABEL_DISCOVERY_SERVICE, LABEL_SERVICE, COMPOSE_SERVICE, SWARM_SERVICE_NAME)


def _first(labels: Mapping[str, str], keys: tuple[str, ...]) -> str | None:
    return next((labels[k] for k in keys if labels.get(k)), None)


def project_of(labels: Mapping[str, str]) -> str | None:
    """The project a container (or network) belongs to: dockmesh's label, else Compose's;
    None when neither is set (an empty value is not a project)."""
    return _first(labels, PROJECT_LABELS)


def service_of(labels: Mapping[str, str]) -> str | None:
    """The service a container belongs to: the catalog's name (`dockmesh.service`), else the
    one `up` stamped, else Compose's, else a swarm task's; None when none is set."""
    return _first(labels, SERVICE_LABELS)


# --- the stamp --------------------------------------------------------------------------


def stamp(labels: Mapping[str, str], config_json: Any, config_hash: str) -> dict[str, str]:
    """The labels to create an object with: its own, its configuration and that's hash."""
    return {**labels, LABEL_HASH: config_hash, LABEL_CONFIG: canonical_json(config_json)}


def stamped_config(labels: Mapping[str, str]) -> Any | None:
    """The configuration JSON `stamp` stored, or None when absent or unreadable."""
    text = labels.get(LABEL_CONFIG)
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def without_stamp(labels: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in labels.items() if k not in STAMP_LABELS}


# --- discovery --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DiscoveryCheck:
    http: str | None = None  # a path
    tcp: bool = False
    interval: str = "5s"
    timeout: str = "2s"


@dataclass(frozen=True, slots=True)
class Discovery:
    """How a container registers itself in the catalog."""

    service: str
    port: int
    tags: tuple[str, ...] = ()
    weight: int = 1
    # The network whose address to register: the engine's name, or the project's own short
    # one (`side` for Compose's or dockmesh's `<project>_side`).
    network: str | None = None
    check: DiscoveryCheck | None = None
    # Claims the short name where several projects have a service of this name.
    short_name: bool = False


def encode_discovery(d: Discovery) -> dict[str, str]:
    labels = {
        LABEL_DISCOVERY_SERVICE: d.service,
        LABEL_DISCOVERY_PORT: str(d.port),
        LABEL_DISCOVERY_WEIGHT: str(d.weight),
    }
    if d.tags:
        labels[LABEL_DISCOVERY_TAGS] = ",".join(d.tags)
    if d.network is not None:
        labels[LABEL_DISCOVERY_NETWORK] = d.network
    if d.short_name:
        labels[LABEL_DISCOVERY_SHORT_NAME] = "true"
    if d.check is not None:
        if d.check.http is not None:
            labels[LABEL_CHECK_HTTP] = d.check.http
        if d.check.tcp:
            labels[LABEL_CHECK_TCP] = "true"
        labels[LABEL_CHECK_INTERVAL] = d.check.interval
        labels[LABEL_CHECK_TIMEOUT] = d.check.timeout
    return labels


def _whole(text: str, what: str, low: int, high: int, problems: list[str]) -> int | None:
    t = text.strip()
    if not (t.isascii() and t.isdigit()) or not low <= int(t) <= high:
        problems.append(f"{what}={text!r}: expected a whole number from {low} to {high}")
        return None
    return int(t)


def _duration(labels: Mapping[str, str], key: str, default: str, problems: list[str]) -> str:
    text = labels.get(key, default)
    try:
        if parse_duration_ns(text) <= 0:
            raise ValueError("must be more than zero")
    except ValueError as e:
        problems.append(f"{key}={text!r}: {e}")
        return default
    return text.strip()


def decode_discovery(labels: Mapping[str, str]) -> tuple[Discovery | None, list[str]]:
    """The discovery a container's labels ask for (None: it does not register), and what was
    wrong with them. A wrong optional label is reported and its default used; a wrong port
    means no registration."""
    service = labels.get(LABEL_DISCOVERY_SERVICE)
    if service is None:
        return None, []
    problems: list[str] = []
    service = service.strip()
    if not service:
        return None, [f"{LABEL_DISCOVERY_SERVICE} is empty"]
    port_text = labels.get(LABEL_DISCOVERY_PORT)
    if port_text is None:
        return None, [f"{LABEL_DISCOVERY_PORT} is missing (the service's port)"]
    port = _whole(port_text, LABEL_DISCOVERY_PORT, 1, 65535, problems)
    if port is None:
        return None, problems
    weight = _whole(
        labels.get(LABEL_DISCOVERY_WEIGHT, "1"), LABEL_DISCOVERY_WEIGHT, 0, 1_000_000, problems
    )
    tags = tuple(t.strip() for t in labels.get(LABEL_DISCOVERY_TAGS, "").split(",") if t.strip())
    network = (labels.get(LABEL_DISCOVERY_NETWORK) or "").strip() or None
    check: DiscoveryCheck | None = None
    http = labels.get(LABEL_CHECK_HTTP)
    tcp_text = labels.get(LABEL_CHECK_TCP, "false").strip().lower()
    if tcp_text not in ("true", "false", "1", "0", "yes", "no"):
        problems.append(f"{LABEL_CHECK_TCP}={tcp_text!r}: expected true or false")
    tcp = tcp_text in ("true", "1", "yes")
    short_text = labels.get(LABEL_DISCOVERY_SHORT_NAME, "false").strip().lower()
    if short_text not in ("true", "false", "1", "0", "yes", "no"):
        problems.append(f"{LABEL_DISCOVERY_SHORT_NAME}={short_text!r}: expected true or false")
    short_name = short_text in ("true", "1", "yes")
    if http is not None and not http.startswith("/"):
        problems.append(f"{LABEL_CHECK_HTTP}={http!r}: a path starts with '/'")
        http = None
    if http is not None and tcp:
        problems.append(f"{LABEL_CHECK_HTTP} and {LABEL_CHECK_TCP}: give one, not both")
        tcp = False
    if http is not None or tcp:
        check = DiscoveryCheck(
            http=http,
            tcp=tcp,
            interval=_duration(labels, LABEL_CHECK_INTERVAL, "5s", problems),
            timeout=_duration(labels, LABEL_CHECK_TIMEOUT, "2s", problems),
        )
    weight_ = 1 if weight is None else weight
    return Discovery(service, port, tags, weight_, network, check, short_name), problems

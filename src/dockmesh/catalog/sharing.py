"""The catalog shared between hosts through a key-value store (etcd): key layout, values,
and the decisions of publishing and following. Pure: bytes and plain values in, plans out;
the shell (`catalog/etcdstore.py`) carries them out.

Theory of operation
-------------------
- Every agent is a *node* (`--node NAME`) and writes only its own subtree,
  `/dockmesh/v1/nodes/<node>/instances/<instance id, percent-encoded>`, one key per local
  instance; the value says what another host needs to answer for it (service, address,
  port, tags, meta, weight, container, and the health status its own agent saw) as
  canonical JSON. Every key is put with the agent's lease, so the subtree of an agent that
  is gone leaves with its lease.
- `Publisher` decides what to write: while it knows what its subtree holds (`published`),
  a change is the difference between that and what is wanted now (puts of what changed,
  deletes of what went: nothing when nothing changed); when it does not know (at start,
  after a lease was lost, the store wiped, or a write that failed) it *replaces* the
  subtree: given what the store lists under it, it puts everything wanted (with the new
  lease) and deletes the rest.
- `RemoteView` is what the agent knows of the other nodes: fed by a full listing (at each
  (re)connection: `relist`, which returns the nodes whose instances differ from the cache)
  and then by the watch's events from the listing's next revision (`event`). A listing whose
  cluster ID differs from the last one, or whose revision is below one already seen, is a
  store that was wiped: the caller republishes. Its own node's keys are kept apart
  (`own`), to tell when the store lost what this node published.
- `decode` accepts only what `encode` writes: any other bytes (not UTF-8, not JSON, extra or
  missing fields, wrong types, out of range values, an ID that is not the key's) raise
  ValueError, and the key is left out (a bad writer cannot break the readers).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal
from urllib.parse import quote, unquote

from dockmesh.model.catalog import CheckSpec, Instance, Status

ROOT = "/dockmesh/v1/nodes/"
INSTANCES = "instances/"
# A node's name: a DNS label's characters (it is a key segment and a Consul node name).
NODE_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,62})")
# The catalog's engine name for a remote node's instances (never a local engine's: engine
# names have no colon).
REMOTE_ENGINE = "node:"
MAX_VALUE_BYTES = 64 * 1024
MAX_TEXT = 256
MAX_OUTPUT = 4096
MAX_TAGS = 64
MAX_META = 64
MAX_META_VALUE = 512
MAX_WEIGHT = 65535
STATUSES: tuple[Status, ...] = ("passing", "warning", "critical", "maintenance")
# Keys whose bad value was said once (and not again until it changes): at most this many are
# remembered, so a writer filling the store with bad keys costs bounded memory (past it, the
# new ones are left out without a word).
MAX_BAD_KEYS = 10_000
# etcd refuses a transaction of more operations than --max-txn-ops (128 by default).
MAX_TXN_OPS = 128


def valid_node(name: str) -> bool:
    return NODE_NAME.fullmatch(name) is not None and ".." not in name


def node_prefix(node: str) -> str:
    return f"{ROOT}{node}/"


def instance_key(node: str, instance_id: str) -> str:
    return f"{node_prefix(node)}{INSTANCES}{quote(instance_id, safe='')}"


def parse_key(key: str) -> tuple[str, str] | None:
    """(node, instance id) of an instance key in canonical form, else None (a key another
    version or another writer made: ignored)."""
    if not key.startswith(ROOT):
        return None
    node, sep, rest = key[len(ROOT) :].partition("/")
    if not sep or not valid_node(node) or not rest.startswith(INSTANCES):
        return None
    encoded = rest[len(INSTANCES) :]
    try:
        iid = unquote(encoded, errors="strict")
    except UnicodeDecodeError:
        return None
    if not iid or quote(iid, safe="") != encoded:
        return None
    return node, iid


def node_of_key(key: str) -> str | None:
    """The node whose subtree holds `key` (None: not under the root, or no valid node)."""
    if not key.startswith(ROOT):
        return None
    node, sep, _ = key[len(ROOT) :].partition("/")
    return node if sep and valid_node(node) else None


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Published:
    """One local instance as other nodes see it."""

    id: str
    service: str
    address: str
    port: int
    tags: tuple[str, ...] = ()
    meta: Mapping[str, str] = field(default_factory=dict)
    weight: int = 1
    container: str = ""
    status: Status = "passing"
    output: str = ""


def published_of(instance: Instance, status: Status, output: str = "") -> Published:
    return Published(
        id=instance.id,
        service=instance.service,
        address=instance.address,
        port=instance.port,
        tags=tuple(instance.tags),
        meta=dict(instance.meta),
        weight=instance.weight,
        container=instance.container,
        status=status,
        output=output[:MAX_OUTPUT],
    )


_FIELDS = ("id", "service", "address", "port", "tags", "meta", "weight", "container")
_ALL = frozenset((*_FIELDS, "status", "output"))


def encode(p: Published) -> bytes:
    """Canonical JSON: the same instance is always the same bytes (so "only on change" is a
    comparison of bytes)."""
    d: dict[str, Any] = {
        "id": p.id,
        "service": p.service,
        "address": p.address,
        "port": p.port,
        "tags": list(p.tags),
        "meta": dict(sorted(p.meta.items())),
        "weight": p.weight,
        "container": p.container,
        "status": p.status,
        "output": p.output,
    }
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate field {k!r}")
        out[k] = v
    return out


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number")


def _text(d: Mapping[str, Any], name: str, limit: int, empty: bool = True) -> str:
    v = d[name]
    if not isinstance(v, str):
        raise ValueError(f"{name}: not a string")
    if len(v) > limit or (not empty and not v):
        raise ValueError(f"{name}: {'empty' if not v else 'too long'}")
    if any(ord(c) < 32 or ord(c) == 127 for c in v) and name != "output":
        raise ValueError(f"{name}: control characters")
    return v


def _integer(d: Mapping[str, Any], name: str, low: int, high: int) -> int:
    v = d[name]
    if not isinstance(v, int) or isinstance(v, bool) or not low <= v <= high:
        raise ValueError(f"{name}: not an integer from {low} to {high}")
    return v


def decode(data: bytes, key_id: str | None = None) -> Published:
    """The instance `encode` wrote, or ValueError saying what is wrong. `key_id`: the ID the
    key names, which the value must repeat."""
    if len(data) > MAX_VALUE_BYTES:
        raise ValueError(f"value of {len(data)} bytes (at most {MAX_VALUE_BYTES})")
    try:
        text = data.decode("utf-8", errors="strict")
        d = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    if set(d) != _ALL:
        missing, extra = sorted(_ALL - set(d)), sorted(set(d) - _ALL)
        raise ValueError(f"fields: missing {missing}, unknown {extra}")
    iid = _text(d, "id", MAX_TEXT, empty=False)
    if key_id is not None and iid != key_id:
        raise ValueError(f"id {iid!r} is not the key's {key_id!r}")
    tags = d["tags"]
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise ValueError("tags: not a list of at most 64")
    for t in tags:
        if not isinstance(t, str) or len(t) > MAX_TEXT:
            raise ValueError("tags: not strings")
    meta = d["meta"]
    if not isinstance(meta, dict) or len(meta) > MAX_META:
        raise ValueError("meta: not an object of at most 64")
    for k, v in meta.items():
        if not k or len(k) > 128 or not isinstance(v, str) or len(v) > MAX_META_VALUE:
            raise ValueError("meta: not short strings")
    status = d["status"]
    if status not in STATUSES:
        raise ValueError(f"status: not one of {', '.join(STATUSES)}")
    return Published(
        id=iid,
        service=_text(d, "service", MAX_TEXT, empty=False),
        address=_text(d, "address", MAX_TEXT),
        port=_integer(d, "port", 0, 65535),
        tags=tuple(tags),
        meta=dict(meta),
        weight=_integer(d, "weight", 1, MAX_WEIGHT),
        container=_text(d, "container", MAX_TEXT),
        status=status,
        output=_text(d, "output", MAX_OUTPUT),
    )


def shown_key(key: str, limit: int = 120) -> str:
    """A key as a log line shows it: quoted, and cut (a key may be 1.5 MB long)."""
    if len(key) <= limit:
        return repr(key)
    return f"{key[:limit]!r}… ({len(key)} characters)"


def unusable_address(address: str) -> str | None:
    """Why another node's instance cannot be at `address` as seen from here, else None.

    A loopback or unspecified address (or `localhost`) names whichever host uses it: an
    instance another host publishes there would send this host's clients to this host's own
    port (a mistake, or a writer to the store redirecting a service to a local one). Consul
    takes any address; here remote instances are other hosts' containers and services, found
    by their own agents, so such an address is left out. An empty one is the node's
    address (Consul's meaning), and a host name is taken as the registration API takes it."""
    if not address:
        return None
    if any(c.isspace() for c in address):
        return "has blanks"
    name = address.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "names this host itself (localhost)"
    try:
        ip = ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return None
    mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
    for a in (ip, mapped):
        if a is not None and (a.is_loopback or a.is_unspecified):
            return "is loopback or unspecified: on this host it would be this host"
    return None


def decode_remote(data: bytes, key_id: str) -> Published:
    """`decode`, and an address another host can reach (`unusable_address`)."""
    p = decode(data, key_id)
    why = unusable_address(p.address)
    if why is not None:
        raise ValueError(f"address {p.address!r} {why}")
    return p


def remote_id(node: str, instance_id: str) -> str:
    """A remote instance's ID in the local catalog: its node's name before its own ID (two
    hosts may both run an `api-1`)."""
    return f"{node}/{instance_id}"


def remote_engine(node: str) -> str:
    return f"{REMOTE_ENGINE}{node}"


def is_remote(instance: Instance) -> bool:
    return instance.engine.startswith(REMOTE_ENGINE)


def remote_instance(node: str, p: Published) -> tuple[Instance, tuple[CheckSpec, ...]]:
    """A remote node's instance as the local catalog holds it: source "container" (it is
    not the API's to change), its engine `node:<node>`, and one check whose status is the
    one its own agent published (never probed here: health is seen from the host that runs
    the instance)."""
    iid = remote_id(node, p.id)
    meta = {**p.meta, "node": node}
    if "engine" in meta:
        # The engine's name is the publishing agent's own ("local" there): qualified with
        # its node, as the instance's ID is, it never reads as one of this host's engines.
        meta["engine"] = remote_id(node, meta["engine"])
    inst = Instance(
        id=iid,
        service=p.service,
        address=p.address,
        port=p.port,
        tags=p.tags,
        meta=meta,
        weight=p.weight,
        source="container",
        container=p.container,
        engine=remote_engine(node),
    )
    check = CheckSpec(
        id=f"node:{iid}",
        name=f"health as node {node} sees it",
        kind="docker",
        service_id=iid,
        initial_status=p.status,
        notes=p.output,
    )
    return inst, (check,)


def wanted_keys(node: str, local: Iterable[Published]) -> dict[str, bytes]:
    """The subtree `node` should hold for its local instances."""
    return {instance_key(node, p.id): encode(p) for p in local}


# --- publishing -----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Plan:
    """Writes to make: `puts` (with the lease) and `deletes`; `replace`: the whole subtree
    is written (after a listing), not a difference."""

    puts: Mapping[str, bytes]
    deletes: tuple[str, ...]
    replace: bool = False
    result: Mapping[str, bytes] = field(default_factory=dict)  # the subtree once done

    @property
    def empty(self) -> bool:
        return not self.puts and not self.deletes and not self.replace

    def batches(self, limit: int = MAX_TXN_OPS) -> list[tuple[list[tuple[str, bytes]], list[str]]]:
        """The plan in transactions of at most `limit` operations (one when it fits): deletes
        first, then puts, in key order."""
        ops: list[tuple[str, bytes | None]] = [(k, None) for k in sorted(self.deletes)]
        ops += [(k, self.puts[k]) for k in sorted(self.puts)]
        out: list[tuple[list[tuple[str, bytes]], list[str]]] = []
        for i in range(0, len(ops), limit):
            chunk = ops[i : i + limit]
            out.append(
                (
                    [(k, v) for k, v in chunk if v is not None],
                    [k for k, v in chunk if v is None],
                )
            )
        return out or [([], [])]


def diff_plan(published: Mapping[str, bytes], wanted: Mapping[str, bytes]) -> Plan:
    puts = {k: v for k, v in wanted.items() if published.get(k) != v}
    deletes = tuple(sorted(k for k in published if k not in wanted))
    return Plan(puts, deletes, False, dict(wanted))


def replace_plan(node: str, listed: Iterable[str], wanted: Mapping[str, bytes]) -> Plan:
    """Everything wanted put anew (with the current lease), and whatever else the store
    lists under the node's subtree deleted."""
    prefix = node_prefix(node)
    deletes = tuple(sorted(k for k in listed if k.startswith(prefix) and k not in wanted))
    return Plan(dict(wanted), deletes, True, dict(wanted))


class Publisher:
    """What a node's subtree holds, as far as its agent knows, and the next writes to make.

    `published` is None while it does not know (the next plan replaces the subtree). A plan
    is made by `plan(wanted)` (when `needs_listing` the caller passes the subtree's keys as
    listed), carried out, then `committed(plan)` or `failed()`. `lost()` says that the store
    no longer holds what was written (the lease expired, the store was wiped)."""

    def __init__(self, node: str) -> None:
        self.node = node
        self.published: dict[str, bytes] | None = None
        self.inflight: Plan | None = None

    @property
    def needs_listing(self) -> bool:
        return self.published is None

    def plan(self, wanted: Mapping[str, bytes], listed: Iterable[str] | None = None) -> Plan:
        if self.published is None:
            if listed is None:
                raise ValueError("a replacement needs the subtree's listing")
            plan = replace_plan(self.node, listed, wanted)
        else:
            plan = diff_plan(self.published, wanted)
        self.inflight = plan
        return plan

    def committed(self, plan: Plan) -> None:
        if self.inflight is plan:
            self.inflight = None
            self.published = dict(plan.result)

    def failed(self) -> None:
        # A write that did not answer may or may not have happened: list and replace.
        self.inflight = None
        self.published = None

    def lost(self) -> None:
        self.published = None

    def own_event(self, key: str, value: bytes | None) -> bool:
        """A watch event on this node's own subtree. Returns True (and forgets what was
        published) when it says the store lost what this agent wrote: a key it holds
        deleted by someone else (its lease expired) or changed to bytes it did not write."""
        published = self.published
        if published is None or (key not in published and value is None):
            return False
        plan = self.inflight
        if value is None:
            if plan is not None and key in plan.deletes:
                return False
        elif published.get(key) == value or (plan is not None and plan.puts.get(key) == value):
            return False
        self.published = None
        return True

    def check_listing(self, listed: Mapping[str, bytes]) -> bool:
        """A listing of the subtree (at reconnection, anti-entropy): True (and forgets what
        was published) when it is not what this agent wrote. Nothing is decided while a
        write is under way."""
        if self.published is None or self.inflight is not None:
            return False
        if dict(listed) == self.published:
            return False
        self.published = None
        return True


# --- following ------------------------------------------------------------------------------

Outcome = Literal["same", "changed", "wiped"]


@dataclass(frozen=True, slots=True)
class Relisted:
    """What a listing changed: the nodes whose instances differ, whether the store was
    wiped since the last listing, and the keys left out with why."""

    changed: frozenset[str]
    wiped: bool
    problems: tuple[str, ...] = ()


class RemoteView:
    """The other nodes' instances as the store holds them, at `revision`."""

    def __init__(self, own: str) -> None:
        self.own_node = own
        self.nodes: dict[str, dict[str, Published]] = {}
        self.own: dict[str, bytes] = {}  # this node's keys as listed and watched
        self.revision = 0  # the newest revision applied
        self.cluster_id: int | None = None
        self.bad: dict[str, str] = {}  # keys left out, with the problem said about each

    def _said(self, key: str, problem: str | None) -> str | None:
        """`problem` the first time `key` is bad (a writer storming one key with bad values
        is said once, not once per event), else None; None (the key is good again, or
        deleted) forgets it."""
        if problem is None:
            self.bad.pop(key, None)
            return None
        if key in self.bad or len(self.bad) >= MAX_BAD_KEYS:
            return None
        self.bad[key] = problem
        return problem

    def _decoded(self, key: str, value: bytes) -> tuple[str, Published] | str | None:
        """(node, instance), or a problem, or None for a key that is not an instance's."""
        parsed = parse_key(key)
        if parsed is None:
            return None if node_of_key(key) is not None else f"{shown_key(key)}: not a dockmesh key"
        node, iid = parsed
        try:
            return node, decode_remote(value, iid)
        except ValueError as e:
            return f"{shown_key(key)}: {e}"

    def relist(self, kvs: Mapping[str, bytes], revision: int, cluster_id: int) -> Relisted:
        """The whole root as listed at `revision`: the cache becomes exactly it."""
        wiped = (self.cluster_id is not None and cluster_id != self.cluster_id) or (
            revision < self.revision
        )
        problems: list[str] = []
        nodes: dict[str, dict[str, Published]] = {}
        own: dict[str, bytes] = {}
        self.bad = {k: v for k, v in self.bad.items() if k in kvs}
        for key, value in kvs.items():
            if node_of_key(key) == self.own_node:
                own[key] = value
                continue
            d = self._decoded(key, value)
            if isinstance(d, str):
                said = self._said(key, d)
                if said is not None:
                    problems.append(said)
            else:
                self._said(key, None)
                if d is not None:
                    nodes.setdefault(d[0], {})[d[1].id] = d[1]
        changed = frozenset(
            n for n in set(nodes) | set(self.nodes) if nodes.get(n) != self.nodes.get(n)
        )
        self.nodes, self.own = nodes, own
        self.revision, self.cluster_id = revision, cluster_id
        return Relisted(changed, wiped, tuple(sorted(problems)))

    def event(self, key: str, value: bytes | None, revision: int) -> tuple[str | None, str | None]:
        """One watch event (value None: deleted). Returns (the remote node it changed, or
        None; a problem, or None). Own-node events change `own` only."""
        if revision > self.revision:
            self.revision = revision
        node = node_of_key(key)
        if node is None:
            return None, None
        if node == self.own_node:
            if value is None:
                self.own.pop(key, None)
            else:
                self.own[key] = value
            return None, None
        parsed = parse_key(key)
        if parsed is None:
            return None, None
        _, iid = parsed
        current = self.nodes.get(node, {})
        if value is None:
            self._said(key, None)
            if iid not in current:
                return None, None
            del current[iid]
            if not current:
                self.nodes.pop(node, None)
            return node, None
        try:
            p = decode_remote(value, iid)
        except ValueError as e:
            # What the key held before is no longer what the store says: out too.
            problem = self._said(key, f"{shown_key(key)}: {e}")
            if current.pop(iid, None) is not None:
                if not current:
                    self.nodes.pop(node, None)
                return node, problem
            return None, problem
        self._said(key, None)
        if current.get(iid) == p:
            return None, None
        self.nodes.setdefault(node, {})[iid] = p
        return node, None

    def instances(self, node: str) -> list[tuple[Instance, tuple[CheckSpec, ...]]]:
        return [remote_instance(node, p) for _, p in sorted(self.nodes.get(node, {}).items())]


def backoff(attempt: int, first: float = 0.1, cap: float = 2.0) -> float:
    """Seconds before reconnection attempt `attempt` (0, 1, …): doubling up to `cap`."""
    return min(cap, first * math.pow(2, max(0, min(attempt, 30))))


_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
MAX_ENDPOINTS = 64


def _endpoint_host(part: str, host: str) -> str:
    if host.startswith("["):
        # An IPv6 address, in brackets (its colons are not the port's).
        inner = host[1:-1] if host.endswith("]") else ""
        try:
            return str(ipaddress.IPv6Address(inner))
        except ValueError:
            raise ValueError(f"{part!r}: {host!r} is not an IPv6 address in brackets") from None
    if ":" in host:
        raise ValueError(f"{part!r}: an IPv6 address goes in brackets: [{host}]:PORT")
    try:
        return str(ipaddress.IPv4Address(host))
    except ValueError:
        pass
    labels = host.rstrip(".").split(".")
    if len(host) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{part!r}: {host!r} is not an IP address or a host name")
    return host


def parse_endpoints(text: str) -> list[tuple[str, int]]:
    """`etcd://HOST:PORT[,HOST:PORT…]` → [(host, port)], or ValueError saying why. HOST: an
    IPv4 address, `[IPv6]` or a host name; no credentials (the store is reached without
    authentication), no path; each endpoint once."""
    scheme, sep, rest = text.partition("://")
    if not sep or scheme != "etcd":
        raise ValueError("expected etcd://HOST:PORT[,HOST:PORT…]")
    if "@" in rest:
        raise ValueError("user:password@ is not supported (etcd is reached without credentials)")
    parts = rest.split(",")
    if len(parts) > MAX_ENDPOINTS:
        raise ValueError(f"{len(parts)} endpoints: at most {MAX_ENDPOINTS}")
    out: list[tuple[str, int]] = []
    for part in parts:
        host, colon, port = part.strip().rpartition(":")
        if not colon or not host:
            raise ValueError(f"{part!r}: expected HOST:PORT")
        if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
            raise ValueError(f"{part!r}: the port must be a number from 1 to 65535")
        endpoint = (_endpoint_host(part, host), int(port))
        if endpoint in out:
            raise ValueError(f"{part!r} is listed twice")
        out.append(endpoint)
    return out

"""The policy on overlay networks: enforced inside each overlay's own namespace, on each host.

Where the packets pass
----------------------
A container's interface on an overlay network is a veth whose peer is a port of the bridge
`br0` inside the overlay's own network namespace on that host (`<exec-root>/netns/1-<the
network id's first 10 characters>`; `/run/docker/netns/…` on a plain host). The VXLAN device
`vxlan0` is a port of the same bridge. So that namespace sees every packet between the
overlay's containers, decapsulated, with its real addresses: between two containers of the
host (veth to veth) and to and from the other hosts (veth to and from vxlan0). The host's own
namespace sees only the encapsulated UDP: the host-namespace tables never judge overlay
traffic. Docker creates the namespace when the first container or task of the network starts
on that host, and removes it with the last.

What is written there
---------------------
The same compiler, the same tables (`inet dockmesh` and `bridge dockmesh`), compiled from the
topology as that namespace sees it (`overlay_topology`): the one network, and its running
containers and tasks on every engine (overlay addresses are unique across the swarm). The
verdicts are therefore the bridge's: the same default deny, established and related replies
accepted, the deny rules before the allow rules. The bridge table binds each local
container's address to its veth port in `br0`, and each other host's container's address to
`vxlan0` (`overlay_ports`): a container that forges a neighbour's address, or a remote one,
is marked unconfirmed and matches no allow rule, and a frame to a local container's address
leaves by that container's port only. A packet between hosts is judged at both ends (leaving
by vxlan0 on one host, arriving by it on the other), so a host whose table is missing still
has its peer's. Each table's policy is recorded in a directory of its own (`store_dir`), so a
table there is known as dockmesh's exactly as on the host.

Who keeps it true
-----------------
`policy apply` writes each table once, from the members it read. Beside the policy it records
those members (`<table>.members.json`). An agent that follows the engine of a recorded
namespace, and can enter it, keeps that table true as the agent keeps the host's
(`OverlayKeeper`): on every change of its engines' containers, the members of the engines it
follows are taken live and those of the others as recorded, so a container that leaves takes
its address out of the sets at once and a new one is judged by its own labels. A packet
between hosts is judged at both ends, and each end's agent knows its own members live: a
container of another host that the record does not know yet is denied here until that
host's record or this one is written again (fail closed), never allowed on a stale identity.
Docker removes the namespace with its last member and makes a new one with the next: the
keeper writes the table into the new one. Every few seconds it also compares each table with
the kernel and mends it (`nft flush` behind its back).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from dockmesh.host.hostdns import write_atomically
from dockmesh.host.ports import interfaces
from dockmesh.model.topology import Network, Topology, topology_from_json
from dockmesh.policy.compile import PortMap
from dockmesh.policy.enforce import Enforcer, container_addresses
from dockmesh.policy.nft import TIMEOUT_S, Nft
from dockmesh.policy.store import Applied, PolicyStore

log = logging.getLogger(__name__)

# Docker names an overlay's namespace 1-<the network id's first 10 characters>.
NETNS_PREFIX = "1-"
NETNS_ID_CHARS = 10
# The bridge port every other host's containers arrive by (and leave to).
VXLAN_PORT = "vxlan0"


def overlay_networks(topo: Topology) -> list[Network]:
    """The overlay networks a policy is enforced on (the ingress network carries only the
    routing mesh's traffic to published ports, judged on the host)."""
    return [n for n in topo.networks if n.driver == "overlay" and not n.ingress and n.id]


def netns_name(n: Network) -> str:
    return NETNS_PREFIX + n.id[:NETNS_ID_CHARS]


def overlay_topology(topo: Topology, n: Network) -> Topology:
    """The topology as the overlay's namespace sees it: the network alone, and each running
    container or task on it (every engine's) with its attachment to it alone. Published
    ports are left out: they are reached through the host, never through this namespace."""
    members = []
    for c in topo.containers:
        if not c.running:
            continue
        mine = tuple(a for a in c.attachments if a.network_id == n.id or a.network == n.name)
        if mine:
            members.append(replace(c, attachments=mine, ports=()))
    return replace(topo, networks=(n,), containers=tuple(members))


def overlay_ports(topo: Topology, engine: str, local: Mapping[tuple[str, str], str]) -> PortMap:
    """Each member's port on `br0` in `engine`'s namespace of the overlay: a local container's
    veth (from `local`; unknown: left out, so its source stays unconfirmed), vxlan0 for a
    container of another engine."""
    out: dict[tuple[str, str], str] = {}
    for c in topo.containers:
        for a in c.attachments:
            key = (c.id, a.network)
            if c.engine != engine:
                out[key] = VXLAN_PORT
            elif key in local:
                out[key] = local[key]
    return out


def store_dir(policy_dir: Path, engine: str, netns: str) -> Path:
    """Where the policy of one overlay namespace's table is recorded."""
    return policy_dir / "overlay" / f"{engine}_{netns}"


class NetnsNft(Nft):
    """nft run inside one network namespace (`nsenter --net=PATH`)."""

    def __init__(self, netns_path: str, binary: str = "nft") -> None:
        super().__init__(binary)
        self.netns_path = netns_path

    def _nft(self, args: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        inner = self.binary
        self.binary = "nsenter"
        try:
            return super()._nft([f"--net={self.netns_path}", inner, *args], stdin)
        finally:
            self.binary = inner


def netns_links(netns_path: str) -> dict[int, str]:
    """Interface index → name in a network namespace ({} when it cannot be read)."""
    try:
        proc = subprocess.run(
            ["nsenter", f"--net={netns_path}", "ip", "-j", "link", "show"],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            check=False,
        )
        doc = json.loads(proc.stdout) if proc.returncode == 0 else []
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return {}
    return {
        int(link["ifindex"]): str(link["ifname"])
        for link in doc
        if isinstance(link, dict) and "ifindex" in link and "ifname" in link
    }


def local_ports(topo: Topology, engine: str, netns_path: str) -> PortMap:
    """Each of `engine`'s members' veth port on the overlay's `br0`: the peer index of its
    interface (read in the container's sysfs), named in the overlay's namespace."""
    names = netns_links(netns_path)
    out: dict[tuple[str, str], str] = {}
    for c in topo.containers:
        if c.engine != engine or not c.pid:
            continue
        by_mac = interfaces(c.pid, peers=names)
        for a in c.attachments:
            if a.mac and a.mac.lower() in by_mac:
                out[(c.id, a.network)] = by_mac[a.mac.lower()]
    return out


def present(netns_dir: str, n: Network, check: Callable[[str], bool] | None = None) -> str | None:
    """The overlay's namespace file on this host, or None (no member of it runs here, or this
    process cannot see the namespace: see `is_netns`)."""
    path = os.path.join(netns_dir, netns_name(n))
    if not os.path.exists(path):
        return None
    if not (check or is_netns)(path):
        # Docker makes the file some seconds before it mounts the namespace on it: that is
        # no news; still so after UNSEEN_WARN_S, it is (said once).
        now = time.monotonic()
        since = _unseen.setdefault(path, now)
        if since is not None and now - since >= UNSEEN_WARN_S:
            _unseen[path] = None
            log.warning(
                "policy: %s is not a network namespace here (a mount namespace of its own "
                "that the engine's mounts do not reach?): its overlay table is not kept",
                path,
            )
        return None
    _unseen.pop(path, None)
    return path


# Namespace files found out of this process's sight: since when (None: said so already).
_unseen: dict[str, float | None] = {}
UNSEEN_WARN_S = 30.0


def is_netns(path: str) -> bool:
    """Whether PATH is a network namespace (nsfs, as /proc/self/ns/net), not the empty file
    Docker mounts it on: a process in a mount namespace of its own (`ip netns exec`) where the
    engine's later mounts do not propagate sees only that file, which nsenter cannot enter."""
    try:
        return os.stat(path).st_dev == os.stat("/proc/self/ns/net").st_dev
    except OSError:
        return False


# --- carrying it out -----------------------------------------------------------------------------

# Beside each recorded policy (`<table>.json`), `<table>.netns`: the namespace's path, for
# `remove_overlays`; and `<table>.members.json`: the overlay's members as `policy apply` read
# them (a `Topology` as JSON), for a keeper that does not follow every engine.
WHERE_SUFFIX = ".netns"
MEMBERS_SUFFIX = ".members.json"
# A members record larger than this is not read (a swarm's overlay has thousands at most).
MAX_MEMBERS_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class OverlayTable:
    """One overlay namespace's table: which engine's host, which network, where."""

    engine: str
    network: str
    netns: str  # the namespace file's path

    def to_json(self) -> dict[str, str]:
        return {"engine": self.engine, "network": self.network, "netns": self.netns}


def apply_overlays(
    applied: Applied, topo: Topology, netns_dirs: Mapping[str, str], policy_dir: Path
) -> list[OverlayTable]:
    """Writes `applied` into each overlay namespace present on each engine's host (`netns_dirs`:
    engine name → its exec-root's netns directory), each in one transaction, and records it.
    An overlay with no member on a host has no namespace there, and nothing to judge."""
    done: list[OverlayTable] = []
    for engine, directory in netns_dirs.items():
        for n in overlay_networks(topo):
            path = present(directory, n)
            if path is None:
                continue
            view = overlay_topology(topo, n)
            ports = overlay_ports(view, engine, local_ports(view, engine, path))
            where = store_dir(policy_dir, engine, netns_name(n))
            enforcer = Enforcer(PolicyStore(applied.table, where), NetnsNft(path), _fixed(ports))
            enforcer.apply(applied, view)
            (where / f"{applied.table}{WHERE_SUFFIX}").write_text(path + "\n")
            write_atomically(where / f"{applied.table}{MEMBERS_SUFFIX}", json.dumps(view.to_json()))
            done.append(OverlayTable(engine, n.name, path))
    # A namespace of these hosts that this policy no longer reaches (its network removed, or
    # no member left on the host) keeps no table of it.
    kept = {store_dir(policy_dir, o.engine, os.path.basename(o.netns)) for o in done}
    for engine in netns_dirs:
        for where in _records(policy_dir, applied.table):
            if where.name.rpartition("_")[0] == engine and where not in kept:
                _remove_one(applied.table, where)
    return done


def overlay_drift(
    applied: Applied, topo: Topology, netns_dirs: Mapping[str, str], policy_dir: Path
) -> list[dict[str, Any]]:
    """For each overlay namespace of these engines the table was applied to, what differs
    between its live tables and what the policy compiles to there now (`Enforcer.drift`: []
    in sync). Reads only: `apply_overlays` writes them again."""
    out: list[dict[str, Any]] = []
    for engine, directory in netns_dirs.items():
        for n in overlay_networks(topo):
            where = store_dir(policy_dir, engine, netns_name(n))
            store = PolicyStore(applied.table, where)
            if store.stamp() is None:
                continue
            path = present(directory, n)
            doc: dict[str, Any] = {"engine": engine, "network": n.name, "netns": path}
            if path is None:
                doc["differences"] = ["the namespace is gone (no member of the network here)"]
            else:
                view = overlay_topology(topo, n)
                ports = overlay_ports(view, engine, local_ports(view, engine, path))
                enforcer = Enforcer(store, NetnsNft(path), _fixed(ports))
                doc["differences"] = enforcer.drift(enforcer.compile(applied, view))
            out.append(doc)
    return out


def _records(policy_dir: Path, table: str) -> list[Path]:
    """The overlay namespaces `table` was applied to (their record directories)."""
    base = policy_dir / "overlay"
    if not base.is_dir():
        return []
    return [w for w in sorted(base.iterdir()) if _recorded(table, w)]


def _recorded(table: str, where: Path) -> bool:
    """Whether `where` is a directory recording `table` (a stray file beside the records, or
    one that cannot be read, is none)."""
    try:
        return where.is_dir() and PolicyStore(table, where).stamp() is not None
    except OSError:
        return False


def _remove_one(table: str, where: Path) -> str | None:
    """Removes one overlay namespace's table (when the namespace is still there) and its
    record; the namespace's path when a table was removed."""
    store = PolicyStore(table, where)
    note = where / f"{table}{WHERE_SUFFIX}"
    try:
        path = note.read_text().strip()
    except OSError:
        path = ""
    removed = bool(path and os.path.exists(path))
    if removed:
        removed = Enforcer(store, NetnsNft(path), _no_ports).remove()
    store.remove()
    members = where / f"{table}{MEMBERS_SUFFIX}"
    for done in (members.unlink, note.unlink, where.rmdir):  # the directory last, if empty
        with contextlib.suppress(OSError):
            done()
    return path if removed else None


def _no_ports(_topo: Topology) -> PortMap:
    return {}


def _fixed(ports: PortMap) -> Callable[[Topology], PortMap]:
    """The ports read once for the one compile `apply` makes."""
    return lambda _topo: ports


def remove_overlays(table: str, policy_dir: Path) -> list[str]:
    """Removes the table from every overlay namespace it was applied to (a namespace gone
    since took its table with it) and the records; the namespaces' paths."""
    removed = [_remove_one(table, where) for where in _records(policy_dir, table)]
    return [p for p in removed if p is not None]


def recorded_members(where: Path, table: str) -> Topology | None:
    """The overlay's members as `policy apply` recorded them beside the policy; None when
    there is no record or it cannot be read (the live members alone are then used). Only a
    regular file, not followed through a link, and at most MAX_MEMBERS_BYTES of it: a FIFO
    would block the open for ever, a link to /dev/zero never end the read."""
    path = where / f"{table}{MEMBERS_SUFFIX}"
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        log.error("policy: %s is not read (%s); the live members alone are used", path, e)
        return None
    try:
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
                raise ValueError("not a regular file")
            data = f.read(MAX_MEMBERS_BYTES + 1)
            if len(data) > MAX_MEMBERS_BYTES:
                raise ValueError(f"larger than {MAX_MEMBERS_BYTES} bytes")
            return topology_from_json(json.loads(data))
    except (OSError, ValueError, RecursionError, MemoryError) as e:
        log.error("policy: %s is not read (%s); the live members alone are used", path, e)
        return None


# --- keeping it true (the agent) -------------------------------------------------------------


def _live_ports(engine: str, path: str) -> Callable[[Topology], PortMap]:
    return lambda view: overlay_ports(view, engine, local_ports(view, engine, path))


@dataclass(slots=True)
class _Kept:
    path: str
    enforcer: Enforcer


class OverlayKeeper:
    """Keeps the overlay tables `policy apply` recorded under `policy_dir` true in the
    namespaces of the engines this agent follows and can enter (`netns_dirs`: engine name →
    the directory of its overlay namespaces), as the module says. Thread-safe: `sync` and
    `check` hold one lock."""

    def __init__(
        self,
        table: str,
        policy_dir: Path,
        netns_dirs: Mapping[str, str],
        nft_for: Callable[[str], Nft] = NetnsNft,
        ports_for: Callable[[str, str], Callable[[Topology], PortMap]] = _live_ports,
        is_ns: Callable[[str], bool] = is_netns,
    ) -> None:
        self.table = table
        self.policy_dir = policy_dir
        self.netns_dirs = dict(netns_dirs)
        self._nft_for = nft_for
        self._ports_for = ports_for
        self._is_ns = is_ns
        self._kept: dict[Path, _Kept] = {}
        # Each record read, by its file's identity (read again only when it is replaced);
        # None: unreadable, or it did not compile (the live members alone then).
        self._records: dict[Path, tuple[tuple[int, int, int] | None, Topology | None]] = {}
        # The tables a check found written by another `policy apply` not yet recorded: given
        # one more period before they are taken for tampering.
        self._waited: set[Path] = set()
        self._lock = threading.Lock()
        # The topology's version and the records' identities of the last sync.
        self._synced: tuple[int, tuple[tuple[Path, Any, Any], ...]] | None = None

    def sync(self, topo: Topology) -> None:
        """The engines' containers changed: each recorded table follows its members."""
        with self._lock:
            self._sync(topo, _records(self.policy_dir, self.table))

    def refresh(self, topo: Topology) -> None:
        """`sync`, only when something changed since the last one: another topology, or a
        record written, replaced or removed (the periodic look: a `policy apply` while no
        container changes). Each look costs a few stat calls, not a compile per namespace."""
        with self._lock:
            records = _records(self.policy_dir, self.table)
            if self._synced != (topo.version, self._signature(records)):
                self._sync(topo, records)

    def _signature(self, records: list[Path]) -> tuple[tuple[Path, Any, Any], ...]:
        """What the records are now, by their files' identities."""
        return tuple(
            (w, PolicyStore(self.table, w).stamp(), _identity(w / f"{self.table}{MEMBERS_SUFFIX}"))
            for w in records
        )

    def _sync(self, topo: Topology, records: list[Path]) -> None:
        signature: Any = (topo.version, self._signature(records))
        followed = {e.name for e in topo.engines}
        wanted: set[Path] = set()
        for where in records:
            engine, _, netns = where.name.rpartition("_")
            directory = self.netns_dirs.get(engine)
            if directory is None or engine not in followed:
                continue
            n = next((n for n in overlay_networks(topo) if netns_name(n) == netns), None)
            if n is None:
                continue  # the network is gone, or its engine is not answering: left as is
            path = present(directory, n, self._is_ns)
            if path is None:
                # No member on this host: Docker removed the namespace, table and all. With
                # one, Docker has yet to mount it: the next refresh looks again.
                if any(c.engine == engine for c in overlay_topology(topo, n).containers):
                    signature = None
                continue
            wanted.add(where)
            kept = self._kept.get(where)
            if kept is None or kept.path != path:
                store = PolicyStore(self.table, where)
                enforcer = Enforcer(store, self._nft_for(path), self._ports_for(engine, path))
                kept = self._kept[where] = _Kept(path, enforcer)
            try:  # one namespace's trouble never stops the others
                live = overlay_topology(topo, n)
                view = self._view(live, n, where, followed)
                try:
                    kept.enforcer.sync(view)
                except Exception as e:
                    if view is live:
                        raise
                    # Never the table frozen as it was (members that left kept allowed).
                    log.error(
                        "policy: the members recorded in %s do not compile (%r); %s's table "
                        "in %s follows the live members alone",
                        where,
                        e,
                        n.name,
                        path,
                    )
                    self._records[where] = (self._records[where][0], None)
                    kept.enforcer.sync(live)
            except Exception:
                log.exception("policy: keeping %s's table in %s failed", n.name, path)
        self._synced = signature
        for gone in set(self._kept) - wanted:
            del self._kept[gone]
        for gone in set(self._records) - wanted:
            del self._records[gone]
        self._waited &= wanted

    def check(self) -> None:
        """Compares each kept table with its namespace's and mends what differs (a table
        flushed or deleted behind the agent's back, or a namespace made anew)."""
        with self._lock:
            self._check()

    def _check(self) -> None:
        for where, kept in list(self._kept.items()):
            try:
                # A table of another structure that `policy apply` wrote and is about to
                # record is given one period (`Enforcer.check`), never overwritten with the
                # old policy at once.
                found = kept.enforcer.check(patient=where not in self._waited)
                if found is None:
                    self._waited.add(where)
                else:
                    self._waited.discard(where)
            except Exception:
                log.exception("policy: checking the table in %s failed", kept.path)
            if PolicyStore(self.table, where).stamp() is None:
                self._kept.pop(where, None)  # `policy remove`: nothing to keep

    def _view(self, live: Topology, n: Network, where: Path, followed: set[str]) -> Topology:
        """The namespace's topology: the followed engines' members live (`live`), the
        others' as recorded by `policy apply` (`live` itself when none is). A recorded
        member whose address a live one holds now is left out: the address was given
        anew, and its old owner's labels never speak for the new one."""
        recorded = self._recorded(where)
        if recorded is None:
            return live
        held = {a for c in live.containers for a in container_addresses(c)}
        others = tuple(
            c
            for c in overlay_topology(recorded, n).containers
            if c.engine not in followed and not (container_addresses(c) & held)
        )
        if not others:
            return live
        return replace(live, containers=(*live.containers, *others))

    def _recorded(self, where: Path) -> Topology | None:
        """The record beside `where`'s policy, read again only when it was replaced."""
        path = where / f"{self.table}{MEMBERS_SUFFIX}"
        ident = _identity(path)
        cached = self._records.get(where)
        if cached is not None and cached[0] == ident:
            return cached[1]
        recorded = None if ident is None else recorded_members(where, self.table)
        self._records[where] = (ident, recorded)
        return recorded


def _identity(path: Path) -> tuple[int, int, int] | None:
    """A file's identity (inode, size, mtime), the link's own; None when it is not there."""
    try:
        st = path.lstat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)

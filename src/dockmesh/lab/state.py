"""The lab's state file: what `lab up` asked for and everything it made — namespaces,
directories, files, and the pid of every process it started — so that `lab down` removes
exactly those, and the other `lab` commands (and `--engine hostN`) find the lab. Pure: bytes
in, a `LabState` out, or `LabStateError` saying what is wrong in one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from dockmesh.lab.plan import NETNS_ETC, LabPlan, LabPlanError, Partition, plan_lab

VERSION = 1


class LabStateError(ValueError):
    """The state file cannot be read as a lab's state (one line: where and why)."""


@dataclass
class LabState:
    name: str
    subnet: str
    hosts: int
    etcd: int
    managers: int
    # Agents were started with `--store etcd://… --node NAME` (the shared catalog).
    shared_store: bool = False
    # What exists because of this lab, in the order it was made.
    netns: list[str] = field(default_factory=list)
    dirs: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    # "engine@host1", "agent@host1", "etcd@etcd1" → pid (absent: not running).
    pids: dict[str, int] = field(default_factory=dict)
    partitions: list[Partition] = field(default_factory=list)
    images: list[str] = field(default_factory=list)
    up_seconds: float | None = None

    def plan(self) -> LabPlan:
        return plan_lab(self.name, self.subnet, self.hosts, self.etcd, self.managers)

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "name": self.name,
            "subnet": self.subnet,
            "hosts": self.hosts,
            "etcd": self.etcd,
            "managers": self.managers,
            "shared_store": self.shared_store,
            "netns": list(self.netns),
            "dirs": list(self.dirs),
            "files": list(self.files),
            "pids": dict(self.pids),
            "partitions": [{"host": p.host, "peer": p.peer} for p in self.partitions],
            "images": list(self.images),
            "up_seconds": self.up_seconds,
        }

    def dumps(self) -> bytes:
        return (json.dumps(self.to_json(), indent=2) + "\n").encode()


def _want(doc: dict[str, Any], key: str, kind: type | tuple[type, ...], where: str) -> Any:
    if key not in doc:
        raise LabStateError(f"{where}: no {key!r}")
    value = doc[key]
    # bool is an int to Python; a count given as `true` is still wrong.
    if isinstance(value, bool) and kind is int:
        raise LabStateError(f"{where}: {key!r} is not a number")
    if not isinstance(value, kind):
        raise LabStateError(f"{where}: {key!r} has the wrong type ({type(value).__name__})")
    return value


def _strings(doc: dict[str, Any], key: str, where: str) -> list[str]:
    value = _want(doc, key, list, where)
    if not all(isinstance(v, str) for v in value):
        raise LabStateError(f"{where}: {key!r} holds something that is not a string")
    return list(value)


def parse_state(data: bytes, where: str) -> LabState:
    """`data` (the file at `where`) as a LabState; LabStateError for anything else."""
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise LabStateError(f"{where}: not a lab state file ({e})") from None
    if not isinstance(doc, dict):
        raise LabStateError(f"{where}: not a lab state file (a JSON object was expected)")
    version = _want(doc, "version", int, where)
    if version != VERSION:
        raise LabStateError(f"{where}: version {version}, this dockmesh reads {VERSION}")
    pids = _want(doc, "pids", dict, where)
    for k, v in pids.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise LabStateError(f"{where}: the pid of {k!r} is not a positive number")
    parts: list[Partition] = []
    for p in _want(doc, "partitions", list, where):
        if not isinstance(p, dict) or not isinstance(p.get("host"), str):
            raise LabStateError(f"{where}: a partition without a host")
        peer = p.get("peer", "")
        if not isinstance(peer, str):
            raise LabStateError(f"{where}: a partition's peer is not a string")
        parts.append(Partition(p["host"], peer))
    up = doc.get("up_seconds")
    if up is not None and (isinstance(up, bool) or not isinstance(up, int | float)):
        raise LabStateError(f"{where}: 'up_seconds' is not a number")
    state = LabState(
        name=_want(doc, "name", str, where),
        subnet=_want(doc, "subnet", str, where),
        hosts=_want(doc, "hosts", int, where),
        etcd=_want(doc, "etcd", int, where),
        managers=_want(doc, "managers", int, where),
        shared_store=bool(_want(doc, "shared_store", bool, where)),
        netns=_strings(doc, "netns", where),
        dirs=_strings(doc, "dirs", where),
        files=_strings(doc, "files", where),
        pids=dict(pids),
        partitions=parts,
        images=_strings(doc, "images", where),
        up_seconds=None if up is None else float(up),
    )
    try:
        plan = state.plan()
    except LabPlanError as e:
        raise LabStateError(f"{where}: {e}") from None
    # `lab down` removes what the file lists, as root: only what this lab's plan makes may
    # be listed (a damaged or tampered file naming / or another lab's namespace is refused).
    mine = {
        "dirs": {NETNS_ETC, plan.run_dir, plan.data_dir, *(h.resolv_dir for h in plan.hosts)},
        "netns": set(plan.netns),
        "files": {f"{plan.data_dir}/images.tar"},
    }
    for key, allowed in mine.items():
        for item in getattr(state, key):
            if item not in allowed:
                raise LabStateError(
                    f"{where}: {key} lists {item!r}, which lab {state.name!r} never makes"
                )
    return state


def engine_url(state: LabState, host: str) -> str | None:
    """The engine URL of the lab host named `host`, or None when the lab has none."""
    try:
        return state.plan().host(host).url
    except LabPlanError:
        return None

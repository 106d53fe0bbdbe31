"""An engine in memory, behind the same interface the watcher reads real engines through.

Operations change its state and emit the events Docker would, in Docker's shape, so that logic
built on a live topology (the watcher today; the catalog and policy enforcer later) is tested
without a daemon and driven by hypothesis. Integration tests use the real engine instead.
"""

from __future__ import annotations

import ipaddress
import itertools
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

from dockmesh.engine.client import EngineRef
from dockmesh.model.topology import (
    Attachment,
    Container,
    EngineInfo,
    EngineState,
    IpamPool,
    Network,
)


class MemoryEventStream:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[dict[str, Any] | None] = queue.SimpleQueue()

    def put(self, event: dict[str, Any]) -> None:
        self._queue.put(event)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while (event := self._queue.get()) is not None:
            yield event

    def close(self) -> None:
        self._queue.put(None)


class MemoryEngine:
    def __init__(
        self,
        name: str = "mem",
        clock_ns: Callable[[], int] = time.time_ns,
        read_delay_s: float = 0.0,
    ) -> None:
        self.ref = EngineRef(name, f"memory://{name}")
        self._clock_ns = clock_ns
        self._read_delay_s = read_delay_s  # a slow inspect, as when the engine holds a lock
        self._lock = threading.Lock()
        self._networks: dict[str, Network] = {}
        self._containers: dict[str, Container] = {}
        self._streams: list[MemoryEventStream] = []
        self._ids = itertools.count(1)
        self._next_ip: dict[str, int] = {}

    # --- EngineSource -------------------------------------------------------------------

    def snapshot(self) -> EngineState:
        with self._lock:
            return EngineState(
                EngineInfo(self.ref.name, self.ref.url, "memory"),
                dict(self._networks),
                dict(self._containers),
            )

    def events(self) -> MemoryEventStream:
        stream = MemoryEventStream()
        with self._lock:
            self._streams.append(stream)
        return stream

    def container(self, container_id: str) -> Container | None:
        if self._read_delay_s:
            time.sleep(self._read_delay_s)
        with self._lock:
            return self._containers.get(container_id)

    def network(self, network_id: str) -> Network | None:
        if self._read_delay_s:
            time.sleep(self._read_delay_s)
        with self._lock:
            return self._networks.get(network_id)

    def close(self) -> None:
        self.drop_streams()

    # --- operations ---------------------------------------------------------------------

    def _id(self) -> str:
        return f"{next(self._ids):064x}"

    def _emit(self, kind: str, action: str, oid: str, **attrs: str) -> None:
        event = {
            "Type": kind,
            "Action": action,
            "Actor": {"ID": oid, "Attributes": attrs},
            "timeNano": self._clock_ns(),
        }
        for s in self._streams:
            s.put(event)

    def drop_streams(self) -> None:
        """Ends every event stream, as an engine restart does."""
        with self._lock:
            streams, self._streams = self._streams, []
        for s in streams:
            s.close()

    def create_network(
        self,
        name: str,
        subnet: str = "10.0.0.0/24",
        internal: bool = False,
        scope: str = "local",
        driver: str = "bridge",
    ) -> str:
        with self._lock:
            nid = self._id()
            net = ipaddress.ip_network(subnet)
            self._networks[nid] = Network(
                nid,
                name,
                self.ref.name,
                driver,
                scope,
                internal,
                ipam=(IpamPool(subnet, str(net.network_address + 1)),),
                engines=(self.ref.name,),
            )
            self._next_ip[nid] = 2
            self._emit("network", "create", nid, name=name, type=driver)
        return nid

    def remove_network(self, network_id: str) -> None:
        with self._lock:
            net = self._networks.pop(network_id)
            self._emit("network", "destroy", network_id, name=net.name, type=net.driver)

    def create_container(
        self, name: str, image: str = "dockmesh/toolbox", labels: dict[str, str] | None = None
    ) -> str:
        with self._lock:
            cid = self._id()
            self._containers[cid] = Container(
                cid, name, self.ref.name, image, "created", labels=dict(labels or {})
            )
            self._emit("container", "create", cid, name=name, image=image)
        return cid

    def _set(self, cid: str, action: str, **changes: Any) -> None:
        c = replace(self._containers[cid], **changes)
        self._containers[cid] = c
        self._emit("container", action, cid, name=c.name)

    def start(self, cid: str) -> None:
        with self._lock:
            self._set(cid, "start", state="running", pid=int(cid[-6:], 16) + 1000)

    def stop(self, cid: str) -> None:
        with self._lock:
            self._set(cid, "die", state="exited", pid=None)

    def set_health(self, cid: str, status: str) -> None:
        with self._lock:
            self._set(cid, f"health_status: {status}", health=status)

    def rename(self, cid: str, new_name: str) -> None:
        with self._lock:
            self._set(cid, "rename", name=new_name)

    def remove_container(self, cid: str) -> None:
        with self._lock:
            c = self._containers.pop(cid)
            for a in c.attachments:
                self._emit("network", "disconnect", a.network_id, container=cid, name=a.network)
            self._emit("container", "destroy", cid, name=c.name)

    def connect(self, cid: str, nid: str, aliases: tuple[str, ...] = ()) -> None:
        with self._lock:
            net, c = self._networks[nid], self._containers[cid]
            base = ipaddress.ip_network(net.ipam[0].subnet)
            ip = str(base.network_address + self._next_ip[nid])
            self._next_ip[nid] += 1
            att = Attachment(nid, net.name, ipv4=ip, aliases=aliases)
            self._containers[cid] = replace(c, attachments=(*c.attachments, att))
            self._emit("network", "connect", nid, container=cid, name=net.name)

    def disconnect(self, cid: str, nid: str) -> None:
        with self._lock:
            c = self._containers[cid]
            kept = tuple(a for a in c.attachments if a.network_id != nid)
            self._containers[cid] = replace(c, attachments=kept)
            self._emit("network", "disconnect", nid, container=cid, name=self._networks[nid].name)

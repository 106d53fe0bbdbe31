"""The catalog on the agent's event loop: every change persisted (when it must be) and
announced, and blocking queries that wake on the first change of their topic.

All methods run on the loop's thread; the pure `Catalog` does the deciding.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterable, Sequence

from dockmesh.catalog.state import Catalog
from dockmesh.catalog.store import Store
from dockmesh.model.catalog import CheckSpec, Instance, Status

log = logging.getLogger(__name__)

Listener = Callable[[Catalog], None]
MAX_WAIT_S = 600.0  # Consul caps a blocking query at 10 minutes


class LiveCatalog:
    """The agent's one `Catalog` with the effects around it: a change that changed something
    is saved first (API registrations and KV only: container-derived instances are rebuilt
    from the engines), then announced to the listeners and to the blocking queries waiting
    on its topic. Every method runs on the event loop's thread; time comes from `clock`."""

    def __init__(
        self,
        catalog: Catalog | None = None,
        store: Store | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.catalog = catalog or Catalog()
        self.store = store
        self.clock = clock
        self._changed = asyncio.Event()
        self._listeners: list[Listener] = []

    # --- change announcements -----------------------------------------------------------

    def subscribe(self, listener: Listener) -> None:
        """`listener(catalog)` after every change, on the loop (the DNS server drops its
        prebuilt answers there)."""
        self._listeners.append(listener)

    def unsubscribe(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def changed(self) -> None:
        event, self._changed = self._changed, asyncio.Event()
        event.set()
        for listener in self._listeners:
            try:
                listener(self.catalog)
            except Exception:
                log.exception("a catalog listener failed")

    async def wait(self, topic: str, index: int, timeout_s: float) -> int:
        """Returns the topic's index once it is past `index`, or after `timeout_s` (capped at
        ten minutes) — Consul's blocking query. `index` 0 or one the catalog never reached
        (a client from before a restart) returns at once."""
        deadline = self.clock() + min(max(timeout_s, 0.0), MAX_WAIT_S)
        while True:
            current = self.catalog.topic_index(topic)
            if current > index or index <= 0 or index > self.catalog.index:
                return current
            left = deadline - self.clock()
            if left <= 0:
                return current
            event = self._changed
            try:
                await asyncio.wait_for(event.wait(), left)
            except TimeoutError:
                return self.catalog.topic_index(topic)

    # --- changes -------------------------------------------------------------------------

    def register(self, instance: Instance, checks: Sequence[CheckSpec]) -> None:
        if self.catalog.register(instance, checks, self.clock()):
            if instance.source == "api" and self.store is not None:
                self.store.save_registration(instance, list(checks))
            self.changed()

    def deregister(self, instance_id: str) -> bool:
        inst = self.catalog.instance(instance_id)
        if not self.catalog.deregister(instance_id, self.clock()):
            return False
        if inst is not None and inst.source == "api" and self.store is not None:
            self.store.delete_registration(instance_id)
        self.changed()
        return True

    def sync_containers(
        self, engine: str, wanted: Iterable[tuple[Instance, Sequence[CheckSpec]]]
    ) -> None:
        if self.catalog.sync_containers(engine, wanted, self.clock()):
            self.changed()

    def observe(self, check_id: str, result: Status, output: str) -> None:
        if self.catalog.observe(check_id, result, output, self.clock()):
            self.changed()

    def update_check(self, check_id: str, status: Status, output: str) -> bool:
        if self.catalog.check(check_id) is None:
            return False
        if self.catalog.update_check(check_id, status, output, self.clock()):
            self.changed()
        return True

    def tick(self) -> list[str]:
        changed, gone = self.catalog.tick(self.clock())
        if self.store is not None:
            for instance_id in gone:
                self.store.delete_registration(instance_id)
        if changed:
            self.changed()
        return gone

    def kv_put(self, key: str, value: bytes, flags: int = 0, cas: int | None = None) -> bool:
        ok = self.catalog.kv_put(key, value, flags, cas)
        if ok:
            entry = self.catalog.kv_get(key)
            if self.store is not None and entry is not None:
                self.store.put_kv(entry)
            self.changed()
        return ok

    def kv_delete(self, key: str, recurse: bool = False, cas: int | None = None) -> bool:
        before = self.catalog.index
        ok = self.catalog.kv_delete(key, recurse, cas)
        if ok and self.catalog.index != before:
            if self.store is not None:
                self.store.delete_kv(key, recurse)
            self.changed()
        return ok

    def load(self) -> None:
        """Loads what the store kept (at start, before anything else)."""
        if self.store is None:
            return
        saved = self.store.load()
        self.catalog.kv_restore(saved.kv)
        for instance, checks in saved.registrations:
            self.catalog.register(instance, checks, self.clock())
        self.catalog.index = max(self.catalog.index, saved.index_floor)
        self.changed()

"""The shared catalog's shell over an etcd kept in memory (the real one is in
tests/integration/test_etcd_catalog.py): two agents' catalogs, what each publishes and merges,
a lost lease, a broken watch, a stop that revokes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence

import pytest

from dockmesh.catalog import etcdstore
from dockmesh.catalog.etcdstore import SharedCatalog, Unavailable
from dockmesh.catalog.live import LiveCatalog
from dockmesh.catalog.state import service_topic
from dockmesh.model.catalog import CheckSpec, Instance


class FakeEtcd:
    """Keys with leases, revisions and watchers: what `etcdstore.Etcd` offers."""

    def __init__(self) -> None:
        self.kv: dict[str, tuple[bytes, int]] = {}
        self.revision = 1
        self.leases: set[int] = set()
        self.next_lease = 7
        self.watchers: list[asyncio.Queue[list[tuple[str, bytes | None, int, int]] | None]] = []
        self.down = False
        self.silent = False  # a partition: calls hang until their deadline
        self.writes = 0

    def _check(self) -> None:
        if self.down:
            raise Unavailable("connection refused")

    def _emit(self, events: list[tuple[str, bytes | None, int, int]]) -> None:
        if events:
            for q in self.watchers:
                q.put_nowait(events)


class Client:
    """One agent's connection to the shared `FakeEtcd`."""

    def __init__(self, store: FakeEtcd) -> None:
        self.s = store

    async def list_prefix(self, prefix: str) -> tuple[dict[str, bytes], int, int]:
        self.s._check()
        return {k: v for k, (v, _) in self.s.kv.items() if k.startswith(prefix)}, self.s.revision, 1

    async def write(
        self, puts: Sequence[tuple[str, bytes]], deletes: Sequence[str], lease: int
    ) -> int:
        self.s._check()
        if lease not in self.s.leases:
            raise Unavailable("etcdserver: requested lease not found")
        self.s.revision += 1
        self.s.writes += 1
        events: list[tuple[str, bytes | None, int, int]] = []
        for k in deletes:
            if self.s.kv.pop(k, None) is not None:
                events.append((k, None, self.s.revision, 0))
        for k, v in puts:
            self.s.kv[k] = (v, lease)
            events.append((k, v, self.s.revision, lease))
        self.s._emit(events)
        return self.s.revision

    async def grant(self, ttl: int) -> int:
        self.s._check()
        self.s.next_lease += 1
        self.s.leases.add(self.s.next_lease)
        return self.s.next_lease

    async def keepalive(self, lease: int) -> int:
        self.s._check()
        if self.s.silent:
            await asyncio.sleep(0.2)  # the call's deadline, shortened
            raise Unavailable("deadline exceeded")
        return 10 if lease in self.s.leases else -1

    async def revoke(self, lease: int) -> None:
        self.s._check()
        self.expire(lease)

    def expire(self, lease: int) -> None:
        self.s.leases.discard(lease)
        doomed = [k for k, (_, le) in self.s.kv.items() if le == lease]
        if doomed:
            self.s.revision += 1
            for k in doomed:
                del self.s.kv[k]
            self.s._emit([(k, None, self.s.revision, 0) for k in doomed])

    async def watch(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[list[tuple[str, bytes | None, int, int]]]:
        self.s._check()
        q: asyncio.Queue[list[tuple[str, bytes | None, int, int]] | None] = asyncio.Queue()
        self.s.watchers.append(q)
        try:
            while True:
                item = await q.get()
                if item is None:
                    raise Unavailable("stream broken")
                yield [e for e in item if e[0].startswith(prefix)]
        finally:
            self.s.watchers.remove(q)

    async def reset(self) -> None:
        pass

    async def close(self) -> None:
        pass


def container(
    iid: str, service: str, address: str, status: str = "passing"
) -> tuple[Instance, list[CheckSpec]]:
    inst = Instance(iid, service, address, 80, source="container", engine="local", container=iid)
    check = CheckSpec(f"docker:{iid}", "d", "docker", service_id=iid, initial_status=status)  # type: ignore[arg-type]
    return inst, [check]


async def settle(pred: object, limit: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + limit
    while not pred():  # type: ignore[operator]
        assert loop.time() < end, "not reached"
        await asyncio.sleep(0.01)


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(etcdstore, "KEEPALIVE_S", 0.05)


async def pair() -> tuple[FakeEtcd, SharedCatalog, SharedCatalog]:
    store = FakeEtcd()
    a = SharedCatalog(LiveCatalog(), "a", Client(store))  # type: ignore[arg-type]
    b = SharedCatalog(LiveCatalog(), "b", Client(store))  # type: ignore[arg-type]
    a.start()
    b.start()
    await settle(lambda: a.connected and b.connected and a.lease and b.lease)
    return store, a, b


def test_local_instances_are_published_and_merged_by_the_other_with_their_health() -> None:
    async def main() -> None:
        store, a, b = await pair()
        a.live.sync_containers("local", [container("web-1", "web", "10.0.0.2", "critical")])
        await settle(lambda: b.live.catalog.entries("web"))
        (entry,) = b.live.catalog.entries("web")
        assert entry.instance.id == "a/web-1" and entry.status == "critical"
        assert b.live.catalog.entries("web", passing=True) == []
        index = b.live.catalog.index
        # Its health changes on its own host: the other host follows.
        a.live.sync_containers("local", [container("web-1", "web", "10.0.0.2", "passing")])
        await settle(lambda: b.live.catalog.entries("web", passing=True))
        assert b.live.catalog.index > index  # X-Consul-Index only grows
        # What b merged is never published again by b.
        assert not [k for k in store.kv if k.startswith("/dockmesh/v1/nodes/b/")]
        writes = store.writes
        a.live.changed()  # nothing changed: nothing written
        await asyncio.sleep(0.1)
        assert store.writes == writes
        a.live.sync_containers("local", [])
        await settle(lambda: not b.live.catalog.entries("web"))
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_a_lost_lease_is_replaced_and_the_subtree_written_again() -> None:
    async def main() -> None:
        store, a, b = await pair()
        a.live.sync_containers("local", [container("web-1", "web", "10.0.0.2")])
        await settle(lambda: b.live.catalog.entries("web"))
        old = a.lease
        assert old is not None
        Client(store).expire(old)  # as etcd does once the TTL passed
        await settle(lambda: a.lease not in (None, old) and b.live.catalog.entries("web"))
        (_, lease) = store.kv["/dockmesh/v1/nodes/a/instances/web-1"]
        assert lease == a.lease
        assert a.republished == 2  # at start, and with the new lease
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_a_broken_watch_says_no_leader_and_catches_up_by_listing() -> None:
    async def main() -> None:
        store, a, b = await pair()
        store.down = True
        for q in list(store.watchers):
            q.put_nowait(None)
        await settle(lambda: not b.connected)
        assert b.links()[0].connected is False
        # A change while b does not follow: b sees it from the listing once back.
        store.down = False
        a.live.sync_containers("local", [container("web-1", "web", "10.0.0.2")])
        await settle(lambda: b.connected and b.live.catalog.entries("web"), 5)
        assert b.links()[0].connected is True
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_a_stop_revokes_the_lease_so_the_others_drop_its_instances_at_once() -> None:
    async def main() -> None:
        store, a, b = await pair()
        a.live.sync_containers("local", [container("web-1", "web", "10.0.0.2")])
        await settle(lambda: b.live.catalog.entries("web"))
        await a.stop(revoke=True)
        await settle(lambda: not b.live.catalog.entries("web"))
        assert store.kv == {}
        with contextlib.suppress(Exception):
            await b.stop()

    asyncio.run(main())


def test_a_watch_left_open_and_silent_by_a_partition_is_no_leader_once_keepalives_fail(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(etcdstore, "CALL_TIMEOUT_S", 0.2)

    async def main() -> None:
        store, a, b = await pair()
        a.live.sync_containers("local", [container("web-1", "web", "10.0.0.2")])
        await settle(lambda: b.live.catalog.entries("web"))
        store.silent = True  # the watch stays open: nothing ends it
        await settle(lambda: not b.links()[0].connected)
        assert b.connected and b.live.catalog.entries("web")  # the cache still answers
        store.silent = False
        await settle(lambda: b.links()[0].connected)
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_a_blocking_query_on_the_other_host_wakes_when_a_remote_instance_arrives() -> None:
    async def main() -> None:
        _, a, b = await pair()
        topic = service_topic("web")
        index = b.live.catalog.topic_index(topic)
        waiter = asyncio.ensure_future(b.live.wait(topic, index, 5.0))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        a.live.sync_containers("local", [container("web-1", "web", "10.0.0.2")])
        woke = await asyncio.wait_for(waiter, 2.0)
        assert woke > index and b.live.catalog.entries("web")
        await a.stop()
        await b.stop()

    asyncio.run(main())


def test_two_agents_with_the_same_node_name_say_so_and_do_not_replace_each_other_in_a_loop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A misconfiguration (two hosts started with the same --node): each saw the other's
    writes as its subtree changed behind it and replaced it at once, hundreds of transactions
    a second. Now each write under a lease that is not the agent's is said (once) and the
    agent holds off replacing."""

    async def main() -> None:
        store = FakeEtcd()
        one = SharedCatalog(LiveCatalog(), "dup", Client(store))  # type: ignore[arg-type]
        two = SharedCatalog(LiveCatalog(), "dup", Client(store))  # type: ignore[arg-type]
        one.live.sync_containers("local", [container("x-1", "web", "10.0.0.2")])
        two.live.sync_containers("local", [container("y-1", "web", "10.0.0.3")])
        one.start()
        two.start()
        await asyncio.sleep(1.0)
        assert store.writes < 10, f"{store.writes} transactions in 1 s"
        assert one.conflicts + two.conflicts > 0
        said = [r for r in caplog.records if "another agent publishes as node dup" in r.message]
        assert 1 <= len(said) <= 2  # once per agent that saw it
        await one.stop()
        await two.stop()

    asyncio.run(main())

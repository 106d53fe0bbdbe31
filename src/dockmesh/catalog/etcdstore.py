"""The catalog shared through etcd: this agent's instances published under its node's
subtree, the other nodes' followed by one watch and merged into the local catalog. The shell
around `catalog.sharing` (which decides): aetcd's connection and stubs, wrapped in `Etcd`.

Tasks on the agent's loop (`SharedCatalog.start`):
- the lease: one per agent (TTL 10 s), kept alive twice a second; lost (the store says so, or
  no keep-alive answered for a TTL), a new one is granted and the subtree replaced;
- publishing: after each change of the local catalog, the difference between what the
  subtree holds and what is wanted is written in one transaction (nothing when none);
- following: on every (re)connection, the root is listed, the cache made equal to it (the
  nodes that differ synced into the catalog) and watched from the listing's next revision,
  with `hasleader` (a member without a leader ends the watch: the agent says it has none);
- anti-entropy: every 30 s, the subtree as listed is compared with what was published.
DNS and the HTTP API read the local catalog only: never a round trip to etcd per query.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

from dockmesh.catalog.live import LiveCatalog
from dockmesh.catalog.sharing import (
    ROOT,
    Publisher,
    RemoteView,
    backoff,
    is_remote,
    node_prefix,
    published_of,
    remote_engine,
    wanted_keys,
)
from dockmesh.model.catalog import worst
from dockmesh.model.liveness import EngineLink

log = logging.getLogger(__name__)

LEASE_TTL_S = 10
# A host whose agent died must leave the others' catalogs within TTL ± 1 s of its death: its
# keys expire one TTL after the last keep-alive (etcd looks for expired leases every 0.5 s),
# so keep-alives come every 0.5 s: the keys leave 9.5 to 10.5 s after the death. At 3 s
# apart, a death just after one would be noticed up to 3 s early.
KEEPALIVE_S = 0.5
ANTI_ENTROPY_S = 30.0
CALL_TIMEOUT_S = 3.0
# How long a stop waits for the catalog's tasks to end before it revokes the lease.
STOP_WAIT_S = 1.0
LIST_PAGE = 1000  # keys per page of a listing
# Another agent writing this node's subtree under its own lease (two agents started with the
# same --node): this agent stops replacing the subtree for this long after each such write,
# and says so at most once per CONFLICT_LOG_S. Without it the two replaced each other's
# subtree in a loop (hundreds of transactions a second, a warning each).
CONFLICT_HOLD_S = 20.0
CONFLICT_LOG_S = 30.0
LINK_NAME = "etcd"
# The channel finds a restarted member quickly. Its pings come every 10 s: etcd answers pings
# more often than every 5 s (its --grpc-keepalive-min-time) with GOAWAY too_many_pings, and at
# exactly 5 s the lab saw that GOAWAY break a watch. A dead connection (a partition) is noticed
# sooner anyway, by the lease's keep-alives going unanswered.
_CHANNEL_OPTIONS = {
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 1000,
    "grpc.keepalive_time_ms": 10000,
    "grpc.keepalive_timeout_ms": 2000,
    "grpc.keepalive_permit_without_calls": 1,
    "grpc.http2.max_pings_without_data": 0,
}


class Unavailable(Exception):
    """etcd did not answer, refused, or ended a watch (no leader, compacted, cancelled)."""


def _range_end(prefix: bytes) -> bytes:
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


class Etcd:
    """The few etcd calls the catalog makes, over aetcd's connection, against one of the
    endpoints at a time (the next after a failure). Every error is `Unavailable`."""

    def __init__(self, endpoints: Sequence[tuple[str, int]], timeout_s: float = CALL_TIMEOUT_S):
        self.endpoints = list(endpoints)
        self.timeout_s = timeout_s
        self._next = 0
        self._client: Any = None

    @property
    def endpoint(self) -> str:
        host, port = self.endpoints[(self._next - 1) % len(self.endpoints)]
        return f"{host}:{port}"

    async def _connected(self) -> Any:
        if self._client is None:
            import aetcd

            host, port = self.endpoints[self._next % len(self.endpoints)]
            self._next += 1
            # grpc's target is HOST:PORT: an IPv6 address unbracketed was read as a host name
            # that never resolved (`--store etcd://[::1]:2379` never connected).
            target = f"[{host}]" if ":" in host else host
            client = aetcd.Client(host=target, port=port, options=dict(_CHANNEL_OPTIONS))
            try:
                await client.connect()
            except Exception as e:
                raise Unavailable(f"{host}:{port}: {e}") from None
            self._client = client
        return self._client

    async def reset(self) -> None:
        """Drops the connection: the next call connects to the next endpoint."""
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 2.0)

    async def _call(self, fn: Callable[[Any], Any]) -> Any:
        client = await self._connected()
        try:
            return await asyncio.wait_for(fn(client), self.timeout_s)
        except asyncio.CancelledError:
            _raise_unless_task_cancelled()
            raise
        except Exception as e:
            raise Unavailable(_reason(e)) from None

    async def _range(self, req: Any) -> Any:
        return await self._call(lambda c: c.kvstub.Range(req, timeout=self.timeout_s))

    async def list_prefix(self, prefix: str) -> tuple[dict[str, bytes], int, int]:
        """Every key under `prefix` with its value, the revision and the cluster ID.

        Read in pages at one revision (the first page's): one response holding the whole
        root went over grpc's 4 MiB limit at a few MiB of values (30 values of 200 kB put by
        anyone, or some 20 000 instances), and every listing failed, so the agent never
        followed the store again. A page too large for the limit is asked again halved."""
        from aetcd import rpc

        p = prefix.encode()
        end = _range_end(p)
        start, limit = p, LIST_PAGE
        revision = cluster = 0
        kvs: dict[str, bytes] = {}
        while True:
            req = rpc.RangeRequest(key=start, range_end=end, limit=limit, revision=revision)
            try:
                resp = await self._range(req)
            except Unavailable as e:
                if "larger than max" in str(e) and limit > 1:
                    limit = max(1, limit // 2)
                    continue
                raise
            if not revision:
                revision, cluster = int(resp.header.revision), int(resp.header.cluster_id)
            for kv in resp.kvs:
                with contextlib.suppress(UnicodeDecodeError):
                    kvs[kv.key.decode("utf-8", errors="strict")] = bytes(kv.value)
            if not resp.more or not resp.kvs:
                return kvs, revision, cluster
            start = bytes(resp.kvs[-1].key) + b"\0"

    async def write(
        self, puts: Sequence[tuple[str, bytes]], deletes: Sequence[str], lease: int
    ) -> int:
        """One transaction; returns its revision."""
        from aetcd import rpc

        ops = [
            rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k.encode()))
            for k in deletes
        ]
        ops += [
            rpc.RequestOp(request_put=rpc.PutRequest(key=k.encode(), value=v, lease=lease))
            for k, v in puts
        ]
        req = rpc.TxnRequest(compare=[], success=ops, failure=[])
        resp = await self._call(lambda c: c.kvstub.Txn(req, timeout=self.timeout_s))
        return int(resp.header.revision)

    async def grant(self, ttl: int) -> int:
        from aetcd import rpc

        req = rpc.LeaseGrantRequest(TTL=ttl, ID=0)
        resp = await self._call(lambda c: c.leasestub.LeaseGrant(req, timeout=self.timeout_s))
        return int(resp.ID)

    async def keepalive(self, lease: int) -> int:
        """The lease's TTL after a keep-alive; 0 or less: the lease is gone."""

        async def once(c: Any) -> int:
            from aetcd import rpc

            call = c.leasestub.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=self.timeout_s
            )
            async for reply in call:
                return int(reply.TTL)
            return 0

        return int(await self._call(once))

    async def revoke(self, lease: int) -> None:
        from aetcd import rpc

        req = rpc.LeaseRevokeRequest(ID=lease)
        await self._call(lambda c: c.leasestub.LeaseRevoke(req, timeout=self.timeout_s))

    async def watch(
        self, prefix: str, start_revision: int
    ) -> AsyncIterator[list[tuple[str, bytes | None, int, int]]]:
        """Each response's events as (key, value or None when deleted, revision, the lease the
        key was put with: 0 for none and for a deletion), from
        `start_revision` on, with `hasleader`: ends with `Unavailable` when the stream
        breaks, the member has no leader, or the revision was compacted."""
        from aetcd import rpc

        client = await self._connected()
        p = prefix.encode()
        create = rpc.WatchCreateRequest(
            key=p, range_end=_range_end(p), start_revision=start_revision, progress_notify=True
        )
        done = asyncio.Event()

        async def requests() -> AsyncIterator[Any]:
            yield rpc.WatchRequest(create_request=create)
            await done.wait()

        call = rpc.WatchStub(client.channel).Watch(requests(), metadata=(("hasleader", "true"),))
        try:
            async for resp in call:
                if resp.compact_revision:
                    raise Unavailable(f"revision {start_revision} compacted")
                if resp.canceled:
                    raise Unavailable(f"watch cancelled: {resp.cancel_reason or 'no reason'}")
                out: list[tuple[str, bytes | None, int, int]] = []
                for ev in resp.events:
                    try:
                        key = ev.kv.key.decode("utf-8", errors="strict")
                    except UnicodeDecodeError:
                        continue
                    deleted = ev.type == rpc.Event.DELETE
                    value = None if deleted else bytes(ev.kv.value)
                    lease = 0 if deleted else int(ev.kv.lease)
                    out.append((key, value, int(ev.kv.mod_revision), lease))
                yield out
        except Unavailable:
            raise
        except asyncio.CancelledError:
            _raise_unless_task_cancelled()
            raise
        except Exception as e:
            raise Unavailable(_reason(e)) from None
        finally:
            done.set()
            call.cancel()
        raise Unavailable("the watch stream ended")

    async def close(self) -> None:
        await self.reset()


def _raise_unless_task_cancelled() -> None:
    """Called on a CancelledError: a call that grpc cancelled because another task dropped the
    connection (`reset` closes the channel and with it every call on it) is `Unavailable` —
    left as a CancelledError it would end the task that made the call (the watch) silently,
    and the agent would stop following the shared catalog for good. Only the task's own
    cancellation stays a CancelledError."""
    task = asyncio.current_task()
    if task is None or task.cancelling() == 0:
        raise Unavailable("the connection was reset") from None


def _reason(e: BaseException) -> str:
    details = getattr(e, "details", None)
    if callable(details):
        with contextlib.suppress(Exception):
            return str(details())
    return str(e) or type(e).__name__


class SharedCatalog:
    """Publishes `live`'s local instances under `node` and merges the other nodes' into it."""

    def __init__(
        self,
        live: LiveCatalog,
        node: str,
        etcd: Etcd,
        clock: Callable[[], float] = time.monotonic,
        lease_ttl: int = LEASE_TTL_S,
    ) -> None:
        self.live = live
        self.node = node
        self.etcd = etcd
        self.clock = clock
        self.lease_ttl = lease_ttl
        self.publisher = Publisher(node)
        self.view = RemoteView(node)
        self.lease: int | None = None
        self.connected = False  # the watch follows the store, with a leader
        self._since = clock()  # when the watch last followed (or began)
        self._kept_at = clock()  # when the store last answered a keep-alive (or a grant)
        self._dirty = asyncio.Event()
        self._lease_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.republished = 0  # times the subtree was replaced
        self._leases: list[int] = []  # the leases this agent was granted (the newest last)
        self.conflict_until = float("-inf")  # another agent writes as this node until then
        self._conflict_logged = float("-inf")
        self.conflicts = 0  # writes seen from another agent under this node's name

    # --- life cycle -----------------------------------------------------------------------

    def start(self) -> None:
        self.live.subscribe(self._changed)
        self._dirty.set()
        for name, coro in (
            ("etcd-lease", self._keep_lease()),
            ("etcd-publish", self._publish()),
            ("etcd-watch", self._follow()),
            ("etcd-anti-entropy", self._anti_entropy()),
        ):
            self._tasks.append(asyncio.create_task(coro, name=name))

    async def stop(self, revoke: bool = True) -> None:
        """Stops the tasks; `revoke`: the lease is revoked, so every other node drops this
        node's instances now rather than after the TTL."""
        self.live.unsubscribe(self._changed)
        tasks, self._tasks = self._tasks, []
        for t in tasks:
            t.cancel()
        if tasks:
            # Bounded: a task that does not end (a cancellation lost inside a call) must not
            # hold the revocation back until the TTL has passed anyway.
            _, late = await asyncio.wait(tasks, timeout=STOP_WAIT_S)
            if late:
                log.warning("etcd: %d tasks still running at the stop", len(late))
        lease, self.lease = self.lease, None
        if revoke and lease is not None:
            for attempt in range(2):  # the second on the next endpoint
                try:
                    await self.etcd.revoke(lease)
                    log.info(
                        "etcd: lease revoked: node %s's instances left the shared catalog",
                        self.node,
                    )
                    break
                except Unavailable as e:
                    if attempt:
                        log.warning(
                            "etcd: revoking the lease failed (its keys leave after the TTL): %s", e
                        )
                    else:
                        await self.etcd.reset()
        await self.etcd.close()

    def following(self) -> bool:
        """Whether this agent follows the store now: its watch is open and its lease's
        keep-alives are answered (a partition leaves a watch open and silent until the
        channel's keep-alive gives up; the lease's say so within CALL_TIMEOUT_S)."""
        if not self.connected:
            return False
        return self.clock() - self._kept_at <= KEEPALIVE_S + CALL_TIMEOUT_S + 0.5

    def links(self) -> tuple[EngineLink, ...]:
        now = self.clock()
        if self.following():
            return (EngineLink(LINK_NAME, True, 0.0),)
        since = self._since if not self.connected else self._kept_at
        return (EngineLink(LINK_NAME, False, max(0.0, now - since)),)

    # --- publishing -----------------------------------------------------------------------

    def _changed(self, _catalog: object) -> None:
        self._dirty.set()

    def wanted(self) -> dict[str, bytes]:
        cat = self.live.catalog
        local = []
        for inst in cat.instances():
            if is_remote(inst):
                continue
            checks = cat.checks_of(inst.id)
            status = worst([c.status for c in checks])
            output = next((c.output for c in checks if c.status != "passing" and c.output), "")
            local.append(published_of(inst, status, output))
        return wanted_keys(self.node, local)

    async def _publish(self) -> None:
        attempt = 0
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            lease = self.lease
            if lease is None:
                continue  # the lease task sets _dirty once it has one
            hold = self.conflict_until - self.clock()
            if hold > 0:
                await asyncio.sleep(hold)
                self._dirty.set()
                continue
            try:
                listed = None
                if self.publisher.needs_listing:
                    kvs, _, _ = await self.etcd.list_prefix(node_prefix(self.node))
                    listed = list(kvs)
                plan = self.publisher.plan(self.wanted(), listed)
                if not plan.empty:
                    for puts, deletes in plan.batches():
                        await self.etcd.write(puts, deletes, lease)
                if self.lease != lease:
                    self.publisher.failed()  # written with a lease that is gone
                    self._dirty.set()
                    continue
                self.publisher.committed(plan)
                if plan.replace:
                    self.republished += 1
                    log.info(
                        "etcd: node %s's subtree replaced: %d instances", self.node, len(plan.puts)
                    )
                attempt = 0
            except Exception as e:
                self.publisher.failed()
                if not isinstance(e, Unavailable):
                    log.exception("etcd: publishing failed (retrying)")
                elif "lease not found" in str(e):
                    self._lease_lost("the store does not know it")
                else:
                    log.warning("etcd: publishing failed (retrying): %s", e)
                    await self.etcd.reset()
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                self._dirty.set()

    def _lease_lost(self, why: str) -> None:
        if self.lease is not None:
            log.warning("etcd: lease %x lost (%s): a new one replaces the subtree", self.lease, why)
        self.lease = None
        self.publisher.lost()
        self._lease_wake.set()

    async def _keep_lease(self) -> None:
        attempt = 0
        kept_at = self.clock()
        while True:
            if self.lease is None:
                try:
                    self.lease = await self.etcd.grant(self.lease_ttl)
                    self._leases = [*self._leases[-7:], self.lease]
                    kept_at = self._kept_at = self.clock()
                    attempt = 0
                    self.publisher.lost()  # every key goes under the new lease
                    self._dirty.set()
                except Unavailable as e:
                    log.debug("etcd: no lease yet: %s", e)
                    await self.etcd.reset()
                    await asyncio.sleep(backoff(attempt))
                    attempt += 1
                    continue
            self._lease_wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lease_wake.wait(), KEEPALIVE_S)
            lease = self.lease
            if lease is None:
                continue
            try:
                ttl = await self.etcd.keepalive(lease)
            except Unavailable as e:
                if self.clock() - kept_at > self.lease_ttl:
                    self._lease_lost(f"no keep-alive answered for {self.lease_ttl} s: {e}")
                # The next calls go to the next endpoint (the watch reconnects there too).
                await self.etcd.reset()
                continue
            if ttl <= 0:
                self._lease_lost("expired")
            else:
                kept_at = self._kept_at = self.clock()

    # --- following ------------------------------------------------------------------------

    def _sync_nodes(self, nodes: set[str] | frozenset[str]) -> None:
        for node in sorted(nodes):
            self.live.sync_containers(remote_engine(node), self.view.instances(node))

    def _disconnected(self) -> None:
        if self.connected:
            self.connected = False
            self._since = self.clock()

    def _foreign_writes(self, events: Sequence[tuple[str, bytes | None, int, int]]) -> bool:
        """Whether `events` hold a put on this node's subtree under a lease this agent was
        never granted: another agent runs with the same --node. (A put without a lease is a
        hand's `etcdctl put`: replaced as any change behind this agent.)"""
        own = node_prefix(self.node)
        foreign = next(
            (
                lease
                for key, value, _, lease in events
                if value is not None and lease and lease not in self._leases and key.startswith(own)
            ),
            None,
        )
        if foreign is None:
            return False
        now = self.clock()
        self.conflicts += 1
        self.conflict_until = now + CONFLICT_HOLD_S
        if now - self._conflict_logged >= CONFLICT_LOG_S:
            self._conflict_logged = now
            log.error(
                "etcd: another agent publishes as node %s (lease %x is not this agent's): "
                "every agent needs its own --node; this one stops replacing the subtree for "
                "%.0f s after each of its writes",
                self.node,
                foreign,
                CONFLICT_HOLD_S,
            )
        return True

    async def _follow(self) -> None:
        attempt = 0
        own = node_prefix(self.node)
        while True:
            try:
                kvs, revision, cluster = await self.etcd.list_prefix(ROOT)
                relisted = self.view.relist(kvs, revision, cluster)
                for p in relisted.problems:
                    log.warning("etcd: left out %s", p)
                if relisted.wiped:
                    log.warning(
                        "etcd: the store was wiped (new cluster or older revision): republishing"
                    )
                    self._lease_lost("the store was wiped")
                self._sync_nodes(relisted.changed)
                if self.publisher.check_listing(self.view.own):
                    log.warning(
                        "etcd: node %s's subtree is not what was written: replacing it", self.node
                    )
                    self._dirty.set()
                self.connected = True
                attempt = 0
                async for events in self.etcd.watch(ROOT, revision + 1):
                    changed: set[str] = set()
                    self._foreign_writes(events)
                    for key, value, rev, _ in events:
                        node, problem = self.view.event(key, value, rev)
                        if problem is not None:
                            log.warning("etcd: left out %s", problem)
                        if node is not None:
                            changed.add(node)
                        elif key.startswith(own) and self.publisher.own_event(key, value):
                            if self.clock() < self.conflict_until:
                                continue  # said once above; replaced after the hold
                            log.warning("etcd: %s changed behind this agent: replacing", key)
                            self._dirty.set()
                    self._sync_nodes(changed)
            except Exception as e:
                if not isinstance(e, Unavailable):
                    log.exception("etcd: following the shared catalog failed")
                elif self.connected:
                    log.warning("etcd: not following the shared catalog: %s", e)
                self._disconnected()
                await self.etcd.reset()
                await asyncio.sleep(backoff(attempt))
                attempt += 1

    async def _anti_entropy(self) -> None:
        while True:
            await asyncio.sleep(ANTI_ENTROPY_S)
            try:
                kvs, _, _ = await self.etcd.list_prefix(node_prefix(self.node))
            except Unavailable:
                continue
            if self.publisher.check_listing(kvs):
                log.warning(
                    "etcd: node %s's subtree differed from what was written: replacing", self.node
                )
                self._dirty.set()
            else:
                self._dirty.set()  # and the catalog's wanted state compared once more

"""The catalog on the event loop (dockmesh.catalog.live), on a virtual-time loop: blocking
queries that wake on the first change of their topic and only then, time out when told
(capped at ten minutes), and return at once for an index they cannot wait on; changes saved
(API registrations and KV only) before they are announced; listeners told of every change."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from functools import partial
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.catalog.live import MAX_WAIT_S, LiveCatalog
from dockmesh.catalog.state import TOPIC_KV, TOPIC_SERVICES, Catalog, service_topic
from dockmesh.catalog.store import MemoryStore
from dockmesh.model.catalog import CheckSpec, Instance, KVEntry
from dockmesh.testing import loop as vtime

API = Instance("api-1", "api", "10.0.0.2", 80)
WEB = Instance("web-1", "web", "10.0.0.3", 80)
CTR = Instance("ctr-1", "api", "10.0.0.4", 80, source="container", container="c1")


def new_live(store: MemoryStore | None = None) -> LiveCatalog:
    return LiveCatalog(store=store, clock=asyncio.get_running_loop().time)


def later(delay: float, fn: Callable[[], object]) -> None:
    asyncio.get_running_loop().call_later(delay, fn)


def run(main: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return vtime.run(main)


def test_a_blocking_query_wakes_at_the_first_change_of_its_topic() -> None:
    async def main() -> tuple[int, float, int]:
        live = new_live()
        live.register(API, [])
        index = live.catalog.topic_index(service_topic("api"))
        later(3, lambda: live.register(WEB, []))  # another service: not this topic
        later(5, lambda: live.kv_put("k", b"v"))  # nor KV
        later(7, lambda: live.deregister("api-1"))
        got = await live.wait(service_topic("api"), index, 60)
        return got, asyncio.get_running_loop().time(), index

    got, at, index = run(main)
    assert at == 7 and got > index


def test_a_blocking_query_without_a_change_times_out_with_the_same_index() -> None:
    async def main() -> tuple[int, float]:
        live = new_live()
        live.register(API, [])
        later(3, lambda: live.kv_put("k", b"v"))
        index = live.catalog.topic_index(TOPIC_SERVICES)
        return await live.wait(TOPIC_SERVICES, index, 10), asyncio.get_running_loop().time()

    got, at = run(main)
    assert at == 10 and got == 2


@pytest.mark.parametrize(("timeout", "returns_at"), [(10**6, MAX_WAIT_S), (-5, 0.0), (0, 0.0)])
def test_the_wait_is_capped_at_ten_minutes_and_never_negative(
    timeout: float, returns_at: float
) -> None:
    async def main() -> float:
        live = new_live()
        live.register(API, [])
        await live.wait(TOPIC_SERVICES, live.catalog.topic_index(TOPIC_SERVICES), timeout)
        return asyncio.get_running_loop().time()

    assert run(main) == returns_at


def test_an_index_it_cannot_wait_on_returns_at_once() -> None:
    async def main() -> list[tuple[int, float]]:
        live = new_live()
        live.register(API, [])
        out = []
        # 0 (no index), one the topic already passed, one the catalog never reached (a
        # client's from before a restart): none of them can be waited on.
        for index in (0, live.catalog.topic_index(TOPIC_SERVICES) - 1, live.catalog.index + 5):
            got = await live.wait(TOPIC_SERVICES, index, 30)
            out.append((got, asyncio.get_running_loop().time()))
        return out

    assert [at for _, at in run(main)] == [0.0, 0.0, 0.0]


@settings(max_examples=30, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(1, 50), st.sampled_from(["api", "web", "kv"])),
        max_size=6,
    ),
    st.integers(1, 60),
)
def test_every_waiter_wakes_at_its_topic_s_first_change_or_its_timeout(
    changes: list[tuple[int, str]], timeout: int
) -> None:
    """Changes at virtual instants on three topics, a waiter on each: each returns at the
    first change of its own topic within its timeout, else at the timeout, with the topic's
    index then."""

    async def main() -> dict[str, tuple[float, int, int]]:
        live = new_live()
        live.register(API, [])
        live.register(WEB, [])
        live.kv_put("k", b"0")
        topics = {"api": service_topic("api"), "web": service_topic("web"), "kv": TOPIC_KV}
        for i, (at, what) in enumerate(changes):
            if what == "kv":
                later(at, partial(live.kv_put, "k", str(i).encode()))
            else:
                inst = API if what == "api" else WEB
                moved = Instance(inst.id, inst.service, inst.address, 81 + i)  # a change
                later(at, partial(live.register, moved, []))

        async def waiter(name: str) -> tuple[float, int, int]:
            index = live.catalog.topic_index(topics[name])
            got = await live.wait(topics[name], index, timeout)
            return asyncio.get_running_loop().time(), got, live.catalog.topic_index(topics[name])

        results = await asyncio.gather(*(waiter(n) for n in topics))
        return dict(zip(topics, results, strict=True))

    got = run(main)
    for name, (at, index, current) in got.items():
        firsts = sorted(t for t, what in changes if what == name and t <= timeout)
        assert at == (firsts[0] if firsts else timeout), (name, changes)
        assert index <= current


# --- what is saved, and who is told -----------------------------------------------------------


def test_api_registrations_and_kv_are_saved_container_instances_are_not() -> None:
    store = MemoryStore()

    async def main() -> None:
        live = new_live(store)
        check = CheckSpec("chk-1", "ttl", "ttl", service_id="api-1", ttl_s=30)
        live.register(API, [check])
        live.register(CTR, [])
        assert set(store.registrations) == {"api-1"}
        assert store.registrations["api-1"] == (API, [check])
        assert live.deregister("ctr-1") and live.deregister("api-1")
        assert store.registrations == {}
        assert not live.deregister("api-1")  # not there: nothing to say
        assert live.kv_put("a/b", b"1", flags=3)
        assert store.kv["a/b"].value == b"1" and store.kv["a/b"].flags == 3
        assert not live.kv_put("a/b", b"2", cas=999)  # refused: nothing saved
        assert store.kv["a/b"].value == b"1"
        assert live.kv_delete("a/", recurse=True)
        assert store.kv == {}

    run(main)


def test_listeners_hear_of_every_change_and_one_that_fails_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    heard: list[int] = []

    def failing(_: Catalog) -> None:
        raise RuntimeError("a listener's bug")

    async def main() -> None:
        live = new_live()
        live.subscribe(failing)
        live.subscribe(lambda c: heard.append(c.index))
        live.register(API, [])
        live.register(API, [])  # the same registration: no change, no announcement
        live.kv_put("k", b"v")
        before = live.catalog.index
        assert live.kv_delete("missing")  # nothing to delete: no change
        assert live.catalog.index == before
        live.unsubscribe(failing)
        live.unsubscribe(failing)  # twice: harmless
        live.deregister("api-1")

    with caplog.at_level(logging.ERROR):
        run(main)
    assert len(heard) == 3 and heard == sorted(heard)
    assert caplog.text.count("a catalog listener failed") == 2


def test_a_check_update_of_an_unknown_check_is_refused_and_ttl_expiry_deregisters() -> None:
    store = MemoryStore()

    async def main() -> tuple[list[str], list[str]]:
        live = new_live(store)
        assert not live.update_check("nope", "passing", "")
        check = CheckSpec(
            "chk-1",
            "ttl",
            "ttl",
            service_id="api-1",
            ttl_s=10,
            deregister_critical_after_s=20,
            initial_status="passing",
        )
        live.register(API, [check])
        assert live.update_check("chk-1", "passing", "ok")
        await asyncio.sleep(5)
        early = live.tick()
        await asyncio.sleep(5)  # the TTL runs out: critical from now
        expired = live.tick()
        assert live.catalog.check("chk-1").status == "critical"  # type: ignore[union-attr]
        await asyncio.sleep(20)
        return early + expired, live.tick()

    early, gone = run(main)
    assert early == [] and gone == ["api-1"]
    assert store.registrations == {}


def test_load_restores_what_the_store_kept_and_the_highest_index_a_client_saw() -> None:
    store = MemoryStore()
    store.save_registration(API, [])
    store.put_kv(KVEntry("k", b"v", 0, 40, 41))

    async def main() -> tuple[int, bool]:
        live = new_live(store)
        told: list[int] = []
        live.subscribe(lambda c: told.append(c.index))
        live.load()
        return live.catalog.index, bool(told) and live.catalog.instance("api-1") == API

    index, restored = run(main)
    assert index >= 41 and restored

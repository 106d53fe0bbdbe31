"""The agent's observation routes (`/v1/dockmesh/stats|doctor|flows|probe`) over a stand-in
observer, through aiohttp's test client: the question reaches the observer as parsed, its
document comes back as it made it, and what it refuses becomes a status with one line."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry

from dockmesh.api import TopologyFeed, make_app
from dockmesh.api.app import OBSERVE_CONCURRENCY, Observer
from dockmesh.api.observe_query import ProbeQuestion
from dockmesh.catalog.live import LiveCatalog

GUARD_S = 30.0


class Seen:
    """Answers from fixed documents and records every question."""

    def __init__(self) -> None:
        self.asked: list[tuple[Any, ...]] = []
        self.release = threading.Event()
        self.release.set()

    def stats(self, containers: Sequence[str]) -> dict[str, Any]:
        self.asked.append(("stats", tuple(containers)))
        if "away" in containers:
            raise PermissionError("away's process (pid 7 on engine e) is not on this host")
        if "nobody" in containers:
            raise LookupError("no container 'nobody' on this host's engines")
        return {"containers": [{"name": n} for n in containers], "elapsed_s": 0.001}

    def doctor(self, container: str, timeout_s: float) -> dict[str, Any]:
        self.asked.append(("doctor", container, timeout_s))
        self.release.wait(GUARD_S)
        return {"container": container, "sections": {}, "findings": []}

    def flows(self, by: str) -> dict[str, Any]:
        self.asked.append(("flows", by))
        return {"edges": [], "accounting": "on", "elapsed_s": 0.0}

    def probe(self, q: ProbeQuestion) -> dict[str, Any]:
        self.asked.append(("probe", q))
        if q.container == "away":
            raise PermissionError("away's process (pid 7 on engine e) is not on this host")
        return {"ok": True, "latency_ms": 0.2, "detail": "connected", "inconclusive": False}


async def _with(observer: Observer | None, scenario: Any) -> None:
    live, feed = LiveCatalog(), TopologyFeed()
    app = make_app(live, feed.current, feed.wait, CollectorRegistry(), observer=observer)
    async with TestClient(TestServer(app)) as client:
        await scenario(client)


def run(observer: Observer | None, scenario: Any) -> None:
    asyncio.run(asyncio.wait_for(_with(observer, scenario), GUARD_S))


async def answer(client: TestClient[web.Request, web.Application], path: str) -> tuple[int, Any]:
    resp = await client.get(path)
    if resp.content_type == "application/json":
        return resp.status, await resp.json()
    return resp.status, await resp.text()


def test_each_question_reaches_the_observer_and_its_document_comes_back() -> None:
    seen = Seen()

    async def scenario(client: Any) -> None:
        assert await answer(client, "/v1/dockmesh/stats?container=web-1&container=%2Fdb") == (
            200,
            {"containers": [{"name": "web-1"}, {"name": "db"}], "elapsed_s": 0.001},
        )
        status, doc = await answer(client, "/v1/dockmesh/doctor?container=web-1&timeout=2s")
        assert status == 200 and doc["container"] == "web-1"
        assert (await answer(client, "/v1/dockmesh/flows?by=service"))[0] == 200
        assert (await answer(client, "/v1/dockmesh/stats"))[0] == 200

    run(seen, scenario)
    assert seen.asked == [
        ("stats", ("web-1", "db")),
        ("doctor", "web-1", 2.0),
        ("flows", "service"),
        ("stats", ()),
    ]


def test_refusals_are_a_status_and_one_line() -> None:
    seen = Seen()

    async def scenario(client: Any) -> None:
        status, text = await answer(client, "/v1/dockmesh/stats?container=nobody")
        assert (status, text) == (404, "no container 'nobody' on this host's engines")
        status, text = await answer(client, "/v1/dockmesh/stats?container=away")
        assert status == 409 and "not on this host" in text
        for bad in ("container=a%0Ab", "container=%ff", "container=", "timeout=9&container=a"):
            status, text = await answer(client, f"/v1/dockmesh/doctor?{bad}")
            assert status == 400 and "\n" not in text.strip(), (bad, text)
        assert (await answer(client, "/v1/dockmesh/flows?by=x"))[0] == 400

    run(seen, scenario)
    # A refused question never reached the observer.
    assert [a[0] for a in seen.asked] == ["stats", "stats"]


def test_without_an_observer_the_routes_say_so() -> None:
    async def scenario(client: Any) -> None:
        status, text = await answer(client, "/v1/dockmesh/stats")
        assert status == 404 and "does not observe" in text

    run(None, scenario)


def test_a_slow_observation_does_not_hold_the_rest_of_the_api() -> None:
    seen = Seen()
    seen.release.clear()

    async def scenario(client: Any) -> None:
        slow = asyncio.ensure_future(answer(client, "/v1/dockmesh/doctor?container=web-1"))
        while not seen.asked:
            await asyncio.sleep(0.01)
        # The doctor blocks its thread; the loop still answers.
        assert (await answer(client, "/v1/status/leader"))[0] == 200
        assert not slow.done()
        seen.release.set()
        assert (await slow)[0] == 200

    run(seen, scenario)


def test_a_probe_reaches_the_observer_as_parsed_and_refusals_are_one_line() -> None:
    seen = Seen()

    async def scenario(client: Any) -> None:
        status, doc = await answer(
            client,
            "/v1/dockmesh/probe?container=web-1&address=10.0.1.5&port=8080&proto=tcp"
            "&timeout=0.5&expected=false",
        )
        assert status == 200 and doc["ok"] is True
        status, text = await answer(client, "/v1/dockmesh/probe?container=away&address=fd00::1")
        assert status == 409 and "not on this host" in text
        for bad in ("container=a&address=example.test", "container=a&address=10.0.0.1&port=0",
                    "container=a&address=10.0.0.1&timeout=60", "address=10.0.0.1"):  # fmt: skip
            status, text = await answer(client, f"/v1/dockmesh/probe?{bad}")
            assert status == 400 and "\n" not in text.strip(), (bad, text)

    run(seen, scenario)
    assert seen.asked == [
        ("probe", ProbeQuestion("web-1", "10.0.1.5", "tcp", 8080, 0.5, expected=False)),
        ("probe", ProbeQuestion("away", "fd00::1", "icmp", None, 1.0)),
    ]


class Counting(Seen):
    """A doctor that blocks until released, counting how many run at once."""

    def __init__(self) -> None:
        super().__init__()
        self.lock = threading.Lock()
        self.running = 0
        self.most = 0

    def doctor(self, container: str, timeout_s: float) -> dict[str, Any]:
        with self.lock:
            self.running += 1
            self.most = max(self.most, self.running)
        try:
            return super().doctor(container, timeout_s)
        finally:
            with self.lock:
                self.running -= 1


def test_clients_that_hang_up_do_not_free_a_slot_whose_work_still_runs() -> None:
    """The agent cancels a handler whose client hung up (handler_cancellation): the slot was
    released then while the doctor's thread went on, so a client asking and hanging up in a
    loop piled doctors up in the loop's default executor — the one the agent's engine pings
    and policy syncs run in. A slot is now freed when its work ends."""
    seen = Counting()
    seen.release.clear()

    async def main() -> None:
        live, feed = LiveCatalog(), TopologyFeed()
        app = make_app(live, feed.current, feed.wait, CollectorRegistry(), observer=seen)
        async with TestClient(TestServer(app, handler_cancellation=True)) as client:
            for i in range(12):
                ask = asyncio.ensure_future(client.get(f"/v1/dockmesh/doctor?container=c{i}"))
                await asyncio.sleep(0.05)
                ask.cancel()  # hangs up
                with contextlib.suppress(asyncio.CancelledError):
                    await ask
            await asyncio.sleep(0.2)
            assert seen.most <= OBSERVE_CONCURRENCY, f"{seen.most} doctors at once"
            seen.release.set()
            # Once the work ends, its slots are free again.
            assert (await answer(client, "/v1/dockmesh/doctor?container=after"))[0] == 200

    asyncio.run(asyncio.wait_for(main(), GUARD_S))

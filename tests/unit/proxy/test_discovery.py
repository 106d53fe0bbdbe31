"""Where members come from: the agent's health answers, and the active checks' verdicts on
static backends (the catalog's rise/fall machine)."""

from __future__ import annotations

import asyncio
import contextlib
import random
from typing import Any

from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.discovery import BackendChecks, check_health, members_from_health
from dockmesh.testing.clock import ManualClock


def test_members_from_the_agents_health_answer() -> None:
    doc = [
        {"Node": {"Address": "10.0.0.9"}, "Service": {"Address": "10.0.0.1", "Port": 80}},
        {"Node": {"Address": "10.0.0.9"}, "Service": {"Address": "", "Port": 81}},  # node's
        {"Service": {"Address": "fd00::2", "Port": 80, "Weights": {"Passing": 3}}},
        {"Service": {"Address": "10.0.0.3", "Port": 80, "Weights": {"Passing": 0}}},
        {"Service": {"Address": "10.0.0.4", "Port": 0}},  # no port: skipped
        {"Service": {"Address": "10.0.0.5", "Port": "80"}},  # not a number: skipped
        "garbage",
        {"Service": "garbage"},
    ]
    assert members_from_health(doc) == {
        "10.0.0.1:80": 1,
        "10.0.0.9:81": 1,
        "[fd00::2]:80": 3,
        "10.0.0.3:80": 1,
    }
    assert members_from_health({"not": "a list"}) == {}


def test_fall_failures_take_a_backend_out_and_rise_passes_bring_it_back() -> None:
    checks = BackendChecks("/health", rise=2, fall=3)
    a = "10.0.0.1:80"
    assert checks.observe(a, True, 0.0)  # starts passing
    assert checks.observe(a, False, 1.0) and checks.observe(a, False, 2.0)
    assert not checks.observe(a, False, 3.0)  # the third in a row
    assert not checks.observe(a, True, 4.0)  # one pass is not enough
    assert not checks.observe(a, False, 5.0)
    assert not checks.observe(a, True, 6.0)
    assert checks.observe(a, True, 7.0)  # the second in a row
    assert checks.observe(a, False, 8.0)  # a lone failure does not take it out
    assert checks.observe(a, True, 9.0)
    checks.keep_only(["10.0.0.2:80"])
    assert checks.states == {}


def test_check_health_flips_backends_in_the_cluster() -> None:
    c: Cluster[Any] = Cluster("b", "round_robin", clock=ManualClock(), rng=random.Random(0))
    c.set_members({"127.0.0.1:1": 1, "127.0.0.1:2": 1})
    down = {2}
    asked: list[tuple[str, int, str]] = []

    async def probe(host: str, port: int, path: str, timeout_s: float) -> bool:
        asked.append((host, port, path))
        return port not in down

    async def run() -> None:
        task = asyncio.create_task(check_health(c, "/hz", 0.0, 1.0, 1, 2, probe_with=probe))
        while not asked or len(asked) < 6:
            await asyncio.sleep(0)
        assert not c.upstreams["127.0.0.1:2"].healthy and c.upstreams["127.0.0.1:1"].healthy
        assert list(c.eligible()) == ["127.0.0.1:1"]
        down.clear()
        n = len(asked)
        while len(asked) < n + 2:
            await asyncio.sleep(0)
        assert c.upstreams["127.0.0.1:2"].healthy  # rise=1
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(run())
    assert all(path == "/hz" for _, _, path in asked)

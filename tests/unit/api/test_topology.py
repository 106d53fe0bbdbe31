"""TopologyFeed's three rules (dockmesh.api.topology): versions only grow, a read at version ≤ 0
returns at once, and a blocking read waits at most ten minutes. On a virtual-time loop: every
instant asserted is virtual."""

from __future__ import annotations

import asyncio
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.api.query import MAX_WAIT_S
from dockmesh.api.topology import TopologyFeed
from dockmesh.model.topology import EngineInfo, EngineState, Topology, build_topology
from dockmesh.testing import loop


def topo(version: int) -> Topology:
    return build_topology([EngineState(EngineInfo("local", "unix:///x"))], version)


versions = st.integers(1, 50)
timeouts = st.one_of(
    st.floats(0, 1e9, allow_nan=False), st.just(float("inf")), st.just(float("nan"))
)


@given(st.lists(versions, max_size=20))
def test_an_older_topology_never_replaces_a_newer_one(published: list[int]) -> None:
    feed = TopologyFeed()
    newest = 0
    for v in published:
        held = feed.publish(topo(v))
        assert held == (v > newest)
        newest = max(newest, v)
        current = feed.current()
        assert current is not None and current.version == newest


@given(st.one_of(st.none(), versions), st.integers(-5, 0), timeouts)
def test_a_read_at_version_zero_or_less_returns_at_once(
    held: int | None, version: int, timeout_s: float
) -> None:
    feed = TopologyFeed(None if held is None else topo(held))

    async def main() -> tuple[Topology | None, float]:
        got = await feed.wait(version, timeout_s)
        return got, asyncio.get_running_loop().time()

    got, at = loop.run(main)
    assert at == 0.0
    assert got is feed.current()


@given(st.one_of(st.none(), versions), timeouts)
def test_a_blocking_read_waits_at_most_ten_minutes(held: int | None, timeout_s: float) -> None:
    feed = TopologyFeed(None if held is None else topo(held))
    version = held or 1  # the held one (or one not reached yet): nothing newer comes

    async def main() -> tuple[Topology | None, float]:
        got = await feed.wait(version, timeout_s)
        return got, asyncio.get_running_loop().time()

    got, at = loop.run(main)
    expected = 0.0 if math.isnan(timeout_s) else min(timeout_s, MAX_WAIT_S)
    assert at == pytest.approx(expected, abs=1e-6)  # the loop's timers resolve to ~1 ns
    assert got is feed.current()


@given(versions, st.floats(0.001, 500), st.lists(st.integers(-3, 3), max_size=4))
def test_a_blocking_read_returns_when_a_newer_topology_comes(
    held: int, every_s: float, steps: list[int]
) -> None:
    """Publishing the same or an older version wakes nobody; the first newer one answers."""
    feed = TopologyFeed(topo(held))

    async def main() -> tuple[Topology | None, float]:
        clock = asyncio.get_running_loop().time
        waiter = asyncio.ensure_future(feed.wait(held, 600))
        answered: list[float] = []
        waiter.add_done_callback(lambda _: answered.append(clock()))
        for step in steps:
            await asyncio.sleep(every_s)
            feed.publish(topo(max(1, held + step)))
        return await waiter, answered[0]

    got, at = loop.run(main)
    first_newer = next((i for i, s in enumerate(steps) if s > 0), None)
    if first_newer is None or (first_newer + 1) * every_s > MAX_WAIT_S:
        assert got is not None and got.version == held
        assert at == pytest.approx(MAX_WAIT_S)
    else:
        assert got is not None and got.version == held + steps[first_newer]
        assert at == pytest.approx((first_newer + 1) * every_s)

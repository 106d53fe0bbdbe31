"""The health runner (dockmesh.health.runner) on a virtual-time loop with a scripted probe: when
probes go out, how the runner follows catalog changes, timeouts, rise/fall, concurrency, and
the TTL timer. No sockets; every instant asserted is virtual."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.catalog.live import LiveCatalog
from dockmesh.catalog.state import Catalog
from dockmesh.health.probe import Result
from dockmesh.health.runner import HealthRunner, first_delay
from dockmesh.model.catalog import CheckSpec, Instance, Status
from dockmesh.testing import loop as vtime
from dockmesh.testing.probe import ScriptedProbe

WEB = Instance("web-1", "web", "10.0.0.2", 80)


def http(cid: str, interval: float = 10.0, timeout: float = 5.0, **kw: object) -> CheckSpec:
    return CheckSpec(
        cid,
        cid,
        "http",
        service_id=WEB.id,
        http=f"http://10.0.0.2/{cid}",
        interval_s=interval,
        timeout_s=timeout,
        **kw,  # type: ignore[arg-type]
    )


class Delays(random.Random):
    """Hands out the given first delays in order (the runner draws them by check id)."""

    def __init__(self, delays: Iterable[float]) -> None:
        super().__init__(0)
        self._delays = list(delays)

    def uniform(self, a: float, b: float) -> float:
        return self._delays.pop(0)


def new_live() -> LiveCatalog:
    return LiveCatalog(clock=asyncio.get_running_loop().time)


def test_probes_go_out_in_time_order_each_check_at_its_interval() -> None:
    probe = ScriptedProbe()

    async def main() -> None:
        live = new_live()
        live.register(WEB, [http("a", 2), http("b", 3), http("c", 5)])
        runner = HealthRunner(live, probe, rng=Delays([0.9, 0.1, 0.5]))
        await runner.start()
        await asyncio.sleep(7)
        await runner.stop()

    vtime.run(main)
    expected = sorted(
        [(0.9 + 2 * k, "a") for k in range(4)]
        + [(0.1 + 3 * k, "b") for k in range(3)]
        + [(0.5 + 5 * k, "c") for k in range(2)]
    )
    assert [c for _, c in probe.calls] == [c for _, c in expected]
    assert [t for t, _ in probe.calls] == pytest.approx([t for t, _ in expected])


def test_the_runner_follows_added_removed_and_respecified_checks() -> None:
    probe = ScriptedProbe()

    async def main() -> dict[str, CheckSpec]:
        live = new_live()
        live.register(WEB, [http("a", 5)])
        runner = HealthRunner(live, probe, rng=Delays([0, 0, 0, 0]))
        await runner.start()
        await asyncio.sleep(7)  # a at 0, 5
        live.register(WEB, [http("a", 1), http("b", 2)])  # a respecified, b added
        await asyncio.sleep(3.5)  # new a at 7, 8, 9, 10; b at 7, 9
        other = Instance("web-2", "web", "10.0.0.3", 80)
        live.register(other, [CheckSpec("z", "z", "tcp", service_id="web-2", tcp="x:1")])
        live.register(WEB, [http("b", 2)])  # a removed
        await asyncio.sleep(3)  # b at 11, 13; z at 10.5, 11.5, 12.5 (interval 10: once)
        scheduled = runner.scheduled()
        await runner.stop()
        return scheduled

    scheduled = vtime.run(main)
    assert probe.times("a") == pytest.approx([0, 5, 7, 8, 9, 10])
    assert probe.times("b") == pytest.approx([7, 9, 11, 13])
    assert probe.times("z") == pytest.approx([10.5])
    assert sorted(scheduled) == ["b", "z"]


def test_a_probe_that_hangs_is_cut_at_its_timeout_and_the_next_one_still_runs() -> None:
    probe = ScriptedProbe(hang=["a"])

    async def main() -> list[tuple[float, Status, str]]:
        live = new_live()
        live.register(WEB, [http("a", interval=10, timeout=3)])
        seen: list[tuple[float, Status, str]] = []
        runner = HealthRunner(
            live,
            probe,
            rng=Delays([1.0]),
            on_result=lambda spec, r, took: seen.append((took, r.status, r.output)),
        )
        await runner.start()
        await asyncio.sleep(12)
        state = live.catalog.check("a")
        assert state is not None
        assert (state.status, state.output) == (
            "critical",
            "HTTP GET http://10.0.0.2/a: timed out after 3s",
        )
        await runner.stop()
        return seen

    seen = vtime.run(main)
    assert probe.times("a") == pytest.approx([1, 11])
    # Cut at 1 + 3; the second probe is cut by stop() at 12.
    assert [t for t, _ in probe.cancelled] == pytest.approx([4.0, 12.0])
    assert seen[0][0] == pytest.approx(3.0)
    assert seen[0][1] == "critical"


def test_a_slow_probe_delays_the_next_instead_of_overlapping_it() -> None:
    probe = ScriptedProbe(takes=3)

    async def main() -> None:
        live = new_live()
        live.register(WEB, [http("a", interval=2, timeout=10)])
        runner = HealthRunner(live, probe, rng=Delays([0]))
        await runner.start()
        await asyncio.sleep(10)
        await runner.stop()

    vtime.run(main)
    assert probe.times("a") == pytest.approx([0, 3, 6, 9])
    assert probe.most_in_flight == 1


def test_rise_and_fall_apply_to_the_results_the_runner_observes() -> None:
    results: list[Status] = ["passing", "passing", "critical", "critical", "passing", "passing"]
    probe = ScriptedProbe({"a": results})

    async def main() -> list[Status]:
        live = new_live()
        live.register(WEB, [http("a", interval=1, rise=2, fall=2)])
        statuses: list[Status] = []

        def hear(spec: CheckSpec, r: Result, took: float) -> None:
            state = live.catalog.check(spec.id)
            assert state is not None
            statuses.append(state.status)

        runner = HealthRunner(live, probe, rng=Delays([0]), on_result=hear)
        await runner.start()
        await asyncio.sleep(5.5)
        await runner.stop()
        return statuses

    # critical at first; passing after 2 passes; critical after 2 failures; passing again.
    assert vtime.run(main) == ["critical", "passing", "passing", "critical", "critical", "passing"]


def test_no_more_probes_than_the_concurrency_limit_run_at_once() -> None:
    probe = ScriptedProbe(takes=1)

    async def main() -> None:
        live = new_live()
        live.register(WEB, [http(f"c{i:02}", interval=10) for i in range(20)])
        runner = HealthRunner(live, probe, concurrency=4, rng=Delays([0] * 20))
        await runner.start()
        await asyncio.sleep(9)
        await runner.stop()

    vtime.run(main)
    assert probe.most_in_flight == 4
    assert len(probe.calls) == 20  # all ran, four per second
    assert sorted({t for t, _ in probe.calls}) == pytest.approx([0, 1, 2, 3, 4])


def test_a_probe_that_raises_makes_its_check_critical() -> None:
    async def broken(spec: CheckSpec) -> Result:
        raise RuntimeError("bug")

    async def main() -> tuple[Status, str]:
        live = new_live()
        live.register(WEB, [http("a", interval=5)])
        runner = HealthRunner(live, broken, rng=Delays([0]))
        await runner.start()
        await asyncio.sleep(1)
        await runner.stop()
        state = live.catalog.check("a")
        assert state is not None
        return state.status, state.output

    assert vtime.run(main) == ("critical", "HTTP GET http://10.0.0.2/a: probe failed: bug")


def test_ttl_and_docker_checks_are_not_probed_and_ttls_expire_on_time() -> None:
    probe = ScriptedProbe()

    async def main() -> tuple[list[tuple[float, Status, str]], int]:
        live = new_live()
        ttl = CheckSpec("t", "t", "ttl", service_id=WEB.id, ttl_s=5)
        never = CheckSpec("u", "u", "ttl", service_id=WEB.id, ttl_s=3)  # never updated
        docker = CheckSpec("d", "d", "docker", service_id=WEB.id, initial_status="passing")
        live.register(WEB, [ttl, never, docker])
        ticks = 0
        tick = live.tick

        def counted() -> list[str]:
            nonlocal ticks
            ticks += 1
            return tick()

        live.tick = counted  # type: ignore[method-assign]
        runner = HealthRunner(live, probe)
        await runner.start()
        seen: list[tuple[float, Status, str]] = []

        def look() -> None:
            s = live.catalog.check("t")
            assert s is not None
            seen.append((asyncio.get_running_loop().time(), s.status, s.output))

        await asyncio.sleep(1)
        live.update_check("t", "passing", "alive")  # TTL until 6
        await asyncio.sleep(4.9)
        look()
        await asyncio.sleep(0.2)
        look()
        live.update_check("t", "passing", "again")  # until 11.1
        await asyncio.sleep(4.9)
        look()
        await asyncio.sleep(100)  # nothing due: the timer must rest, not spin
        look()
        assert runner.scheduled() == {}
        await runner.stop()
        return seen, ticks

    seen, ticks = vtime.run(main)
    assert probe.calls == []
    assert [(s, o) for _, s, o in seen] == [
        ("passing", "alive"),
        ("critical", "TTL expired"),
        ("passing", "again"),
        ("critical", "TTL expired"),
    ]
    # u's TTL at 3 (spent, though already critical: no visible change), t's at 6 and 11.1.
    assert ticks == 3


def test_critical_instances_are_deregistered_after_their_time() -> None:
    probe = ScriptedProbe(default="critical")

    async def main() -> list[float]:
        live = new_live()
        live.register(WEB, [http("a", interval=7, deregister_critical_after_s=30)])
        runner = HealthRunner(live, probe, rng=Delays([0]))
        await runner.start()
        gone_at: list[float] = []

        def hear(catalog: Catalog) -> None:
            if catalog.instance(WEB.id) is None and not gone_at:
                gone_at.append(asyncio.get_running_loop().time())

        live.subscribe(hear)
        await asyncio.sleep(60)
        scheduled = runner.scheduled()
        await runner.stop()
        assert scheduled == {}
        return gone_at

    # Critical since registration at 0 (a new check starts critical): gone at 30.
    assert vtime.run(main) == pytest.approx([30.0])
    assert probe.times("a") == pytest.approx([0, 7, 14, 21, 28])


def test_after_stop_nothing_runs_and_catalog_changes_start_nothing() -> None:
    probe = ScriptedProbe(hang=["a"])

    async def main() -> None:
        live = new_live()
        live.register(WEB, [http("a", interval=1)])
        runner = HealthRunner(live, probe, rng=Delays([0]))
        await runner.start()
        await asyncio.sleep(0.5)
        await runner.stop()
        live.register(WEB, [http("a", interval=1), http("b", interval=1)])
        await asyncio.sleep(5)
        assert runner.scheduled() == {}
        current = asyncio.current_task()
        assert [t for t in asyncio.all_tasks() if t is not current] == []

    vtime.run(main)
    assert probe.calls == [(0.0, "a")]
    assert probe.cancelled == [(0.5, "a")]


def test_a_result_of_an_old_spec_never_lands_on_the_new_one() -> None:
    probe = ScriptedProbe({"a": ["passing"]}, takes=2)

    async def main() -> tuple[Status, str]:
        live = new_live()
        live.register(WEB, [http("a", interval=10)])
        runner = HealthRunner(live, probe, rng=Delays([0, 5]))
        await runner.start()
        await asyncio.sleep(1)  # the probe of the old spec is under way
        live.register(WEB, [http("a", interval=20)])
        await asyncio.sleep(2)  # it would have answered at 2
        state = live.catalog.check("a")
        assert state is not None
        await runner.stop()
        return state.status, state.output

    assert vtime.run(main) == ("critical", "")


def test_two_hundred_new_checks_spread_their_first_probes() -> None:
    probe = ScriptedProbe()

    async def main() -> None:
        live = new_live()
        for i in range(200):
            inst = Instance(f"i{i}", "web", f"10.0.{i // 250}.{i % 250}", 80)
            live.register(inst, [CheckSpec(f"c{i:03}", "c", "tcp", service_id=inst.id, tcp="x:1")])
        runner = HealthRunner(live, probe, first_run_spread_s=2.0, rng=random.Random(1))
        await runner.start()
        await asyncio.sleep(2)
        await runner.stop()

    vtime.run(main)
    firsts = [t for t, _ in probe.calls]
    assert len(firsts) == 200
    assert max(firsts) < 2.0
    # No burst: at most a tenth of them in any tenth of the spread.
    assert max(sum(1 for t in firsts if k / 10 <= t < (k + 2) / 10) for k in range(20)) <= 40


@given(
    st.floats(0.001, 3600),
    st.floats(0, 60),
    st.floats(0, 10),
    st.integers(0, 2**32),
)
def test_the_first_delay_is_within_half_an_interval_and_the_spread(
    interval: float, spread: float, min_interval: float, seed: int
) -> None:
    spec = CheckSpec("c", "c", "http", interval_s=interval)
    d = first_delay(spec, spread, random.Random(seed), min_interval)
    assert 0 <= d <= min(max(interval, min_interval) / 2, spread)

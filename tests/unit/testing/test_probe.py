"""The scripted health probe (dockmesh.testing.probe): answers from its script per check, then
its default (which a test may change), at the loop's instants, after `takes`, never for a
check in `hang`; records calls, cancellations and how many ran at once."""

from __future__ import annotations

import asyncio

from dockmesh.health.probe import Result
from dockmesh.model.catalog import CheckSpec
from dockmesh.testing import loop as vtime
from dockmesh.testing.probe import ScriptedProbe


def spec(cid: str) -> CheckSpec:
    return CheckSpec(cid, cid, "tcp", tcp="10.0.0.2:80")


def test_the_script_then_the_default_at_the_loop_s_instants() -> None:
    probe = ScriptedProbe({"a": ["critical", "warning"]}, takes=2)

    async def main() -> list[Result]:
        out = [await probe(spec("a")) for _ in range(3)]
        probe.default = "critical"
        out.append(await probe(spec("b")))
        return out

    got = vtime.run(main)
    assert [r.status for r in got] == ["critical", "warning", "passing", "critical"]
    assert got[0].output == "a: critical"
    assert probe.calls == [(0.0, "a"), (2.0, "a"), (4.0, "a"), (6.0, "b")]
    assert probe.times("a") == [0.0, 2.0, 4.0] and probe.most_in_flight == 1


def test_a_hanging_check_is_cancelled_and_concurrent_calls_are_counted() -> None:
    probe = ScriptedProbe(hang=["stuck"], takes=1)

    async def main() -> None:
        stuck = asyncio.create_task(probe(spec("stuck")))
        await asyncio.gather(*(probe(spec(f"c{i}")) for i in range(3)))
        assert not stuck.done()
        stuck.cancel()
        await asyncio.gather(stuck, return_exceptions=True)

    vtime.run(main)
    assert probe.cancelled == [(1.0, "stuck")]
    assert probe.most_in_flight == 4 and probe.in_flight == 0

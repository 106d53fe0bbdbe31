"""Many containers' processes ending together while the engine is lost (a host's containers
killed at once, an OOM sweep): the agent takes them all out in one loop step, without
re-deriving the whole catalog once per death (that held the loop — DNS included — for
deaths times containers: 150 of 350 took 1.8 s)."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from pathlib import Path

from dockmesh.model.topology import Topology
from dockmesh.testing import loop as vtime
from dockmesh.testing.engine import FlakyEngine
from tests.unit.test_agent import ENGINE, FakeProcesses, follow, instance_ids, labelled, running


class CountingProcesses(FakeProcesses):
    """Counts the agent's catalog syncs: each ends by saying which processes to follow."""

    def __init__(self) -> None:
        super().__init__()
        self.follows = 0

    def follow(self, wanted: Mapping[str, int]) -> None:
        self.follows += 1
        super().follow(wanted)


def test_a_burst_of_deaths_in_one_loop_step_is_synced_at_most_twice(tmp_path: Path) -> None:
    async def main() -> None:
        cable = FlakyEngine(ENGINE, clock=asyncio.get_running_loop().time)
        procs = CountingProcesses()
        async with running(tmp_path, engine=cable, processes=procs) as env:
            ids = []
            for n in range(40):
                cid = cable.create_container(labelled(f"web-{n}", "web"))
                cable.start(cid)
                ids.append(cid)
            await follow(env, lambda: set(procs.followed) == set(ids))
            cable.unplug()
            cable.drop_streams()
            await vtime.until(lambda: not env.agent.links()[0].connected)

            before, t0 = procs.follows, env.now()
            procs.end(ids[0])
            # The first death of a step still leaves at once, as a lone death does.
            assert "web-0" not in instance_ids(env)
            for cid in ids[1:30]:
                procs.end(cid)
            await asyncio.sleep(0)  # the step's end: the others' one sync
            assert instance_ids(env) == {f"web-{n}" for n in range(30, 40)}
            assert env.now() == t0
            assert procs.follows - before <= 2, f"{procs.follows - before} syncs for 30 deaths"
            assert set(procs.followed) == set(ids[30:])

            procs.end(ids[30])  # a later step: at once again
            assert "web-30" not in instance_ids(env)

    vtime.run(main)


def test_a_death_while_the_policy_follows_a_newer_topology_does_not_announce_it_first(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        cable = FlakyEngine(ENGINE, clock=asyncio.get_running_loop().time)
        procs = CountingProcesses()
        async with running(tmp_path, engine=cable, processes=procs) as env:
            first = cable.create_container(labelled("web-1", "web"))
            cable.start(first)
            await follow(env, lambda: set(procs.followed) == {first})
            agent = env.agent
            held = asyncio.Event()
            entered = asyncio.Event()
            sync_policy = agent._sync_policy

            async def slow_policy(topo: Topology) -> None:
                c = topo.container("web-2")
                if c is not None and c.running:
                    entered.set()
                    await held.wait()  # the kernel's sets not yet holding web-2
                await sync_policy(topo)

            agent._sync_policy = slow_policy  # type: ignore[method-assign]
            second = cable.create_container(labelled("web-2", "web"))
            cable.start(second)
            await vtime.until(entered.is_set)
            current = agent.topology.current()
            assert current is not None and current.container("web-2") is not None
            procs.end(first)  # a death while the policy is synced for web-2's topology
            assert instance_ids(env) == set()  # web-2 not announced before the kernel has it
            held.set()
            await follow(env, lambda: instance_ids(env) == {"web-2"})

    vtime.run(main)

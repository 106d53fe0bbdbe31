"""Randomized churn on the real engine, seen through a relay the test cuts and restores now
and then (the engine "goes away" for the watcher; dockerd runs on): containers created,
started, killed, restarted, paused, renamed, removed, connected and disconnected, a network
removed and made again under its name — from several threads at once. Once it is quiet the
watcher's topology must be what a fresh snapshot reads: no ghost, none missing, no stale
state (a container listed exited and started before its inspect was kept running by every
later resync)."""

from __future__ import annotations

import contextlib
import random
import threading
import time
from typing import Any

import docker.errors
import pytest

from dockmesh.engine.backend import EngineRef
from dockmesh.engine.docker import DockerBackend
from dockmesh.engine.watch import TopologyWatcher
from dockmesh.model.topology import Topology, build_topology
from dockmesh.testing.relay import CuttableRelay
from tests.integration.conftest import free_subnets

pytestmark = pytest.mark.integration

OPS = 160


def ours(topo: Topology, prefix: str) -> tuple[set[tuple[Any, ...]], set[tuple[str, str]]]:
    """What the test made, as the watcher must know it. A container that is not running is
    compared without its networks: the engine sends no event when one is connected (only a
    running container's connect is an event), so only a resync would say."""
    containers = {
        (
            c.id,
            c.name,
            c.state,
            c.pid,
            tuple(sorted((a.network, a.ipv4 or "") for a in c.attachments)) if c.running else (),
        )
        for c in topo.containers
        if c.name.startswith(prefix)
    }
    networks = {(n.id, n.name) for n in topo.networks if n.name.startswith(prefix)}
    return containers, networks


@pytest.mark.parametrize("seed", [4, 14])
def test_after_churn_and_outages_the_watched_topology_is_a_fresh_snapshots(
    api: Any, prefix: str, toolbox: str, relay: CuttableRelay, seed: int
) -> None:
    rng = random.Random(seed)
    subnets = free_subnets(api, 2)
    nets = [f"{prefix}_n0", f"{prefix}_n1"]

    def make_network(i: int) -> None:
        with contextlib.suppress(docker.errors.APIError):
            api.create_network(nets[i], ipam={"Config": [{"Subnet": subnets[i]}]})

    for i in range(2):
        make_network(i)
    names = [f"{prefix}-c{i}" for i in range(5)]

    def op(k: int, name: str, other: str, i: int, start: bool) -> None:
        with contextlib.suppress(docker.errors.APIError):
            if k == 0:
                cid = api.create_container(
                    toolbox,
                    name=name,
                    command=["sleep", "600"],
                    host_config=api.create_host_config(network_mode=nets[i]),
                )["Id"]
                if start:
                    api.start(cid)
            elif k == 1:
                api.start(name)
            elif k == 2:
                api.kill(name)
            elif k == 3:
                api.remove_container(name, force=True)
            elif k == 4:
                api.restart(name, timeout=0)
            elif k == 5:
                api.rename(name, other)
            elif k == 6:
                api.connect_container_to_network(name, nets[i])
            elif k == 7:
                api.disconnect_container_from_network(name, nets[i], force=True)
            elif k == 8:  # the network removed and made again under its name
                for c in api.containers(all=True, filters={"network": nets[i]}):
                    with contextlib.suppress(docker.errors.APIError):
                        api.disconnect_container_from_network(c["Id"], nets[i], force=True)
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_network(nets[i])
                make_network(i)
            elif start:
                api.pause(name)
            else:
                api.unpause(name)

    watcher = TopologyWatcher([DockerBackend(EngineRef("local", f"unix://{relay.path}"))])
    watcher.start()
    try:
        threads = []
        for n in range(OPS):
            if n % 40 == 20:
                relay.cut()
            if n % 40 == 30:
                relay.restore()
            args = (rng.randrange(10), rng.choice(names), rng.choice(names), rng.randrange(2))
            call = (*args, rng.random() < 0.8)
            if rng.random() < 0.5:
                t = threading.Thread(target=op, args=call)
                t.start()
                threads.append(t)
            else:
                op(*call)
        for t in threads:
            t.join(60)
        relay.restore()
        time.sleep(2.0)  # quiet: the last events and a resync land
        fresh = DockerBackend(EngineRef("local", f"unix://{relay.engine_socket}"))
        want = ours(build_topology([fresh.snapshot()], 1), prefix)
        fresh.close()
        got = watcher.wait_for(lambda t: ours(t, prefix) == want, 20)
        if got is None:
            have = ours(watcher.topology, prefix)
            raise AssertionError(
                f"seed {seed}: the watcher's topology is not the engine's after churn: "
                f"only the watcher's {sorted(have[0] - want[0])} {sorted(have[1] - want[1])}, "
                f"only the engine's {sorted(want[0] - have[0])} {sorted(want[1] - have[1])}"
            )
    finally:
        watcher.stop()
        for name in names:  # a paused container is removed too (force)
            with contextlib.suppress(docker.errors.APIError):
                api.remove_container(name, force=True, v=True)
        for net in nets:
            with contextlib.suppress(docker.errors.APIError):
                api.remove_network(net)

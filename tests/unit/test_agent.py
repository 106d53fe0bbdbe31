"""The agent's whole loop, wired with test parts: a `MemoryEngine` behind the real
`TopologyWatcher`, an in-memory nft under the real `Enforcer`, scripted probes under the real
health runner (the doubles of `dockmesh.testing`), and the real DNS server and HTTP API on loopback ports; all on a virtual-time
loop (no wall-clock sleep for health or TTL timings: every instant asserted is virtual).

A labelled container appears → a catalog instance → DNS answers (once its check passes) → the
applied policy's set holds its address; and the reverse when it stops. Also: the engine absent
at start and coming later, manual TTL registrations expiring, and a clean stop on SIGTERM,
SIGINT or `stop()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.message
import dns.query
import dns.rdatatype
import pytest

from dockmesh.agent import (
    CATALOG_WARNINGS,
    Agent,
    AgentConfig,
    AgentDeps,
    bridge_gateways,
    build_deps,
)
from dockmesh.catalog.store import MemoryStore, SqliteStore
from dockmesh.dns.limits import DnsLimits
from dockmesh.dns.server import REASONS
from dockmesh.engine.backend import EngineRef
from dockmesh.engine.memory import MemoryEngine
from dockmesh.engine.watch import TopologyWatcher
from dockmesh.errors import EngineError
from dockmesh.model.config import ContainerConfig, EndpointConfig
from dockmesh.model.labels import LABEL_PROJECT, Discovery, DiscoveryCheck, encode_discovery
from dockmesh.model.policy import Policy, Rule, Selector
from dockmesh.model.topology import EngineInfo, IpamPool, Network, Topology
from dockmesh.policy.enforce import Enforcer
from dockmesh.policy.store import Applied, PolicyStore
from dockmesh.testing import loop as vtime
from dockmesh.testing.engine import FlakyEngine
from dockmesh.testing.nft import MemoryNft
from dockmesh.testing.probe import ScriptedProbe

ENGINE = "agent-test"  # the watcher's threads are named after it
TABLE = "dmtest"
GATEWAY = "127.77.0.1"  # the bridge network's gateway: a loopback address the test can bind
WEB_IP = "127.77.0.2"
# every container → web: a rule over a broad side keeps a set per side, and the web
# containers' addresses are its destination set, r0_dc_4.
POLICY = Policy(rules=(Rule((Selector(),), (Selector(service="web"),)),))
WEB_SET = "r0_dc_4"


def labelled(name: str, service: str) -> ContainerConfig:
    check = DiscoveryCheck(tcp=True, interval="5s", timeout="1s")
    return ContainerConfig(
        name,
        "dockmesh/toolbox",
        networks=(EndpointConfig("mesh"),),
        labels=encode_discovery(Discovery(service, 8080, check=check)),
    )


class ClosingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class FakeProcesses:
    """Stands in for `PidWatch`: records what the agent asks it to follow; `end(cid)` is
    the kernel reporting that process's end."""

    def __init__(self) -> None:
        self.followed: dict[str, int] = {}
        self.on_exit: Callable[[str, int], None] | None = None

    def start(self, on_exit: Callable[[str, int], None]) -> None:
        self.on_exit = on_exit

    def follow(self, wanted: Mapping[str, int]) -> None:
        self.followed = dict(wanted)

    def close(self) -> None:
        self.followed = {}

    @property
    def count(self) -> int:
        return len(self.followed)

    def end(self, cid: str) -> None:
        assert self.on_exit is not None
        self.on_exit(cid, self.followed.pop(cid))


@dataclass
class Env:
    engine: MemoryEngine
    agent: Agent
    nft: MemoryNft
    probes: ScriptedProbe
    store: ClosingStore
    gateway_port: int
    task: asyncio.Task[None]
    unplugged: FlakyEngine | None = None
    log: list[str] = field(default_factory=list)

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    def deps_links_connected(self) -> bool:
        """Whether the watcher itself still follows the engine's stream."""
        return all(k.connected for k in self.agent.deps.topology.links())

    async def http(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """The agent's API over loopback, from a thread (the virtual clock waits for it)."""
        assert self.agent.api_address is not None
        host, port = self.agent.api_address
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(f"http://{host}:{port}{path}", data=data, method=method)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

        def call() -> tuple[int, Any]:
            try:
                with opener.open(req, timeout=10) as r:
                    return r.status, json.loads(r.read() or b"null")
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()

        return await asyncio.to_thread(call)

    async def headers(self, path: str) -> tuple[Any, str]:
        """The headers and body of `GET path`, from a thread."""
        assert self.agent.api_address is not None
        host, port = self.agent.api_address

        def call() -> tuple[Any, str]:
            with urllib.request.urlopen(f"http://{host}:{port}{path}", timeout=10) as r:
                return r.headers, r.read().decode()

        return await asyncio.to_thread(call)

    async def ask(self, name: str, at: tuple[str, int] | None = None) -> list[str]:
        """A records for `name` from the agent's DNS server (UDP, from a thread)."""
        host, port = at or self.agent.dns_address or ("", 0)

        def query() -> list[str]:
            reply = dns.query.udp(dns.message.make_query(name, "A"), host, port=port, timeout=5)
            return sorted(
                str(rr) for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset
            )

        return await asyncio.to_thread(query)


@contextlib.asynccontextmanager
async def running(
    tmp_path: Path,
    *,
    unplugged: bool = False,
    processes: FakeProcesses | None = None,
    ping: Callable[[str], None] | None = None,
    engine: MemoryEngine | None = None,
    datacenter: str = "dc1",
    overlays: Any = None,
) -> AsyncIterator[Env]:
    """An agent on loopback ports over a MemoryEngine with network `mesh` (127.77.0.0/24),
    the policy client → web applied, probes that pass."""
    cable = FlakyEngine(ENGINE, clock=asyncio.get_running_loop().time) if unplugged else None
    if cable is not None:
        cable.unplug()
    engine = engine or cable or MemoryEngine(ENGINE)
    engine.create_network("mesh", "127.77.0.0/24")
    policies = PolicyStore(TABLE, tmp_path / "policy")
    policies.save(Applied(TABLE, "enforce", POLICY))
    nft, probes, store = MemoryNft(), ScriptedProbe(), ClosingStore()
    gateway_port = free_port(GATEWAY)
    config = AgentConfig(
        engines=[engine.ref],
        api=("127.0.0.1", 0),
        dns=("127.0.0.1", 0),
        state=None,
        gateway_dns_port=gateway_port,
        policy_dir=tmp_path / "policy",
        policy_table=TABLE,
        datacenter=datacenter,
    )
    deps = AgentDeps(
        store=store,
        topology=TopologyWatcher([engine]),
        enforcer=Enforcer(policies, nft),
        clock=asyncio.get_running_loop().time,
        probe=probes,
        processes=processes,
        ping=ping,
        overlays=overlays,
    )
    agent = Agent(config, deps)
    task = asyncio.create_task(agent.run())
    ready = asyncio.ensure_future(agent.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        ready.cancel()
        task.result()  # raises what stopped it
    env = Env(engine, agent, nft, probes, store, gateway_port, task, cable)
    try:
        yield env
    finally:
        agent.stop()
        await task


async def follow(env: Env, predicate: Callable[[], bool]) -> float:
    """Waits (the virtual clock standing still) until the agent shows what the engine did."""
    await vtime.until(predicate)
    return env.now()


def instance_ids(env: Env) -> set[str]:
    return {i.id for i in env.agent.live.catalog.instances()}


# --- the loop, end to end ---------------------------------------------------------------------


def test_a_labelled_container_reaches_catalog_dns_and_policy_and_leaves_them(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with running(tmp_path) as env:
            # The first topology: the policy's table made, DNS on the network's gateway.
            at = (GATEWAY, env.gateway_port)
            await follow(env, lambda: at in env.agent.dns.listeners)  # type: ignore[union-attr]
            assert env.nft.elements(TABLE, WEB_SET) == set()

            # It appears: the catalog and the policy hold it at once, DNS once it passes.
            t0 = env.now()
            cid = env.engine.create_container(labelled("web-1", "web"))
            env.engine.start(cid)
            assert await follow(env, lambda: "web-1" in instance_ids(env)) == t0
            inst = env.agent.live.catalog.instance("web-1")
            assert inst is not None and (inst.service, inst.address) == ("web", WEB_IP)
            assert env.nft.elements(TABLE, WEB_SET) == {WEB_IP}
            assert await env.ask("web.service.dockmesh") == []  # critical until probed
            await asyncio.sleep(2.0)  # the first probe: at most min(interval / 2, 2 s) in
            ((first, check),) = env.probes.calls
            assert check == "service:web-1" and t0 <= first <= t0 + 2.0
            assert await env.ask("web.service.dockmesh") == [WEB_IP]
            # …on a bridge gateway too, where containers' own DNS forwards to.
            assert await env.ask("web.service.consul", at) == [WEB_IP]
            status, entries = await env.http("GET", "/v1/health/service/web?passing")
            assert status == 200 and [e["Service"]["Address"] for e in entries] == [WEB_IP]
            await asyncio.sleep(10.0)
            assert [t for t, _ in env.probes.calls] == pytest.approx([first, first + 5, first + 10])

            # It fails its check: out of DNS at the next probe; the policy still covers it.
            env.probes.default = "critical"
            await asyncio.sleep(5.0)
            assert await env.ask("web.service.dockmesh") == []
            assert env.nft.elements(TABLE, WEB_SET) == {WEB_IP}
            env.probes.default = "passing"
            await asyncio.sleep(5.0)
            assert await env.ask("web.service.dockmesh") == [WEB_IP]

            # It stops: out of the catalog, DNS and the policy's set at once.
            t1 = env.now()
            env.engine.stop(cid)
            assert await follow(env, lambda: "web-1" not in instance_ids(env)) == t1
            assert await env.ask("web.service.dockmesh") == []
            assert env.nft.elements(TABLE, WEB_SET) == set()
            env.engine.remove_container(cid)

            # The network goes: so does the DNS listener on its gateway.
            env.engine.remove_network("mesh")
            await follow(env, lambda: at not in env.agent.dns.listeners)  # type: ignore[union-attr]

    vtime.run(main)


def test_projects_sharing_a_name_are_said_once_and_answered_apart(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def of(project: str, name: str) -> ContainerConfig:
        c = labelled(name, "api")
        return dataclasses.replace(c, labels={**c.labels, LABEL_PROJECT: project})

    async def main() -> None:
        async with running(tmp_path) as env:
            for project, name in (("a", "a-api-1"), ("b", "b-api-1")):
                env.engine.start(env.engine.create_container(of(project, name)))
            await follow(env, lambda: {"a-api-1", "b-api-1"} <= instance_ids(env))
            [warning] = env.agent.warnings[CATALOG_WARNINGS]
            assert warning.startswith("service name 'api' is used by projects a, b")
            await asyncio.sleep(2.0)  # the first probes pass
            status, rows = await env.http("GET", "/v1/health/service/api.b?passing")
            assert status == 200 and [r["Service"]["ID"] for r in rows] == ["b-api-1"]
            assert (await env.http("GET", "/v1/health/service/api"))[1] == []
            assert await env.ask("api.service.dockmesh") == []
            assert len(await env.ask("api.a.service.dockmesh")) == 1
            # A registration first, then a container with its ID: the container waits, said.
            body = {"Name": "manual", "ID": "c-1", "Address": "10.0.0.1", "Port": 1}
            assert (await env.http("PUT", "/v1/agent/service/register", body))[0] == 200
            env.engine.start(env.engine.create_container(labelled("c-1", "web")))
            await follow(env, lambda: len(env.agent.warnings[CATALOG_WARNINGS]) == 2)
            assert "c-1: not registered" in env.agent.warnings[CATALOG_WARNINGS][1]
            assert (await env.http("PUT", "/v1/agent/service/deregister/c-1"))[0] == 200
            inst = env.agent.live.catalog.instance("c-1")
            assert inst is not None and inst.source == "container"
            assert len(env.agent.warnings[CATALOG_WARNINGS]) == 1
        said = [r.getMessage() for r in caplog.records if "is used by projects" in r.getMessage()]
        assert len(said) == 1  # once, however often the catalog changed

    vtime.run(main)


def test_a_manual_registration_with_a_ttl_leaves_dns_when_its_ttl_runs_out(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with running(tmp_path) as env:
            svc = {"Name": "batch", "ID": "b1", "Address": "127.0.0.9", "Port": 1}
            status, _ = await env.http(
                "PUT", "/v1/agent/service/register", {**svc, "Check": {"TTL": "30s"}}
            )
            assert status == 200
            assert await env.ask("batch.service.dockmesh") == []  # critical until a pass
            t0 = env.now()
            assert (await env.http("PUT", "/v1/agent/check/pass/service:b1"))[0] == 200
            assert await env.ask("batch.service.dockmesh") == ["127.0.0.9"]
            await asyncio.sleep(29.9)
            assert await env.ask("batch.service.dockmesh") == ["127.0.0.9"]
            await asyncio.sleep(0.2)
            assert await env.ask("batch.service.dockmesh") == []
            check = env.agent.live.catalog.check("service:b1")
            assert check is not None and check.status == "critical"
            assert env.now() == pytest.approx(t0 + 30.1)

    vtime.run(main)


# --- the engine absent at start ------------------------------------------------------------


def test_the_agent_serves_while_the_engine_is_absent_and_follows_it_once_it_answers(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with running(tmp_path, unplugged=True) as env:
            cable = env.unplugged
            assert cable is not None
            assert (await env.http("GET", "/v1/dockmesh/topology"))[0] == 503
            assert await env.http("GET", "/v1/catalog/services") == (200, {})
            await asyncio.sleep(10.0)
            first = cable.opened_at[0]
            # Back-off from 0.2 s, doubling: 0.2, 0.4, 0.8, 1.6, 3.2, then 5 s at most.
            assert [t - first for t in cable.opened_at] == pytest.approx(
                [0, 0.2, 0.6, 1.4, 3.0, 6.2]
            )
            cid = env.engine.create_container(labelled("web-1", "web"))
            env.engine.start(cid)
            cable.plug()
            await asyncio.sleep(1.2)  # the next attempt, 5 s after the last
            await follow(env, lambda: "web-1" in instance_ids(env))
            assert cable.opened_at[-1] - first == pytest.approx(11.2)
            assert (await env.http("GET", "/v1/dockmesh/topology"))[0] == 200
            assert env.nft.elements(TABLE, WEB_SET) == {WEB_IP}
            # Followed from then on.
            env.engine.stop(cid)
            await follow(env, lambda: "web-1" not in instance_ids(env))

    vtime.run(main)


# --- the engine lost ------------------------------------------------------------------------


def test_while_the_engine_is_lost_a_dead_process_leaves_the_catalog_and_dns_at_once(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        cable = FlakyEngine(ENGINE, clock=asyncio.get_running_loop().time)
        procs = FakeProcesses()
        async with running(tmp_path, engine=cable, processes=procs) as env:
            ids = {}
            for name in ("web-1", "web-2"):
                ids[name] = cable.create_container(labelled(name, "web"))
                cable.start(ids[name])
            await follow(env, lambda: set(procs.followed) == set(ids.values()))
            await asyncio.sleep(2.0)  # the first probes pass
            assert len(await env.ask("web.service.dockmesh")) == 2
            assert await env.ask("web-1.container.dockmesh") == [WEB_IP]
            headers, leader = await env.headers("/v1/status/leader")
            assert headers["X-Consul-KnownLeader"] == "true" and json.loads(leader) != ""

            cable.unplug()
            cable.drop_streams()  # dockerd gone: the stream ends, every retry fails
            links = env.agent.deps.topology.links
            await vtime.until(lambda: not links()[0].connected)
            headers, leader = await env.headers("/v1/status/leader")
            assert headers["X-Consul-KnownLeader"] == "false" and json.loads(leader) == ""
            headers, _ = await env.headers("/v1/health/service/web")
            assert headers["X-Consul-KnownLeader"] == "false"
            _, metrics = await env.headers("/metrics")
            assert f'dockmesh_engine_connected{{engine="{ENGINE}"}} 0.0' in metrics
            assert "dockmesh_followed_processes 2.0" in metrics
            assert (await env.http("GET", "/v1/dockmesh/engines"))[1][0]["connected"] is False

            # web-1's process ends (the engine cannot say so): out of the catalog and DNS at
            # once, the other kept.
            t0 = env.now()
            procs.end(ids["web-1"])
            assert "web-1" not in instance_ids(env) and env.now() == t0
            assert await env.ask("web.service.dockmesh") == ["127.77.0.3"]
            assert await env.ask("web-1.container.dockmesh") == []  # its name leaves too
            status, entries = await env.http("GET", "/v1/health/service/web?passing")
            assert status == 200 and [e["Service"]["ID"] for e in entries] == ["web-2"]
            assert set(procs.followed) == {ids["web-2"]}

            # The engine back: its resync is the truth (here it had not noticed yet: the
            # container stays out while the engine still shows that very process).
            cable.plug()
            await vtime.until(lambda: links()[0].connected)
            headers, leader = await env.headers("/v1/status/leader")
            assert headers["X-Consul-KnownLeader"] == "true" and json.loads(leader) != ""
            assert "web-1" not in instance_ids(env)
            cable.stop(ids["web-1"])  # the engine says so: the record is no longer needed
            await vtime.until(lambda: env.agent.dead == {})
            assert "web-1" not in instance_ids(env)

    vtime.run(main)


def test_an_engine_whose_stream_stays_open_but_that_does_not_answer_is_lost_too(
    tmp_path: Path,
) -> None:
    silent = threading.Event()
    pinged: list[str] = []

    def ping(name: str) -> None:
        pinged.append(name)
        if silent.is_set():
            raise EngineError(f"engine {name} does not answer: timed out")

    async def main() -> None:
        async with running(tmp_path, ping=ping) as env:
            await vtime.until(lambda: env.agent.links()[0].connected and bool(pinged))
            assert (await env.headers("/v1/catalog/services"))[0]["X-Consul-KnownLeader"] == "true"
            silent.set()  # a frozen engine: its stream stays open, nothing answers
            await asyncio.sleep(1.5)  # the next ping
            assert not env.agent.links()[0].connected
            assert env.deps_links_connected()  # the stream itself is still open
            headers, leader = await env.headers("/v1/status/leader")
            assert headers["X-Consul-KnownLeader"] == "false" and json.loads(leader) == ""
            await asyncio.sleep(3.0)
            assert env.agent.links()[0].sync_age_s >= 3.0
            silent.clear()
            await asyncio.sleep(1.5)
            assert env.agent.links()[0].connected
            assert (await env.headers("/v1/catalog/services"))[0]["X-Consul-KnownLeader"] == "true"

    vtime.run(main)


# --- stopping ------------------------------------------------------------------------------


def _watcher_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.endswith(f"-{ENGINE}")]


@pytest.mark.parametrize("how", ["SIGTERM", "SIGINT", "stop"])
def test_stopping_drains_every_server_thread_and_task_and_keeps_the_policy(
    tmp_path: Path, how: str
) -> None:
    sig = getattr(signal, how, None)
    previous = signal.getsignal(sig) if sig is not None else None

    async def main() -> None:
        async with running(tmp_path) as env:
            cid = env.engine.create_container(labelled("web-1", "web"))
            env.engine.start(cid)
            await follow(env, lambda: "web-1" in instance_ids(env))
            assert _watcher_threads()
            api, dns_at = env.agent.api_address, env.agent.dns_address
            assert api is not None and dns_at is not None
            if sig is None:
                env.agent.stop()
            else:
                # Raised only once the agent's handler replaced the test runner's: the
                # runner's own would end the test session.
                assert signal.getsignal(sig) is not previous
                signal.raise_signal(sig)
            await asyncio.wait_for(asyncio.shield(env.task), 60)
        assert env.task.exception() is None
        assert not _watcher_threads()
        assert env.store.closed
        assert asyncio.all_tasks() == {asyncio.current_task()}
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(api, timeout=5).close()
        for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):  # the DNS port is free again
            with socket.socket(socket.AF_INET, kind) as s:
                s.bind(dns_at)
        # A stopped agent leaves the last ruleset in force (fail closed).
        assert env.nft.elements(TABLE, WEB_SET) == {WEB_IP}
        if sig is not None:
            assert signal.getsignal(sig) in (signal.SIG_DFL, signal.default_int_handler)

    try:
        vtime.run(main)
    finally:
        if sig is not None:
            signal.signal(sig, previous)


def test_sighup_reads_the_policy_again_and_mends_its_table_without_a_change(
    tmp_path: Path,
) -> None:
    previous = signal.getsignal(signal.SIGHUP)

    async def main() -> None:
        async with running(tmp_path) as env:
            cid = env.engine.create_container(labelled("web-1", "web"))
            env.engine.start(cid)
            await follow(
                env,
                lambda: (
                    ("inet", TABLE) in env.nft.tables and env.nft.elements(TABLE, WEB_SET) != set()
                ),
            )
            assert env.nft.elements(TABLE, WEB_SET) == {WEB_IP}
            # Someone deletes the element by hand; nothing in the engine changes.
            family = {"family": "inet", "table": TABLE, "name": WEB_SET}
            env.nft.run([{"delete": {"element": {**family, "elem": [WEB_IP]}}}])
            await asyncio.sleep(30.0)
            assert env.nft.elements(TABLE, WEB_SET) == set()  # nothing looks without a cause
            # Raised only once the agent's handler replaced the default one (which ends the
            # process).
            assert signal.getsignal(signal.SIGHUP) is not previous
            signal.raise_signal(signal.SIGHUP)
            await follow(env, lambda: env.nft.elements(TABLE, WEB_SET) == {WEB_IP})
            assert not env.task.done()  # a reload, not a stop
        assert signal.getsignal(signal.SIGHUP) == signal.SIG_DFL

    try:
        vtime.run(main)
    finally:
        signal.signal(signal.SIGHUP, previous)


def test_metrics_count_the_policy_tables_repairs(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path) as env:
            await follow(env, lambda: ("inet", TABLE) in env.nft.tables)
            env.nft.run([{"flush": {"table": {"family": "inet", "name": TABLE}}}])
            assert env.agent.policy is not None
            await asyncio.to_thread(env.agent.policy.check)  # what the ruleset watch calls
            assert env.agent.api_address is not None
            host, port = env.agent.api_address

            def scrape() -> str:
                with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
                    return str(r.read().decode())

            text = await asyncio.to_thread(scrape)
            assert "dockmesh_policy_repairs_total 1.0" in text
            assert "dockmesh_policy_watch_up 0.0" in text  # no watch in this agent's deps

    vtime.run(main)


def test_the_dns_server_gets_the_configured_limits_and_counts_refusals_in_metrics(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        async with running(tmp_path) as env:
            assert env.agent.dns is not None
            assert env.agent.dns.limits == env.agent.config.dns_limits == DnsLimits()
            assert env.agent.api_address is not None
            host, port = env.agent.api_address

            def scrape() -> str:
                with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as r:
                    return str(r.read().decode())

            text = await asyncio.to_thread(scrape)
            for transport, reason in REASONS:
                line = (
                    f'dockmesh_dns_refused_total{{reason="{reason}",transport="{transport}"}} 0.0'
                )
                assert line in text

    vtime.run(main)


# --- the parts --------------------------------------------------------------------------------


def test_the_parts_come_from_the_config_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No environment variable is read below the command line, and no engine is reached."""
    monkeypatch.setenv("DOCKMESH_POLICY_DIR", str(tmp_path / "not-this-one"))
    monkeypatch.setenv("DOCKMESH_POLICY_TABLE", "notthisone")
    monkeypatch.setenv("DOCKER_HOST", "unix:///not/this/one.sock")
    config = AgentConfig(
        engines=[EngineRef("local", f"unix://{tmp_path}/absent.sock")],
        state=str(tmp_path / "state.db"),
        policy_dir=tmp_path / "policy",
        policy_table="mine",
    )
    deps = build_deps(config)
    try:
        assert isinstance(deps.store, SqliteStore)
        assert deps.enforcer is not None
        assert deps.enforcer.store.path == tmp_path / "policy" / "mine.json"
        assert deps.ruleset_events == ("nft", "-j", "monitor")  # the agent watches the kernel
        assert isinstance(deps.topology, TopologyWatcher)
        with pytest.raises(EngineError, match=r"absent\.sock"):
            deps.topology.start()
    finally:
        deps.topology.stop()
        deps.store.close()
    assert isinstance(build_deps(AgentConfig(engines=[], state=None)).store, MemoryStore)


def test_the_agent_serves_dns_on_every_bridge_gateway() -> None:
    nets = (
        Network("1", "given", "local", "bridge", ipam=(IpamPool("10.1.0.0/24", "10.1.0.254"),)),
        Network("2", "default", "local", "bridge", ipam=(IpamPool("10.2.0.0/24"),)),
        Network(
            "3", "ranged", "local", "bridge", ipam=(IpamPool("10.3.0.0/24", None, "10.3.0.64/26"),)
        ),
        Network("4", "v6", "local", "bridge", ipam=(IpamPool("fd00::/64", "fd00::1"),)),
        Network("5", "ov", "local", "overlay", ipam=(IpamPool("10.5.0.0/24", "10.5.0.1"),)),
    )
    topo = Topology(1, (EngineInfo("local", "x"),), nets, ())
    assert bridge_gateways(topo) == {"10.1.0.254", "10.2.0.1", "10.3.0.64"}


class SilentEngine:
    """A topology source whose engine accepted the connection and never answers: `start()`
    blocks until the test lets it go."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.entered = threading.Event()

    def start(self) -> Topology:
        self.entered.set()
        self.released.wait()
        raise EngineError("engine silent: gave up")

    def updates(self) -> Any:
        raise AssertionError("never started")

    def links(self) -> tuple[()]:
        return ()

    def stop(self) -> None:
        pass


def test_a_stop_is_not_held_up_by_an_engine_that_never_answers() -> None:
    """Seen as `DOCKER_HOST=tcp://<a listener that never answers> dockmesh agent`: SIGTERM
    logged "agent stopped" at once, but the process lived on ~27 s more (asyncio.run joined
    the executor thread that was still waiting for the engine)."""
    import time

    source = SilentEngine()
    config = AgentConfig(engines=[], api=("127.0.0.1", 0), dns=None, state=None)
    agent = Agent(config, AgentDeps(store=MemoryStore(), topology=source, enforcer=None))

    async def main() -> None:
        task = asyncio.create_task(agent.run())
        await agent.ready.wait()
        await asyncio.to_thread(source.entered.wait, 10)
        agent.stop()
        await task

    release = threading.Timer(20, source.released.set)  # a failing run ends, later
    release.start()
    began = time.monotonic()
    try:
        asyncio.run(main())
        took = time.monotonic() - began
    finally:
        source.released.set()
        release.cancel()
    assert took < 5, f"the agent took {took:.1f} s to stop"


def test_the_configured_datacenter_is_what_the_api_and_dns_answer_for(tmp_path: Path) -> None:
    async def main() -> None:
        async with running(tmp_path, datacenter="east") as env:
            assert await env.http("GET", "/v1/catalog/datacenters") == (200, ["east"])
            status, body = await env.http("GET", "/v1/agent/self")
            assert status == 200 and body["Config"]["Datacenter"] == "east"
            status, members = await env.http("GET", "/v1/agent/members")
            assert status == 200 and members[0]["Tags"]["dc"] == "east"
            # The NS target and the SOA's server name resolve; another datacenter does not.
            assert await env.ask("dockmesh.node.east.dockmesh") == ["127.0.0.1"]
            assert await env.ask("ns.consul") == ["127.0.0.1"]
            assert await env.ask("dockmesh.node.dc1.dockmesh") == []

    vtime.run(main)


class RecordingKeeper:
    """Stands for `OverlayKeeper`: when the agent asks it to follow a topology, and to
    compare its tables with the kernel's."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.synced: list[tuple[float, frozenset[str]]] = []
        self.checks: list[float] = []

    def sync(self, topo: Any) -> None:
        self.synced.append((self.clock(), frozenset(c.name for c in topo.containers)))

    def refresh(self, topo: Any) -> None:
        self.refreshed = self.clock()

    def check(self) -> None:
        self.checks.append(self.clock())


def test_the_overlay_tables_follow_each_change_and_are_checked_every_few_seconds(
    tmp_path: Path,
) -> None:
    from dockmesh.agent import OVERLAY_CHECK_S

    previous = signal.getsignal(signal.SIGHUP)

    async def main() -> None:
        keeper = RecordingKeeper(asyncio.get_running_loop().time)
        async with running(tmp_path, overlays=keeper) as env:
            await follow(env, lambda: bool(keeper.synced))
            t0 = env.now()
            cid = env.engine.create_container(labelled("web-1", "web"))
            env.engine.start(cid)
            # at once, with the host's table (the kernel before the catalog)
            await follow(env, lambda: any("web-1" in names for _, names in keeper.synced))
            assert next(t for t, names in keeper.synced if "web-1" in names) == t0
            keeper.checks.clear()
            await asyncio.sleep(3 * OVERLAY_CHECK_S + 0.1)
            assert len(keeper.checks) == 3
            # SIGHUP: compared at once
            before = len(keeper.checks)
            signal.raise_signal(signal.SIGHUP)
            await follow(env, lambda: len(keeper.checks) > before)

    try:
        vtime.run(main)
    finally:
        signal.signal(signal.SIGHUP, previous)

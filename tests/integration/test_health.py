"""Health checks against real containers, probed from inside their network namespaces.

The toolbox's `/cgi-bin/health` answers 503 while /tmp/unhealthy exists. Containers sit on an
`--internal` network and their servers bind one address only, so what a check reaches tells
which namespace it was sent from: a server on the container's own 127.0.0.1 answers a check
run in the container's namespace and nobody else.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import pytest

from dockmesh.catalog.live import LiveCatalog
from dockmesh.health.probe import Prober
from dockmesh.health.runner import HealthRunner
from dockmesh.host.netns import NetnsPool, thread_netns
from dockmesh.model.catalog import CheckSpec, CheckState, Instance
from tests.integration.conftest import free_subnets, run_toolbox

pytestmark = pytest.mark.integration
WAIT = 15.0  # seconds; a guard against hanging
INTERVAL = 0.5
# A check follows its backend at its own interval, not the 10 s default: this bound tells the
# two apart and nothing more. Exactly when each probe runs is tested on a virtual clock
# (tests/unit/health/test_runner.py); a wall-clock "within one interval" flakes on a busy
# machine.
FOLLOWS_WITHIN = 5.0


@dataclass(frozen=True)
class Web:
    cid: str
    pid: int
    ip: str


def listening(pid: int, port: int) -> bool:
    """Whether something listens on TCP `port` in `pid`'s namespace (/proc needs no setns)."""
    with contextlib.suppress(FileNotFoundError), open(f"/proc/{pid}/net/tcp") as f:
        return any(
            line.split()[1].endswith(f":{port:04X}") and line.split()[3] == "0A"
            for line in list(f)[1:]
        )
    return False


def wait_for(predicate: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.fixture
def internal_net(api: Any, prefix: str) -> str:
    (subnet,) = free_subnets(api, 1)
    name = f"{prefix}-int"
    api.create_network(name, internal=True, ipam={"Config": [{"Subnet": subnet}]})
    return name


def start_web(api: Any, name: str, net: str, bind: str, port: int = 8080) -> Web:
    """A toolbox whose httpd listens on `bind` only: "ip" (its address on `net`) or an
    address such as 127.0.0.1."""
    where = "$(hostname -i)" if bind == "ip" else bind
    cid = run_toolbox(
        api, name, net, command=["sh", "-c", f"exec httpd -f -p {where}:{port} -h /www"]
    )
    info = api.inspect_container(cid)
    web = Web(cid, int(info["State"]["Pid"]), info["NetworkSettings"]["Networks"][net]["IPAddress"])
    wait_for(lambda: listening(web.pid, port), f"httpd in {name}")
    return web


def docker_exec(api: Any, cid: str, *cmd: str) -> None:
    api.exec_start(api.exec_create(cid, list(cmd)))


def threads_netns() -> set[tuple[int, int]]:
    found = set()
    for tid in os.listdir("/proc/self/task"):
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(f"/proc/self/task/{tid}/ns/net")
            found.add((st.st_dev, st.st_ino))
    return found


class Checking:
    """A LiveCatalog with a runner probing through a NetnsPool, on the running loop."""

    def __init__(self) -> None:
        self.pool = NetnsPool()
        self.live = LiveCatalog()
        self.changed = asyncio.Event()
        self.live.subscribe(lambda _: self.changed.set())
        self.runner = HealthRunner(
            self.live,
            Prober(self.pool),
            min_interval_s=0.05,
            first_run_spread_s=0.05,
        )

    def register(self, web: Web, *checks: CheckSpec) -> None:
        self.live.register(Instance("web-1", "web", web.ip, 8080, pid=web.pid), list(checks))

    def state(self, check_id: str) -> CheckState:
        s = self.live.catalog.check(check_id)
        assert s is not None
        return s

    async def until(self, check_id: str, predicate: Callable[[CheckState], bool]) -> float:
        """Waits until the check's state satisfies `predicate`; returns the loop time then."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WAIT
        while not predicate(self.state(check_id)):
            left = deadline - loop.time()
            if left <= 0:
                s = self.state(check_id)
                raise AssertionError(f"{check_id} stayed {s.status}: {s.output}")
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)
        return loop.time()


@contextlib.asynccontextmanager
async def checking() -> AsyncIterator[Checking]:
    c = Checking()
    await c.runner.start()
    try:
        yield c
    finally:
        await c.runner.stop()
        c.pool.close()


def http(cid: str, url: str, pid: int | None, **kw: Any) -> CheckSpec:
    return CheckSpec(
        cid,
        cid,
        "http",
        service_id="web-1",
        http=url,
        interval_s=INTERVAL,
        timeout_s=2,
        netns_pid=pid,
        **kw,
    )


def tcp(cid: str, address: str, pid: int | None) -> CheckSpec:
    return CheckSpec(
        cid,
        cid,
        "tcp",
        service_id="web-1",
        tcp=address,
        interval_s=INTERVAL,
        timeout_s=2,
        netns_pid=pid,
    )


def passing(s: CheckState) -> bool:
    return s.status == "passing"


def critical(s: CheckState) -> bool:
    return s.status == "critical" and s.output != ""


def test_an_http_check_follows_the_backend_at_its_interval(
    api: Any, prefix: str, toolbox: str, internal_net: str
) -> None:
    web = start_web(api, f"{prefix}-web", internal_net, bind="ip")
    url = f"http://{web.ip}:8080/cgi-bin/health"

    async def main() -> tuple[float, float, str, str]:
        async with checking() as c:
            c.register(web, http("h", url, web.pid))
            await c.until("h", passing)
            assert c.state("h").output == f"HTTP GET {url}: 200 OK Output: ok"
            loop = asyncio.get_running_loop()
            await asyncio.to_thread(docker_exec, api, web.cid, "touch", "/tmp/unhealthy")
            flipped = loop.time()
            down_after = await c.until("h", critical) - flipped
            down_output = c.state("h").output
            await asyncio.to_thread(docker_exec, api, web.cid, "rm", "/tmp/unhealthy")
            flipped = loop.time()
            up_after = await c.until("h", passing) - flipped
            # Every probe ran in the container's namespace; no thread stayed there.
            assert threads_netns() == {thread_netns()}
            return down_after, up_after, down_output, c.state("h").output

    down_after, up_after, down_output, up_output = asyncio.run(main())
    assert down_output == f"HTTP GET {url}: 503 Service Unavailable Output: unhealthy"
    assert up_output == f"HTTP GET {url}: 200 OK Output: ok"
    assert down_after < FOLLOWS_WITHIN
    assert up_after < FOLLOWS_WITHIN


def test_tcp_checks_and_the_reasons_of_failures(
    api: Any, prefix: str, toolbox: str, internal_net: str
) -> None:
    web = start_web(api, f"{prefix}-web", internal_net, bind="ip")

    async def main() -> dict[str, CheckState]:
        async with checking() as c:
            c.register(
                web,
                tcp("open", f"{web.ip}:8080", web.pid),
                tcp("closed", f"{web.ip}:8081", web.pid),
                # Bound to its network address only: its own loopback has nothing.
                http("loop", "http://127.0.0.1:8080/cgi-bin/health", web.pid),
                http("404", f"http://{web.ip}:8080/nothing-here", web.pid),
            )
            await c.until("open", passing)
            for cid in ("closed", "loop", "404"):
                await c.until(cid, critical)
            return {cid: c.state(cid) for cid in ("open", "closed", "loop", "404")}

    states = asyncio.run(main())
    assert states["open"].output == f"TCP connect {web.ip}:8080: Success"
    assert states["closed"].output == (
        f"TCP connect {web.ip}:8081: connect to {web.ip}:8081: Connection refused"
    )
    assert states["loop"].output.endswith("connect to 127.0.0.1:8080: Connection refused")
    assert states["404"].output.startswith(f"HTTP GET http://{web.ip}:8080/nothing-here: 404")


def test_a_server_on_its_own_loopback_is_reached_from_its_namespace_only(
    api: Any, prefix: str, toolbox: str, internal_net: str
) -> None:
    # A port the host's loopback surely refuses: bound here (not listening) for the test.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        port = held.getsockname()[1]
        web = start_web(api, f"{prefix}-web", internal_net, bind="127.0.0.1", port=port)
        local = f"http://127.0.0.1:{port}/cgi-bin/health"

        async def main() -> dict[str, CheckState]:
            async with checking() as c:
                c.register(
                    web,
                    http("inside", local, web.pid),  # the container's loopback
                    http("host", local, None),  # the host's loopback
                    http("address", f"http://{web.ip}:{port}/cgi-bin/health", web.pid),
                )
                await c.until("inside", passing)
                await c.until("host", critical)
                await c.until("address", critical)
                return {cid: c.state(cid) for cid in ("inside", "host", "address")}

        states = asyncio.run(main())
    assert states["inside"].output == f"HTTP GET {local}: 200 OK Output: ok"
    assert states["host"].output.endswith(f"127.0.0.1:{port}: Connection refused")
    assert states["address"].output.endswith(f"{web.ip}:{port}: Connection refused")


def test_a_killed_container_is_gone_and_nothing_leaks(
    api: Any, prefix: str, toolbox: str, internal_net: str
) -> None:
    web = start_web(api, f"{prefix}-web", internal_net, bind="ip")
    url = f"http://{web.ip}:8080/cgi-bin/health"
    threads, fds = threading.active_count(), set(os.listdir("/proc/self/fd"))

    async def main() -> tuple[str, str]:
        async with checking() as c:
            c.register(web, http("h", url, web.pid), tcp("t", f"{web.ip}:8080", web.pid))
            await c.until("h", passing)
            await c.until("t", passing)
            os.kill(web.pid, signal.SIGKILL)  # the container's init: the container dies
            gone = f"container is gone (pid {web.pid} has exited)"
            await c.until("h", lambda s: s.output == f"HTTP GET {url}: {gone}")
            await c.until("t", lambda s: s.output == f"TCP connect {web.ip}:8080: {gone}")
            assert c.state("h").status == c.state("t").status == "critical"
            return c.state("h").output, c.state("t").output

    asyncio.run(main())
    assert threads_netns() == {thread_netns()}
    assert threading.active_count() == threads
    assert set(os.listdir("/proc/self/fd")) == fds
    wait_for(
        lambda: not api.inspect_container(web.cid)["State"]["Running"], "the container to stop"
    )

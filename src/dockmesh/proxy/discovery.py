"""Where a cluster's members come from, off the request path: the agent's catalog followed by
blocking queries (`--service NAME --agent URL`), or static backends with the proxy's own
active health checks (`--backend URL`).

The watch asks `GET /v1/health/service/NAME?passing&index=N&wait=5m` (NAME `<service>.<project>`
follows that project's instances only: a gateway names its own project's service, so another
project's service of the same name never gets its requests); the agent answers when
the passing instances change (or the wait ends), with `X-Consul-Index` for the next question.
Each answer replaces the cluster's members: a new passing instance takes requests from the
next pick on; one that stops passing or goes away takes no new ones, while requests it is
serving finish. An agent that does not answer leaves the members as they were (the proxy
keeps serving what it knew) and is asked again with a growing back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from dockmesh.catalog import checks
from dockmesh.model.catalog import CheckSpec, CheckState
from dockmesh.proxy.cluster import Cluster, Upstream
from dockmesh.proxy.labelroutes import instances_from_health

log = logging.getLogger(__name__)

WAIT = "5m"


def members_from_health(doc: Any) -> dict[str, int]:
    """`/v1/health/service/<name>` JSON → {address:port: weight} of its instances."""
    return {
        (f"[{i.address}]:{i.port}" if ":" in i.address else f"{i.address}:{i.port}"): i.weight
        for i in instances_from_health(doc)
    }


async def watch_service(cluster: Cluster[Any], service: str, agent: str) -> None:
    """Follows `service`'s passing instances on the agent at `agent` until cancelled (an
    instance that goes has its idle connections closed: `Cluster.set_members`)."""
    import aiohttp

    index = 0
    backoff = 0.2
    url = f"{agent.rstrip('/')}/v1/health/service/{service}"
    cluster.known = False
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=330)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        while True:
            params = {"passing": "1", "index": str(index), "wait": WAIT}
            try:
                async with session.get(url, params=params) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"the agent answered {resp.status}")
                    doc = await resp.json(content_type=None)
                    new_index = int(resp.headers.get("X-Consul-Index", "0") or 0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning(
                    "watching %s at %s: %s; asking again in %.1fs", service, agent, e, backoff
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            # An index going backwards means the agent restarted: start over (Consul's rule).
            index = new_index if new_index > index else (0 if new_index < index else index)
            members = members_from_health(doc)
            cluster.set_members(members, healthy=True)
            cluster.known = True
            log.info("%s: %d passing instance(s) (index %d)", service, len(members), index)


class BackendChecks:
    """The active checks' verdicts on static backends, through the catalog's check machine
    (`catalog.checks`: HAProxy's rise/fall): `fall` failures in a row take a backend out,
    `rise` passes in a row bring it back. A backend starts passing, so the proxy serves at
    once. Pure: results and times in, verdicts out."""

    def __init__(self, path: str, rise: int = 2, fall: int = 2) -> None:
        self.path = path
        self.rise = rise
        self.fall = fall
        self.states: dict[str, CheckState] = {}

    def observe(self, addr: str, ok: bool, now: float) -> bool:
        """One check's result on `addr`: whether the backend passes now."""
        state = self.states.get(addr)
        if state is None:
            spec = CheckSpec(
                id=addr,
                name=f"GET {self.path} on {addr}",
                kind="http",
                http=self.path,
                rise=self.rise,
                fall=self.fall,
                initial_status="passing",
            )
            state = checks.initial(spec, now)
        state = self.states[addr] = checks.observe(state, "passing" if ok else "critical", "", now)
        return state.status == "passing"

    def keep_only(self, addrs: Iterable[str]) -> None:
        """Forgets the backends not in `addrs`."""
        keep = set(addrs)
        self.states = {a: s for a, s in self.states.items() if a in keep}


Probe = Callable[[str, int, str, float], Awaitable[bool]]


async def check_health(
    cluster: Cluster[Any],
    path: str,
    interval_s: float = 2.0,
    timeout_s: float = 1.0,
    rise: int = 2,
    fall: int = 2,
    probe_with: Probe | None = None,
) -> None:
    """Active checks for static backends: `GET path` on a fresh connection every
    `interval_s`; a status below 500 within `timeout_s` passes (`BackendChecks` decides)."""
    verdicts = BackendChecks(path, rise, fall)
    loop = asyncio.get_running_loop()
    check = probe_with or probe

    async def one(up: Upstream[Any]) -> None:
        passing = verdicts.observe(
            up.addr, await check(up.host, up.port, path, timeout_s), loop.time()
        )
        if passing != up.healthy:
            if passing:
                log.warning(
                    "%s: %s passes its check again: back in rotation", cluster.name, up.addr
                )
            else:
                log.warning("%s: %s fails its check: out of rotation", cluster.name, up.addr)
            cluster.set_healthy(up, passing)

    while True:
        verdicts.keep_only(cluster.upstreams)
        await asyncio.gather(*(one(u) for u in list(cluster.upstreams.values())))
        await asyncio.sleep(interval_s)


async def probe(host: str, port: int, path: str, timeout_s: float) -> bool:
    writer = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            hosthdr = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {hosthdr}\r\nUser-Agent: dockmesh-proxy-check\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            line = await reader.readline()
        parts = line.split()
        return (
            len(parts) >= 2
            and parts[0].startswith(b"HTTP/1.")
            and parts[1].isdigit()
            and int(parts[1]) < 500
        )
    except (OSError, TimeoutError, ValueError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

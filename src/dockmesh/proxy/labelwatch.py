"""The routed instances of the agent's catalog, followed by blocking queries (`--project P`,
`--all-projects`): never the engine, so a proxy anywhere the agent answers sees what the
catalog says, and routes registered through the HTTP API with the same Meta too.

`GET /v1/agent/services?index=N&wait=5m` (every instance the agent's catalog holds, with its
Meta) says which services each project has; each project's service is then followed by its
scoped name, `GET /v1/health/service/<service>.<project>?index=N&wait=5m` (that project's
instances only, whoever else has a service of that name), and with `--all-projects` the
services of no project by their own name; those entries carry every instance's Meta (its
`http-*` route) and checks (passing or not). Whenever one answer changes, the whole
picture goes to `on_change` once per pass of the loop (answers arriving together are one
change). An agent that does not answer leaves the picture as it was (the proxy serves what it
knew) and is asked again with a growing back-off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Collection
from typing import Any
from urllib.parse import quote

from dockmesh.model.catalog import META_PROJECT
from dockmesh.proxy.labelroutes import CatalogInstance, instances_from_health

log = logging.getLogger(__name__)

WAIT = "5m"


def wanted(services: Any, projects: Collection[str] | None) -> set[str]:
    """The service names to follow, from `/v1/agent/services` JSON: the scoped name
    (`<service>.<project>`) of each service of the projects asked for, or (None) of every
    project, and then also the names of the services of no project."""
    out: set[str] = set()
    if not isinstance(services, dict):
        return out
    for row in services.values():
        if not isinstance(row, dict):
            continue
        name, meta = row.get("Service"), row.get("Meta") or {}
        if not isinstance(name, str) or not name or not isinstance(meta, dict):
            continue
        project = meta.get(META_PROJECT)
        if isinstance(project, str) and project:
            if projects is None or project in projects:
                out.add(f"{name}.{project}")
        elif projects is None:
            out.add(name)
    return out


class LabelWatch:
    """Follows the catalog until cancelled; `ready` is set once every name followed has
    answered at least once (the first table is whole)."""

    def __init__(
        self,
        agent: str,
        projects: Collection[str] | None,
        on_change: Callable[[list[CatalogInstance]], None],
    ) -> None:
        self.agent = agent.rstrip("/")
        self.projects = projects
        self.on_change = on_change
        self.entries: dict[str, list[CatalogInstance]] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.ready = asyncio.Event()
        self._listed = False
        self._scheduled = False
        self.session: Any = None

    async def run(self) -> None:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=330)
        try:
            # One connection per blocking query: no pool limit may hold one back.
            connector = aiohttp.TCPConnector(limit=0)
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                self.session = session
                await self._follow(session, "/v1/agent/services", self._names)
        finally:
            for t in self.tasks.values():
                t.cancel()
            for t in self.tasks.values():
                with contextlib.suppress(asyncio.CancelledError):
                    await t

    def _names(self, doc: Any) -> None:
        names = wanted(doc, self.projects)
        for gone in set(self.tasks) - names:
            self.tasks.pop(gone).cancel()
            self.entries.pop(gone, None)
        for name in sorted(names - set(self.tasks)):
            path = f"/v1/health/service/{quote(name, safe='')}"
            self.tasks[name] = asyncio.get_running_loop().create_task(
                self._follow_service(path, name)
            )
        self._listed = True
        self._changed()

    async def _follow_service(self, path: str, name: str) -> None:
        def got(doc: Any) -> None:
            self.entries[name] = instances_from_health(doc)
            self._changed()

        await self._follow(self.session, path, got)

    async def _follow(self, session: Any, path: str, got: Callable[[Any], None]) -> None:
        index = 0
        backoff = 0.2
        url = f"{self.agent}{path}"
        while True:
            try:
                async with session.get(url, params={"index": str(index), "wait": WAIT}) as resp:
                    if resp.status != 200:
                        raise RuntimeError(f"the agent answered {resp.status}")
                    doc = await resp.json(content_type=None)
                    new_index = int(resp.headers.get("X-Consul-Index", "0") or 0)
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("routes: %s at %s: %s; asking again in %.1fs", path, url, e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            backoff = 0.2
            # An index going backwards means the agent restarted: start over (Consul's rule).
            changed = new_index != index or index == 0
            index = new_index if new_index > index else (0 if new_index < index else index)
            if changed:
                got(doc)

    def _changed(self) -> None:
        if self._listed and all(n in self.entries for n in self.tasks):
            self.ready.set()
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._emit)

    def current(self) -> list[CatalogInstance]:
        """Every instance followed, as last answered."""
        return [i for name in sorted(self.entries) for i in self.entries[name]]

    def _emit(self) -> None:
        self._scheduled = False
        if not self.ready.is_set():
            return
        self.on_change(self.current())

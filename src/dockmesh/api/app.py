"""The HTTP API: Consul's endpoints for what python-consul and py-consul call, dockmesh's
own (`/v1/dockmesh/topology`) and `/metrics`. An aiohttp application over a `LiveCatalog`.

Handlers stay thin: query strings go through `query` (`?filter=` through `filter`, compiled
before any wait and applied to the rows `shapes` builds), bodies through `consul_json`,
answers through `shapes`; the catalog decides. What every response carries is the middleware's job:

- `X-Consul-Index` on every response, errors and 404s included (py-consul raises without
  it), plus `X-Consul-KnownLeader` and `X-Consul-LastContact` (this agent is its own
  leader while it follows its engines: `false` and the milliseconds since they were last
  followed while it does not — what it serves may then hold the dead);
- errors as Consul gives them: a status and a one-line plain-text reason; a bug is a 500
  with a one-line reason and a logged traceback, never a traceback to the client;
- request counts by route pattern and latency, into the Prometheus registry.

Blocking queries (`?index=N&wait=10s`) on every GET: the handler computes its answer's index;
while that index is not past N, it sleeps on the catalog topic the answer depends on and
computes again, until N is passed or the wait (at most ten minutes) runs out. An index the
catalog never reached (a client from before a restart) answers at once. At shutdown every
waiting query answers at once, so stopping the agent never waits on clients.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from dockmesh import __version__
from dockmesh.api import consul_json, observe_query, query, shapes
from dockmesh.api import filter as bexpr
from dockmesh.api.errors import ApiError, bad_request, not_found, shown
from dockmesh.api.metrics import ApiMetrics, Registry
from dockmesh.api.query import Blocking, Pairs
from dockmesh.catalog.live import LiveCatalog
from dockmesh.catalog.state import TOPIC_CHECKS, TOPIC_KV, TOPIC_SERVICES, service_topic
from dockmesh.model.catalog import CheckState, Instance, Status, worst
from dockmesh.model.labels import CHECK_PREFIX
from dockmesh.model.liveness import EngineLink, all_connected
from dockmesh.model.topology import Topology

log = logging.getLogger(__name__)

TopologyProvider = Callable[[], Topology | None]
TopologyWait = Callable[[int, float], Awaitable[Topology | None]]
Links = Callable[[], Sequence[EngineLink]]


class Observer(Protocol):
    """What this agent sees of its own engine's containers from its own host (the agent
    builds it over `observe` and `diagnose`; the API only asks). Each call blocks (it reads
    /proc, conntrack, or waits on probes): the API runs it on a thread. A container it does
    not know raises `LookupError`; one whose process is not on this host raises
    `PermissionError`; the message is one line for the client."""

    def stats(self, containers: Sequence[str]) -> dict[str, Any]: ...
    def doctor(self, container: str, timeout_s: float) -> dict[str, Any]: ...
    def flows(self, by: str) -> dict[str, Any]: ...
    def probe(self, q: observe_query.ProbeQuestion) -> dict[str, Any]: ...


# Observations at once: each holds a thread (and a doctor up to its timeout twice over);
# past these a client waits, and past OBSERVE_QUEUE_S it is told the agent is busy.
OBSERVE_CONCURRENCY = 2
OBSERVE_QUEUE_S = 10.0
# Probes at once (`why`/`matrix` from another machine, one request per probe): each holds a
# thread for at most its timeout, twice over when confirmed. Their own bound, so that a
# matrix does not queue a doctor behind it.
PROBE_CONCURRENCY = 8

MAX_KV_VALUE = 512 * 1024  # Consul's kv_max_value_size
MAX_KEY_BYTES = 4096
LEADER = "127.0.0.1:8300"
VERSION = "1.15.0"  # the Consul API level dockmesh answers as, for clients that ask


def quiet_bad_requests(record: logging.LogRecord) -> bool:
    """A request aiohttp's own parser refuses (bad bytes in the request line, a malformed
    Content-Length) is the client's mistake, answered 400: one info line, not an error with a
    traceback that any client could flood the log with."""
    exc = record.exc_info[1] if record.exc_info else None
    if isinstance(exc, HttpProcessingError):
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.msg, record.args, record.exc_info = "refused a malformed request: %s", (exc,), None
        return logging.getLogger("aiohttp.server").isEnabledFor(logging.INFO)
    return True


def make_app(
    live: LiveCatalog,
    topology_provider: TopologyProvider,
    topology_wait: TopologyWait,
    metrics: Registry | None = None,
    node: str = "dockmesh",
    datacenter: str = "dc1",
    *,
    node_address: str = "127.0.0.1",
    links: Links | None = None,
    store_links: Links | None = None,
    observer: Observer | None = None,
) -> web.Application:
    """The API as an aiohttp application, to run with `web.AppRunner` on the loop that owns
    `live`.

    - `topology_provider()`: the newest topology, None before the engines were read.
    - `topology_wait(version, timeout_s)`: returns once the topology's version passes
      `version`, or the newest after `timeout_s` (`TopologyFeed` gives both).
    - `metrics`: the Prometheus registry `/metrics` exposes; one is made when None. A
      registry takes one app's metrics (prometheus-client refuses the same names twice).
    - `node`, `datacenter`, `node_address`: what Consul clients see as the node all
      instances live on (`Node.Address` is what they use for an instance without one).
    - `links()`: the engines' connections. While one is not followed, the catalog may hold
      the dead: the agent answers as a Consul agent without a leader (`X-Consul-KnownLeader:
      false`, an empty `/v1/status/leader`). None: always the leader.
    - `store_links()`: the shared catalog's watch (`--store etcd://…`): while it does not
      follow the store, the agent has no leader either (not an engine: not in
      `/v1/dockmesh/engines`).
    - `observer`: answers `/v1/dockmesh/{stats,doctor,flows}` for the containers of this
      agent's own host. None: those answer 404.

    Run it with `web.AppRunner(app, handler_cancellation=True)` so a client that hangs up
    ends its blocking query at once rather than when its wait runs out.
    """
    api = _Api(
        live,
        topology_provider,
        topology_wait,
        ApiMetrics(metrics if metrics is not None else Registry(), lambda: live.catalog),
        shapes.NodeInfo(node, datacenter, node_address),
        links,
        store_links,
        observer,
    )
    logging.getLogger("aiohttp.server").addFilter(quiet_bad_requests)  # idempotent
    app = web.Application(middlewares=[api.middleware], client_max_size=consul_json.MAX_JSON_BYTES)
    app.on_shutdown.append(api.on_shutdown)
    r = app.router
    r.add_put("/v1/agent/service/register", api.service_register)
    r.add_put("/v1/agent/service/deregister/{service_id:.+}", api.service_deregister)
    r.add_get("/v1/agent/service/{service_id:.+}", api.agent_service)
    r.add_get("/v1/agent/services", api.agent_services)
    r.add_get("/v1/agent/checks", api.agent_checks)
    r.add_put("/v1/agent/check/register", api.check_register)
    r.add_put("/v1/agent/check/deregister/{check_id:.+}", api.check_deregister)
    r.add_put("/v1/agent/check/pass/{check_id:.+}", api.check_pass)
    r.add_put("/v1/agent/check/warn/{check_id:.+}", api.check_warn)
    r.add_put("/v1/agent/check/fail/{check_id:.+}", api.check_fail)
    r.add_put("/v1/agent/check/update/{check_id:.+}", api.check_update)
    r.add_get("/v1/agent/self", api.agent_self)
    r.add_get("/v1/agent/members", api.agent_members)
    r.add_get("/v1/agent/health/service/name/{name:.+}", api.agent_health_by_name)
    r.add_get("/v1/agent/health/service/id/{service_id:.+}", api.agent_health_by_id)
    r.add_get("/v1/catalog/services", api.catalog_services)
    r.add_get("/v1/catalog/service/{name:.+}", api.catalog_service)
    r.add_get("/v1/catalog/datacenters", api.catalog_datacenters)
    r.add_get("/v1/catalog/nodes", api.catalog_nodes)
    r.add_get("/v1/catalog/node/{node:.+}", api.catalog_node)
    r.add_get("/v1/health/node/{node:.+}", api.health_node)
    r.add_get("/v1/health/service/{name:.+}", api.health_service)
    r.add_get("/v1/health/checks/{name:.+}", api.health_checks)
    r.add_get("/v1/health/state/{state}", api.health_state)
    r.add_route("*", "/v1/kv/{key:.*}", api.kv)
    r.add_get("/v1/status/leader", api.status_leader)
    r.add_get("/v1/status/peers", api.status_peers)
    r.add_get("/v1/dockmesh/topology", api.topology)
    r.add_get("/v1/dockmesh/engines", api.engines)
    r.add_get("/v1/dockmesh/stats", api.observe_stats)
    r.add_get("/v1/dockmesh/doctor", api.observe_doctor)
    r.add_get("/v1/dockmesh/flows", api.observe_flows)
    r.add_get("/v1/dockmesh/probe", api.observe_probe)
    r.add_get("/metrics", api.metrics_text)
    return app


def _pairs(request: web.Request) -> list[tuple[str, str]]:
    """The request's query parameters; every handler starts here, so a bad query string is
    a 400 whatever the endpoint."""
    pairs = query.parse_query_string(request.rel_url.raw_query_string)
    query.refuse_unsupported(pairs)
    return pairs


def _json(request: web.Request, data: Any, index: int, status: int = 200) -> web.Response:
    if "pretty" in request.rel_url.query:
        body = json.dumps(data, indent=4, ensure_ascii=False)
    else:
        body = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    resp = web.Response(body=body.encode(), status=status, content_type="application/json")
    resp.headers["X-Consul-Index"] = str(index)
    return resp


def _text(text: str, status: int, index: int | None = None) -> web.Response:
    resp = web.Response(text=text, status=status, content_type="text/plain")
    if index is not None:
        resp.headers["X-Consul-Index"] = str(index)
    return resp


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


class _Api:
    def __init__(
        self,
        live: LiveCatalog,
        topology_provider: TopologyProvider,
        topology_wait: TopologyWait,
        metrics: ApiMetrics,
        node: shapes.NodeInfo,
        links: Links | None = None,
        store_links: Links | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.links = links
        self.store_links = store_links
        self.observer = observer
        self._observing = asyncio.Semaphore(OBSERVE_CONCURRENCY)
        self._probing = asyncio.Semaphore(PROBE_CONCURRENCY)
        self.live = live
        self.topology_provider = topology_provider
        self.topology_wait = topology_wait
        self.metrics = metrics
        self.node = node
        self.closing = asyncio.Event()
        self._topology_json: tuple[int, bytes] | None = None
        # The row shapes `?filter=` selectors are checked against, by kind of row.
        self.shapes = {k: bexpr.shape_of(v) for k, v in shapes.filter_samples(node).items()}

    def _filter(self, pairs: Pairs, kind: str) -> bexpr.Predicate | None:
        """`?filter=` compiled for rows of `kind` (None without one): before any blocking
        wait, so a bad expression is a 400 at once."""
        expression = query.get(pairs, "filter")
        if expression is None:
            return None
        return bexpr.compile_filter(expression, self.shapes[kind])

    # --- what every response goes through -------------------------------------------------

    @web.middleware
    async def middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        started = time.perf_counter()
        resp: web.StreamResponse
        try:
            resp = await handler(request)
        except ApiError as e:
            resp = _text(e.reason, e.status)
        except web.HTTPException as e:
            # The router's 404 and 405, aiohttp's 413 for a body over client_max_size.
            resp = _text(ApiError(e.status, e.text or e.reason).reason, e.status)
            if "Allow" in e.headers:
                resp.headers["Allow"] = e.headers["Allow"]
        except Exception as e:
            log.exception("%s %s failed", request.method, request.rel_url.path)
            resp = _text(f"internal error: {type(e).__name__}", 500)
        resp.headers.setdefault("X-Consul-Index", str(self.live.catalog.index))
        links = self._leader_links()
        known = links is None or all_connected(links)
        resp.headers["X-Consul-KnownLeader"] = "true" if known else "false"
        # Consul's: milliseconds since the leader was last heard; here, since the engines were.
        age = max((k.sync_age_s for k in links), default=0.0) if links else 0.0
        resp.headers["X-Consul-LastContact"] = str(int(age * 1000))
        blocking = bool(request.rel_url.query.get("index"))
        self.metrics.observe(
            _route_label(request),
            request.method,
            resp.status,
            time.perf_counter() - started,
            blocking,
        )
        return resp

    async def on_shutdown(self, app: web.Application) -> None:
        self.closing.set()

    # --- blocking queries --------------------------------------------------------------------

    async def _topic_block(self, topic: str, pairs: Pairs) -> int:
        """A blocking query whose answer's index is its topic's."""
        cat = self.live.catalog
        return await self._block(topic, lambda: cat.topic_index(topic), query.parse_blocking(pairs))

    async def _block(self, topic: str, index_of: Callable[[], int], b: Blocking) -> int:
        """Waits until `index_of()` passes `b.index` (see the module's docstring)."""
        live = self.live
        if b.index <= 0:
            return index_of()
        deadline = live.clock() + b.wait_s
        while True:
            current = index_of()
            if current > b.index or b.index > live.catalog.index:
                return current
            left = deadline - live.clock()
            if left <= 0 or self.closing.is_set():
                return current
            change = asyncio.ensure_future(live.wait(topic, live.catalog.topic_index(topic), left))
            closing = asyncio.ensure_future(self.closing.wait())
            try:
                await asyncio.wait({change, closing}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                change.cancel()
                closing.cancel()

    # --- agent: services -----------------------------------------------------------------------

    async def service_register(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        reg = consul_json.parse_registration(await request.read())
        cat = self.live.catalog
        old = cat.instance(reg.instance.id)
        if old is not None and old.source == "container":
            # The engine owns it: a registration over it would outlive the container (a ghost
            # entry, Registrator's classic) and hide its real address.
            raise bad_request(
                f"service ID {shown(reg.instance.id)} is the registration of container "
                f"{shown(old.container)}; register under another ID"
            )
        keep = old is not None and old.source == "api"
        existing = [c.spec for c in cat.checks_of(reg.instance.id)] if keep else []
        checks = consul_json.merge_checks(
            reg.checks, existing, query.bool_param(pairs, "replace-existing-checks")
        )
        owners = {c.spec.id: c.spec.service_id for c in cat.checks()}
        consul_json.check_owner_conflict(checks, owners, reg.instance.id)
        self.live.register(reg.instance, checks)
        return _text("", 200)

    async def service_deregister(self, request: web.Request) -> web.Response:
        _pairs(request)
        service_id = request.match_info["service_id"]
        inst = self.live.catalog.instance(service_id)
        if inst is not None and inst.source == "container":
            # It would be gone, unsaid, until the container's next change brought it back.
            raise bad_request(
                f"service ID {shown(service_id)} is the registration of container "
                f"{shown(inst.container)}: it leaves when the container stops"
            )
        if not self.live.deregister(service_id):
            raise not_found(
                f"Unknown service ID {shown(service_id)}. "
                "Ensure that the service ID is passed, not the service name."
            )
        return _text("", 200)

    async def agent_services(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        keep = self._filter(pairs, "agent_service")
        index = await self._topic_block(TOPIC_SERVICES, pairs)
        rows = [shapes.agent_service_json(i, self.node) for i in self.live.catalog.instances()]
        return _json(request, {r["ID"]: r for r in rows if keep is None or keep(r)}, index)

    async def agent_service(self, request: web.Request) -> web.Response:
        service_id = request.match_info["service_id"]
        index = await self._topic_block(TOPIC_SERVICES, _pairs(request))
        inst = self.live.catalog.instance(service_id)
        if inst is None:
            raise not_found(f"unknown service ID: {shown(service_id)}")
        return _json(request, shapes.agent_service_json(inst, self.node), index)

    # --- agent: checks ---------------------------------------------------------------------

    def _check_json(self, state: CheckState) -> dict[str, Any]:
        sid = state.spec.service_id
        return shapes.check_json(state, self.live.catalog.instance(sid) if sid else None, self.node)

    async def agent_checks(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        keep = self._filter(pairs, "check")
        index = await self._topic_block(TOPIC_CHECKS, pairs)
        rows = [self._check_json(c) for c in self.live.catalog.checks()]
        return _json(request, {r["CheckID"]: r for r in rows if keep is None or keep(r)}, index)

    async def check_register(self, request: web.Request) -> web.Response:
        _pairs(request)
        spec = consul_json.parse_check_registration(await request.read())
        cat = self.live.catalog
        inst = cat.instance(spec.service_id or "")
        if inst is None:
            raise bad_request(f"ServiceID {shown(spec.service_id)} does not exist")
        if inst.source != "api":
            # The next change of the container would drop it without a word.
            raise bad_request(
                f"service {shown(inst.id)} comes from a container's labels:"
                f" give its checks with {CHECK_PREFIX}* labels"
            )
        existing = [c.spec for c in cat.checks_of(inst.id)]
        checks = consul_json.merge_checks([spec], existing, replace_existing=False)
        owners = {c.spec.id: c.spec.service_id for c in cat.checks()}
        consul_json.check_owner_conflict(checks, owners, inst.id)
        self.live.register(inst, checks)
        return _text("", 200)

    async def check_deregister(self, request: web.Request) -> web.Response:
        _pairs(request)
        check_id = request.match_info["check_id"]
        cat = self.live.catalog
        state = cat.check(check_id)
        inst = cat.instance(state.spec.service_id or "") if state else None
        if state is None or inst is None:
            raise not_found(f"Unknown check ID {shown(check_id)}")
        if inst.source == "container":
            # Without its check an unhealthy container would pass until its next change.
            raise bad_request(
                f"check {shown(check_id)} comes from container {shown(inst.container)}'s"
                f" labels or HEALTHCHECK: change those"
            )
        self.live.register(inst, [c.spec for c in cat.checks_of(inst.id) if c.spec.id != check_id])
        return _text("", 200)

    def _ttl_update(self, check_id: str, status: Status, output: str) -> web.Response:
        state = self.live.catalog.check(check_id)
        if state is None or state.spec.kind != "ttl":
            # Consul answers the same for an unknown check and for one the agent probes
            # itself: only TTL checks take their status from outside.
            raise consul_json.ttl_not_found(check_id)
        self.live.update_check(check_id, status, consul_json.clip_output(output))
        return _text("", 200)

    async def _ttl_note(self, request: web.Request, status: Status) -> web.Response:
        pairs = _pairs(request)
        return self._ttl_update(
            request.match_info["check_id"], status, query.get(pairs, "note") or ""
        )

    async def check_pass(self, request: web.Request) -> web.Response:
        return await self._ttl_note(request, "passing")

    async def check_warn(self, request: web.Request) -> web.Response:
        return await self._ttl_note(request, "warning")

    async def check_fail(self, request: web.Request) -> web.Response:
        return await self._ttl_note(request, "critical")

    async def check_update(self, request: web.Request) -> web.Response:
        _pairs(request)
        update = consul_json.parse_check_update(await request.read())
        return self._ttl_update(request.match_info["check_id"], update.status, update.output)

    async def agent_self(self, request: web.Request) -> web.Response:
        _pairs(request)
        n = self.node
        body = {
            "Config": {
                "Datacenter": n.datacenter,
                "NodeName": n.name,
                "NodeID": n.id,
                "Server": True,
                # The Consul level answered, with dockmesh's own version as build metadata
                # (as Consul Enterprise says `+ent`): clients comparing versions still can.
                "Version": f"{VERSION}+dockmesh.{__version__}",
                "Revision": "dockmesh",
            },
            "Member": shapes.member_json(n, VERSION),
            "Meta": {},
            # dockmesh's own version, plain, for whoever does not parse Consul's build
            # metadata out of Config.Version.
            "dockmesh": {"version": __version__},
        }
        return _json(request, body, self.live.catalog.index)

    async def agent_members(self, request: web.Request) -> web.Response:
        _pairs(request)
        return _json(request, [shapes.member_json(self.node, VERSION)], self.live.catalog.index)

    def _agent_health(self, instances: list[Instance]) -> tuple[Status, list[dict[str, Any]]]:
        """Consul's local health of instances: each one's worst check, and the worst of all."""
        cat = self.live.catalog
        rows: list[dict[str, Any]] = []
        statuses: list[str] = []
        for inst in instances:
            states = cat.checks_of(inst.id)
            status = worst([c.status for c in states])
            statuses.append(status)
            checks = [shapes.check_json(c, inst, self.node) for c in states]
            rows.append(shapes.agent_health_json(status, inst, checks, self.node))
        return worst(statuses), rows

    async def agent_health_by_name(self, request: web.Request) -> web.Response:
        """`/v1/agent/health/service/name/<name>`: the status code says the worst status of
        the service's instances (200 passing, 429 warning, 503 critical), for a load
        balancer or a script that reads only the code; `?format=text` the status alone."""
        pairs = _pairs(request)
        name = request.match_info["name"]
        instances = [e.instance for e in self.live.catalog.entries(name)]
        if not instances:
            reason = f"ServiceName {name} Not Found"
            if query.get(pairs, "format") == "text":
                return _text(reason, 404)
            return _json(request, [], self.live.catalog.index, status=404)
        status, rows = self._agent_health(instances)
        return self._health_answer(request, pairs, status, rows)

    async def agent_health_by_id(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        service_id = request.match_info["service_id"]
        inst = self.live.catalog.instance(service_id)
        if inst is None:
            reason = f"ServiceId {service_id} not found"
            if query.get(pairs, "format") == "text":
                return _text(reason, 404)
            return _json(request, None, self.live.catalog.index, status=404)
        status, rows = self._agent_health([inst])
        return self._health_answer(request, pairs, status, rows[0])

    def _health_answer(
        self, request: web.Request, pairs: Pairs, status: Status, body: Any
    ) -> web.Response:
        code = _HEALTH_CODES[status]
        if query.get(pairs, "format") == "text":
            return _text(status, code, self.live.catalog.index)
        return _json(request, body, self.live.catalog.index, status=code)

    # --- catalog and health ----------------------------------------------------------------

    async def catalog_services(self, request: web.Request) -> web.Response:
        index = await self._topic_block(TOPIC_SERVICES, _pairs(request))
        return _json(request, self.live.catalog.services(), index)

    async def _service_block(self, request: web.Request, pairs: Pairs) -> tuple[str, int]:
        name = request.match_info["name"]
        return name, await self._topic_block(service_topic(name), pairs)

    async def catalog_service(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        keep = self._filter(pairs, "catalog_service")
        name, index = await self._service_block(request, pairs)
        tags = query.get_all(pairs, "tag")
        rows = [
            shapes.catalog_service_json(e.instance, self.node, index)
            for e in self.live.catalog.entries(name)
            if all(t in e.instance.tags for t in tags)
        ]
        return _json(request, _kept(rows, keep), index)

    async def health_service(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        passing = query.bool_param(pairs, "passing")
        keep = self._filter(pairs, "health_entry")
        name, index = await self._service_block(request, pairs)
        tags = query.get_all(pairs, "tag")
        rows = [
            shapes.health_entry_json(e, self.node, index)
            for e in self.live.catalog.entries(name, passing=passing)
            if all(t in e.instance.tags for t in tags)
        ]
        return _json(request, _kept(rows, keep), index)

    async def health_checks(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        keep = self._filter(pairs, "check")
        name, index = await self._service_block(request, pairs)
        rows = [self._check_json(c) for c in self.live.catalog.service_checks(name)]
        return _json(request, _kept(rows, keep), index)

    async def health_state(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        state = request.match_info["state"]
        if state not in ("any", "passing", "warning", "critical"):
            raise bad_request(f"Invalid state: {shown(state)} (any, passing, warning or critical)")
        keep = self._filter(pairs, "check")
        cat = self.live.catalog
        index = await self._topic_block(TOPIC_CHECKS, pairs)
        rows = [self._check_json(c) for c in cat.checks() if state in ("any", c.status)]
        if state in ("any", "passing"):
            rows.insert(0, shapes.serf_health_json(self.node))
        return _json(request, _kept(rows, keep), index)

    async def health_node(self, request: web.Request) -> web.Response:
        """`/v1/health/node/<node>`: the node's serfHealth and every check of its instances;
        an empty list for another node, as Consul answers for a node it does not know."""
        pairs = _pairs(request)
        keep = self._filter(pairs, "check")
        index = await self._topic_block(TOPIC_CHECKS, pairs)
        if request.match_info["node"] != self.node.name:
            return _json(request, [], index)
        rows = [shapes.serf_health_json(self.node)]
        rows += [self._check_json(c) for c in self.live.catalog.checks()]
        return _json(request, _kept(rows, keep), index)

    async def catalog_datacenters(self, request: web.Request) -> web.Response:
        _pairs(request)
        return _json(request, [self.node.datacenter], self.live.catalog.index)

    async def catalog_nodes(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        keep = self._filter(pairs, "node")
        index = await self._topic_block(TOPIC_SERVICES, pairs)
        return _json(request, _kept([shapes.node_json(self.node, index)], keep), index)

    async def catalog_node(self, request: web.Request) -> web.Response:
        """`/v1/catalog/node/<node>`: the node and its instances by ID (`?filter=` selects
        among the instances); `null` for another node, as Consul answers."""
        pairs = _pairs(request)
        keep = self._filter(pairs, "service")
        index = await self._topic_block(TOPIC_SERVICES, pairs)
        if request.match_info["node"] != self.node.name:
            return _json(request, None, index)
        rows = [shapes.service_json(i, index) for i in self.live.catalog.instances()]
        return _json(request, shapes.node_services_json(self.node, _kept(rows, keep), index), index)

    # --- KV ----------------------------------------------------------------------------------

    async def kv(self, request: web.Request) -> web.StreamResponse:
        pairs = _pairs(request)
        key = _kv_key(request.rel_url.raw_path)
        if request.method == "GET":
            return await self._kv_get(request, pairs, key)
        if request.method == "PUT":
            return await self._kv_put(request, pairs, key)
        if request.method == "DELETE":
            return self._kv_delete(request, pairs, key)
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "PUT", "DELETE"])

    async def _kv_get(self, request: web.Request, pairs: Pairs, key: str) -> web.StreamResponse:
        cat = self.live.catalog
        b = query.parse_blocking(pairs)
        if query.has(pairs, "keys"):
            # Consul spells it both ways, for history's sake.
            sep = query.get(pairs, "separator") or query.get(pairs, "seperator")
            index = await self._block(TOPIC_KV, lambda: cat.kv_index(key, recurse=True), b)
            keys = cat.kv_keys(key, sep or None)
            if not keys and key:
                return _text("", 404, index)
            return _json(request, keys, index)
        recurse = query.has(pairs, "recurse")
        if not recurse and not key:
            raise bad_request("Missing key name")
        index = await self._block(TOPIC_KV, lambda: cat.kv_index(key, recurse=recurse), b)
        if recurse:
            entries = cat.kv_list(key)
        else:
            one = cat.kv_get(key)
            entries = [one] if one is not None else []
        if not entries:
            return _text("", 404, index)
        if query.has(pairs, "raw") and not recurse:
            resp = web.Response(body=entries[0].value, content_type="text/plain")
            resp.headers["X-Consul-Index"] = str(index)
            resp.headers["X-Content-Type-Options"] = "nosniff"
            return resp
        return _json(request, [shapes.kv_json(e) for e in entries], index)

    async def _kv_put(self, request: web.Request, pairs: Pairs, key: str) -> web.Response:
        if not key:
            raise bad_request("Missing key name")
        for session_flag in ("acquire", "release"):
            if query.has(pairs, session_flag):
                raise bad_request(
                    f"?{session_flag}: sessions and locks are not supported by dockmesh"
                )
        flags = query.uint_param(pairs, "flags") or 0
        cas = query.uint_param(pairs, "cas")
        size = request.content_length
        if size is not None and size > MAX_KV_VALUE:
            raise _too_large(size)
        value = await request.read()
        if len(value) > MAX_KV_VALUE:
            raise _too_large(len(value))
        ok = self.live.kv_put(key, value, flags, cas)
        return _json(request, ok, self.live.catalog.kv_index(key))

    def _kv_delete(self, request: web.Request, pairs: Pairs, key: str) -> web.Response:
        recurse = query.has(pairs, "recurse")
        cas = query.uint_param(pairs, "cas")
        if recurse and cas is not None:
            raise bad_request("Conflicting flags: recurse&cas")
        if not recurse and not key:
            raise bad_request("Missing key name")
        cat = self.live.catalog
        if cas is not None and cat.kv_get(key) is None:
            ok = True  # Consul: a check-and-set delete of a missing key succeeds
        else:
            ok = self.live.kv_delete(key, recurse, cas)
        return _json(request, ok, cat.topic_index(TOPIC_KV))

    # --- status, topology, metrics ---------------------------------------------------------

    def _leader_links(self) -> tuple[EngineLink, ...] | None:
        """What must be followed for the agent to have a leader: its engines, and the
        shared catalog's store when there is one (None: nothing, always the leader)."""
        if self.links is None and self.store_links is None:
            return None
        engines = tuple(self.links()) if self.links is not None else ()
        store = tuple(self.store_links()) if self.store_links is not None else ()
        return engines + store

    def leader(self) -> bool:
        """Whether the agent answers as one with a leader: while it follows its engines
        (and the shared catalog's store)."""
        links = self._leader_links()
        return links is None or all_connected(links)

    async def status_leader(self, request: web.Request) -> web.Response:
        _pairs(request)
        return _json(request, LEADER if self.leader() else "", self.live.catalog.index)

    async def engines(self, request: web.Request) -> web.Response:
        _pairs(request)
        links = self.links() if self.links is not None else ()
        doc = [
            {"engine": k.engine, "connected": k.connected, "sync_age_s": round(k.sync_age_s, 3)}
            for k in links
        ]
        return _json(request, doc, self.live.catalog.index)

    async def status_peers(self, request: web.Request) -> web.Response:
        _pairs(request)
        return _json(request, [LEADER], self.live.catalog.index)

    async def topology(self, request: web.Request) -> web.Response:
        pairs = _pairs(request)
        b = query.parse_blocking(pairs)
        topo = self.topology_provider()
        # Only the current version waits: an older one is answered with the newer, and one
        # the agent never reached (a client from before a restart) at once, like the catalog.
        if b.index > 0 and (topo is None or topo.version == b.index):
            topo = await self._topology_wait(b)
        if topo is None:
            return _text("the agent has not read the engines yet", 503, 0)
        cached = self._topology_json
        if cached is None or cached[0] != topo.version:
            cached = (topo.version, json.dumps(topo.to_json(), separators=(",", ":")).encode())
            self._topology_json = cached
        resp = web.Response(body=cached[1], content_type="application/json")
        resp.headers["X-Consul-Index"] = str(topo.version)
        return resp

    async def _topology_wait(self, b: Blocking) -> Topology | None:
        waiter = asyncio.ensure_future(self.topology_wait(b.index, b.wait_s))
        closing = asyncio.ensure_future(self.closing.wait())
        try:
            await asyncio.wait({waiter, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            closing.cancel()
            if not waiter.done():
                waiter.cancel()
        return (
            waiter.result()
            if waiter.done() and not waiter.cancelled()
            else self.topology_provider()
        )

    # --- what this host sees of its own containers -------------------------------------------

    async def _observe(
        self,
        request: web.Request,
        fn: Callable[[], dict[str, Any]],
        gate: asyncio.Semaphore | None = None,
    ) -> web.Response:
        gate = self._observing if gate is None else gate
        try:
            await asyncio.wait_for(gate.acquire(), OBSERVE_QUEUE_S)
        except TimeoutError:
            raise ApiError(503, "the agent is busy observing; try again") from None
        # The slot is freed when the work ends, not when the handler does: a client that
        # hangs up cancels the handler (handler_cancellation) but not the thread, and
        # freeing the slot then let a client asking and hanging up in a loop pile doctors
        # up in the default executor, which the agent's engine pings and policy syncs share.
        work = asyncio.ensure_future(asyncio.to_thread(fn))

        def done(t: asyncio.Future[dict[str, Any]], gate: asyncio.Semaphore = gate) -> None:
            gate.release()
            if not t.cancelled():
                t.exception()  # retrieved: a client gone is not an unhandled error

        work.add_done_callback(done)
        try:
            doc = await asyncio.shield(work)
        except LookupError as e:
            raise not_found(str(e.args[0]) if e.args else "no such container") from None
        except PermissionError as e:
            raise ApiError(409, str(e.args[0]) if e.args else "not on this host") from None
        return _json(request, doc, self.live.catalog.index)

    def _observer(self) -> Observer:
        if self.observer is None:
            raise not_found("this agent does not observe its containers")
        return self.observer

    async def observe_stats(self, request: web.Request) -> web.Response:
        q = observe_query.parse_stats(_raw_query(request))
        observer = self._observer()
        return await self._observe(request, lambda: observer.stats(q.containers))

    async def observe_doctor(self, request: web.Request) -> web.Response:
        q = observe_query.parse_doctor(_raw_query(request))
        observer = self._observer()
        return await self._observe(request, lambda: observer.doctor(q.container, q.timeout_s))

    async def observe_flows(self, request: web.Request) -> web.Response:
        q = observe_query.parse_flows(_raw_query(request))
        observer = self._observer()
        return await self._observe(request, lambda: observer.flows(q.by))

    async def observe_probe(self, request: web.Request) -> web.Response:
        q = observe_query.parse_probe(_raw_query(request))
        observer = self._observer()
        return await self._observe(request, lambda: observer.probe(q), self._probing)

    async def metrics_text(self, request: web.Request) -> web.Response:
        body, content_type = self.metrics.exposition(request.headers.get("Accept", ""))
        resp = web.Response(body=body)
        resp.headers["Content-Type"] = content_type
        return resp


_HEALTH_CODES: dict[Status, int] = {
    "passing": 200,
    "warning": 429,
    "critical": 503,
    "maintenance": 503,
}


def _kept(rows: list[dict[str, Any]], keep: bexpr.Predicate | None) -> list[dict[str, Any]]:
    return rows if keep is None else [r for r in rows if keep(r)]


def _raw_query(request: web.Request) -> bytes:
    """The query string as the client sent it (percent escapes still in): the observation
    endpoints decide what its bytes may be."""
    try:
        return request.rel_url.raw_query_string.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise bad_request("the query string is not valid") from None


def _kv_key(raw_path: str) -> str:
    """The key as the client wrote it: from the raw (still percent-encoded) path, so `%2F`,
    `+` and escapes that are not UTF-8 are decided here (a 400), not by the framework's
    path decoding."""
    raw = raw_path[len("/v1/kv/") :] if raw_path.startswith("/v1/kv/") else ""
    try:
        data = unquote_to_bytes(raw)
    except UnicodeEncodeError:  # a lone surrogate the request line's decoding let through
        raise bad_request("key is not valid UTF-8") from None
    if len(data) > MAX_KEY_BYTES:
        raise bad_request(f"key is longer than {MAX_KEY_BYTES} bytes")
    try:
        key = data.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("key is not valid UTF-8") from None
    if "\x00" in key:
        raise bad_request("key contains a NUL character")
    return key


def _too_large(size: int) -> ApiError:
    return ApiError(413, f"Request body({size} bytes) too large, max size: {MAX_KV_VALUE} bytes")

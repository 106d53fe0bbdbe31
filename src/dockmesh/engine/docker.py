"""`EngineBackend` over a real Docker engine: the only module that imports docker-py.

Everything it returns is a model value; every failure leaves it as `EngineError` (or
`EngineNotFound` / `EngineConflict`) carrying the engine's own explanation in one line.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any
from urllib.parse import urlsplit

import docker
import docker.errors
import docker.transport
import docker.types
import requests.exceptions

from dockmesh.engine.backend import EngineRef, ImageInfo
from dockmesh.engine.convert import (
    agrees_with_list,
    container_from_api,
    list_signature,
    network_from_api,
)
from dockmesh.engine.unixhttp import UnixGets
from dockmesh.errors import EngineConflict, EngineError, EngineNotFound
from dockmesh.model.config import ContainerConfig, EndpointConfig, NetworkConfig, VolumeConfig
from dockmesh.model.topology import Container, EngineInfo, EngineState, Network

log = logging.getLogger(__name__)

# Inspecting containers is the slow part of a snapshot; the engine serves requests in parallel.
_INSPECT_WORKERS = 8
# ops.apply.STOP_PARALLEL: the stops of a `down`, each a request waiting a grace period.
_STOP_PARALLEL = 64


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


@contextlib.contextmanager
def _mapped(ref: EngineRef, what: str) -> Iterator[None]:
    """docker-py's and requests' exceptions → dockmesh's, with the engine's reason."""
    try:
        yield
    except docker.errors.NotFound as e:
        raise EngineNotFound(f"{what}: {_one_line(e.explanation or str(e))}") from e
    except docker.errors.APIError as e:
        detail = _one_line(e.explanation or str(e))
        # The engine answers 409 for a name in use and 403 for a state it will not change
        # (a network with active endpoints, an overlapping pool, an address in use).
        if e.status_code in (403, 409) or "in use" in detail or "already exists" in detail:
            raise EngineConflict(f"{what}: {detail}") from e
        raise EngineError(f"{what}: {detail}") from e
    except (docker.errors.DockerException, requests.exceptions.RequestException, OSError) as e:
        where = f"engine {ref.name} ({ref.url})"
        prefix = "" if what == f"engine {ref.name}" else f"{what}: "
        raise EngineError(f"{prefix}{where} does not answer: {_reason(e)}") from e


def _reason(e: BaseException) -> str:
    """The innermost system error's text ("No such file or directory", "Connection refused"),
    else the exception's own line: requests nests the one a user can act on deep inside."""
    seen: set[int] = set()
    stack: list[object] = [e]
    while stack:
        x = stack.pop()
        if id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, OSError) and x.strerror:
            return x.strerror
        if isinstance(x, BaseException):
            stack.extend(x.args)
            stack.extend(c for c in (x.__cause__, x.__context__) if c is not None)
    return _one_line(str(e))


class DockerEvents:
    """The engine's event stream; `close()` from another thread ends the iteration."""

    def __init__(self, raw: Any, ref: EngineRef) -> None:
        self._raw = raw
        self._ref = ref
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[dict[str, Any]]:
        try:
            for event in self._raw:
                if isinstance(event, dict):
                    yield event
                else:  # the engine sends objects; anything else is not ours to interpret
                    log.warning("engine %s sent a non-object event: %.80r", self._ref.name, event)
        except Exception as e:
            if self._closed.is_set():
                log.debug("event stream of %s closed: %s", self._ref.name, e)
                return
            raise EngineError(f"engine {self._ref.name}: event stream broke: {e}") from e

    def close(self) -> None:
        self._closed.set()
        try:
            self._raw.close()
        except Exception as e:  # closing a half-dead connection may itself fail
            log.debug("closing the event stream of %s: %s", self._ref.name, e)


class DockerLogs:
    """A container's output as the engine sends it (stdout and stderr interleaved, in chunks
    that need not end at a line); `close()` from another thread ends the iteration."""

    def __init__(self, raw: Any, client: Any, what: str) -> None:
        self._raw, self._client, self._what = raw, client, what
        self._closed = threading.Event()

    def __iter__(self) -> Iterator[bytes]:
        try:
            for chunk in self._raw:
                yield bytes(chunk)
        except Exception as e:
            if self._closed.is_set():
                return
            raise EngineError(f"{self._what}: the stream broke: {_reason(e)}") from e

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(Exception):  # closing a half-dead connection may fail
            self._raw.close()
        with contextlib.suppress(Exception):
            self._client.close()


def _one_pool(client: Any) -> None:
    """One connection pool for every request over a unix socket.

    docker-py's unix-socket adapter keys its pools by each request's whole URL and keeps the
    25 most recently used, closing the one it drops. A snapshot inspects every container
    from several threads: with more than 25 containers a pool could be dropped and closed
    between a thread getting it and using it, and that inspect failed as "Pool is closed"
    (`up` exited 1 once under the test suite on an engine with 200 containers). Keyed by
    the socket alone, requests share one pool of `max_pool_size` connections, reused."""
    adapter = client.adapters.get("http+docker://")
    if not isinstance(adapter, docker.transport.UnixHTTPAdapter):
        return  # tcp:// and the like pool by host already
    by_url = adapter.get_connection
    base = client.base_url

    def get_connection(url: str, proxies: Any = None) -> Any:
        return by_url(base, proxies)

    adapter.get_connection = get_connection


class DockerBackend:
    """A connection to one engine (docker-py's low-level API client).

    Making one does not reach the engine: the client connects on first use (docker-py asks
    the engine its API version as it is made), so a backend can be made while the engine is
    down — the agent starts that way and retries — and the first call reports the engine's
    absence as EngineError, as every later call would."""

    def __init__(self, ref: EngineRef, timeout: float = 30.0) -> None:
        self.ref = ref
        self._timeout = timeout
        self._client: Any = None
        self._connecting = threading.Lock()
        self._info: EngineInfo | None = None
        # Container id → (its list signature, the container) as the last snapshot read them.
        self._listed: dict[str, tuple[tuple[Any, ...], Container]] = {}
        # Single inspects (the watcher's re-reads, a connection kept per reading thread) over
        # plain http.client on a unix socket: docker-py cost ~2.5 ms of CPU per inspect, and a
        # container's start is read up to three times (create, connect, start).
        self._gets: UnixGets | None = None
        if ref.url.startswith("unix://"):
            self._gets = UnixGets(ref.url.removeprefix("unix://"), timeout)

    @property
    def _api(self) -> Any:
        client = self._client
        if client is None:
            with self._connecting:
                if self._client is None:
                    with _mapped(self.ref, f"engine {self.ref.name}"):
                        self._client = docker.APIClient(
                            base_url=self.ref.url,
                            version="auto",
                            timeout=self._timeout,
                            # + the watcher's re-readers (8), event streams and callers,
                            # + the stops of a `down` (ops.apply.STOP_PARALLEL): a connection
                            # beyond the pool is made and thrown away each time, with a
                            # urllib3 warning on stderr ("Connection pool is full").
                            max_pool_size=_INSPECT_WORKERS + 16 + _STOP_PARALLEL,
                        )
                        _one_pool(self._client)
                client = self._client
        return client

    def _m(self, what: str) -> contextlib.AbstractContextManager[None]:
        return _mapped(self.ref, what)

    @staticmethod
    def _short(ref: str) -> str:
        """A full id shortened as the docker CLI shows it; names as they are."""
        return ref[:12] if len(ref) == 64 and all(c in "0123456789abcdef" for c in ref) else ref

    # --- reading -------------------------------------------------------------------------

    def info(self) -> EngineInfo:
        if self._info is None:
            with self._m(f"engine {self.ref.name}"):
                version = self._api.version()
            self._info = EngineInfo(self.ref.name, self.ref.url, str(version.get("Version", "")))
        return self._info

    def ping(self, timeout_s: float = 1.0) -> None:
        """Returns once the engine answers `GET /_ping` within `timeout_s`, else raises
        EngineError: an event stream that stays silent says nothing of an engine that has
        stopped answering. A connection of its own each time, never one a read is using."""
        where = f"engine {self.ref.name} ({self.ref.url})"
        if self.ref.url.startswith("unix://"):
            gets = UnixGets(self.ref.url.removeprefix("unix://"), timeout_s)
            try:
                status, _ = gets.get("/_ping")
            except (OSError, http.client.HTTPException) as e:
                raise EngineError(f"{where} does not answer: {_reason(e)}") from e
            finally:
                gets.close()
            if status != 200:
                raise EngineError(f"{where} answered its ping with {status}")
            return
        with self._m(f"engine {self.ref.name}"):
            self._api._get(self._api._url("/_ping"), timeout=timeout_s).raise_for_status()

    def swarm_active(self) -> bool:
        with self._m(f"engine {self.ref.name}"):
            info = self._api.info()
        return bool((info.get("Swarm") or {}).get("LocalNodeState") == "active")

    def network(self, network_id: str) -> Network | None:
        try:
            with self._m(f"inspect network {network_id}"):
                return network_from_api(self._api.inspect_network(network_id), self.ref.name)
        except EngineNotFound:
            return None

    def container(self, container_id: str) -> Container | None:
        if self._gets is not None:
            return self._inspect_with(self._gets, container_id)
        try:
            with self._m(f"inspect container {self._short(container_id)}"):
                return container_from_api(self._api.inspect_container(container_id), self.ref.name)
        except EngineNotFound:
            return None

    def snapshot(self) -> EngineState:
        """Every network and container of the engine. Networks come from one list call (it
        carries all we need); containers need an inspect each (pid, aliases), run in parallel
        — on a unix socket through plain `http.client` connections (`UnixGets`: a tenth of
        docker-py's cost per call) — except those the containers' list shows unchanged since
        this backend's last snapshot (`list_signature`): at hundreds of containers the
        inspects were all of a resync's time."""
        state = EngineState(self.info())
        with self._m(f"engine {self.ref.name}"):
            for raw in self._api.networks():
                n = network_from_api(raw, self.ref.name)
                state.networks[n.id] = n
            listed = self._api.containers(all=True)
        # Unchanged since the last snapshot, by what the list says: not inspected again (a
        # resync after an outage then reads only what changed meanwhile).
        last = self._listed
        memo: dict[str, tuple[tuple[Any, ...], Container]] = {}
        ids: list[str] = []
        signatures: dict[str, tuple[Any, ...] | None] = {}
        for raw in listed:
            cid, sig = raw["Id"], list_signature(raw)
            known = last.get(cid)
            if sig is not None and known is not None and known[0] == sig:
                state.containers[cid] = memo.setdefault(cid, known)[1]
            else:
                ids.append(cid)
                signatures[cid] = sig
        inspect = self.container
        gets: UnixGets | None = None
        if self.ref.url.startswith("unix://"):
            gets = UnixGets(self.ref.url.removeprefix("unix://"), self._timeout)
            inspect = partial(self._inspect_with, gets)
        try:
            with ThreadPoolExecutor(_INSPECT_WORKERS) as pool:
                for c in pool.map(inspect, ids):
                    if c is not None:  # removed while we looked
                        state.containers[c.id] = c
                        sig = signatures.get(c.id)
                        # Kept only when the inspect is what the list said (not changed
                        # between the two requests): else it would stand for a later state.
                        if sig is not None and agrees_with_list(sig, c):
                            memo[c.id] = (sig, c)
        finally:
            if gets is not None:
                gets.close()
        self._listed = memo
        return state

    def _inspect_with(self, gets: UnixGets, container_id: str) -> Container | None:
        path = urlsplit(self._api._url("/containers/{0}/json", container_id)).path
        what = f"inspect container {self._short(container_id)}"
        try:
            raw = gets.get_json(path)
        except EngineError as e:  # the engine's reason, as docker-py's errors give it
            raise EngineError(f"{what}: {e}") from e
        except (OSError, http.client.HTTPException) as e:
            where = f"engine {self.ref.name} ({self.ref.url})"
            raise EngineError(f"{what}: {where} does not answer: {_reason(e)}") from e
        return None if raw is None else container_from_api(raw, self.ref.name)

    def events(self) -> DockerEvents:
        """Opens the event stream now: events from this moment on are buffered by the
        connection, so a snapshot taken after this call misses nothing."""
        with self._m(f"engine {self.ref.name}: events"):
            raw = self._api.events(decode=True, filters={"type": ["container", "network"]})
        return DockerEvents(raw, self.ref)

    def close(self) -> None:
        if self._gets is not None:
            self._gets.close()
        if self._client is not None:
            self._client.close()

    # --- networks ------------------------------------------------------------------------

    def create_network(self, config: NetworkConfig) -> str:
        ipam = None
        if config.ipam:
            pools = [
                docker.types.IPAMPool(
                    subnet=p.subnet,
                    gateway=p.gateway,
                    iprange=p.ip_range,
                    aux_addresses=dict(p.aux_addresses) or None,
                )
                for p in config.ipam
            ]
            ipam = docker.types.IPAMConfig(pool_configs=pools)
        with self._m(f"create network {config.name}"):
            res = self._api.create_network(
                config.name,
                driver=config.driver,
                options=dict(config.options) or None,
                ipam=ipam,
                internal=config.internal,
                attachable=config.attachable or None,
                enable_ipv6=config.enable_ipv6 or None,
                labels=dict(config.labels),
                check_duplicate=True,
            )
        return str(res["Id"])

    def remove_network(self, ref: str) -> None:
        with contextlib.suppress(EngineNotFound), self._m(f"remove network {ref}"):
            self._api.remove_network(ref)

    # --- volumes -------------------------------------------------------------------------

    def volumes(self, label: str | None = None) -> dict[str, dict[str, str]]:
        """The engine's volumes (those carrying `label`, `key=value`): name → labels."""
        with self._m("list volumes"):
            res = self._api.volumes(filters={"label": label} if label else None)
        return {
            str(v["Name"]): dict(v.get("Labels") or {}) for v in (res or {}).get("Volumes") or []
        }

    def create_volume(self, config: VolumeConfig) -> str:
        with self._m(f"create volume {config.name}"):
            res = self._api.create_volume(
                config.name,
                driver=config.driver,
                driver_opts=dict(config.options) or None,
                labels=dict(config.labels),
            )
        return str(res.get("Name", config.name))

    def remove_volume(self, name: str) -> None:
        """Removes it; absent already is fine. EngineConflict while a container uses it."""
        with contextlib.suppress(EngineNotFound), self._m(f"remove volume {name}"):
            self._api.remove_volume(name)

    # --- containers ----------------------------------------------------------------------

    def create_container(self, config: ContainerConfig) -> str:
        api = self._api
        port_bindings: dict[str, list[tuple[str, int] | tuple[str] | int | None]] = {}
        exposed: list[int | tuple[int, str]] = []
        for p in config.ports:
            exposed.append(
                p.container_port if p.protocol == "tcp" else (p.container_port, p.protocol)
            )
            binding: tuple[str, int] | tuple[str] | int | None
            if p.host_ip is not None:
                binding = (p.host_ip, p.host_port) if p.host_port else (p.host_ip,)
            else:
                binding = p.host_port
            port_bindings.setdefault(p.key(), []).append(binding)
        first = config.networks[0] if config.networks else None
        # No networks and no network_mode: the engine's default bridge, as with `docker run`.
        network_mode = config.network_mode or (first.network if first else "bridge")
        hc = None
        if config.healthcheck is not None:
            h = config.healthcheck
            hc = docker.types.Healthcheck(
                test=list(h.test),
                interval=h.interval_ns,
                timeout=h.timeout_ns,
                retries=h.retries,
                start_period=h.start_period_ns,
            )
        restart = None
        if config.restart is not None:
            policy, _, count = config.restart.partition(":")
            restart = {"Name": policy, "MaximumRetryCount": int(count or 0)}
        tmpfs = dict(t.partition(":")[::2] for t in config.tmpfs)
        mounts = [
            docker.types.Mount(m.target, m.source or None, type="volume", read_only=m.read_only)
            for m in config.mounts
            if m.type == "volume"
        ]
        # Binds, not bind mounts: the engine makes a missing host folder, as Compose does.
        binds = [
            f"{m.source}:{m.target}:{'ro' if m.read_only else 'rw'}"
            for m in config.mounts
            if m.type == "bind"
        ]
        with self._m(f"create container {config.name}"):
            host_config = api.create_host_config(
                port_bindings=port_bindings or None,
                network_mode=network_mode,
                restart_policy=restart,
                cap_add=list(config.cap_add) or None,
                cap_drop=list(config.cap_drop) or None,
                tmpfs=tmpfs or None,
                init=config.init,
                mem_limit=config.memory_bytes,
                nano_cpus=config.nano_cpus,
                mounts=mounts or None,
                binds=binds or None,
            )
            networking = None
            if first is not None:
                networking = api.create_networking_config({first.network: self._endpoint(first)})
            res = api.create_container(
                config.image,
                command=list(config.command) if config.command is not None else None,
                entrypoint=list(config.entrypoint) if config.entrypoint is not None else None,
                name=config.name,
                hostname=config.hostname if config.network_mode != "host" else None,
                environment=dict(config.environment),
                labels=dict(config.labels),
                detach=True,
                ports=exposed or None,
                host_config=host_config,
                networking_config=networking,
                healthcheck=hc,
                user=config.user,
                working_dir=config.working_dir,
                stop_signal=config.stop_signal,
                stop_timeout=config.stop_grace_s,
            )
        return str(res["Id"])

    def _endpoint(self, e: EndpointConfig) -> Any:
        return self._api.create_endpoint_config(
            aliases=list(e.aliases) or None,
            ipv4_address=e.ipv4_address,
            ipv6_address=e.ipv6_address,
        )

    def connect(self, container: str, endpoint: EndpointConfig) -> None:
        with self._m(f"connect {self._short(container)} to {endpoint.network}"):
            self._api.connect_container_to_network(
                container,
                endpoint.network,
                aliases=list(endpoint.aliases) or None,
                ipv4_address=endpoint.ipv4_address,
                ipv6_address=endpoint.ipv6_address,
            )

    def disconnect(self, container: str, network: str, force: bool = False) -> None:
        with self._m(f"disconnect {self._short(container)} from {network}"):
            self._api.disconnect_container_from_network(container, network, force=force)

    def start(self, container: str) -> None:
        with self._m(f"start {self._short(container)}"):
            self._api.start(container)

    def stop(self, container: str, timeout_s: int = 10) -> None:
        with self._m(f"stop {self._short(container)}"):
            self._api.stop(container, timeout=timeout_s)

    def remove_container(self, container: str) -> None:
        what = f"remove container {self._short(container)}"
        with contextlib.suppress(EngineNotFound), self._m(what):
            self._api.remove_container(container, force=True, v=True)

    def wait(self, container: str, timeout_s: float) -> int:
        with self._m(f"wait for {self._short(container)}"):
            res = self._api.wait(container, timeout=timeout_s)
        return int(res.get("StatusCode", -1))

    def logs(self, container: str) -> bytes:
        with self._m(f"logs of {self._short(container)}"):
            return bytes(self._api.logs(container))

    def log_stream(
        self,
        container: str,
        follow: bool = False,
        tail: int | None = None,
        timestamps: bool = False,
    ) -> DockerLogs:
        """`docker logs [-f] [--tail N] [-t]` as a stream. A client of its own, without the
        read timeout: a container quiet for a while is not an error while following."""
        what = f"logs of {self._short(container)}"
        with self._m(what):
            client = docker.APIClient(
                base_url=self.ref.url, version=self._api.api_version, timeout=None
            )
            raw = client.logs(
                container,
                stream=True,
                follow=follow,
                tail="all" if tail is None else tail,
                timestamps=timestamps,
            )
        return DockerLogs(raw, client, what)

    def put_archive(self, container: str, path: str, tar: bytes) -> None:
        with self._m(f"copy into {self._short(container)}"):
            ok = self._api.put_archive(container, path, tar)
        if not ok:
            raise EngineError(f"copy into {container}: the engine refused the archive")

    # --- images --------------------------------------------------------------------------

    def image(self, ref: str) -> ImageInfo | None:
        try:
            with self._m(f"inspect image {ref}"):
                raw = self._api.inspect_image(ref)
        except EngineNotFound:
            return None
        labels = (raw.get("Config") or {}).get("Labels") or {}
        return ImageInfo(str(raw["Id"]), dict(labels))

    def import_image(
        self, source: bytes | str, repository: str, tag: str, changes: Sequence[str]
    ) -> None:
        with self._m(f"import {repository}:{tag}"):
            if isinstance(source, bytes):
                self._api.import_image_from_data(
                    source, repository=repository, tag=tag, changes=list(changes)
                )
            else:
                self._api.import_image_from_file(
                    source, repository=repository, tag=tag, changes=list(changes)
                )

    def commit(
        self, container: str, repository: str, tag: str, message: str, conf: Mapping[str, Any]
    ) -> str:
        with self._m(f"commit {repository}:{tag}"):
            res = self._api.commit(
                container, repository=repository, tag=tag, message=message, conf=dict(conf)
            )
        return str(res.get("Id", ""))

    def remove_image(self, ref: str) -> None:
        with self._m(f"remove image {ref}"):
            self._api.remove_image(ref)

"""DockerBackend without an engine: made at once, the engine's absence reported on first use."""

from __future__ import annotations

import http.server
import json
import socketserver
import threading
from pathlib import Path
from typing import Any, cast

import pytest

from dockmesh.engine.backend import EngineRef
from dockmesh.engine.docker import DockerBackend
from dockmesh.errors import EngineError
from tests.unit.model.test_topology import CTR, NET


def test_a_backend_is_made_while_the_engine_is_absent_and_says_so_when_used(
    tmp_path: Path,
) -> None:
    backend = DockerBackend(EngineRef("gone", f"unix://{tmp_path}/docker.sock"))
    for call in (backend.snapshot, backend.events, lambda: backend.container("c")):
        with pytest.raises(EngineError, match=r"engine gone \(unix://.*\) does not answer"):
            call()
    backend.close()  # never connected: nothing to close, no error


# --- a snapshot over a unix socket, against a canned engine ----------------------------------


class CannedEngine(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def listed(c: dict[str, Any]) -> dict[str, Any]:
    """A container's entry in the engine's list, from its inspect (the fields the list has)."""
    health = (c["State"].get("Health") or {}).get("Status")
    return {
        "Id": c["Id"],
        "Names": [c["Name"]],
        "State": c["State"]["Status"],
        "Status": "Up 2 minutes" + (f" ({health})" if health else ""),
        "NetworkSettings": {"Networks": c["NetworkSettings"]["Networks"]},
        "Ports": [],
    }


inspected: list[str] = []


def canned_engine(path: Path, containers: dict[str, dict[str, Any]]) -> CannedEngine:
    """Answers what a snapshot asks (API 1.41): the version, the networks, the containers'
    list and each container's inspect (404 for one that is gone, 500 for id "b0b0…")."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: Any) -> None:
            pass

        def address_string(self) -> str:  # a unix socket has no host and port
            return "unix"

        def do_GET(self) -> None:
            route = self.path.split("?")[0].removeprefix("/v1.41")
            status, doc = 200, cast(Any, None)
            if route == "/_ping":
                doc = "OK"
            elif route == "/version":
                doc = {"Version": "20.10.24", "ApiVersion": "1.41"}
            elif route == "/networks":
                doc = [NET]
            elif route == "/containers/json":
                doc = [listed(c) for c in containers.values()] + [{"Id": "gone" * 16}]
            elif route.startswith("/containers/") and route.endswith("/json"):
                cid = route.split("/")[2]
                inspected.append(cid)
                doc = containers.get(cid)
                if doc is None:
                    status, doc = 404, {"message": f"No such container: {cid}"}
                elif cid.startswith("b0b0"):
                    status, doc = 500, {"message": "the engine is on fire"}
            else:
                status, doc = 404, {"message": "page not found"}
            body = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = CannedEngine(str(path), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_a_snapshot_over_a_unix_socket_reads_what_docker_py_reads(tmp_path: Path) -> None:
    containers = {
        f"{i:02d}" * 32: {**CTR, "Id": f"{i:02d}" * 32, "Name": f"/c{i}"} for i in range(40)
    }
    server = canned_engine(tmp_path / "docker.sock", containers)
    backend = DockerBackend(EngineRef("canned", f"unix://{tmp_path}/docker.sock"))
    try:
        state = backend.snapshot()
        assert sorted(state.containers) == sorted(containers)  # the one gone meanwhile left out
        for cid, c in state.containers.items():
            assert c == backend.container(cid)  # docker-py's inspect, one by one
        assert list(state.networks) == [NET["Id"]]
    finally:
        backend.close()
        server.shutdown()
        server.server_close()


def test_a_snapshot_fails_as_engine_errors_say_with_the_engines_reason(tmp_path: Path) -> None:
    server = canned_engine(tmp_path / "docker.sock", {"b0" * 32: {**CTR, "Id": "b0" * 32}})
    backend = DockerBackend(EngineRef("canned", f"unix://{tmp_path}/docker.sock"))
    try:
        with pytest.raises(
            EngineError, match=r"inspect container b0b0b0b0b0b0: the engine is on fire$"
        ):
            backend.snapshot()
    finally:
        backend.close()
        server.shutdown()
        server.server_close()


def test_a_ping_returns_while_the_engine_answers_and_raises_within_its_timeout_after(
    tmp_path: Path,
) -> None:
    import socket
    import time

    server = canned_engine(tmp_path / "docker.sock", {})
    backend = DockerBackend(EngineRef("canned", f"unix://{tmp_path}/docker.sock"))
    try:
        backend.ping(1.0)
    finally:
        server.shutdown()
        server.server_close()
    with pytest.raises(EngineError, match=r"engine canned \(unix://.*\) does not answer"):
        backend.ping(1.0)
    # An engine that takes the connection and never answers (frozen): an error in time.
    frozen = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    frozen.bind(str(tmp_path / "frozen.sock"))
    frozen.listen(4)
    stuck = DockerBackend(EngineRef("frozen", f"unix://{tmp_path}/frozen.sock"))
    t0 = time.monotonic()
    with pytest.raises(EngineError, match=r"does not answer: timed out"):
        stuck.ping(0.3)
    assert time.monotonic() - t0 < 2
    frozen.close()


def test_a_second_snapshot_inspects_only_what_the_list_shows_changed(tmp_path: Path) -> None:
    import copy

    containers = {
        f"{i:02d}" * 32: {**copy.deepcopy(CTR), "Id": f"{i:02d}" * 32, "Name": f"/c{i}"}
        for i in range(20)
    }
    server = canned_engine(tmp_path / "docker.sock", containers)
    backend = DockerBackend(EngineRef("canned", f"unix://{tmp_path}/docker.sock"))
    try:
        first = backend.snapshot()
        inspected.clear()
        assert backend.snapshot().containers == first.containers
        assert inspected == ["gone" * 16]  # listed, gone when asked: asked again
        # Restarted (a new endpoint, a new pid), renamed, turned unhealthy: read again.
        a, b, c = (f"{i:02d}" * 32 for i in (1, 2, 3))
        net = next(iter(containers[a]["NetworkSettings"]["Networks"].values()))
        net["EndpointID"] = "e2"
        containers[a]["State"]["Pid"] = 4321
        containers[b]["Name"] = "/renamed"
        containers[c]["State"]["Health"] = {"Status": "unhealthy"}
        inspected.clear()
        third = backend.snapshot()
        assert sorted(inspected) == sorted([a, b, c, "gone" * 16])
        assert third.containers[a].pid == 4321 and third.containers[b].name == "renamed"
        assert third.containers[c].health == "unhealthy"
        fresh = DockerBackend(EngineRef("canned", f"unix://{tmp_path}/docker.sock"))
        assert fresh.snapshot().containers == third.containers
        fresh.close()
    finally:
        backend.close()
        server.shutdown()
        server.server_close()


class RacyContainers(dict[str, dict[str, Any]]):
    """The engine's containers where the list is read before a change the inspects see:
    `values()` (the list) answers `listed`, `get()` (an inspect) the dict itself."""

    listed: dict[str, dict[str, Any]]

    def values(self) -> Any:
        return self.listed.values()


def test_a_container_that_changed_between_the_list_and_its_inspect_is_read_again(
    tmp_path: Path,
) -> None:
    import copy

    cid = "ad" * 32
    running = {**copy.deepcopy(CTR), "Id": cid, "Name": "/racer"}
    running["State"] = {"Status": "running", "Running": True, "Pid": 999}
    exited = copy.deepcopy(running)
    exited["State"] = {"Status": "exited", "Running": False, "Pid": 0}
    for ep in exited["NetworkSettings"]["Networks"].values():
        ep.update(EndpointID="", IPAddress="", MacAddress="")
    containers = RacyContainers({cid: running})
    containers.listed = {cid: exited}  # listed exited, started before its inspect
    server = canned_engine(tmp_path / "docker.sock", containers)
    backend = DockerBackend(EngineRef("canned", f"unix://{tmp_path}/docker.sock"))
    try:
        assert backend.snapshot().containers[cid].pid == 999  # the inspect's word
        # It exits again (an outage's resync): listed as at first, and now truly so.
        containers[cid] = exited
        again = backend.snapshot().containers[cid]
        assert (again.state, again.pid) == ("exited", None), "a dead container kept running"
    finally:
        backend.close()
        server.shutdown()
        server.server_close()

"""LabClient's questions, asked of servers in this process's own namespace (a pid of our
own stands for a lab host's): the agent's rows become (node, instance id) — its own under
the host's name, the others' under `Meta.node` — and DNS answers become their addresses."""

from __future__ import annotations

import json
import os
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import dns.message
import dns.rrset
import pytest

from dockmesh.testing.lab import LabClient, wait_for

ROWS = [
    {"Service": {"ID": "web-1", "Meta": {}}},
    {"Service": {"ID": "host2/web-2", "Meta": {"node": "host2"}}},
]


class Agent(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps(ROWS if self.path == "/v1/health/service/web" else []).encode()
        self.send_response(200)
        self.send_header("X-Consul-KnownLeader", "false")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def client() -> Iterator[LabClient]:
    c = LabClient("unit")
    yield c
    c.close()


def test_instances_are_named_by_the_node_that_runs_them(client: LabClient) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Agent)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        port = server.server_address[1]
        got = client.instances("host1", ["web", "none"], pid=os.getpid(), port=port)
        assert got == {("host1", "web-1"), ("host2", "web-2")}
        code, headers, _ = client.http(
            "host1", "/v1/health/service/none", pid=os.getpid(), port=port
        )
        assert code == 200 and headers["X-Consul-KnownLeader"] == "false"
    finally:
        server.shutdown()
        server.server_close()


def test_dns_gives_the_addresses_or_none_when_nothing_answers(client: LabClient) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]

    def answer_once() -> None:
        wire, peer = sock.recvfrom(512)
        q = dns.message.from_wire(wire)
        r = dns.message.make_response(q)
        r.answer.append(
            dns.rrset.from_text(q.question[0].name, 5, "IN", "A", "10.0.0.7", "10.0.0.3")
        )
        sock.sendto(r.to_wire(), peer)

    t = threading.Thread(target=answer_once, daemon=True)
    t.start()
    try:
        got = client.dns("host1", "web.service.dockmesh", pid=os.getpid(), port=port)
        assert got == ["10.0.0.3", "10.0.0.7"]
        t.join(timeout=5)
        # Nobody answers now: None, not an empty answer.
        assert client.dns("host1", "web.service.dockmesh", 0.2, pid=os.getpid(), port=port) is None
    finally:
        sock.close()


def test_wait_for_says_how_long_or_fails_after_the_limit() -> None:
    assert wait_for(lambda: True, 1) < 0.5
    with pytest.raises(AssertionError, match=r"within 0\.05 s"):
        wait_for(lambda: False, 0.05)

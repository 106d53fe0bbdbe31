"""Questions to Docker's embedded DNS as a container asks them (dockmesh.host.dockerdns), asked
of a stand-in resolver on 127.0.0.11:53 inside a namespace made by `unshare -n` (no engine;
root is needed to enter it): every question sent at once, answers matched by id (a stray or
repeated one ignored), one timeout for all, one result per name in order."""

from __future__ import annotations

import os
import random
import shutil
import socket
import threading
from collections.abc import Iterator

import dns.message
import dns.rcode
import dns.rrset
import pytest

from dockmesh.host.dockerdns import Resolved, resolve_in
from dockmesh.host.netns import NetnsError, NetnsPool
from dockmesh.model.topology import DOCKER_DNS

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
ANSWERS = {"web.": ["10.0.0.3", "10.0.0.2"], "db.": ["10.0.1.2"]}


def _bound() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((DOCKER_DNS, 53))
    return s


@pytest.fixture
def resolver(ns_pid: int) -> Iterator[list[str]]:
    """Docker's resolver as seen from inside: A records for web and db, NXDOMAIN for other
    names, silence for `slow.`; before each answer a stray reply with another id, after it
    the same answer again. Yields the names asked, in order."""
    with NetnsPool() as pool:
        server = pool.run(ns_pid, _bound)
    asked: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.05)
        while not stop.is_set():
            try:
                data, peer = server.recvfrom(4096)
            except OSError:
                continue
            q = dns.message.from_wire(data)
            name = q.question[0].name.to_text()
            asked.append(name)
            if name == "slow.":
                continue
            r = dns.message.make_response(q)
            if name in ANSWERS:
                r.answer.append(dns.rrset.from_text_list(name, 60, "IN", "A", ANSWERS[name]))
            else:
                r.set_rcode(dns.rcode.NXDOMAIN)
            stray = dns.message.make_response(q)
            stray.id = (q.id + 30000) % 65536  # no question of this test has it
            for reply in (stray, r, r):
                server.sendto(reply.to_wire(), peer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        yield asked
    finally:
        stop.set()
        t.join()
        server.close()


def test_answers_are_matched_to_their_names(ns_pid: int, resolver: list[str]) -> None:
    with NetnsPool() as pool:
        got = resolve_in(
            pool, ns_pid, ["web", "nosuch", "db", "slow"], timeout_s=1.0, rng=random.Random(7)
        )
    assert got == (
        Resolved("web", ("10.0.0.2", "10.0.0.3"), "NOERROR"),
        Resolved("nosuch", (), "NXDOMAIN"),
        Resolved("db", ("10.0.1.2",), "NOERROR"),
        Resolved("slow", None, ""),
    )
    assert sorted(resolver) == ["db.", "nosuch.", "slow.", "web."]


def test_two_names_drawing_the_same_id_are_still_two_questions(
    ns_pid: int, resolver: list[str]
) -> None:
    class Same(random.Random):
        def randrange(self, *args: object, **kw: object) -> int:
            return 4242

    with NetnsPool() as pool:
        got = resolve_in(pool, ns_pid, ["web", "db"], timeout_s=1.0, rng=Same())
    assert [r.addresses for r in got] == [("10.0.0.2", "10.0.0.3"), ("10.0.1.2",)]


def test_no_names_no_socket_and_a_namespace_that_is_gone() -> None:
    with NetnsPool() as pool:
        assert resolve_in(pool, 1, []) == ()
        with open("/proc/sys/kernel/pid_max") as f:
            gone = int(f.read()) + 1
        with pytest.raises(NetnsError):
            resolve_in(pool, gone, ["web"])

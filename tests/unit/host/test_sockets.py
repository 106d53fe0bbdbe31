"""Listening sockets read from /proc/<pid>/net, on this test's own process (its namespace is
the host's: nothing to enter)."""

from __future__ import annotations

import os
import socket

from dockmesh.host.sockets import listening


def test_a_listener_and_a_bound_udp_socket_are_read_a_connected_one_is_not() -> None:
    with (
        socket.socket() as tcp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as connected,
    ):
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        connected.connect(udp.getsockname())
        found = listening(os.getpid())
        assert found is not None
        seen = {(x.proto, x.address, x.port) for x in found}
        assert ("tcp", "127.0.0.1", tcp.getsockname()[1]) in seen
        assert ("udp", "127.0.0.1", udp.getsockname()[1]) in seen
        assert ("udp", "127.0.0.1", connected.getsockname()[1]) not in seen
        only_tcp = listening(os.getpid(), ("tcp",))
        assert only_tcp is not None and {x.proto for x in only_tcp} <= {"tcp"}


def test_a_process_that_is_gone_has_nothing_to_read() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read()) + 1  # no process can have it
    assert listening(beyond) is None

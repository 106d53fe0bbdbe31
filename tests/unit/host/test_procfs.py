"""Reading /proc/<pid>/net/* (dockmesh.host.procfs) on this test's own process: the whole file
however long, as the kernel writes it, and OSError when the process is gone."""

from __future__ import annotations

import os
import socket

import pytest

from dockmesh.host.procfs import read_proc_net

ME = os.getpid()


def test_the_text_is_the_file_s() -> None:
    with open(f"/proc/{ME}/net/dev") as f:
        assert read_proc_net(ME, "dev").splitlines()[:2] == f.read().splitlines()[:2]


def test_a_file_longer_than_one_read_is_read_to_its_end() -> None:
    # /proc/<pid>/net/tcp gives a page or so per read: 300 listeners need several.
    socks = []
    try:
        for _ in range(300):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            s.listen()
            socks.append(s)
        text = read_proc_net(ME, "tcp")
        assert len(text) > 65536 // 2
        for s in socks:
            assert f":{s.getsockname()[1]:04X} " in text
    finally:
        for s in socks:
            s.close()


def test_a_process_that_is_gone() -> None:
    with open("/proc/sys/kernel/pid_max") as f:
        beyond = int(f.read()) + 1
    with pytest.raises(FileNotFoundError):
        read_proc_net(beyond, "dev")

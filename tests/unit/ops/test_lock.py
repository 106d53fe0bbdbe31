"""The project lock (dockmesh.ops.lock): one run at a time per engine and project, a second one
told why it waits, one engine however its URL is spelled, and a bounded wait."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.ops import lock
from dockmesh.ops.lock import engine_key, project_lock


def test_the_project_lock_serialises_runs() -> None:
    order: list[str] = []
    waited: list[str] = []
    inside = threading.Event()

    def first() -> None:
        with project_lock("memory://t", f"lk{id(order)}"):
            inside.set()
            time.sleep(0.3)
            order.append("first")

    t = threading.Thread(target=first)
    t.start()
    inside.wait(5)
    with project_lock("memory://t", f"lk{id(order)}", waited.append):
        order.append("second")
    t.join()
    assert order == ["first", "second"]
    assert waited and "waiting for another dockmesh run" in waited[0]
    # another project is not held up
    with project_lock("memory://t", f"other{id(order)}", waited.append):
        pass
    assert len(waited) == 1


def test_one_engine_is_one_lock_however_its_url_is_spelled() -> None:
    from dockmesh.ops.lock import engine_key

    spellings = ["unix:///var/run/docker.sock", "unix:////var/run/docker.sock"]
    assert len({engine_key(u) for u in spellings}) == 1
    assert engine_key("tcp://Host:2375") == engine_key("tcp://host:2375")
    assert engine_key("tcp://host:2375") != engine_key("tcp://host:2376")


def test_a_run_that_waits_too_long_gives_up_naming_the_holder() -> None:
    name = f"lk-timeout{os.getpid()}-{id(lock)}"
    inside, release = threading.Event(), threading.Event()

    def holder() -> None:
        with project_lock("memory://t", name):
            inside.set()
            release.wait(10)

    t = threading.Thread(target=holder)
    t.start()
    try:
        assert inside.wait(10)
        with (
            pytest.raises(TimeoutError, match=rf"still locked by pid {os.getpid()} after 0 s"),
            project_lock("memory://t", name, timeout_s=0.2),
        ):
            pass
    finally:
        release.set()
        t.join()


def test_the_lock_is_released_when_the_run_fails() -> None:
    name = f"lk-fail{os.getpid()}-{id(lock)}"
    with pytest.raises(RuntimeError), project_lock("memory://t", name):
        raise RuntimeError("the run failed")
    waited: list[str] = []
    with project_lock("memory://t", name, waited.append):
        pass
    assert waited == []


def test_the_lock_directory_is_the_first_writable_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("")  # a file, not a directory: makedirs fails under it
    usable = tmp_path / "locks"
    monkeypatch.setattr(lock, "LOCK_DIRS", (str(blocked / "x"), str(usable)))
    with project_lock("memory://t", "p"):
        assert len(list(usable.iterdir())) == 1
    monkeypatch.setattr(lock, "LOCK_DIRS", (str(blocked / "x"),))
    with (
        pytest.raises(OSError, match="no writable lock directory"),
        project_lock("memory://t", "p"),
    ):
        pass


hosts = st.text(alphabet="abcdefgh.", min_size=1, max_size=10)


@given(hosts, st.integers(1, 65535), st.sampled_from(["tcp", "http", "https", "ssh"]))
def test_a_tcp_engine_is_its_scheme_host_and_port_in_any_case(
    host: str, port: int, scheme: str
) -> None:
    key = engine_key(f"{scheme}://{host}:{port}")
    assert engine_key(f"{scheme}://{host.upper()}:{port}") == key
    assert engine_key(f"{scheme}://{host}:{port % 65535 + 1}") != key


def test_a_socket_path_is_resolved(tmp_path: Path) -> None:
    real = tmp_path / "docker.sock"
    real.write_text("")
    link = tmp_path / "link.sock"
    link.symlink_to(real)
    assert engine_key(f"unix://{link}") == engine_key(f"unix://{real}") == f"unix:{real}"
    assert engine_key("tcp://host:notaport") == "tcp://host:notaport"

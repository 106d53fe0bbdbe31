"""The access log: its two formats, its sampling, and its buffer written off the loop (a real
loop and a real file; a buffer that is full drops lines and counts them)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.proxy import accesslog
from dockmesh.proxy.accesslog import AccessLog, Entry, Sampler, format_common, format_json
from dockmesh.proxy.config import AccessLogSpec

E = Entry(
    when=975_000_000.25,
    client="10.0.0.7",
    method="GET",
    target="/a?b=1",
    minor=1,
    status=200,
    bytes=512,
    duration_s=0.0123,
    upstream="10.0.0.9:8080",
    route="web",
)


def test_common() -> None:
    assert format_common(E) == (
        '10.0.0.7 - - [23/Nov/2000:17:20:00 +0000] "GET /a?b=1 HTTP/1.1" 200 512 "web" '
        '"10.0.0.9:8080" 12ms\n'
    )


def test_json() -> None:
    doc = json.loads(format_json(E))
    assert doc == {
        "time": "2000-11-23T17:20:00.250Z",
        "client": "10.0.0.7",
        "method": "GET",
        "path": "/a?b=1",
        "protocol": "HTTP/1.1",
        "status": 200,
        "bytes": 512,
        "duration_ms": 12.3,
        "upstream": "10.0.0.9:8080",
        "route": "web",
    }


def test_a_stream_says_http_2() -> None:
    h2 = dataclasses.replace(E, minor=0, protocol="HTTP/2.0")
    assert '"GET /a?b=1 HTTP/2.0" 200 512' in format_common(h2)
    assert json.loads(format_json(h2))["protocol"] == "HTTP/2.0"


@given(st.text(max_size=40))
def test_a_client_cannot_forge_a_line_or_a_field(target: str) -> None:
    e = Entry(0.0, "10.2.3.4", "GET", target, 1, 200, 0, 0.0, "-", "r")
    line = format_common(e)
    assert line.count("\n") == 1 and line.endswith("\n")
    assert line.count('"') == 6  # request, route, upstream: nothing of the target's own
    doc = json.loads(format_json(e))
    assert doc["path"] == target


@given(st.floats(min_value=0.01, max_value=1.0), st.integers(min_value=1, max_value=2000))
def test_sampling_keeps_the_rate_evenly(rate: float, n: int) -> None:
    s = Sampler(rate)
    kept = sum(s.keep() for _ in range(n))
    assert abs(kept - rate * n) <= 1


def test_a_sample_rate_is_within_0_and_1() -> None:
    for bad in (0.0, -1.0, 1.5):
        with pytest.raises(ValueError, match="sample rate"):
            Sampler(bad)


def _run(coro_fn: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(coro_fn())


def test_lines_reach_the_file_without_the_loop_writing_and_survive_a_rotation(
    tmp_path: Path,
) -> None:
    path = tmp_path / "access.log"

    async def main() -> None:
        log = AccessLog(AccessLogSpec(str(path), "common", 1.0), asyncio.get_running_loop())
        for _ in range(3):
            assert log.wants(E.status)
            log.log(E)
        await asyncio.sleep(accesslog.FLUSH_S * 3)
        assert path.read_text().count("\n") == 3 and log.written == 3
        os.rename(path, tmp_path / "access.log.1")  # logrotate
        log.reopen()
        await asyncio.sleep(0.05)
        assert log.wants(E.status)
        log.log(E)
        log.close()
        assert (tmp_path / "access.log.1").read_text().count("\n") == 3
        assert path.read_text().count("\n") == 1

    _run(main)


def test_a_full_buffer_drops_and_counts_instead_of_waiting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(accesslog, "MAX_BUFFER_BYTES", 1000)
    r, w = os.pipe()  # nobody reads it: the writer blocks once the pipe is full
    os.set_blocking(w, True)

    async def main() -> None:
        log = AccessLog(AccessLogSpec("-", "json", 1.0), asyncio.get_running_loop())
        log._fd = w  # (stdout stands for any slow file)
        n = 0
        while log.wants(E.status):
            log.log(E)
            log.flush()
            n += 1
            await asyncio.sleep(0)
            assert n < 100_000
        assert log.buffered <= 1000 + 400
        os.close(r)  # the writer's write fails: those lines are counted too
        log.close(timeout_s=1.0)
        assert log.dropped >= 1

    _run(main)


def test_sampled_lines_are_counted_and_5xx_always_kept(tmp_path: Path) -> None:
    path = tmp_path / "a.log"

    async def main() -> None:
        log = AccessLog(AccessLogSpec(str(path), "json", 0.25), asyncio.get_running_loop())
        for e in [E] * 8 + [Entry(**{**E.__dict__, "status": 502})] * 2:
            if log.wants(e.status):
                log.log(e)
        log.close()
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        assert [d["status"] for d in lines] == [200, 200, 502, 502]
        assert log.sampled_out == 6

    _run(main)

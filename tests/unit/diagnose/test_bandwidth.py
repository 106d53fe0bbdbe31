"""Bandwidth (dockmesh.diagnose.bandwidth) without containers: a stream between two ends made
in this process's own namespace on loopback (a pid the pool runs inline) counts every byte
the receiving end got, over the time to its last byte; the JSON rounds what it shows. The
speed itself is never asserted (benchmarks/ measure; tests/integration/test_bench.py runs
it between containers and through iperf3)."""

from __future__ import annotations

import os
from dataclasses import replace

from dockmesh.diagnose.bandwidth import BandwidthResult, stream
from dockmesh.diagnose.latency import Target
from dockmesh.host.netns import NetnsPool
from tests.unit.topos import container


def test_a_stream_on_loopback_counts_what_the_receiver_got() -> None:
    me = replace(container("a", {"lo": "127.0.0.1"}), pid=os.getpid())
    with NetnsPool() as pool:
        got = stream(pool, Target(me, me, "127.0.0.1", "lo"), 0.2)
    assert got.tool == "dockmesh" and got.bytes > 0 and got.seconds > 0
    assert got.bits_per_second == got.bytes * 8 / got.seconds


def test_the_json_rounds_what_it_shows() -> None:
    doc = BandwidthResult(1234.5678, 10, 0.123456789).to_json()
    assert doc == {"bits_per_second": 1234.6, "bytes": 10, "seconds": 0.123457, "tool": "dockmesh"}

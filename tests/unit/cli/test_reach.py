"""`why --probe`'s probe when there is nothing to probe: the reason said is the right one."""

from __future__ import annotations

from typing import Any

from dockmesh.cli.reach import _probe_one
from dockmesh.policy.reach import analyze
from tests.unit.topos import container, network, topology


def test_a_destination_that_does_not_run_is_said_not_to_run() -> None:
    """Seen as `dockmesh why adv2q-a1 adv2q-paused --probe` (a paused container, with its
    address): the probe said 'nothing to probe (no IPv4 address)'."""
    topo = topology(
        [network("n", "10.0.0.0/24")],
        [
            container("a", {"n": "10.0.0.2"}),
            container("p", {"n": "10.0.0.3"}, state="paused"),
            container("x", {"n": "10.0.0.4"}, state="exited"),
        ],
    )
    a = topo.container("a")
    for name in ("p", "x"):
        dst = topo.container(name)
        out = _probe_one(None, topo, analyze(topo, None, "a", name), a, dst, None, 1.0)
        assert out == {"ok": False, "latency_ms": None, "detail": f"{name} is not running"}
        back = _probe_one(None, topo, analyze(topo, None, name, "a"), dst, a, None, 1.0)
        assert back["detail"] == f"{name} is not running"


def test_udp_is_probed_where_an_answer_or_a_port_unreachable_can_be_expected() -> None:
    from dockmesh.cli.reach import _plan, _worse
    from dockmesh.codecs.procnet import Listener
    from dockmesh.diagnose.sweep import Probe
    from dockmesh.model.policy import PortRange
    from dockmesh.policy.reach import Observations

    topo = topology(
        [network("n", "10.0.0.0/24")],
        [container("a", {"n": "10.0.0.2"}), container("b", {"n": "10.0.0.3"})],
    )
    a, b = topo.container("a"), topo.container("b")
    assert a is not None and b is not None

    def plan(port: int, listening: list[Listener] | None) -> object:
        p = PortRange("udp", port, port)
        seen = Observations(listening=listening)
        return _plan("k", analyze(topo, None, "a", "b", p, seen), a, b, p)

    dns = plan(53, [Listener("udp", "0.0.0.0", 53)])
    assert isinstance(dns, Probe) and dns.expect_reply and dns.protocol == "udp"
    assert dns.payload[2] & 0x01 == 0  # no recursion desired: nothing is asked beyond
    served = plan(5353, [Listener("udp", "0.0.0.0", 5353)])
    assert isinstance(served, Probe) and not served.expect_reply
    closed = plan(5353, [])
    assert isinstance(closed, Probe) and closed.expect_reply  # a port unreachable comes back
    unknown = plan(5353, None)
    assert isinstance(unknown, dict) and unknown["ok"] is None
    assert "not probed" in unknown["detail"]
    assert isinstance(plan(53, None), Probe)  # a DNS server answers a query

    both: list[dict[str, Any]] = [
        {"family": 4, "ok": True, "latency_ms": 0.1, "detail": "x"},
        {"family": 6, "ok": None, "latency_ms": None, "detail": "y"},
    ]
    assert _worse(both)["ok"] is True and _worse(both)["latency_ms"] == 0.1
    both[1]["ok"] = False
    assert _worse(both)["ok"] is False and _worse(both)["latency_ms"] is None
    assert _worse(both)["detail"] == "IPv4: x; IPv6: y"


def test_a_source_whose_pid_is_not_its_process_here_is_not_probed() -> None:
    """An engine on another host reports its host's pids: here that pid is some other process
    (this test's own, whose cgroup names no such container), and entering its namespace
    would probe from the wrong place. The verdict stays the analysis's."""
    import os

    from dockmesh.cli.reach import _matrix, _mismatch

    me = os.getpid()
    topo = topology(
        [network("n", "10.0.0.0/24")],
        [container("a", {"n": "10.0.0.2"}, pid=me), container("b", {"n": "10.0.0.3"}, pid=me)],
    )
    a, b = topo.container("a"), topo.container("b")
    assert a is not None and b is not None
    out = _probe_one(None, topo, analyze(topo, None, "a", "b"), a, b, None, 1.0)
    assert out["ok"] is None
    assert out["detail"].startswith("not probed: a's process (pid ")
    assert "is not on this machine" in out["detail"]
    pairs = _matrix(topo, None, "no policy applied", [a, b], None, 1.0)
    assert [(p["src"], p["dst"], p["expected"], p["observed"]) for p in pairs] == [
        ("a", "b", True, None),
        ("b", "a", True, None),
    ]
    assert not any(_mismatch(p) for p in pairs)
    assert all(p["detail"].startswith("not probed: ") for p in pairs)

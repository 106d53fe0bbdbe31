"""`why --probe`'s probe when there is nothing to probe: the reason said is the right one."""

from __future__ import annotations

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

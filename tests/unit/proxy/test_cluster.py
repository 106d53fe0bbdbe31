"""A cluster's members, who is eligible, which one is picked, and its pool's upkeep."""

from __future__ import annotations

import random
from typing import Any

from dockmesh.proxy.cluster import Cluster, split_hostport
from dockmesh.resilience.breaker import BreakerPolicy
from dockmesh.resilience.outlier import OutlierPolicy
from dockmesh.testing.clock import ManualClock


class Idle:
    """A pooled connection as the cluster sees it (`cluster.Pooled`)."""

    def __init__(self, idle_since: float) -> None:
        self.idle_since = idle_since
        self.closed = False

    def close(self) -> None:
        self.closed = True


def make(clock: ManualClock | None = None, **kw: Any) -> Cluster[Idle]:
    c: Cluster[Idle] = Cluster(
        "web", "round_robin", clock=clock or ManualClock(), rng=random.Random(1), **kw
    )
    c.set_members({"10.0.0.1:80": 1, "10.0.0.2:80": 2, "[fd00::3]:80": 1})
    return c


def test_members_are_set_whole_and_the_removed_close_their_idle_connections() -> None:
    c = make()
    a = c.upstreams["10.0.0.1:80"]
    pooled = [Idle(1.0), Idle(2.0)]
    a.idle.extend(pooled)
    removed = c.set_members({"10.0.0.2:80": 5, "10.0.0.4:80": 1})
    assert {u.addr for u in removed} == {"10.0.0.1:80", "[fd00::3]:80"} and a in removed
    assert a.removed and a.idle == [] and all(p.closed for p in pooled)
    assert sorted(c.upstreams) == ["10.0.0.2:80", "10.0.0.4:80"]
    assert c.upstreams["10.0.0.2:80"].weight == 5
    assert c.balancer.pick(c.eligible()) in c.upstreams


def test_addresses() -> None:
    c = make()
    six = c.upstreams["[fd00::3]:80"]
    assert (six.host, six.port, six.addr) == ("fd00::3", 80, "[fd00::3]:80")
    assert split_hostport("[fd00::3]:80") == ("fd00::3", 80)
    assert split_hostport("a.test:8080") == ("a.test", 8080)


def test_the_unhealthy_the_open_and_the_ejected_are_not_picked_and_come_back() -> None:
    clock = ManualClock()
    c = make(
        clock,
        breaker_policy=BreakerPolicy(consecutive_failures=1, open_base_s=1),
        outlier_policy=OutlierPolicy(
            consecutive_5xx=1, base_ejection_s=5, max_ejection_percent=100
        ),
    )
    a, b, six = c.upstreams.values()
    c.set_healthy(a, False)
    assert a.addr not in c.eligible() and not c.degraded
    # b's breaker opens: the cluster is told, and stops offering it until its backoff passes.
    b.breaker.failure(b.breaker.admit() or 0)
    c.changed()
    assert c.degraded and list(c.eligible()) == [six.addr]
    assert all(c.pick() is six for _ in range(5))
    clock.t += 1
    assert b.addr in c.eligible()  # half-open: one probe may go
    # six ejected by the outlier detector.
    assert c.outlier.record(six.addr, 503)
    c.changed()
    assert six.addr not in c.eligible()
    clock.t += 5
    c.set_healthy(a, True)
    assert set(c.eligible()) == {a.addr, b.addr, six.addr}


def test_pick_avoids_the_tried_while_others_are_eligible() -> None:
    c = make()
    a, b, six = c.upstreams.values()
    assert {c.pick(None, (a, b)) for _ in range(6)} == {six}
    # Every one tried already: trying one again beats failing.
    assert c.pick(None, (a, b, six)) is not None
    for up in (a, b, six):
        c.set_healthy(up, False)
    assert c.pick() is None


def test_why_there_is_no_upstream() -> None:
    c = make()
    c.known = False
    assert "known yet" in c.no_upstream_reason()
    c.known = True
    for up in c.upstreams.values():
        c.set_healthy(up, False)
    assert "fails its checks" in c.no_upstream_reason()
    c.set_members({})
    assert "no instances" in c.no_upstream_reason()


def test_tick_closes_what_idled_too_long_and_moves_the_batched_counts() -> None:
    clock = ManualClock(100.0)
    c = make(clock)
    a = c.upstreams["10.0.0.1:80"]
    old, young = Idle(80.0), Idle(99.0)
    a.idle.extend([old, young])
    c.budget.request()
    ticket = a.breaker.admit()
    assert ticket is not None
    a.breaker.success(ticket)
    c.tick(100.0, pool_idle_s=15.0)
    assert old.closed and not young.closed and a.idle == [young]
    assert c.budget.pending == 0 and a.breaker.pending_ok == 0
    c.close()
    assert young.closed and a.idle == []

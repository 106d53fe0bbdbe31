"""Per-client limits' decisions against their theory of operation (`proxy.guard`)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.proxy.guard import NEAR, ClientCounts, body_progress, client_key, shed


def test_a_client_is_its_ipv4_address_or_its_ipv6_64() -> None:
    assert client_key(b"10.0.0.7") == b"10.0.0.7"
    assert client_key(b"2001:db8:1:2:aaaa::1") == client_key(b"2001:db8:1:2:ffff::9")
    assert client_key(b"2001:db8:1:2::1") == b"2001:db8:1:2::/64"
    assert client_key(b"2001:db8:1:3::1") != client_key(b"2001:db8:1:2::1")
    assert client_key(b"::ffff:10.0.0.7") == b"10.0.0.7"
    assert client_key(b"unknown") == b"unknown"
    assert client_key(b"not:an:address::x") == b"not:an:address::x"


@given(st.lists(st.tuples(st.booleans(), st.sampled_from([b"a", b"b", b"c"]))), st.integers(0, 4))
def test_no_address_has_more_than_its_limit_open(
    events: list[tuple[bool, bytes]], limit: int
) -> None:
    counts = ClientCounts()
    open_: dict[bytes, int] = {}
    for opening, key in events:
        if opening:
            ok = counts.add(key, limit)
            assert ok == (limit == 0 or open_.get(key, 0) < limit)
            if ok:
                open_[key] = open_.get(key, 0) + 1
        elif open_.get(key):
            counts.remove(key)
            open_[key] -= 1
        assert counts.counts == {k: n for k, n in open_.items() if n}


def test_a_body_keeps_up_while_each_step_comes_within_the_window() -> None:
    mark = (0.0, 0)
    assert body_progress(5.0, *mark, 100, 1000, 10.0) == mark  # slow, but within the window
    assert body_progress(9.0, *mark, 1000, 1000, 10.0) == (9.0, 1000)  # a step: a new mark
    assert body_progress(10.5, *mark, 999, 1000, 10.0) is None  # a byte a second: too slow


@given(
    st.lists(st.tuples(st.booleans(), st.integers(1, 1000), st.floats(0, 100)), max_size=30),
    st.integers(1, 20000),
)
def test_shedding_closes_idle_ones_first_and_busy_ones_only_past_the_budget(
    conns: list[tuple[bool, int, float]], budget: int
) -> None:
    idle_out, busy_out = shed(conns, budget)
    total = sum(c[1] for c in conns)
    near = budget * NEAR
    freed_idle = sum(conns[i][1] for i in idle_out)
    freed = freed_idle + sum(conns[i][1] for i in busy_out)
    assert len(set(idle_out + busy_out)) == len(idle_out) + len(busy_out)
    assert all(conns[i][0] for i in idle_out) and not any(conns[i][0] for i in busy_out)
    if total <= near:
        assert not idle_out and not busy_out
    # Idle ones go longest idle first, and no more than needed to come within NEAR.
    idle = sorted((i for i, c in enumerate(conns) if c[0]), key=lambda i: conns[i][2])
    assert [conns[i][2] for i in idle_out] == [conns[i][2] for i in idle[: len(idle_out)]]
    if idle_out:
        assert total - (freed_idle - conns[idle_out[-1]][1]) > near
    # Busy ones only when closing idle ones could not bring it within the budget itself; the
    # biggest first; and no more than needed.
    if busy_out:
        assert len(idle_out) == len(idle) or total - freed_idle > near
        assert total - freed_idle > budget
        kept_busy = [c[1] for i, c in enumerate(conns) if not c[0] and i not in busy_out]
        assert all(conns[i][1] >= k for i in busy_out for k in kept_busy)
        assert total - (freed - conns[busy_out[-1]][1]) > near
    # Within NEAR after, unless everything that may go went.
    if total - freed > near:
        assert len(idle_out) == len(idle)
        assert not busy_out or len(busy_out) == sum(1 for c in conns if not c[0])
        assert busy_out or total - freed_idle <= budget

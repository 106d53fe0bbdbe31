"""The DNS server's per-source limits as pure state machines: the UDP token buckets
(`SourceRate`) and the TCP connection slots (`TcpSlots`)."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.dns.limits import REASON_PER_SOURCE, REASON_TOTAL, SourceRate, TcpSlots
from dockmesh.testing.clock import ManualClock

# (source, seconds since the previous query): a few sources, gaps from none to long.
events = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.one_of(st.just(0.0), st.floats(0, 0.05), st.floats(0, 3)),
    ),
    max_size=300,
)


def run(limiter: SourceRate, clock: ManualClock, seq: list[tuple[str, float]]) -> list[bool]:
    out = []
    for source, dt in seq:
        clock.advance(dt)
        out.append(limiter.allow(source))
    return out


@settings(max_examples=200)
@given(events, st.integers(1, 20), st.sampled_from([1.0, 10.0, 100.0]))
def test_no_source_gets_more_than_its_burst_plus_the_rate(
    seq: list[tuple[str, float]], burst: int, rate: float
) -> None:
    clock = ManualClock()
    limiter = SourceRate(rate, burst, clock)
    times: dict[str, list[float]] = {}
    for source, dt in seq:
        clock.advance(dt)
        if limiter.allow(source):
            times.setdefault(source, []).append(clock.t)
    for allowed in times.values():
        # In any window [t_i, t_j] at most burst + rate * (t_j - t_i) queries pass.
        for i in range(len(allowed)):
            for j in range(i, len(allowed)):
                assert j - i + 1 <= burst + rate * (allowed[j] - allowed[i]) + 1e-6


@settings(max_examples=200)
@given(events, st.integers(1, 20))
def test_a_source_is_judged_on_its_own_queries_alone(
    seq: list[tuple[str, float]], burst: int
) -> None:
    """Another source's flood never changes what one source is allowed (the table is not full:
    the bound is tested below)."""
    clock = ManualClock()
    together = run(SourceRate(10.0, burst, clock), clock, seq)
    for source in "abcd":
        alone_clock = ManualClock()
        limiter = SourceRate(10.0, burst, alone_clock)
        alone = []
        for (s, dt), _ in zip(seq, together, strict=True):
            alone_clock.advance(dt)
            if s == source:
                alone.append(limiter.allow(s))
        assert alone == [ok for (s, _), ok in zip(seq, together, strict=True) if s == source]


@given(st.integers(1, 50), st.sampled_from([1.0, 7.0, 1000.0]), st.integers(1, 200))
def test_a_client_at_the_rate_is_never_refused(burst: int, rate: float, n: int) -> None:
    clock = ManualClock(123.456)
    limiter = SourceRate(rate, burst, clock)
    for _ in range(n):
        assert limiter.allow("10.0.0.1")
        clock.advance(1 / rate)
    assert limiter.refused == 0


@given(st.integers(1, 50), st.sampled_from([1.0, 10.0, 1000.0]))
def test_a_burst_then_refusal_then_a_full_bucket_after_a_pause(burst: int, rate: float) -> None:
    clock = ManualClock()
    limiter = SourceRate(rate, burst, clock)
    assert all(limiter.allow("x") for _ in range(burst))
    assert not limiter.allow("x")
    assert limiter.allow("y")  # another source: its own bucket
    clock.advance(1 / rate)
    assert limiter.allow("x")
    assert not limiter.allow("x")
    clock.advance(burst / rate)
    assert limiter.tokens("x") == pytest.approx(burst)
    assert all(limiter.allow("x") for _ in range(burst))
    assert limiter.refused == 2


@settings(max_examples=100)
@given(
    st.lists(st.tuples(st.integers(0, 500), st.floats(0, 0.01)), max_size=400),
    st.integers(1, 64),
)
def test_the_table_stays_bounded_and_a_forgotten_source_only_gains(
    seq: list[tuple[int, float]], bound: int
) -> None:
    clock = ManualClock()
    limiter = SourceRate(100.0, 3, clock, max_sources=bound)
    unbounded = SourceRate(100.0, 3, clock)
    for source, dt in seq:
        clock.advance(dt)
        ok, reference = limiter.allow(source), unbounded.allow(source)
        assert len(limiter) <= bound
        # Forgetting a source gives it a full bucket: it may pass where it would not have,
        # never the other way round.
        assert ok or not reference


def test_quiet_sources_are_forgotten_first() -> None:
    clock = ManualClock()
    limiter = SourceRate(10.0, 2, clock, max_sources=4)
    for s in "ab":
        limiter.allow(s)
    clock.advance(1.0)  # a and b: full again
    for s in "cd":
        limiter.allow(s)
        limiter.allow(s)
    limiter.allow("e")  # the table is full: a and b go, c and d keep their debt
    assert len(limiter) == 3
    assert not limiter.allow("c")


def test_bad_parameters_are_refused() -> None:
    with pytest.raises(ValueError, match="rate"):
        SourceRate(0, 1, ManualClock())
    with pytest.raises(ValueError, match="burst"):
        SourceRate(1, 0, ManualClock())
    with pytest.raises(ValueError, match="caps"):
        TcpSlots(0, 1, lambda k: None)


# --- TCP slots ------------------------------------------------------------------------------


class Model:
    """Connections as the server has them: an id, a source, idle since when (None: busy)."""

    def __init__(self, per_source: int, total: int) -> None:
        self.idle: dict[int, float | None] = {}
        self.source: dict[int, str] = {}
        self.slots: TcpSlots[int] = TcpSlots(
            per_source, total, self.idle.__getitem__, lambda s: s == "127.0.0.1"
        )


ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.sampled_from(["10.0.0.1", "10.0.0.2", "127.0.0.1"])),
        st.tuples(st.just("busy"), st.integers(0, 60)),
        st.tuples(st.just("idle"), st.integers(0, 60)),
        st.tuples(st.just("close"), st.integers(0, 60)),
    ),
    max_size=200,
)


@settings(max_examples=300)
@given(ops, st.integers(1, 5), st.integers(1, 12))
def test_tcp_slots_hold_their_caps_and_take_only_the_longest_idle(
    seq: list[tuple[str, object]], per_source: int, total: int
) -> None:
    m = Model(per_source, total)
    now = 0.0
    next_id = 0
    for op, arg in seq:
        now += 1
        if op == "open":
            source = str(arg)
            key, next_id = next_id, next_id + 1
            m.idle[key] = now
            before = {k: m.source[k] for k in m.source}
            full_source = before and (
                source != "127.0.0.1" and list(before.values()).count(source) >= per_source
            )
            full_total = len(before) >= total
            counts = Counter(before.values())
            mine = counts[source]
            heaviest = max(counts.values(), default=0)
            admitted, victim, reason = m.slots.open(key, source)
            if victim is not None:
                pool = [k for k, s in before.items() if s == source] if full_source else before
                assert reason == (REASON_PER_SOURCE if full_source else REASON_TOTAL)
                if m.idle[victim] is None:
                    # A busy one only when all are busy and the total is in the way: the
                    # oldest of a source holding the most, more than the newcomer's would.
                    assert not full_source and all(m.idle[k] is None for k in pool)
                    assert counts[before[victim]] == heaviest > mine + 1
                    assert victim == min(k for k, s in before.items() if s == before[victim])
                else:
                    longest = min(m.idle[k] or 0 for k in pool if m.idle[k] is not None)
                    assert m.idle[victim] == longest
                del m.source[victim]
            if admitted:
                m.source[key] = source
                # Admitted over a full cap only by making room.
                assert victim is not None or not (full_source or full_total)
            else:
                # Refused only when everything in the way is busy, and (for the total) no
                # source holds more than the newcomer's would.
                assert full_source or full_total
                pool = [k for k, s in before.items() if s == source] if full_source else before
                assert all(m.idle[k] is None for k in pool)
                assert full_source or heaviest <= mine + 1
        elif m.source:
            keys = sorted(m.source)
            key = keys[int(str(arg)) % len(keys)]
            if op == "busy":
                m.idle[key] = None
            elif op == "idle":
                m.idle[key] = now
            else:
                m.slots.close(key)
                m.slots.close(key)  # again: nothing
                del m.source[key]
        assert len(m.slots) == len(m.source) <= total
        for source in ("10.0.0.1", "10.0.0.2"):
            assert m.slots.count(source) == list(m.source.values()).count(source) <= per_source


def test_many_sources_of_busy_connections_cannot_lock_out_another() -> None:
    """70 sources x 16 connections, each kept busy by a query a second: a new source still
    gets in (the oldest of a heaviest source goes), and so does the host, exempt or not."""
    m = Model(per_source=16, total=1024)
    key = 0
    for n in range(70):
        for _ in range(16):
            m.idle[key] = None
            m.slots.open(key, f"10.1.0.{n}")
            key += 1
    assert len(m.slots) == 1024
    for newcomer in ("10.0.0.2", "127.0.0.1"):
        m.idle[key] = 5000.0
        admitted, victim, reason = m.slots.open(key, newcomer)
        assert admitted and victim is not None and reason == REASON_TOTAL
        key += 1


def test_one_exempt_source_of_busy_connections_cannot_lock_out_another() -> None:
    m = Model(per_source=16, total=1024)
    for key in range(1024):
        m.idle[key] = None
        assert m.slots.open(key, "127.0.0.1")[0]  # exempt: no per-source cap
    m.idle[2000] = 1.0
    admitted, victim, _ = m.slots.open(2000, "10.0.0.2")
    assert admitted and victim == 0  # the oldest of the host's


def test_one_source_cannot_lock_out_another() -> None:
    m = Model(per_source=16, total=1024)
    for key in range(300):
        m.idle[key] = float(key)
        admitted, _, _ = m.slots.open(key, "10.0.0.1")
        assert admitted
    assert m.slots.count("10.0.0.1") == 16
    m.idle[1000] = 1000.0
    assert m.slots.open(1000, "10.0.0.2") == (True, None, None)

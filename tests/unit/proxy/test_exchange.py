"""The exchange state machine against its theory of operation: hypothesis drives it with
arbitrary events on a real cluster (breakers, outlier detector, budget) on a fake clock, doing
what the server does with each decision, and the invariants hold after every step."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.proxy import http1
from dockmesh.proxy.cluster import Cluster, Upstream
from dockmesh.proxy.exchange import (
    BODY,
    CLIENT_SIDE,
    CLOSE_FIELD,
    CLOSED,
    HEAD,
    KEEP_ALIVE_FIELD,
    NO_VERDICT,
    TUNNEL,
    UPGRADE_FIELD,
    UPSTREAM_SIDE,
    WAIT,
    Exchange,
)
from dockmesh.resilience.breaker import BreakerPolicy, BreakerState
from dockmesh.resilience.passive import PassivePolicy
from dockmesh.resilience.retry import FAIL, MAX_ATTEMPTS, RESEND, RETRY, RETRYABLE_STATUSES
from dockmesh.testing.clock import ManualClock


def request(
    method: bytes = b"GET", body: bool = False, keep_alive: bool = True, minor: int = 1
) -> http1.RequestHead:
    req = http1.RequestHead(method, b"/", minor, 40)
    req.host = b"h"
    req.keep_alive = keep_alive
    if body:
        req.content_length = 5
        req.has_body = True
    return req


def cluster(
    clock: ManualClock, n: int = 3, probes: int = 1, passive: PassivePolicy | None = None
) -> Cluster[Any]:
    c: Cluster[Any] = Cluster(
        "c",
        "round_robin",
        clock=clock,
        rng=__import__("random").Random(0),
        breaker_policy=BreakerPolicy(
            consecutive_failures=2, open_base_s=1, half_open_probes=probes
        ),
        passive=passive,
    )
    c.set_members({f"10.0.0.{i}:80": 1 for i in range(1, n + 1)})
    return c


def requests_deposited(c: Cluster[Any]) -> int:
    return c.budget.pending + c.budget._counts.totals[0]


# --- examples -------------------------------------------------------------------------------


def test_a_plain_exchange_books_one_attempt_and_keeps_the_connection() -> None:
    clock = ManualClock()
    c = cluster(clock)
    ex: Exchange[Any] = Exchange()
    up = ex.begin_attempt(c, request(), None, 5.0)
    assert up is not None and ex.state == WAIT and ex.t0 == 5.0
    assert up.in_flight == 1 and up.requests == 1 and ex.attempts == 1
    assert ex.response_begins(200, True, False) == b""
    assert ex.end_attempt(200, 5.1, True) is True
    assert ex.state == HEAD and ex.req is None and up.in_flight == 0
    assert requests_deposited(c) == 1 and up.breaker.pending_ok == 1


def test_the_connection_field_says_what_the_response_and_the_request_want() -> None:
    clock = ManualClock()
    c = cluster(clock)
    cases = [
        # (request, response keeps alive, body ends at close) -> field
        (request(), True, False, b""),
        (request(keep_alive=False), True, False, CLOSE_FIELD),
        (request(), False, False, CLOSE_FIELD),
        (request(), True, True, CLOSE_FIELD),
        (request(minor=0), True, False, KEEP_ALIVE_FIELD),
        (request(minor=0, keep_alive=False), True, False, CLOSE_FIELD),
        (request(body=True), True, False, CLOSE_FIELD),  # answered before the body was read
    ]
    for req, keep_alive, until_close, field in cases:
        ex: Exchange[Any] = Exchange()
        ex.begin_attempt(c, req, None, 0.0)
        assert ex.response_begins(200, keep_alive, until_close) == field, req
        assert ex.response_begins(200, keep_alive, until_close) == field  # idempotent
        assert ex.keep is (field != CLOSE_FIELD)
        ex.end_attempt(200, 0.0, True)


def test_101_opens_a_tunnel() -> None:
    c = cluster(ManualClock())
    ex: Exchange[Any] = Exchange()
    ex.begin_attempt(c, request(), None, 0.0)
    assert ex.response_begins(101, False, True) == UPGRADE_FIELD
    assert ex.state == TUNNEL and ex.keep


def test_no_route_and_no_upstream_say_why() -> None:
    clock = ManualClock()
    c = cluster(clock)
    ex: Exchange[Any] = Exchange()
    assert ex.begin_attempt(None, request(), None, 0.0) is None
    assert ex.failure[0] == 404 and ex.failure[2] == "no_route"
    assert requests_deposited(c) == 0
    for up in c.upstreams.values():
        c.set_healthy(up, False)
    assert ex.begin_attempt(c, request(), None, 0.0) is None
    assert ex.failure == (503, c.no_upstream_reason(), "no_upstream")
    # Answered by the proxy itself: the exchange ends on the request's wish.
    assert ex.end_attempt(NO_VERDICT, 0.0, True) is True and ex.state == HEAD


def test_an_application_500_moves_no_breaker_and_ejects_no_host() -> None:
    clock = ManualClock()
    c = cluster(clock, n=2)
    for _ in range(50):
        ex: Exchange[Any] = Exchange()
        up = ex.begin_attempt(c, request(), None, clock.t)
        assert up is not None
        ex.end_attempt(500, clock.t, True)
    assert all(u.breaker.closed and u.failures == 0 for u in c.upstreams.values())
    assert not c.outlier.ejected() and not c.degraded


def test_a_500_counts_when_configured() -> None:
    clock = ManualClock()
    c = cluster(clock, n=2, passive=PassivePolicy(failure_statuses=frozenset({500, 502})))
    ex: Exchange[Any] = Exchange()
    up = ex.begin_attempt(c, request(), None, clock.t)
    assert up is not None
    ex.end_attempt(500, clock.t, True)
    assert up.failures == 1


def test_gateway_failures_open_at_most_the_capped_share_of_breakers() -> None:
    clock = ManualClock()
    c = cluster(clock, n=4)
    for _ in range(40):
        ex: Exchange[Any] = Exchange()
        up = ex.begin_attempt(c, request(), None, clock.t)
        assert up is not None
        ex.end_attempt(None, clock.t, True)
    opened = sum(not u.breaker.closed for u in c.upstreams.values())
    assert opened == 2  # 50% of 4


def test_one_upstream_is_never_taken_out() -> None:
    clock = ManualClock()
    c = cluster(clock, n=1)
    (only,) = c.upstreams.values()
    for _ in range(20):
        ex: Exchange[Any] = Exchange()
        assert ex.begin_attempt(c, request(), None, clock.t) is only
        ex.end_attempt(503, clock.t, True)
    assert only.breaker.closed and not c.outlier.ejected()


def test_panic_uses_every_host_when_too_few_are_available() -> None:
    clock = ManualClock()
    c = cluster(clock, n=2)
    first, second = c.upstreams.values()
    first.breaker._to(BreakerState.OPEN)
    second.breaker._to(BreakerState.OPEN)
    c.changed()
    ex: Exchange[Any] = Exchange()
    up = ex.begin_attempt(c, request(), None, clock.t)
    assert up is not None and c.panic and ex.ticket is None
    ex.end_attempt(200, clock.t, True)
    assert c.panics == 1


def test_refusing_breakers_are_skipped_until_none_is_left() -> None:
    clock = ManualClock()
    # Panic off: what is tested is the skipping (panic is tested below).
    c = cluster(clock, n=2, passive=PassivePolicy(panic_threshold_percent=0))
    first, second = c.upstreams.values()
    first.breaker._to(BreakerState.HALF_OPEN)
    assert first.breaker.admit() is not None  # its one probe taken
    ex: Exchange[Any] = Exchange()
    assert ex.begin_attempt(c, request(), None, 0.0) is second
    assert ex.tried == (first,) and ex.attempts == 1
    ex.end_attempt(200, 0.0, True)
    second.breaker._to(BreakerState.HALF_OPEN)
    assert second.breaker.admit() is not None
    # The refusal told the cluster: it no longer offers either.
    assert ex.begin_attempt(c, request(), None, 0.0) is None
    assert ex.failure == (503, c.no_upstream_reason(), "no_upstream")
    assert "every circuit is open" in ex.failure[1]
    assert first.in_flight == second.in_flight == 0


def test_a_gateway_answer_is_asked_elsewhere_within_the_budget_and_the_attempts() -> None:
    clock = ManualClock()
    c = cluster(clock)
    ex: Exchange[Any] = Exchange()
    first = ex.begin_attempt(c, request(), None, 0.0)
    assert first is not None
    assert ex.failed(503, reached=True) == RETRY
    ex.end_attempt(503, 0.0)
    second = ex.begin_attempt()
    assert second is not None and second is not first and ex.tried == (first,)
    assert ex.failed(None, reached=True) == RETRY
    ex.end_attempt(None, 0.0)
    assert ex.begin_attempt() not in (None, first, second)
    assert ex.attempts == MAX_ATTEMPTS and ex.failed(None, reached=True) == FAIL
    assert c.retries == 2 and requests_deposited(c) == 1


def test_a_stale_pooled_connection_resends_outside_the_count_and_never_a_sent_body() -> None:
    c = cluster(ManualClock())
    ex: Exchange[Any] = Exchange()
    ex.begin_attempt(c, request(), None, 0.0)
    assert ex.failed(None, reached=True, stale=True) == RESEND
    assert ex.attempts == 0 and ex.tried == ()
    ex.end_attempt(NO_VERDICT, 0.0)
    assert ex.begin_attempt() is not None and ex.attempts == 1
    ex.end_attempt(200, 0.0, True)
    ex.begin_attempt(c, request(b"PUT", body=True), None, 0.0)
    assert ex.failed(None, reached=True, stale=True) == FAIL  # its body went out
    # Never written (the connection was closing first): even a POST goes again.
    ex.end_attempt(NO_VERDICT, 0.0, True)
    ex.begin_attempt(c, request(b"POST"), None, 0.0)
    assert ex.failed(None, reached=False, stale=True, unsent=True) == RESEND


def test_a_half_open_probe_is_given_back_when_the_client_leaves() -> None:
    clock = ManualClock()
    c = cluster(clock, n=1)
    (up,) = c.upstreams.values()
    up.breaker._to(BreakerState.HALF_OPEN)
    c.changed()
    ex: Exchange[Any] = Exchange()
    assert ex.begin_attempt(c, request(), None, 0.0) is up and up.breaker.probes == 1
    ex.mark_closed()
    ex.end_attempt(NO_VERDICT, 0.0)
    assert up.breaker.probes == 0 and up.in_flight == 0 and up.failures == 0


def test_nothing_is_tried_again_once_the_response_began_or_the_connection_closed() -> None:
    c = cluster(ManualClock())
    ex: Exchange[Any] = Exchange()
    ex.begin_attempt(c, request(), None, 0.0)
    ex.response_begins(200, True, False)
    assert ex.failed(None, reached=True) == FAIL
    ex.end_attempt(None, 0.0)
    ex.begin_attempt(c, request(), None, 0.0)
    ex.mark_closed()
    assert ex.failed(None, reached=False) == FAIL


# --- the machine, driven ----------------------------------------------------------------------

# Each step draws a choice among the events that can happen in the state the exchange is in
# (so that nearly every step does something), an integer for its details and a flag.
events = st.lists(
    st.tuples(st.integers(0, 99), st.integers(0, 7), st.booleans()), min_size=5, max_size=80
)


class Driver:
    """Does with each decision what the server does, and checks the invariants."""

    def __init__(self, n: int, probes: int) -> None:
        self.clock = ManualClock()
        self.c = cluster(self.clock, n=n, probes=probes)
        self.ex: Exchange[Any] = Exchange()
        self.sent = False  # the open attempt's request went out
        self.requests = 0
        self.body_sent = False  # a body of this request reached an upstream
        self.seen: list[str] = []

    def attempt(self, up: Upstream[Any] | None) -> None:
        self.sent = False
        if up is None:
            # The proxy answers itself (`fail`): the exchange ends.
            self.finish(NO_VERDICT)

    def finish(self, status: int) -> None:
        ex = self.ex
        if not ex.end_attempt(status, self.clock.t, True):
            ex.mark_closed()

    def after(self, verdict: int, status: int | None) -> None:
        ex = self.ex
        if verdict == RESEND:
            assert not self.body_sent
            ex.end_attempt(NO_VERDICT, self.clock.t)
            self.attempt(ex.begin_attempt())
            return
        ex.end_attempt(status, self.clock.t)
        if verdict == RETRY:
            assert not self.body_sent
            self.attempt(ex.begin_attempt())
        else:
            self.finish(NO_VERDICT)

    def applicable(self) -> list[str]:
        ex = self.ex
        can = ["wait", "break"]
        if ex.state == HEAD:
            can += ["request"] * 6
        if ex.state == BODY:
            can.append("body_done")
        if ex.upstream is not None:
            if not self.sent:
                can += ["send"] * 4 + ["connect_fail"]
            elif not ex.resp_started:
                can += ["status"] * 4 + ["reset", "stale"]
            elif ex.state != TUNNEL:
                can += ["done"] * 3
        return can

    def step(self, choice: int, x: int, flag: bool) -> None:
        can = self.applicable()
        # Now and then the client goes away, whatever the state.
        event = "client_gone" if choice == 99 else can[choice % len(can)]
        ex, c = self.ex, self.c
        open_attempt = ex.upstream is not None
        self.seen.append(event)
        if event == "request" and ex.state == HEAD:
            method = [b"GET", b"POST", b"PUT", b"HEAD"][x % 4]
            self.requests += 1
            self.body_sent = False
            req = request(method, body=flag and x % 2 == 0, keep_alive=x != 7)
            self.attempt(ex.begin_attempt(c, req, None, self.clock.t))
        elif event == "body_done" and ex.state == BODY:
            ex.body_done()
        elif event == "send" and open_attempt and not self.sent:
            self.sent = True
            self.body_sent = self.body_sent or ex.body
        elif event == "connect_fail" and open_attempt and not self.sent:
            self.after(ex.failed(None, reached=False), None)
        elif event in ("reset", "stale") and open_attempt and self.sent and not ex.resp_started:
            stale = event == "stale"
            self.after(ex.failed(None, reached=True, stale=stale, unsent=stale and flag), None)
        elif event == "status" and open_attempt and self.sent and not ex.resp_started:
            status = [200, 404, 500, 502, 503, 504, 101, 204][x]
            if status in RETRYABLE_STATUSES and ex.failed(status, reached=True) == RETRY:
                assert not self.body_sent
                ex.end_attempt(status, self.clock.t)
                self.attempt(ex.begin_attempt())
            else:
                field = ex.response_begins(status, flag, x == 4)
                assert field in (b"", CLOSE_FIELD, KEEP_ALIVE_FIELD, UPGRADE_FIELD)
                assert ex.keep is (field != CLOSE_FIELD)
                assert (field == UPGRADE_FIELD) is (status == 101)
                if status == 101:
                    assert ex.state == TUNNEL
        elif event == "done" and open_attempt and ex.resp_started and ex.state != TUNNEL:
            self.finish(200)
        elif event == "client_gone" and ex.state != CLOSED:
            prev = ex.mark_closed()
            ex.end_attempt(101 if prev == TUNNEL else NO_VERDICT, self.clock.t)
        elif event == "wait":
            self.clock.t += x / 4
            c.tick(self.clock.t, 15.0)
        elif event == "break" and c.upstreams:
            # Another request's failure opens a breaker now and then.
            up = list(c.upstreams.values())[x % len(c.upstreams)]
            ticket = up.breaker.admit()
            if ticket is not None:
                up.breaker.failure(ticket)
                c.changed()

    def check(self) -> None:
        ex, c = self.ex, self.c
        ups = c.upstreams.values()
        # At most one attempt open, and its upstream the one counting it.
        assert sum(u.in_flight for u in ups) == (1 if ex.upstream is not None else 0)
        if ex.upstream is None:
            # No probe held by this exchange ("break" takes and settles its own at once).
            assert all(u.breaker.probes == 0 for u in ups)
            assert ex.ticket is None
        assert 0 <= ex.attempts <= MAX_ATTEMPTS
        assert requests_deposited(c) == self.requests
        assert c.retries == c.budget.granted
        assert ex.state in (HEAD, BODY, WAIT, TUNNEL, CLOSED)
        if ex.state == BODY:
            assert not ex.req_done
        if ex.state in (BODY, WAIT, TUNNEL):
            assert ex.req is not None
        if ex.state == HEAD:
            assert ex.upstream is None


@settings(max_examples=300)
@given(st.integers(1, 4), st.integers(1, 2), events)
def test_the_invariants_hold_whatever_happens(
    n: int, probes: int, steps: list[tuple[int, int, bool]]
) -> None:
    d = Driver(n, probes)
    for choice, x, flag in steps:
        if d.ex.state == CLOSED:
            break
        d.step(choice, x, flag)
        d.check()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(1, 6),
    st.lists(
        st.tuples(st.sampled_from([None, 200, 404, 500, 502, 503, 504]), st.floats(0, 3)),
        max_size=150,
    ),
)
def test_no_run_of_results_takes_out_more_than_the_cap(
    n: int, steps: list[tuple[int | None, float]]
) -> None:
    # Any run of results on a real cluster: never more hosts out (breaker not closed, or
    # ejected) than the cap, never the last one, every request finds an upstream (panic), and
    # the application's 500s alone leave everything as it was.
    clock = ManualClock()
    c = cluster(clock, n=n)
    cap = n * 50 // 100 if n > 1 else 0
    only_500 = all(s in (200, 404, 500) for s, _ in steps)
    for status, dt in steps:
        clock.t += dt
        c.tick(clock.t, 15.0)
        ex: Exchange[Any] = Exchange()
        assert ex.begin_attempt(c, request(), None, clock.t) is not None
        ex.end_attempt(status, clock.t, True)
        ups = c.upstreams.values()
        opened = {u.addr for u in ups if not u.breaker.closed}
        assert len(opened | c.outlier.ejected()) <= cap
        if only_500:
            assert not opened and not c.outlier.ejected()


@given(
    st.lists(
        st.tuples(st.sampled_from([CLIENT_SIDE, UPSTREAM_SIDE]), st.floats(0, 100)),
        min_size=1,
        max_size=4,
    )
)
def test_a_tunnel_ends_once_both_sides_sent_their_eof_and_half_closed_is_bounded(
    eofs: list[tuple[int, float]],
) -> None:
    ex: Exchange[Any] = Exchange()
    ex.begin_attempt(cluster(ManualClock()), request(), None, 0.0)
    ex.response_begins(101, False, True)
    seen: set[int] = set()
    first = eofs[0][1]
    for side, now in eofs:
        seen.add(side)
        assert ex.tunnel_eof(side, now) is (seen == {CLIENT_SIDE, UPSTREAM_SIDE})
    # Half-closed from the first EOF on, however busy the tunnel is.
    assert not ex.tunnel_expired(first + 5, first + 5, 60, 10)
    assert ex.tunnel_expired(first + 11, first + 11, 60, 10)


def test_a_tunnel_open_both_ways_expires_only_when_idle() -> None:
    ex: Exchange[Any] = Exchange()
    assert not ex.tunnel_expired(1000.0, 999.0, 60, 10)
    assert ex.tunnel_expired(1000.0, 900.0, 60, 10)

"""One client connection's exchanges as a state machine: a request in, attempts on upstreams,
a response out. Pure: no sockets, no event loop, no clock (times are passed in). The server's
`ClientConn` is an `Exchange` with sockets: each of its I/O events calls a method here, which
decides, and the connection carries the decision out. Both of the server's lanes (the fast one
for the common request shape and the general one) call the same methods; the fast lane only
skips reading work.

Theory of operation
-------------------
One exchange at a time, in phases (`state`):

    HEAD ──begin_attempt(request)──▶ BODY ──body_done──▶ WAIT ──end_attempt(finish)──▶ HEAD
      │                               │                  ▲        (kept; else closed)
      ╰── (no body) ─────────────────────────────────────╯
    BODY, WAIT ──response_begins(101)──▶ TUNNEL           any ──mark_closed──▶ CLOSED

A tunnel ends as soon as either side closes: a side's EOF goes on to the other (half-close),
and once both sides sent theirs both connections close (`tunnel_eof`); a tunnel half-closed
for `tunnel_half_closed_s`, or idle for `tunnel_idle_s`, closes too (`tunnel_expired`).

A response may begin, and end, while the body is still being read (BODY): the connection then
closes after it, since the rest of the body cannot be told from the next request.

An attempt is one try on one upstream, between `begin_attempt` and `end_attempt`: the only two
places that keep an attempt's books. The first attempt of a request also starts its exchange:
the request is deposited once in its cluster's retry budget (never per attempt), and whether
the client connection stays open afterwards starts as the request's wish (`keep`). Begin picks
an eligible upstream (`Cluster.pick`: not one tried already, unless all were), asks that
upstream's breaker to admit the attempt (a refusal never reached the upstream: the next pick is
asked, until every upstream refused) and counts it (the upstream's in-flight and request
counters, the balancer's `started`). End counts it out (the balancer's `finished`, with its
latency) and records its result: a status or None for a gateway failure feeds the upstream's
breaker, the outlier detector and its failure counters (and a failure, a breaker changing state
or an ejection has the cluster recompute who is eligible); NO_VERDICT, when nothing can be said
(the client left, the pooled connection was stale), gives back a half-open breaker's probe
slot instead. With `finish`, end also ends the exchange on `keep`.

`response_begins` narrows `keep` with the response's say and names the Connection field its
head needs (a 101's is always `Connection: upgrade`); the fast lane forwards a response as it
came exactly when that field is none.

What follows a failed attempt is `resilience.retry.after_failure` applied to this exchange's
facts (`failed`): RESEND (a pooled connection the upstream had closed: sent again, outside the
budget, and the stale attempt forgotten), RETRY (when the cluster's budget grants it) or FAIL.
A request with a body is sent again only if it never reached an upstream: its body is kept
until it is first sent, never after.

Invariants (tested with hypothesis, driving the machine with arbitrary events on a real
cluster):

- at most one attempt is open; once none is, no upstream counts a request in flight and no
  half-open breaker holds a probe for this exchange;
- no more than the route's attempts per request (`RetryPolicy.attempts`; resends do not
  count: nothing reached the upstream), and every retry was granted by the budget;
- nothing is tried again once the response began, once the connection closed, or once a
  request's body reached an upstream;
- each request is deposited in the budget once, whatever its attempts.
"""

from __future__ import annotations

from typing import Generic

from dockmesh.proxy.cluster import Cluster, P, Upstream
from dockmesh.proxy.http1 import RequestHead
from dockmesh.resilience.retry import FAIL, RESEND, RETRY, after_failure

HEAD, BODY, WAIT, TUNNEL, CLOSED = 0, 1, 2, 3, 4
# `end_attempt`'s status when the attempt has no result to record.
NO_VERDICT = -1
CLOSE_FIELD = b"Connection: close\r\n"
KEEP_ALIVE_FIELD = b"Connection: keep-alive\r\n"
# A 101's: its upstream's Connection field is cut as hop-by-hop, yet a client of the upgrade
# must see it (RFC 6455 4.1: a WebSocket client fails the handshake without it).
UPGRADE_FIELD = b"Connection: upgrade\r\n"
# A tunnel's sides, for `tunnel_eof`.
CLIENT_SIDE, UPSTREAM_SIDE = 1, 2
_BOTH_SIDES = CLIENT_SIDE | UPSTREAM_SIDE


class Exchange(Generic[P]):
    """The state of one client connection's current exchange, and its decisions."""

    __slots__ = (
        "attempts",
        "body",
        "cluster",
        "eofs",
        "failure",
        "half_closed",
        "keep",
        "key",
        "last",
        "req",
        "req_done",
        "resp_started",
        "state",
        "t0",
        "ticket",
        "tried",
        "upstream",
    )

    def __init__(self) -> None:
        self.state = HEAD
        self.req: RequestHead | None = None
        self.cluster: Cluster[P] | None = None
        self.key: bytes | None = None  # the request's hash key
        # Whether the client connection stays open after this exchange (the request's wish,
        # then the response's say): the request head itself is never changed (it may be shared).
        self.keep = True
        self.body = False  # the request has a body
        self.req_done = True  # all of the request was read
        self.resp_started = False  # the response's head went to the client
        self.t0 = 0.0  # when the head was read
        self.upstream: Upstream[P] | None = None  # the open attempt's
        self.ticket: int | None = None  # its breaker's admission
        self.last: Upstream[P] | None = None  # the last attempt's, open or not
        # Upstreams not to pick again for this request (failed or refused): a tuple, made
        # only when there is one.
        self.tried: tuple[Upstream[P], ...] = ()
        self.attempts = 0
        # Why `begin_attempt` found no upstream: (status, message, reason).
        self.failure: tuple[int, str, str] = (503, "", "")
        # A tunnel's half-close: the sides that sent their EOF, and when the first did.
        self.eofs = 0
        self.half_closed = 0.0

    # --- attempts ---------------------------------------------------------------------------

    def begin_attempt(
        self,
        cluster: Cluster[P] | None = None,
        req: RequestHead | None = None,
        key: bytes | None = None,
        now: float = 0.0,
    ) -> Upstream[P] | None:
        """The upstream of a new attempt, admitted and counted; None when none may take it
        (`failure` says why). Given `req` (read at `now`; routed to `cluster`, None when no
        route matched it; its hash `key`), the exchange starts and this is its first attempt."""
        if req is not None and not self.begin_request(cluster, req, key, now):
            return None
        cluster = self.cluster
        assert cluster is not None
        while True:
            up = cluster.pick(self.key, self.tried)
            if up is None:
                self.failure = (503, cluster.no_upstream_reason(), "no_upstream")
                return None
            ticket = up.breaker.admit()
            if ticket is not None:
                break
            if cluster.panic:
                # Too few hosts available: this one is tried in spite of its breaker, with no
                # ticket, so its result moves no breaker.
                break
            # Refused (half-open, its probes taken): nothing reached it; ask the next.
            cluster.changed()
            self.tried += (up,)
            if len(self.tried) > len(cluster.upstreams):
                why = f"no upstream of {cluster.name} admits requests now"
                self.failure = (503, why, "breaker")
                return None
        self.upstream = self.last = up
        self.ticket = ticket
        self.attempts += 1
        up.in_flight += 1
        up.requests += 1
        balancer = cluster.balancer
        if balancer.tracks:
            balancer.started(up.addr)
        return up

    def begin_request(
        self, cluster: Cluster[P] | None, req: RequestHead, key: bytes | None, now: float
    ) -> bool:
        """The exchange of `req` starts, with no attempt yet (a body being buffered waits for
        its end, or for enough of it, before `begin_attempt` asks an upstream): False when no
        route matched it (`failure` says so)."""
        self.t0 = now
        self.req = req
        self.cluster = cluster
        self.key = key
        self.keep = req.keep_alive
        body = self.body = req.has_body
        self.req_done = not body
        self.state = BODY if body else WAIT
        self.resp_started = False
        self.attempts = 0
        self.tried = ()
        if cluster is None:
            why = f"no route for {req.host!r} {req.target!r}"[:200]
            self.failure = (404, why, "no_route")
            return False
        cluster.budget.request()
        return True

    def end_attempt(self, status: int | None, now: float, finish: bool = False) -> bool:
        """Closes the books on the open attempt, if any: `status`, None for a gateway failure,
        NO_VERDICT for none. With `finish`, the response went to the client whole and the
        exchange ends too: True when the connection stays for the next request (back to
        HEAD), False when it is to close."""
        up = self.upstream
        if up is not None:
            self.upstream = None
            cluster = self.cluster
            assert cluster is not None
            up.in_flight -= 1
            balancer = cluster.balancer
            if balancer.tracks:
                latency = now - self.t0 if status is not None and status >= 0 else None
                balancer.finished(up.addr, latency)
            ticket = self.ticket
            self.ticket = None
            if status is None or (status >= 500 and cluster.counts_against(status)):
                # The upstream's failure (an application's 500 is not, unless configured): the
                # breaker, the outlier detector, and so who is eligible.
                up.failures += 1
                up.failures_in_row += 1
                may_take_out = cluster.may_take_out()
                if ticket is not None:
                    breaker = up.breaker
                    breaker.failure(ticket, not breaker.closed or may_take_out)
                outlier = cluster.outlier
                if outlier.record(up.addr, status, up.breaker.closed and may_take_out):
                    cluster.ejections += 1
                if ticket is not None or outlier.ejected():
                    cluster.changed()
            elif status >= 0:
                if ticket is not None:
                    if cluster.degraded:
                        breaker = up.breaker
                        before = breaker.state
                        breaker.success(ticket)
                        if before is not breaker.state:
                            cluster.changed()
                    else:
                        up.breaker.success(ticket)
                if up.failures_in_row:
                    # The end of a run of failures: the outlier detector counts from zero.
                    up.failures_in_row = 0
                    cluster.outlier.record(up.addr, status)
            elif ticket is not None:  # NO_VERDICT
                up.breaker.release(ticket)
        if finish and self.keep and self.req_done and self.req is not None:
            self.state = HEAD
            self.req = None
            return True
        return False

    def failed(
        self, status: int | None, reached: bool, stale: bool = False, unsent: bool = False
    ) -> int:
        """What follows the attempt that just failed (FAIL, RETRY or RESEND): `status` the
        upstream's answer (None: none), `reached` whether the request went out to it, `stale`
        whether on a pooled connection the upstream closed before answering, `unsent` whether
        that connection was closing before the request was written."""
        req, cluster, last = self.req, self.cluster, self.last
        if (
            req is None
            or cluster is None
            or last is None
            or self.resp_started
            or self.state == CLOSED
        ):
            return FAIL
        verdict = after_failure(
            req.method,
            reached,
            status,
            not (reached and self.body),
            self.attempts,
            others=len(cluster.upstreams) > 1,
            stale=stale,
            unsent=unsent,
            max_attempts=cluster.retry.attempts,
            on=cluster.retry.on,
        )
        if verdict == RESEND:
            # Not the upstream's doing: it may be picked again, and the attempt counts not.
            self.attempts -= 1
            return RESEND
        if verdict == RETRY and cluster.budget.try_retry():
            cluster.retries += 1
            self.tried += (last,)
            return RETRY
        return FAIL

    def last_tried(self) -> str:
        """The address of the last attempt's upstream, for a message."""
        return self.last.addr if self.last is not None else "?"

    # --- the request and the response ----------------------------------------------------------

    def body_done(self) -> None:
        """The last byte of the request's body was read."""
        self.req_done = True
        if self.state == BODY:
            self.state = WAIT

    def response_begins(self, status: int, keep_alive: bool, until_close: bool) -> bytes:
        """The final response's head (`keep_alive`: it lets the connection stay; `until_close`:
        its body ends when the upstream closes) goes to the client: the Connection field to add
        to it, b"" for none. Idempotent."""
        req = self.req
        assert req is not None
        self.resp_started = True
        if status == 101:
            self.state = TUNNEL
            self.keep = True
            return UPGRADE_FIELD
        # A body not all read cannot be told from the next request: close after this.
        if not (keep_alive and self.keep and self.req_done and not until_close):
            self.keep = False
            return CLOSE_FIELD
        return KEEP_ALIVE_FIELD if req.minor == 0 else b""

    def tunnel_eof(self, side: int, now: float) -> bool:
        """One side of the tunnel (CLIENT_SIDE or UPSTREAM_SIDE) sent its EOF, which goes on to
        the other: True once both sides have, and the tunnel is over (both closed)."""
        if not self.eofs:
            self.half_closed = now
        self.eofs |= side
        return self.eofs == _BOTH_SIDES

    def tunnel_expired(self, now: float, idle_since: float, t_idle: float, t_half: float) -> bool:
        """Whether the tunnel is to be closed now: idle (no byte either way since `idle_since`)
        for `t_idle`, or half-closed for `t_half` without the other side's EOF (a side that
        never closes would hold both connections and the upstream's slot)."""
        if self.eofs and now - self.half_closed > t_half:
            return True
        return now - idle_since > t_idle

    def mark_closed(self) -> int:
        """The connection ends: the state it was in."""
        prev = self.state
        self.state = CLOSED
        return prev

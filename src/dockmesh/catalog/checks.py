"""A check's state machine: results in, status out. Pure; time is passed in.

Theory of operation
-------------------
A check starts in its initial status (critical unless registered otherwise: a new instance is
not passing until its first check passes). Each result is one of passing / warning /
critical. Thresholds damp flapping the way HAProxy's `rise`/`fall` do:

- from passing, it takes `fall` consecutive non-passing results to leave passing (then the
  status is the latest result: warning or critical);
- from warning or critical, it takes `rise` consecutive passing results to become passing;
  a non-passing result in a non-passing state takes effect at once (warning ↔ critical);
- `critical_since` is the time the check last entered critical, kept while it stays there, so
  DeregisterCriticalServiceAfter can be decided from it;
- a TTL check has no results of its own: an update (pass/warn/fail) sets its status and
  pushes `expires_at` one TTL ahead; when `now` passes `expires_at` it turns critical.

Invariants (tested with hypothesis): the status is always one of the four; `successes` and
`failures` are never both non-zero; `critical_since` is set exactly when the status is critical.
"""

from __future__ import annotations

from dataclasses import replace

from dockmesh.model.catalog import CheckSpec, CheckState, Status


def initial(spec: CheckSpec, now: float) -> CheckState:
    expires = now + spec.ttl_s if spec.kind == "ttl" and spec.ttl_s else None
    status = spec.initial_status
    return CheckState(
        spec,
        status,
        "",
        critical_since=now if status == "critical" else None,
        expires_at=expires,
    )


def _with_status(state: CheckState, status: Status, output: str, now: float) -> CheckState:
    since = state.critical_since if state.status == "critical" else now
    return replace(
        state,
        status=status,
        output=output,
        critical_since=since if status == "critical" else None,
    )


def observe(state: CheckState, result: Status, output: str, now: float) -> CheckState:
    """A probe's result (passing, warning or critical) applied with rise/fall."""
    spec = state.spec
    if result == "passing":
        successes, failures = state.successes + 1, 0
        if state.status != "passing" and successes < max(1, spec.rise):
            return replace(state, successes=successes, failures=0, output=output)
        return replace(
            _with_status(state, "passing", output, now), successes=successes, failures=failures
        )
    successes, failures = 0, state.failures + 1
    if state.status == "passing" and failures < max(1, spec.fall):
        return replace(state, successes=0, failures=failures, output=output)
    return replace(_with_status(state, result, output, now), successes=0, failures=failures)


def update_ttl(state: CheckState, status: Status, output: str, now: float) -> CheckState:
    """`PUT /v1/agent/check/{pass,warn,fail}/<id>` or `.../update/<id>`: sets the status at
    once (no thresholds) and, for a TTL check, restarts its TTL."""
    expires = now + state.spec.ttl_s if state.spec.kind == "ttl" and state.spec.ttl_s else None
    new = _with_status(state, status, output, now)
    return replace(new, successes=0, failures=0, expires_at=expires)


def expire(state: CheckState, now: float) -> CheckState:
    """A TTL check whose TTL has run out turns critical; its TTL is spent either way."""
    if state.expires_at is None or now < state.expires_at:
        return state
    if state.status == "critical":
        # Already critical (never updated, or failed by hand): nothing a reader sees changes,
        # but the deadline goes, or `Catalog.next_deadline()` would stay in the past forever.
        return replace(state, expires_at=None)
    return replace(
        _with_status(state, "critical", "TTL expired", now), expires_at=None, successes=0
    )


def should_deregister(state: CheckState, now: float) -> bool:
    after = state.spec.deregister_critical_after_s
    return (
        after is not None
        and state.status == "critical"
        and state.critical_since is not None
        and now - state.critical_since >= after
    )

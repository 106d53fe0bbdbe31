"""The check state machine (dockmesh.catalog.checks): the invariants its docstring states, the
rise/fall rule against a model written from that docstring, and TTL expiry."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.catalog import checks as health
from dockmesh.model.catalog import CheckSpec, CheckState, Status

STATUSES: tuple[Status, ...] = ("passing", "warning", "critical", "maintenance")
RESULTS: tuple[Status, ...] = ("passing", "warning", "critical")

specs = st.builds(
    CheckSpec,
    id=st.just("c"),
    name=st.just("c"),
    kind=st.sampled_from(["http", "tcp", "ttl", "docker"]),
    ttl_s=st.one_of(st.none(), st.floats(0.5, 100)),
    rise=st.integers(0, 5),
    fall=st.integers(0, 5),
    initial_status=st.sampled_from(STATUSES),
)


@dataclass(frozen=True)
class Observe:
    result: Status


@dataclass(frozen=True)
class Update:
    status: Status


@dataclass(frozen=True)
class Expire:
    pass


steps = st.lists(
    st.tuples(
        st.floats(0, 50),  # time passing before the step
        st.one_of(
            st.builds(Observe, st.sampled_from(RESULTS)),
            st.builds(Update, st.sampled_from(RESULTS)),
            st.just(Expire()),
        ),
    ),
    max_size=40,
)


def apply(s: CheckState, step: Observe | Update | Expire, now: float) -> CheckState:
    if isinstance(step, Observe):
        return health.observe(s, step.result, "out", now)
    if isinstance(step, Update):
        return health.update_ttl(s, step.status, "out", now)
    return health.expire(s, now)


def check_invariants(s: CheckState, now: float) -> None:
    assert s.status in STATUSES
    assert s.successes == 0 or s.failures == 0
    assert (s.critical_since is not None) == (s.status == "critical")
    assert s.critical_since is None or s.critical_since <= now
    assert s.expires_at is None or s.spec.kind == "ttl"


@given(specs, st.floats(0, 1000), steps)
def test_invariants_hold_after_every_step(
    spec: CheckSpec, start: float, seq: list[tuple[float, Observe | Update | Expire]]
) -> None:
    now = start
    s = health.initial(spec, now)
    check_invariants(s, now)
    for dt, step in seq:
        now += dt
        before = s
        s = apply(s, step, now)
        check_invariants(s, now)
        if before.status == "critical" and s.status == "critical":
            # Kept while it stays critical: DeregisterCriticalServiceAfter counts from entry.
            assert s.critical_since == before.critical_since
        elif s.status == "critical":
            assert s.critical_since == now


def model_status(prev: Status, history: list[Status], rise: int, fall: int) -> Status:
    """The docstring's rule, from the whole history of results (the last one just came)."""
    result = history[-1]
    if result == "passing":
        if prev == "passing":
            return "passing"
        need = max(1, rise)
        return "passing" if history[-need:] == ["passing"] * need else prev
    if prev != "passing":
        return result
    need = max(1, fall)
    tail = history[-need:]
    return result if len(tail) == need and "passing" not in tail else "passing"


@given(specs, st.lists(st.sampled_from(RESULTS), max_size=60))
def test_rise_and_fall_follow_the_model(spec: CheckSpec, results: list[Status]) -> None:
    s = health.initial(spec, 0.0)
    history: list[Status] = []
    for i, result in enumerate(results, 1):
        history.append(result)
        expected = model_status(s.status, history, spec.rise, spec.fall)
        s = health.observe(s, result, f"r{i}", float(i))
        assert s.status == expected, (history, spec.rise, spec.fall)
        assert s.output == f"r{i}"  # the latest output is shown even when the status holds
        # The counters are the trailing run of equal-kind results.
        run = 0
        for r in reversed(history):
            if (r == "passing") != (result == "passing"):
                break
            run += 1
        assert (s.successes if result == "passing" else s.failures) == run


def test_a_new_check_is_not_passing_until_its_first_probe_passes() -> None:
    spec = CheckSpec("c", "c", "http", rise=1)
    s = health.initial(spec, 0.0)
    assert s.status == "critical"
    assert health.observe(s, "passing", "ok", 1.0).status == "passing"


def test_fall_counts_consecutive_failures_only() -> None:
    s = health.initial(CheckSpec("c", "c", "http", fall=3, initial_status="passing"), 0.0)
    for r in ("critical", "critical", "passing", "critical", "warning"):
        s = health.observe(s, r, "", 1.0)
        assert s.status == "passing"
    s = health.observe(s, "critical", "down", 2.0)
    assert (s.status, s.output, s.critical_since) == ("critical", "down", 2.0)


ttl_specs = st.builds(
    CheckSpec,
    id=st.just("t"),
    name=st.just("t"),
    kind=st.just("ttl"),
    ttl_s=st.floats(0.5, 100),
    initial_status=st.sampled_from(STATUSES),
)


@given(ttl_specs, steps, st.floats(0, 500))
def test_expiry_spends_the_ttl(
    spec: CheckSpec, seq: list[tuple[float, Observe | Update | Expire]], later: float
) -> None:
    """After `expire(now)` the TTL is in the future or gone (else the catalog's next deadline
    would stay in the past and its timer would never rest), and an expired TTL is critical."""
    now = 0.0
    s = health.initial(spec, now)
    for dt, step in seq:
        now += dt
        s = apply(s, step, now)
    now += later
    was_due = s.expires_at is not None and s.expires_at <= now
    s = health.expire(s, now)
    assert s.expires_at is None or s.expires_at > now
    if was_due:
        assert s.status == "critical"


def test_an_update_restarts_the_ttl_and_expiry_turns_it_critical() -> None:
    spec = CheckSpec("t", "t", "ttl", ttl_s=10)
    s = health.update_ttl(health.initial(spec, 0.0), "passing", "fine", 5.0)
    assert (s.status, s.expires_at) == ("passing", 15.0)
    assert health.expire(s, 14.9) is s
    s = health.expire(s, 15.0)
    assert (s.status, s.output, s.critical_since, s.expires_at) == (
        "critical",
        "TTL expired",
        15.0,
        None,
    )


def test_a_ttl_never_updated_expires_without_a_visible_change() -> None:
    spec = CheckSpec("t", "t", "ttl", ttl_s=10)
    s = health.initial(spec, 0.0)
    assert (s.status, s.expires_at) == ("critical", 10.0)
    s2 = health.expire(s, 10.0)
    assert (s2.status, s2.output, s2.critical_since) == (s.status, s.output, s.critical_since)
    assert s2.expires_at is None


def test_deregistration_counts_from_entering_critical() -> None:
    spec = CheckSpec("c", "c", "http", deregister_critical_after_s=30, initial_status="passing")
    s = health.observe(health.initial(spec, 0.0), "critical", "", 10.0)
    s = health.observe(s, "warning", "", 20.0)
    s = health.observe(s, "critical", "", 25.0)
    assert not health.should_deregister(s, 54.9)
    assert health.should_deregister(s, 55.0)
    assert not health.should_deregister(health.observe(s, "passing", "", 56.0), 100.0)

"""Consul's request bodies → instances and checks: what the clients send, what Consul refuses,
and that no body whatever ends in anything but a registration or a one-line 4xx."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dockmesh.api.consul_json import (
    MIN_INTERVAL_S,
    Registration,
    check_owner_conflict,
    merge_checks,
    parse_check_registration,
    parse_check_update,
    parse_registration,
    ttl_not_found,
)
from dockmesh.api.errors import ApiError
from dockmesh.model.catalog import CheckSpec
from tests.outcomes import Outcomes


def reg(body: Any) -> Registration:
    return parse_registration(json.dumps(body).encode())


def refused(body: Any) -> ApiError:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    with pytest.raises(ApiError) as e:
        parse_registration(raw)
    return e.value


# --- what the clients send ------------------------------------------------------------------


def test_python_consul_register_with_an_http_check() -> None:
    # python-consul 1.1's payload: lower-case keys, one `check`.
    r = reg(
        {
            "name": "web",
            "id": "web-1",
            "address": "10.0.0.7",
            "port": 8080,
            "tags": ["v1"],
            "check": {"http": "http://10.0.0.7:8080/health", "interval": "1s", "timeout": "1s"},
        }
    )
    i = r.instance
    assert (i.id, i.service, i.address, i.port, i.tags, i.source) == (
        "web-1",
        "web",
        "10.0.0.7",
        8080,
        ("v1",),
        "api",
    )
    (c,) = r.checks
    assert c.id == "service:web-1"
    assert c.name == "Service 'web' check"
    assert (c.kind, c.http, c.interval_s, c.timeout_s) == (
        "http",
        "http://10.0.0.7:8080/health",
        1.0,
        1.0,
    )
    assert c.service_id == "web-1"
    assert c.initial_status == "critical"  # not passing until its first probe passes


def test_py_consul_register_with_checks_list_meta_and_weights() -> None:
    r = reg(
        {
            "name": "api",
            "port": 9000,
            "meta": {"version": "2"},
            "weights": {"Passing": 10, "Warning": 1},
            "checks": [{"ttl": "15s"}, {"tcp": "10.0.0.8:9000", "interval": "5s"}],
            "tagged_addresses": {"lan": {"address": "10.0.0.8", "port": 9000}},
            "connect": {"sidecar_service": {}},
        }
    )
    assert r.instance.id == "api"  # ID defaults to Name
    assert r.instance.meta == {"version": "2"}
    assert r.instance.weight == 10
    assert [c.id for c in r.checks] == ["service:api:1", "service:api:2"]
    assert [c.kind for c in r.checks] == ["ttl", "tcp"]
    assert r.checks[0].ttl_s == 15.0
    assert r.checks[1].tcp == "10.0.0.8:9000"


def test_go_client_spelling_and_every_check_field() -> None:
    r = reg(
        {
            "Name": "db",
            "ID": "db-1",
            "Check": {
                "CheckID": "db-http",
                "Name": "db answers",
                "Notes": "see runbook",
                "HTTP": "https://db.internal:8443/ready",
                "Method": "head",
                "Header": {"X-Probe": ["1"]},
                "TLSSkipVerify": True,
                "Interval": "2s",
                "Timeout": "500ms",
                "DeregisterCriticalServiceAfter": "1m30s",
                "SuccessBeforePassing": 2,
                "FailuresBeforeCritical": 3,
                "Status": "passing",
            },
        }
    )
    (c,) = r.checks
    assert (c.id, c.name, c.notes, c.method) == ("db-http", "db answers", "see runbook", "HEAD")
    assert (c.timeout_s, c.deregister_critical_after_s, c.rise, c.fall) == (0.5, 90.0, 2, 3)
    assert c.initial_status == "passing"
    assert r.instance.deregister_critical_after_s == 90.0


def test_config_file_spelling_and_durations_in_nanoseconds() -> None:
    r = reg(
        {
            "name": "x",
            "check": {
                "tcp": "[::1]:80",
                "interval": 2_000_000_000,
                "deregister_critical_service_after": "10m",
            },
        }
    )
    assert r.checks[0].interval_s == 2.0
    assert r.checks[0].deregister_critical_after_s == 600.0


def test_an_empty_check_is_no_check_and_tiny_intervals_are_raised() -> None:
    assert reg({"name": "x", "check": {}}).checks == ()
    r = reg({"name": "x", "check": {"http": "http://a/", "interval": "1ns"}})
    assert r.checks[0].interval_s == MIN_INTERVAL_S


# --- what is refused, and why ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({}, "Missing service name"),
        ({"name": ""}, "Missing service name"),
        ({"name": 5}, "Name must be a string"),
        ({"name": "x", "port": "80"}, "Port must be an integer"),
        ({"name": "x", "port": 80.5}, "Port must be an integer"),
        ({"name": "x", "port": True}, "Port must be an integer"),
        ({"name": "x", "port": 70000}, "Invalid Port 70000"),
        ({"name": "x", "tags": "a,b"}, "Tags must be a list of strings"),
        ({"name": "x", "meta": {"k": 1}}, "Meta must be an object of strings"),
        ({"name": "x", "meta": {"consul-x": "1"}}, "reserved"),
        ({"name": "x", "meta": {"a b": "1"}}, "invalid characters"),
        ({"name": "x", "weights": {"Passing": 0}}, "Passing must be between 1"),
        ({"name": "x", "enable_tag_override": "yes"}, "EnableTagOverride must be true or false"),
        ({"name": "x\ny"}, "control characters"),
        ({"name": "x", "check": {"script": "ls"}}, "script checks are not supported"),
        ({"name": "x", "check": {"args": ["ls"], "interval": "1s"}}, "script checks"),
        ({"name": "x", "check": {"grpc": "a:1", "interval": "1s"}}, "gRPC checks"),
        ({"name": "x", "check": {"http": "http://a/"}}, "Interval must be > 0"),
        ({"name": "x", "check": {"http": "ftp://a/", "interval": "1s"}}, "not an http"),
        ({"name": "x", "check": {"http": "http://a:99999/", "interval": "1s"}}, "not an http"),
        ({"name": "x", "check": {"tcp": "a", "interval": "1s"}}, "not host:port"),
        ({"name": "x", "check": {"tcp": "a:0", "interval": "1s"}}, "not host:port"),
        ({"name": "x", "check": {"ttl": "10s", "interval": "1s"}}, "cannot both"),
        ({"name": "x", "check": {"ttl": "ten"}}, "not a duration"),
        ({"name": "x", "check": {"ttl": -5}}, "not a duration"),
        ({"name": "x", "check": {"ttl": "10s", "status": "ok"}}, "Invalid check status"),
        (
            {"name": "x", "check": {"http": "http://a/", "tcp": "a:1", "interval": "1s"}},
            "not HTTP and TCP",
        ),
        ({"name": "x", "checks": [{}]}, "TTL must be > 0"),
        ({"name": "x", "checks": {"ttl": "1s"}}, "Checks must be a list"),
        (
            {"name": "x", "checks": [{"ttl": "1s", "id": "a"}, {"ttl": "1s", "id": "a"}]},
            "duplicate",
        ),
        ({"name": "x", "check": {"ttl": "1s", "method": "GET /"}}, "not an HTTP method"),
    ],
)
def test_malformed_registrations_get_a_400_with_a_reason(body: Any, reason: str) -> None:
    e = refused(body)
    assert e.status == 400
    assert reason in e.reason, e.reason
    assert "\n" not in e.reason


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"", "empty body"),
        (b"{", "Request decode failed"),
        (b"[1]", "must be an object"),
        (b"\xff\xfe", "not UTF-8"),
        (b'{"name": NaN}', "NaN is not JSON"),
        (b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
        (b'{"name": "x", "port": 1' + b"0" * 6000 + b"}", "Request decode failed"),
    ],
)
def test_bodies_that_are_not_json_objects(raw: bytes, reason: str) -> None:
    e = refused(raw)
    assert (e.status, reason in e.reason) == (400, True), e.reason


def test_a_body_over_a_mebibyte_is_413() -> None:
    assert refused(b" " * (1 << 20) + b"{}").status == 413


# --- other bodies and helpers ---------------------------------------------------------------


def test_check_update_body() -> None:
    u = parse_check_update(b'{"Status": "warning", "Output": "' + b"x" * 5000 + b'"}')
    assert u.status == "warning"
    assert len(u.output) == 4096  # Consul keeps 4 KiB of output
    with pytest.raises(ApiError, match="Invalid check status"):
        parse_check_update(b'{"Status": "maintenance"}')
    with pytest.raises(ApiError, match="Invalid check status"):
        parse_check_update(b"{}")


def test_check_registration_needs_a_name_and_a_service() -> None:
    spec = parse_check_registration(b'{"Name": "mem", "ServiceID": "web-1", "TTL": "30s"}')
    assert (spec.id, spec.name, spec.service_id, spec.kind) == ("mem", "mem", "web-1", "ttl")
    with pytest.raises(ApiError, match="Missing check name"):
        parse_check_registration(b'{"ServiceID": "web-1", "TTL": "30s"}')
    with pytest.raises(ApiError, match="only service checks"):
        parse_check_registration(b'{"Name": "mem", "TTL": "30s"}')


def _spec(cid: str, sid: str = "a") -> CheckSpec:
    return CheckSpec(cid, cid, "ttl", service_id=sid, ttl_s=10)


def test_reregistration_keeps_checks_unless_replace_existing_checks() -> None:
    new, old = [_spec("x")], [_spec("x"), _spec("y")]
    assert [c.id for c in merge_checks(new, old, replace_existing=False)] == ["x", "y"]
    assert [c.id for c in merge_checks(new, old, replace_existing=True)] == ["x"]


def test_a_check_id_of_another_instance_is_refused() -> None:
    check_owner_conflict([_spec("x")], {"x": "a"}, "a")
    with pytest.raises(ApiError, match="belongs to service 'b'"):
        check_owner_conflict([_spec("x")], {"x": "b"}, "a")


def test_ttl_not_found_is_consuls_404() -> None:
    e = ttl_not_found('we"ird\nid')
    assert e.status == 404
    assert e.reason == 'CheckID "we\\"ird\\nid" does not have associated TTL'


# --- fuzz -----------------------------------------------------------------------------------

_KEYS = [
    "Name", "name", "ID", "id", "Address", "Port", "port", "Tags", "Meta", "Weights",
    "EnableTagOverride", "Check", "check", "Checks", "checks", "HTTP", "http", "TCP", "TTL",
    "ttl", "Interval", "interval", "Timeout", "DeregisterCriticalServiceAfter", "Status",
    "CheckID", "Method", "Header", "Passing", "Warning", "Notes", "SuccessBeforePassing",
    "FailuresBeforeCritical", "script", "grpc", "TLSSkipVerify", "Kind", "Connect",
]  # fmt: skip
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=30),
    st.sampled_from(["10s", "1m30s", "0", "-1s", "http://a:80/x", "a:1", "passing", "ttl", ""]),
)
_json_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.sampled_from(_KEYS), st.text(max_size=8)), inner, max_size=6),
    ),
    max_leaves=30,
)


def _holds(r: Registration) -> None:
    i = r.instance
    assert i.id and i.service and 0 <= i.port <= 65535 and 1 <= i.weight <= 65535
    ids = [c.id for c in r.checks]
    assert len(ids) == len(set(ids))
    for c in r.checks:
        assert c.service_id == i.id
        assert c.kind in ("http", "tcp", "ttl")
        assert c.interval_s >= MIN_INTERVAL_S and c.timeout_s > 0
        assert (c.kind == "ttl") == (c.ttl_s is not None and c.ttl_s > 0)
        assert (c.kind == "http") == (c.http is not None)
        assert (c.kind == "tcp") == (c.tcp is not None)


def _refusal_is_clean(e: ApiError) -> None:
    assert e.status in (400, 413)
    assert e.reason and "\n" not in e.reason and len(e.reason) < 300


# What a client sends, then up to two of its fields spoiled with any JSON value: most are
# registered, so the properties of a registration are checked; random objects alone are
# always refused (a registration needs a Name).
_checks = st.sampled_from(
    [
        {"TTL": "10s"},
        {"HTTP": "http://10.1.2.3:8080/h", "Interval": "10s"},
        {"TCP": "10.1.2.3:8080", "Interval": "5s", "Timeout": "1s"},
        {"CheckID": "c1", "TTL": "30s", "Status": "passing"},
        {"Name": "n", "ttl": "1m", "DeregisterCriticalServiceAfter": "90s"},
    ]
)
_plausible = st.fixed_dictionaries(
    {"Name": st.sampled_from(["web", "db", "api-1", "x.y"]), "Port": st.integers(0, 65535)},
    optional={
        "ID": st.sampled_from(["web-1", "w2", "a:b"]),
        "Address": st.sampled_from(["10.1.2.3", "", "host.example"]),
        "Tags": st.lists(st.text(max_size=8), max_size=3),
        "Meta": st.dictionaries(st.sampled_from(["a", "b_c"]), st.text(max_size=5), max_size=2),
        "Check": _checks,
        "Checks": st.lists(_checks, max_size=3),
    },
)
_spoiled = st.builds(
    lambda body, spoiled: {**body, **spoiled},
    _plausible,
    st.dictionaries(st.sampled_from(_KEYS), _json_values, max_size=1),
)
_bodies = st.one_of(
    _plausible, _spoiled, st.dictionaries(st.sampled_from(_KEYS), _json_values, max_size=10)
)


def test_any_json_object_registers_or_is_refused_cleanly() -> None:
    seen = Outcomes()

    @settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
    @given(_bodies)
    def run(body: dict[str, Any]) -> None:
        try:
            r = parse_registration(json.dumps(body).encode())
        except ApiError as e:
            _refusal_is_clean(e)
            seen("refused")
            return
        _holds(r)
        seen("registered")

    run()
    seen.require(registered=0.3, refused=0.1)


_check_bodies = st.builds(
    lambda check, extra: {**check, **extra},
    _checks,
    st.fixed_dictionaries(
        {"Name": st.just("n"), "ServiceID": st.sampled_from(["web", "w2", "w3", ""])}
    ),
)
_updates = st.fixed_dictionaries(
    {"Status": st.sampled_from(["passing", "warning", "critical", "bad"])},
    optional={"Output": st.text(max_size=10), "output": _scalars},
)


@pytest.mark.parametrize(
    ("parse", "plausible"),
    [
        (parse_registration, _bodies),
        (parse_check_update, _updates),
        (parse_check_registration, _check_bodies),
    ],
)
def test_any_bytes_register_or_are_refused_cleanly(
    parse: Callable[[bytes], object], plausible: st.SearchStrategy[Any]
) -> None:
    seen = Outcomes()

    @settings(max_examples=150)
    @given(
        st.one_of(
            st.binary(max_size=200),
            _json_values.map(lambda v: json.dumps(v).encode()),
            plausible.map(lambda v: json.dumps(v).encode()),
            plausible.map(lambda v: json.dumps(v, indent=1).encode()),
        )
    )
    def run(raw: bytes) -> None:
        try:
            parse(raw)
        except ApiError as e:
            _refusal_is_clean(e)
            seen("refused")
        else:
            seen("accepted")

    run()
    seen.require(accepted=0.15, refused=0.3)


_names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x2FF),
    min_size=1,
    max_size=40,
).filter(str.isprintable)


@settings(max_examples=200)
@given(
    name=_names,
    sid=st.one_of(st.none(), _names),
    port=st.integers(0, 65535),
    tags=st.lists(st.text(max_size=10), max_size=4),
    ttl=st.integers(1, 10_000),
    interval=st.integers(1, 10_000),
)
def test_valid_registrations_keep_what_they_say(
    name: str, sid: str | None, port: int, tags: list[str], ttl: int, interval: int
) -> None:
    body: dict[str, Any] = {"Name": name, "Port": port, "Tags": tags}
    if sid is not None:
        body["ID"] = sid
    body["Checks"] = [
        {"TTL": f"{ttl}ms"},
        {"HTTP": "http://10.1.2.3:8080/h", "Interval": f"{interval}ms"},
    ]
    r = reg(body)
    _holds(r)
    assert (r.instance.service, r.instance.id) == (name, sid or name)
    assert (r.instance.port, list(r.instance.tags)) == (port, tags)
    assert r.checks[0].ttl_s == pytest.approx(ttl / 1000)
    assert r.checks[1].interval_s == pytest.approx(max(interval / 1000, MIN_INTERVAL_S))

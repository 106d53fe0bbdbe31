"""The routes file and the flags' values: settings out, or every problem with its line."""

from __future__ import annotations

import pytest

from dockmesh.errors import SpecError
from dockmesh.proxy.config import check_balance, load_config, parse_backend

GOOD = b"""\
timeouts: {connect: 1500ms, response_header: 10s}
limits: {max_connections: 500, max_header_bytes: 8192}
routes:
  - host: API.example.test
    prefix: /api
    service: api
    balance: p2c
  - prefix: /
    backends: [http://127.0.0.1:9001, "127.0.0.1:9002", "http://[::1]:9003"]
    health: /health
"""


def test_a_good_file() -> None:
    s = load_config(GOOD, "routes.yaml")
    assert s.timeouts == {"connect": 1.5, "response_header": 10.0}
    assert s.limits == {"max_connections": 500, "max_header_bytes": 8192}
    api, rest = s.routes
    assert (api.name, api.service, api.host, api.prefix, api.balance) == (
        "api", "api", "api.example.test", "/api", "p2c",
    )  # fmt: skip
    assert rest.backends == ["127.0.0.1:9001", "127.0.0.1:9002", "[::1]:9003"]
    assert rest.health_path == "/health" and rest.service is None and rest.name == "route1"


def test_every_problem_at_once_with_its_line() -> None:
    bad = b"""\
timeouts: {connect: soon, bogus: 1s}
limits: {max_connections: 0}
routes:
  - prefix: nope
    service: api
    backends: [http://a:1]
  - backends: [ftp://x]
    balance: fastest
  - 7
extra: 1
"""
    with pytest.raises(SpecError) as e:
        load_config(bad, "r.yaml")
    text = str(e.value)
    for expected in (
        "r.yaml:1: timeouts.connect",
        "r.yaml:1: timeouts.bogus",
        "r.yaml:2: limits.max_connections",
        "r.yaml:4: routes.0.prefix",
        "routes.0: needs exactly one of service or backends",
        "r.yaml:7: routes.1.backends.0",
        "r.yaml:8: routes.1.balance",
        "routes.2: must be a mapping",
        "r.yaml:10: extra",
    ):
        assert expected in text, expected


def test_backends_and_balancers_from_the_flags() -> None:
    assert parse_backend("http://b.test:8080") == "b.test:8080"
    assert parse_backend("b.test") == "b.test:80"
    for bad, why in (
        ("https://b:1", "only http://"),
        ("http://b:1/path", "without a path"),
        ("http://b:99999", "1 to 65535"),
    ):
        with pytest.raises(ValueError, match=why):
            parse_backend(bad)
    assert check_balance("weighted") is None and check_balance("hash:cookie:sid") is None
    assert "not a balancer" in (check_balance("hash:") or "")
    assert "not a balancer" in (check_balance("fastest") or "")


def test_the_passive_section() -> None:
    s = load_config(
        b"passive: {failure_statuses: [500, 502], max_ejection_percent: 30, panic_threshold: 0}\n",
        "routes.yaml",
    )
    assert s.passive == {
        "failure_statuses": frozenset({500, 502}),
        "max_ejection_percent": 30.0,
        "panic_threshold": 0.0,
    }
    with pytest.raises(SpecError) as e:
        load_config(
            b"passive:\n  failure_statuses: [404]\n  max_ejection_percent: 120\n  bogus: 1\n",
            "r.yaml",
        )
    text = str(e.value)
    assert "r.yaml:2: passive.failure_statuses" in text
    assert "r.yaml:3: passive.max_ejection_percent" in text
    assert "r.yaml:4: passive.bogus" in text


def test_trusted_proxies_are_cidrs_and_none_by_default() -> None:
    assert load_config(GOOD, "r.yaml").trusted_proxies == []
    s = load_config(b"trusted_proxies: [10.0.0.0/8, 127.0.0.1, '::1']\n", "r.yaml")
    assert [str(n) for n in s.trusted_proxies] == ["10.0.0.0/8", "127.0.0.1/32", "::1/128"]
    with pytest.raises(SpecError) as e:
        load_config(b"trusted_proxies: [10.0.0.0/8, nope]\n", "r.yaml")
    assert "r.yaml:1: trusted_proxies.1" in str(e.value)


def test_a_prefix_that_normalised_requests_could_never_match_is_refused() -> None:
    with pytest.raises(SpecError) as e:
        load_config(b"routes:\n  - prefix: /a/../b/\n    backends: [http://a:1]\n", "r.yaml")
    assert "r.yaml:2: routes.0.prefix: must be a normalised path: /b/" in str(e.value)
    assert load_config(b"routes:\n  - prefix: /a/\n    backends: [http://a:1]\n", "r").routes


@pytest.mark.parametrize(
    ("host", "hint"),
    [("api.test:8080", "api.test"), ("[::1]:8080", "[::1]"), ("::1", "[::1]")],
)
def test_a_route_host_that_requests_could_never_match_is_refused(host: str, hint: str) -> None:
    """Requests are matched by their Host without its port (and an IPv6 one in brackets): a
    route host with a port answered 404 to everything, silently."""
    with pytest.raises(SpecError) as e:
        load_config(f"routes:\n  - host: '{host}'\n    backends: [http://a:1]\n".encode(), "r")
    assert f"routes.0.host: must be a host name without a port: {hint}" in str(e.value)
    for good in ("api.test", "[::1]", "[2001:db8::1]"):
        doc = f"routes:\n  - host: '{good}'\n    backends: [http://a:1]\n"
        assert load_config(doc.encode(), "r").routes[0].host == good


def test_the_tls_section_with_files_from_the_routes_files_folder() -> None:
    s = load_config(
        b"tls:\n"
        b"  certificates: [{cert: a.crt, key: /abs/a.key}]\n"
        b"  internal: true\n"
        b"  ca_dir: ca\n"
        b"  default_name: App.test\n"
        b"  handshake_timeout: 2s\n"
        b"  max_names: 50\n",
        "/etc/dockmesh/routes.yaml",
    )
    assert s.tls == {
        "certificates": [("/etc/dockmesh/a.crt", "/abs/a.key")],
        "internal": True,
        "ca_dir": "/etc/dockmesh/ca",
        "default_name": "app.test",
        "handshake_timeout": 2.0,
        "max_names": 50,
    }
    assert load_config(b"routes: []\n", "r.yaml").tls == {}


def test_a_wrong_tls_section_says_each_problem_with_its_line() -> None:
    bad = b"""\
tls:
  certificates: [{cert: a.crt}, 7]
  internal: yes please
  default_name: "bad name"
  handshake_timeout: 0s
  max_names: 0
  listen: 10.2.3.4:443
"""
    with pytest.raises(SpecError) as e:
        load_config(bad, "r.yaml")
    text = str(e.value)
    for expected in (
        "r.yaml:2: tls.certificates.0: must be {cert: FILE, key: FILE}",
        "tls.certificates.1",
        "r.yaml:3: tls.internal: must be true or false",
        "r.yaml:4: tls.default_name",
        "r.yaml:5: tls.handshake_timeout",
        "r.yaml:6: tls.max_names",
        "r.yaml:7: tls.listen: unknown setting",
    ):
        assert expected in text, (expected, text)


def test_upstream_protocol_is_http1_by_default_h2_when_asked_and_nothing_else() -> None:
    s = load_config(
        b"routes:\n  - backends: [http://a:1]\n  - backends: [http://b:1]\n"
        b"    upstream_protocol: h2\n",
        "r.yaml",
    )
    assert [r.upstream_protocol for r in s.routes] == ["http/1.1", "h2"]
    with pytest.raises(SpecError) as e:
        load_config(b"routes:\n  - backends: [http://a:1]\n    upstream_protocol: h3\n", "r.yaml")
    assert "r.yaml:3: routes.0.upstream_protocol: must be http/1.1 or h2" in str(e.value)


def test_resource_limits_and_their_timeouts() -> None:
    s = load_config(
        b"timeouts: {client_body: 20s, client_send: 1m}\n"
        b"limits: {request_buffer_bytes: 8192, max_connections_per_client: 0,\n"
        b"         max_buffered_bytes: 1048576}\n",
        "r.yaml",
    )
    assert s.timeouts == {"client_body": 20.0, "client_send": 60.0}
    assert s.limits == {
        "request_buffer_bytes": 8192,
        "max_connections_per_client": 0,
        "max_buffered_bytes": 1048576,
    }
    with pytest.raises(SpecError) as e:
        load_config(b"limits: {request_buffer_bytes: 0, max_connections_per_client: -1}\n", "r")
    text = str(e.value)
    assert "r:1: limits.request_buffer_bytes: must be a whole number >= 1" in text
    assert "r:1: limits.max_connections_per_client: must be a whole number >= 0" in text


RESILIENT = b"""\
routes:
  - prefix: /a
    backends: [http://127.0.0.1:9001]
    breaker: {failures: 3, open_for: 45s, probes: 2}
    outlier: {failures: 4, eject_for: 10s}
    retry: {attempts: 2, on: [connect, 502], budget: 0.1, min_per_s: 1}
  - prefix: /b
    backends: [http://127.0.0.1:9001]
    breaker: {failures: 3, open_for: 45s, probes: 2}
    outlier: {failures: 4, eject_for: 10s}
    retry: {attempts: 2, on: [connect, 502], budget: 0.1, min_per_s: 1}
"""


def test_breaker_outlier_and_retry_per_route() -> None:
    a, b = load_config(RESILIENT, "r.yaml").routes
    assert a.breaker == {"consecutive_failures": 3, "open_base_s": 45.0, "half_open_probes": 2}
    assert a.outlier == {"consecutive_5xx": 4, "base_ejection_s": 10.0}
    assert a.retry == {
        "attempts": 2,
        "on": frozenset({"connect", 502}),
        "budget_ratio": 0.1,
        "min_per_s": 1,
    }
    assert (b.breaker, b.outlier, b.retry) == (a.breaker, a.outlier, a.retry)


def test_wrong_resilience_settings_are_reported_with_their_lines() -> None:
    bad = b"""\
routes:
  - backends: [http://127.0.0.1:9001]
    breaker: {failures: 0, open_for: soon, failure_ratio: 2, color: red}
    outlier: 5
    retry: {attempts: 2, on: [connect, 500, timeout]}
  - prefix: /b
    backends: [http://127.0.0.1:9002]
    breaker: {open_for: 10s, open_max: 5s}
  - prefix: /c
    backends: [http://127.0.0.1:9002]
    retry: {attempts: 1}
"""
    with pytest.raises(SpecError) as e:
        load_config(bad, "r.yaml")
    text = str(e.value)
    for expected in (
        "r.yaml:3: routes.0.breaker.failures: must be a whole number >= 1",
        "r.yaml:3: routes.0.breaker.open_for",
        "r.yaml:3: routes.0.breaker.failure_ratio: must be a share",
        "r.yaml:3: routes.0.breaker.color: unknown key",
        "r.yaml:4: routes.0.outlier: must be a mapping",
        "r.yaml:5: routes.0.retry.on: 500 cannot be retried",
        "r.yaml:8: routes.1.breaker: open_for > 0, backoff >= 1, open_max >= open_for",
        "r.yaml:11: routes.2.retry: differs from routes.1's",
    ):
        assert expected in text, (expected, text)


def test_open_for_alone_raises_the_cap_of_the_backoff() -> None:
    from dockmesh.proxy.config import make_policy

    p = make_policy("breaker", {"open_base_s": 60.0})
    assert p.open_base_s == 60.0 and p.open_max_s == 60.0
    assert make_policy("outlier", {"base_ejection_s": 600.0}).max_ejection_s == 600.0

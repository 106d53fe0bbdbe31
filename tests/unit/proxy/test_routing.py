"""Which cluster a request goes to, and the hash key read from it."""

from __future__ import annotations

import random
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.proxy import http1
from dockmesh.proxy.cluster import Cluster
from dockmesh.proxy.routing import KeyReader, Router
from dockmesh.proxy.settings import Route
from dockmesh.testing.clock import ManualClock


def cluster(name: str) -> Cluster[Any]:
    return Cluster(name, "round_robin", clock=ManualClock(), rng=random.Random(0))


def head(target: bytes = b"/", host: bytes = b"h.test", extra: bytes = b"") -> http1.RequestHead:
    raw = b"GET " + target + b" HTTP/1.1\r\nHost: " + host + b"\r\n" + extra + b"\r\n"
    req = http1.parse_request_head(raw)
    assert req is not None
    return req


def test_a_lone_catch_all_route_needs_no_routing_and_takes_the_fast_lane() -> None:
    c = cluster("web")
    r = Router([Route(c)], {})
    assert r.single is c and r.fast is c and r.route(head(b"/anything")) is c
    assert r.clusters == [c]
    hashed = Router([Route(c)], {"web": "X-User"})
    assert hashed.single is c and hashed.fast is None  # the hash key needs the full reader
    narrow = Router([Route(c, prefix=b"/api")], {})
    assert narrow.single is None and narrow.fast is None


def test_first_route_whose_host_and_prefix_match() -> None:
    api, www, fallback = cluster("api"), cluster("www"), cluster("fallback")
    r = Router(
        [
            Route(api, host=b"api.test", prefix=b"/v1"),
            Route(www, host=b"www.test"),
            Route(fallback, prefix=b"/"),
            Route(api),  # never reached, but counted once among the clusters
        ],
        {},
    )
    assert r.route(head(b"/v1/x", b"API.test:8080")) is api  # case and port ignored
    assert r.route(head(b"/v2", b"api.test")) is fallback
    assert r.route(head(b"/v1", b"www.test")) is www
    assert r.route(head(b"http://api.test/v1/x", b"api.test")) is api  # absolute form
    assert r.route(head(b"/v1", b"[fd00::1]:80")) is fallback
    assert [c.name for c in r.clusters] == ["api", "www", "fallback"]
    assert Router([Route(api, host=b"api.test")], {}).route(head(b"/", b"other")) is None


def test_ipv6_hosts_keep_their_brackets() -> None:
    c = cluster("six")
    r = Router([Route(c, host=b"[fd00::1]"), Route(cluster("other"))], {})
    assert r.route(head(b"/", b"[fd00::1]:8080")) is c


def test_hash_keys_from_a_header_a_cookie_or_the_client() -> None:
    c = cluster("web")
    raw = b"GET / HTTP/1.1\r\nHost: h\r\nx-user:  alice \r\nCookie: a=1; sid=s42; b=2\r\n\r\n"
    assert KeyReader("X-User").key(raw, b"10.0.0.1") == b"alice"
    assert KeyReader("cookie:sid").key(raw, b"10.0.0.1") == b"s42"
    assert KeyReader("ip").key(raw, b"10.0.0.1") == b"10.0.0.1"
    assert KeyReader("X-Missing").key(raw, b"10.0.0.1") is None
    r = Router([Route(c)], {"web": "cookie:sid"})
    assert r.key(c, raw, b"ip") == b"s42"
    assert r.key(cluster("other"), raw, b"ip") is None


def test_an_absolute_form_target_routes_by_its_authority_not_host() -> None:
    admin, public = cluster("admin"), cluster("public")
    r = Router([Route(admin, host=b"admin.internal"), Route(public, host=b"public")], {})
    assert r.route(head(b"/", b"public")) is public
    assert r.route(head(b"http://admin.internal/", b"public")) is admin
    assert r.route(head(b"http://nobody.test/", b"public")) is None
    assert r.route(head(b"HTTP://PUBLIC:80/x", b"admin.internal")) is public


def test_dot_segments_cannot_escape_a_prefix() -> None:
    p, other = cluster("p"), cluster("other")
    r = Router([Route(p, prefix=b"/p/"), Route(other, host=b"only.test")], {})
    for target in (b"/p/../x", b"/p/%2e%2e/x", b"/p/%2E%2E/x", b"/p/.%2e/x", b"/p//../x"):
        assert r.route(head(target)) is None, target
    assert r.route(head(b"/p/./x")) is p
    assert r.route(head(b"/q/../p/x")) is p


def test_strip_prefix_rewrites_what_is_forwarded_and_leaves_the_fast_lane() -> None:
    from dockmesh.proxy.routing import strip_prefix

    api, web = cluster("api"), cluster("web")
    r = Router([Route(api, b"shop.test", b"/api", strip=b"/api"), Route(web)], {})
    assert r.single is None and r.fast is None
    req = head(b"/api/users?x=1", b"shop.test")
    assert r.route(req) is api and req.target == b"/users?x=1" and req.retarget
    req = head(b"/api", b"shop.test")
    assert r.route(req) is api and req.target == b"/"
    req = head(b"/api/users", b"other.test")
    assert r.route(req) is web and req.target == b"/api/users" and not req.retarget
    alone = Router([Route(api, strip=b"/v1")], {})
    assert alone.single is None  # a lone catch-all that strips still reads every request
    req = head(b"/v1/x")
    assert alone.route(req) is api and req.target == b"/x"
    assert strip_prefix(b"/api?q", b"/api") == b"/?q"


@given(
    st.lists(st.from_regex(rb"[a-z0-9]{1,5}", fullmatch=True), min_size=1, max_size=3),
    st.lists(st.from_regex(rb"[a-z0-9]{1,5}", fullmatch=True), max_size=3),
    st.sampled_from([b"", b"?a=1"]),
)
def test_stripping_a_prefix_leaves_an_origin_form_target_ending_as_it_did(
    prefix_segs: list[bytes], rest_segs: list[bytes], query: bytes
) -> None:
    from dockmesh.proxy.routing import strip_prefix

    prefix = b"/" + b"/".join(prefix_segs)
    rest = b"".join(b"/" + s for s in rest_segs)
    out = strip_prefix(prefix + rest + query, prefix)
    assert out.startswith(b"/")
    assert out == (rest or b"/") + query


def test_a_host_with_its_final_dot_routes_as_the_host_without() -> None:
    """`admin.test.` is `admin.test` (a fully qualified name): TLS serves it the same leaf,
    and routing must not send it to the catch-all instead of the host's route, past what
    guards that route."""
    admin, other = cluster("admin"), cluster("other")
    r = Router([Route(admin, host=b"admin.test"), Route(other)], {})
    assert r.route(head(b"/", b"admin.test.")) is admin
    assert r.route(head(b"/", b"ADMIN.TEST.:8080")) is admin
    assert r.route(head(b"http://admin.test./x", b"other")) is admin
    assert r.route(head(b"/", b"admin.test..")) is other

"""The `dockmesh.http.*` labels and the Meta that carries them: decoding never raises, a
good route survives the round trip, a bad value is one line naming its label."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.model.httproute import (
    HttpRoute,
    decode_fields,
    decode_labels,
    decode_meta,
    encode_labels,
    host_problem,
    meta_of_labels,
    path_problem,
)

_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True)
hosts = st.lists(_label, min_size=1, max_size=3).map(".".join)
paths = st.lists(st.from_regex(r"[A-Za-z0-9_~-]{1,8}", fullmatch=True), max_size=3).map(
    lambda segs: "/" + "/".join(segs)
)
names = st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True)


@st.composite
def routes(draw: st.DrawFn) -> HttpRoute:
    path = draw(paths)
    strip = draw(st.sampled_from([None, "path", "other"]))
    return HttpRoute(
        hosts=tuple(dict.fromkeys(draw(st.lists(hosts, max_size=3)))),
        path=path,
        strip=None if strip is None or path == "/" else path if strip == "path" else path + "/v1",
        middlewares=tuple(dict.fromkeys(draw(st.lists(names, max_size=3)))),
        port=draw(st.none() | st.integers(1, 65535)),
    )


@given(routes())
def test_a_route_survives_labels_and_meta(route: HttpRoute) -> None:
    labels = encode_labels(route)
    assert decode_labels(labels) == (route, [])
    assert decode_meta(meta_of_labels(labels)) == (route, [])


@given(st.dictionaries(st.sampled_from(["host", "path", "strip_prefix", "middlewares", "port"]),
                       st.text(max_size=30)))  # fmt: skip
def test_decoding_any_text_never_raises_and_a_route_is_always_valid(values: dict[str, str]) -> None:
    route, problems = decode_fields(values)
    if route is None:
        assert problems or not ({"host", "path"} & set(values))
        assert all("\n" not in p for p in problems)
    else:
        assert problems == []
        assert path_problem(route.path) is None
        assert all(host_problem(h) is None for h in route.hosts)
        assert route.strip is None or path_problem(route.strip) is None


def test_several_hosts_lower_case_without_duplicates() -> None:
    route, problems = decode_labels(
        {"dockmesh.http.host": " Shop.Test, www.shop.test,,shop.test. ", "dockmesh.http.path": "/"}
    )
    assert problems == []
    assert route == HttpRoute(hosts=("shop.test", "www.shop.test"))


def test_strip_prefix_true_false_or_a_prefix() -> None:
    def strip(text: str, path: str = "/api") -> str | None:
        route, problems = decode_labels(
            {"dockmesh.http.path": path, "dockmesh.http.strip_prefix": text}
        )
        assert problems == [] and route is not None
        return route.strip

    assert strip("true") == "/api"
    assert strip("TRUE") == "/api"
    assert strip("false") is None
    assert strip("/api/v1") == "/api/v1"
    assert strip("true", path="/") is None


def test_each_bad_value_is_one_line_naming_its_label() -> None:
    cases = {
        ("dockmesh.http.host", "shop.test:8080"): "without a port",
        ("dockmesh.http.host", "*.shop.test"): "wildcards",
        ("dockmesh.http.host", "bad host"): "not a host name",
        ("dockmesh.http.host", " , "): "is empty",
        ("dockmesh.http.path", "api"): "starts with '/'",
        ("dockmesh.http.path", "/a/../b"): "normalised",
        ("dockmesh.http.path", "/a//b"): "normalised",
        ("dockmesh.http.path", "/a?x=1"): "query",
        ("dockmesh.http.path", "/%2e"): "percent-escapes",
        ("dockmesh.http.strip_prefix", "maybe"): "expected true, false or a path prefix",
        ("dockmesh.http.middlewares", "auth@docker"): "routes file",
        ("dockmesh.http.middlewares", "a b"): "not a middleware's name",
        ("dockmesh.http.port", "http"): "from 1 to 65535",
        ("dockmesh.http.port", "70000"): "from 1 to 65535",
    }
    for (key, value), words in cases.items():
        labels = {"dockmesh.http.path": "/", key: value}
        route, problems = decode_labels(labels)
        assert route is None, (key, value)
        assert len(problems) == 1 and key in problems[0] and words in problems[0], problems


def test_a_misspelt_label_and_options_without_a_rule_are_reported() -> None:
    route, problems = decode_labels({"dockmesh.http.hosts": "a.test", "dockmesh.http.path": "/"})
    assert route is not None  # the route stands; the misspelling is said
    assert problems == [
        "dockmesh.http.hosts: unknown label (expected dockmesh.http.host, dockmesh.http.path, "
        "dockmesh.http.strip_prefix, dockmesh.http.middlewares, dockmesh.http.port)"
    ]
    route, problems = decode_labels({"dockmesh.http.port": "8080"})
    assert route is None and "without dockmesh.http.host or dockmesh.http.path" in problems[0]
    assert decode_labels({"dockmesh.service": "api"}) == (None, [])


def test_a_traefik_file_provider_suffix_is_dropped() -> None:
    route, _ = decode_labels({"dockmesh.http.path": "/", "dockmesh.http.middlewares": "auth@file"})
    assert route is not None and route.middlewares == ("auth",)

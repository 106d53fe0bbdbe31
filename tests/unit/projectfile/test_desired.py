"""desired_state: what a validated file asks the engine for — start order, dual-stack
networks in the engine's own spelling, healthchecks in Docker's forms, commands split after
their templates are filled in."""

from __future__ import annotations

import http.server
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.config import EndpointConfig, IpamConfig
from dockmesh.projectfile.desired import healthcheck_test, start_order
from dockmesh.projectfile.schema import Healthcheck, Spec
from tests.unit.helpers import desired_of


def svc(**fields: Any) -> dict[str, Any]:
    return {"image": "x", **fields}


# --- start order ----------------------------------------------------------------------------


def test_static_addresses_start_first_where_depends_on_allows() -> None:
    doc = {
        # pinned outside the pool: a dependency drawing from it may start first
        "networks": {"a": {"subnet": "10.1.0.0/24", "ip_range": "10.1.0.0/25"}},
        "services": {
            "web": svc(replicas=2, networks=["a"]),
            "cache": svc(networks=["a"]),
            "db": svc(networks={"a": {"ipv4_address": "10.1.0.200"}}, depends_on=["store"]),
            "store": svc(networks=["a"]),
            "lb": svc(networks={"a": {"ipv4_address": "10.1.0.201"}}, depends_on=["web"]),
        },
    }
    d = desired_of(doc)
    assert [c.name for c in d.containers] == [
        "p-store-1",  # db needs it
        "p-db-1",
        "p-web-1",  # lb needs it
        "p-web-2",
        "p-lb-1",
        "p-cache-1",
    ]
    assert [c.static_addresses for c in d.containers] == [False, True, False, False, True, False]


@st.composite
def dags(draw: Any) -> Spec:
    n = draw(st.integers(1, 8))
    names = [f"s{i}" for i in range(n)]
    services: dict[str, Any] = {}
    for i, name in enumerate(names):
        deps = draw(st.lists(st.sampled_from(names[:i]), unique=True)) if i else []
        pinned = draw(st.booleans())
        networks = {"a": {"ipv4_address": f"10.1.0.{10 + i}"}} if pinned else {"a": None}
        services[name] = svc(depends_on=deps, networks=networks)
    order = draw(st.permutations(names))  # file order need not be dependency order
    return Spec.model_validate(
        {
            "networks": {"a": {"subnet": "10.1.0.0/24"}},
            "services": {k: services[k] for k in order},
        }
    )


@settings(max_examples=200, deadline=None)
@given(dags())
def test_start_order_respects_depends_on_and_starts_pinned_services_early(spec: Spec) -> None:
    order = start_order(spec)
    assert sorted(order) == sorted(spec.services)
    pos = {n: i for i, n in enumerate(order)}
    for name, s in spec.services.items():
        assert all(pos[d] < pos[name] for d in s.depends_on), order

    def pinned(n: str) -> bool:
        a = spec.services[n].networks["a"]
        return a is not None and a.ipv4_address is not None

    needed: set[str] = set()
    stack = [n for n in spec.services if pinned(n)]
    while stack:
        for d in spec.services[stack.pop()].depends_on:
            if d not in needed:
                needed.add(d)
                stack.append(d)
    free = [n for n in spec.services if not pinned(n) and n not in needed]
    for p in filter(pinned, spec.services):
        assert all(pos[p] < pos[f] for f in free), order


def test_start_order_ends_even_on_a_cycle() -> None:
    spec = Spec.model_validate(
        {"services": {"a": svc(depends_on=["b"]), "b": svc(depends_on=["a"]), "c": svc()}}
    )
    assert sorted(start_order(spec)) == ["a", "b", "c"]


# --- networks and addresses -----------------------------------------------------------------


def test_dual_stack_in_the_engines_spelling() -> None:
    doc = {
        "networks": {
            "a": {
                "subnet": ["FD00:1:0::/64", "10.1.0.0/24"],
                "gateway": ["fd00:1::0:1", "10.1.0.1"],
                "ip_range": "FD00:1::100/120",
                "aux_addresses": {"v4": "10.1.0.200", "v6": "fd00:1:0:0::2"},
            },
            "b": {"subnet": "10.2.0.0/24"},
        },
        "services": {
            "s": svc(networks={"a": {"ipv4_address": "10.1.0.9", "ipv6_address": "FD00:1::9"}}),
        },
    }
    d = desired_of(doc)
    a, b = d.networks
    assert a.config.ipam == (
        IpamConfig("10.1.0.0/24", "10.1.0.1", None, {"v4": "10.1.0.200"}),
        IpamConfig("fd00:1::/64", "fd00:1::1", "fd00:1::100/120", {"v6": "fd00:1::2"}),
    )
    assert a.config.enable_ipv6 and not b.config.enable_ipv6
    assert d.containers[0].config.networks == (EndpointConfig("p_a", (), "10.1.0.9", "fd00:1::9"),)


# --- commands and healthchecks --------------------------------------------------------------


def test_templates_with_spaces_are_one_word() -> None:
    d = desired_of({"services": {"w": svc(command="echo {{ name }} '{{replica}} x'")}})
    assert d.containers[0].config.command == ("echo", "p-w-1", "1 x")


@pytest.mark.parametrize(
    ("test", "engine"),
    [
        (["CMD", "prog", "arg"], ("CMD", "prog", "arg")),
        (["CMD-SHELL", "exit 0"], ("CMD-SHELL", "exit 0")),
        (["NONE"], ("NONE",)),
        ("exit 0", ("CMD-SHELL", "exit 0")),
    ],
)
def test_healthcheck_tests_reach_the_engine_as_written(test: Any, engine: tuple[str, ...]) -> None:
    d = desired_of({"services": {"w": svc(healthcheck={"test": test})}})
    hc = d.containers[0].config.healthcheck
    assert hc is not None and hc.test == engine


class _Recorder(http.server.BaseHTTPRequestHandler):
    paths: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        _Recorder.paths.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def recorder() -> Iterator[int]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Recorder)
    _Recorder.paths = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def _run_check(cmd: str, path_dir: str | None) -> int:
    env = {"PATH": path_dir or os.environ["PATH"]}
    shell = shutil.which("sh", path=env["PATH"]) or "/bin/sh"
    return subprocess.run([shell, "-c", cmd], env=env, timeout=30).returncode


PATHS = ["/health", "/a%20b?x=%25s&y=%n", "/'quoted'$HOME`id`;x", "/%%%"]


@pytest.mark.parametrize("path", PATHS)
def test_http_check_sends_the_path_literally_with_python(recorder: int, path: str) -> None:
    if shutil.which("python3") is None:  # scripts/setup.sh puts its venv's python3 first
        pytest.fail("no python3 on PATH: scripts/setup.sh's venv has one")
    hc = Healthcheck(http=path, port=recorder)
    form, cmd = healthcheck_test(hc)
    assert form == "CMD-SHELL"
    assert _run_check(cmd, None) == 0
    assert _Recorder.paths == [path]


@pytest.mark.parametrize("path", PATHS)
def test_http_check_sends_the_path_literally_with_busybox(
    recorder: int, path: str, tmp_path: Any
) -> None:
    busybox = shutil.which("busybox")
    if busybox is None:
        pytest.fail("busybox is missing: scripts/setup.sh installs it (busybox-static)")
    for applet in ("sh", "printf", "nc", "head", "grep"):
        os.symlink(busybox, tmp_path / applet)  # no python3 here: the image's other branch
    hc = Healthcheck(http=path, port=recorder)
    _, cmd = healthcheck_test(hc)
    assert _run_check(cmd, str(tmp_path)) == 0
    assert _Recorder.paths == [path]

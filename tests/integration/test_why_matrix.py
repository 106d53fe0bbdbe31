"""`dockmesh why` and `dockmesh matrix` on the chapter's isolation layout (frontend, backend,
database-internal; the frontend container on frontend+backend, the database only on
database), with real containers probed from their namespaces.

The layout is built once for the module (its tests only read it; the one that adds a container
removes it) and the module's tests run on one xdist worker; each test has a policy table and
state folder of its own, removed after it, so no test sees another's policy."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.conftest import cleanup, dockmesh, free_subnets, remove_policy_tables

pytestmark = pytest.mark.xdist_group("why_matrix")  # one worker builds the layout once


@dataclass
class Layout:
    prefix: str
    names: dict[str, str]  # role → container name
    table: str = ""  # the test's own policy table


@pytest.fixture(scope="module")
def built(api: Any, toolbox: str) -> Iterator[Layout]:
    prefix = f"dmt{secrets.token_hex(3)}"
    try:
        yield build(api, toolbox, prefix)
    finally:
        cleanup(api, prefix)


@pytest.fixture
def layout(built: Layout, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Layout]:
    table = f"{built.prefix}{secrets.token_hex(2)}pol"
    monkeypatch.setenv("DOCKMESH_AGENT", "http://127.0.0.1:9")
    monkeypatch.setenv("DOCKMESH_POLICY_TABLE", table)
    monkeypatch.setenv("DOCKMESH_POLICY_DIR", str(tmp_path / "policy"))
    try:
        yield dataclasses.replace(built, table=table)
    finally:
        remove_policy_tables(table)


def build(api: Any, toolbox: str, prefix: str) -> Layout:
    fe, be, db = free_subnets(api, 3)
    nets = {"frontend": fe, "backend": be, "database": db}
    for name, subnet in nets.items():
        api.create_network(
            f"{prefix}_{name}", ipam={"Config": [{"Subnet": subnet}]}, internal=name == "database"
        )
    spec = {
        # role: (networks, command, labels)
        "frontend": (["frontend", "backend"], None, {"dockmesh.service": f"{prefix}fe"}),
        "backend": (["backend", "database"], None, {"dockmesh.service": f"{prefix}be"}),
        "database": (["database"], ["httpd", "-f", "-p", "5432", "-h", "/www"], {}),
        # A server bound to its own loopback only: the classic finding.
        "local": (["backend"], ["httpd", "-f", "-p", "127.0.0.1:8080", "-h", "/www"], {}),
    }
    names = {}
    for role, (on, command, labels) in spec.items():
        name = f"{prefix}-{role}"
        first, *rest = on
        cid = api.create_container(
            toolbox,
            name=name,
            hostname=name,
            command=command,
            labels={**labels, "dmt.case": prefix},
            host_config=api.create_host_config(network_mode=f"{prefix}_{first}"),
            networking_config=api.create_networking_config(
                {f"{prefix}_{first}": api.create_endpoint_config(aliases=[role])}
            ),
        )["Id"]
        for net in rest:
            api.connect_container_to_network(cid, f"{prefix}_{net}", aliases=[role])
        api.start(cid)
        names[role] = name
    return Layout(prefix, names)


def why(*args: str) -> tuple[int, dict[str, Any]]:
    proc = dockmesh("why", *args, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_why_frontend_database_share_no_network(layout: Layout) -> None:
    n = layout.names
    code, doc = why(n["frontend"], n["database"], "--probe")
    assert code == 1 and doc["reachable"] is False
    checks = {s["check"]: s for s in doc["steps"]}
    assert checks["running"]["ok"] is True
    assert checks["shared_network"]["ok"] is False
    assert f"{layout.prefix}_database" in checks["shared_network"]["detail"]
    assert checks["dns"]["ok"] is False
    assert doc["probe"]["ok"] is False  # Docker's isolation drops it, as analysed


def test_why_backend_database_on_5432_is_reachable_and_says_why(layout: Layout) -> None:
    n = layout.names
    code, doc = why(n["backend"], n["database"], "--port", "5432/tcp", "--probe")
    assert code == 0, doc
    assert doc["reachable"] is True and doc["port"] == "5432/tcp"
    assert [s["check"] for s in doc["steps"]] == [
        "running",
        "shared_network",
        "internal",
        "icc",
        "policy",
        "dns",
        "listening",
    ]
    assert all(s["ok"] for s in doc["steps"]), doc["steps"]
    checks = {s["check"]: s for s in doc["steps"]}
    assert "is internal" in checks["internal"]["detail"]
    assert "no policy applied" in checks["policy"]["detail"]
    assert n["database"] in checks["dns"]["detail"] and "database" in checks["dns"]["detail"]
    assert doc["probe"]["ok"] is True and doc["probe"]["latency_ms"] is not None


def test_why_a_reachable_udp_port_exits_0_though_it_is_not_probed(api: Any, layout: Layout) -> None:
    """UDP is not probed (an unanswered datagram says nothing): the verdict is the analysis's,
    and a reachable one exits 0. It exited 1, as if the probe had failed."""
    n = layout.names
    pid = api.inspect_container(n["database"])["State"]["Pid"]
    # A UDP socket bound in the database's namespace (the toolbox has no UDP server).
    server = subprocess.Popen(
        ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", UDP_SERVER],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "bound"
        code, doc = why(n["backend"], n["database"], "--port", "5353/udp", "--probe")
        assert doc["reachable"] is True, doc
        assert doc["probe"]["ok"] is None and "not probed" in doc["probe"]["detail"]
        assert code == 0
    finally:
        server.kill()
        server.wait()


UDP_SERVER = """
import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 5353))
print("bound", flush=True)
time.sleep(120)
"""


def test_why_finds_a_server_bound_to_loopback(layout: Layout) -> None:
    n = layout.names
    code, doc = why(n["frontend"], n["local"], "--port", "8080/tcp", "--probe")
    assert code == 1
    listening = next(s for s in doc["steps"] if s["check"] == "listening")
    assert listening["ok"] is False and "127.0.0.1:8080 only" in listening["detail"]
    assert doc["probe"]["ok"] is False and "refused" in doc["probe"]["detail"]
    assert doc["probe"]["latency_ms"] is None  # a failed probe has no latency


def test_why_names_the_rule_that_decided(layout: Layout, tmp_path: Path) -> None:
    n, p = layout.names, layout.prefix
    policy = tmp_path / "p.yaml"
    policy.write_text(
        f"policy:\n  networks: {{{p}_backend: {{default: deny}}}}\n  rules:\n"
        f"    - {{from: {{service: {p}fe}}, to: {{service: {p}be}}, ports: [8080/tcp]}}\n"
    )
    dockmesh("policy", "apply", str(policy), check=True)
    code, doc = why(n["frontend"], n["backend"], "--port", "8080/tcp", "--probe")
    assert (
        code == 0
        and "rule 1 allows it" in next(s for s in doc["steps"] if s["check"] == "policy")["detail"]
    )
    code, doc = why(n["backend"], n["frontend"], "--port", "8080/tcp", "--probe")
    assert code == 1
    pol = next(s for s in doc["steps"] if s["check"] == "policy")
    assert pol["ok"] is False and f"network {p}_backend's default denies it" in pol["detail"]
    assert doc["probe"]["ok"] is False
    # The matrix agrees with the kernel under the policy too.
    proc = dockmesh("matrix", "--select", f"label=dmt.case={p}", "--port", "8080/tcp", "--json")
    m = json.loads(proc.stdout)
    assert m["mismatches"] == 0, [x for x in m["pairs"] if x["expected"] != x["observed"]]
    assert proc.returncode == 0


def test_matrix_shows_no_mismatch(layout: Layout) -> None:
    p = layout.prefix
    proc = dockmesh("matrix", "--select", f"label=dmt.case={p}", "--json")
    doc = json.loads(proc.stdout)
    assert doc["mismatches"] == 0, [x for x in doc["pairs"] if x["expected"] != x["observed"]]
    assert proc.returncode == 0
    got = {(x["src"], x["dst"]): x["observed"] for x in doc["pairs"]}
    n = layout.names
    assert len(got) == 12
    assert got[(n["frontend"], n["backend"])] is True
    assert got[(n["frontend"], n["database"])] is False
    assert got[(n["backend"], n["database"])] is True
    assert got[(n["database"], n["frontend"])] is False
    # Human output: the grid and the count.
    text = dockmesh("matrix", "--select", f"label=dmt.case={p}").stdout
    assert "12 pairs" in text and "0 mismatches" in text


def test_bad_input_exits_2(layout: Layout) -> None:
    assert dockmesh("why", "nope-nope", layout.names["backend"]).returncode == 2
    assert (
        dockmesh(
            "why", layout.names["backend"], layout.names["database"], "--port", "1-5/tcp"
        ).returncode
        == 2
    )
    assert dockmesh("matrix", "--select", "colour=red").returncode == 2


def test_why_a_container_to_itself_is_reachable(layout: Layout) -> None:
    n = layout.names
    code, doc = why(n["database"], n["database"], "--port", "5432/tcp", "--probe")
    assert code == 0 and doc["reachable"] is True, doc
    steps = {s["check"]: s for s in doc["steps"]}
    assert "forward hook" in steps["self"]["detail"]
    assert doc["probe"]["ok"] is True


def test_why_from_a_host_mode_container_is_the_hosts_view(
    api: Any, layout: Layout, toolbox: str
) -> None:
    name = f"{layout.prefix}-hostmode"
    cid = api.create_container(
        toolbox, name=name, host_config=api.create_host_config(network_mode="host")
    )["Id"]
    try:
        api.start(cid)
        code, doc = why(name, layout.names["database"], "--probe")
        _, host = why("host", layout.names["database"])
    finally:  # the layout is the module's
        with contextlib.suppress(Exception):
            api.remove_container(cid, force=True)
    assert code == 0 and doc["reachable"] is True, doc
    assert doc["steps"][0]["check"] == "host_network"
    assert [s["check"] for s in doc["steps"][1:]] == [s["check"] for s in host["steps"]]
    assert doc["probe"]["ok"] is True


def test_why_says_when_the_table_is_not_in_sync(layout: Layout, tmp_path: Path) -> None:
    n, p = layout.names, layout.prefix
    policy = tmp_path / "p.yaml"
    policy.write_text(f"policy:\n  networks: {{{p}_backend: {{default: deny}}}}\n")
    dockmesh("policy", "apply", str(policy), check=True)
    _, doc = why(n["frontend"], n["backend"])
    assert "not in sync" not in next(s for s in doc["steps"] if s["check"] == "policy")["detail"]
    # The test's own table, changed behind dockmesh's back: an address in a set.
    table = layout.table
    listed = json.loads(
        subprocess.run(
            ["nft", "-j", "list", "table", "inet", table], capture_output=True, check=True
        ).stdout
    )
    name = next(
        i["set"]["name"]
        for i in listed["nftables"]
        if "set" in i and i["set"]["type"] == "ipv4_addr"
    )
    subprocess.run(["nft", "add", "element", "inet", table, name, "{ 192.0.2.77 }"], check=True)
    _, doc = why(n["frontend"], n["backend"])
    pol = next(s for s in doc["steps"] if s["check"] == "policy")
    assert "not in sync" in pol["detail"], pol


def test_matrix_selectors_naming_nothing_are_bad_input(layout: Layout) -> None:
    for sel, word in (
        ("container=nosuch", "no container"),
        ("network=nosuchnet", "no network"),
        ("service=", "needs a value"),
    ):
        proc = dockmesh("matrix", "--select", sel)
        assert proc.returncode == 2, (sel, proc.stdout)
        assert len(proc.stderr.splitlines()) == 1 and word in proc.stderr, proc.stderr
    ok = dockmesh("matrix", "--select", f"container={layout.names['backend']}", "--json")
    assert ok.returncode == 0, ok.stderr

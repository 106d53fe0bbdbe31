"""`dockmesh why` and `matrix` on every real path: a destination on several networks (reached
where its name resolves from the source), aliases and services as arguments, shared network
namespaces, a host-network destination, UDP, and both families on dual-stack networks
(Docker 20.10 writes no ip6tables rules: IPv6 crosses `enable_icc=false` and goes between
networks).

The layout is built once for the module (its tests only read it, or add and remove what they
add) and the module's tests run on one xdist worker; each test has a policy table and state
folder of its own, removed after it."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker.errors
import pytest

from tests.integration.conftest import cleanup, dockmesh, free_subnets, remove_policy_tables

pytestmark = pytest.mark.xdist_group("why_paths")  # one worker builds the layout once


@dataclass
class Layout:
    prefix: str
    nets: dict[str, str]  # short name → engine name
    names: dict[str, str] = field(default_factory=dict)  # role → container name
    table: str = ""


def _ula() -> str:
    """A random unique-local /48's first 3 groups: no two test runs share IPv6 subnets."""
    h = secrets.token_hex(5)
    return f"fd{h[:2]}:{h[2:6]}:{h[6:10]}"


def _start(
    api: Any,
    toolbox: str,
    name: str,
    on: list[str],
    *,
    command: list[str] | None = None,
    labels: dict[str, str] | None = None,
    aliases: dict[str, list[str]] | None = None,
    network_mode: str | None = None,
) -> str:
    aliases = aliases or {}
    mode = network_mode or on[0]
    networking = None
    if network_mode is None:
        networking = api.create_networking_config(
            {on[0]: api.create_endpoint_config(aliases=aliases.get(on[0]))}
        )
    cid: str = api.create_container(
        toolbox,
        name=name,
        hostname=None if network_mode else name,
        command=command or ["sleep", "600"],
        labels=labels or {},
        host_config=api.create_host_config(network_mode=mode),
        networking_config=networking,
    )["Id"]
    for net in on[1:]:
        api.connect_container_to_network(cid, net, aliases=aliases.get(net))
    api.start(cid)
    return cid


@pytest.fixture(scope="module")
def built(api: Any, toolbox: str) -> Iterator[Layout]:
    prefix = f"dmt{secrets.token_hex(3)}"
    try:
        yield build(api, toolbox, prefix)
    finally:
        cleanup(api, prefix)


def build(api: Any, toolbox: str, prefix: str) -> Layout:
    v4 = free_subnets(api, 4)
    ula = _ula()
    nets = {short: f"{prefix}_{short}" for short in ("n1", "n2", "quiet", "four")}
    for i, short in enumerate(("n1", "n2", "quiet")):
        options = {"com.docker.network.bridge.enable_icc": "false"} if short == "quiet" else {}
        api.create_network(
            nets[short],
            enable_ipv6=True,
            options=options,
            ipam={"Config": [{"Subnet": v4[i]}, {"Subnet": f"{ula}:{i + 1}::/64"}]},
        )
    api.create_network(nets["four"], ipam={"Config": [{"Subnet": v4[3]}]})
    n1, n2, quiet, four = (nets[x] for x in ("n1", "n2", "quiet", "four"))
    web = ["httpd", "-f", "-p", "8080", "-h", "/www"]
    layout = Layout(prefix, nets)
    roles: dict[str, dict[str, Any]] = {
        # A client on both dual-stack networks (n1 first: Docker's DNS answers its names
        # from n1, the first of its networks by name).
        "client": {"on": [n1, n2]},
        # A server on both too, n2 first: the one a client reaches by name on n1.
        "multi": {"on": [n2, n1], "command": web},
        # Known by an alias on n2 only.
        "aliased": {"on": [n2], "command": web, "aliases": {n2: ["bee"]}},
        # Two replicas of a Compose service (no alias: found by label).
        "svc1": {"on": [n1], "command": web, "labels": _compose(prefix)},
        "svc2": {"on": [n1], "command": web, "labels": _compose(prefix)},
        # Two on a network with enable_icc=false.
        "q1": {"on": [quiet]},
        "q2": {"on": [quiet], "command": web},
        # An IPv4-only client.
        "v4only": {"on": [four]},
    }
    for role, spec in roles.items():
        name = f"{prefix}-{role}"
        _start(
            api,
            toolbox,
            name,
            spec["on"],
            command=spec.get("command"),
            labels={**spec.get("labels", {}), "dmt.case": prefix},
            aliases=spec.get("aliases"),
        )
        layout.names[role] = name
    return layout


def _compose(prefix: str) -> dict[str, str]:
    return {
        "com.docker.compose.project": f"{prefix}proj",
        "com.docker.compose.service": f"{prefix}web",
    }


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


def why(*args: str) -> tuple[int, dict[str, Any]]:
    proc = dockmesh("why", *args, "--json")
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def apply(tmp_path: Path, text: str) -> None:
    policy = tmp_path / "p.yaml"
    policy.write_text(text)
    dockmesh("policy", "apply", str(policy), check=True)


def nslookup(api: Any, container: str, name: str) -> list[str]:
    """The IPv4 addresses `name` resolves to from `container` (its own resolver)."""
    out = subprocess.run(
        ["docker", "exec", container, "nslookup", "-type=A", name, "127.0.0.11"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    words = [w for line in out.splitlines() if line.startswith("Address") for w in line.split()]
    return [w for w in words if w.count(".") == 3 and not w.startswith("127.")]


def address_on(api: Any, container: str, network: str, family: int = 4) -> str:
    nets = api.inspect_container(container)["NetworkSettings"]["Networks"]
    key = "GlobalIPv6Address" if family == 6 else "IPAddress"
    return str(nets[network][key])


def step(doc: dict[str, Any], check: str) -> dict[str, Any]:
    return next(s for s in doc["steps"] if s["check"] == check)


# --- the address a name resolves to from SRC --------------------------------------------------


def test_a_destination_on_several_networks_is_reached_where_its_name_resolves(
    api: Any, layout: Layout, tmp_path: Path
) -> None:
    """Both on n1 and n2; the policy denies n1 and lets n2 be. By name, the client reaches
    `multi` on n1 (Docker's DNS answers from its first network): denied. `why` chose n2
    ("the first shared network that lets it through") and said reachable at an address the
    name never resolves to."""
    n = layout.names
    apply(tmp_path, f"policy:\n  networks: {{{layout.nets['n1']}: {{default: deny}}}}\n")
    answers = nslookup(api, n["client"], n["multi"])
    on_n1 = address_on(api, n["multi"], layout.nets["n1"])
    assert answers == [on_n1]  # the layout's premise: Docker answers from n1
    code, doc = why(n["client"], n["multi"], "--port", "8080/tcp", "--probe")
    assert doc["address"] == on_n1 and doc["network"] == layout.nets["n1"], doc
    assert "resolves from the source to" in step(doc, "shared_network")["detail"]
    assert doc["reachable"] is False and code == 1
    assert "denies it" in step(doc, "policy")["detail"]
    v4 = doc["probe"]["families"][0]
    assert v4["family"] == 4 and v4["ok"] is False and v4["address"] == on_n1


# --- aliases and services as arguments ------------------------------------------------------


def test_an_alias_as_destination_is_the_container_it_resolves_to(layout: Layout) -> None:
    n = layout.names
    code, doc = why(n["client"], "bee", "--port", "8080/tcp", "--probe")
    assert code == 0, doc
    assert doc["resolved"]["dst"] == {
        "argument": "bee",
        "kind": "alias",
        "containers": [n["aliased"]],
    }
    assert doc["dst"] == n["aliased"] and doc["network"] == layout.nets["n2"]
    assert doc["probe"]["ok"] is True
    text = dockmesh("why", n["client"], "bee").stdout
    assert "'bee' is a network alias" in text and n["aliased"] in text


def test_a_service_as_destination_and_as_source_is_each_of_its_containers(
    layout: Layout,
) -> None:
    n, p = layout.names, layout.prefix
    code, doc = why(n["client"], f"{p}web", "--port", "8080/tcp", "--probe")
    assert code == 0, doc
    assert doc["resolved"]["dst"]["kind"] == "service"
    assert doc["resolved"]["dst"]["containers"] == [n["svc1"], n["svc2"]]
    assert [(x["src"], x["dst"]) for x in doc["pairs"]] == [
        (n["client"], n["svc1"]),
        (n["client"], n["svc2"]),
    ]
    assert all(x["reachable"] and x["probe"]["ok"] for x in doc["pairs"])
    # As the source: each replica to the destination; the worse decides the exit.
    code, doc = why(f"{p}web", n["multi"], "--port", "8080/tcp")
    assert code == 0 and {x["src"] for x in doc["pairs"]} == {n["svc1"], n["svc2"]}
    bad = dockmesh("why", n["client"], f"{p}nothing")
    assert bad.returncode == 2 and "no container, network alias or service" in bad.stderr


# --- shared namespaces, the host's network ---------------------------------------------------


def test_a_shared_namespace_is_loopback_both_ways(api: Any, toolbox: str, layout: Layout) -> None:
    """`--network container:X`: a server bound to 127.0.0.1 in X's namespace is reached by X
    over loopback. `why` said it listened "on 127.0.0.1 only", and probed X's own address."""
    n = layout.names
    name = f"{layout.prefix}-joined"
    _start(
        api,
        toolbox,
        name,
        [],
        command=["httpd", "-f", "-p", "127.0.0.1:9090", "-h", "/www"],
        network_mode=f"container:{n['client']}",
    )
    try:
        code, doc = why(n["client"], name, "--port", "9090/tcp", "--probe")
        assert code == 0, doc
        assert [s["check"] for s in doc["steps"]] == ["running", "shared_namespace", "listening"]
        assert f"{n['client']}'s network namespace" in step(doc, "shared_namespace")["detail"]
        assert doc["address"] == "127.0.0.1" and doc["probe"]["ok"] is True
        code, back = why(name, n["client"], "--port", "9090/tcp", "--probe")
        assert code == 0 and back["probe"]["ok"] is True, back
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(name, force=True)


def test_a_host_network_destination_is_the_host_at_the_sources_gateway(
    api: Any, toolbox: str, layout: Layout
) -> None:
    """A server in a host-network container, bound to the gateway address of the source's
    network: the source reaches it through the host's input hook. `why` said "no network in
    common ... Docker isolates networks"."""
    n = layout.names
    gateway = api.inspect_network(layout.nets["four"])["IPAM"]["Config"][0].get("Gateway")
    if not gateway:
        gateway = api.inspect_container(n["v4only"])["NetworkSettings"]["Networks"][
            layout.nets["four"]
        ]["Gateway"]
    port = _free_port(gateway)
    name = f"{layout.prefix}-hostnet"
    _start(
        api,
        toolbox,
        name,
        [],
        command=["httpd", "-f", "-p", f"{gateway}:{port}", "-h", "/www"],
        network_mode="host",
    )
    try:
        code, doc = why(n["v4only"], name, "--port", f"{port}/tcp", "--probe")
        assert code == 0, doc
        assert doc["address"] == gateway
        detail = step(doc, "host_network")["detail"]
        assert "input hook, not forward" in detail and "policy do not decide" in detail
        assert doc["probe"]["ok"] is True
    finally:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(name, force=True)


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return int(s.getsockname()[1])


# --- both families ---------------------------------------------------------------------------


@pytest.mark.raw_ipv6
def test_ipv6_crosses_enable_icc_false_and_why_says_so(layout: Layout) -> None:
    n = layout.names
    code, doc = why(n["q1"], n["q2"], "--port", "8080/tcp", "--probe")
    assert code == 1  # the worse family decides: IPv4 is dropped by icc
    v4, v6 = doc["families"]
    assert (v4["family"], v4["reachable"]) == (4, False)
    assert (v6["family"], v6["reachable"]) == (6, True), v6
    icc6 = next(s for s in v6["steps"] if s["check"] == "icc")
    assert icc6["ok"] is True and "IPv4 only" in icc6["detail"]
    assert step(doc, "ipv6")["ok"] is True
    probes = {f["family"]: f for f in doc["probe"]["families"]}
    assert probes[4]["ok"] is False and probes[6]["ok"] is True
    assert probes[6]["address"] == v6["address"] and ":" in v6["address"]


@pytest.mark.raw_ipv6
def test_ipv6_between_networks_is_not_said_isolated(layout: Layout, tmp_path: Path) -> None:
    """q1 (quiet) and `aliased` (n2) share no network: IPv4 is isolated by Docker, IPv6 is
    routed by the host. Under a policy the policy's table drops it (it brings Docker's isolation
    to IPv6), and `why` says so."""
    n = layout.names
    code, doc = why(n["q1"], n["aliased"], "--port", "8080/tcp", "--probe")
    v4, v6 = doc["families"]
    assert "Docker isolates" in step(v4, "shared_network")["detail"]
    assert v6["reachable"] is True, v6
    assert not any("Docker isolates" in s["detail"] for s in v6["steps"])
    assert "routed" in v6["summary"]
    probes = {f["family"]: f["ok"] for f in doc["probe"]["families"]}
    assert probes == {4: False, 6: True}
    assert code == 1
    apply(tmp_path, "policy:\n  default: deny\n")
    code, doc = why(n["q1"], n["aliased"], "--port", "8080/tcp", "--probe")
    v6 = doc["families"][1]
    detail = step(v6, "policy")["detail"]
    assert v6["reachable"] is False and "Docker's isolation, for IPv6" in detail, detail
    assert {f["family"]: f["ok"] for f in doc["probe"]["families"]} == {4: False, 6: False}


@pytest.mark.raw_ipv6
def test_matrix_checks_both_families(layout: Layout, tmp_path: Path) -> None:
    p = layout.prefix
    apply(tmp_path, f"policy:\n  networks: {{{layout.nets['n1']}: {{default: deny}}}}\n")
    proc = dockmesh("matrix", "--select", f"label=dmt.case={p}", "--port", "8080/tcp", "--json")
    doc = json.loads(proc.stdout)
    assert doc["mismatches"] == 0, [x for x in doc["pairs"] if x["expected"] != x["observed"]]
    n = layout.names
    pair = {(x["src"], x["dst"]): x for x in doc["pairs"]}
    quiet = pair[(n["q1"], n["q2"])]
    # enable_icc=false: Docker drops IPv4; the policy's table brings the same to IPv6.
    assert [(f["family"], f["observed"]) for f in quiet["families"]] == [(4, False), (6, False)]
    assert quiet["observed"] is False  # the worse
    # Denied on n1 over both families; IPv4-only pairs have one family.
    assert [f["observed"] for f in pair[(n["svc1"], n["svc2"])]["families"]] == [False, False]
    assert [f["family"] for f in pair[(n["v4only"], n["client"])]["families"]] == [4]
    assert proc.returncode == 0
    # Everything denied: every pair dropped over both families, between networks too.
    apply(tmp_path, "policy:\n  default: deny\n")
    proc = dockmesh("matrix", "--select", f"label=dmt.case={p}", "--json")
    doc = json.loads(proc.stdout)
    assert doc["mismatches"] == 0, [x for x in doc["pairs"] if x["expected"] != x["observed"]]
    assert not any(f["observed"] for x in doc["pairs"] for f in x["families"])
    assert {len(x["families"]) for x in doc["pairs"]} == {1, 2}


# --- UDP -------------------------------------------------------------------------------------


ECHO_SERVER = """
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
s.bind(("::", int(sys.argv[1])))
print("bound", flush=True)
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
"""


def test_udp_is_probed_where_an_answer_can_be_expected(
    api: Any, layout: Layout, tmp_path: Path
) -> None:
    """Port 53 with a server that answers: answered over both families. A port nothing
    listens on: the port unreachable says the datagram arrived. Under a deny: silence,
    dropped. UDP was never probed ('udp is not probed')."""
    n = layout.names
    pid = api.inspect_container(n["aliased"])["State"]["Pid"]
    server = subprocess.Popen(
        ["nsenter", "-t", str(pid), "-n", sys.executable, "-c", ECHO_SERVER, "53"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "bound"
        code, doc = why(n["client"], n["aliased"], "--port", "53/udp", "--probe")
        assert code == 0, doc
        fams = {f["family"]: f for f in doc["probe"]["families"]}
        assert fams[4]["ok"] is True and "DNS query" in fams[4]["detail"], fams
        assert fams[6]["ok"] is True
        code, doc = why(n["client"], n["aliased"], "--port", "5399/udp", "--probe")
        assert code == 1 and doc["reachable"] is False
        assert step(doc, "listening")["ok"] is False
        v4 = doc["probe"]["families"][0]
        assert v4["ok"] is False and "port unreachable" in v4["detail"], v4
        apply(tmp_path, f"policy:\n  networks: {{{layout.nets['n2']}: {{default: deny}}}}\n")
        code, doc = why(n["client"], n["aliased"], "--port", "53/udp", "--probe")
        assert code == 1 and doc["reachable"] is False
        assert all(f["ok"] is False for f in doc["probe"]["families"]), doc["probe"]
        assert "dropped" in doc["probe"]["families"][0]["detail"]
    finally:
        server.kill()
        server.wait()

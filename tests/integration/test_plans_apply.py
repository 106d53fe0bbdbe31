"""A file that plans clean applies: files at the edge of what the engine takes come up on the
real engine and leave nothing to do; files one step beyond are refused (exit 2, the right
`FILE:LINE: path:` line) before anything is created."""

from __future__ import annotations

import ipaddress
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from dockmesh.engine.backend import EngineRef, default_url
from dockmesh.engine.docker import DockerBackend
from dockmesh.model.topology import build_topology
from dockmesh.ops.context import taken_subnets
from tests.integration.conftest import dockmesh, free_subnets, run_toolbox


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "dockmesh.yaml"
    path.write_text(text)
    return str(path)


def objects(api: Any, project: str) -> tuple[list[str], list[str]]:
    f = {"label": [f"dockmesh.project={project}"]}
    ctrs = sorted(c["Names"][0].lstrip("/") for c in api.containers(all=True, filters=f))
    nets = sorted(n["Name"] for n in api.networks(filters=f))
    return ctrs, nets


@pytest.fixture
def applied(api: Any) -> Iterator[list[str]]:
    """Files brought up by a test; each is brought down afterwards, whatever happened."""
    paths: list[str] = []
    yield paths
    for path in paths:
        dockmesh("down", path)


def up_clean(path: str, applied: list[str]) -> None:
    applied.append(path)
    assert dockmesh("plan", path, "--exit-code").returncode == 3
    dockmesh("up", path, check=True)
    again = dockmesh("plan", path, "--exit-code", "--json")
    assert again.returncode == 0, again.stdout + again.stderr


def refused(path: str, api: Any, project: str) -> list[str]:
    """The problem lines of a file `up` refuses; asserts that nothing was created."""
    proc = dockmesh("up", path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert objects(api, project) == ([], [])
    return [line for line in proc.stderr.splitlines() if line.startswith(path + ":")]


def addresses(api: Any, container: str, network: str) -> tuple[str, str]:
    ep = api.inspect_container(container)["NetworkSettings"]["Networks"][network]
    return ep["IPAddress"], ep["GlobalIPv6Address"]


def free_v6_subnet(api: Any) -> str:
    client = DockerBackend(EngineRef("local", default_url(os.environ.get("DOCKER_HOST"))))
    taken = taken_subnets(build_topology([client.snapshot()], 1))
    while True:
        net = ipaddress.IPv6Network(f"fd{secrets.token_hex(1)}:{secrets.token_hex(2)}::/64")
        if not any(net.version == t.version and net.overlaps(t) for t in taken):
            return str(net)


# --- files that plan clean and apply ---------------------------------------------------------


def test_pools_filled_exactly(
    api: Any, prefix: str, tmp_path: Path, toolbox: str, applied: list[str]
) -> None:
    small, wide = (ipaddress.IPv4Network(s) for s in free_subnets(api, 2))
    slash29 = next(small.subnets(new_prefix=29))  # 8 addresses: 5 after network, gateway, broadcast
    rng = ipaddress.IPv4Network((int(wide.network_address) + 8, 29))  # all 8 usable
    path = write(
        tmp_path,
        f"""\
project: {prefix}
networks:
  small: {{subnet: {slash29}}}
  wide: {{subnet: {wide}, gateway: {wide.network_address + 1}, ip_range: {rng}}}
services:
  five:
    image: dockmesh/toolbox
    replicas: 5
    networks: [small]
  eight:
    image: dockmesh/toolbox
    replicas: 8
    networks: [wide]
""",
    )
    up_clean(path, applied)
    got = {addresses(api, f"{prefix}-eight-{r}", f"{prefix}_wide")[0] for r in range(1, 9)}
    assert got == {str(a) for a in rng}  # the range's first and last address too
    got = {addresses(api, f"{prefix}-five-{r}", f"{prefix}_small")[0] for r in range(1, 6)}
    assert got == {str(a) for a in list(slash29.hosts())[1:]}


def test_static_addresses_beside_a_pool_and_healthcheck_forms(
    api: Any, prefix: str, tmp_path: Path, toolbox: str, applied: list[str]
) -> None:
    (subnet,) = (ipaddress.IPv4Network(s) for s in free_subnets(api, 1))
    base = subnet.network_address
    path = write(
        tmp_path,
        f"""\
project: {prefix}
networks:
  n: {{subnet: {subnet}, ip_range: {base}/28}}
services:
  web:
    image: dockmesh/toolbox
    replicas: 3
    networks: [n]
    depends_on: [db]
    healthcheck: {{http: "/health?x=%25s", port: 8080, interval: 1s}}
  db:
    image: dockmesh/toolbox
    networks: {{n: {{ipv4_address: {base + 2}}}}}
    healthcheck: {{test: [CMD, "true"], interval: 1s}}
  edge:
    image: dockmesh/toolbox
    networks: {{n: {{ipv4_address: {base + 100}}}}}
    healthcheck: {{test: "exit 0", interval: 1s}}
""",
    )
    up_clean(path, applied)
    assert addresses(api, f"{prefix}-db-1", f"{prefix}_n")[0] == str(base + 2)  # in the pool
    assert addresses(api, f"{prefix}-edge-1", f"{prefix}_n")[0] == str(base + 100)  # outside
    web = {addresses(api, f"{prefix}-web-{r}", f"{prefix}_n")[0] for r in (1, 2, 3)}
    assert web == {str(base + 3), str(base + 4), str(base + 5)}  # .1 gateway, .2 db
    test = api.inspect_container(f"{prefix}-db-1")["Config"]["Healthcheck"]["Test"]
    assert test == ["CMD", "true"]
    deadline = time.monotonic() + 60
    want = [f"{prefix}-db-1", f"{prefix}-edge-1", f"{prefix}-web-1"]
    while True:
        health = [api.inspect_container(c)["State"]["Health"]["Status"] for c in want]
        if health == ["healthy"] * 3 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert health == ["healthy"] * 3


def test_dual_stack(
    api: Any, prefix: str, tmp_path: Path, toolbox: str, applied: list[str]
) -> None:
    (v4,) = free_subnets(api, 1)
    v6 = ipaddress.IPv6Network(free_v6_subnet(api))
    pinned = v6.network_address + 0x99
    path = write(
        tmp_path,
        f"""\
project: {prefix}
networks:
  ds: {{subnet: [{v4}, "{v6}"], ip_range: "{v6.network_address}/120"}}
services:
  w:
    image: dockmesh/toolbox
    replicas: 2
    networks: [ds]
  s:
    image: dockmesh/toolbox
    networks: {{ds: {{ipv6_address: "{pinned}"}}}}
""",
    )
    up_clean(path, applied)
    net = api.inspect_network(f"{prefix}_ds")
    assert net["EnableIPv6"] is True
    assert sorted(c["Subnet"] for c in net["IPAM"]["Config"]) == sorted([v4, str(v6)])
    assert addresses(api, f"{prefix}-s-1", f"{prefix}_ds")[1] == str(pinned)
    for r in (1, 2):
        v4_addr, v6_addr = addresses(api, f"{prefix}-w-{r}", f"{prefix}_ds")
        assert ipaddress.ip_address(v4_addr) in ipaddress.ip_network(v4)
        assert ipaddress.ip_address(v6_addr) in v6


# --- files one step beyond ------------------------------------------------------------------


def test_one_replica_too_many(api: Any, prefix: str, tmp_path: Path) -> None:
    (small,) = (ipaddress.IPv4Network(s) for s in free_subnets(api, 1))
    slash29 = next(small.subnets(new_prefix=29))
    path = write(
        tmp_path,
        f"""\
project: {prefix}
networks:
  small: {{subnet: {slash29}}}
services:
  six:
    image: dockmesh/toolbox
    replicas: 6
    networks: [small]
""",
    )
    assert refused(path, api, prefix) == [
        f"{path}:3: networks.small.subnet: the pool {slash29} has room for 5 containers "
        "(8 addresses, less the network address, the gateway and the broadcast address); "
        "6 containers draw from it ('six': 6)"
    ]


def test_one_host_port_spelled_twice(api: Any, prefix: str, tmp_path: Path) -> None:
    port = 40000 + secrets.randbelow(9000)
    path = write(
        tmp_path,
        f"""\
project: {prefix}
services:
  a:
    image: dockmesh/toolbox
    ports: ["{port}:8080"]
  b:
    image: dockmesh/toolbox
    ports: ["0.0.0.0:{port}:8081/tcp"]
""",
    )
    assert refused(path, api, prefix) == [
        f"{path}:8: services.b.ports.0: host port 0.0.0.0:{port}/tcp is already published by "
        f"services.a.ports.0 ({port}/tcp)"
    ]


def test_a_host_port_another_container_holds(
    api: Any, prefix: str, tmp_path: Path, toolbox: str
) -> None:
    port = 40000 + secrets.randbelow(9000)
    run_toolbox(api, f"{prefix}-holder", "bridge", ports={"8080/tcp": ("127.0.0.1", port)})
    path = write(
        tmp_path,
        f"""\
project: {prefix}
services:
  a:
    image: dockmesh/toolbox
    ports: ["{port}:8080"]
""",
    )
    assert refused(path, api, prefix) == [
        f"{path}:5: services.a.ports.0: host port {port}/tcp is already published by the "
        f"running container '{prefix}-holder' (127.0.0.1:{port}/tcp), which is not of this "
        "project"
    ]


def test_an_address_held_on_the_live_network(
    api: Any, prefix: str, tmp_path: Path, toolbox: str, applied: list[str]
) -> None:
    (subnet,) = (ipaddress.IPv4Network(s) for s in free_subnets(api, 1))
    base = subnet.network_address
    text = f"""\
project: {prefix}
networks:
  n: {{subnet: {subnet}}}
services:
  web:
    image: dockmesh/toolbox
    networks: [n]
"""
    path = write(tmp_path, text)
    up_clean(path, applied)
    # someone else's container joins the project's network on an address of its own
    cid = run_toolbox(api, f"{prefix}-guest", "bridge")
    api.connect_container_to_network(cid, f"{prefix}_n", ipv4_address=str(base + 50))
    path = write(
        tmp_path,
        text
        + f"""\
  db:
    image: dockmesh/toolbox
    networks: {{n: {{ipv4_address: {base + 50}}}}}
""",
    )
    proc = dockmesh("up", path)
    assert proc.returncode == 2, proc.stderr
    assert [x for x in proc.stderr.splitlines() if x.startswith(path + ":")] == [
        (
            f"{path}:10: services.db.networks.n.ipv4_address: address {base + 50} is held on the "
            f"engine by container '{prefix}-guest', which is not of this project"
        )
    ]
    assert f"{prefix}-db-1" not in objects(api, prefix)[0]

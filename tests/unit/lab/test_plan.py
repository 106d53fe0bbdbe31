"""The lab's plan: addresses, names, command lines and partitions, decided without running
anything."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.lab.plan import (
    MAX_HOSTS,
    LabPlanError,
    Partition,
    Target,
    agent_argv,
    check_partition,
    dockerd_argv,
    etcd_argv,
    link_commands,
    parse_subnet,
    parse_target,
    partition_ruleset,
    pick_subnet,
    plan_lab,
    swarm_pool,
)

names = st.from_regex(r"[a-z][a-z0-9]{0,9}", fullmatch=True)
subnets = st.builds(
    lambda a, b, p: str(ipaddress.IPv4Network(f"10.{a}.{b}.0/{p}", strict=False)),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(8, 24),
)


@given(
    names,
    subnets,
    st.integers(1, MAX_HOSTS),
    st.sampled_from([0, 1, 3]),
    st.data(),
)
def test_every_address_is_in_the_subnet_and_distinct(
    name: str, subnet: str, hosts: int, etcd: int, data: st.DataObject
) -> None:
    managers = data.draw(st.integers(1, hosts))
    plan = plan_lab(name, subnet, hosts, etcd, managers)
    net = ipaddress.IPv4Network(subnet)
    addrs = [h.address for h in plan.hosts] + [e.address for e in plan.etcd]
    assert len(set(addrs)) == len(addrs) == hosts + etcd
    for a in addrs:
        ip = ipaddress.IPv4Address(a)
        assert ip in net and ip not in (net.network_address, net.broadcast_address)
    assert [h.role for h in plan.hosts].count("manager") == managers
    assert plan.hosts[0].role == "manager"
    # Namespaces and directories are the lab's own: every one names the lab.
    assert len(set(plan.netns)) == len(plan.netns)
    assert all(f"-{name}-" in ns for ns in plan.netns)
    for h in plan.hosts:
        for path in (h.sock, h.data_root, h.exec_root, h.agent_dir, h.log):
            assert f"/lab-{name}/" in path and "dockmesh-lab" in path


@given(names, st.integers(1, 4), st.sampled_from([0, 1, 3]), st.booleans())
def test_every_process_names_the_lab_on_its_command_line(
    name: str, hosts: int, etcd: int, store: bool
) -> None:
    # `lab down` and `pgrep -f dockmesh-lab` find the lab's processes by this.
    plan = plan_lab(name, "10.251.0.0/24", hosts, etcd, 1)
    lines = [dockerd_argv(h) for h in plan.hosts]
    lines += [agent_argv(h, plan, "/usr/bin/python3", store) for h in plan.hosts]
    lines += [etcd_argv(e, plan) for e in plan.etcd]
    for argv in lines:
        assert argv[0] == "nsenter" and argv[1].startswith("--net=/run/netns/dml-")
        assert f"/dockmesh-lab/lab-{name}/" in " ".join(argv)


def test_agents_share_the_store_only_when_asked_and_there_is_etcd() -> None:
    plan = plan_lab("lab", "10.251.0.0/24", 2, 3, 1)
    argv = agent_argv(plan.hosts[1], plan, "py", shared_store=True)
    i = argv.index("--store")
    assert argv[i + 1] == "etcd://10.251.0.201:2379,10.251.0.202:2379,10.251.0.203:2379"
    assert argv[argv.index("--node") + 1] == "host2"
    assert "--store" not in agent_argv(plan.hosts[1], plan, "py", shared_store=False)
    no_etcd = plan_lab("lab", "10.251.0.0/24", 2, 0, 1)
    assert "--store" not in agent_argv(no_etcd.hosts[0], no_etcd, "py", shared_store=True)


def test_links_are_made_inside_the_namespaces_only() -> None:
    plan = plan_lab("lab", "10.251.0.0/24", 2, 1, 1)
    for argv in link_commands(plan):
        if argv[:3] == ["ip", "link", "add"]:
            # Both ends are created in a lab namespace: no name is taken in the machine's.
            assert argv.count("netns") == 2


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("10.251.0.0/25", "a /24 or larger"),
        ("192.168.0.0/24", "10.0.0.0/8"),
        ("10.251.0.1/24", "host bits"),
        ("fd00::/64", "fd00::/64"),
        ("junk", "junk"),
    ],
)
def test_bad_subnets_say_why(text: str, why: str) -> None:
    with pytest.raises(LabPlanError, match=why):
        parse_subnet(text)


@given(st.lists(subnets, max_size=30))
def test_the_picked_subnet_overlaps_no_route(routes: list[str]) -> None:
    try:
        got = pick_subnet([*routes, "default", "not-a-route"])
    except LabPlanError:
        return
    assert not any(got.overlaps(ipaddress.IPv4Network(r)) for r in routes)
    assert got.prefixlen == 24 and got.subnet_of(ipaddress.IPv4Network("10.0.0.0/8"))


def test_a_subnet_next_to_a_route_is_picked() -> None:
    assert str(pick_subnet(["10.251.0.0/24", "10.240.1.0/24"])) == "10.251.1.0/24"
    with pytest.raises(LabPlanError, match="--subnet"):
        pick_subnet(["10.0.0.0/8"])


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("agent@host2", Target("agent", "host2")),
        ("engine@host10", Target("engine", "host10")),
        ("etcd@1", Target("etcd", "etcd1")),
        ("etcd@etcd3", Target("etcd", "etcd3")),
    ],
)
def test_targets_parse(text: str, want: Target) -> None:
    assert parse_target(text) == want


@given(st.text(max_size=20))
def test_any_text_is_a_target_or_one_line_error(text: str) -> None:
    try:
        t = parse_target(text)
    except LabPlanError as e:
        problem = str(e)
    else:
        problem = ""
    if problem:
        assert "\n" not in problem
        return
    assert t.kind in ("agent", "engine", "etcd")
    assert parse_target(str(t)) == t


@given(st.sampled_from(["agent", "engine"]), st.integers(1, 999))
def test_host_targets_round_trip(kind: str, n: int) -> None:
    assert parse_target(f"{kind}@host{n}") == Target(kind, f"host{n}")


@pytest.mark.parametrize(
    "text", ["agent@host0", "agent@", "@host1", "etcd@0", "etcd@x", "agent@h1"]
)
def test_bad_targets(text: str) -> None:
    with pytest.raises(LabPlanError):
        parse_target(text)


@pytest.mark.parametrize(
    ("hosts", "etcd", "managers", "why"),
    [
        (0, 1, 1, "--hosts"),
        (MAX_HOSTS + 1, 1, 1, "--hosts"),
        (2, 2, 1, "--etcd"),
        (2, 1, 3, "--managers"),
    ],
)
def test_bad_sizes(hosts: int, etcd: int, managers: int, why: str) -> None:
    with pytest.raises(LabPlanError, match=why):
        plan_lab("lab", "10.251.0.0/24", hosts, etcd, managers)


@given(st.text(max_size=12))
def test_lab_names(name: str) -> None:
    try:
        plan = plan_lab(name, "10.251.0.0/24", 1, 0, 1)
    except LabPlanError as e:
        problem = str(e)
    else:
        problem = ""
    if problem:
        assert "lab name" in problem
        return
    assert all(len(ns) <= 64 for ns in plan.netns)


def test_partitions_drop_both_ways_in_the_switch() -> None:
    plan = plan_lab("lab", "10.251.0.0/24", 3, 1, 1)
    script = partition_ruleset(plan, [Partition("host2", "etcd"), Partition("host3")])
    assert "ip saddr 10.251.0.12 ip daddr 10.251.0.201 drop" in script
    assert "ip saddr 10.251.0.201 ip daddr 10.251.0.12 drop" in script
    assert "ip saddr 10.251.0.13 drop" in script and "ip daddr 10.251.0.13 drop" in script
    assert "10.251.0.11" not in script
    healed = partition_ruleset(plan, [])
    assert "delete table bridge dockmesh_lab" in healed and "chain" not in healed


@pytest.mark.parametrize(
    ("part", "why"),
    [
        (Partition("host9"), "no host 'host9'"),
        (Partition("host1", "host1"), "itself"),
        (Partition("host1", "host7"), "no host 'host7'"),
    ],
)
def test_bad_partitions(part: Partition, why: str) -> None:
    plan = plan_lab("lab", "10.251.0.0/24", 2, 0, 1)
    with pytest.raises(LabPlanError, match=why):
        check_partition(plan, part)
    with pytest.raises(LabPlanError, match="no etcd"):
        check_partition(plan, Partition("host1", "etcd"))


@given(subnets)
def test_the_swarm_pool_never_meets_the_lab(subnet: str) -> None:
    plan = plan_lab("lab", subnet, 1, 0, 1)
    try:
        pool = swarm_pool(plan)
    except LabPlanError:
        assert ipaddress.IPv4Network(subnet).prefixlen == 8
        return
    assert not ipaddress.IPv4Network(pool).overlaps(ipaddress.IPv4Network(subnet))
    assert swarm_pool(plan_lab("lab", "10.251.0.0/24", 1, 0, 1)) == "10.0.0.0/16"
    assert swarm_pool(plan_lab("lab", "10.0.1.0/24", 1, 0, 1)) == "10.1.0.0/16"

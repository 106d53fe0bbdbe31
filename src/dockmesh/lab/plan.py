"""What a lab is, decided before anything runs: its namespaces, links, addresses, directories
and the command line of every process it starts. Pure: names and numbers in, values out.

A lab named NAME with N hosts and E etcd members:

    namespace dml-NAME-sw       the switch: a bridge `br0`, one port per member, no address,
                                no route anywhere (so nothing in the lab reaches past it)
    namespace dml-NAME-hostI    `lab0` (its end of a veth) at SUBNET .10+I; a dockerd whose
                                socket is /run/dockmesh-lab/lab-NAME/hostI.sock; the agent
    namespace dml-NAME-etcdJ    `lab0` at SUBNET .200+J; one etcd member

Every process the lab starts names a path under /run/dockmesh-lab/lab-NAME or
/var/lib/dockmesh-lab/lab-NAME on its command line: that is how `lab down` (and a user with
`pgrep -f dockmesh-lab`) tells the lab's processes from any other.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

RUN_ROOT = "/run/dockmesh-lab"
DATA_ROOT = "/var/lib/dockmesh-lab"
NETNS_DIR = "/run/netns"
# `ip netns exec NS` bind-mounts /etc/netns/NS/resolv.conf over /etc/resolv.conf.
NETNS_ETC = "/etc/netns"
DEFAULT_NAME = "lab"
BRIDGE = "br0"
LINK = "lab0"
API_PORT = 8500
DNS_PORT = 53
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
SWARM_PORT = 2377
MAX_HOSTS = 20
ETCD_SIZES = (0, 1, 3)
HOST_OFFSET = 10
ETCD_OFFSET = 200
# The nft table the partitions live in, in the switch namespace (bridge family: the switch
# bridges frames, it routes nothing).
PARTITION_TABLE = "dockmesh_lab"

_NAME = re.compile(r"[a-z][a-z0-9]{0,9}")


class LabPlanError(ValueError):
    """A lab that cannot be: the message says which value and why (one line)."""


def lab_dir(root: str, name: str) -> str:
    """The lab's own directory under `root` (RUN_ROOT or DATA_ROOT): `lab-NAME`, which no
    other user of those roots (the test helper's engines) names a directory."""
    return f"{root}/lab-{name}"


def state_file(name: str) -> str:
    """Where the lab named `name` keeps its state while it is up."""
    return f"{lab_dir(RUN_ROOT, name)}/lab.json"


def check_name(name: str) -> str:
    if not _NAME.fullmatch(name):
        raise LabPlanError(
            f"lab name {name!r}: a lowercase letter, then at most 9 lowercase letters or digits"
        )
    return name


def parse_subnet(text: str) -> ipaddress.IPv4Network:
    """A lab subnet: IPv4, inside 10.0.0.0/8, a /24 or larger (hosts at .11…, etcd at .201…)."""
    try:
        net = ipaddress.IPv4Network(text, strict=True)
    except ValueError as e:
        raise LabPlanError(f"--subnet {text!r}: {e}") from None
    if not net.subnet_of(ipaddress.IPv4Network("10.0.0.0/8")):
        raise LabPlanError(f"--subnet {text!r}: the lab's addresses are private ones in 10.0.0.0/8")
    if net.prefixlen > 24:
        raise LabPlanError(f"--subnet {text!r}: a /24 or larger (the lab numbers up to .203)")
    return net


def subnet_candidates() -> Iterable[ipaddress.IPv4Network]:
    for second in range(251, 255):
        for third in range(256):
            yield ipaddress.IPv4Network(f"10.{second}.{third}.0/24")


def pick_subnet(routes: Iterable[str]) -> ipaddress.IPv4Network:
    """The first candidate /24 that overlaps none of the machine's routes (`routes`: their
    destinations as `ip route` prints them; `default` and junk are ignored)."""
    taken: list[ipaddress.IPv4Network] = []
    for r in routes:
        try:
            net = ipaddress.ip_network(r, strict=False)
        except ValueError:
            continue
        if isinstance(net, ipaddress.IPv4Network) and net.prefixlen > 0:
            taken.append(net)
    for cand in subnet_candidates():
        if not any(cand.overlaps(t) for t in taken):
            return cand
    raise LabPlanError("no free /24 in 10.251.0.0-10.254.255.0: give one with --subnet")


@dataclass(frozen=True, slots=True)
class HostPlan:
    name: str
    index: int
    netns: str
    address: str
    role: str  # "manager" | "worker"
    sock: str
    data_root: str
    exec_root: str
    log: str
    agent_dir: str
    agent_log: str
    resolv_dir: str

    @property
    def url(self) -> str:
        return f"unix://{self.sock}"


@dataclass(frozen=True, slots=True)
class EtcdPlan:
    name: str
    index: int
    netns: str
    address: str
    data_dir: str
    log: str

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{ETCD_CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{ETCD_PEER_PORT}"


@dataclass(frozen=True, slots=True)
class LabPlan:
    name: str
    subnet: str
    hosts: tuple[HostPlan, ...]
    etcd: tuple[EtcdPlan, ...]

    @property
    def prefixlen(self) -> int:
        return ipaddress.IPv4Network(self.subnet).prefixlen

    @property
    def switch(self) -> str:
        return f"dml-{self.name}-sw"

    @property
    def run_dir(self) -> str:
        return lab_dir(RUN_ROOT, self.name)

    @property
    def data_dir(self) -> str:
        return lab_dir(DATA_ROOT, self.name)

    @property
    def state_path(self) -> str:
        return state_file(self.name)

    @property
    def netns(self) -> list[str]:
        return [self.switch, *(h.netns for h in self.hosts), *(e.netns for e in self.etcd)]

    @property
    def etcd_endpoints(self) -> str:
        """The agents' `--store` value: every member's client address."""
        return ",".join(f"{e.address}:{ETCD_CLIENT_PORT}" for e in self.etcd)

    def host(self, name: str) -> HostPlan:
        for h in self.hosts:
            if h.name == name:
                return h
        raise LabPlanError(f"no host {name!r} in lab {self.name!r} ({_names(self.hosts)})")

    def etcd_member(self, name: str) -> EtcdPlan:
        for e in self.etcd:
            if e.name == name:
                return e
        known = _names(self.etcd) if self.etcd else "it has no etcd"
        raise LabPlanError(f"no etcd member {name!r} in lab {self.name!r} ({known})")


def _names(members: Sequence[HostPlan | EtcdPlan]) -> str:
    return ", ".join(m.name for m in members)


def plan_lab(name: str, subnet: str, hosts: int, etcd: int, managers: int) -> LabPlan:
    check_name(name)
    net = parse_subnet(subnet)
    if not 1 <= hosts <= MAX_HOSTS:
        raise LabPlanError(f"--hosts {hosts}: from 1 to {MAX_HOSTS}")
    if etcd not in ETCD_SIZES:
        raise LabPlanError(f"--etcd {etcd}: 0, 1 or 3 members")
    if not 1 <= managers <= hosts:
        raise LabPlanError(f"--managers {managers}: from 1 to the number of hosts ({hosts})")
    run, data = lab_dir(RUN_ROOT, name), lab_dir(DATA_ROOT, name)
    base = net.network_address
    host_plans = tuple(
        HostPlan(
            name=f"host{i}",
            index=i,
            netns=f"dml-{name}-host{i}",
            address=str(base + HOST_OFFSET + i),
            role="manager" if i <= managers else "worker",
            sock=f"{run}/host{i}.sock",
            data_root=f"{data}/host{i}/docker",
            exec_root=f"{run}/host{i}",
            log=f"{data}/host{i}/dockerd.log",
            agent_dir=f"{data}/host{i}/agent",
            agent_log=f"{data}/host{i}/agent.log",
            resolv_dir=f"{NETNS_ETC}/dml-{name}-host{i}",
        )
        for i in range(1, hosts + 1)
    )
    etcd_plans = tuple(
        EtcdPlan(
            name=f"etcd{j}",
            index=j,
            netns=f"dml-{name}-etcd{j}",
            address=str(base + ETCD_OFFSET + j),
            data_dir=f"{data}/etcd{j}/data",
            log=f"{data}/etcd{j}/etcd.log",
        )
        for j in range(1, etcd + 1)
    )
    return LabPlan(name, str(net), host_plans, etcd_plans)


def swarm_pool(plan: LabPlan) -> str:
    """The swarm's address pool for overlay networks (/24s): the first /16 of 10.0.0.0/8 that
    the lab's own subnet is not in. Swarm's default is all of 10.0.0.0/8 from 10.0.0.0/24
    up, which a `--subnet 10.0.1.0/24` lab would meet at its second overlay network."""
    lab = ipaddress.IPv4Network(plan.subnet)
    for second in range(256):
        pool = ipaddress.IPv4Network(f"10.{second}.0.0/16")
        if not pool.overlaps(lab):
            return str(pool)
    raise LabPlanError(f"--subnet {plan.subnet}: it leaves no /16 of 10.0.0.0/8 for the swarm")


# --- targets of the failure commands ----------------------------------------------------------

TARGET_KINDS = ("agent", "engine", "etcd")


@dataclass(frozen=True, slots=True)
class Target:
    """`agent@host2`, `engine@host2`, `etcd@1` (or `etcd@etcd1`): a process of the lab."""

    kind: str
    member: str

    def __str__(self) -> str:
        return f"{self.kind}@{self.member}"


def parse_target(text: str) -> Target:
    kind, sep, member = text.partition("@")
    if not sep or kind not in TARGET_KINDS or not member:
        raise LabPlanError(
            f"{text!r}: expected agent@HOST, engine@HOST or etcd@N (e.g. agent@host2, etcd@1)"
        )
    if kind == "etcd":
        digits = member.removeprefix("etcd")
        if not (digits.isascii() and digits.isdigit()) or digits.startswith("0"):
            raise LabPlanError(f"{text!r}: an etcd member is etcd@N, N from 1")
        return Target(kind, f"etcd{int(digits)}")
    if not re.fullmatch(r"host[1-9][0-9]*", member):
        raise LabPlanError(f"{text!r}: a host is named hostN, N from 1 (e.g. {kind}@host2)")
    return Target(kind, member)


# --- command lines -----------------------------------------------------------------------------


def enter(netns: str, argv: Sequence[str]) -> list[str]:
    # nsenter, not `ip netns exec`: the latter remounts /sys, and dockerd then loses the
    # cgroup mounts ("Devices cgroup isn't mounted").
    return ["nsenter", f"--net={NETNS_DIR}/{netns}", *argv]


def link_commands(plan: LabPlan) -> list[list[str]]:
    """`ip` command lines that build the switch and plug every member into it (the namespaces
    exist already). Each veth is made with its ends inside the namespaces, so no name is ever
    taken in the machine's own namespace."""
    sw = plan.switch
    cmds = [
        ["ip", "-n", sw, "link", "add", BRIDGE, "type", "bridge"],
        ["ip", "-n", sw, "link", "set", BRIDGE, "up"],
    ]
    members: list[tuple[str, str, str]] = [(h.name, h.netns, h.address) for h in plan.hosts]
    members += [(e.name, e.netns, e.address) for e in plan.etcd]
    for member, ns, address in members:
        cmds += [
            [
                "ip",
                "link",
                "add",
                "name",
                LINK,
                "netns",
                ns,
                "type",
                "veth",
                "peer",
                "name",
                member,
                "netns",
                sw,
            ],
            ["ip", "-n", sw, "link", "set", member, "master", BRIDGE, "up"],
            ["ip", "-n", ns, "addr", "add", f"{address}/{plan.prefixlen}", "dev", LINK],
            ["ip", "-n", ns, "link", "set", LINK, "up"],
            ["ip", "-n", ns, "link", "set", "lo", "up"],
        ]
    return cmds


def dockerd_argv(host: HostPlan) -> list[str]:
    # A UTS namespace of its own named after the host: swarm names its nodes by host name, so
    # `docker node ls` shows host1, host2… and not the machine's name N times.
    return enter(
        host.netns,
        [
            "unshare", "--uts", "--",
            "sh", "-c", 'hostname "$0" && exec "$@"', host.name,
            "dockerd",
            "--data-root", host.data_root,
            "--exec-root", host.exec_root,
            "-H", host.url,
            "--pidfile", f"{host.exec_root}/dockerd.pid",
            # Containers that ignore SIGTERM (a shell as pid 1) would hold `lab down` 15 s.
            "--shutdown-timeout", "2",
        ],
    )  # fmt: skip


def etcd_argv(member: EtcdPlan, plan: LabPlan) -> list[str]:
    cluster = ",".join(f"{e.name}={e.peer_url}" for e in plan.etcd)
    return enter(
        member.netns,
        [
            "etcd",
            "--name", member.name,
            "--data-dir", member.data_dir,
            "--listen-client-urls", f"{member.client_url},http://127.0.0.1:{ETCD_CLIENT_PORT}",
            "--advertise-client-urls", member.client_url,
            "--listen-peer-urls", member.peer_url,
            "--initial-advertise-peer-urls", member.peer_url,
            "--initial-cluster", cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", f"dockmesh-lab-{plan.name}",
        ],
    )  # fmt: skip


def agent_argv(host: HostPlan, plan: LabPlan, python: str, shared_store: bool) -> list[str]:
    """The agent of `host`: its engine, the API and DNS on every address of the host's
    namespace (its lab address, 127.0.0.1 and its bridges' gateways). With `shared_store` (the
    agent has `--store`), every agent shares one catalog through the lab's etcd; without it
    each host's agent knows its own host only."""
    argv = [
        python, "-m", "dockmesh", "agent",
        "--engine", host.url,
        "--api", f"0.0.0.0:{API_PORT}",
        "--dns", f"0.0.0.0:{DNS_PORT}",
        # The wildcard listener answers on the gateways too; a second socket there would
        # only fail to bind.
        "--no-gateway-dns",
        "--state", f"{host.agent_dir}/state.db",
    ]  # fmt: skip
    if shared_store and plan.etcd:
        argv += ["--store", f"etcd://{plan.etcd_endpoints}", "--node", host.name]
    return enter(host.netns, argv)


def agent_env(host: HostPlan) -> dict[str, str]:
    """What the agent's environment adds: its own policy directory, so it never enforces the
    machine's applied policy inside the lab host."""
    return {"DOCKMESH_POLICY_DIR": f"{host.agent_dir}/policy"}


def resolv_conf(host: HostPlan) -> str:
    return f"# dockmesh lab {host.name}: its agent's DNS\nnameserver {host.address}\n"


# --- partitions ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Partition:
    """`host` cut off from `peer`: a host name, "etcd" (every member) or "" (everything)."""

    host: str
    peer: str = ""

    def __str__(self) -> str:
        return f"{self.host} from {self.peer or 'everything'}"


def check_partition(plan: LabPlan, part: Partition) -> Partition:
    plan.host(part.host)
    if part.peer == "etcd":
        if not plan.etcd:
            raise LabPlanError(f"--from etcd: lab {plan.name!r} has no etcd")
    elif part.peer:
        plan.host(part.peer)
        if part.peer == part.host:
            raise LabPlanError(f"--from {part.peer}: a host cannot be cut off from itself")
    return part


def _peer_addresses(plan: LabPlan, part: Partition) -> list[str]:
    if part.peer == "etcd":
        return [e.address for e in plan.etcd]
    if part.peer:
        return [plan.host(part.peer).address]
    return []


def partition_ruleset(plan: LabPlan, parts: Sequence[Partition]) -> str:
    """An `nft -f` script for the switch namespace that replaces the lab's partition table
    with one dropping every partition's frames, both ways. No partitions: the table goes."""
    lines = [
        f"table bridge {PARTITION_TABLE}",
        f"delete table bridge {PARTITION_TABLE}",
    ]
    if not parts:
        return "\n".join(lines) + "\n"
    rules: list[str] = []
    for part in parts:
        addr = plan.host(part.host).address
        peers = _peer_addresses(plan, part)
        if not peers:
            rules += [f"ip saddr {addr} drop", f"ip daddr {addr} drop"]
        for p in peers:
            rules += [f"ip saddr {addr} ip daddr {p} drop", f"ip saddr {p} ip daddr {addr} drop"]
    lines += [
        f"table bridge {PARTITION_TABLE} {{",
        "  chain forward {",
        "    type filter hook forward priority 0; policy accept;",
        *(f"    {r}" for r in rules),
        "  }",
        "}",
    ]
    return "\n".join(lines) + "\n"

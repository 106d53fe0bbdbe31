"""The shared catalog's pure decisions: keys, the value codec (fed any bytes), and publishing
and following as a state machine against an etcd kept in memory — random local changes, lease
losses, failed writes, reconnections, compactions and wipes — after which every node's subtree
is what it wants and every node's view is the union of the others'."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from dockmesh.catalog.sharing import (
    MAX_TXN_OPS,
    Plan,
    Published,
    Publisher,
    RemoteView,
    decode,
    encode,
    instance_key,
    node_of_key,
    node_prefix,
    parse_endpoints,
    parse_key,
    remote_instance,
    replace_plan,
    unusable_address,
    valid_node,
    wanted_keys,
)
from dockmesh.catalog.state import Catalog

nodes = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,20}", fullmatch=True)
texts = st.text(min_size=1, max_size=40)
short = st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=0, max_size=20)
published = st.builds(
    Published,
    id=st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=30),
    service=st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True),
    address=st.from_regex(r"10\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}", fullmatch=True),
    port=st.integers(0, 65535),
    tags=st.lists(short, max_size=3).map(tuple),
    meta=st.dictionaries(st.from_regex(r"[a-z][a-z0-9_-]{0,8}", fullmatch=True), short, max_size=3),
    weight=st.integers(1, 65535),
    container=short,
    status=st.sampled_from(["passing", "warning", "critical", "maintenance"]),
    output=st.text(max_size=30),
)


# --- keys -------------------------------------------------------------------------------------


@settings(deadline=None)  # a loaded machine is no reason to fail
@given(nodes, texts)
def test_an_instance_key_names_its_node_and_id_whatever_the_id(node: str, iid: str) -> None:
    key = instance_key(node, iid)
    assert key.startswith(node_prefix(node))
    assert "/" not in key[len(node_prefix(node)) + len("instances/") :]
    assert parse_key(key) == (node, iid)
    assert node_of_key(key) == node


@settings(deadline=None)  # a loaded machine is no reason to fail
@given(st.text(max_size=80))
def test_any_key_is_parsed_or_refused_never_raises(key: str) -> None:
    parsed = parse_key(key)
    if parsed is not None:
        assert instance_key(*parsed) == key  # only the canonical spelling is accepted


def test_keys_of_other_shapes_are_refused() -> None:
    assert parse_key("/dockmesh/v1/nodes/a/instances/") is None
    assert parse_key("/dockmesh/v1/nodes/a/instances/%2") is None
    assert parse_key("/dockmesh/v1/nodes/a/instances/%7e") is None  # not the canonical %7E… nor ~
    assert parse_key("/dockmesh/v1/nodes/a/other/x") is None
    assert parse_key("/dockmesh/v1/nodes/../instances/x") is None
    assert parse_key("/dockmesh/v2/nodes/a/instances/x") is None
    assert not valid_node("a..b") and not valid_node("-a") and valid_node("host1")


# --- values -----------------------------------------------------------------------------------


@settings(deadline=None)  # a loaded machine is no reason to fail
@given(published)
def test_a_value_decodes_to_what_was_encoded(p: Published) -> None:
    assert decode(encode(p), p.id) == p
    assert encode(decode(encode(p))) == encode(p)


@settings(deadline=None)  # a loaded machine is no reason to fail
@given(st.binary(max_size=300))
def test_any_bytes_decode_or_raise_value_error(data: bytes) -> None:
    try:
        p = decode(data)
    except ValueError:
        return
    assert decode(encode(p)) == p


@settings(deadline=None)  # a loaded machine is no reason to fail
@given(
    published,
    st.sampled_from(["id", "service", "port", "tags", "meta", "weight", "status"]),
    st.one_of(
        st.none(),
        st.booleans(),
        st.floats(),
        st.integers(-5, 70000),
        st.lists(st.integers(), max_size=2),
        st.just({"a": 1}),
    ),
)
def test_a_field_of_the_wrong_kind_is_refused(p: Published, name: str, bad: object) -> None:
    d = json.loads(encode(p))
    original = d[name]
    d[name] = bad
    try:
        got = decode(json.dumps(d).encode())
    except ValueError:
        return
    # Only a value that is still valid for the field gets through (an empty list is tags).
    valid = bad == original or name in ("port", "weight") or (name == "tags" and bad == [])
    assert got is not None and valid


@pytest.mark.parametrize(
    "data",
    [
        b"\xff\xfe",
        b"[]",
        b'{"id": "x"}',
        b'{"id":"x","id":"y"}',
        b"NaN",
    ],
)
def test_values_that_are_not_ours_are_refused(data: bytes) -> None:
    with pytest.raises(ValueError, match=r"JSON|duplicate|fields|number"):
        decode(data)


def test_a_value_must_name_the_keys_instance_and_fit() -> None:
    p = Published("a-1", "web", "10.0.0.2", 80)
    with pytest.raises(ValueError, match="not the key's"):
        decode(encode(p), "a-2")
    with pytest.raises(ValueError, match="at most"):
        decode(encode(replace(p, output="x" * 70000)))
    extra = json.loads(encode(p)) | {"more": 1}
    with pytest.raises(ValueError, match="unknown"):
        decode(json.dumps(extra).encode())


def test_a_remote_instance_carries_its_node_and_its_published_health() -> None:
    meta = {"project": "shop", "engine": "local"}
    p = Published("api-1", "api", "10.0.0.9", 8080, meta=meta, status="critical")
    inst, checks = remote_instance("host2", p)
    assert inst.id == "host2/api-1" and inst.engine == "node:host2"
    assert inst.meta["node"] == "host2" and inst.project == "shop"
    assert inst.meta["engine"] == "host2/local"  # host2's engine, not this host's "local"
    assert [c.initial_status for c in checks] == ["critical"] and checks[0].kind == "docker"
    cat = Catalog()
    cat.sync_containers(inst.engine, [(inst, checks)], 0.0)
    assert [e.status for e in cat.entries("api")] == ["critical"]
    assert cat.entries("api", passing=True) == []


def test_endpoints() -> None:
    assert parse_endpoints("etcd://127.0.0.1:2379,[::1]:2380") == [
        ("127.0.0.1", 2379),
        ("::1", 2380),
    ]
    for bad in ("http://a:1", "etcd://a", "etcd://a:0", "etcd://a:x", "etcd://a b:1", "etcd://"):
        with pytest.raises(ValueError, match=r"expected|port|host name"):
            parse_endpoints(bad)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("etcd://user:pass@10.0.0.1:2379", "user:password@ is not supported"),
        ("etcd://::1:2379", "goes in brackets"),
        ("etcd://:::1", "goes in brackets"),
        ("etcd://[::1:2379", "not an IPv6 address in brackets"),
        ("etcd://[nope]:2379", "not an IPv6 address in brackets"),
        ("etcd://a:1,a:1", "listed twice"),
        ("etcd://[::1]:1,[0::1]:1", "listed twice"),
        ("etcd://-h:1", "not an IP address or a host name"),
        ("etcd://h..x:1", "not an IP address or a host name"),
        ("etcd://" + "a" * 300 + ":1", "not an IP address or a host name"),
        ("etcd://h:2379/", "port"),
        ("etcd://" + ",".join(f"h{i}:1" for i in range(100)), "at most 64"),
    ],
)
def test_odd_etcd_endpoints_are_refused_saying_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=re.escape(why)):
        parse_endpoints(text)


def test_ipv6_and_names_are_endpoints() -> None:
    assert parse_endpoints("etcd://[::1]:2379,etcd-1.lab:2379,[fd00::0:5]:1") == [
        ("::1", 2379),
        ("etcd-1.lab", 2379),
        ("fd00::5", 1),
    ]


# --- plans ------------------------------------------------------------------------------------


def test_nothing_changed_is_nothing_written() -> None:
    pub = Publisher("a")
    wanted = wanted_keys("a", [Published("x", "s", "10.0.0.1", 1)])
    first = pub.plan(wanted, listed=["/dockmesh/v1/nodes/a/instances/old"])
    assert first.replace and first.deletes == ("/dockmesh/v1/nodes/a/instances/old",)
    pub.committed(first)
    assert pub.plan(wanted).empty


def test_a_replacement_never_touches_another_nodes_keys_and_fits_etcds_transactions() -> None:
    wanted = {instance_key("a", str(i)): b"v" for i in range(300)}
    plan = replace_plan("a", [instance_key("b", "x"), instance_key("a", "gone")], wanted)
    assert plan.deletes == (instance_key("a", "gone"),)
    batches = plan.batches()
    assert all(len(p) + len(d) <= MAX_TXN_OPS for p, d in batches)
    assert sum(len(p) for p, _ in batches) == 300
    assert Plan({}, ()).batches() == [([], [])]


# --- the state machine ------------------------------------------------------------------------


@dataclass
class MemoryEtcd:
    """What the machine needs of etcd: keys with leases, revisions, a compactable history,
    and a cluster ID that a wipe changes."""

    kv: dict[str, tuple[bytes, int]] = field(default_factory=dict)
    revision: int = 1
    cluster: int = 1
    history: list[tuple[int, str, bytes | None]] = field(default_factory=list)
    compacted: int = 0
    leases: set[int] = field(default_factory=set)
    next_lease: int = 100

    def grant(self) -> int:
        self.next_lease += 1
        self.leases.add(self.next_lease)
        return self.next_lease

    def txn(self, puts: list[tuple[str, bytes]], deletes: list[str], lease: int) -> None:
        if lease not in self.leases:
            raise LookupError("lease not found")
        self.revision += 1
        for k in deletes:
            if self.kv.pop(k, None) is not None:
                self.history.append((self.revision, k, None))
        for k, v in puts:
            self.kv[k] = (v, lease)
            self.history.append((self.revision, k, v))

    def expire(self, lease: int) -> None:
        self.leases.discard(lease)
        doomed = [k for k, (_, le) in self.kv.items() if le == lease]
        if doomed:
            self.revision += 1
            for k in doomed:
                del self.kv[k]
                self.history.append((self.revision, k, None))

    def listing(self, prefix: str) -> dict[str, bytes]:
        return {k: v for k, (v, _) in self.kv.items() if k.startswith(prefix)}


@dataclass
class Agent:
    node: str
    publisher: Publisher
    view: RemoteView
    wanted: dict[str, bytes] = field(default_factory=dict)
    lease: int | None = None
    position: int = 0  # the next revision its watch delivers
    connected: bool = False


NAMES = ("a", "b", "c")


class SharedCatalogMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.etcd = MemoryEtcd()
        self.agents = {n: Agent(n, Publisher(n), RemoteView(n)) for n in NAMES}
        for a in self.agents.values():
            self.connect(a)

    # --- what an agent's shell does ---

    def connect(self, a: Agent) -> None:
        """A (re)connection: list, diff, watch from the next revision."""
        rel = a.view.relist(
            self.etcd.listing("/dockmesh/v1/nodes/"), self.etcd.revision, self.etcd.cluster
        )
        if rel.wiped:
            a.lease = None
            a.publisher.lost()
        a.publisher.check_listing(a.view.own)
        a.position = self.etcd.revision + 1
        a.connected = True

    def flush(self, a: Agent) -> None:
        if a.lease is None:
            a.lease = self.etcd.grant()
            a.publisher.lost()
        listed = list(self.etcd.listing(node_prefix(a.node))) if a.publisher.needs_listing else None
        plan = a.publisher.plan(dict(a.wanted), listed)
        try:
            for puts, deletes in plan.batches():
                self.etcd.txn(puts, deletes, a.lease)
        except LookupError:
            a.publisher.failed()
            a.lease = None
            return
        a.publisher.committed(plan)

    def deliver(self, a: Agent) -> None:
        if not a.connected:
            return
        if a.position <= self.etcd.compacted:
            a.connected = False  # the watch is refused: reconnect
            return
        for rev, key, value in [h for h in self.etcd.history if h[0] >= a.position]:
            a.view.event(key, value, rev)
            if key.startswith(node_prefix(a.node)):
                a.publisher.own_event(key, value)
        a.position = self.etcd.revision + 1

    # --- rules ---

    @rule(
        node=st.sampled_from(NAMES), items=st.lists(published, max_size=4, unique_by=lambda p: p.id)
    )
    def local_change(self, node: str, items: list[Published]) -> None:
        a = self.agents[node]
        a.wanted = wanted_keys(node, items)
        self.flush(a)

    @rule(
        node=st.sampled_from(NAMES),
        drop=st.integers(0, 3),
        status=st.sampled_from(["passing", "critical"]),
    )
    def one_instance_changes(self, node: str, drop: int, status: str) -> None:
        a = self.agents[node]
        keys = sorted(a.wanted)
        if not keys:
            return
        k = keys[drop % len(keys)]
        if drop % 2:
            del a.wanted[k]
        else:
            a.wanted[k] = encode(replace(decode(a.wanted[k]), status=status))  # type: ignore[arg-type]
        self.flush(a)

    @rule(node=st.sampled_from(NAMES), told=st.booleans())
    def lease_lost(self, node: str, told: bool) -> None:
        a = self.agents[node]
        if a.lease is None:
            return
        self.etcd.expire(a.lease)
        if told:  # the keep-alive says so; else the agent learns it from its own watch
            a.lease = None
            a.publisher.lost()
        else:
            self.deliver(a)
            if a.publisher.published is None:
                a.lease = None
        self.flush(a)

    @rule(node=st.sampled_from(NAMES), happened=st.booleans())
    def a_write_without_an_answer(self, node: str, happened: bool) -> None:
        a = self.agents[node]
        if a.lease is None or not a.wanted:
            return
        k = sorted(a.wanted)[0]
        if happened:
            self.etcd.txn([(k, b"half-written")], [], a.lease)
        a.publisher.failed()
        self.flush(a)

    @rule(node=st.sampled_from(NAMES))
    def deliver_events(self, node: str) -> None:
        self.deliver(self.agents[node])

    @rule(node=st.sampled_from(NAMES))
    def disconnect_and_reconnect(self, node: str) -> None:
        a = self.agents[node]
        a.connected = False
        self.connect(a)

    @rule(node=st.sampled_from(NAMES))
    def someone_else_deletes_a_key_its_watch_never_shows(self, node: str) -> None:
        a = self.agents[node]
        mine = sorted(self.etcd.listing(node_prefix(node)))
        if not mine:
            return
        self.etcd.revision += 1
        del self.etcd.kv[mine[0]]  # and compacted away before its watch delivered it
        self.etcd.history = []
        self.etcd.compacted = self.etcd.revision
        a.connected = False

    @rule()
    def compaction(self) -> None:
        self.etcd.compacted = self.etcd.revision
        self.etcd.history = []

    @rule()
    def wipe(self) -> None:
        self.etcd = MemoryEtcd(cluster=self.etcd.cluster + 1, next_lease=self.etcd.next_lease)
        for a in self.agents.values():
            a.connected = False  # the members restarted: every watch broke

    # --- the property ---

    def settle(self) -> None:
        for _ in range(4):
            for a in self.agents.values():
                if not a.connected:
                    self.connect(a)
                self.deliver(a)
            for a in self.agents.values():
                if a.publisher.published is None or a.lease not in self.etcd.leases:
                    if a.lease not in self.etcd.leases:
                        a.lease = None
                    self.flush(a)
            for a in self.agents.values():
                self.deliver(a)

    @invariant()
    def published_equals_local_and_views_equal_the_union(self) -> None:
        self.settle()
        for a in self.agents.values():
            assert self.etcd.listing(node_prefix(a.node)) == a.wanted
            assert a.publisher.published == a.wanted
        for a in self.agents.values():
            others = {
                b.node: {p.id: p for p in (decode(v) for v in b.wanted.values())}
                for b in self.agents.values()
                if b.node != a.node and b.wanted
            }
            assert a.view.nodes == others


SharedCatalogMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=25, deadline=None
)
test_shared_catalog_machine = SharedCatalogMachine.TestCase


# --- a hostile or careless writer ----------------------------------------------------------


def _value(iid: str, address: str) -> bytes:
    return encode(Published(id=iid, service="web", address=address, port=80))


@given(st.integers(0, 2**24 - 1))
def test_a_remote_instance_on_a_loopback_address_is_left_out(n: int) -> None:
    # On this host 127.x would be this host: a remote node's instance there would send this
    # host's clients to one of its own ports.
    ip = f"127.{n >> 16}.{(n >> 8) & 255}.{n & 255}"
    view = RemoteView("me")
    key = instance_key("evil", "lo")
    node, problem = view.event(key, _value("lo", ip), 2)
    assert node is None and problem is not None and "loopback" in problem
    assert view.nodes == {}


@pytest.mark.parametrize(
    "address", ["127.0.0.1", "::1", "0.0.0.0", "::", "::ffff:127.0.0.1", "localhost", "a b"]
)
def test_addresses_that_name_this_host_or_none_are_unusable(address: str) -> None:
    assert unusable_address(address) is not None


@pytest.mark.parametrize("address", ["", "10.1.2.3", "fd00::5", "db.internal", "192.168.9.1"])
def test_addresses_of_other_hosts_are_usable(address: str) -> None:
    assert unusable_address(address) is None


def test_a_key_stormed_with_bad_values_is_said_once_until_it_is_good_again() -> None:
    view = RemoteView("me")
    key = instance_key("evil", "junk")
    said = [view.event(key, b"\xff\x00garbage%d" % i, i + 2)[1] for i in range(300)]
    assert len([p for p in said if p is not None]) == 1
    # A listing at reconnection does not say it again either.
    assert view.relist({key: b"\xffjunk"}, 400, 1).problems == ()
    # Good, then bad again: said again.
    assert view.event(key, _value("junk", "10.0.0.9"), 401) == ("evil", None)
    node, problem = view.event(key, b"junk", 402)
    assert node == "evil" and problem is not None
    # Deleted: forgotten.
    view.event(key, None, 403)
    assert view.bad == {}


def test_the_keys_remembered_as_bad_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("dockmesh.catalog.sharing.MAX_BAD_KEYS", 5)
    view = RemoteView("me")
    said = [view.event(instance_key("evil", f"k{i}"), b"junk", i + 2)[1] for i in range(50)]
    assert len([p for p in said if p is not None]) == 5 and len(view.bad) == 5


def test_a_very_long_bad_key_is_shown_cut() -> None:
    view = RemoteView("me")
    key = instance_key("evil", "L" * 100_000)
    _, problem = view.event(key, b"junk", 2)
    assert problem is not None and len(problem) < 300 and "100" in problem

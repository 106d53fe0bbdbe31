"""The agent keeps the overlay tables `policy apply` recorded true (`OverlayKeeper`): the
members of the engines it follows live, the others' as recorded; a container that leaves
takes its address out at once, a new one is judged by its own labels; a table flushed behind
its back or a namespace made anew is written again; a removed policy is let go."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.model.policy import Policy, Rule, Selector
from dockmesh.model.topology import Container, EngineInfo, Topology
from dockmesh.policy.compile import PortMap, remove_transaction
from dockmesh.policy.enforce import Enforcer
from dockmesh.policy.nft import parse_live
from dockmesh.policy.overlay import (
    MEMBERS_SUFFIX,
    WHERE_SUFFIX,
    OverlayKeeper,
    netns_name,
    overlay_ports,
    overlay_topology,
    store_dir,
)
from dockmesh.policy.store import Applied, PolicyStore
from dockmesh.testing.nft import MemoryNft
from tests.unit.policy.test_overlay import OVERLAY, overlay_net
from tests.unit.topos import container, topology

T = "t"
POLICY = Policy(
    default="deny",
    rules=(
        Rule((Selector(labels=(("role", "client"),)),), (Selector(labels=(("role", "web"),)),)),
    ),
)


def member(name: str, address: str, role: str, engine: str) -> Container:
    return dataclasses.replace(container(name, {OVERLAY: address}, {"role": role}), engine=engine)


def world(members: list[Container], engines: tuple[str, ...] = ("h1",)) -> Topology:
    """The topology the agent follows: the overlay, the members of ENGINES."""
    t = topology([overlay_net()], [c for c in members if c.engine in engines])
    return dataclasses.replace(t, engines=tuple(EngineInfo(e, f"unix:///{e}") for e in engines))


def veths(engine: str, _path: str) -> Callable[[Topology], PortMap]:
    def read(view: Topology) -> PortMap:
        local = {
            (c.id, a.network): f"veth-{c.name}"
            for c in view.containers
            if c.engine == engine
            for a in c.attachments
        }
        return overlay_ports(view, engine, local)

    return read


class Host:
    """h1's overlay namespace (a file standing for it) and the kernel's tables in it."""

    def __init__(self, tmp: Path) -> None:
        self.policy_dir = tmp / "policy"
        self.netns_dir = tmp / "netns"
        self.netns_dir.mkdir()
        n = overlay_net()
        self.path = self.netns_dir / netns_name(n)
        self.path.touch()
        self.where = store_dir(self.policy_dir, "h1", netns_name(n))
        self.nft = MemoryNft()
        self.keeper = OverlayKeeper(
            T,
            self.policy_dir,
            {"h1": str(self.netns_dir)},
            lambda _p: self.nft,
            veths,
            lambda p: os.path.exists(p) and os.path.getsize(p) == 0,  # the file stands for one
        )

    def apply(self, members: list[Container]) -> None:
        """What `policy apply` over both engines leaves: the table, the policy, the members."""
        everyone = world(members, ("h1", "h2"))
        view = overlay_topology(everyone, overlay_net())
        store = PolicyStore(T, self.where)
        Enforcer(store, self.nft, veths("h1", str(self.path))).apply(
            Applied(T, "enforce", POLICY), view
        )
        (self.where / f"{T}{WHERE_SUFFIX}").write_text(f"{self.path}\n")
        (self.where / f"{T}{MEMBERS_SUFFIX}").write_text(json.dumps(view.to_json()))

    def elements(self) -> dict[str, frozenset[str]] | None:
        doc = self.nft.list_table(T)
        return None if doc is None else parse_live(doc, T).elements

    def wanted(self, members: list[Container]) -> dict[str, frozenset[str]]:
        view = overlay_topology(world(members, ("h1", "h2")), overlay_net())
        e = Enforcer(PolicyStore(T, self.where), MemoryNft(), veths("h1", str(self.path)))
        return e.compile(Applied(T, "enforce", POLICY), view).elements()


A = member("a", "10.0.0.2", "client", "h1")
B = member("b", "10.0.0.3", "web", "h2")
C = member("c", "10.0.0.4", "web", "h1")


def addresses(elements: dict[str, frozenset[str]] | None) -> set[str]:
    assert elements is not None
    return {
        a for values in elements.values() for v in values for a in v.split(" . ") if a[:3] == "10."
    }


def test_a_new_local_member_is_judged_by_its_labels_a_remote_one_as_recorded(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path)
    host.apply([A, B])
    assert "10.0.0.4" not in addresses(host.elements())
    host.keeper.sync(world([A, B, C]))  # c starts on h1; b (h2, not followed) as recorded
    assert host.elements() == host.wanted([A, B, C])
    assert "10.0.0.4" in addresses(host.elements())


def test_a_member_that_leaves_takes_its_address_out(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.apply([A, B, C])
    host.keeper.sync(world([A, B]))
    assert host.elements() == host.wanted([A, B])
    assert "10.0.0.4" not in addresses(host.elements())


def test_a_flushed_table_or_a_new_namespace_is_written_again(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.apply([A, B])
    host.keeper.sync(world([A, B]))
    host.nft.run(remove_transaction(T))  # deleted behind the agent's back
    assert host.elements() is None
    host.keeper.check()
    assert host.elements() == host.wanted([A, B])
    # Docker removes the namespace with its last member: nothing to keep there meanwhile
    host.path.unlink()
    host.nft = MemoryNft()
    host.keeper.sync(world([B]))
    assert host.elements() is None
    host.path.touch()  # the next member: a new namespace, empty
    host.keeper.sync(world([A, B]))
    assert host.elements() == host.wanted([A, B])


def test_nothing_is_written_where_nothing_was_applied_or_for_an_engine_not_followed(
    tmp_path: Path,
) -> None:
    host = Host(tmp_path)
    host.keeper.sync(world([A, B]))
    assert host.elements() is None
    host.apply([A, B])
    host.nft.run(remove_transaction(T))
    host.keeper.sync(world([B], ("h2",)))  # the agent follows h2 only: h1's is not its own
    assert host.elements() is None


def test_a_removed_policy_is_let_go(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.apply([A, B])
    host.keeper.sync(world([A, B]))
    PolicyStore(T, host.where).remove()
    host.nft.run(remove_transaction(T))  # as `policy remove` leaves it
    host.keeper.check()
    host.keeper.sync(world([A, B, C]))
    assert host.elements() is None


def test_an_unreadable_members_record_leaves_the_live_members(tmp_path: Path) -> None:
    host = Host(tmp_path)
    host.apply([A, B])
    (host.where / f"{T}{MEMBERS_SUFFIX}").write_bytes(b"\xff{not json")
    host.keeper.sync(world([A, C]))
    assert host.elements() == host.wanted([A, C])


LOCALS = (A, C, member("d", "10.0.0.5", "client", "h1"))


@settings(max_examples=40, deadline=None)
@given(st.lists(st.sets(st.integers(0, len(LOCALS) - 1)), min_size=1, max_size=6))
def test_after_every_change_the_table_is_the_policy_over_the_members(
    changes: list[set[int]],
) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        host = Host(Path(tmp))
        host.apply([A, B])
        for chosen in changes:
            local = [LOCALS[i] for i in sorted(chosen)]
            host.keeper.sync(world([*local, B]))
            assert host.elements() == host.wanted([*local, B])


# --- what an adversary or an accident leaves in the policy directory -------------------------


def structure(host: Host) -> str | None:
    doc = host.nft.list_table(T)
    return None if doc is None else parse_live(doc, T).structure_hash


def test_a_stray_file_beside_the_records_stops_nothing(tmp_path: Path) -> None:
    """A file (not a record's directory) in <policy_dir>/overlay is not a record: the tables
    are kept as ever (it raised NotADirectoryError out of every sync)."""
    host = Host(tmp_path)
    host.apply([A, B])
    (host.policy_dir / "overlay" / "notes.txt").write_text("x")
    host.keeper.sync(world([A, B, C]))
    assert host.elements() == host.wanted([A, B, C])


def test_a_members_record_that_is_a_fifo_or_dev_zero_is_not_read(tmp_path: Path) -> None:
    """Neither a FIFO (an open blocks for ever, holding the keeper's lock) nor a link to
    /dev/zero (stat says 0 bytes, a read never ends) is read: the live members are used."""
    import os
    import threading

    host = Host(tmp_path)
    host.apply([A, B])
    record = host.where / f"{T}{MEMBERS_SUFFIX}"
    for make in (os.mkfifo, lambda p: os.symlink("/dev/zero", p)):
        record.unlink()
        make(record)
        done = threading.Event()

        def run(done: threading.Event) -> None:
            host.keeper.sync(world([A, C]))
            done.set()

        threading.Thread(target=run, args=(done,), daemon=True).start()
        assert done.wait(10), "the keeper hangs on the record"
        assert host.elements() == host.wanted([A, C])


def test_a_record_that_does_not_compile_never_freezes_the_table(tmp_path: Path) -> None:
    """A record that reads but does not compile (an address that is a list) leaves the live
    members, not the table as it was: a member that left takes its address out (it stayed
    in the allow sets, for whatever container got the address next)."""
    host = Host(tmp_path)
    host.apply([A, B, C])
    record = host.where / f"{T}{MEMBERS_SUFFIX}"
    doc = json.loads(record.read_text())
    endpoint = dict(doc["networks"][0]["endpoints"][0], container_id="x", engine="h2")
    endpoint["ipv4"] = ["10.0.0.9"]
    doc["networks"][0]["endpoints"].append(endpoint)
    doc["containers"].append(
        {"id": "x", "name": "x", "engine": "h2", "state": "running",
         "networks": [doc["networks"][0]["name"]], "labels": {"role": "web"}}
    )  # fmt: skip
    record.write_text(json.dumps(doc))
    host.keeper.sync(world([A, B]))  # c left h1
    assert "10.0.0.4" not in addresses(host.elements())
    assert host.elements() == host.wanted([A])  # b as recorded cannot be told: left out


def test_a_live_member_wins_an_address_over_the_record(tmp_path: Path) -> None:
    """b (h2, web) left and h1 gave its address to e (a client): e is judged by its own
    labels, and the record's b (stale, bound to vxlan0) no longer claims the address (it
    made e's own traffic unconfirmed, and let a client reach e as if it were b)."""
    host = Host(tmp_path)
    host.apply([A, B])
    e = member("e", "10.0.0.3", "client", "h1")
    host.keeper.sync(world([A, e]))
    assert host.elements() == host.wanted([A, e])


def test_a_check_never_writes_the_old_policy_over_a_new_apply(tmp_path: Path) -> None:
    """`policy apply` writes the kernel's table first and records the policy after: a check
    in between must not take the new table for tampering and write the old one back."""
    host = Host(tmp_path)
    host.apply([A, B])
    host.keeper.sync(world([A, B]))
    old = structure(host)
    new_policy = Policy(
        default="deny",
        rules=(
            *POLICY.rules,
            Rule((Selector(labels=(("role", "web"),)),), (Selector(labels=(("role", "client"),)),)),
        ),
    )
    view = overlay_topology(world([A, B], ("h1", "h2")), overlay_net())
    other = Enforcer(PolicyStore(T, tmp_path / "elsewhere"), host.nft, veths("h1", ""))
    rs = other.compile(Applied(T, "enforce", new_policy), view)
    host.nft.run(other.transaction(rs))  # the kernel's half of the other apply
    new = structure(host)
    assert new != old
    host.keeper.check()
    assert structure(host) == new
    PolicyStore(T, host.where).save(Applied(T, "enforce", new_policy))  # its record
    host.keeper.check()
    host.keeper.check()
    assert structure(host) == new


def test_an_apply_over_one_engine_leaves_the_records_of_an_engine_it_prefixes(
    tmp_path: Path,
) -> None:
    """Engine names are free (`--engine a_b=URL`): an apply over engine `a` that reaches no
    namespace takes away `a`'s records only, not `a_b`'s (`a_b_1-…` starts with `a_`)."""
    from dockmesh.policy.overlay import apply_overlays

    policy_dir = tmp_path / "policy"
    for engine in ("a", "a_b"):
        PolicyStore(T, store_dir(policy_dir, engine, "1-0123456789")).save(
            Applied(T, "enforce", POLICY)
        )
    apply_overlays(Applied(T, "enforce", POLICY), world([]), {"a": str(tmp_path)}, policy_dir)
    assert PolicyStore(T, store_dir(policy_dir, "a", "1-0123456789")).stamp() is None
    assert PolicyStore(T, store_dir(policy_dir, "a_b", "1-0123456789")).stamp() is not None


def test_a_file_that_is_no_namespace_is_not_entered(tmp_path: Path) -> None:
    """What a process in a mount namespace of its own sees where Docker later mounted a new
    namespace: the empty file under it. nsenter cannot enter it; it is left, said once."""
    from dockmesh.policy.overlay import is_netns, present

    plain = tmp_path / "1-abcdefghij"
    plain.touch()
    assert not is_netns(str(plain))
    assert is_netns("/proc/self/ns/net")
    assert (
        present(str(tmp_path), dataclasses.replace(overlay_net(), id="abcdefghij" + "0" * 54))
        is None
    )


def test_the_periodic_refresh_compiles_only_after_a_change(tmp_path: Path) -> None:
    """Every few seconds the agent asks again: without a new topology or a record written
    since, that is a few stat calls, no compile (the namespace's links are not read)."""
    host = Host(tmp_path)
    host.apply([A, B])
    reads: list[str] = []

    def counting(engine: str, path: str) -> Callable[[Topology], PortMap]:
        inner = veths(engine, path)

        def read(view: Topology) -> PortMap:
            reads.append(path)
            return inner(view)

        return read

    host.keeper._ports_for = counting
    topo = world([A, B])
    host.keeper.sync(topo)
    first = len(reads)
    assert first
    for _ in range(5):
        host.keeper.refresh(topo)
    assert len(reads) == first
    host.apply([A, B, C])  # a new record: the next refresh syncs
    host.keeper.refresh(topo)
    assert len(reads) > first
    newer = dataclasses.replace(world([A, C, B]), version=topo.version + 1)
    n = len(reads)
    host.keeper.refresh(newer)
    assert len(reads) > n
    assert host.elements() == host.wanted([A, B, C])


def test_a_namespace_not_yet_mounted_is_looked_for_again(tmp_path: Path) -> None:
    """Docker makes the namespace's file before it mounts the namespace: a sync in between
    finds none, and the next refresh (same topology) looks again."""
    host = Host(tmp_path)
    host.apply([A, B])
    host.path.write_text("not yet")  # not a namespace (the stand-in: an empty file is one)
    host.nft.run(remove_transaction(T))
    topo = world([A, B])
    host.keeper.sync(topo)
    assert host.elements() is None
    host.path.write_text("")
    host.keeper.refresh(topo)
    assert host.elements() == host.wanted([A, B])

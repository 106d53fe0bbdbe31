"""Keeping the kernel's table equal to compile(applied policy, topology).

Used by `dockmesh policy apply` (once) and by the agent (on every topology change, and when
the applied policy's file changes).

Theory of operation
-------------------
- The wanted state is a pure function of two inputs: the applied policy (`PolicyStore`) and
  the topology. The enforcer remembers the ruleset it last made true (`_ruleset`), so that a
  change of the topology costs one transaction of set element updates computed against it.
- Whenever that memory may be wrong — on start, when the policy file changed (another
  process applied it), or when a transaction failed (someone else touched the table) — it
  *reconciles*: reads the live table, and if the table has the wanted structure (the hash in
  its first rule's comment), updates its elements to the wanted ones; otherwise replaces the
  whole table in one transaction. Either way there is no moment where the old rules are gone
  and the new ones not yet there, so restarting the agent never opens a window.
- The agent never removes the table: a stopped agent leaves the last ruleset in force (fail
  closed). Only `policy remove` removes it, with the file, so the agent then leaves it alone.
- Whether the live table is what it should be is decided by comparing it, rule by rule and
  set by set, with what the transaction would write (`drift`): a table whose rules were
  flushed, deleted, added or replaced is written again whole; one whose set elements alone
  differ gets element updates (its counters go on).
- A table is dockmesh's when a policy is recorded for it (the file is written only after
  the kernel took the table) or when it carries dockmesh's mark (`nft.mark`, kept by a
  flush). Anything else of that name is someone else's and never touched.
- Tampering: the agent's ruleset watch (`policy/watch.py`) calls `check` after any change to
  the kernel's ruleset. Its own transactions leave the table as wanted, so a check after
  them finds nothing and writes nothing: no loop. A table another `dockmesh policy apply`
  just wrote (its mark names another structure) is given a moment for that command to
  record its policy, then followed rather than "repaired".
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from dockmesh.host.ports import PortFinder
from dockmesh.model.topology import Container, Topology
from dockmesh.policy.compile import (
    JSON,
    PortMap,
    Ruleset,
    compile_policy,
    element_delta,
    full_transaction,
    remove_transaction,
)
from dockmesh.policy.drift import (
    Key,
    TableView,
    as_listing,
    differences,
    only_elements,
    structure,
    summary,
    tables_of,
    view,
    wanted,
)
from dockmesh.policy.nft import (
    MARK_PREFIX,
    ForeignTable,
    Nft,
    NftError,
    element_texts,
    is_ours,
    mark,
    parse_live,
)
from dockmesh.policy.store import Applied, PolicyStore, Stamp

log = logging.getLogger(__name__)

# A comparison: the transaction, the live listing, the live and the wanted tables as compared.
Compared = tuple[list[JSON], Any, dict[Key, TableView], dict[Key, TableView]]


class Enforcer:
    """Keeps one nftables table equal to compile(applied policy, topology), as the module
    says how. `_ruleset` is the ruleset it last made true in the kernel, and is None whenever
    that may no longer hold (a new policy file, a refused transaction), so the next change
    reconciles against the live table. It never touches a table dockmesh did not make
    (`ForeignTable`) and removes its own only when asked (`remove`). Thread-safe: every
    public method holds one lock."""

    def __init__(
        self,
        store: PolicyStore,
        nft: Nft | None = None,
        ports: Callable[[Topology], PortMap] | None = None,
    ) -> None:
        self.store = store
        # Each container's bridge ports (the identity its addresses are bound to): read from
        # the host when the kernel is the real one; none known with a stand-in nft.
        if ports is None:
            ports = PortFinder() if nft is None else _no_ports
        self.ports = ports
        self.nft = nft or Nft()
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None
        self._read = False  # whether the file (or its absence) has been read once
        self._applied: Applied | None = None
        self._ruleset: Ruleset | None = None
        self._topology: Topology | None = None
        self.transactions = 0  # how many nft transactions ran (for tests and metrics)
        self.reloads = 0  # of which whole-table replacements
        self.repairs = 0  # changes made behind dockmesh's back that `check` undid
        # Reference listings learnt from the kernel when the predicted one proved wrong
        # (`_write_all`), by structure.
        self._learnt: dict[str, Any] = {}
        self._wanted: tuple[Ruleset, list[JSON], dict[Key, TableView]] | None = None
        self._warned_normalise = False

    def compile(self, applied: Applied, topo: Topology) -> Ruleset:
        return compile_policy(applied.policy, topo, applied.mode, applied.table, self.ports(topo))

    @property
    def table(self) -> str:
        return self.store.table

    @property
    def applied(self) -> Applied | None:
        return self._applied

    @property
    def ruleset(self) -> Ruleset | None:
        """The ruleset last made true in the kernel (None: none, or not known to hold)."""
        return self._ruleset

    # --- the command line -------------------------------------------------------------------

    def apply(self, applied: Applied, topo: Topology) -> Ruleset:
        """Makes `applied` the policy: the kernel first (one transaction), then the file, so
        that a policy the kernel refused is never recorded as applied."""
        with self._lock:
            rs = self.compile(applied, topo)
            self._refuse_foreign()
            self._run(self.transaction(rs), reload=True)
            self.store.save(applied)
            self._stamp, self._read = self.store.stamp(), True
            self._applied, self._ruleset, self._topology = applied, rs, topo
        return rs

    def remove(self) -> bool:
        """Removes the table and the applied policy; False when neither was there.
        ForeignTable (nothing removed) when the table is not one dockmesh made."""
        with self._lock:
            existed = self._refuse_foreign()
            had_file = self.store.remove()
            if existed:
                self.nft.run(remove_transaction(self.table))
            self._stamp = self._applied = self._ruleset = None
            return existed or had_file

    # --- the agent --------------------------------------------------------------------------

    def sync(self, topo: Topology) -> None:
        """The topology changed (or this is the first one): make the table follow it."""
        with self._lock:
            before = self._topology
            self._topology = topo
            changed = self._refresh()
            self._sync(changed)
            rs = self._ruleset
            if rs is not None and rs.logs:
                held = _addresses(topo)
                if before is not None and _addresses(before) - held:
                    self._forget_in_logs(held, _subnets(topo))

    def _forget_in_logs(self, held: set[str], subnets: list[Any]) -> None:
        """A container that left (or moved) takes its flows out of the drop logs: the tables
        hold no address of the networks that no container has (a new container may get it),
        only the outside's and the containers'. Looked at when an address went away."""
        rs = self._ruleset
        assert rs is not None

        def gone(text: str) -> bool:
            try:
                ip = ipaddress.ip_address(text)
            except ValueError:
                return False
            return str(ip) not in held and any(ip in n for n in subnets)

        cmds: list[JSON] = []
        try:
            # One listing of the table, not one per log (each nft run costs ~10 ms, more
            # under load, and the agent holds its lock meanwhile).
            doc = self.nft.list_family_table("inet", self.table)
            items = doc.get("nftables", []) if isinstance(doc, dict) else []
            logged = {str(i["set"].get("name")): i["set"] for i in items if "set" in i}
            for lg in rs.logs:
                raw = list((logged.get(lg.name) or {}).get("elem") or ())
                stale = [
                    e.get("elem", {}).get("val", e) if isinstance(e, dict) else e
                    for e in raw
                    if any(gone(p) for t in element_texts(e) for p in t.split(" . ")[:2])
                ]
                if stale:
                    where = {"family": "inet", "table": self.table, "name": lg.name}
                    cmds.append({"delete": {"element": {**where, "elem": stale}}})
            self.nft.run(cmds)
        except NftError as e:  # a flow that timed out meanwhile: the next change tries again
            log.debug("policy: drop logs not pruned (%s)", e)

    def poll(self) -> None:
        """Picks up a policy applied or removed by another process."""
        with self._lock:
            if self._topology is None:
                return
            if self.store.stamp() != self._stamp:
                self._sync(self._refresh())

    def reload(self) -> None:
        """SIGHUP to the agent: the policy file read again, and the table compared with the
        kernel's and mended (its sets updated, or the table written again when its structure
        differs or it is gone), as at a restart, without waiting for a change."""
        with self._lock:
            self._read = False
            self._ruleset = None
            if self._topology is not None:
                self._sync(self._refresh())

    def _refresh(self) -> bool:
        """Re-reads the policy file when it is another file than last time."""
        stamp = self.store.stamp()
        if stamp == self._stamp and self._read:
            return False
        self._stamp, self._read = stamp, True
        try:
            applied = self.store.load()
        except ValueError as e:
            log.error("policy: %s; keeping the table as it is", e)
            applied = None
        if applied is not None and applied.table != self.table:
            log.error(
                "policy: %s names table %s, not %s", self.store.path, applied.table, self.table
            )
            applied = None
        self._applied = applied
        self._ruleset = None
        return True

    def _sync(self, changed: bool) -> None:
        applied, topo = self._applied, self._topology
        if applied is None or topo is None:
            if changed and self._stamp is None:
                log.info("policy: none applied to table inet %s", self.table)
            self._ruleset = None
            return
        want = self.compile(applied, topo)
        try:
            if self._ruleset is None:
                self._reconcile(want)
            else:
                delta = element_delta(self._ruleset.elements(), want)
                if delta is None:
                    self._refuse_foreign()
                    self._write_all(self._compare(want)[0])
                elif delta:
                    try:
                        self._run(delta)
                    except NftError as e:
                        log.warning("policy: set update refused (%s); reconciling", e)
                        self._reconcile(want)
            self._ruleset = want
        except NftError as e:
            log.error("policy: could not update table inet %s: %s", self.table, e)
            self._ruleset = None

    def _reconcile(self, want: Ruleset, compared: Compared | None = None) -> list[str]:
        """Makes the live table `want` with the least it takes; what differed ([] nothing).
        `compared`: the comparison just made (`_compare(want)`), not made again."""
        tx, doc, live, ref = compared or self._compare(want)
        if live and not self._owned(doc):
            raise ForeignTable(self.table)  # someone else's table: never replaced
        # Recreating a table that `policy remove` just deleted would undo it: look again.
        if not live and self.store.stamp() is None:
            return []
        diffs = differences(live, ref)
        if not diffs:
            return []
        if only_elements(live, ref):
            delta = element_delta(parse_live(doc, self.table).elements, want)
            if delta is not None:
                self._run(delta)
                return diffs
        self._write_all(tx)
        return diffs

    # --- tampering ------------------------------------------------------------------------

    def check(self, patient: bool = True) -> list[str] | None:
        """The kernel's ruleset changed (the agent's watch saw it): when the table is no
        longer what this enforcer made true, it is restored, logged and counted (`repairs`).
        Returns what differed ([] nothing). None when the live table is one another
        `dockmesh policy apply` just wrote and its record may follow: ask again in a moment
        with `patient=False`, and it is then followed if recorded, restored if not."""
        with self._lock:
            if self._topology is None:
                return []
            if self._refresh():  # a policy applied or removed meanwhile: follow it
                self._sync(True)
                return []
            want = self._ruleset
            if self._applied is None:
                return []
            if want is None:  # not known to be true: mended as at a start, not counted
                self._sync(False)
                return []
            try:
                compared = self._compare(want)
                _, doc, live, ref = compared
                diffs = differences(live, ref)
                if not diffs:
                    return []
                if patient and self._written_by_another(doc, want):
                    return None
                self._reconcile(want, compared)
            except NftError as e:
                log.error("policy: could not restore table inet %s: %s", self.table, e)
                self._ruleset = None
                return []
            self.repairs += 1
            log.warning(
                "policy: table inet %s was changed behind dockmesh's back, restored: %s",
                self.table,
                summary(diffs),
            )
            return diffs

    def drift(self, want: Ruleset) -> list[str]:
        """What differs between the kernel's table(s) and `want`, in words ([] in sync).
        Reads only."""
        _, _, live, ref = self._compare(want)
        return differences(live, ref)

    def transaction(self, rs: Ruleset) -> list[JSON]:
        """What makes the kernel hold `rs`, with dockmesh's mark in each of its tables."""
        return mark(full_transaction(rs), rs.structure_hash)

    def _written_by_another(self, doc: Any, want: Ruleset) -> bool:
        """Whether the live table carries the mark of another structure than `want`'s and
        not ours: a whole table another dockmesh process wrote."""
        marks = {
            str(item["set"].get("name"))
            for item in doc.get("nftables", [])
            if isinstance(item.get("set"), dict)
            and str(item["set"].get("name", "")).startswith(MARK_PREFIX)
        }
        return bool(marks) and MARK_PREFIX + (want.structure_hash or "0") not in marks

    def _compare(self, want: Ruleset) -> Compared:
        """The transaction that writes `want`, the live listing of its tables, and both sides
        as compared. The wanted side is kept for the last ruleset asked about: the agent
        compares the same one after every change to the ruleset."""
        kept = self._wanted
        if kept is not None and kept[0] is want:
            _, tx, ref = kept
        else:
            tx = self.transaction(want)
            ref = wanted(tx, self._reference(tx))
            self._wanted = (want, tx, ref)
        keys = tables_of(tx)
        doc = self.nft.list_tables(keys)
        return tx, doc, view(doc, keys), ref

    def _reference(self, tx: list[JSON]) -> Any:
        key = _structure_key(tx)
        learnt = self._learnt.get(key)
        if learnt is not None:
            return learnt
        try:
            return self.nft.normalise(tx)
        except NftError as e:
            if not self._warned_normalise:
                log.warning("policy: %s; comparing with the commands as sent", e)
                self._warned_normalise = True
            return as_listing(structure(tx))

    def _write_all(self, tx: list[JSON]) -> None:
        """Writes the whole table; when the kernel then lists it otherwise than predicted,
        the prediction was wrong, not the kernel: what it lists is learnt as the reference
        for this structure, so that a check after this write finds nothing (never a loop)."""
        self._run(tx, reload=True)
        keys = tables_of(tx)
        doc = self.nft.list_tables(keys)
        kept = self._wanted
        ref = kept[2] if kept is not None and kept[1] is tx else wanted(tx, self._reference(tx))
        if not only_elements(view(doc, keys), ref):
            diffs = differences(view(doc, keys), ref)
            log.warning(
                "policy: nft lists table inet %s otherwise than predicted (%s); "
                "comparing with what it lists from now on",
                self.table,
                summary(diffs),
            )
            self._learnt[_structure_key(tx)] = doc
            self._wanted = None

    def _owned(self, doc: Any) -> bool:
        """Ours: a policy is recorded for the table, or it carries dockmesh's mark."""
        return self.store.stamp() is not None or is_ours(doc, self.table)

    def _refuse_foreign(self) -> bool:
        """Whether the table exists; ForeignTable when it exists and is not ours."""
        doc = self.nft.list_table(self.table)
        if doc is not None and not self._owned(doc):
            raise ForeignTable(self.table)
        return doc is not None

    def _run(self, cmds: list[dict[str, object]], reload: bool = False) -> None:
        self.nft.run(cmds)
        self.transactions += 1
        self.reloads += int(reload)


def _no_ports(topo: Topology) -> PortMap:
    return {}


def _subnets(topo: Topology) -> list[Any]:
    out = []
    for n in topo.networks:
        for pool in n.ipam:
            net = pool.network()
            if net is not None:
                out.append(net)
    return out


def container_addresses(c: Container) -> set[str]:
    """A container's addresses on its networks, as the kernel writes them (text that is no
    address left out)."""
    out: set[str] = set()
    for a in c.attachments:
        for text in (a.ipv4, a.ipv6):
            if text:
                with contextlib.suppress(ValueError):
                    out.add(str(ipaddress.ip_address(text)))
    return out


def _addresses(topo: Topology) -> set[str]:
    """The running containers' addresses, as the kernel writes them."""
    return {a for c in topo.containers if c.running for a in container_addresses(c)}


def _structure_key(tx: list[JSON]) -> str:
    text = json.dumps(structure(tx), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()

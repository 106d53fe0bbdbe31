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
"""

from __future__ import annotations

import logging
import threading

from dockmesh.model.topology import Topology
from dockmesh.policy.compile import Ruleset, compile_policy, element_delta, full_transaction
from dockmesh.policy.nft import ForeignTable, Nft, NftError, is_ours, parse_live
from dockmesh.policy.store import Applied, PolicyStore, Stamp

log = logging.getLogger(__name__)


class Enforcer:
    """Keeps one nftables table equal to compile(applied policy, topology), as the module
    says how. `_ruleset` is the ruleset it last made true in the kernel, and is None whenever
    that may no longer hold (a new policy file, a refused transaction), so the next change
    reconciles against the live table. It never touches a table dockmesh did not make
    (`ForeignTable`) and removes its own only when asked (`remove`). Thread-safe: every
    public method holds one lock."""

    def __init__(self, store: PolicyStore, nft: Nft | None = None) -> None:
        self.store = store
        self.nft = nft or Nft()
        self._lock = threading.Lock()
        self._stamp: Stamp | None = None
        self._read = False  # whether the file (or its absence) has been read once
        self._applied: Applied | None = None
        self._ruleset: Ruleset | None = None
        self._topology: Topology | None = None
        self.transactions = 0  # how many nft transactions ran (for tests and metrics)
        self.reloads = 0  # of which whole-table replacements

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
        rs = compile_policy(applied.policy, topo, applied.mode, applied.table)
        with self._lock:
            self._refuse_foreign()
            self._run(full_transaction(rs), reload=True)
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
                self.nft.run([{"delete": {"table": {"family": "inet", "name": self.table}}}])
            self._stamp = self._applied = self._ruleset = None
            return existed or had_file

    # --- the agent --------------------------------------------------------------------------

    def sync(self, topo: Topology) -> None:
        """The topology changed (or this is the first one): make the table follow it."""
        with self._lock:
            self._topology = topo
            changed = self._refresh()
            self._sync(changed)

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
        want = compile_policy(applied.policy, topo, applied.mode, applied.table)
        try:
            if self._ruleset is None:
                self._reconcile(want)
            else:
                delta = element_delta(self._ruleset.elements(), want)
                if delta is None:
                    self._refuse_foreign()
                    self._run(full_transaction(want), reload=True)
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

    def _reconcile(self, want: Ruleset) -> None:
        doc = self.nft.list_table(self.table)
        live = parse_live(doc, self.table) if doc is not None else None
        if live is not None and live.structure_hash is None:
            raise ForeignTable(self.table)  # someone else's table: never replaced
        if live is not None and live.structure_hash == want.structure_hash:
            delta = element_delta(live.elements, want)
            if delta is not None:
                if delta:
                    self._run(delta)
                return
        # Recreating a table that `policy remove` just deleted would undo it: look again.
        if doc is None and self.store.stamp() is None:
            return
        self._run(full_transaction(want), reload=True)

    def _refuse_foreign(self) -> bool:
        """Whether the table exists; ForeignTable when it exists without dockmesh's mark."""
        doc = self.nft.list_table(self.table)
        if doc is not None and not is_ours(doc, self.table):
            raise ForeignTable(self.table)
        return doc is not None

    def _run(self, cmds: list[dict[str, object]], reload: bool = False) -> None:
        self.nft.run(cmds)
        self.transactions += 1
        self.reloads += int(reload)

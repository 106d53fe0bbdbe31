"""An `Nft` that keeps the kernel's tables in memory.

It runs what dockmesh sends the same way the kernel takes it where dockmesh relies on it:

- a `run` is one transaction: every command holds, or the first refused one raises NftError
  and none of them does;
- deleting a table, or an element, that is not there is refused (the compiler adds a table
  before deleting it for that reason, and a wrong element delta makes the enforcer reconcile);
- an interval set refuses an element that overlaps one it holds (so deltas must delete first);
- `list_table` answers as `Nft.list_table` does (`nft -j list table inet NAME` and then
  `bridge NAME`, as one listing): the tables, their sets with their elements, their chains,
  their rules with handles and counters.

Only the `inet` and `bridge` families and the commands dockmesh sends (add/delete of table,
set, chain, rule and elements), and what a test does to tamper with a table as a person
would with `nft` (flush table, delete or replace a rule by its handle, delete a set), are
understood; anything else raises NotImplementedError, a gap in this double rather than a
refusal by the kernel. `normalise` loads the structure into a MemoryNft of its own and lists
it. `ran` records every transaction, refused ones included; `refuse_next(reason)` makes the
next one fail as nft would.
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockmesh.policy.compile import JSON, render_element
from dockmesh.policy.drift import structure, tables_of
from dockmesh.policy.nft import Nft, NftError, element_texts

_NO_SUCH = "Error: Could not process rule: No such file or directory"


@dataclass
class _Set:
    doc: dict[str, Any]
    elements: set[str] = field(default_factory=set)  # the compiler's texts

    @property
    def interval(self) -> bool:
        return "interval" in (self.doc.get("flags") or ())


@dataclass
class _Table:
    sets: dict[str, _Set] = field(default_factory=dict)
    chains: dict[str, dict[str, Any]] = field(default_factory=dict)
    rules: list[dict[str, Any]] = field(default_factory=list)


class MemoryNft(Nft):
    def __init__(self) -> None:
        super().__init__("nft-in-memory")
        self.tables: dict[tuple[str, str], _Table] = {}  # (family, name)
        self.ran: list[list[JSON]] = []
        self._handles = 0
        self._refusals: list[str] = []

    # --- the Nft interface ----------------------------------------------------------------

    def available(self) -> bool:
        return True

    def run(self, cmds: list[JSON]) -> None:
        if not cmds:
            return
        self.ran.append(cmds)
        if self._refusals:
            raise NftError(self._refusals.pop(0))
        tables = copy.deepcopy(self.tables)
        for cmd in cmds:
            self._apply(tables, cmd)
        self.tables = tables

    def list_family_table(self, family: str, table: str) -> Any | None:
        if family not in ("inet", "bridge"):
            raise NotImplementedError(f"MemoryNft knows the inet and bridge families: {family}")
        items = self._listing(family, table)
        return {"nftables": items} if items else None

    def normalise(self, cmds: list[JSON]) -> Any:
        fresh = MemoryNft()
        fresh.run(structure(cmds))
        return fresh.list_tables(tables_of(cmds))

    def list_table(self, table: str) -> Any | None:
        items = self._listing("inet", table) + self._listing("bridge", table)
        return {"nftables": items} if items else None

    def _listing(self, family: str, table: str) -> list[JSON]:
        t = self.tables.get((family, table))
        if t is None:
            return []
        items: list[JSON] = [{"table": {"family": family, "name": table, "handle": 1}}]
        for s in t.sets.values():
            doc = dict(s.doc)
            if s.elements:
                doc["elem"] = [_listed(e, s.doc) for e in sorted(s.elements)]
            items.append({"set": doc})
        items += [{"chain": dict(c)} for c in t.chains.values()]
        items += [{"rule": _listed_rule(r)} for r in t.rules]
        return items

    # --- for tests ------------------------------------------------------------------------

    def elements(self, table: str, name: str, family: str = "inet") -> frozenset[str]:
        """A set's elements in the compiler's text form (an address, or `net/len`)."""
        return frozenset(self.tables[(family, table)].sets[name].elements)

    def refuse_next(
        self, reason: str = "Error: Could not process rule: Device or resource busy"
    ) -> None:
        """The next transaction fails with `reason` and changes nothing."""
        self._refusals.append(reason)

    def load(self, doc: Any) -> None:
        """Makes the tables a listing (`nft -j list table …`) describes exist, as someone
        else made them; not recorded in `ran`."""
        cmds: list[JSON] = []
        for item in doc.get("nftables", ()):
            for kind in ("table", "set", "chain", "rule"):
                if kind in item:
                    body = {k: v for k, v in item[kind].items() if k not in ("handle", "elem")}
                    cmds.append({"add": {kind: body}})
                    if kind == "set" and item[kind].get("elem"):
                        elem = {k: body[k] for k in ("family", "table", "name")}
                        cmds.append({"add": {"element": {**elem, "elem": item[kind]["elem"]}}})
        tables = copy.deepcopy(self.tables)
        for cmd in cmds:
            self._apply(tables, cmd)
        self.tables = tables

    # --- inside ---------------------------------------------------------------------------

    def _apply(self, tables: dict[tuple[str, str], _Table], cmd: JSON) -> None:
        ((verb, body),) = cmd.items()
        ((kind, obj),) = body.items()
        if obj.get("family") not in ("inet", "bridge"):
            raise NotImplementedError(f"MemoryNft knows the inet and bridge families: {cmd}")
        name = (obj["family"], obj["table"] if kind != "table" else obj["name"])
        if kind == "table":
            if verb == "add":
                tables.setdefault(name, _Table())
            elif verb == "delete":
                if tables.pop(name, None) is None:
                    raise NftError(_NO_SUCH)
            elif verb == "flush":  # every chain's rules; sets, elements and chains stay
                if name not in tables:
                    raise NftError(_NO_SUCH)
                tables[name].rules.clear()
            else:
                raise NotImplementedError(f"MemoryNft: {verb} table")
            return
        t = tables.get(name)
        if t is None:
            raise NftError(_NO_SUCH)
        if kind == "set" and verb == "add":
            t.sets.setdefault(obj["name"], _Set(dict(obj)))
        elif kind == "chain" and verb == "add":
            t.chains.setdefault(obj["name"], dict(obj))
        elif kind == "rule" and verb == "add":
            if obj.get("chain") not in t.chains:
                raise NftError(_NO_SUCH)
            self._handles += 1
            t.rules.append({**obj, "handle": self._handles})
        elif kind == "rule" and verb in ("delete", "replace"):
            at = [i for i, r in enumerate(t.rules) if r["handle"] == obj.get("handle")]
            if not at:
                raise NftError(_NO_SUCH)
            if verb == "delete":
                del t.rules[at[0]]
            else:
                t.rules[at[0]] = {**obj, "handle": obj["handle"]}
        elif kind == "set" and verb == "delete":
            if t.sets.pop(obj["name"], None) is None:
                raise NftError(_NO_SUCH)
        elif kind == "element" and verb in ("add", "delete"):
            s = t.sets.get(obj["name"])
            if s is None:
                raise NftError(_NO_SUCH)
            for raw in obj.get("elem") or ():
                text = _element(raw, s.doc.get("type"))
                if verb == "delete":
                    if text not in s.elements:
                        raise NftError(_NO_SUCH)
                    s.elements.discard(text)
                elif text not in s.elements:
                    spans = _spans(text)
                    if not s.interval and any(lo != hi for lo, hi in spans):
                        raise NftError("Error: Set member cannot be prefix, missing interval flag")
                    if s.interval and any(_overlap(spans, _spans(e)) for e in s.elements):
                        if len(spans) == 1:
                            raise NftError("Error: conflicting intervals specified")
                        raise NftError("Error: Could not process rule: File exists")
                    s.elements.add(text)
        else:
            raise NotImplementedError(f"MemoryNft: {verb} {kind}")


def _element(raw: Any, set_type: Any) -> str:
    """An element as sent → the compiler's text, checked against the set's type."""
    texts = element_texts(raw)
    if len(texts) != 1 or texts[0].startswith(("{", "[")):
        raise NotImplementedError(f"MemoryNft: element {raw!r}")
    text = texts[0]
    types = set_type if isinstance(set_type, list) else [set_type]
    parts = text.split(" . ")
    if len(parts) != len(types):
        raise NftError(f"Error: datatype mismatch, expected {' . '.join(map(str, types))}")
    for part, t in zip(parts, types, strict=True):
        if t in ("ipv4_addr", "ipv6_addr"):
            try:
                n = ipaddress.ip_network(part, strict=False)
            except ValueError:
                raise NftError(f"Error: {part!r} is not an address") from None
            if t != ("ipv4_addr" if n.version == 4 else "ipv6_addr"):
                raise NftError(f"Error: datatype mismatch, expected {t}")
    return text


def _spans(text: str) -> list[tuple[Any, Any]]:
    """Each part of an element as an inclusive span (addresses and ports as numbers)."""
    out: list[tuple[Any, Any]] = []
    for part in text.split(" . "):
        try:
            n = ipaddress.ip_network(part, strict=False)
            out.append(((n.version, int(n.network_address)), (n.version, int(n.broadcast_address))))
            continue
        except ValueError:
            pass
        first, dash, last = part.partition("-")
        if first.isdigit() and (not dash or last.isdigit()):
            out.append((int(first), int(last or first)))
        else:
            out.append((part, part))
    return out


def _overlap(a: list[tuple[Any, Any]], b: list[tuple[Any, Any]]) -> bool:
    return len(a) == len(b) and all(
        type(x[0]) is type(y[0]) and x[0] <= y[1] and y[0] <= x[1]
        for x, y in zip(a, b, strict=True)
    )


def _listed(text: str, set_doc: Mapping[str, Any]) -> Any:
    elem = render_element(text)
    if set_doc.get("stmt"):  # a counter per element
        return {"elem": {"val": elem, "counter": {"packets": 0, "bytes": 0}}}
    return elem


def _listed_rule(rule: dict[str, Any]) -> dict[str, Any]:
    """A rule as nft lists it: counters with their (here always zero) values."""
    expr = [
        {"counter": {"packets": 0, "bytes": 0}} if isinstance(e, Mapping) and "counter" in e else e
        for e in rule.get("expr") or ()
    ]
    return {**rule, "expr": expr}

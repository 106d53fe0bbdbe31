"""What differs between the kernel's tables and what a transaction would write, in words. Pure.

Theory of operation
-------------------
- The comparison runs over whatever the transaction creates: every table it adds (`tables_of`),
  and in each every set (its declaration and its elements), chain (its declaration) and rule
  (in order, chain by chain). It knows nothing of the compiler's shape, so a second table, a
  map or a new kind of set is compared the same way.
- nft does not list a rule exactly as it was sent (it adds counter values, may rewrite an
  expression), so the wanted rules are not read from the commands themselves but from a
  *reference listing*: the structure (`structure`: the transaction without its elements)
  loaded where it harms nothing and listed by nft (`Nft.normalise`), or, where that cannot be
  done, the commands turned into a listing as sent (`as_listing`). Both sides are then read
  the same way (`view`): handles and counter values dropped, expressions as canonical JSON.
- Elements are compared as values (but not those of a set whose elements time out: the
  packet path fills it, as a drop log): an address in the kernel's text, a prefix as `net/len`,
  a range as the prefixes it covers (an interval set's prefixes collapsed, since nft may
  list two adjacent ones as one range), a concatenation joined by ` . `, a map's element as
  `key : value`.
- Rules are aligned in order (a longest common subsequence per chain), so one deleted rule
  is one "missing", not every rule after it.
"""

from __future__ import annotations

import difflib
import ipaddress
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]
Key = tuple[str, str]  # (family, table name)

# Keys of a listed object that say where it is or how the kernel numbers it, not what it is.
_PLACE = frozenset({"family", "table", "name", "handle", "elem"})
SHOWN = 3  # examples named in one difference (the rest are counted)


@dataclass(frozen=True, slots=True)
class RuleView:
    expr: str  # canonical JSON of its expressions, counter values dropped
    comment: str

    @property
    def text(self) -> str:
        """nft-like words for people (made only when a difference is told: a listing of
        thousands of rules is compared far more often than it differs)."""
        return render(json.loads(self.expr))

    def label(self) -> str:
        if self.comment:
            return f"'{self.comment}' ({self.text})"
        return f"'{self.text}'"


@dataclass(frozen=True, slots=True)
class TableView:
    """One table as compared: declarations as canonical JSON, elements as texts."""

    key: Key
    decl: str = "{}"
    sets: dict[str, str] = field(default_factory=dict)
    elements: dict[str, frozenset[str]] = field(default_factory=dict)
    chains: dict[str, str] = field(default_factory=dict)
    rules: dict[str, tuple[RuleView, ...]] = field(default_factory=dict)


# --- reading transactions and listings ----------------------------------------------------------


def tables_of(cmds: Iterable[JSON]) -> list[Key]:
    """Every table the transaction adds, in order, each once."""
    out: list[Key] = []
    for cmd in cmds:
        t = _body(cmd, "add", "table")
        if t is not None:
            key = (str(t.get("family")), str(t.get("name")))
            if key not in out:
                out.append(key)
    return out


def structure(cmds: Iterable[JSON]) -> list[JSON]:
    """The transaction without its elements: what a reference listing is made of."""
    return [c for c in cmds if _body(c, "add", "element") is None]


def as_listing(cmds: Iterable[JSON]) -> JSON:
    """The objects a transaction adds, as `nft -j list` would show them if nft rewrote
    nothing (the reference when nft cannot be asked). Deletions are applied in order."""
    objects: list[tuple[str, JSON]] = []
    for cmd in cmds:
        for verb in ("add", "delete"):
            body = cmd.get(verb) if isinstance(cmd, Mapping) else None
            if not isinstance(body, Mapping):
                continue
            for kind, obj in body.items():
                if not isinstance(obj, Mapping):
                    continue
                if verb == "delete" and kind == "table":
                    key = (obj.get("family"), obj.get("name"))
                    objects = [(k, o) for k, o in objects if _where(k, o) != key]
                elif verb == "add" and kind in ("table", "set", "map", "chain", "rule"):
                    objects.append((kind, dict(obj)))
    return {"nftables": [{kind: obj} for kind, obj in objects]}


def _where(kind: str, obj: Mapping[str, Any]) -> tuple[Any, Any]:
    return (obj.get("family"), obj.get("name") if kind == "table" else obj.get("table"))


def _body(cmd: Any, verb: str, kind: str) -> Mapping[str, Any] | None:
    if not isinstance(cmd, Mapping):
        return None
    body = cmd.get(verb)
    if not isinstance(body, Mapping):
        return None
    obj = body.get(kind)
    return obj if isinstance(obj, Mapping) else None


def view(doc: Any, keys: Sequence[Key]) -> dict[Key, TableView]:
    """The tables of `keys` that a listing holds (a table not listed is absent)."""
    items = doc.get("nftables", []) if isinstance(doc, Mapping) else []
    tables: dict[Key, TableView] = {}
    rules: dict[Key, dict[str, list[RuleView]]] = {}
    wanted = set(keys)
    for item in items:
        if not isinstance(item, Mapping):
            continue
        for kind, obj in item.items():
            if not isinstance(obj, Mapping):
                continue
            if kind == "table":
                key = (str(obj.get("family")), str(obj.get("name")))
                if key in wanted and key not in tables:
                    tables[key] = TableView(key, _decl(obj))
                continue
            key = (str(obj.get("family")), str(obj.get("table")))
            t = tables.get(key)
            if t is None:
                continue
            name = str(obj.get("name"))
            if kind in ("set", "map"):
                t.sets[name] = _decl({**obj, "kind": kind})
                t.elements[name] = _elements(() if _recorded(obj) else obj.get("elem") or (), obj)
            elif kind == "chain":
                t.chains[name] = _decl(obj)
            elif kind == "rule":
                rules.setdefault(key, {}).setdefault(str(obj.get("chain")), []).append(_rule(obj))
    for key, chains in rules.items():
        for chain, rs in chains.items():
            tables[key].rules[chain] = tuple(rs)
    return tables


def wanted(cmds: Sequence[JSON], reference: Any) -> dict[Key, TableView]:
    """What the transaction makes: its structure as the reference listing shows it, and the
    elements the transaction adds."""
    keys = tables_of(cmds)
    out = view(reference, keys)
    adds: dict[tuple[Key, str], list[Any]] = {}
    for cmd in cmds:
        e = _body(cmd, "add", "element")
        if e is not None:
            where = ((str(e.get("family")), str(e.get("table"))), str(e.get("name")))
            raw = e.get("elem") or ()
            adds.setdefault(where, []).extend(raw if isinstance(raw, list) else [raw])
    for t in out.values():
        for name in t.sets:
            decl = json.loads(t.sets[name])
            t.elements[name] = _elements(adds.get((t.key, name), ()), decl)
    return out


def _recorded(decl: Mapping[str, Any]) -> bool:
    """A set whose elements time out is filled from the packet path (a drop log): no
    transaction writes its elements, so they are no difference."""
    return "timeout" in (decl.get("flags") or ())


def _decl(obj: Mapping[str, Any]) -> str:
    return json.dumps({k: v for k, v in obj.items() if k not in _PLACE}, sort_keys=True)


def _rule(obj: Mapping[str, Any]) -> RuleView:
    expr = [_steady(e) for e in obj.get("expr") or ()]
    return RuleView(json.dumps(expr, sort_keys=True), str(obj.get("comment") or ""))


def _steady(e: Any) -> Any:
    """An expression without what changes as packets pass (counter values, a quota's use)."""
    if isinstance(e, Mapping):
        if "counter" in e and len(e) == 1 and (e["counter"] is None or "packets" in e["counter"]):
            return {"counter": None}
        if "quota" in e and isinstance(e["quota"], Mapping):
            return {"quota": {k: v for k, v in e["quota"].items() if k != "used"}}
    return e


# --- elements -----------------------------------------------------------------------------------


def _elements(raw: Iterable[Any], decl: Mapping[str, Any]) -> frozenset[str]:
    """A set's elements as texts; none for a set the kernel fills from the packet path (with
    a timeout: a drop log), whose elements are flows, not what dockmesh wrote."""
    flags = decl.get("flags") or ()
    if "timeout" in flags or "dynamic" in flags:
        return frozenset()
    return _written(raw, decl)


def _written(raw: Iterable[Any], decl: Mapping[str, Any]) -> frozenset[str]:
    texts: set[str] = set()
    for r in raw:
        texts.update(element_texts(r))
    flags = decl.get("flags") or ()
    if "interval" in flags:
        return _collapsed(texts)
    return frozenset(texts)


def _collapsed(texts: set[str]) -> frozenset[str]:
    """An interval set's addresses and prefixes as the fewest prefixes covering them."""
    nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    rest: set[str] = set()
    for t in texts:
        try:
            nets.append(ipaddress.ip_network(t, strict=False))
        except ValueError:
            rest.add(t)
    v4 = [n for n in nets if isinstance(n, ipaddress.IPv4Network)]
    v6 = [n for n in nets if isinstance(n, ipaddress.IPv6Network)]
    rest.update(_net_text(n) for n in ipaddress.collapse_addresses(v4))
    rest.update(_net_text(n) for n in ipaddress.collapse_addresses(v6))
    return frozenset(rest)


def element_texts(raw: Any) -> list[str]:
    """One element of nft's JSON (listed or sent) → its texts (several for a range of
    addresses: the prefixes it covers)."""
    if isinstance(raw, Mapping) and isinstance(raw.get("elem"), Mapping):
        raw = raw["elem"].get("val")  # an element with options (timeout, comment, counter)
    if isinstance(raw, list) and len(raw) == 2:  # a map's element: [key, value]
        return [f"{k} : {_value_text(raw[1])}" for k in element_texts(raw[0])]
    if isinstance(raw, bool) or raw is None:
        return [json.dumps(raw)]
    if isinstance(raw, int):
        return [str(raw)]
    if isinstance(raw, str):
        return [_address_text(raw)]
    if isinstance(raw, Mapping) and isinstance(raw.get("prefix"), Mapping):
        p = raw["prefix"]
        try:
            net = ipaddress.ip_network(f"{p.get('addr')}/{p.get('len')}", strict=False)
        except ValueError:
            return [json.dumps(raw, sort_keys=True)]
        return [_net_text(net)]
    if isinstance(raw, Mapping) and isinstance(raw.get("range"), list) and len(raw["range"]) == 2:
        a, b = raw["range"]
        if isinstance(a, int) and isinstance(b, int):
            return [str(a) if a == b else f"{a}-{b}"]  # ports (ip_address would take ints)
        try:
            first, last = ipaddress.ip_address(a), ipaddress.ip_address(b)
            if isinstance(first, ipaddress.IPv4Address) and isinstance(last, ipaddress.IPv4Address):
                return [_net_text(n) for n in ipaddress.summarize_address_range(first, last)]
            if isinstance(first, ipaddress.IPv6Address) and isinstance(last, ipaddress.IPv6Address):
                return [_net_text(n) for n in ipaddress.summarize_address_range(first, last)]
        except (ValueError, TypeError):
            pass
        return [f"{a}-{b}"]
    if isinstance(raw, Mapping) and isinstance(raw.get("concat"), list):
        texts = [""]
        for i, part in enumerate(raw["concat"]):
            sep = "" if i == 0 else " . "
            texts = [f"{t}{sep}{p}" for t in texts for p in element_texts(part)]
        return texts
    return [json.dumps(raw, sort_keys=True)]


def _address_text(text: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text


def _net_text(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)


def _value_text(v: Any) -> str:
    if isinstance(v, Mapping) and len(v) == 1:
        ((verb, arg),) = v.items()
        if arg is None:
            return str(verb)
        if isinstance(arg, Mapping) and "target" in arg:
            return f"{verb} {arg['target']}"
    texts = element_texts(v)
    return texts[0] if len(texts) == 1 else json.dumps(v, sort_keys=True)


# --- rules as words ----------------------------------------------------------------------------


def render(expr: Sequence[Any]) -> str:
    """A rule's expressions in nft-like words (for people: `ip saddr @s0_4 counter drop`)."""
    return " ".join(_stmt(e) for e in expr) or "(empty)"


def _stmt(e: Any) -> str:
    if not isinstance(e, Mapping) or len(e) != 1:
        return json.dumps(e, sort_keys=True)
    ((kind, arg),) = e.items()
    if kind == "match" and isinstance(arg, Mapping):
        op = str(arg.get("op", "=="))
        words = [_operand(arg.get("left"))]
        if op not in ("==", "in"):
            words.append(op)
        words.append(_operand(arg.get("right")))
        return " ".join(words)
    if arg is None:
        return str(kind)  # a verdict or a statement without arguments (accept, counter)
    if kind in ("jump", "goto") and isinstance(arg, Mapping):
        return f"{kind} {arg.get('target')}"
    if kind == "log" and isinstance(arg, Mapping) and "prefix" in arg:
        return f'log prefix "{arg["prefix"]}"'
    if kind == "counter":
        return "counter"
    if kind == "vmap" and isinstance(arg, Mapping):
        return f"{_operand(arg.get('key'))} vmap {_operand(arg.get('data'))}"
    return f"{kind} {json.dumps(arg, sort_keys=True)}"


def _operand(v: Any) -> str:
    if isinstance(v, str | int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, list):
        return ",".join(_operand(x) for x in v)
    if isinstance(v, Mapping) and len(v) == 1:
        ((kind, arg),) = v.items()
        if kind == "payload" and isinstance(arg, Mapping):
            return f"{arg.get('protocol', 'th')} {arg.get('field')}"
        if kind in ("meta", "ct") and isinstance(arg, Mapping):
            return f"{kind} {arg.get('key')}"
        if kind == "set" and isinstance(arg, list):
            return "{ " + ", ".join(_operand(x) for x in arg) + " }"
        if kind == "range" and isinstance(arg, list) and len(arg) == 2:
            return f"{_operand(arg[0])}-{_operand(arg[1])}"
        if kind == "prefix" and isinstance(arg, Mapping):
            return f"{arg.get('addr')}/{arg.get('len')}"
        if kind == "concat" and isinstance(arg, list):
            return " . ".join(_operand(x) for x in arg)
    return json.dumps(v, sort_keys=True)


# --- the comparison ----------------------------------------------------------------------------


def differences(live: Mapping[Key, TableView], want: Mapping[Key, TableView]) -> list[str]:
    """What differs between the live tables and the wanted ones, in words; [] when equal."""
    out: list[str] = []
    several = len(want) > 1
    for key, w in want.items():
        where = f"table {key[0]} {key[1]}"
        lv = live.get(key)
        if lv is None:
            out.append(f"{where} missing")
            continue
        pre = f"{where}: " if several else ""
        out += [pre + d for d in _table_differences(lv, w)]
    return out


def only_elements(live: Mapping[Key, TableView], want: Mapping[Key, TableView]) -> bool:
    """Whether the tables differ in set elements alone (set element updates mend them)."""
    for key, w in want.items():
        lv = live.get(key)
        if lv is None or lv.decl != w.decl or lv.sets != w.sets or lv.chains != w.chains:
            return False
        if {c: r for c, r in lv.rules.items() if r} != {c: r for c, r in w.rules.items() if r}:
            return False
    return True


def _table_differences(live: TableView, want: TableView) -> list[str]:
    out: list[str] = []
    if live.decl != want.decl:
        out += _decl_words("table", live.decl, want.decl)
    for name in want.sets:
        if name not in live.sets:
            out.append(f"set {name} missing")
            continue
        if live.sets[name] != want.sets[name]:
            out += _decl_words(f"set {name}", live.sets[name], want.sets[name])
        d = _element_words(live.elements.get(name, frozenset()), want.elements[name])
        if d:
            out.append(f"set {name}: {d}")
    out += [f"extra set {name}" for name in live.sets if name not in want.sets]
    for name in want.chains:
        if name not in live.chains:
            out.append(f"chain {name} missing")
            continue
        if live.chains[name] != want.chains[name]:
            out += _decl_words(f"chain {name}", live.chains[name], want.chains[name])
    out += [f"extra chain {name}" for name in live.chains if name not in want.chains]
    chains = list(want.rules) + [c for c in live.rules if c not in want.rules]
    for chain in chains:
        out += [
            f"chain {chain}: {d}"
            for d in _rule_words(live.rules.get(chain, ()), want.rules.get(chain, ()))
        ]
    return out


def _decl_words(what: str, live: str, want: str) -> list[str]:
    lv, w = json.loads(live), json.loads(want)
    words = []
    for k in sorted(set(lv) | set(w)):
        if lv.get(k) != w.get(k):
            words.append(f"{k} {_short(lv.get(k))}, want {_short(w.get(k))}")
    return [f"{what}: {'; '.join(words)}"]


def _short(v: Any) -> str:
    if v is None:
        return "none"
    if isinstance(v, str | int) and not isinstance(v, bool):
        return str(v)
    if isinstance(v, list) and all(isinstance(x, str) for x in v):
        return ",".join(v) or "none"
    return json.dumps(v, sort_keys=True)


def _element_words(live: frozenset[str], want: frozenset[str]) -> str:
    missing, extra = sorted(want - live), sorted(live - want)
    parts = []
    if missing:
        parts.append(_counted(missing, "missing"))
    if extra:
        parts.append(_counted(extra, "extra"))
    return ", ".join(parts)


def _counted(texts: list[str], word: str) -> str:
    n = len(texts)
    shown = ", ".join(texts[:SHOWN]) + (", …" if n > SHOWN else "")
    return f"{n} element{'s' if n != 1 else ''} {word} ({shown})"


def _rule_words(live: Sequence[RuleView], want: Sequence[RuleView]) -> list[str]:
    if want and not live:
        return [f"all {len(want)} rules missing (the chain is empty)"]
    lk = [(r.expr, r.comment) for r in live]
    wk = [(r.expr, r.comment) for r in want]
    out: list[str] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(None, lk, wk, autojunk=False).get_opcodes():
        if op == "equal":
            continue
        gone, new = list(live[i1:i2]), list(want[j1:j2])
        if op == "replace":
            while gone and new and gone[0].comment == new[0].comment and gone[0].comment:
                g, n = gone.pop(0), new.pop(0)
                out.append(f"rule '{n.comment}' changed: {g.text}, want {n.text}")
        out += [f"rule {r.label()} missing" for r in new]
        out += [f"extra rule {r.label()}" for r in gone]
    return out


def summary(diffs: Sequence[str], limit: int = 5) -> str:
    """Differences on one line (a log line): the first few, and how many more."""
    head = "; ".join(diffs[:limit])
    return head + (f"; and {len(diffs) - limit} more" if len(diffs) > limit else "")


# --- what other tables do to the packet mark ----------------------------------------------------

# The hooks a forwarded packet crosses between the bridge table's prerouting chain, which
# sets the unconfirmed bit, and the forward chain, which reads it.
_MARK_HOOKS = frozenset({"prerouting", "forward"})


def mark_writers(doc: Any, table: str) -> list[str]:
    """The base chains of other tables (any family) on the prerouting or forward hook with a
    rule that writes the packet mark (nft's `meta mark set`, iptables-nft's MARK): such a
    rule may clear the bit that says a source is unconfirmed, and no table of ours can undo
    it. In words, one per chain."""
    items = doc.get("nftables", []) if isinstance(doc, Mapping) else []
    hooked: dict[tuple[str, str, str], str] = {}
    for item in items:
        c = item.get("chain") if isinstance(item, Mapping) else None
        if isinstance(c, Mapping) and c.get("hook") in _MARK_HOOKS and c.get("table") != table:
            key = (str(c.get("family")), str(c.get("table")), str(c.get("name")))
            hooked[key] = f"{c.get('hook')}, priority {c.get('prio')}"
    out: list[str] = []
    for item in items:
        r = item.get("rule") if isinstance(item, Mapping) else None
        if not isinstance(r, Mapping):
            continue
        key = (str(r.get("family")), str(r.get("table")), str(r.get("chain")))
        if key not in hooked or not any(_writes_mark(e) for e in r.get("expr") or ()):
            continue
        text = f"table {key[0]} {key[1]} chain {key[2]} ({hooked[key]}) writes the packet mark"
        if text not in out:
            out.append(text)
    return out


def _writes_mark(e: Any) -> bool:
    if not isinstance(e, Mapping):
        return False
    mangle = e.get("mangle")
    if isinstance(mangle, Mapping):
        key = mangle.get("key")
        return isinstance(key, Mapping) and (key.get("meta") or {}).get("key") == "mark"
    xt = e.get("xt")
    return isinstance(xt, Mapping) and str(xt.get("name", "")).upper() == "MARK"

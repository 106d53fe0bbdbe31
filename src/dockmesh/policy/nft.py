"""The kernel side: `nft -j -f -` transactions and `nft -j list table`, and reading the table
back as data (`parse_live`, pure).

Every change is one `nft -j -f -` run: nft sends the whole batch to the kernel as one
transaction, so either all of it holds or none of it does — never a table half replaced or a
set half updated. Only `inet <table>` is ever named: Docker's tables and anyone else's are
never read or written.
"""

from __future__ import annotations

import ipaddress
import json
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from dockmesh.policy.compile import HASH_TAG, JSON, document

TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
TIMEOUT_S = 30.0


class NftError(Exception):
    """nft refused a transaction or could not run; the message is nft's first line."""


class ForeignTable(NftError):
    """The table exists but dockmesh did not make it (no marker rule): it is not touched."""

    def __init__(self, table: str) -> None:
        super().__init__(
            f"table inet {table} exists but was not made by dockmesh (it has no "
            f"'{HASH_TAG.strip()}' rule): not touched; name another table with --table"
        )
        self.table = table


def is_ours(doc: Any, table: str) -> bool:
    """Whether `nft -j list table inet <table>`'s answer is a table dockmesh made: the
    compiler marks every table it writes with its first rule's comment (`dockmesh policy
    <structure hash>`); nft 1.0.6 keeps no comment on a table in its JSON."""
    return parse_live(doc, table).structure_hash is not None


def check_table_name(name: str) -> str:
    if not TABLE_NAME.fullmatch(name):
        raise ValueError(
            f"{name!r} is not a table name (a letter, then letters, digits, '_' or '-', 64 at most)"
        )
    return name


@dataclass(frozen=True, slots=True)
class LiveRule:
    comment: str
    packets: int | None  # None: the rule does not count
    bytes: int | None
    handle: int


@dataclass(frozen=True, slots=True)
class LiveTable:
    structure_hash: str | None
    elements: dict[str, frozenset[str]]
    rules: tuple[LiveRule, ...] = ()
    chains: tuple[str, ...] = field(default=())
    # set name → element → (packets, bytes), for sets that count per element
    counters: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


class Nft:
    """Runs the `nft` binary. One instance per table user; stateless."""

    def __init__(self, binary: str = "nft") -> None:
        self.binary = binary

    def available(self) -> bool:
        return shutil.which(self.binary) is not None

    def run(self, cmds: list[JSON]) -> None:
        """One transaction. Raises NftError with nft's reason."""
        if not cmds:
            return
        text = json.dumps(document(cmds), separators=(",", ":"))
        proc = self._nft(["-j", "-f", "-"], text)
        if proc.returncode != 0:
            raise NftError(_first_error(proc.stderr) or f"nft exited with {proc.returncode}")

    def list_table(self, table: str) -> Any | None:
        """The policy's tables (`inet NAME`, then `bridge NAME`) as one nft JSON listing, or
        None when neither exists."""
        items: list[Any] = []
        found = False
        for family in ("inet", "bridge"):
            doc = self._list(family, table)
            if doc is None:
                continue
            found = True
            got = doc.get("nftables", []) if isinstance(doc, Mapping) else []
            items += [x for x in got if not (isinstance(x, Mapping) and "metainfo" in x)]
        return {"nftables": items} if found else None

    def _list(self, family: str, table: str) -> Any | None:
        proc = self._nft(["-j", "list", "table", family, check_table_name(table)], None)
        if proc.returncode != 0:
            if "No such file or directory" in proc.stderr or "does not exist" in proc.stderr:
                return None
            raise NftError(_first_error(proc.stderr) or f"nft exited with {proc.returncode}")
        try:
            return json.loads(proc.stdout)
        except ValueError as e:
            raise NftError(f"nft printed something that is not JSON: {e}") from None

    def _nft(self, args: list[str], stdin: str | None) -> subprocess.CompletedProcess[str]:
        try:
            return subprocess.run(
                [self.binary, *args],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
        except FileNotFoundError:
            raise NftError(
                f"{self.binary} is not installed (Debian: apt-get install nftables)"
            ) from None
        except subprocess.TimeoutExpired:
            raise NftError(f"nft did not answer within {TIMEOUT_S:.0f} s") from None


def _first_error(stderr: str) -> str:
    for line in stderr.splitlines():
        if line.strip():
            return line.strip()
    return ""


def parse_live(doc: Any, table: str) -> LiveTable:
    """`nft -j list table inet <table>` → its sets' elements (in the compiler's text form),
    its rules' comments and counters, and the structure hash the compiler left in the first
    rule's comment (None when the table is not one dockmesh wrote)."""
    elements: dict[str, frozenset[str]] = {}
    counters: dict[str, dict[str, tuple[int, int]]] = {}
    rules: list[LiveRule] = []
    chains: list[str] = []
    digest: str | None = None
    items = doc.get("nftables", []) if isinstance(doc, Mapping) else []
    for item in items:
        if not isinstance(item, Mapping):
            continue
        if "set" in item:
            s = item["set"]
            if s.get("table") == table:
                texts: set[str] = set()
                counted: dict[str, tuple[int, int]] = {}
                for raw in s.get("elem") or ():
                    got = element_texts(raw)
                    texts.update(got)
                    c = _element_counter(raw)
                    if c is not None:
                        for t in got:
                            counted[t] = c
                elements[str(s["name"])] = frozenset(texts)
                if counted:
                    counters[str(s["name"])] = counted
        elif "chain" in item:
            chains.append(str(item["chain"].get("name")))
        elif "rule" in item:
            r = item["rule"]
            if r.get("table") != table:
                continue
            comment = str(r.get("comment") or "")
            if not rules and r.get("family", "inet") == "inet" and comment.startswith(HASH_TAG):
                digest = comment[len(HASH_TAG) :]
            packets = nbytes = None
            for e in r.get("expr") or ():
                if isinstance(e, Mapping) and isinstance(e.get("counter"), Mapping):
                    packets = int(e["counter"].get("packets", 0))
                    nbytes = int(e["counter"].get("bytes", 0))
            rules.append(LiveRule(comment, packets, nbytes, int(r.get("handle", 0))))
    return LiveTable(digest, elements, tuple(rules), tuple(chains), counters)


def _element_counter(raw: Any) -> tuple[int, int] | None:
    if isinstance(raw, Mapping) and isinstance(raw.get("elem"), Mapping):
        c = raw["elem"].get("counter")
        if isinstance(c, Mapping):
            return int(c.get("packets", 0)), int(c.get("bytes", 0))
    return None


def element_texts(raw: Any) -> list[str]:
    """One element of nft's JSON → the compiler's texts (an address, `net/len`, a name, a
    port or `a-b`; a concatenation's parts joined by " . ")."""
    if isinstance(raw, Mapping) and "elem" in raw:  # an element with options (a counter...)
        raw = raw["elem"].get("val")
    if isinstance(raw, Mapping) and "concat" in raw:
        parts: list[list[str]] = [element_texts(p) for p in raw["concat"] or ()]
        if any(len(p) != 1 for p in parts):
            return [json.dumps(raw)]
        return [" . ".join(p[0] for p in parts)]
    if isinstance(raw, bool):
        return [json.dumps(raw)]
    if isinstance(raw, int):
        return [str(raw)]
    if (
        isinstance(raw, Mapping)
        and "range" in raw
        and all(isinstance(x, int) for x in raw["range"])
    ):
        a, b = raw["range"]
        return [str(a) if a == b else f"{a}-{b}"]
    if isinstance(raw, str):
        try:
            return [str(ipaddress.ip_address(raw))]
        except ValueError:
            return [raw]
    if isinstance(raw, Mapping) and "prefix" in raw:
        p = raw["prefix"]
        net = ipaddress.ip_network(f"{p['addr']}/{p['len']}", strict=False)
        return [_net_text(net)]
    if isinstance(raw, Mapping) and "range" in raw:
        first, last = (ipaddress.ip_address(x) for x in raw["range"])
        return [_net_text(n) for n in ipaddress.summarize_address_range(first, last)]
    return [json.dumps(raw)]


def _net_text(n: ipaddress.IPv4Network | ipaddress.IPv6Network) -> str:
    return str(n.network_address) if n.prefixlen == n.max_prefixlen else str(n)

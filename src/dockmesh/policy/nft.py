"""The kernel side: `nft -j -f -` transactions and `nft -j list table`, and reading the table
back as data (`parse_live`, pure).

Every change is one `nft -j -f -` run: nft sends the whole batch to the kernel as one
transaction, so either all of it holds or none of it does — never a table half replaced or a
set half updated. Only dockmesh's own tables are ever named: Docker's tables and anyone
else's are never read or written.

Whose table it is: every table dockmesh writes carries an empty set named `dockmesh_<structure
hash>` (`mark`). `nft flush table` keeps sets, so a flushed table is still recognised; the
JSON listing shows sets (nft 1.0.6 lists no table comment in JSON). Tables written before the
mark existed are recognised by the structure hash in their first rule's comment.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
import re
import shutil
import subprocess
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from dockmesh.policy.compile import HASH_TAG, JSON, document, is_log_set
from dockmesh.policy.drift import Key, structure, tables_of

TABLE_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
TIMEOUT_S = 30.0
MARK_PREFIX = "dockmesh_"
# Reference listings kept (`Nft.normalise`): one per structure, a few structures at a time.
NORMALISED_KEPT = 8


class NftError(Exception):
    """nft refused a transaction or could not run; the message is nft's first line."""


class ForeignTable(NftError):
    """The table exists but dockmesh did not make it (no marker rule): it is not touched."""

    def __init__(self, table: str) -> None:
        super().__init__(
            f"table inet {table} exists but was not made by dockmesh (it has no "
            f"'{MARK_PREFIX}…' set and no policy is recorded for it): not touched; "
            "name another table with --table"
        )
        self.table = table


def mark(cmds: list[JSON], digest: str) -> list[JSON]:
    """The transaction with dockmesh's mark in every table it adds: an empty set named
    `dockmesh_<digest>`, which `nft flush table` keeps."""
    name = MARK_PREFIX + (digest or "0")
    marks: list[JSON] = [
        {"add": {"set": {"family": f, "table": t, "name": name, "type": "ipv4_addr"}}}
        for f, t in tables_of(cmds)
    ]
    return cmds + marks


def is_ours(doc: Any, table: str) -> bool:
    """Whether `nft -j list table <family> <table>`'s answer is a table dockmesh made: it
    holds the mark set (`mark`), or (written before the mark) its first rule's comment is
    the compiler's `dockmesh policy <structure hash>`."""
    items = doc.get("nftables", []) if isinstance(doc, Mapping) else []
    for item in items:
        s = item.get("set") if isinstance(item, Mapping) else None
        if isinstance(s, Mapping) and s.get("table") == table and _is_mark(s.get("name")):
            return True
    return parse_live(doc, table).structure_hash is not None


def _is_mark(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(MARK_PREFIX)


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

    def __init__(self, binary: str = "nft", unshare: str = "unshare") -> None:
        self.binary = binary
        self.unshare = unshare
        self._normalised: dict[str, Any] = {}
        self._normalised_lock = threading.Lock()

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
        doc = self.list_tables([("inet", table), ("bridge", table)])
        return doc if doc["nftables"] else None

    def list_ruleset(self) -> JSON:
        """Every table of every family, as one listing (empty when nft cannot list it)."""
        proc = self._nft(["-j", "list", "ruleset"], None)
        if proc.returncode != 0:
            return {"nftables": []}
        try:
            doc = json.loads(proc.stdout)
        except ValueError:
            return {"nftables": []}
        return doc if isinstance(doc, dict) else {"nftables": []}

    def list_tables(self, keys: Sequence[Key]) -> JSON:
        """The tables named (family, name) as one listing; a table not there is left out."""
        items: list[Any] = []
        for family, name in keys:
            doc = self.list_family_table(family, name)
            if isinstance(doc, Mapping):
                items += [i for i in doc.get("nftables", []) if "metainfo" not in i]
        return {"nftables": items}

    def normalise(self, cmds: list[JSON]) -> Any:
        """The listing nft makes of the tables a transaction creates, without their elements
        (`drift.structure`): loaded into a network namespace of its own, made for this and
        gone with the process, so nothing on the host sees it. Kept per structure.
        NftError when it cannot be done (no `unshare`, no right to make a namespace)."""
        text = json.dumps(document(structure(cmds)), separators=(",", ":"), sort_keys=True)
        key = hashlib.sha256(text.encode()).hexdigest()
        with self._normalised_lock:
            if key in self._normalised:
                return self._normalised[key]
        script = f"{self.binary} -j -f - && {self.binary} -j list ruleset"
        try:
            proc = subprocess.run(
                [self.unshare, "--net", "--", "sh", "-c", script],
                input=text,
                capture_output=True,
                text=True,
                timeout=TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise NftError(f"cannot list the wanted table in a namespace of its own: {e}") from None
        if proc.returncode != 0:
            reason = _first_error(proc.stderr) or f"exit {proc.returncode}"
            raise NftError(f"cannot list the wanted table in a namespace of its own: {reason}")
        try:
            doc = json.loads(proc.stdout)
        except ValueError as e:
            raise NftError(f"nft printed something that is not JSON: {e}") from None
        with self._normalised_lock:
            while len(self._normalised) >= NORMALISED_KEPT:
                self._normalised.pop(next(iter(self._normalised)))
            self._normalised[key] = doc
        return doc

    def list_family_table(self, family: str, table: str) -> Any | None:
        """The table as nft's JSON, or None when it does not exist."""
        if family not in ("inet", "ip", "ip6", "bridge", "arp", "netdev"):
            raise ValueError(f"{family!r} is not an nftables family")
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
            # A drop log's elements are flows the kernel recorded, not the topology's.
            name = str(s.get("name"))
            if s.get("table") == table and not _is_mark(name) and not is_log_set(name):
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

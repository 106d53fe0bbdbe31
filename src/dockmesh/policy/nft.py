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

from dockmesh.policy.compile import HASH_TAG, JSON, document, is_log_set

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
        """The table as nft's JSON, or None when it does not exist."""
        proc = self._nft(["-j", "list", "table", "inet", check_table_name(table)], None)
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
            if s.get("table") == table and not is_log_set(str(s.get("name"))):
                elements[str(s["name"])] = frozenset(
                    e for raw in s.get("elem") or () for e in _element_texts(raw)
                )
        elif "chain" in item:
            chains.append(str(item["chain"].get("name")))
        elif "rule" in item:
            r = item["rule"]
            if r.get("table") != table:
                continue
            comment = str(r.get("comment") or "")
            if not rules and comment.startswith(HASH_TAG):
                digest = comment[len(HASH_TAG) :]
            packets = nbytes = None
            for e in r.get("expr") or ():
                if isinstance(e, Mapping) and isinstance(e.get("counter"), Mapping):
                    packets = int(e["counter"].get("packets", 0))
                    nbytes = int(e["counter"].get("bytes", 0))
            rules.append(LiveRule(comment, packets, nbytes, int(r.get("handle", 0))))
    return LiveTable(digest, elements, tuple(rules), tuple(chains))


def _element_texts(raw: Any) -> list[str]:
    """One element of nft's JSON → the compiler's texts (an address, or `net/len`)."""
    if isinstance(raw, Mapping) and "elem" in raw:  # an element with options (a comment...)
        raw = raw["elem"].get("val")
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

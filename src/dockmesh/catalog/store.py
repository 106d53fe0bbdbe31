"""What the catalog keeps across restarts — manual registrations with their checks, and the
KV store — behind a small interface: SQLite on one host, a distributed store later.

Container-derived instances are never stored: they are rebuilt from the engines.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from dockmesh.errors import UsageError
from dockmesh.model.catalog import CheckSpec, Instance, KVEntry

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Saved:
    registrations: list[tuple[Instance, list[CheckSpec]]] = field(default_factory=list)
    kv: list[KVEntry] = field(default_factory=list)
    index_floor: int = 0  # the highest index a client may have seen


class Store(Protocol):
    def load(self) -> Saved: ...
    def save_registration(self, instance: Instance, checks: Sequence[CheckSpec]) -> None: ...
    def delete_registration(self, instance_id: str) -> None: ...
    def put_kv(self, entry: KVEntry) -> None: ...
    def delete_kv(self, key: str, recurse: bool) -> None: ...
    def close(self) -> None: ...


class MemoryStore:
    """A store that forgets at exit (`--state ''`), and the double for tests."""

    def __init__(self) -> None:
        self.registrations: dict[str, tuple[Instance, list[CheckSpec]]] = {}
        self.kv: dict[str, KVEntry] = {}

    def load(self) -> Saved:
        floor = max((e.modify_index for e in self.kv.values()), default=0)
        return Saved(list(self.registrations.values()), list(self.kv.values()), floor)

    def save_registration(self, instance: Instance, checks: Sequence[CheckSpec]) -> None:
        self.registrations[instance.id] = (instance, list(checks))

    def delete_registration(self, instance_id: str) -> None:
        self.registrations.pop(instance_id, None)

    def put_kv(self, entry: KVEntry) -> None:
        self.kv[entry.key] = entry

    def delete_kv(self, key: str, recurse: bool) -> None:
        for k in [k for k in self.kv if (k.startswith(key) if recurse else k == key)]:
            del self.kv[k]

    def close(self) -> None:
        pass


def _instance_json(i: Instance) -> str:
    d = asdict(i)
    d["tags"] = list(i.tags)
    d["meta"] = dict(i.meta)
    return json.dumps(d, sort_keys=True)


def _instance(text: str) -> Instance:
    d: dict[str, Any] = json.loads(text)
    d["tags"] = tuple(d.get("tags") or ())
    return Instance(**d)


def _checks_json(checks: Sequence[CheckSpec]) -> str:
    return json.dumps([asdict(c) for c in checks], sort_keys=True)


def _checks(text: str) -> list[CheckSpec]:
    return [CheckSpec(**c) for c in json.loads(text)]


class SqliteStore:
    """One SQLite file (WAL): a row per registration, a row per key. Writes are small and
    synchronous on the caller's thread; a crash loses at most the write under way."""

    def __init__(self, path: str) -> None:
        try:
            self._open(path)
        except (sqlite3.Error, OSError) as e:
            # A file that is not ours (or not a database, or a folder) is the user's to fix.
            raise UsageError(f"--state {path}: not a usable dockmesh state file: {e}") from None

    def _open(self, path: str) -> None:
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS registrations "
            "(id TEXT PRIMARY KEY, instance TEXT NOT NULL, checks TEXT NOT NULL)"
        )
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL, "
            "flags INTEGER NOT NULL, create_index INTEGER NOT NULL, "
            "modify_index INTEGER NOT NULL, lock_index INTEGER NOT NULL)"
        )
        # Read both tables now: a damaged file fails here, with a message, not at first use.
        self._db.execute("SELECT count(*) FROM registrations").fetchone()
        self._db.execute("SELECT count(*) FROM kv").fetchone()

    def load(self) -> Saved:
        regs: list[tuple[Instance, list[CheckSpec]]] = []
        with self._lock:
            rows = self._db.execute("SELECT id, instance, checks FROM registrations").fetchall()
            kv_rows = self._db.execute(
                "SELECT key, value, flags, create_index, modify_index, lock_index FROM kv"
            ).fetchall()
        for rid, inst, checks in rows:
            try:
                regs.append((_instance(inst), _checks(checks)))
            except (ValueError, TypeError) as e:
                log.warning("state: registration %s is unreadable, skipped: %s", rid, e)
        kv = [KVEntry(k, base64.b64decode(v), f, c, m, lk) for k, v, f, c, m, lk in kv_rows]
        floor = max((e.modify_index for e in kv), default=0)
        return Saved(regs, kv, floor)

    def save_registration(self, instance: Instance, checks: Sequence[CheckSpec]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO registrations VALUES (?, ?, ?)",
                (instance.id, _instance_json(instance), _checks_json(checks)),
            )

    def delete_registration(self, instance_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM registrations WHERE id = ?", (instance_id,))

    def put_kv(self, entry: KVEntry) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO kv VALUES (?, ?, ?, ?, ?, ?)",
                (
                    entry.key,
                    base64.b64encode(entry.value).decode(),
                    entry.flags,
                    entry.create_index,
                    entry.modify_index,
                    entry.lock_index,
                ),
            )

    def delete_kv(self, key: str, recurse: bool) -> None:
        with self._lock:
            if recurse:
                # LIKE would treat % and _ in keys as wildcards: compare the prefix itself.
                self._db.execute("DELETE FROM kv WHERE substr(key, 1, ?) = ?", (len(key), key))
            else:
                self._db.execute("DELETE FROM kv WHERE key = ?", (key,))

    def close(self) -> None:
        with self._lock:
            self._db.close()

"""The state file: what is kept comes back; a file that is not ours is the user's to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockmesh.catalog.store import SqliteStore
from dockmesh.errors import UsageError
from dockmesh.model.catalog import CheckSpec, Instance, KVEntry


def test_registrations_and_kv_come_back(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    store = SqliteStore(path)
    inst = Instance("m-1", "m", "10.9.9.9", 1234, tags=("a",), meta={"k": "v"})
    check = CheckSpec("service:m-1", "t", "ttl", service_id="m-1", ttl_s=5)
    store.save_registration(inst, [check])
    store.put_kv(KVEntry("a/b", b"\x00\xffbytes", 7, 3, 9))
    store.put_kv(KVEntry("a%_c", b"x", 0, 4, 10))
    store.delete_kv("a%", recurse=True)  # a prefix, not a LIKE pattern
    store.close()
    saved = SqliteStore(path).load()
    assert saved.registrations == [(inst, [check])]
    assert [e.key for e in saved.kv] == ["a/b"] and saved.kv[0].value == b"\x00\xffbytes"
    assert saved.index_floor == 9


@pytest.mark.parametrize(
    "content", [b"not a database at all" * 50, b"SQLite format 3\x00" + b"\x01" * 90]
)
def test_a_file_that_is_not_a_state_file_is_bad_input(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "s.db"
    path.write_bytes(content)
    with pytest.raises(UsageError, match="not a usable dockmesh state file"):
        SqliteStore(str(path))
    with pytest.raises(UsageError):
        SqliteStore(str(tmp_path))  # a folder

"""Leaves kept on disk: issued once, reused while good, issued again when renewal is due or
the CA was replaced; one private file per name, never for a name that is not a host name."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest

from dockmesh.pki.ca import CaError, init_ca
from dockmesh.pki.leaves import LeafStore
from dockmesh.testing.clock import ManualClock

START = dt.datetime(2026, 12, 5, 8, 0, tzinfo=dt.UTC)


def test_a_leaf_is_issued_once_kept_and_renewed_after_two_thirds(tmp_path: Path) -> None:
    clock = ManualClock(START.timestamp())
    store = LeafStore(
        init_ca(tmp_path, START),
        lambda: dt.datetime.fromtimestamp(clock(), dt.UTC),
        lifetime=dt.timedelta(days=3),
    )
    first = store.leaf("app.test")
    assert first.path == tmp_path / "leaves" / "app.test.pem"
    assert stat.S_IMODE(first.path.stat().st_mode) == 0o600
    assert store.leaf("APP.test.") == first and store.issued == 1
    clock.advance(dt.timedelta(days=1).total_seconds())
    assert store.leaf("app.test") == first and store.issued == 1
    clock.advance(dt.timedelta(days=1, hours=1).total_seconds())
    renewed = store.leaf("app.test")
    assert store.issued == 2 and renewed.not_after > first.not_after
    assert sorted(p.name for p in (tmp_path / "leaves").iterdir()) == ["app.test.pem"]


def test_a_new_ca_does_not_serve_the_old_ones_leaves(tmp_path: Path) -> None:
    old = LeafStore(init_ca(tmp_path / "old", START), lambda: START)
    kept = old.leaf("app.test")
    # Replacing a CA removes its leaves; one copied in (or left by a crash) is not trusted.
    new = LeafStore(init_ca(tmp_path / "new", START), lambda: START)
    (tmp_path / "new" / "leaves").mkdir()
    (tmp_path / "new" / "leaves" / "app.test.pem").write_bytes(kept.path.read_bytes())
    made = new.leaf("app.test")
    assert new.issued == 1 and made.path.read_bytes() != kept.path.read_bytes()
    init_ca(tmp_path / "old", START, force=True)
    assert not kept.path.exists()


def test_only_host_names_become_files(tmp_path: Path) -> None:
    store = LeafStore(init_ca(tmp_path, START), lambda: START)
    for bad in ("../ca", "a/b", "", "127.0.0.1"):
        with pytest.raises(CaError):
            store.leaf(bad)
    assert not (tmp_path / "leaves").exists()

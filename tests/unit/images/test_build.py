"""The recipe of dockmesh/python's Debian base (dockmesh.images.build.base_recipe): what
debootstrap is asked for, and that the image's name moves with what goes into it."""

from __future__ import annotations

from pathlib import Path

import pytest

from dockmesh.images import build
from dockmesh.images.build import PYTHON_BASE, base_recipe

MIRROR = "file:///srv/mirror/debian"  # a mirror's place; no host is named in the project


def test_the_base_carries_nft_for_the_agent() -> None:
    recipe = base_recipe(MIRROR, "bookworm", "x86_64")
    cmd = recipe.debootstrap(Path("/tmp/root"))
    assert cmd[:2] == ["debootstrap", "--variant=minbase"]
    included = cmd[2].removeprefix("--include=").split(",")
    assert "nftables" in included and "python3" in included
    assert cmd[3:] == ["bookworm", "/tmp/root", MIRROR]
    assert recipe.ref == f"{PYTHON_BASE}:{recipe.key}"


def test_the_key_moves_with_the_packages_and_not_with_the_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    before = base_recipe(MIRROR, "bookworm", "x86_64")
    other = base_recipe(MIRROR, "bookworm", "x86_64", repo="dmt123456/python-base")
    assert other.key == before.key and other.ref == f"dmt123456/python-base:{before.key}"
    without = tuple(p for p in build.BASE_PACKAGES if p != "nftables")
    monkeypatch.setattr(build, "BASE_PACKAGES", without)
    assert base_recipe(MIRROR, "bookworm", "x86_64").key != before.key
    assert (
        base_recipe(MIRROR, "trixie", "x86_64").key != base_recipe(MIRROR, "bookworm", "x86_64").key
    )

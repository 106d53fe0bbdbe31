"""The recipe of dockmesh/python's Debian base (dockmesh.images.build.base_recipe): what
debootstrap is asked for, and that the image's name moves with what goes into it."""

from __future__ import annotations

import base64
import hashlib
import io
import zipfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.errors import BuildError, UsageError
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


# --- dockmesh/python from an installed wheel: its own files, made into a wheel again --------

INSTALLED = [
    "dockmesh/__init__.py",
    "dockmesh/__pycache__/__init__.cpython-311.pyc",
    "dockmesh/images/toolbox/bin/dm-init",
    "dockmesh/images/build.py",
    "dockmesh-0.1.0.dist-info/METADATA",
    "dockmesh-0.1.0.dist-info/WHEEL",
    "dockmesh-0.1.0.dist-info/RECORD",
    "dockmesh-0.1.0.dist-info/INSTALLER",
    "dockmesh-0.1.0.dist-info/REQUESTED",
    "dockmesh-0.1.0.dist-info/direct_url.json",
    "dockmesh-0.1.0.dist-info/entry_points.txt",
    "dockmesh-0.1.0.dist-info/licenses/LICENSE",
    "../../../bin/dockmesh",
    "dockmesh_other/x.py",
    "dockmesh_other-1.0.dist-info/METADATA",
    "/etc/passwd",
]


def test_a_wheel_carries_the_package_and_its_metadata_not_the_installers_notes() -> None:
    assert build.wheel_paths(INSTALLED) == [
        "dockmesh-0.1.0.dist-info/METADATA",
        "dockmesh-0.1.0.dist-info/WHEEL",
        "dockmesh-0.1.0.dist-info/entry_points.txt",
        "dockmesh-0.1.0.dist-info/licenses/LICENSE",
        "dockmesh/__init__.py",
        "dockmesh/images/build.py",
        "dockmesh/images/toolbox/bin/dm-init",
    ]


@given(
    st.lists(
        st.text(alphabet="abcdefgh_./-", min_size=1, max_size=30),
        max_size=30,
    )
)
def test_wheel_paths_keep_only_the_package_and_its_dist_info(paths: list[str]) -> None:
    kept = build.wheel_paths(paths)
    assert kept == sorted(set(kept))
    for p in kept:
        top = p.split("/")[0]
        assert top == "dockmesh" or (top.endswith(".dist-info") and top.startswith("dockmesh-"))
        assert ".." not in p.split("/") and not p.endswith((".pyc", ".pyo"))


def _files() -> dict[str, bytes]:
    return {
        "dockmesh/__init__.py": b'__version__ = "0.1.0"\n',
        "dockmesh/images/toolbox/bin/dm-init": b"#!/bin/sh\n",
        "dockmesh-0.1.0.dist-info/METADATA": b"Metadata-Version: 2.4\nName: dockmesh\n",
        "dockmesh-0.1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nTag: py3-none-any\n",
    }


def test_the_wheel_made_again_has_a_record_that_checks_out_and_is_the_same_each_time() -> None:
    files = _files()
    name, data = build.make_wheel(files)
    assert name == "dockmesh-0.1.0-py3-none-any.whl"
    assert build.make_wheel(dict(reversed(list(files.items())))) == (name, data)
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        assert set(z.namelist()) == {*files, "dockmesh-0.1.0.dist-info/RECORD"}
        record = z.read("dockmesh-0.1.0.dist-info/RECORD").decode().splitlines()
        rows = {r.split(",")[0]: r.split(",")[1:] for r in record}
        assert rows.pop("dockmesh-0.1.0.dist-info/RECORD") == ["", ""]
        for path, (digest, size) in rows.items():
            content = z.read(path)
            want = base64.urlsafe_b64encode(hashlib.sha256(content).digest()).rstrip(b"=")
            assert digest == "sha256=" + want.decode() and int(size) == len(content)


def test_a_wheel_needs_exactly_one_dist_info() -> None:
    files = {k: v for k, v in _files().items() if ".dist-info" not in k}
    with pytest.raises(BuildError, match=r"0 \.dist-info"):
        build.make_wheel(files)


def test_the_inputs_hash_moves_with_a_file_and_its_name() -> None:
    files = _files()
    h = build.files_hash(files)
    assert build.files_hash(dict(reversed(list(files.items())))) == h
    assert build.files_hash({**files, "dockmesh/__init__.py": b"x"}) != h
    renamed = {k.replace("dm-init", "dm-init2"): v for k, v in files.items()}
    assert build.files_hash(renamed) != h


def test_the_files_of_this_installation_are_read_from_its_metadata_or_refused() -> None:
    """This suite runs from an editable install: its metadata lists no package file, so it
    is refused with a reason (the checkout builds instead; the installed path is exercised
    from a real wheel in tests/integration/test_install.py)."""
    assert build.project_root() is not None
    with pytest.raises(BuildError, match="lists none of its package's files"):
        build.installed_files()
    with pytest.raises(BuildError, match="not installed"):
        build.installed_files("no-such-distribution-here")


@pytest.mark.parametrize(
    ("env", "toolbox", "python"),
    [
        ({}, "dockmesh/toolbox:latest", "dockmesh/python:latest"),
        ({build.REPO_PREFIX_ENV: ""}, "dockmesh/toolbox:latest", "dockmesh/python:latest"),
        ({build.REPO_PREFIX_ENV: "t1-x/dm"}, "t1-x/dm/toolbox:latest", "t1-x/dm/python:latest"),
    ],
)
def test_the_images_names_follow_the_prefix(env: dict[str, str], toolbox: str, python: str) -> None:
    assert (build.toolbox_image(env), build.python_image(env)) == (toolbox, python)


@pytest.mark.parametrize("bad", ["Dockmesh", "a//b", "/a", "a/", "a:b", "a b", "-a", "a" * 201])
def test_a_bad_prefix_is_a_usage_error(bad: str) -> None:
    with pytest.raises(UsageError, match=build.REPO_PREFIX_ENV):
        build.repo_prefix({build.REPO_PREFIX_ENV: bad})

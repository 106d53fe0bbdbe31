"""ARCHITECTURE.md is held to the code: a newcomer who follows it finds each module where it
says, every import-linter contract is explained there, and the layers it draws are the ones
the contract enforces. A change that moves a module or adds a contract changes the file too.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src" / "dockmesh"
DOC = (ROOT / "ARCHITECTURE.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(f"## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start : end if end >= 0 else len(DOC)]


def _contracts() -> list[dict[str, object]]:
    doc = tomllib.loads((ROOT / "pyproject.toml").read_text())
    contracts: list[dict[str, object]] = doc["tool"]["importlinter"]["contracts"]
    return contracts


def _folder_map() -> dict[str, set[str]]:
    """Package (or "" for the top level) → the module files the map names for it."""
    block = _section("4. The map of folders").split("```")[1]
    named: dict[str, set[str]] = {}
    package: str | None = None
    for line in block.splitlines():
        head = re.match(r"^  ([a-z_]+)/ ", line)
        top = re.match(r"^  ([a-z_]+\.py) ", line)
        if head:
            package = head.group(1)
        elif top:
            package = None
            named.setdefault("", set()).add(top.group(1))
            continue
        elif not line.startswith("    ") or line.lstrip().startswith(("tests/", "benchmarks/")):
            package = None
        if package is not None:
            named.setdefault(package, set()).update(re.findall(r"\b([a-z_0-9]+\.py)\b", line))
    return named


def test_every_module_the_map_names_exists_and_every_module_is_named() -> None:
    named = _folder_map()
    missing = [
        f"{pkg}/{f}" if pkg else f
        for pkg, files in named.items()
        for f in files
        if not (SRC / pkg / f).is_file()
    ]
    assert not missing, f"ARCHITECTURE.md names modules that do not exist: {missing}"
    unnamed = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC)
        if path.name in ("__init__.py", "__main__.py") or "toolbox" in rel.parts:
            continue
        pkg = "" if len(rel.parts) == 1 else rel.parts[0]
        if path.name not in named.get(pkg, set()):
            unnamed.append(str(rel))
    assert not unnamed, f"modules ARCHITECTURE.md's map does not name: {unnamed}"


def test_every_contract_is_named_and_explained() -> None:
    table = _section("3. The layers")
    for contract in _contracts():
        assert f'"{contract["name"]}"' in table, (
            f"the contract {contract['name']!r} is not in ARCHITECTURE.md's table of contracts"
        )


def test_the_layers_drawn_are_the_layers_enforced() -> None:
    (layers,) = [c for c in _contracts() if c["type"] == "layers" and "containers" not in c]
    rows = [str(r).replace("dockmesh.", "").replace(" ", "") for r in layers["layers"]]  # type: ignore[attr-defined]
    drawing = _section("3. The layers").split("```")[1]
    drawn = []
    for line in drawing.strip().splitlines():
        if line.startswith(" "):
            continue  # a continuation of the row above
        row = re.split(r"\s{2,}", line.strip())[0]
        drawn.append(row.replace("dockmesh.", "").replace(" ", ""))
    assert drawn == rows, f"ARCHITECTURE.md draws {drawn}, the contract says {rows}"


def test_the_proxy_layers_drawn_are_the_ones_enforced() -> None:
    (proxy,) = [c for c in _contracts() if c.get("containers") == ["dockmesh.proxy"]]
    rows = [str(r).replace(" ", "") for r in proxy["layers"]]  # type: ignore[attr-defined]
    drawing = _section("5. The proxy inside").split("```")[1]
    drawn = [
        re.split(r"\s{2,}", line.strip())[0].replace(" ", "")
        for line in drawing.strip().splitlines()
        if not line.startswith(" ")
    ]
    assert drawn == rows, f"ARCHITECTURE.md draws {drawn}, the contract says {rows}"

"""The suite's layout holds (tests/README.md): every module of dockmesh with behaviour of its
own has its unit test file, named for it — `src/dockmesh/a/b.py` ↔ `tests/unit/a/test_b.py`,
`src/dockmesh/x.py` ↔ `tests/unit/test_x.py` — unless listed below with the reason."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).parent.parent
SRC = ROOT / "src" / "dockmesh"
UNIT = ROOT / "tests" / "unit"

# Folders whose modules are wiring: their behaviour is tested where it lives.
WIRING = {
    "cli": "the commands wire typer to the modules; tests/integration/test_<command area>.py run "
    "them, tests/unit/cli/ tests what the commands share (common, render, usage, start-up, "
    "bad files)",
}
EXEMPT = {
    "__main__.py": "wiring: `python -m dockmesh` runs the command line",
    "errors.py": "declarations: the exception types the command line maps onto exit codes",
    "projectfile/context.py": "declarations: what validation is told, gathered by ops/context.py "
    "(tests/unit/ops/test_context.py)",
    "projectfile/schema.py": "the file's shape as pydantic declarations; its validators are "
    "reached through projectfile/test_load.py and test_validate.py",
    "policy/evaluate.py": "the compiler's oracle: its verdicts equal decide's for every pair in "
    "tests/unit/policy/test_compile.py",
    "proxy/settings.py": "declarations: the data plane's timeouts, limits and routes, built by "
    "proxy/run.py (tests/unit/proxy/test_run.py)",
}


def mirror(module: Path) -> Path:
    rel = module.relative_to(SRC)
    return UNIT / rel.parent / f"test_{rel.name}"


def defines_something(module: Path) -> bool:
    tree = ast.parse(module.read_text())
    return any(
        isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) for n in tree.body
    )


def modules() -> list[str]:
    return sorted(str(p.relative_to(SRC)) for p in SRC.rglob("*.py"))


def test_every_module_with_behaviour_has_its_test_file() -> None:
    missing = []
    for name in modules():
        path = SRC / name
        if path.name == "__init__.py" and not defines_something(path):
            continue  # a package's docstring and re-exports
        if name.split("/")[0] in WIRING or name in EXEMPT:
            continue
        if not mirror(path).exists():
            missing.append(f"{name} → {mirror(path).relative_to(ROOT)}")
    assert not missing, (
        "modules without their test file (write it, or say why in EXEMPT):\n" + "\n".join(missing)
    )


def test_every_exemption_names_a_module_that_still_has_no_test_file() -> None:
    stale = [n for n in EXEMPT if not (SRC / n).exists() or mirror(SRC / n).exists()]
    assert not stale, f"EXEMPT lists modules that are gone or have their test file: {stale}"


def test_no_test_file_is_named_for_a_module_that_is_not_there() -> None:
    """A test file named like a module's is that module's: one left behind by a rename would
    say it tests something that does not exist. Files of another name (test_bad_files.py,
    test_topology_schema.py, ...) test a topic across modules and are listed here."""
    topical = {
        "api/test_app_consul.py",
        "api/test_app_observe.py",
        "test_agent_burst.py",
        "test_agent_observer.py",
        "catalog/test_scope.py",
        "cli/test_bad_files.py",
        "cli/test_lab_name.py",
        "cli/test_reach_via.py",
        "cli/test_habits.py",
        "cli/test_startup.py",
        "cli/test_usage.py",
        "dns/test_answer_consul.py",
        "model/test_topology_schema.py",
        "policy/test_reach_paths.py",
        "projectfile/test_compose_keys.py",
        "ops/test_graceful_stop.py",
        "policy/test_overlay_keeper.py",
        "proxy/test_server_limits.py",
    }
    named = {str(mirror(SRC / m).relative_to(UNIT)) for m in modules()}
    orphans = [
        str(p.relative_to(UNIT))
        for p in UNIT.rglob("test_*.py")
        if str(p.relative_to(UNIT)) not in named and str(p.relative_to(UNIT)) not in topical
    ]
    assert not orphans, f"test files named for no module (rename, or list as topical): {orphans}"

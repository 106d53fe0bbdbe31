"""The user's documentation is held to the code, without an engine: every command and option
of the command line has its section in docs/cli.md, every route the agent serves is in
docs/http-api.md's table, every file of examples/ the README or docs name is shipped and
loads as its kind of file does, and nothing points outside the repository. The README's tour
output is checked against the real engine by tests/integration/test_tour.py."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer.main

from dockmesh.cli.main import app as cli_app
from dockmesh.errors import SpecError
from dockmesh.projectfile.context import EngineContext
from dockmesh.projectfile.load import load_spec
from tests import tour

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
CLI = (DOCS / "cli.md").read_text()
HTTP = (DOCS / "http-api.md").read_text()
# What a reader of the repository reads: the README, the reference, the tests' guide, the
# architecture and the examples' comments.
PAGES = sorted([ROOT / "README.md", ROOT / "ARCHITECTURE.md", ROOT / "tests" / "README.md"])
PAGES += sorted(DOCS.glob("*.md"))
EXAMPLES = sorted(p for p in (ROOT / "examples").rglob("*") if p.suffix in (".yaml", ".yml"))
NOT_TOPOLOGY = {
    "policy.yaml": "a policy file",
    "routes.yaml": "the proxy's routes file",
    "docker-compose.yml": "Compose's file, which `dockmesh convert` reads",
    "broken.yaml": "wrong on purpose: test_broken_yaml_says_what_the_readme_shows",
}
COMPOSE = ROOT / "examples" / "compose"


# --- the command line ------------------------------------------------------------------------


def leaf_commands() -> dict[str, Any]:
    """`dockmesh plan`, `dockmesh images build`, ...: every command a user runs. (Typer
    carries its own click: the commands are read by their shape, not by click's classes.)"""
    found: dict[str, Any] = {}

    def walk(cmd: Any, path: str) -> None:
        if hasattr(cmd, "commands"):
            # A group that runs itself too (`dockmesh agent` beside `agent install`) is a
            # command with its own options.
            if getattr(cmd, "invoke_without_command", False) and path != "dockmesh":
                found[path] = cmd
            for name, sub in cmd.commands.items():
                if not sub.hidden:
                    walk(sub, f"{path} {name}")
        else:
            found[path] = cmd

    walk(typer.main.get_command(cli_app), "dockmesh")
    return found


def section(heading: str) -> str | None:
    """The text under `## heading` up to the next `## ` heading, None when there is none."""
    m = re.search(rf"^## {re.escape(heading)}$", CLI, re.M)
    if m is None:
        return None
    end = CLI.find("\n## ", m.end())
    return CLI[m.end() : end if end >= 0 else len(CLI)]


COMMANDS = leaf_commands()


def test_the_command_line_has_commands() -> None:
    assert {"dockmesh plan", "dockmesh up", "dockmesh images build"} <= set(COMMANDS)


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_command_has_its_section_in_cli_md_with_every_option(command: str) -> None:
    text = section(command)
    assert text is not None, f"docs/cli.md has no section `## {command}`"
    missing = [
        name
        for param in COMMANDS[command].params
        if param.param_type_name == "option" and not getattr(param, "hidden", False)
        for name in param.opts
        if name.startswith("--")
        and name != "--help"
        and not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", text)
    ]
    assert not missing, f"docs/cli.md's `## {command}` does not name {missing}"


def test_every_command_section_of_cli_md_is_a_command() -> None:
    headings = re.findall(r"^## (dockmesh .+)$", CLI, re.M)
    stale = [h for h in headings if h not in COMMANDS]
    assert not stale, f"docs/cli.md documents commands that do not exist: {stale}"


# --- the agent's HTTP API ----------------------------------------------------------------------


def agent_routes() -> set[tuple[str, str]]:
    """(method, path with every variable written `*`) of every route the agent serves."""
    from prometheus_client import CollectorRegistry

    from dockmesh.api import TopologyFeed, make_app
    from dockmesh.catalog.live import LiveCatalog

    async def build() -> set[tuple[str, str]]:
        feed = TopologyFeed()
        app = make_app(LiveCatalog(), feed.current, feed.wait, CollectorRegistry())
        routes = set()
        for route in app.router.routes():
            info = route.resource.get_info() if route.resource else {}
            path = info.get("path") or info.get("formatter") or ""
            if route.method != "HEAD":
                routes.add((route.method, re.sub(r"\{[^}]*\}", "*", path)))
        return routes

    return asyncio.run(build())


def documented_routes() -> set[tuple[str, str]]:
    """The rows of http-api.md's table of routes: `| GET | `/v1/...` | ...`."""
    table = HTTP[HTTP.index("## The routes") :]
    table = table[: table.index("\n\n", table.index("| method"))]
    rows = set()
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) < 2 or not cells[1].startswith("`"):
            continue
        paths = re.findall(r"`([^`]+)`", cells[1])
        first = paths[0]
        for p in paths:
            # `…/warn/<id>` beside `/v1/agent/check/pass/<id>`: the first one's folder
            full = first.rsplit("/", 2)[0] + p[1:] if p.startswith("…") else p
            for method in cells[0].split(","):
                rows.add((method.strip(), re.sub(r"<[^>]*>", "*", full)))
    return rows


def test_every_route_the_agent_serves_is_in_http_api_md() -> None:
    served, documented = agent_routes(), documented_routes()
    assert served, "no route read from the agent's app"
    # A route for any method ("*", the KV store) is documented by its methods.
    missing = [
        r
        for r in served
        if r not in documented and not (r[0] == "*" and r[1] in {d[1] for d in documented})
    ]
    assert not missing, f"docs/http-api.md's table of routes lacks {sorted(missing)}"
    stale = [d for d in documented if d[1] not in {s[1] for s in served}]
    assert not stale, f"docs/http-api.md lists routes the agent does not serve: {sorted(stale)}"


# --- the examples -------------------------------------------------------------------------------


def named_examples() -> set[str]:
    names = set()
    for page in PAGES:
        names |= set(re.findall(r"\bexamples/[\w./-]+\.ya?ml\b", page.read_text()))
    return names


def test_every_example_the_readme_or_docs_name_is_shipped() -> None:
    named = named_examples()
    assert "examples/microservices.yaml" in named
    missing = sorted(n for n in named if not (ROOT / n).is_file())
    assert not missing, f"named but not in examples/: {missing}"


def test_every_shipped_example_is_named_somewhere() -> None:
    named = named_examples()
    orphans = [str(p.relative_to(ROOT)) for p in EXAMPLES if str(p.relative_to(ROOT)) not in named]
    assert not orphans, f"examples no page names (say what they are for): {orphans}"


@pytest.mark.parametrize(
    "path",
    [p for p in EXAMPLES if p.name not in NOT_TOPOLOGY],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_a_topology_example_is_valid_on_a_machine_that_holds_nothing(path: Path) -> None:
    """What `dockmesh plan` checks before it plans, with the engine's part empty."""
    loaded = load_spec(str(path), env={})  # variables: their defaults, and .env beside it
    assert not loaded.warnings, loaded.warnings
    loaded.check(EngineContext())


def test_broken_yaml_says_what_the_readme_shows(monkeypatch: pytest.MonkeyPatch) -> None:
    """The Bad input block, engine aside: the same lines, in the same order."""
    lines = tour.README.read_text().split("\n")
    (block,) = [b for b in tour.blocks(lines) if "examples/broken.yaml" in b.commands[0].text]
    shown = [line for line in block.commands[0].output if line != "exit 2"]
    monkeypatch.chdir(ROOT)
    loaded = load_spec("examples/broken.yaml", env={})
    with pytest.raises(SpecError) as refused:
        loaded.check(EngineContext())
    assert refused.value.lines == shown


def test_the_policy_example_is_a_policy_file() -> None:
    from dockmesh.cli.policy import read_policy_file

    policy, _ = read_policy_file(str(ROOT / "examples" / "policy.yaml"))
    assert policy.rules


def test_the_routes_example_is_a_routes_file() -> None:
    from dockmesh.proxy.config import load_config

    path = ROOT / "examples" / "routes.yaml"
    settings = load_config(path.read_bytes(), str(path))
    assert settings.routes


def test_the_compose_example_converts_to_the_file_shipped_beside_it() -> None:
    """examples/compose/dockmesh.yaml is what `dockmesh convert` writes now, and
    docs/coming-from-compose.md shows both the file and what convert says it left out."""
    proc = subprocess.run(
        [sys.executable, "-m", "dockmesh", "convert", "docker-compose.yml"],
        cwd=COMPOSE,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (COMPOSE / "dockmesh.yaml").read_text(), (
        "examples/compose/dockmesh.yaml is not what convert writes now: "
        "dockmesh convert docker-compose.yml -o dockmesh.yaml --force"
    )
    page = (DOCS / "coming-from-compose.md").read_text()
    assert f"```yaml\n{proc.stdout}```" in page, "the page's dockmesh.yaml is not convert's"
    left_out = proc.stderr.strip().splitlines()
    assert left_out, "convert named nothing it left out: the page's example says it does"
    assert [line for line in left_out if line not in page] == []
    body = (COMPOSE / "docker-compose.yml").read_text().split("\n")
    compose = "\n".join(line for line in body if not line.startswith("#"))
    assert f"```yaml\n{compose}```" in page, "the page's docker-compose.yml is not the file"


def test_docs_readme_lists_every_page() -> None:
    index = (DOCS / "README.md").read_text()
    pages = [p.name for p in DOCS.iterdir() if p.name != "README.md"]
    assert [p for p in pages if f"]({p})" not in index] == []


# --- nothing outside the repository -------------------------------------------------------------

LINK = re.compile(r"\]\(([^)\s]+)\)")
# This workspace's folders, never a user's: a page that names them points outside the repository.
OUTSIDE = re.compile(r"\.\./shared\b|/work/|\bINTERFACE\.md\b|/wt/")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = page.read_text()
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return {slug(h) for h in re.findall(r"^#+ (.+)$", text, re.M)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_link_of_a_page_leads_inside_the_repository(page: Path) -> None:
    wrong = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"^[a-z]+:", target):
            continue  # a URL: not a file of this machine
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if ROOT not in dest.parents and dest != ROOT:
            wrong.append(f"{target}: outside the repository")
        elif not dest.exists():
            wrong.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            wrong.append(f"{target}: no such heading in {dest.name}")
    assert not wrong, f"{page.relative_to(ROOT)}: " + "; ".join(wrong)


@pytest.mark.parametrize("page", PAGES + EXAMPLES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_page_names_a_folder_outside_the_repository(page: Path) -> None:
    hits = [
        f"{page.relative_to(ROOT)}:{n}: {line.strip()}"
        for n, line in enumerate(page.read_text().splitlines(), 1)
        if OUTSIDE.search(line)
    ]
    assert not hits, "\n".join(hits)


# --- the tour runner's own rules ----------------------------------------------------------------


def test_the_tour_runs_the_readme_commands_under_its_own_project_name() -> None:
    assert tour.as_run("dockmesh plan examples/a.yaml", "dmt7") == (
        "dockmesh plan -p dmt7 examples/a.yaml"
    )
    assert tour.as_run("docker network disconnect demo_backend demo-api-2", "dmt7") == (
        "docker network disconnect dmt7_backend dmt7-api-2"
    )
    assert tour.own_name("dmt7").sub("demo", "project dmt7: dmt7-api-1 dmt7x") == (
        "project demo: demo-api-1 dmt7x"
    )


def test_the_tour_normalises_engine_ids_and_trailing_spaces_only() -> None:
    line = "start 521d093b0861: on endpoint x (" + "c" * 64 + "):   "
    assert tour.normalise(line) == "start <id>: on endpoint x (<id>):"
    assert tour.normalise("10.77.2.2 demo-api-1") == "10.77.2.2 demo-api-1"


def test_a_tour_block_reads_back_as_written() -> None:
    body = ["$ a", "out", "", "more", "", "$ b # c", "x"]
    commands = tour.parse(body)
    assert [c.text for c in commands] == ["a", "b # c"]
    assert tour.render(commands) == body

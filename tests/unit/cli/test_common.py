"""What every command shares (dockmesh.cli.common): every float option of the command line
refuses nan and ±inf as a usage error, through its own callback (no patch of click)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from typer.main import get_command

from dockmesh.cli.common import UserError
from dockmesh.cli.main import app


def float_options() -> Iterator[tuple[str, typer.Context, typer.core.TyperOption]]:
    def walk(cmd: object, path: str) -> Iterator[tuple[str, typer.Context, typer.core.TyperOption]]:
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, f"{path} {name}")
        for p in getattr(cmd, "params", ()):
            if isinstance(p, typer.core.TyperOption) and p.type.name.startswith("float"):
                yield f"{path} {p.opts[0]}", typer.Context(cmd), p  # type: ignore[arg-type]

    yield from walk(get_command(app), "dockmesh")


OPTIONS = list(float_options())


def test_the_walk_finds_every_float_option() -> None:
    found = {path for path, _, _ in OPTIONS}
    assert {
        "dockmesh bench latency --interval",
        "dockmesh bench latency --timeout",
        "dockmesh bench bandwidth --seconds",
        "dockmesh doctor --timeout",
        "dockmesh top --interval",
        "dockmesh report --duration",
        "dockmesh why --timeout",
        "dockmesh matrix --timeout",
    } <= found


@pytest.mark.parametrize(("path", "ctx", "option"), OPTIONS, ids=[p for p, _, _ in OPTIONS])
@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-inf", "+Infinity"])
def test_no_float_option_takes_a_number_that_is_not_finite(
    path: str, ctx: typer.Context, option: typer.core.TyperOption, text: str
) -> None:
    with pytest.raises(typer.BadParameter):
        option.process_value(ctx, text)
    assert option.process_value(ctx, str(option.default)) == option.default  # the default holds


@pytest.mark.parametrize(("path", "ctx", "option"), OPTIONS, ids=[p for p, _, _ in OPTIONS])
@pytest.mark.parametrize("text", ["1e20", "1e308"])
def test_no_float_option_takes_a_number_too_big_to_wait_for(
    path: str, ctx: typer.Context, option: typer.core.TyperOption, text: str
) -> None:
    """A timeout of 1e20 s overflowed the poll deadline (`why`: an internal error) or let a
    probe wait for ever (`matrix` hung): every float option has a maximum."""
    with pytest.raises(typer.BadParameter):
        option.process_value(ctx, text)


# --- `--engine hostN`: a lab host's name is that lab engine ------------------------------------


def test_a_lab_host_name_is_its_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from dockmesh.cli.common import engine_refs, lab_engine
    from dockmesh.lab import plan
    from dockmesh.lab.state import LabState

    path = tmp_path / "lab.json"
    monkeypatch.setattr(plan, "state_file", lambda name: str(path))
    monkeypatch.setenv("DOCKMESH_LAB", "dev")
    # Not a lab host's name: left as it is (a URL, NAME=URL, or an error of its own).
    assert lab_engine("unix:///x.sock") == "unix:///x.sock"
    assert lab_engine("host2=unix:///x.sock") == "host2=unix:///x.sock"
    with pytest.raises(UserError, match="no lab 'dev' is up"):
        lab_engine("host2")
    path.write_bytes(LabState("dev", "10.251.0.0/24", 2, 1, 1).dumps())
    [ref] = engine_refs(["host2"])
    assert (ref.name, ref.url) == ("host2", "unix:///run/dockmesh-lab/lab-dev/host2.sock")
    with pytest.raises(UserError, match="host1 to host2"):
        lab_engine("host3")
    path.write_bytes(b"\x00junk")
    with pytest.raises(UserError, match="not a lab state file"):
        lab_engine("host1")
    monkeypatch.setenv("DOCKMESH_LAB", "Not A Name")
    with pytest.raises(UserError, match="DOCKMESH_LAB"):
        lab_engine("host1")


def test_a_reader_gone_is_no_error_message() -> None:
    """`dockmesh logs -f | head -1` said "dockmesh: [Errno 32] Broken pipe" on stderr."""
    import subprocess
    import sys

    script = (
        "import sys, typer\n"
        "from dockmesh.cli.common import handle_errors\n"
        "@handle_errors\n"
        "def run() -> None:\n"
        "    for i in range(10**6):\n"
        "        print('line', i)\n"
        "try:\n"
        "    run()\n"
        "except typer.Exit as e:\n"
        "    sys.exit(e.exit_code)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert proc.stdout.readline() == b"line 0\n"
    proc.stdout.close()
    err = proc.stderr.read().decode()
    proc.stderr.close()
    assert (proc.wait(timeout=30), err) == (1, "")

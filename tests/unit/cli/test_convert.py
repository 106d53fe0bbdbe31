"""`dockmesh convert -o`: the output is a file of its own, written whole, and the Compose file
is never what gets overwritten."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

COMPOSE = "services:\n  w:\n    image: x\n"


def convert(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dockmesh", "convert", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=folder,
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "compose.yml").write_text(COMPOSE)
    return tmp_path


def test_writes_a_new_file(folder: Path) -> None:
    proc = convert(folder, "compose.yml", "-o", "dockmesh.yaml")
    assert proc.returncode == 0, proc.stderr
    assert (folder / "dockmesh.yaml").read_text() == "services:\n  w:\n    image: x\n"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_never_the_compose_file_itself(folder: Path, force: list[str]) -> None:
    (folder / "same.yml").symlink_to("compose.yml")
    for out, said in (("compose.yml", "the Compose file itself"), ("same.yml", "symbolic link")):
        proc = convert(folder, "compose.yml", "-o", out, *force)
        assert proc.returncode == 2 and said in proc.stderr, proc.stderr
    assert (folder / "compose.yml").read_text() == COMPOSE


def test_a_symlink_is_not_written_through(folder: Path) -> None:
    (folder / "elsewhere").write_text("precious")
    (folder / "link.yaml").symlink_to(folder / "elsewhere")
    (folder / "dangling.yaml").symlink_to(folder / "nowhere")
    for out in ("link.yaml", "dangling.yaml"):
        proc = convert(folder, "compose.yml", "-o", out, "--force")
        assert proc.returncode == 2 and "symbolic link" in proc.stderr
    assert (folder / "elsewhere").read_text() == "precious"
    assert not (folder / "nowhere").exists()


def test_a_folder_or_a_missing_folder_is_a_usage_error(folder: Path) -> None:
    (folder / "out").mkdir()
    for out, said in (("out", "is a folder"), ("no/such.yaml", "no folder no")):
        proc = convert(folder, "compose.yml", "-o", out, "--force")
        assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), proc.stderr
        assert said in proc.stderr


def test_an_existing_file_needs_force(folder: Path) -> None:
    (folder / "old.yaml").write_text("old")
    assert convert(folder, "compose.yml", "-o", "old.yaml").returncode == 2
    assert (folder / "old.yaml").read_text() == "old"
    assert convert(folder, "compose.yml", "-o", "old.yaml", "--force").returncode == 0
    assert (folder / "old.yaml").read_text().startswith("services:")


def test_a_folder_that_takes_no_file_is_a_usage_error(folder: Path) -> None:
    # The temporary file could not be made there: an errno, exit 1.
    proc = convert(folder, "compose.yml", "-o", "/proc/dmtest.yaml")
    assert (proc.returncode, proc.stderr.count("\n")) == (2, 1), proc.stderr
    assert proc.stderr.startswith("dockmesh: --output /proc/dmtest.yaml: cannot be written:")


def test_what_up_would_refuse_is_said_at_the_compose_line_and_nothing_is_written(
    folder: Path,
) -> None:
    # A port range passed through, and `up` refused the written file; an overlay network
    # and a macvlan parent are the host's business, not the file's: no problem here.
    (folder / "compose.yml").write_text(
        "services:\n"
        "  web:\n"
        "    image: x\n"
        "    ports:\n"
        "      - 8000-8001:80-81\n"
        "    networks: [over, lan]\n"
        "networks:\n"
        "  over: {driver: overlay}\n"
        "  lan: {driver: macvlan, driver_opts: {parent: dm-veth-x}}\n"
    )
    proc = convert(folder, "compose.yml", "-o", "dockmesh.yaml")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "compose.yml:5: services.web.ports.0: container port '80-81' is not a port number"
    ]
    assert not (folder / "dockmesh.yaml").exists()

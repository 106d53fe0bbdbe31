"""`dockmesh convert -o`: the output is a file of its own, written whole, and the Compose file
is never what gets overwritten."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.cli.convert import _holds_variable
from dockmesh.projectfile.interpolate import InterpolationError, substitute_variables

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


@pytest.mark.parametrize(
    ("service", "said"),
    [
        # convert keeps `${…}` as written: what they hold is up's to judge, with the variables
        # set then; these converted before the check, and stopped converting with it.
        ("    image: ${DMTEST_UNSET_IMAGE:?set it}\n", "variable DMTEST_UNSET_IMAGE is not set"),
        ("    image: x\n    deploy: {replicas: '${DMTEST_UNSET_N}'}\n", "must be a whole number"),
        ("    image: x\n    env_file: not-there-yet.env\n", "not-there-yet.env: cannot be read"),
    ],
)
def test_what_only_the_variables_and_files_of_now_refuse_does_not_stop_it(
    folder: Path, service: str, said: str
) -> None:
    (folder / "compose.yml").write_text("services:\n  web:\n" + service)
    proc = convert(folder, "compose.yml", "-o", "dockmesh.yaml")
    assert proc.returncode == 0, proc.stderr
    assert said in proc.stderr and "`up` checks it again" in proc.stderr, proc.stderr
    assert (folder / "dockmesh.yaml").exists()


def test_a_dotenv_it_cannot_read_is_said_and_stops_nothing(folder: Path) -> None:
    (folder / ".env").write_text("NOT A LINE\n")
    proc = convert(folder, "compose.yml", "-o", "dockmesh.yaml")
    assert proc.returncode == 0, proc.stderr
    assert ".env:1: (env): 'NOT A LINE' is not NAME=value" in proc.stderr
    assert (folder / "dockmesh.yaml").exists()


def test_service_healthy_on_replicas_from_a_variable_waits_for_up(folder: Path) -> None:
    compose = (
        "services:\n  a:\n    image: x\n    depends_on: {b: {condition: service_healthy}}\n"
        "  b:\n    image: x\n    healthcheck: {test: [CMD, 'true']}\n    deploy: {replicas: R}\n"
    )
    (folder / "compose.yml").write_text(compose.replace("R", "'${DMTEST_UNSET_N:-0}'"))
    assert convert(folder, "compose.yml").returncode == 0
    both = compose.replace("R", "0").replace(
        "x\n    depends_on", "x\n    deploy: {replicas: R}\n    depends_on"
    )
    (folder / "compose.yml").write_text(both.replace("R", "'${DMTEST_UNSET_N:-1}'", 1))
    assert convert(folder, "compose.yml").returncode == 0
    (folder / "compose.yml").write_text(compose.replace("R", "0"))
    proc = convert(folder, "compose.yml")
    assert proc.returncode == 2, proc.stderr
    assert (
        "compose.yml:4: services.a.depends_on.b.condition: service_healthy: 'b' has replicas: 0"
        in (proc.stderr)
    )


def test_a_malformed_variable_is_refused_whatever_is_set(folder: Path) -> None:
    (folder / "compose.yml").write_text("services:\n  web:\n    image: ${1}\n")
    proc = convert(folder, "compose.yml", "-o", "dockmesh.yaml")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("compose.yml:3: services.web.image: '${1}'"), proc.stderr
    assert not (folder / "dockmesh.yaml").exists()


def test_the_example_converts() -> None:
    example = Path(__file__).parents[3] / "examples" / "compose"
    proc = convert(example, "docker-compose.yml")
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("parent", ["${DMTEST_UNSET_IFACE:-dm-veth-y}", "${DMTEST_UNSET_IFACE}"])
def test_a_parent_interface_from_a_variable_is_the_host_s_business(
    folder: Path, parent: str
) -> None:
    # The interface the check's host has was the text as written, `${…:-dm-veth-y}`: its
    # substituted name "did not exist on this host"; unset, it "needed a parent".
    (folder / "compose.yml").write_text(
        "services:\n  web: {image: x, networks: [lan]}\n"
        f"networks:\n  lan: {{driver: ipvlan, driver_opts: {{parent: '{parent}'}}}}\n"
    )
    proc = convert(folder, "compose.yml", "-o", "dockmesh.yaml")
    assert proc.returncode == 0, proc.stderr
    assert "does not exist" not in proc.stderr


@given(
    st.lists(st.sampled_from([*"${}:-?+AB_ x", "$$", "${A", "${B:-"]), max_size=20).map("".join),
    st.dictionaries(st.sampled_from(["A", "B"]), st.sampled_from(["", "v", "${A}"])),
)
def test_a_value_without_a_variable_is_the_same_whatever_is_set(
    text: str, env: dict[str, str]
) -> None:
    # What convert lets stop it must not depend on the variables of the moment.
    if _holds_variable(text):
        return
    try:
        alone = substitute_variables(text, {}).text
    except InterpolationError:
        with pytest.raises(InterpolationError):
            substitute_variables(text, env)
        return
    assert substitute_variables(text, env).text == alone


def test_a_file_its_aliases_make_too_large_is_said_so(folder: Path) -> None:
    big = "x" * 200_000
    (folder / "compose.yml").write_text(
        f"x-big: &big {big}\nservices:\n  w:\n    image: x\n    environment:\n"
        + "".join(f"      A{i}: *big\n" for i in range(10))
    )
    proc = convert(folder, "compose.yml", "-o", "dockmesh.yaml")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("compose.yml:1: (file): converted, it would be larger than")
    assert not (folder / "dockmesh.yaml").exists()


def test_an_empty_env_file_path_is_refused_whatever_is_there(folder: Path) -> None:
    (folder / "compose.yml").write_text("services:\n  w:\n    image: x\n    env_file: ['']\n")
    proc = convert(folder, "compose.yml", "-o", "dockmesh.yaml")
    assert proc.returncode == 2, proc.stderr
    assert "services.w.env_file.0: an empty path" in proc.stderr
    assert not (folder / "dockmesh.yaml").exists()

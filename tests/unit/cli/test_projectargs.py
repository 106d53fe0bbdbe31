"""-f/-p as Compose has them, and what `up` refuses without --yes (dockmesh.cli.projectargs)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.cli.projectargs import emptying, orphans_warning, pick_file, project_name
from dockmesh.errors import SpecError, UsageError
from dockmesh.projectfile.plan import Change, Plan


def test_the_file_is_file_or_dash_f_else_the_folders(tmp_path: Path) -> None:
    assert pick_file("a.yaml", None) == "a.yaml"
    assert pick_file(None, "b.yaml") == "b.yaml"
    assert pick_file("a.yaml", "a.yaml") == "a.yaml"
    with pytest.raises(UsageError, match=r"^FILE 'a.yaml' and --file 'b.yaml': give one of them$"):
        pick_file("a.yaml", "b.yaml")
    with pytest.raises(UsageError, match=r"^no dockmesh\.yaml in this folder: give -f FILE$"):
        pick_file(None, None, str(tmp_path))
    with pytest.raises(UsageError, match=r"give -f FILE or -p NAME$"):
        pick_file(None, None, str(tmp_path), or_project=True)
    (tmp_path / "dockmesh.yaml").write_text("project: shop\n")
    assert pick_file(None, None, str(tmp_path)) == str(tmp_path / "dockmesh.yaml")


@given(st.text(max_size=12))
def test_a_project_name_is_the_files_rule(name: str) -> None:
    ok = bool(name) and name[0] in "abcdefghijklmnopqrstuvwxyz0123456789"
    ok = ok and all(ch in "abcdefghijklmnopqrstuvwxyz0123456789_-" for ch in name)
    if ok:
        assert project_name(name) == name
    else:
        with pytest.raises(UsageError, match=r"^-p "):
            project_name(name)


def _plan(*changes: Change, orphans: tuple[str, ...] = ()) -> Plan:
    return Plan("shop", changes, (), orphans=orphans)


def test_up_never_empties_a_project_without_yes() -> None:
    rm = (
        Change("remove", "container", "shop-web-1", "no longer in the file"),
        Change("remove", "container", "shop-web-2", "no longer in the file"),
        Change("remove", "network", "shop_front", "no longer in the file"),
    )
    assert emptying(_plan(*rm), describes_nothing=True) == (
        "the file describes no service and no network: up would remove all of project 'shop' "
        "(2 containers, 1 network); give --yes to do so, or run `dockmesh down`"
    )
    assert emptying(_plan(rm[0]), describes_nothing=True) == (
        "the file describes no service and no network: up would remove all of project 'shop' "
        "(1 container); give --yes to do so, or run `dockmesh down`"
    )
    assert emptying(_plan(*rm), describes_nothing=False) is None
    assert emptying(_plan(), describes_nothing=True) is None  # nothing there: nothing lost
    # orphans kept: the project is not emptied
    assert emptying(_plan(rm[2], orphans=("shop-web-1",)), describes_nothing=True) is None
    # the policy alone going is not "everything"
    assert emptying(_plan(Change("remove", "policy", "inet t", "x")), True) is None


def test_orphans_are_named() -> None:
    assert orphans_warning(_plan()) is None
    assert orphans_warning(_plan(orphans=("shop-db-1", "shop-old-1"))) == (
        "containers of services no longer in the file, left running: shop-db-1, shop-old-1 "
        "(`up --remove-orphans` removes them)"
    )


@pytest.mark.parametrize("name", ["Bad Name", "", "../x", "a.b"])
def test_down_ps_logs_refuse_a_files_project_name_up_refuses(tmp_path: Path, name: str) -> None:
    # They matched nothing and said "nothing to remove" (exit 0) for a file `up` refuses.
    from dockmesh.cli.project import resolve_name

    (tmp_path / "dockmesh.yaml").write_text(f"services: {{}}\nproject: {name!r}\n")
    with pytest.raises(SpecError) as e:
        resolve_name(None, str(tmp_path / "dockmesh.yaml"), None)
    assert e.value.lines == [
        f"{tmp_path}/dockmesh.yaml:2: project: {name!r}: lowercase letters, digits, '-' and '_' only"
    ]
    assert resolve_name(None, str(tmp_path / "dockmesh.yaml"), "shop") == "shop"

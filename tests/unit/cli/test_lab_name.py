"""`--name` of the lab commands: an explicit empty name is refused, never taken for the
default lab (`lab down --name "$LAB"` with $LAB unset tore down the lab named `lab`, perhaps
someone else's). Checked on the name's resolution: nothing here may start or stop a lab."""

from __future__ import annotations

import pytest

from dockmesh.cli.lab import _name
from dockmesh.lab.plan import LabPlanError


def test_an_empty_lab_name_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKMESH_LAB", raising=False)
    with pytest.raises(LabPlanError, match="lab name ''"):
        _name("")


def test_no_name_is_the_default_lab(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKMESH_LAB", raising=False)
    assert _name(None) == "lab"
    monkeypatch.setenv("DOCKMESH_LAB", "dev")
    assert _name(None) == "dev"

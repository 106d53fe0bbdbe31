"""Read a dockmesh.yaml: text → located data → Spec → (with facts) validated desired state.
Every problem is reported at once as `FILE:LINE: path: message`."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path as FsPath

from dockmesh.errors import SpecError
from dockmesh.spec.desired import Desired, desired_state
from dockmesh.spec.facts import Facts
from dockmesh.spec.problems import Path, Problem, format_problem
from dockmesh.spec.schema import Spec, parse_spec
from dockmesh.spec.validate import validate
from dockmesh.spec.yamlpos import load_located


@dataclass(frozen=True, slots=True)
class LoadedSpec:
    filename: str
    spec: Spec
    project: str
    lines: dict[Path, int]

    def check(self, facts: Facts) -> Desired:
        """Validates against what the engine and host hold; raises SpecError."""
        problems = validate(self.spec, self.project, facts)
        if problems:
            raise SpecError(self._format(problems))
        return desired_state(self.spec, self.project)

    def _format(self, problems: list[Problem]) -> list[str]:
        return [format_problem(self.filename, p, self.lines) for p in problems]


def default_project(path: str) -> str:
    folder = os.path.basename(os.path.dirname(os.path.abspath(path))) or "default"
    return re.sub(r"[^a-z0-9_-]", "", folder.lower()) or "default"


def load_spec(path: str) -> LoadedSpec:
    """Reads and shape-checks a file; raises SpecError (or OSError when it cannot be read)."""
    text = FsPath(path).read_text()
    located = load_located(text)
    problems = list(located.problems)
    spec: Spec | None = None
    if located.data is not None:
        spec, shape = parse_spec(located.data)
        problems += shape
    if problems or spec is None:
        raise SpecError([format_problem(path, p, located.lines) for p in problems])
    project = spec.project if spec.project is not None else default_project(path)
    return LoadedSpec(path, spec, project, located.lines)

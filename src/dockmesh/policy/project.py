"""A topology file's `policy:` section under `plan`, `up` and `down`. Pure (its one import
of `store` is for the record's type).

`up FILE` applies the file's policy after the networks and containers exist, through the same
`Enforcer.apply` as `policy apply FILE`, and records which project applied it; `down` removes
the policy only when that record names its project, so a policy someone applied by hand, or
another project's, is never taken away by a `down`. The policy is one table: `up` refuses
(before anything is created) to replace a policy another project or file applied — two
projects' policies in one table would silently replace each other.

What `plan` shows and `up` does is decided here from what was read: the file's policy, the
applied record and the kernel's table (absent, ours and whether in sync, or not dockmesh's).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from dockmesh.model.policy import Policy, Scope, parse_policy
from dockmesh.policy.compile import Mode
from dockmesh.policy.store import Applied
from dockmesh.projectfile.load import LoadedSpec
from dockmesh.projectfile.plan import Change
from dockmesh.projectfile.problems import Problem

KernelTable = Literal["absent", "ours", "foreign"]


def file_policy(loaded: LoadedSpec) -> tuple[Policy | None, list[Problem]]:
    """The file's `policy:` section with the engine's names (None: the file has none, or an
    empty one), and its problems (the file's validation reports them first; they are here so
    that no caller can apply half a policy)."""
    section = loaded.spec.policy
    if not section:
        return None, []
    scope = Scope(loaded.project, frozenset(loaded.spec.networks), frozenset(loaded.spec.services))
    policy, found = parse_policy(section, scope, ("policy",))
    return policy, [Problem(path, message) for path, message in found]


def owned_by(record: Applied | None, project: str) -> bool:
    """Whether `record` is the policy `project`'s `up` applied."""
    return record is not None and record.project == project


def conflict(record: Applied | None, project: str, source: str, table: str) -> str | None:
    """Why `up` of `project` (from the file `source`) must not replace the recorded policy,
    or None: it may when there is none, when its project applied it, or when it was applied
    by hand from this very file."""
    if record is None or record.project == project:
        return None
    if not record.project and record.source == source:
        return None
    whose = f"project {record.project}" if record.project else "dockmesh policy apply"
    return (
        f"table inet {table} holds the policy {whose} applied from {record.source or '?'}: "
        f"`dockmesh policy remove` it first, or give this project another table "
        f"(--table or $DOCKMESH_POLICY_TABLE)"
    )


HOST_WIDE = ("br6",)


@dataclass(frozen=True, slots=True)
class Wanted:
    """What `up` would record: the file's policy as `Applied`."""

    applied: Applied
    structure: str  # the compiled ruleset's structure hash
    elements: dict[str, frozenset[str]]  # its sets' elements over the topology now


def policy_change(
    want: Wanted | None,
    record: Applied | None,
    kernel: KernelTable,
    live_structure: str | None,
    live_elements: dict[str, frozenset[str]],
    project: str,
    table: str,
) -> Change | None:
    """The plan's line for the project's policy: None when nothing is to be done."""
    name = f"inet {table}"
    if want is None:
        if owned_by(record, project):
            return Change("remove", "policy", name, "the file has no policy: section")
        return None
    if record is None or kernel == "absent":
        return Change("create", "policy", name, "not in the kernel")
    if kernel == "foreign":  # `up` refuses before this; said here for plan's sake
        return Change("replace", "policy", name, "the table was not made by dockmesh")
    wanted = want.applied
    if record.policy != wanted.policy:
        return Change("replace", "policy", name, "changed: rules")
    if record.mode != wanted.mode:
        return Change("replace", "policy", name, f"changed: mode {record.mode} → {wanted.mode}")
    if record.project != wanted.project:
        return Change("replace", "policy", name, "applied by policy apply; up takes it over")
    if live_structure != want.structure:
        return Change("replace", "policy", name, "the kernel's rules differ from the file's")
    if _own(live_elements) != _own(want.elements):
        return Change("replace", "policy", name, "its sets are not in sync with the containers")
    return None


def _own(elements: dict[str, frozenset[str]]) -> dict[str, frozenset[str]]:
    """The sets the project's policy decides. The sets of Docker's isolation for IPv6 list
    every IPv6 bridge on the host: another project's network changes them, and the agent
    follows that; it is no change of this project's."""
    return {k: v for k, v in elements.items() if not k.startswith(HOST_WIDE)}


def modes(value: str) -> Mode:
    """`--policy-mode`'s value; ValueError for another word."""
    if value == "enforce":
        return "enforce"
    if value == "audit":
        return "audit"
    raise ValueError(f"--policy-mode {value!r}: enforce or audit")

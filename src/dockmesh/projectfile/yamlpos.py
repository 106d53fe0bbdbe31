"""YAML → plain data plus the line of every key and item, and no silent surprises:
duplicate keys (which PyYAML quietly resolves to the last one) are problems."""

from __future__ import annotations

from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from dockmesh.projectfile.problems import Path, Problem


class Located:
    """A document's data with `lines[path]` = 1-based line of that key or item."""

    def __init__(self, data: Any, lines: dict[Path, int], problems: list[Problem]) -> None:
        self.data = data
        self.lines = lines
        self.problems = problems


def load_located(text: str) -> Located:
    lines: dict[Path, int] = {(): 1}
    problems: list[Problem] = []
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        line = mark.line + 1 if mark else 1
        lines[("(yaml)",)] = line
        msg = " ".join(x for x in (e.context, e.problem) if x)
        problems.append(Problem(("(yaml)",), f"malformed YAML: {msg}"))
        return Located(None, lines, problems)
    except yaml.YAMLError as e:
        problems.append(Problem(("(yaml)",), f"malformed YAML: {e}"))
        return Located(None, lines, problems)
    if node is None:
        return Located({}, lines, problems)
    data = _build(node, (), lines, problems)
    return Located(data, lines, problems)


def _scalar(node: ScalarNode) -> Any:
    # Resolve the scalar exactly as SafeLoader would (ints, bools, nulls, floats).
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


def _build(node: Node, path: Path, lines: dict[Path, int], problems: list[Problem]) -> Any:
    lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, MappingNode):
        out: dict[Any, Any] = {}
        for knode, vnode in node.value:
            if knode.tag == "tag:yaml.org,2002:merge":
                merged = _build(vnode, path, lines, problems)
                if isinstance(merged, dict):
                    for k, v in merged.items():
                        out.setdefault(k, v)
                continue
            key = _build(knode, (*path, "(key)"), {}, problems)
            key = str(key)
            kpath = (*path, key)
            if key in out:
                problems.append(
                    Problem(
                        kpath,
                        f"duplicate key {key!r} (first on line {lines[kpath]})",
                        line=knode.start_mark.line + 1,
                    )
                )
                continue
            lines[kpath] = knode.start_mark.line + 1
            out[key] = _build(vnode, kpath, lines, problems)
        return out
    if isinstance(node, SequenceNode):
        return [_build(v, (*path, i), lines, problems) for i, v in enumerate(node.value)]
    assert isinstance(node, ScalarNode)
    return _scalar(node)

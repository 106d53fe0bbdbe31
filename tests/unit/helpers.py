"""Builders for specs and in-memory topologies (pure data; no engine)."""

from __future__ import annotations

import hashlib
from typing import Any

import yaml

from dockmesh.model.topology import (
    Attachment,
    Container,
    EngineInfo,
    EngineState,
    IpamPool,
    Network,
    Topology,
    build_topology,
)
from dockmesh.projectfile.desired import Desired
from dockmesh.projectfile.facts import Facts
from dockmesh.projectfile.load import LoadedSpec, load_spec
from dockmesh.projectfile.problems import format_problem
from dockmesh.projectfile.schema import parse_spec_partial
from dockmesh.projectfile.validate import validate
from dockmesh.projectfile.yamlpos import load_located


def problems_of(doc: dict[str, Any] | str, facts: Facts | None = None) -> list[str]:
    """Formatted problems ("f:LINE: path: message") of a document."""
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    loc = load_located(text)
    if loc.problems:
        return [format_problem("f", p, loc.lines) for p in loc.problems]
    spec, shape, left_out = parse_spec_partial(loc.data)
    if spec is None:
        return [format_problem("f", p, loc.lines) for p in shape]
    project = spec.project or "p"
    found = [*shape, *validate(spec, project, facts or Facts(), left_out)]
    return [format_problem("f", p, loc.lines) for p in found]


def loaded(tmp_path: Any, doc: dict[str, Any]) -> LoadedSpec:
    path = tmp_path / "dockmesh.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return load_spec(str(path))


def _id(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def simulate_apply(desired: Desired, engine: str = "local", state: str = "running") -> Topology:
    """What the engine would hold after `up`: the desired objects with their labels."""
    st = EngineState(EngineInfo(engine, "unix:///x"))
    for n in desired.networks:
        cfg = n.config
        pools = (IpamPool(cfg["subnet"], cfg["gateway"]),) if cfg["subnet"] else ()
        st.upsert_network(
            Network(
                _id(n.name),
                n.name,
                engine,
                n.driver,
                ipam=pools,
                internal=cfg["internal"],
                labels=dict(n.labels),
            )
        )
    for c in desired.containers:
        atts = tuple(Attachment(_id(a.network), a.network, aliases=a.aliases) for a in c.networks)
        st.upsert_container(
            Container(
                _id(c.name),
                c.name,
                engine,
                c.image,
                state,
                image_id="sha256:img",
                attachments=atts,
                labels=dict(c.labels),
            )
        )
    return build_topology([st], 1)


def empty_topology(engine: str = "local") -> Topology:
    return build_topology([EngineState(EngineInfo(engine, "unix:///x"))], 1)

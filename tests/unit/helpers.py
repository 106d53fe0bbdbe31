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
from dockmesh.projectfile.context import EngineContext
from dockmesh.projectfile.desired import Desired, desired_state
from dockmesh.projectfile.load import LoadedSpec, load_spec
from dockmesh.projectfile.problems import format_problem
from dockmesh.projectfile.schema import parse_spec_partial
from dockmesh.projectfile.validate import validate
from dockmesh.projectfile.yamlpos import load_located


def problems_of(doc: dict[str, Any] | str, facts: EngineContext | None = None) -> list[str]:
    """Formatted problems ("f:LINE: path: message") of a document."""
    text = doc if isinstance(doc, str) else yaml.safe_dump(doc, sort_keys=False)
    loc = load_located(text)
    if loc.problems:
        return [format_problem("f", p, loc.lines) for p in loc.problems]
    spec, shape, left_out = parse_spec_partial(loc.data)
    if spec is None:
        return [format_problem("f", p, loc.lines) for p in shape]
    project = spec.project or "p"
    found = [*shape, *validate(spec, project, facts or EngineContext(), left_out)]
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
        cfg = n.stamped()
        pools = tuple(IpamPool(p.subnet, p.gateway) for p in cfg.ipam)
        st.upsert_network(
            Network(
                _id(n.name),
                n.name,
                engine,
                n.driver,
                ipam=pools,
                internal=cfg.internal,
                labels=dict(cfg.labels),
            )
        )
    for c in desired.containers:
        ccfg = c.stamped()
        cid = _id(c.name)
        hostname = ccfg.hostname or cid[:12]
        atts = tuple(
            Attachment(
                _id(e.network),
                e.network,
                ipv4=e.ipv4_address,
                aliases=(*e.aliases, cid[:12], hostname),
            )
            for e in ccfg.networks
        ) or (Attachment(_id("bridge"), "bridge"),)  # the default bridge, as `docker run`
        st.upsert_container(
            Container(
                cid,
                c.name,
                engine,
                ccfg.image,
                state,
                image_id="sha256:img",
                hostname=hostname,
                attachments=atts,
                labels=dict(ccfg.labels),
            )
        )
    return build_topology([st], 1)


def empty_topology(engine: str = "local") -> Topology:
    return build_topology([EngineState(EngineInfo(engine, "unix:///x"))], 1)


def desired_of(doc: dict[str, Any], facts: EngineContext | None = None) -> Desired:
    """A document's desired state, built from values (no file); fails on any problem."""
    spec, shape, left_out = parse_spec_partial(doc)
    assert spec is not None and not shape, shape
    project = spec.project or "p"
    problems = validate(spec, project, facts or EngineContext(), left_out)
    assert not problems, problems
    return desired_state(spec, project)

"""The keys a Compose user writes: restart, volumes, env_file, limits, deploy, the default
network, depends_on conditions; their validation, desired state, plan and apply."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.engine.memory import MemoryEngine
from dockmesh.errors import EngineError, Interrupted, SpecError
from dockmesh.model.config import ContainerConfig, MountConfig
from dockmesh.model.labels import LABEL_PROJECT
from dockmesh.model.topology import build_topology
from dockmesh.ops.apply import Waiting, apply_plan, wait_healthy
from dockmesh.projectfile.context import EngineContext
from dockmesh.projectfile.load import MAX_DOTENV_BYTES, load_spec
from dockmesh.projectfile.parse import parse_bytes, parse_restart, parse_volume
from dockmesh.projectfile.plan import Step, make_plan, teardown_plan
from dockmesh.projectfile.schema import ServiceSpec, parse_spec_partial, with_default_network
from tests.unit.helpers import desired_of, empty_topology, problems_of


def svc(**fields: Any) -> dict[str, Any]:
    return {"image": "dockmesh/toolbox", **fields}


def one(doc: dict[str, Any]) -> ContainerConfig:
    return desired_of(doc).containers[0].config


# --- parsers --------------------------------------------------------------------------------


def test_restart_policies() -> None:
    assert parse_restart("always") == ("always", 0)
    assert parse_restart("on-failure:5") == ("on-failure", 5)
    for bad in ("sometimes", "always:3", "on-failure:x", "on-failure:"):
        with pytest.raises(ValueError, match=r"restart|count|whole"):
            parse_restart(bad)


def test_volume_forms() -> None:
    assert parse_volume("data:/var/lib/db").kind == "volume"
    assert parse_volume("./site:/site:ro") == parse_volume("./site:/site:ro")
    m = parse_volume("/etc/hosts:/h:ro")
    assert (m.kind, m.source, m.target, m.read_only) == ("bind", "/etc/hosts", "/h", True)
    assert parse_volume("/scratch").source == ""
    for bad in ("data:rel", "data:/x:rx", "a:b:c:d", "data:", "/x:ro"):
        with pytest.raises(ValueError, match=r"expected|mode|absolute"):
            parse_volume(bad)


@given(st.integers(0, 2**40), st.sampled_from(["", "b", "k", "m", "g", "K", "M", "G"]))
def test_sizes(n: int, unit: str) -> None:
    scale = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}[unit.lower()]
    assert parse_bytes(f"{n}{unit}") == n * scale


# --- validation -----------------------------------------------------------------------------


def test_the_keys_are_checked_in_plain_words() -> None:
    doc = {
        "services": {
            "w": svc(
                restart="sometimes",
                working_dir="app",
                cap_add=["NET ADMIN"],
                tmpfs="tmp",
                mem_limit="lots",
                cpus=0,
                volumes=["dta:/data", "./x:/data"],
                depends_on={"db": {"condition": "service_healthy"}},
            ),
            "db": svc(),
        },
        "volumes": {"data": None},
    }
    out = "\n".join(problems_of(doc))
    assert "services.w.restart: 'sometimes': a restart policy is no, always" in out
    assert "services.w.working_dir: 'app': an absolute path" in out
    assert "services.w.cap_add.0: 'NET ADMIN' is not a capability name" in out
    assert "services.w.tmpfs: 'tmp': an absolute path" in out
    assert "services.w.mem_limit: 'lots' is not a size" in out
    assert "services.w.cpus: 0: a number of CPUs between" in out
    assert (
        "services.w.volumes.0: unknown volume 'dta' (not under the top-level volumes:); "
        "did you mean 'data'?"
    ) in out
    assert "services.w.volumes.1: /data is already mounted by volumes.0" in out
    assert "services.w.depends_on.db.condition: service_healthy: 'db' has no healthcheck" in out


def test_service_healthy_on_a_healthcheck_turned_off_is_refused() -> None:
    # It planned, then `up` made the dependency and failed waiting: "it has no healthcheck".
    doc = {"services": {
        "db": svc(healthcheck={"test": ["NONE"]}),
        "web": svc(depends_on={"db": {"condition": "service_healthy"}}),
    }}  # fmt: skip
    assert problems_of(doc) == [
        "f:11: services.web.depends_on.db.condition: service_healthy: 'db' turns its "
        "healthcheck off (test: [NONE]); give it one, or use service_started"
    ]


def test_service_healthy_on_a_service_scaled_to_nothing_is_refused() -> None:
    # It neither waited nor warned: the dependent started beside nothing.
    doc = {"services": {
        "db": svc(replicas=0, healthcheck={"test": ["CMD", "true"]}),
        "web": svc(depends_on={"db": {"condition": "service_healthy"}}),
    }}  # fmt: skip
    out = problems_of(doc)
    assert len(out) == 1 and out[0].endswith(
        "services.web.depends_on.db.condition: service_healthy: 'db' has replicas: 0, so none "
        "of it can be healthy; give it a replica, or use service_started"
    ), out


@given(st.integers(0, 3), st.integers(0, 3), st.booleans())
def test_service_healthy_on_nothing_is_refused_only_when_something_waits(
    dependent: int, dependency: int, deploy: bool
) -> None:
    # Both scaled to 0 (a stack stopped in its file, depends_on kept) was refused too,
    # though nothing of the dependent runs to wait.
    scaled = {"deploy": {"replicas": dependency}} if deploy else {"replicas": dependency}
    doc = {"services": {
        "db": svc(**scaled, healthcheck={"test": ["CMD", "true"]}),
        "web": svc(replicas=dependent, depends_on={"db": {"condition": "service_healthy"}}),
    }}  # fmt: skip
    refused = any("has replicas: 0" in p for p in problems_of(doc))
    assert refused == (dependency == 0 and dependent > 0)


def test_restart_no_unquoted_and_deploy() -> None:
    doc = {"services": {"w": svc(restart=False, deploy={"replicas": 2, "resources": {
        "limits": {"cpus": "0.5", "memory": "64m"}}})}}  # fmt: skip
    d = desired_of(doc)
    assert len(d.containers) == 2
    c = d.containers[0].config
    assert (c.restart, c.nano_cpus, c.memory_bytes) == ("no", 500_000_000, 64 << 20)
    both = {"services": {"w": svc(replicas=1, deploy={"replicas": 2})}}
    assert any("replicas and deploy.replicas differ" in p for p in problems_of(both))
    assert not any("Value error" in p for p in problems_of(both))


@pytest.mark.parametrize(
    ("value", "said"), [(-1, "greater than or equal to 0"), ("x", "not the text 'x'")]
)
def test_a_wrong_deploy_replicas_is_said_once_where_it_is(value: object, said: str) -> None:
    # It was said twice, the second time at services.w.replicas, a key the file has not.
    doc = {"services": {"w": svc(deploy={"replicas": value})}}
    (problem,) = problems_of(doc)
    assert problem.startswith("f:5: services.w.deploy.replicas: ") and said in problem
    twice = {
        "services": {"w": svc(mem_limit="64m", deploy={"resources": {"limits": {"memory": 1}}})}
    }
    out = "\n".join(problems_of(twice))
    assert "give mem_limit or deploy.resources.limits.memory, not both" in out
    assert "deploy.resources.limits.memory: 1: the engine takes at least 6m" in out


# --- desired state, plan --------------------------------------------------------------------


def test_container_settings() -> None:
    doc = {
        "project": "p",
        "services": {
            "w": svc(
                restart="on-failure:3",
                user="1000:1000",
                working_dir="/app",
                cap_add=["NET_ADMIN"],
                cap_drop=["ALL"],
                tmpfs=["/run", "/tmp:size=64m"],
                init=True,
                volumes=["data:/data", "/srv/site:/site:ro", "/scratch"],
            )
        },
        "volumes": {"data": {"labels": {"team": "db"}}},
    }
    d = desired_of(doc)
    c = d.containers[0].config
    assert (c.restart, c.user, c.working_dir, c.init) == ("on-failure:3", "1000:1000", "/app", True)
    assert (c.cap_add, c.cap_drop, c.tmpfs) == (("NET_ADMIN",), ("ALL",), ("/run", "/tmp:size=64m"))
    assert c.mounts == (
        MountConfig("volume", "p_data", "/data"),
        MountConfig("bind", "/srv/site", "/site", True),
        MountConfig("volume", "", "/scratch"),
    )
    assert [(v.name, dict(v.labels)) for v in d.volumes] == [
        ("p_data", {"team": "db", LABEL_PROJECT: "p"})
    ]
    assert ContainerConfig.from_json(c.to_json()) == c


def test_a_container_without_the_new_keys_keeps_its_json() -> None:
    c = one({"services": {"w": svc()}})
    assert set(c.to_json()) == {
        "name", "image", "command", "entrypoint", "environment", "hostname", "networks",
        "network_mode", "ports", "healthcheck", "labels",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("before", "after", "field"),
    [
        ({"restart": "always"}, {"restart": "no"}, "restart"),
        ({}, {"restart": "always"}, "restart"),
        ({"volumes": ["data:/data"]}, {"volumes": ["data:/var/data"]}, "mounts"),
        ({"mem_limit": "64m"}, {"mem_limit": "128m"}, "memory_bytes"),
    ],
)
def test_a_changed_setting_replaces_the_container(
    before: dict[str, Any], after: dict[str, Any], field: str
) -> None:
    def doc(extra: dict[str, Any]) -> dict[str, Any]:
        return {"project": "p", "services": {"w": svc(**extra)}, "volumes": {"data": None}}

    mem = MemoryEngine()
    first = desired_of(doc(before))
    apply_plan(mem, make_plan(first, build_topology([mem.snapshot()], 1)))
    live = build_topology([mem.snapshot()], 1)
    plan = make_plan(desired_of(doc(after)), live, volumes=mem.volumes(f"{LABEL_PROJECT}=p"))
    assert [(c.action, c.reason) for c in plan.changes] == [("replace", f"changed: {field}")]


def test_volumes_are_made_once_and_removed_only_when_asked() -> None:
    doc = {"project": "p", "services": {"w": svc(volumes=["data:/d"])}, "volumes": {"data": {}}}
    mem = MemoryEngine()
    d = desired_of(doc)
    plan = make_plan(d, build_topology([mem.snapshot()], 1))
    assert ("create", "volume", "p_data") in [(c.action, c.kind, c.name) for c in plan.changes]
    apply_plan(mem, plan)
    owned = mem.volumes(f"{LABEL_PROJECT}=p")
    again = make_plan(d, build_topology([mem.snapshot()], 1), volumes=owned)
    assert again.empty
    live = build_topology([mem.snapshot()], 1)
    apply_plan(mem, teardown_plan("p", live))
    assert list(mem.volumes(f"{LABEL_PROJECT}=p")) == ["p_data"]
    live = build_topology([mem.snapshot()], 1)
    down = teardown_plan("p", live, volumes=mem.volumes(f"{LABEL_PROJECT}=p"))
    assert [c.kind for c in down.changes] == ["volume"]
    apply_plan(mem, down)
    assert mem.volumes(f"{LABEL_PROJECT}=p") == {}


def test_a_failed_up_removes_the_volumes_it_made() -> None:
    doc = {"project": "p", "services": {"w": svc(volumes=["data:/d"])}, "volumes": {"data": {}}}
    mem = MemoryEngine()
    mem.fail("create_container", "p-w-1")
    with pytest.raises(EngineError, match="rolled back"):
        apply_plan(mem, make_plan(desired_of(doc), empty_topology()))
    assert mem.volumes(f"{LABEL_PROJECT}=p") == {}


# --- the default network --------------------------------------------------------------------


def test_services_without_networks_share_the_default_network() -> None:
    doc = {
        "project": "p",
        "networks": {"back": {}},
        "services": {"a": svc(), "b": svc(networks=["back"]), "h": svc(network_mode="host")},
    }
    spec, shape, _ = parse_spec_partial(doc)
    assert spec is not None and not shape
    spec = with_default_network(spec)
    assert list(spec.networks) == ["back", "default"]
    a = spec.services["a"].networks["default"]
    assert a is not None and a.aliases == ["a"]
    assert list(spec.services["b"].networks) == ["back"]
    assert spec.services["h"].networks == {}
    none = {"services": {"b": svc(network_mode="none")}}
    spec, _, _ = parse_spec_partial(none)
    assert spec is not None and with_default_network(spec).networks == {}


def test_the_file_may_configure_the_default_network(tmp_path: Path) -> None:
    path = tmp_path / "dockmesh.yaml"
    doc = {"project": "p", "networks": {"default": {"internal": True}}, "services": {"a": svc()}}
    path.write_text(yaml.safe_dump(doc))
    d = load_spec(str(path), env={}).check(EngineContext())
    assert [(n.name, n.config.internal) for n in d.networks] == [("p_default", True)]
    assert d.containers[0].config.networks[0].network == "p_default"


# --- files beside the topology file ---------------------------------------------------------


def test_env_file_and_bind_sources_are_read_beside_the_file(tmp_path: Path) -> None:
    (tmp_path / "app.env").write_text("A=from-file\nB=from-file\n")
    doc = {"project": "p", "services": {"w": svc(
        env_file="app.env", environment={"B": "mine"}, volumes=["./site:/site"])}}  # fmt: skip
    (tmp_path / "dockmesh.yaml").write_text(yaml.safe_dump(doc))
    c = load_spec(str(tmp_path / "dockmesh.yaml"), env={}).check(EngineContext()).containers[0]
    assert dict(c.config.environment) == {"A": "from-file", "B": "mine"}
    assert c.config.mounts == (MountConfig("bind", str(tmp_path / "site"), "/site"),)


def test_a_missing_env_file_is_located(tmp_path: Path) -> None:
    (tmp_path / "dockmesh.yaml").write_text(
        "services:\n  w:\n    image: x\n    env_file: [nope.env]\n"
    )
    with pytest.raises(
        SpecError, match=r"dockmesh.yaml:4: services.w.env_file.0: nope.env: cannot"
    ):
        load_spec(str(tmp_path / "dockmesh.yaml"), env={}).check(EngineContext())


def problems_with_env_file(folder: Path, name: str) -> str:
    (folder / "dockmesh.yaml").write_text(
        f"services:\n  w:\n    image: x\n    env_file: [{name}]\n"
    )
    with pytest.raises(SpecError) as e:
        load_spec(str(folder / "dockmesh.yaml"), env={}).check(EngineContext())
    return "\n".join(e.value.lines)


def test_an_env_file_that_is_no_regular_file_is_refused_not_read(tmp_path: Path) -> None:
    # A FIFO blocked the read forever (a device would never end); a folder is said so.
    os.mkfifo(tmp_path / "fifo.env")
    (tmp_path / "folder.env").mkdir()
    for name, said in (("fifo.env", "not a regular file"), ("folder.env", "a folder")):
        assert problems_with_env_file(tmp_path, name) == (
            f"{tmp_path}/dockmesh.yaml:4: services.w.env_file.0: {name}: cannot be read: {said}"
        )


def test_an_empty_env_file_path_is_said_to_be_empty(tmp_path: Path) -> None:
    # Joined to the file's folder, it was reported as "a folder".
    for name in ('""', "' '"):
        assert problems_with_env_file(tmp_path, name) == (
            f"{tmp_path}/dockmesh.yaml:4: services.w.env_file.0: an empty path: "
            "name a NAME=value file"
        )


def test_an_env_file_too_large_is_refused_not_cut_short(tmp_path: Path) -> None:
    # It was read up to 1 MiB and the rest dropped without a word.
    (tmp_path / "big.env").write_text("A=1\n" + "#" * MAX_DOTENV_BYTES + "\nLAST=1\n")
    assert problems_with_env_file(tmp_path, "big.env").endswith(
        "big.env: cannot be read: larger than 1 MiB"
    )


def test_an_env_file_not_utf8_names_its_line(tmp_path: Path) -> None:
    (tmp_path / "bad.env").write_bytes(b"A=1\nB=\xff\n")
    assert problems_with_env_file(tmp_path, "bad.env").endswith(
        "bad.env: cannot be read (line 2): not UTF-8; save the file as UTF-8"
    )
    (tmp_path / ".env").write_bytes(b"A=1\n\nB=\xff\n")
    (tmp_path / "dockmesh.yaml").write_text("services: {}\n")
    with pytest.raises(SpecError) as e:
        load_spec(str(tmp_path / "dockmesh.yaml"), env={})
    assert e.value.lines == [f"{tmp_path}/.env:3: (file): not UTF-8; save the file as UTF-8"]


# --- depends_on: service_healthy ------------------------------------------------------------


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_the_dependent_waits_for_health() -> None:
    doc = {
        "project": "p",
        "services": {
            "db": svc(healthcheck={"tcp": True, "port": 5432}),
            "web": svc(depends_on={"db": {"condition": "service_healthy"}}),
        },
    }
    d = desired_of(doc)
    assert [c.wait_for for c in d.containers] == [(), ("p-db-1",)]
    mem = MemoryEngine()
    t = FakeTime()
    seen: list[float] = []

    def sleep(s: float) -> None:
        t.sleep(s)
        seen.append(t.now)
        if t.now >= 2:
            mem.set_health(mem.container("p-db-1").id, "healthy")  # type: ignore[union-attr]

    def progress(step: Step) -> None:
        # As the engine reports a container with a healthcheck that has just started.
        if step.name == "p-web-1":
            mem.set_health(mem.container("p-db-1").id, "starting")  # type: ignore[union-attr]

    waiting = Waiting(timeout_s=10, poll_s=0.5, clock=t.clock, sleep=sleep)
    apply_plan(mem, make_plan(d, empty_topology()), progress, waiting=waiting)
    assert seen == [0.5, 1.0, 1.5, 2.0]
    assert mem.container("p-web-1") is not None


def test_an_unhealthy_or_slow_dependency_fails_the_up() -> None:
    mem = MemoryEngine()
    cid = mem.create_container("p-db-1")
    mem.start(cid)
    mem.set_health(cid, "starting")
    t = FakeTime()
    with pytest.raises(EngineError, match="not healthy after 3s"):
        wait_healthy(mem, ("p-db-1",), Waiting(timeout_s=3, clock=t.clock, sleep=t.sleep))
    mem.set_health(cid, "unhealthy")
    with pytest.raises(EngineError, match="p-db-1 is unhealthy"):
        wait_healthy(mem, ("p-db-1",), Waiting(clock=t.clock, sleep=t.sleep))


def test_ctrl_c_ends_the_wait_for_health_at_once() -> None:
    # The first Ctrl-C asks to stop "after the current step": the wait for a dependency's
    # health went on up to its 300 s, and the dependent was started after it.
    doc = {
        "project": "p",
        "services": {
            "db": svc(healthcheck={"tcp": True, "port": 5432}),
            "web": svc(depends_on={"db": {"condition": "service_healthy"}}),
        },
    }
    mem = MemoryEngine()
    t = FakeTime()

    def progress(step: Step) -> None:
        if step.name == "p-web-1":
            mem.set_health(mem.container("p-db-1").id, "starting")  # type: ignore[union-attr]

    def should_stop() -> bool:
        return t.now >= 2

    waiting = Waiting(clock=t.clock, sleep=t.sleep)
    plan = make_plan(desired_of(doc), empty_topology())
    with pytest.raises(Interrupted, match="stopped before starting container p-web-1"):
        apply_plan(mem, plan, progress, should_stop, waiting=waiting)
    assert t.now == 2 and mem.container("p-web-1") is None
    assert mem.container("p-db-1") is not None  # as between two steps: `up` again goes on


# --- messages -------------------------------------------------------------------------------


def test_did_you_mean_and_types_in_plain_words() -> None:
    doc = {
        "servics": {},
        "services": {
            "w": svc(
                helthcheck={},
                logging={},
                command=5,
                labels={"a": 1},
                healthcheck={"tcp": True, "port": 1, "interval": 2},
                deploy={"resources": {"limits": {"memmory": "1g"}}},
            )
        },
    }
    out = problems_of(doc)
    assert "f:1: servics: unknown key; did you mean 'services'?" in out
    assert "f:5: services.w.helthcheck: unknown key; did you mean 'healthcheck'?" in out
    assert "f:6: services.w.logging: unknown key: a Compose key dockmesh does not take (yet)" in out
    assert (
        'f:7: services.w.command: must be text or a list, not the number 5 (quote it: "5")' in out
    )
    assert 'f:9: services.w.labels.a: must be text, not the number 1 (quote it: "1")' in out
    assert (
        "f:13: services.w.healthcheck.interval: must be a duration with a unit, like 2s "
        "(not the bare number 2)"
    ) in out
    assert (
        "f:17: services.w.deploy.resources.limits.memmory: unknown key; did you mean 'memory'?"
        in out
    )


@given(st.from_regex(r"[a-z_]{3,12}", fullmatch=True))
def test_a_suggestion_is_always_a_key_the_place_takes(key: str) -> None:
    out = problems_of({"services": {"w": svc(**{key: 1})}})
    for line in out:
        if "did you mean" in line:
            suggested = line.rsplit("'", 2)[-2]
            assert suggested in ServiceSpec.model_fields


def test_a_policy_may_name_the_default_network() -> None:
    doc = {"services": {"a": svc()}, "policy": {"networks": {"default": {"default": "deny"}}}}
    assert problems_of(doc) == []
    named = {"services": {"a": svc(network_mode="host")}, "policy": {"networks": {"default": {}}}}
    assert any("default" in p for p in problems_of(named))


def test_a_volume_of_another_maker_is_used_and_said() -> None:
    doc = {"project": "p", "services": {"w": svc(volumes=["data:/d"])}, "volumes": {"data": {}}}
    plan = make_plan(desired_of(doc), empty_topology(), volumes={"p_data": {"other": "x"}})
    assert [c.kind for c in plan.changes] == ["container"]
    assert plan.warnings[0].startswith("volume p_data is on the engine already and not of")


def test_an_env_file_named_by_many_services_is_read_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each service read it again: 300 services and a 1 MB file took 6 s and 325 MiB.
    from dockmesh.projectfile import load

    (tmp_path / "app.env").write_text("A=1\n")
    reads: list[str] = []
    real = load.read_env_file

    def counted(path: str) -> str:
        reads.append(path)
        return real(path)

    monkeypatch.setattr(load, "read_env_file", counted)
    doc = {"services": {f"s{i}": svc(env_file=["app.env", "./app.env"]) for i in range(50)}}
    (tmp_path / "dockmesh.yaml").write_text(yaml.safe_dump(doc))
    desired = load_spec(str(tmp_path / "dockmesh.yaml"), env={}).check(EngineContext())
    assert {dict(c.config.environment)["A"] for c in desired.containers} == {"1"}
    assert len(reads) == 2  # `app.env` and `./app.env`: each once

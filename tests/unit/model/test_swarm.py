"""Swarm task containers: which labels make a task, which name it registers under, which of
its addresses may be registered."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.catalog.containers import derive
from dockmesh.model.labels import (
    COMPOSE_SERVICE,
    LABEL_DISCOVERY_NETWORK,
    LABEL_DISCOVERY_PORT,
    LABEL_DISCOVERY_SERVICE,
    SWARM_NODE_ID,
    SWARM_SERVICE_ID,
    SWARM_SERVICE_NAME,
    SWARM_TASK_ID,
    SWARM_TASK_NAME,
    service_of,
)
from dockmesh.model.swarm import (
    GATEWAY_BRIDGE,
    META_SWARM_NODE,
    META_SWARM_SERVICE,
    META_SWARM_TASK,
    discovery_labels,
    routable,
    task_of,
)
from dockmesh.model.topology import Attachment, Container, Network

# What an engine wrote on a task of `docker service create --name web --replicas 3` (seen on
# a lab's worker), the container labels of `--container-label dockmesh.port=8080` beside them.
TASK = {
    SWARM_NODE_ID: "0iuewm383evunm10fnrjyocrd",
    SWARM_SERVICE_ID: "hvc0p91ea90ruhodmhb8m06v2",
    SWARM_SERVICE_NAME: "web",
    "com.docker.swarm.task": "",
    SWARM_TASK_ID: "pl2ffh2l15gxcxc51n7ffb2t6",
    SWARM_TASK_NAME: "web.2.pl2ffh2l15gxcxc51n7ffb2t6",
}
PORT = {LABEL_DISCOVERY_PORT: "8080"}

OVERLAY = Network("ov-id", "ov", "h2", "overlay", scope="swarm")
INGRESS = Network("ing-id", "ingress", "h2", "overlay", scope="swarm", ingress=True)
GWBRIDGE = Network("gw-id", GATEWAY_BRIDGE, "h2", "bridge")
OTHER = Network("other-id", "back", "h2", "overlay", scope="swarm")
NETWORKS = {n.id: n for n in (OVERLAY, INGRESS, GWBRIDGE, OTHER)}


def task_ctr(labels: dict[str, str], nets: tuple[Network, ...] = (OVERLAY, INGRESS)) -> Container:
    addr = {
        "ov": "10.0.1.4",
        "ingress": "10.0.0.6",
        GATEWAY_BRIDGE: "172.18.0.3",
        "back": "10.0.2.9",
    }
    return Container(
        "c" * 64,
        "web.2.pl2ffh2l15gxcxc51n7ffb2t6",
        "h2",
        "img",
        "running",
        pid=4242,
        attachments=tuple(Attachment(n.id, n.name, ipv4=addr[n.name]) for n in nets),
        labels=labels,
    )


names = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)
label_maps = st.dictionaries(
    st.sampled_from(
        [
            SWARM_SERVICE_NAME,
            SWARM_TASK_ID,
            SWARM_TASK_NAME,
            SWARM_NODE_ID,
            LABEL_DISCOVERY_SERVICE,
            LABEL_DISCOVERY_PORT,
            "other",
        ]
    ),
    st.text(max_size=8),
)


@given(label_maps)
def test_discovery_labels_only_ever_add_the_service_name_of_a_task(labels: dict[str, str]) -> None:
    out = discovery_labels(labels)
    added = {k: v for k, v in out.items() if labels.get(k) != v}
    task = task_of(labels)
    if (
        task is not None
        and LABEL_DISCOVERY_PORT in labels
        and LABEL_DISCOVERY_SERVICE not in labels
    ):
        assert added == {LABEL_DISCOVERY_SERVICE: task.service}
    else:
        assert out == labels
    assert all(out[k] == v for k, v in labels.items())  # nothing the user wrote is changed


@given(names, names)
def test_the_explicit_label_wins_over_the_swarm_service_name(service: str, label: str) -> None:
    own = {**TASK, SWARM_SERVICE_NAME: service, **PORT}
    assert discovery_labels(own)[LABEL_DISCOVERY_SERVICE] == service
    chosen = {**own, LABEL_DISCOVERY_SERVICE: label}
    assert discovery_labels(chosen)[LABEL_DISCOVERY_SERVICE] == label


@given(st.text(max_size=6), st.text(max_size=6))
def test_a_task_needs_a_service_name_and_a_task_id(service: str, task_id: str) -> None:
    task = task_of({SWARM_SERVICE_NAME: service, SWARM_TASK_ID: task_id})
    assert (task is not None) == bool(service.strip() and task_id.strip())


@given(
    st.lists(
        st.sampled_from([OVERLAY, INGRESS, GWBRIDGE, OTHER]), min_size=1, unique_by=lambda n: n.id
    ),
    st.booleans(),
)
def test_the_registered_address_is_never_the_ingress_or_the_gateway_bridge(
    nets: list[Network], pick_other: bool
) -> None:
    labels = {**TASK, **PORT}
    if pick_other:
        labels[LABEL_DISCOVERY_NETWORK] = "back"
    d, warnings = derive(task_ctr(labels, tuple(nets)), "h2", networks=NETWORKS)
    candidates = [n for n in nets if n in (OVERLAY, OTHER)]
    if pick_other:
        expected = "back" if OTHER in nets else None
    else:
        expected = candidates[0].name if len(candidates) == 1 else None
    if expected is None:
        assert d is None and len(warnings) == 1
    else:
        assert d is not None and warnings == []
        assert d.instance.network == expected
        assert d.instance.network not in ("ingress", GATEWAY_BRIDGE)
    for n in nets:
        assert routable(Attachment(n.id, n.name), n) == (n in (OVERLAY, OTHER))


def test_a_task_is_an_instance_of_its_service_on_its_overlay_address() -> None:
    d, warnings = derive(task_ctr({**TASK, **PORT}), "h2", networks=NETWORKS)
    assert warnings == [] and d is not None
    inst = d.instance
    assert (inst.service, inst.address, inst.port, inst.network) == ("web", "10.0.1.4", 8080, "ov")
    assert inst.meta[META_SWARM_SERVICE] == "web"
    assert inst.meta[META_SWARM_TASK] == "web.2.pl2ffh2l15gxcxc51n7ffb2t6"
    assert inst.meta[META_SWARM_NODE] == "0iuewm383evunm10fnrjyocrd"
    assert inst.pid == 4242 and inst.engine == "h2"


def test_a_task_checks_from_its_own_namespace_on_its_overlay_address() -> None:
    labels = {**TASK, **PORT, "dockmesh.check.http": "/ok"}
    d, _ = derive(task_ctr(labels), "h2", networks=NETWORKS)
    assert d is not None
    (check,) = d.checks
    assert check.http == "http://10.0.1.4:8080/ok" and check.netns_pid == 4242


def test_a_task_without_a_port_is_not_registered_and_not_warned_about() -> None:
    assert derive(task_ctr(dict(TASK)), "h2", networks=NETWORKS) == (None, [])


def test_an_empty_service_label_is_reported_not_replaced() -> None:
    d, warnings = derive(
        task_ctr({**TASK, **PORT, LABEL_DISCOVERY_SERVICE: " "}), "h2", networks=NETWORKS
    )
    assert d is None and "dockmesh.service is empty" in warnings[0]


def test_a_tasks_service_is_its_swarm_service_after_every_explicit_name() -> None:
    assert service_of(TASK) == "web"
    assert service_of({**TASK, COMPOSE_SERVICE: "api"}) == "api"
    assert service_of({**TASK, LABEL_DISCOVERY_SERVICE: "front"}) == "front"

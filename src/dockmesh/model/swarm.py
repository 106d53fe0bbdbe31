"""Docker Swarm's task containers, read from the labels the engine writes on them. Pure.

A task of `docker service create --replicas 3 --network OV …` is a container on the node that
runs it, labelled by that node's engine with its service's name and id and the task's id and
name. It is an instance of its service in the catalog when it says which port
(`dockmesh.port`, a container label: `--container-label dockmesh.port=8080`):

- its name is `dockmesh.service` when the container carries it
  (`--container-label dockmesh.service=web`), else the swarm service's name. The explicit
  label wins, as it does on every container: `docker stack deploy` names services
  `<stack>_<name>`, and the label is how a user picks the name clients ask for. A service's
  own labels (`--label`) are not read: the engine does not copy them onto the task's
  container, and a worker's engine refuses to list services (only a manager may), so the
  agent on the host the task runs on could never see them;
- its address is the task's IP on its own network(s): never on the routing mesh's ingress
  network (`Ingress: true`: the published ports' load balancer, not this task) nor on
  `docker_gwbridge` (each node's own way out, a local bridge). With several networks left,
  `dockmesh.network` picks one, as on any container.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from dockmesh.model.labels import (
    LABEL_DISCOVERY_PORT,
    LABEL_DISCOVERY_SERVICE,
    SWARM_NODE_ID,
    SWARM_SERVICE_ID,
    SWARM_SERVICE_NAME,
    SWARM_TASK_ID,
    SWARM_TASK_NAME,
)
from dockmesh.model.topology import Attachment, Network

# The bridge Docker gives every swarm task for traffic off the node; one per host.
GATEWAY_BRIDGE = "docker_gwbridge"

# The instance Meta keys a task's instance carries (Consul's keys: letters, digits, - and _).
META_SWARM_SERVICE = "swarm-service"
META_SWARM_TASK = "swarm-task"
META_SWARM_NODE = "swarm-node"


@dataclass(frozen=True, slots=True)
class SwarmTask:
    """A swarm task, as its container's labels say."""

    service: str
    task_id: str
    service_id: str = ""
    task_name: str = ""
    node_id: str = ""

    def meta(self) -> dict[str, str]:
        out = {META_SWARM_SERVICE: self.service, META_SWARM_TASK: self.task_name or self.task_id}
        if self.node_id:
            out[META_SWARM_NODE] = self.node_id
        return out


def task_of(labels: Mapping[str, str]) -> SwarmTask | None:
    """The swarm task a container is, or None: it needs its service's name and its task id
    (anyone can label a container, so both are read as given, stripped)."""
    service = (labels.get(SWARM_SERVICE_NAME) or "").strip()
    task_id = (labels.get(SWARM_TASK_ID) or "").strip()
    if not service or not task_id:
        return None
    return SwarmTask(
        service=service,
        task_id=task_id,
        service_id=(labels.get(SWARM_SERVICE_ID) or "").strip(),
        task_name=(labels.get(SWARM_TASK_NAME) or "").strip(),
        node_id=(labels.get(SWARM_NODE_ID) or "").strip(),
    )


def discovery_labels(labels: Mapping[str, str]) -> Mapping[str, str]:
    """The labels to read discovery from: a task that names its port but not its catalog
    name is named after its swarm service; anything else as it is (a task without
    `dockmesh.port` does not register: nothing says which port, and a swarm's every task
    would otherwise warn). An empty `dockmesh.service` stays empty: that is the user's
    mistake to hear about, not a cue to pick another name."""
    task = task_of(labels)
    if task is None or LABEL_DISCOVERY_PORT not in labels or LABEL_DISCOVERY_SERVICE in labels:
        return labels
    return {**labels, LABEL_DISCOVERY_SERVICE: task.service}


def routable(a: Attachment, network: Network | None) -> bool:
    """Whether a container's attachment can be its registered address: not the swarm's
    ingress network (its address there is the routing mesh's) nor `docker_gwbridge`."""
    if a.network == GATEWAY_BRIDGE:
        return False
    return network is None or not network.ingress

"""Network policy between containers, enforced in the kernel, and why A can or cannot reach B.

Semantics (for the README)
==========================

A policy says which containers may open connections to which, like Kubernetes
NetworkPolicy, on a plain Docker host::

    policy:
      default: allow                   # between containers, where no rule matches
      networks: {backend: {default: deny}}
      rules:
        - {from: {service: gateway}, to: {service: api}, ports: [8080/tcp]}
        - {from: {service: api}, to: {network: database}, ports: [5432/tcp]}

- **Who.** A selector chooses containers by `service` (the catalog's `dockmesh.service`, a
  dockmesh project's service, or a Docker Compose service), `container` (its name),
  `network`, `label` (`k=v`, or `k` for any value) and `project`. Every key given must hold;
  `{}` chooses every container; a list of selectors is a union. A `network` key chooses a
  container's address *on that network*: a container on two networks is chosen only for the
  traffic that travels on the network named.
- **Names.** In a topology file, network and service names are the file's own short names
  (`backend` is `<project>_backend`, `service: api` is this project's `api`; give `project:` to
  name another project's). In a policy file alone, names are the engine's.
- **Deny wins, then allows add up.** A `deny` rule (`action: deny`) that covers a connection
  drops it whatever the allow rules say. Else a connection from A to B on a port is allowed
  when any allow rule's `from` chooses A, its `to` chooses B and its `ports` cover the port
  (no `ports`: every protocol and port). Otherwise the default of the network the connection
  travels on decides (`networks:`), else the policy's `default` (allow when not given). Order
  in the file does not matter.
- **Addresses.** `{cidr: NET}` and `world` (outside every network of the engines) choose
  addresses, not containers: egress to the outside and ingress from it.
- **Identity bound to the port.** An address counts as a container's only when it arrives on
  that container's bridge port: a forged source, or a new container on a removed one's
  address before the agent has seen it, matches no allow rule (see `compile`).
- **IPv6 as IPv4**, neighbour discovery always allowed; Docker's isolation (between networks,
  internal, icc=false) applied to IPv6 for every bridge while a policy is applied.
- **Ports.** `8080/tcp`, `8080` (TCP), `9000-9100/udp`, `sctp`/`tcp`/`udp` (every port of the
  protocol), `icmp` (ping).
- **Return traffic** of an allowed connection is always allowed (connection tracking), so a
  rule is written in the direction the connection is opened; connections already open when a
  policy is applied go on.
- **Published ports** are judged as the connection to the container: through DNAT (forward
  hook) and through Docker's proxy from another container (input hook). A policy never opens
  what Docker closes: networks still isolate each other, `internal` networks still reach
  nothing outside, `enable_icc=false` still separates a bridge's containers.
- **Fail closed.** A network default of `deny` (and a policy default of `deny`, also against
  every bridge named `br-*`) is written against the networks' subnets, so a container that
  starts is denied at once; it is allowed once the agent has seen it start and added its
  address and port to the sets (well under a second). Without an agent running, a `policy
  apply` covers the containers that exist then (docs/topology-file.md says exactly what holds).
- **Audit mode** (`--mode audit`) drops nothing: what would be dropped is counted and logged
  (kernel log, prefix `dockmesh-audit`), and `dockmesh policy show` lists the counters.
- **Every drop named.** `dockmesh policy log` lists each flow a rule dropped (audit: would
  have dropped) in the last minute, by source and destination container, port and rule, from
  sets the kernel fills as it drops (no kernel log to parse); the agent's /metrics counts them.

How it is built
===============

- `dockmesh.model.policy` (pure): the policy as values, read from either kind of file with
  every problem located.
- `compile` (pure): policy + topology (+ each container's bridge port) → a `Ruleset` as data:
  tables `inet dockmesh` (forward and input chains before Docker's filter, established/related
  accepted first, rules between named containers as concatenated sets) and `bridge dockmesh`
  (the port binding). Rules depend on the policy alone, set elements on the topology alone,
  so a container that comes or goes is a set element update, never a reload.
- `evaluate` (pure): what a ruleset does with one packet (the tests' oracle against the
  model's verdict in `decide`).
- `reach` (pure): the ordered steps of `dockmesh why` over the topology, the policy and what
  was observed in the namespaces.
- `nft` and `enforce`: one `nft -j -f -` transaction per change; `store`: the applied policy.
- `droplog` (pure): the drop logs' flows read back and named; `dropmetrics`: them on /metrics.
- `project` (pure): a topology file's policy under `plan`, `up` and `down`.
"""

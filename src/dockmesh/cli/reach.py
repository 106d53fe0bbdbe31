"""`dockmesh why SRC DST` and `dockmesh matrix`: reachability, explained and observed."""

from __future__ import annotations

import time
from collections.abc import Hashable
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from dockmesh.cli.common import (
    EXIT_FAILED,
    EngineOpt,
    JsonOpt,
    UserError,
    finite,
    handle_errors,
    load_topology,
    out,
    print_json,
)
from dockmesh.cli.policy import (
    TableOpt,
    _table,
    applied_policy,
    policy_staleness,
    policy_store,
)
from dockmesh.cli.remote import AgentOpt
from dockmesh.model.policy import PortRange, Selector, parse_selector_arg

if TYPE_CHECKING:
    from dockmesh.model.topology import Container, Topology
    from dockmesh.policy.reach import Analysis, Named, Observations

PortOpt = Annotated[
    str | None, typer.Option("--port", help="PORT[/tcp|udp], e.g. 8080/tcp (default: ping).")
]
TimeoutOpt = Annotated[
    float,
    typer.Option(
        "--timeout",
        help="Seconds a probe waits for an answer.",
        min=0.05,
        # A bound above too: a probe's deadline is a time_t, and a pair that drops packets
        # holds `matrix` for as long as it says.
        max=60.0,
        callback=finite,
    ),
]


ViaAgentOpt = Annotated[
    bool,
    typer.Option(
        "--probe-via-agent",
        help="Probe through the source's host's agent even when its process is on this "
        "machine (what that agent sees; and no privilege needed here to enter namespaces).",
    ),
]


class Via:
    """Where each source's probes are made: here, from its namespace (its process is on this
    machine), or by the agent of its own host (`GET /v1/dockmesh/probe`): the lab host's
    agent for `--engine hostN`, the one `--agent URL` names. With `always`
    (`--probe-via-agent`), every source with an agent goes through it."""

    def __init__(self, engine: list[str] | None, agent: str | None, always: bool) -> None:
        self._engine, self._agent_url, self.always = engine, agent, always
        self._routes: dict[str, Any] | None = None
        self._agent: Any = None

    def _all(self) -> tuple[dict[str, Any], Any]:
        from dockmesh.cli.remote import agent_route, lab_routes

        if self._routes is None:
            self._agent = agent_route(self._agent_url) if self._agent_url else None
            self._routes = {} if self._agent is not None else lab_routes(self._engine)
        return self._routes, self._agent

    def route(self, c: Container | None) -> Any:
        """The agent route that probes from `c` (None: probed here, or not at all)."""
        from dockmesh.cli.remote import route_for

        if c is None or not (self.always or _elsewhere(c)):
            return None
        if not self.always and self._agent_url is None and not _lab_values(self._engine):
            return None  # no agent to ask: not probed, as before
        routes, agent = self._all()
        r = route_for(c, routes, agent)
        if r is None and self.always:
            raise UserError(
                f"--probe-via-agent: {c.name}'s engine {c.engine!r} has no agent to ask "
                "(--engine hostN of a lab, or --agent URL)"
            )
        return r


def _lab_values(engine: list[str] | None) -> bool:
    from dockmesh.cli.common import LAB_HOST

    return any(LAB_HOST.fullmatch(v) for v in engine or ())


def _port(text: str | None) -> PortRange | None:
    from dockmesh.policy.reach import parse_port

    if text is None:
        return None
    p = parse_port(text)
    if isinstance(p, str):
        raise UserError(f"--port {p}")
    return p


def _elsewhere(c: Container) -> str:
    """Why `c`'s namespace cannot be entered from here ('' when it can): its engine reported
    a pid this machine does not show to be its process (`host.pidwatch.shown_here`) — an
    engine on another host, whose pids are that host's."""
    from dockmesh.host.pidwatch import shown_here

    if not c.pid or shown_here(c.pid, c.id):
        return ""
    return (
        f"{c.name}'s process (pid {c.pid} on engine {c.engine}) is not on this machine: its "
        "namespace cannot be entered from here (its host's agent probes from it: --agent URL, "
        "or --engine hostN of a lab)"
    )


def _observations_for(dst: Container | None, port: PortRange | None, note: str) -> Observations:
    from dockmesh.host.sockets import listening
    from dockmesh.policy.reach import Observations

    listens = None
    if (
        dst is not None
        and dst.pid
        and port is not None
        and port.protocol in ("tcp", "udp")
        and not _elsewhere(dst)
    ):
        listens = listening(dst.pid)
    return Observations(listening=listens, policy_note=note)


def docker_ip6tables() -> bool:
    """Whether Docker writes IPv6 filter rules (daemon `ip6tables: true`): its isolation
    chain exists in the ip6 filter table. Docker 20.10 writes none by default."""
    import subprocess

    try:
        proc = subprocess.run(
            ["nft", "list", "chain", "ip6", "filter", "DOCKER-ISOLATION-STAGE-1"],
            capture_output=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return proc.returncode == 0


MAX_PAIRS = 32  # an alias or a service stands for several containers: at most so many pairs


def _ask_dns(pool: Any, topo: Topology, src: Container, name: str, timeout: float) -> Any:
    """What `name` resolves to from SRC, as its resolver asks Docker's DNS (A and AAAA);
    None when it could not be asked (SRC on the host's network has no Docker DNS, or its
    namespace cannot be entered)."""
    from dockmesh.host.dockerdns import resolve_in
    from dockmesh.host.netns import NetnsError
    from dockmesh.model.topology import NO_DNS_NETWORKS
    from dockmesh.policy.reach import namespace_owner

    owner = namespace_owner(topo, src)
    if owner is None or not owner.running or not owner.pid or owner.network_mode == "host":
        return None
    if all(a.network in NO_DNS_NETWORKS for a in owner.attachments):
        return None  # no embedded DNS there (the default bridge): nothing would answer
    if _elsewhere(owner):
        return None

    try:
        (answer,) = resolve_in(pool, owner.pid, [name], timeout, types=("A", "AAAA"))
    except (NetnsError, OSError):
        return None
    return {answer.name: list(answer.addresses or ())}


def register(app: typer.Typer) -> None:
    @app.command("why")
    @handle_errors
    def why(
        src: Annotated[
            str,
            typer.Argument(help="The source: a container, a network alias, a service, or 'host'."),
        ],
        dst: Annotated[
            str, typer.Argument(help="The destination: a container, a network alias or a service.")
        ],
        port: PortOpt = None,
        probe: Annotated[
            bool, typer.Option("--probe", help="Also try it from SRC's namespace.")
        ] = False,
        timeout: TimeoutOpt = 1.0,
        table: TableOpt = None,
        engine: EngineOpt = None,
        agent: AgentOpt = None,
        via_agent: ViaAgentOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Why SRC can or cannot reach DST: the steps a packet and a name lookup go through
        (running, shared network, internal, icc, policy, DNS, listening), for IPv4 and IPv6
        where both ends have both, then an optional live probe. SRC and DST may be aliases
        or services (each container they stand for is analysed). Exits 0 when reachable, 1
        when not (or when a probe fails)."""
        from dataclasses import replace

        from dockmesh.host.netns import NetnsPool
        from dockmesh.policy.reach import HOST, analyze, holders_of, resolve_name

        p = _port(port)
        if via_agent and not probe:
            raise UserError("--probe-via-agent: says how to probe; add --probe")
        topo = load_topology(engine)
        if dst == HOST:
            raise UserError("DST is a container, an alias or a service (SRC may be 'host')")
        named: dict[str, Named] = {}
        for role, name in (("SRC", src), ("DST", dst)):
            from_: tuple[Container, ...] = named["SRC"].containers if role == "DST" else ()
            near = from_[0] if len(from_) == 1 else None
            named[role] = resolve_name(topo, name, near)
            if named[role].kind == "unknown":
                raise UserError(f"{role}: no container, network alias or service named {name!r}")
        policy, note = applied_policy(_table(table))
        stale = policy_staleness(_table(table), topo)
        ruleset = _compiled(policy, topo, _table(table))
        six_rules = docker_ip6tables()
        sources: list[Container | None] = (
            [None] if named["SRC"].kind == HOST else list(named["SRC"].containers)
        )
        analyses: list[tuple[Analysis, Container | None, Container]] = []
        listening_cache: dict[str, Observations] = {}
        # The name SRC would use: a container's own name (not an id or a prefix of one),
        # else the alias or service name given.
        by_name = named["DST"].containers[0].name if named["DST"].kind == "container" else dst
        with NetnsPool(threads=2) as pool:
            for s in sources:
                resolved = None if s is None else _ask_dns(pool, topo, s, by_name, timeout)
                targets = list(named["DST"].containers)
                if named["DST"].kind != "container" and resolved:
                    # The containers the name resolves to from SRC: the ones it reaches.
                    targets = list(holders_of(topo, resolved[by_name])) or targets
                for d in targets:
                    if len(analyses) >= MAX_PAIRS:
                        break
                    if d.name not in listening_cache:
                        listening_cache[d.name] = _observations_for(d, p, note)
                    seen = replace(
                        listening_cache[d.name],
                        policy_stale=stale,
                        resolved=resolved,
                        target=by_name,
                        docker_ip6tables=six_rules,
                    )
                    name = HOST if s is None else s.name
                    a = analyze(topo, policy, name, d.name, p, seen, ruleset=ruleset)
                    analyses.append((a, s, d))
            results: list[dict[str, Any] | None] = [None] * len(analyses)
            if probe:
                via = Via(engine, agent, via_agent)
                results = list(_probe_many(pool, topo, analyses, p, timeout, via))
        docs = []
        for (a, _, _), result in zip(analyses, results, strict=True):
            one = a.to_json()
            one["probe"] = result
            docs.append(one)
        failed = [
            i
            for i, ((a, _, _), r) in enumerate(zip(analyses, results, strict=True))
            if not a.reachable or (r is not None and r["ok"] is False)
        ]
        main = failed[0] if failed else 0
        doc = dict(docs[main])
        doc["resolved"] = {"src": named["SRC"].to_json(), "dst": named["DST"].to_json()}
        if len(docs) > 1:
            doc["pairs"] = docs
        if json_out:
            print_json(doc)
        else:
            _render_resolved(named["SRC"], named["DST"], analyses)
            _render_why(analyses[main][0], results[main])
            if len(analyses) > 1:
                _render_pairs(analyses, results)
        # A probe that was not made (UDP that cannot tell: ok None) leaves the verdict to
        # the analysis.
        if failed:
            raise typer.Exit(EXIT_FAILED)

    @app.command("matrix")
    @handle_errors
    def matrix(
        port: PortOpt = None,
        select: Annotated[
            list[str] | None,
            typer.Option(
                "--select",
                help="KIND=VALUE (service=, container=, network=, label=, project=); "
                "several are a union. Default: every running container.",
            ),
        ] = None,
        timeout: TimeoutOpt = 1.0,
        table: TableOpt = None,
        engine: EngineOpt = None,
        agent: AgentOpt = None,
        via_agent: ViaAgentOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        """Every ordered pair: the expected verdict (topology + policy) beside the observed
        one (probes from the source namespaces, in parallel). Mismatches first; exits 1 when
        there is any."""
        started = time.perf_counter()
        selectors = _selectors(select)
        p = _port(port)
        if p is not None and p.protocol != "tcp":
            # An unanswered UDP datagram says nothing: only TCP ports and ping are observed.
            raise UserError(f"--port {p.text()}: matrix probes TCP ports (or ping, without --port)")
        topo = load_topology(engine)
        _check_exist(topo, selectors)
        policy, note = applied_policy(_table(table))
        chosen = _chosen(topo, selectors)
        via = Via(engine, agent, via_agent)
        pairs = _matrix(topo, policy, note, chosen, p, timeout, _table(table), via)
        mismatches = sum(1 for x in pairs if _mismatch(x))
        doc = {
            "pairs": pairs,
            "mismatches": mismatches,
            # pairs whose source's namespace is not on this machine (another host's engine)
            # and whose host's agent was not to be asked
            "unprobed": sum(1 for x in pairs if x["observed"] is None),
            "containers": len(chosen),
            "port": p.text() if p else None,
            "policy": note,
            "elapsed_s": round(time.perf_counter() - started, 3),
        }
        if json_out:
            print_json(doc)
        else:
            _render_matrix(doc, [c.name for c in chosen])
        if mismatches:
            raise typer.Exit(EXIT_FAILED)


def _selectors(values: list[str] | None) -> list[Selector]:
    out: list[Selector] = []
    for v in values or ():
        s = parse_selector_arg(v)
        if isinstance(s, str):
            raise UserError(f"--select {s}")
        out.append(s)
    return out


def _check_exist(topo: Topology, selectors: list[Selector]) -> None:
    """A selector naming a container or a network that does not exist is bad input (a
    service or a label may simply have no container now)."""
    for s in selectors:
        if s.container is not None and topo.container(s.container) is None:
            raise UserError(f"--select container={s.container}: no container named so")
        if s.network is not None and topo.network(s.network) is None:
            raise UserError(f"--select network={s.network}: no network named so")


def _chosen(topo: Topology, selectors: list[Selector]) -> list[Container]:
    """Running containers with an address chosen by any selector (all: none given)."""
    out = []
    for c in topo.containers:
        if not c.running or not c.pid:
            continue
        atts = [a for a in c.attachments if a.ipv4 or a.ipv6]
        if not atts:
            continue
        if selectors and not any(s.matches_endpoint(c, a.network) for s in selectors for a in atts):
            continue
        out.append(c)
    return out


def _matrix(
    topo: Topology,
    policy: Any,
    note: str,
    chosen: list[Container],
    port: PortRange | None,
    timeout: float,
    table: str = "",
    via: Via | None = None,
) -> list[dict[str, Any]]:
    """One entry per ordered pair; where both have IPv6, a verdict per family under
    `families`, and `expected`/`observed` those of the first family that disagrees (else
    both families' worse), so that a pair is a mismatch exactly when they differ."""
    from dataclasses import replace

    from dockmesh.diagnose.sweep import Probe
    from dockmesh.host.netns import NetnsPool
    from dockmesh.policy.reach import analyze

    ruleset = _compiled(policy, topo, table)
    six_rules = docker_ip6tables()
    observations = {
        c.name: replace(_observations_for(c, port, note), docker_ip6tables=six_rules)
        for c in chosen
    }
    analyses: dict[Hashable, Analysis] = {}
    keys: dict[Hashable, tuple[str, str, int]] = {}
    probes: list[Probe] = []
    pair_keys: list[tuple[str, str]] = []
    tcp = port is not None and port.protocol == "tcp"
    # Pairs whose source's namespace is not on this machine: the analysis's verdict alone.
    unprobed: list[dict[str, Any]] = []
    remote: dict[Hashable, Any] = {}  # probe key → the agent route that makes it
    for s in chosen:
        route = None if via is None else via.route(s)
        away = "" if route is not None else _elsewhere(s)
        for d in chosen:
            if s is d:
                continue
            a = analyze(
                topo, policy, s.name, d.name, port, observations[d.name],
                with_dns=False, ruleset=ruleset,
            )  # fmt: skip
            if away:
                unprobed.append(_unprobed(s, d, a, away))
                continue
            planned = False
            for fa in a.per_family:
                address = fa.address or next(
                    (x.ipv6 if fa.family == 6 else x.ipv4 for x in d.attachments
                     if (x.ipv6 if fa.family == 6 else x.ipv4)),
                    None,
                )  # fmt: skip
                if address is None:
                    continue
                key = (s.name, d.name, fa.family)
                analyses[key] = fa
                keys[key] = key
                probes.append(Probe(key, s.pid, address, port.first if tcp and port else None))
                if route is not None:
                    remote[key] = (route, s.id)
                planned = True
            if planned:
                pair_keys.append((s.name, d.name))
    with NetnsPool(threads=4) as pool:
        expected = {k: a.reachable for k, a in analyses.items()}
        seen = _sweep_split(pool, probes, expected, timeout, remote)
    by_pair: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for probe in probes:
        src_name, dst_name, family = keys[probe.key]
        a = analyses[probe.key]
        o = seen[probe.key]
        reason = next((st.detail for st in a.steps if not st.ok), "")
        by_pair.setdefault((src_name, dst_name), []).append(
            {
                "family": family,
                "expected": a.reachable,
                "observed": o.ok,
                "network": a.network,
                "address": probe.address,
                "reason": reason or next((st.detail for st in a.steps if st.check == "policy"), ""),
                "detail": o.detail,
                "latency_ms": o.latency_ms,
            }
        )
    pairs = []
    for src_name, dst_name in pair_keys:
        fams = by_pair[(src_name, dst_name)]
        off = next((f for f in fams if f["expected"] != f["observed"]), None)
        main = off or fams[0]
        entry = {
            "src": src_name,
            "dst": dst_name,
            "expected": main["expected"] if off else all(f["expected"] for f in fams),
            "observed": main["observed"] if off else all(f["observed"] for f in fams),
            "network": main["network"],
            "address": main["address"],
            "reason": main["reason"],
            "detail": main["detail"],
            "latency_ms": main["latency_ms"],
            "families": fams,
        }
        if len(fams) > 1 and not off:
            bad = next((f for f in fams if not f["expected"]), None)
            if bad is not None:
                entry.update(
                    {k: bad[k] for k in ("network", "address", "reason", "detail", "latency_ms")}
                )
        pairs.append(entry)
    pairs += unprobed
    pairs.sort(key=lambda x: (not _mismatch(x), x["src"], x["dst"]))
    return pairs


def _mismatch(pair: dict[str, Any]) -> bool:
    """A pair whose probe disagrees with its analysis (one not probed never does)."""
    return pair["observed"] is not None and pair["expected"] != pair["observed"]


def _unprobed(s: Container, d: Container, a: Analysis, away: str) -> dict[str, Any]:
    """A matrix entry for a pair that could not be probed from here."""
    reason = next((st.detail for st in a.steps if not st.ok), "")
    address = next((fa.address for fa in a.per_family if fa.address), None)
    return {
        "src": s.name,
        "dst": d.name,
        "expected": a.reachable,
        "observed": None,
        "network": a.network,
        "address": address,
        "reason": reason,
        "detail": f"not probed: {away}",
        "latency_ms": None,
        "families": [],
    }


def _compiled(policy: Any, topo: Topology, table: str) -> Any:
    """The applied policy's table as data, in the mode it was applied in (what an IPv6
    verdict is read from); None: no policy."""
    from dockmesh.policy.compile import compile_policy

    if policy is None:
        return None
    try:
        applied = policy_store(table).load()
    except (ValueError, OSError, UserError):
        applied = None
    audit = applied is not None and applied.mode == "audit"
    return compile_policy(policy, topo, "audit" if audit else "enforce")


DNS_PORT = 53


def _dns_probe_payload() -> bytes:
    from dockmesh.diagnose.sweep import dns_probe_payload

    return dns_probe_payload()


def _plan(
    key: Hashable, a: Analysis, src: Container | None, dst: Container, port: PortRange | None
) -> Any:
    """The probe for one family's analysis, or (when there is none to make) its result."""
    from dockmesh.diagnose.sweep import Probe

    address = a.address
    if address is None:
        address = next(
            (x.ipv6 if a.family == 6 else x.ipv4 for x in dst.attachments if
             (x.ipv6 if a.family == 6 else x.ipv4)),
            None,
        )  # fmt: skip
    if address is None:
        return {"ok": False, "latency_ms": None, "detail": "nothing to probe (no address)"}
    pid = src.pid if src is not None else None
    if port is None:
        return Probe(key, pid, address)
    if port.protocol == "tcp":
        return Probe(key, pid, address, port.first)
    if port.protocol != "udp":
        return {"ok": None, "latency_ms": None, "detail": f"{port.protocol} is not probed"}
    listening = next((s for s in a.steps if s.check == "listening"), None)
    if port.first == DNS_PORT and (listening is None or listening.ok):
        return Probe(key, pid, address, port.first, "udp", _dns_probe_payload(), True)
    if listening is None:
        return {
            "ok": None,
            "latency_ms": None,
            "detail": "udp is not probed: whether anything listens is not known, and a UDP "
            "service need not answer a datagram it does not understand",
        }
    # Something listens: it may answer (else silence says nothing). Nothing listens: the
    # kernel answers with a port unreachable, and silence means dropped.
    return Probe(key, pid, address, port.first, "udp", expect_reply=not listening.ok)


def _probe_many(
    pool: Any,
    topo: Topology,
    analyses: list[tuple[Analysis, Container | None, Container]],
    port: PortRange | None,
    timeout: float,
    via: Via | None = None,
) -> list[dict[str, Any]]:
    """One probe per analysis and family, all in one concurrent sweep, confirmed as matrix
    confirms: a probe that disagrees with the analysis is tried again before it is reported.
    Docker's own isolation has gaps of its own: each network it creates re-inserts FORWARD's
    jump to DOCKER-ISOLATION-STAGE-1 (delete, then insert), and an echo sent in between
    crosses isolated bridges."""
    from dockmesh.diagnose.sweep import Probe

    planned: list[list[tuple[Analysis, Any]]] = []
    early: dict[int, dict[str, Any]] = {}
    remote: dict[Hashable, Any] = {}
    for i, (a, src, dst) in enumerate(analyses):
        gone = next((c for c in (src, dst) if c is not None and (not c.running or not c.pid)), None)
        if gone is not None:
            early[i] = {"ok": False, "latency_ms": None, "detail": f"{gone.name} is not running"}
            planned.append([])
            continue
        route = None if via is None else via.route(src)
        away = "" if src is None or route is not None else _elsewhere(src)
        if away:  # the verdict stays the analysis's
            early[i] = {"ok": None, "latency_ms": None, "detail": f"not probed: {away}"}
            planned.append([])
            continue
        row = [(fa, _plan((i, fa.family), fa, src, dst, port)) for fa in a.per_family]
        if route is not None and src is not None:
            remote.update({x.key: (route, src.id) for _, x in row if isinstance(x, Probe)})
        planned.append(row)
    probes = [x for row in planned for _, x in row if isinstance(x, Probe)]
    expected = {x.key: fa.reachable for row in planned for fa, x in row if isinstance(x, Probe)}
    seen = _sweep_split(pool, probes, expected, timeout, remote) if probes else {}
    out = []
    for i, row in enumerate(planned):
        if i in early:
            out.append(early[i])
            continue
        fams = []
        for fa, x in row:
            if not isinstance(x, Probe):
                fams.append({"family": fa.family, "address": fa.address, **x})
                continue
            o = seen[x.key]
            ok: bool | None = None if o.inconclusive else o.ok
            detail = f"{_kind(x)}: {o.detail}"
            if o.inconclusive:
                detail += " (not probed in effect: the verdict is the analysis's)"
            fams.append(
                {
                    "family": fa.family,
                    "address": x.address,
                    "ok": ok,
                    # A failed probe has no latency (a refusal's round trip is not one to
                    # DST's service).
                    "latency_ms": o.latency_ms if ok else None,
                    "detail": detail,
                }
            )
        out.append(_worse(fams))
    return out


def _sweep_split(
    pool: Any,
    probes: list[Any],
    expected: dict[Hashable, bool],
    timeout: float,
    remote: dict[Hashable, Any],
) -> dict[Hashable, Any]:
    """The probes made here in one concurrent sweep, and those of `remote` (key → agent
    route, the source's id) by their agents at the same time, each confirmed alike."""
    from concurrent.futures import ThreadPoolExecutor

    from dockmesh.cli.remote import RemoteProbe, remote_sweep
    from dockmesh.diagnose.sweep import sweep_confirmed

    here = [p for p in probes if p.key not in remote]
    away = [
        RemoteProbe(remote[p.key][0], remote[p.key][1], p, expected.get(p.key))
        for p in probes
        if p.key in remote
    ]
    if not away:
        return sweep_confirmed(pool, here, expected, timeout_s=timeout) if here else {}
    with ThreadPoolExecutor(max_workers=1) as ex:
        asked = ex.submit(remote_sweep, away, timeout)
        seen = sweep_confirmed(pool, here, expected, timeout_s=timeout) if here else {}
        seen.update(asked.result())
    return seen


def _kind(x: Any) -> str:
    where = f"[{x.address}]:{x.port}" if ":" in x.address else f"{x.address}:{x.port}"
    if x.port is None:
        return f"ping {x.address}"
    if x.protocol == "udp":
        return f"UDP {'DNS query' if x.port == DNS_PORT else 'datagram'} to {where}"
    return f"TCP connect to {where}"


def _worse(fams: list[dict[str, Any]]) -> dict[str, Any]:
    """The families' probes as one: failed when any failed, not probed when none was."""
    oks = [f["ok"] for f in fams]
    ok = False if False in oks else (None if all(x is None for x in oks) else True)
    first = fams[0]
    if len(fams) == 1:
        detail = first["detail"]
    else:
        detail = "; ".join(f"IPv{f['family']}: {f['detail']}" for f in fams)
    latency = next((f["latency_ms"] for f in fams if f["latency_ms"] is not None), None)
    return {
        "ok": ok,
        "latency_ms": latency if ok else None,
        "detail": detail,
        "families": fams,
    }


def _probe_one(
    pool: Any,
    topo: Topology,
    analysis: Analysis,
    src: Container | None,
    dst: Container | None,
    port: PortRange | None,
    timeout: float,
) -> dict[str, Any]:
    """`why --probe`'s probe of one analysis (every family it has)."""
    for c in (src, dst):
        if c is not None and (not c.running or not c.pid):
            return {"ok": False, "latency_ms": None, "detail": f"{c.name} is not running"}
    if dst is None:
        return {"ok": False, "latency_ms": None, "detail": "nothing to probe (no destination)"}
    return _probe_many(pool, topo, [(analysis, src, dst)], port, timeout)[0]


def _mark(ok: bool | None) -> Text:
    if ok is None:
        return Text("-", style="dim")
    return Text("✓", style="green") if ok else Text("✗", style="red")


def _render_why(a: Analysis, probe: dict[str, Any] | None) -> None:
    style = "bold green" if a.reachable else "bold red"
    out.print(Text(a.summary, style=style))
    t = Table("", "check", "detail", show_header=False, box=None, pad_edge=False)
    for s in a.steps:
        t.add_row(_mark(s.ok), s.check, Text(s.detail))
    out.print(t)
    if probe is not None:
        for f in probe.get("families") or [probe]:
            line = Text("probe: ")
            line.append_text(_mark(f["ok"]))
            if "family" in f and len(probe.get("families") or ()) > 1:
                line.append(f" IPv{f['family']}")
            line.append(" " + str(f["detail"]))
            if f["latency_ms"] is not None:
                line.append(f" ({f['latency_ms']:.2f} ms)")
            out.print(line)
        by_family = {fa.family: fa.reachable for fa in a.per_family}
        disagree = [
            f
            for f in probe.get("families") or []
            if f["ok"] is not None and bool(f["ok"]) != by_family.get(f["family"], a.reachable)
        ]
        if disagree:
            out.print(
                Text(
                    "the probe disagrees with the analysis: something the topology does not "
                    "show decides (a firewall rule, a route, the application)",
                    style="yellow",
                )
            )


def _render_resolved(src: Named, dst: Named, analyses: list[Any]) -> None:
    for role, n in (("SRC", src), ("DST", dst)):
        if n.kind in ("alias", "service"):
            names = ", ".join(c.name for c in n.containers)
            out.print(
                f"{role} {n.argument!r} is a {'network alias' if n.kind == 'alias' else 'service'}"
                f": {names}",
                markup=False,
                highlight=False,
            )
    if dst.kind in ("alias", "service") or src.kind in ("alias", "service"):
        pairs = ", ".join(f"{a.src} → {a.dst}" for a, _, _ in analyses)
        out.print(f"analysed: {pairs}", markup=False, highlight=False)


def _render_pairs(analyses: list[Any], results: list[dict[str, Any] | None]) -> None:
    t = Table("", "src", "dst", "summary", "probe", title="every pair", title_justify="left")
    for (a, _, _), r in zip(analyses, results, strict=True):
        t.add_row(
            _mark(a.reachable), a.src, a.dst, Text(a.summary), _mark(None if r is None else r["ok"])
        )
    out.print(t)


def _render_matrix(doc: dict[str, Any], names: list[str]) -> None:
    pairs = doc["pairs"]
    bad = [x for x in pairs if _mismatch(x)]
    if bad:
        t = Table("src", "dst", "expected", "observed", "why expected", "probe", title="mismatches")
        for x in bad:
            t.add_row(
                x["src"], x["dst"], _mark(x["expected"]), _mark(x["observed"]),
                Text(x["reason"]), Text(x["detail"]),
            )  # fmt: skip
        out.print(t)
    if 0 < len(names) <= 40:
        cell = {(x["src"], x["dst"]): x for x in pairs}
        grid = Table("src \\ dst", *[str(i + 1) for i in range(len(names))], box=None)
        for i, s in enumerate(names):
            row: list[Text | str] = [f"{i + 1} {s}"]
            for d in names:
                x = cell.get((s, d))
                if x is None:
                    row.append(Text("·", style="dim"))
                elif _mismatch(x):
                    row.append(Text("!", style="bold yellow"))
                elif len({f["observed"] for f in x.get("families", ())}) > 1:
                    # One family gets through, the other not: its number.
                    only = next(f["family"] for f in x["families"] if f["observed"])
                    row.append(Text(str(only), style="yellow"))
                else:
                    row.append(_mark(x["observed"]))
            grid.add_row(*row)
        out.print(grid)
    reach = sum(1 for x in pairs if x["observed"])
    if any(len({f["observed"] for f in x.get("families", ())}) > 1 for x in pairs):
        out.print("4 / 6: reachable over IPv4 only / IPv6 only", markup=False, highlight=False)
    unprobed = f", {doc['unprobed']} not probed (source not on this machine)"
    out.print(
        f"{len(pairs)} pairs, {reach} reachable, {doc['mismatches']} mismatches"
        f"{unprobed if doc['unprobed'] else ''} ({doc['policy']}; {doc['elapsed_s']:.2f} s)",
        markup=False,
        highlight=False,
    )

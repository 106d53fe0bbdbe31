"""`dockmesh policy apply|show|remove`, and the topology the reachability commands read."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path as FsPath
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from dockmesh.cli.common import (
    EngineOpt,
    JsonOpt,
    UserError,
    handle_errors,
    load_topology,
    out,
    print_json,
)
from dockmesh.errors import SpecError
from dockmesh.model.policy import (
    Policy,
    Scope,
    parse_policy,
    policy_file_problems,
    policy_file_section,
)
from dockmesh.model.topology import Topology

if TYPE_CHECKING:
    from dockmesh.policy.compile import Ruleset
    from dockmesh.policy.droplog import Flow, NamedDrop, Verdict
    from dockmesh.policy.project import KernelTable, Wanted
    from dockmesh.policy.store import PolicyStore
    from dockmesh.projectfile.load import LoadedSpec
    from dockmesh.projectfile.plan import Change

log = logging.getLogger(__name__)

TableOpt = Annotated[
    str | None,
    typer.Option(
        "--table",
        help="The nftables table (inet family) to use: $DOCKMESH_POLICY_TABLE, else dockmesh.",
    ),
]


def read_policy_file(path: str) -> tuple[Policy, bool]:
    """A topology file's policy section (short names made the engine's) or a policy file
    alone; (policy, whether it was a topology file). SpecError with FILE:LINE problems."""
    from dockmesh.projectfile.load import default_project, format_problems
    from dockmesh.projectfile.problems import Problem
    from dockmesh.projectfile.yamlpos import MAX_FILE_BYTES, load_located_bytes

    try:
        with FsPath(path).open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise UserError(f"{path}: cannot read it: {e.strerror or e}") from None
    located = load_located_bytes(raw)
    if located.problems:
        raise SpecError(format_problems(path, list(located.problems), located.lines))
    doc = located.data
    shape = policy_file_problems(doc)
    if shape:
        raise SpecError(format_problems(path, [Problem(p, m) for p, m in shape], located.lines))
    section, base, is_topology = policy_file_section(doc)
    scope = None
    if is_topology:
        project = doc.get("project")
        if not isinstance(project, str):
            project = default_project(path)
        nets, services = doc.get("networks"), doc.get("services")
        scope = Scope(
            project,
            frozenset(map(str, nets)) if isinstance(nets, Mapping) else frozenset(),
            frozenset(map(str, services)) if isinstance(services, Mapping) else frozenset(),
        )
    policy, problems = parse_policy(section, scope, base)
    if problems or policy is None:
        found = [Problem(p, m) for p, m in problems] or [Problem(base, "no policy")]
        raise SpecError(format_problems(path, found, located.lines))
    return policy, is_topology


def _unmatched(policy: Policy, topo: Topology) -> list[str]:
    """Selectors that choose no running container now: usually a typo, said, not refused
    (the containers may come later)."""
    from dockmesh.model.policy import selects

    running = [c for c in topo.containers if c.running]
    notes: list[str] = []
    for i, r in enumerate(policy.rules):
        for word, side in (("from", r.sources), ("to", r.destinations)):
            if any(s.is_address for s in side):
                continue
            if not any(selects(side, c, a.network) for c in running for a in c.attachments):
                sel = " | ".join(s.text() for s in side)
                notes.append(f"rule {i + 1} {word} {sel} chooses no running container (yet)")
    names = {n.name for n in topo.networks}
    for name, _ in policy.networks:
        if name not in names:
            notes.append(f"network {name} does not exist (yet)")
    return notes


def register(app: typer.Typer) -> None:
    policy_app = typer.Typer(
        help="Who may talk to whom between containers, enforced in nftables "
        "(table inet dockmesh); the agent keeps it true as containers come and go.",
        no_args_is_help=True,
    )
    app.add_typer(policy_app, name="policy")

    @policy_app.command("apply")
    @handle_errors
    def apply(
        file: Annotated[str, typer.Argument(help="A topology file or a policy file.")],
        mode: Annotated[
            str,
            typer.Option(
                "--mode", help="enforce: drop; audit: count and log would-be drops, drop nothing."
            ),
        ] = "enforce",
        table: TableOpt = None,
        engine: EngineOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Applies a policy in one atomic nftables transaction and records it for the agent."""
        from dockmesh.policy.compile import MODES
        from dockmesh.policy.enforce import Enforcer
        from dockmesh.policy.store import Applied

        if mode not in MODES:
            raise UserError(f"--mode {mode!r}: enforce or audit")
        name = _table(table)
        policy, _ = read_policy_file(file)
        topo = load_topology(engine)
        enforcer = Enforcer(policy_store(name))
        applied = Applied(
            name,
            "audit" if mode == "audit" else "enforce",
            policy,
            str(FsPath(file).resolve()),
        )
        rs = _nft_errors(lambda: enforcer.apply(applied, topo))
        overlays, elsewhere = _nft_errors(lambda: _apply_overlays(applied, topo))
        notes = _unmatched(policy, topo) + elsewhere
        addresses = sum(len(s.elements) for s in rs.sets if not s.interval)
        if json_out:
            print_json(
                {
                    "table": name,
                    "mode": applied.mode,
                    "rules": len(policy.rules),
                    "nft_rules": len(rs.rules),
                    "sets": len(rs.sets),
                    "addresses": addresses,
                    "structure": rs.structure_hash,
                    "notes": notes,
                    "policy": policy.to_json(),
                    "overlays": [o.to_json() for o in overlays],
                }
            )
            return
        out.print(
            f"policy applied ({applied.mode}) to table inet {name}: {len(policy.rules)} rules, "
            f"{addresses} container addresses in {len(rs.sets)} sets",
            markup=False,
            highlight=False,
        )
        for o in overlays:
            out.print(
                f"  overlay {o.network} on {o.engine}: table inet {name} in namespace {o.netns}",
                markup=False,
                highlight=False,
            )
        for note in notes:
            out.print(f"  note: {note}", markup=False, highlight=False)

    @policy_app.command("show")
    @handle_errors
    def show(table: TableOpt = None, engine: EngineOpt = None, json_out: JsonOpt = False) -> None:
        """The applied policy: its rules with their counters, and who is in each set."""
        doc = _show_doc(_table(table), engine)
        if json_out:
            print_json(doc)
            return
        _render_show(doc)

    @policy_app.command("log")
    @handle_errors
    def log_cmd(
        table: TableOpt = None,
        follow: Annotated[
            bool,
            typer.Option(
                "--follow", "-f", help="Keep reading (once a second); print new or grown flows."
            ),
        ] = False,
        engine: EngineOpt = None,
        json_out: JsonOpt = False,
    ) -> None:
        """Every flow the policy dropped (audit mode: would have dropped) in the last minute:
        source and destination container, port, the rule, packets. Read from the kernel's
        drop logs, no kernel log parsing."""
        name = _table(table)
        reader = _DropReader(name, engine)
        drops = reader.read()
        if not follow:
            if json_out:
                print_json({"table": name, "mode": reader.mode, "drops": drops_json(drops)})
                return
            if reader.note:
                out.print(reader.note, markup=False, highlight=False)
            for d in drops:
                out.print(d.line(), markup=False, highlight=False)
            if not drops and not reader.note:
                out.print(
                    f"no drops recorded in table inet {name} in the last minute",
                    markup=False,
                    highlight=False,
                )
            return
        _follow(reader, json_out)

    @policy_app.command("remove")
    @handle_errors
    def remove(table: TableOpt = None) -> None:
        """Removes the table (and nothing else) and the recorded policy."""
        from dockmesh.policy.enforce import Enforcer
        from dockmesh.policy.overlay import remove_overlays

        name = _table(table)
        removed = _nft_errors(lambda: Enforcer(policy_store(name)).remove())
        msg = f"removed table inet {name}" if removed else f"no policy applied (table inet {name})"
        out.print(msg, markup=False, highlight=False)
        for path in _nft_errors(lambda: remove_overlays(name, configured_policy_dir())):
            out.print(f"  and from overlay namespace {path}", markup=False, highlight=False)


# The engine's exec-root when it is the machine's own (the default socket): its namespaces.
LOCAL_SOCKETS = ("unix:///run/docker.sock", "unix:///var/run/docker.sock")
LOCAL_NETNS_DIR = "/run/docker/netns"


def overlay_netns_dirs(topo: Topology) -> dict[str, str]:
    """Each of the topology's engines whose overlay namespaces this machine can enter → their
    directory: a lab host's (under its engine's --exec-root) or the machine's own engine's,
    known by the engine's URL (its name may be anything). Another machine's engine has its
    namespaces there: its overlays are written by `policy apply` run on that machine."""
    return netns_dirs_of([(e.name, e.url) for e in topo.engines])


def netns_dirs_of(engines: list[tuple[str, str]]) -> dict[str, str]:
    """`overlay_netns_dirs` for engines given as (name, URL)."""
    by_url = dict.fromkeys(LOCAL_SOCKETS, LOCAL_NETNS_DIR)
    if any(url.startswith("unix:///run/dockmesh-lab/") for _, url in engines):
        from dockmesh.lab.plan import DEFAULT_NAME
        from dockmesh.lab.run import load

        state = load(os.environ.get("DOCKMESH_LAB") or DEFAULT_NAME)
        if state is not None:
            for h in state.plan().hosts:
                by_url[h.url] = os.path.join(h.exec_root, "netns")
    return {name: by_url[url] for name, url in engines if url in by_url}


def _apply_overlays(applied: Any, topo: Topology) -> tuple[list[Any], list[str]]:
    """The overlay namespaces written, and a note for each overlay's host this machine
    cannot enter (its table is written by `policy apply` run there)."""
    from dockmesh.policy.overlay import apply_overlays, overlay_networks

    nets = overlay_networks(topo)
    if not nets:
        return [], []
    dirs = overlay_netns_dirs(topo)
    done = apply_overlays(applied, topo, dirs, configured_policy_dir())
    notes = [
        f"overlay {n.name} on engine {e}: its namespace is not on this machine (run policy "
        "apply there)"
        for n in nets
        for e in n.engines
        if e not in dirs
    ]
    return done, notes


def _table(given: str | None) -> str:
    """--table, else $DOCKMESH_POLICY_TABLE, else `dockmesh`."""
    from dockmesh.policy.store import table_name

    try:
        return table_name(given, os.environ.get("DOCKMESH_POLICY_TABLE"))
    except ValueError as e:
        raise UserError(f"{'--table' if given else '$DOCKMESH_POLICY_TABLE'}: {e}") from None


def configured_policy_dir() -> FsPath:
    """$DOCKMESH_POLICY_DIR, else the default: the directory `policy apply` and the agent
    must agree on, so a value that cannot be one is refused here, naming the variable — an
    absolute path (a relative one would differ between the command and the agent) that is a
    directory or not there yet."""
    from dockmesh.policy.store import policy_dir

    value = os.environ.get("DOCKMESH_POLICY_DIR")
    directory = policy_dir(value)
    if value:
        if not directory.is_absolute():
            raise UserError(f"$DOCKMESH_POLICY_DIR {value!r}: expected an absolute path")
        if directory.exists() and not directory.is_dir():
            raise UserError(f"$DOCKMESH_POLICY_DIR {value!r}: not a directory")
    return directory


def policy_store(table: str) -> PolicyStore:
    """The applied policy of `table`, kept in $DOCKMESH_POLICY_DIR (else the default)."""
    from dockmesh.policy.store import PolicyStore

    return PolicyStore(table, configured_policy_dir())


def _nft_errors(fn: Any) -> Any:
    """nft's refusals: exit 1; a table that is not dockmesh's: bad input, exit 2."""
    from dockmesh.policy.nft import ForeignTable, NftError

    try:
        return fn()
    except ForeignTable as e:
        raise UserError(str(e)) from None
    except NftError as e:
        raise OSError(f"nft: {e}") from None


def applied_policy(table: str) -> tuple[Policy | None, str]:
    """The policy in force on `table`, and a sentence about it: None when none is applied or
    its table is gone from the kernel."""
    from dockmesh.policy.nft import Nft, NftError

    try:
        applied = policy_store(table).load()
    except ValueError as e:
        return None, f"the recorded policy is unreadable ({e})"
    if applied is None:
        return None, "no policy applied"
    try:
        live = Nft().list_table(table)
    except NftError as e:
        return applied.policy, f"policy recorded; nft could not be asked ({e})"
    if live is None:
        return None, f"a policy is recorded but table inet {table} is not in the kernel"
    # A policy is recorded for it: the table is dockmesh's, whatever was done to it since
    # (`policy_staleness` says how it differs).
    if applied.mode == "audit":
        return applied.policy, "audit mode (nothing is dropped)"
    return applied.policy, f"policy enforced (table inet {table})"


def policy_staleness(table: str, topo: Topology) -> str:
    """Why the kernel's table may not be what the model says ('' when it is in sync, or
    when there is nothing to compare): the same comparison as `policy show`'s."""
    from dockmesh.host.ports import PortFinder
    from dockmesh.policy.compile import compile_policy
    from dockmesh.policy.drift import summary
    from dockmesh.policy.enforce import Enforcer
    from dockmesh.policy.nft import Nft, NftError, is_ours

    unreadable = False
    try:
        applied = policy_store(table).load()
    except ValueError:
        applied, unreadable = None, True
    try:
        doc = Nft().list_table(table) if applied is not None or unreadable else None
    except NftError:
        return ""
    if unreadable and doc is not None and is_ours(doc, table):
        # Nothing to compare with, but the table the record was about is still in force.
        return f"table inet {table} is in the kernel, with rules the record no longer says"
    if applied is None or doc is None:
        return ""
    want = compile_policy(applied.policy, topo, applied.mode, table, PortFinder()(topo))
    try:
        diffs = Enforcer(policy_store(table)).drift(want)
    except NftError:
        return ""
    # Docker's IPv6 bridge sets follow every IPv6 bridge on the host: another project's new
    # network makes them stale until the agent follows, and says nothing of this pair.
    diffs = [d for d in diffs if ": set br6" not in d and not d.startswith("set br6")]
    if not diffs:
        return ""
    moved = _moved_ports(want, doc, topo)
    lead = (
        f"{', '.join(moved)}: its address is bound to a port that is not its own (restarted "
        "or replaced while no agent ran), so its packets match no allow rule and nothing is "
        "delivered to it; "
        if moved
        else ""
    )
    return (
        f"{lead}table inet {table} is not in sync with the policy and the topology "
        f"({summary(diffs, 2)}; policy show says all; the agent, or policy apply again, "
        "brings it back)"
    )


def _moved_ports(want: Ruleset, doc: Any, topo: Topology) -> list[str]:
    """The containers whose address the live bridge table binds to another port than the
    one they have now (the most telling difference: a legitimate container locked out)."""
    from dockmesh.policy.drift import view

    key = ("bridge", want.table)
    live = view(doc, [key]).get(key)
    if live is None:
        return []
    missing: set[str] = set()
    for f in (4, 6):
        s = want.set(f"port_{f}")
        if s is not None and f"port_{f}" in live.elements:
            missing |= {e.partition(" . ")[2] for e in s.elements - live.elements[f"port_{f}"]}
    names: list[str] = []
    for c in topo.containers:
        if c.running and any({a.ipv4, a.ipv6} & missing for a in c.attachments):
            names.append(c.name)
    return sorted(names)


def _show_doc(table: str, engine: list[str] | None) -> dict[str, Any]:
    from dockmesh.host.ports import PortFinder
    from dockmesh.policy.compile import compile_policy
    from dockmesh.policy.drift import mark_writers
    from dockmesh.policy.enforce import Enforcer
    from dockmesh.policy.nft import ForeignTable, Nft, is_ours, parse_live

    try:
        applied = policy_store(table).load()
    except ValueError as e:
        raise UserError(str(e)) from None
    live_doc = _nft_errors(lambda: Nft().list_table(table))
    doc: dict[str, Any] = {
        "table": table,
        # The inet table decides; the bridge table alone is what is left of a deleted one.
        "applied": live_doc is not None
        and any((i.get("table") or {}).get("family") == "inet" for i in live_doc["nftables"]),
        "mode": applied.mode if applied else None,
        "source": applied.source if applied else None,
        "policy": applied.policy.to_json() if applied else None,
        "rules": [],
        "sets": [],
        "in_sync": None,
        "differences": [],
        # What other tables do that no table of ours can undo (said, not repaired).
        "warnings": [],
    }
    if live_doc is None and applied is None:
        return doc
    # Ours when a policy is recorded for it, or when it carries dockmesh's mark (a table
    # whose rules were flushed keeps its sets, the mark among them).
    if live_doc is not None and applied is None and not is_ours(live_doc, table):
        raise UserError(str(ForeignTable(table)))
    topo = load_topology(engine)
    ports = PortFinder()(topo)
    want = compile_policy(applied.policy, topo, applied.mode, table, ports) if applied else None
    if want is not None:
        enforcer = Enforcer(policy_store(table))
        diffs: list[str] = _nft_errors(lambda: enforcer.drift(want))
        doc["differences"] = diffs
        doc["in_sync"] = not diffs
    if applied is not None:
        from dockmesh.policy.overlay import overlay_drift

        dirs = overlay_netns_dirs(topo)
        doc["overlays"] = _nft_errors(
            lambda: overlay_drift(applied, topo, dirs, configured_policy_dir())
        )
    if live_doc is None:
        return doc
    doc["warnings"] = [
        f"{w}: it may clear the bit that marks a forged source unconfirmed"
        for w in mark_writers(_nft_errors(Nft().list_ruleset), table)
    ]
    live = parse_live(live_doc, table)
    meanings = {s.name: s.meaning for s in want.sets} if want else {}
    texts: dict[str, str] = {}
    if applied is not None:
        for i, r in enumerate(applied.policy.rules):
            texts[_rule_comment(applied, i)] = r.text()
    counted: dict[str, list[int]] = {}
    for lr in live.rules:
        if lr.packets is not None:
            c = counted.setdefault(lr.comment, [0, 0])
            c[0] += lr.packets
            c[1] += lr.bytes or 0
    # A rule between named containers is elements of the concatenated sets, each counting.
    for name, owners in (want.attribution if want else {}).items():
        for element, (packets, nbytes) in live.counters.get(name, {}).items():
            owner = owners.get(element)
            if owner is not None:
                c = counted.setdefault(_rule_comment(applied, owner), [0, 0])
                c[0] += packets
                c[1] += nbytes
    order = (
        {_rule_comment(applied, i): i for i in range(len(applied.policy.rules))} if applied else {}
    )
    doc["rules"] = [
        {"comment": k, "text": texts.get(k, k), "packets": v[0], "bytes": v[1]}
        for k, v in sorted(counted.items(), key=lambda kv: (order.get(kv[0], 1 << 30), kv[0]))
    ]
    for name in sorted(live.elements, key=_set_order):
        members = []
        for element in sorted(live.elements[name]):
            # A concatenation (`src . dst . tcp . 80`) names the holders of each address in it.
            names: list[str] = []
            for part in element.split(" . "):
                if "/" in part:
                    continue
                for holder, _ in topo.attachments_at(part):
                    if holder.name not in names:
                        names.append(holder.name)
            members.append({"address": element, "containers": names})
        doc["sets"].append({"name": name, "meaning": meanings.get(name, ""), "members": members})
    return doc


def _rule_comment(applied: Any, i: int) -> str:
    deny = applied is not None and applied.policy.rules[i].action == "deny"
    return f"{'deny ' if deny else ''}rule {i + 1}"


def _set_order(name: str) -> tuple[str, int, str]:
    kind = name[0]
    num = name[1:].split("_")[0]
    return (kind, int(num) if num.isdigit() else 0, name)


def _render_show(doc: dict[str, Any]) -> None:
    diffs: list[str] = doc["differences"]
    if not doc["applied"]:
        if diffs:
            out.print(
                f"table inet {doc['table']}: mode {doc['mode']}, from {doc['source'] or '?'}, "
                "is not in the kernel (the agent restores it; or policy apply again)",
                markup=False,
                highlight=False,
            )
        else:
            out.print(f"no policy applied (table inet {doc['table']})", markup=False)
        return
    state = ""
    if doc["in_sync"] is False:
        n = len(diffs)
        state = f" — differs from the compiled policy ({n} difference{'s' if n != 1 else ''})"
    out.print(
        f"table inet {doc['table']}: mode {doc['mode']}, from {doc['source'] or '?'}{state}",
        markup=False,
        highlight=False,
    )
    for d in diffs:
        out.print(f"  differs: {d}", markup=False, highlight=False)
    for o in doc.get("overlays", []):
        n = len(o["differences"])
        what = "in sync" if not n else f"differs ({n} difference{'s' if n != 1 else ''})"
        out.print(
            f"overlay {o['network']} on {o['engine']} (namespace {o['netns']}): {what}",
            markup=False,
            highlight=False,
        )
        for d in o["differences"]:
            out.print(f"  differs: {d}", markup=False, highlight=False)
    for w in doc.get("warnings", []):
        out.print(f"  warning: {w}", markup=False, highlight=False)
    rules = Table("rule", "packets", "bytes", title="rules (counters since applied)")
    for r in doc["rules"]:
        rules.add_row(r["text"], str(r["packets"]), str(r["bytes"]))
    out.print(rules)
    sets = Table("set", "holds", "members")
    for s in doc["sets"]:
        members = ", ".join(
            f"{m['address']} ({', '.join(m['containers'])})" if m["containers"] else m["address"]
            for m in s["members"]
        )
        sets.add_row(s["name"], s["meaning"], members or "-")
    out.print(sets)


# --- a topology file's policy under plan, up and down ----------------------------------------


def project_table(given: str | None) -> str:
    """The table `plan`, `up` and `down` keep a project's policy in: as `policy`'s commands."""
    return _table(given)


def _project_wanted(loaded: LoadedSpec, mode: str, table: str, topo: Topology) -> Wanted | None:
    from dockmesh.host.ports import PortFinder
    from dockmesh.policy.compile import compile_policy
    from dockmesh.policy.project import Wanted, file_policy, modes
    from dockmesh.policy.store import Applied
    from dockmesh.projectfile.load import format_problems

    try:
        chosen = modes(mode)
    except ValueError as e:
        raise UserError(str(e)) from None
    policy, problems = file_policy(loaded)
    if problems:
        raise SpecError(format_problems(loaded.filename, problems, loaded.lines))
    if policy is None:
        return None
    source = str(FsPath(loaded.filename).resolve())
    applied = Applied(table, chosen, policy, source, loaded.project)
    # With the bridge ports, as `up` applies it: else the bridge table's sets never compare
    # equal and plan always says "replace".
    rs = compile_policy(policy, topo, chosen, table, PortFinder()(topo))
    return Wanted(applied, rs.structure_hash, rs.elements())


def _kernel_state(table: str) -> tuple[KernelTable, str | None, dict[str, frozenset[str]]]:
    from dockmesh.policy.nft import Nft, is_ours, parse_live

    doc = _nft_errors(lambda: Nft().list_table(table))
    if doc is None:
        return "absent", None, {}
    if not is_ours(doc, table):
        return "foreign", None, {}
    live = parse_live(doc, table)
    return "ours", live.structure_hash, live.elements


def project_policy_check(loaded: LoadedSpec, mode: str, table: str) -> bool:
    """Before `up` creates anything: whether the file has a policy, and if so that it can be
    applied — nft is there, the table is not someone else's, the recorded policy is not
    another project's. UserError (exit 2) otherwise. A file with problems is left to the
    validation that follows, which names every one of them (also the policy section's)."""
    from dockmesh.policy.nft import ForeignTable, Nft
    from dockmesh.policy.project import conflict, file_policy, modes

    try:
        modes(mode)
    except ValueError as e:
        raise UserError(str(e)) from None
    policy, problems = file_policy(loaded)
    if policy is None or problems or loaded.shape_problems:
        return policy is not None
    if not Nft().available():
        raise UserError(
            f"{loaded.filename} has a policy: section and nft is not installed "
            "(Debian: apt-get install nftables)"
        )
    try:
        record = policy_store(table).load()
    except ValueError as e:
        raise UserError(str(e)) from None
    source = str(FsPath(loaded.filename).resolve())
    why = conflict(record, loaded.project, source, table)
    if why is not None:
        raise UserError(why)
    if _kernel_state(table)[0] == "foreign":
        raise UserError(str(ForeignTable(table)))
    return True


def project_policy_change(
    loaded: LoadedSpec, mode: str, table: str, topo: Topology
) -> Change | None:
    """What `up` would do with the file's policy (or with the policy its project applied
    before, when the file has none now) over `topo`: `plan`'s line."""
    from dockmesh.policy.project import policy_change

    want = _project_wanted(loaded, mode, table, topo)
    try:
        record = policy_store(table).load()
    except ValueError as e:
        raise UserError(str(e)) from None
    if want is None and (record is None or record.project != loaded.project):
        return None  # nothing of this project's to look at: nft is not even asked
    kernel, structure, elements = _kernel_state(table)
    return policy_change(want, record, kernel, structure, elements, loaded.project, table)


def converge_project_policy(
    loaded: LoadedSpec, mode: str, table: str, topo: Topology
) -> Change | None:
    """After `up` made the networks and containers: the file's policy applied over them
    (`Enforcer.apply`, as `policy apply`), or the project's former one removed when the file
    has none now; nothing when the kernel already holds it."""
    from dockmesh.policy.enforce import Enforcer

    change = project_policy_change(loaded, mode, table, topo)
    if change is None:
        return None
    enforcer = Enforcer(policy_store(table))
    if change.action == "remove":
        _nft_errors(enforcer.remove)
        return change
    want = _project_wanted(loaded, mode, table, topo)
    assert want is not None
    _nft_errors(lambda: enforcer.apply(want.applied, topo))
    return change


def remove_project_policy(project: str, table: str) -> Change | None:
    """`down`: the policy removed when its record says this project's `up` applied it."""
    from dockmesh.policy.enforce import Enforcer
    from dockmesh.policy.project import owned_by
    from dockmesh.projectfile.plan import Change

    store = policy_store(table)
    try:
        record = store.load()
    except ValueError:
        return None  # unreadable: not provably this project's, so left alone
    if not owned_by(record, project):
        return None
    _nft_errors(Enforcer(store).remove)
    return Change("remove", "policy", f"inet {table}", f"applied by up of project {project}")


# --- policy log --------------------------------------------------------------------------------


def drops_json(drops: list[NamedDrop]) -> list[dict[str, Any]]:
    return [d.to_json() for d in drops]


class _DropReader:
    """Reads the table's drop logs and names them: the rules from the applied policy compiled
    over the topology (read as `why` and `matrix` read it: the agent, else the engines), the
    containers from the same topology, read again when an address is not known (at most
    every `RELOAD_S`: a flow from an address no container holds any more stays unknown)."""

    RELOAD_S = 10.0

    def __init__(self, table: str, engine: list[str] | None) -> None:
        self.table = table
        self.engine = engine
        self.mode: str | None = None
        self.note = ""
        self._topo: Topology | None = None
        self._loaded_at = 0.0
        self._logs: dict[str, tuple[str, Verdict]] = {}
        self.seen: dict[tuple[str, str, str, str, int | None], int] = {}

    def flows(self) -> list[Flow]:
        from dockmesh.policy.droplog import parse_flows
        from dockmesh.policy.nft import ForeignTable, Nft, is_ours

        doc = _nft_errors(lambda: Nft().list_table(self.table))
        if doc is None:
            self.note = f"no policy applied (table inet {self.table})"
            return []
        if not is_ours(doc, self.table):
            raise UserError(str(ForeignTable(self.table)))
        self.note = ""
        return parse_flows(doc, self.table)

    def name(self, flows: list[Flow]) -> list[NamedDrop]:
        import time

        from dockmesh.policy.compile import compile_policy
        from dockmesh.policy.droplog import describe, name_flows

        topo = self._topo
        known = set() if topo is None else {a for c in topo.containers for a in _addresses(c)}
        unknown = any(f.saddr not in known or f.daddr not in known for f in flows)
        if topo is None or (unknown and time.monotonic() - self._loaded_at >= self.RELOAD_S):
            topo = self._topo = load_topology(self.engine)
            self._loaded_at = time.monotonic()
            try:
                applied = policy_store(self.table).load()
            except ValueError:
                applied = None
            if applied is not None:
                self.mode = applied.mode
                rs = compile_policy(applied.policy, topo, applied.mode, self.table)
                self._logs = describe(rs.logs)

        def who(address: str) -> str | None:
            holders = topo.attachments_at(address) if topo is not None else ()
            names = sorted({c.name for c, _ in holders})
            return ",".join(names) or None

        return name_flows(flows, self._logs, who, audit=self.mode == "audit")

    def read(self) -> list[NamedDrop]:
        flows = self.flows()
        self.seen = {f.key: f.packets for f in flows}
        return self.name(flows)

    def more(self) -> list[NamedDrop]:
        """What grew since the last reading."""
        from dockmesh.policy.droplog import news

        flows = self.flows()
        fresh = news(self.seen, flows)
        self.seen = {f.key: f.packets for f in flows}
        return self.name(fresh) if fresh else []


def _addresses(c: Any) -> list[str]:
    return [x for a in c.attachments for x in (a.ipv4, a.ipv6) if x]


def _follow(reader: _DropReader, json_out: bool) -> None:
    import json
    import sys
    import time

    def emit(drops: list[NamedDrop]) -> None:
        for d in drops:
            if json_out:  # one document a line: a stream a program reads as it comes
                sys.stdout.write(json.dumps(d.to_json()) + "\n")
            else:
                out.print(d.line(), markup=False, highlight=False)
        sys.stdout.flush()

    emit(reader.read())
    try:
        while True:
            time.sleep(1.0)
            emit(reader.more())
    except KeyboardInterrupt:
        return

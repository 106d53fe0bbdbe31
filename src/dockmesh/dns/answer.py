"""DNS answers as prebuilt wire bytes: a query's bytes in, the response's bytes out.

Pure: no sockets, no clock, no event loop; `dockmesh.dns.server` carries the bytes.

Names (case-insensitive, for each of `domains`, by default `dockmesh` and `consul`):

- `<name>.service.<domain>`: A (AAAA) for each passing instance's address (a name as the
  catalog reads it, `Catalog.members`: `<service>.<project>` is that project's only, a short
  name two projects share answers neither unless one claims it), SRV
  `1 <weight> <port> <node>.node.<domain>` with the target's A (AAAA) record in the additional
  section. `<tag>.<name>.service.<domain>` the same for instances carrying the tag.
  `_<name>._tcp.service.<domain>` (RFC 2782) and `_<name>._<tag>.service.<domain>` (as Consul
  reads them) answer like `<name>.service` and `<tag>.<name>.service`.
- `<node>.node.<domain>`: A (AAAA) of the instance whose SRV target this is (health aside: it
  names an address, like Consul's node lookups). `<node>` is the instance id when it is already
  a lowercase DNS label, else a sanitised form of it with a short hash (`node_label`). An
  instance whose address is a host name gets that name as its SRV target instead.
- `<container>.container.<domain>`: A (AAAA) of each address of the running container of
  that name (or id, or unique id prefix) on any network.
- `<domain>` itself: SOA, and NS `<agent node>.node.<dc>.<domain>` (Consul's NS target) with
  its A (AAAA) record in the additional section; `ns.<domain>`, the SOA's primary server name,
  answers that address too, so every name the zone hands out resolves.
- `<name>.service.<dc>.<domain>`, `<node>.node.<dc>.<domain>` (and Consul's `….<dc>.dc.…`):
  the same as without the datacenter when it is the agent's (`datacenter`, default `dc1`);
  any other datacenter is NXDOMAIN, as Consul answers for a datacenter it has no path to:
  dockmesh knows one datacenter and never answers another's name with its own data.
- `<reversed address>.in-addr.arpa` and `….ip6.arpa`: PTR to the `<node>.node.<dc>.<domain>`
  (first domain) of each instance with that address (as `<node>.node` names it), or of the
  agent's own node. Any other reverse name is REFUSED: dockmesh is authoritative for the
  addresses it hands out, not for the reverse zones, and another server may know the name.
- `<domain>` itself: SOA. `service.`, `node.` and `container.<domain>`: NOERROR, no records.

Only passing instances appear; a service without any, or an unknown name inside a domain, is
NXDOMAIN with the domain's SOA in the authority section (its minimum is the TTL: negative
answers are cached no longer than positive ones). A name that exists but has no record of the
asked type (AAAA of IPv4-only instances, TXT, MX, …) is NOERROR with no answer and the SOA.
Names outside the domains are REFUSED: no recursion (RA is never set), no forwarding; with
EDNS, the response carries an Extended DNS Error (RFC 8914) 20 "Not Authoritative" whose text
names the domains served. REFUSED, not NXDOMAIN: Docker's embedded DNS then asks a
container's next `--dns` server (and NXDOMAIN would claim the name does not exist anywhere). ANY is
answered with every A, AAAA and SRV record the name has (the SOA at the apex), in one order.
Zone transfers are REFUSED, MAILA/MAILB and opcodes other than QUERY are NOTIMP, an EDNS
version above 0 is BADVERS. Responses are authoritative (AA) for names inside the domains.

Truncation: over UDP a response may be as large as 512 bytes, or the client's EDNS payload size
(at most `max_udp_payload`); over TCP, 65535. What does not fit is dropped, the additional
section first (without TC, RFC 2181 §9: the client can ask for the SRV targets), then answer
records from the end, with TC set so the client retries over TCP.

Theory of operation
-------------------
The response to a query depends on the bytes after its ID and on the catalog (and, for
container names, the topology) — never on anything else. So:

1. The *exact* caches (`udp_exact`, `tcp_exact`) map the bytes after a query's ID to a
   rotation of finished responses (without their ID): a hit costs one slice, one dict lookup
   and one concatenation, and the server inlines that lookup. Only queries read by hand whose
   bytes hold nothing that varies per query (`Query.plain`: no EDNS options such as cookies)
   are keyed there, and never container names, whose answers depend on the topology, of which
   there is no change announcement.
2. Below it, *prepared* answers are keyed by (lowercased name, type, class, size limit, EDNS):
   the response's flags, section counts and the records after the question, per rotation.
   The question is copied from the query as sent (its case included: clients that randomise
   case, RFC draft "0x20", compare it), and every record's owner is a compression pointer
   into it, so one prepared body serves every spelling of the name. A container answer
   remembers the topology it was built from and is rebuilt when the provider returns another.
3. `catalog_changed()` (on every catalog change that DNS reads) and `invalidate()` clear
   both levels in place, never replacing the dicts, so a server that bound their `get` keeps
   seeing the current content. Both levels are bounded: a full one is cleared, so a flood of
   distinct names costs rebuilds, not memory.
4. Each record is framed by hand as an independent byte string (owner compressed to the
   question name, or written out for additional records; SRV targets are never compressed,
   RFC 3597 §4), so rotating the order, counting and truncating work on lists of bytes.
   dnspython reads what the hand parser leaves (`wire.parse_unusual`) and names the
   constants; the tests check every kind of answer by parsing it with dnspython.
5. Round robin: an answer with several records is prepared in up to `max_rotations`
   rotations; each response takes the next one (Docker's DNS rotates, Consul shuffles; a
   rotation costs nothing per query).
6. Nothing raises out of `answer`: a readable header gets an answer (SERVFAIL if building one
   failed, counted in `errors`), an unreadable packet gets None (dropped, counted).
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype

from dockmesh.catalog.state import TOPIC_CHECKS, TOPIC_SERVICES, Catalog
from dockmesh.dns import wire
from dockmesh.dns.wire import (
    AA,
    ANY,
    AXFR,
    BADVERS,
    CLASS_ANY,
    ECHOED,
    FORMERR,
    IN,
    IXFR,
    MAILA,
    MAILB,
    MAX_MESSAGE,
    MIN_UDP_PAYLOAD,
    NOERROR,
    NOTIMP,
    NXDOMAIN,
    OPT,
    POINTER_TO_QNAME,
    QR,
    REFUSED,
    SERVFAIL,
    SOA,
    SRV,
    TC,
    Query,
)
from dockmesh.model.catalog import Instance
from dockmesh.model.topology import Container, Topology

PTR = int(dns.rdatatype.PTR)
NS = int(dns.rdatatype.NS)
_KINDS = (b"service", b"node", b"container")
_IN_ADDR = [b"in-addr", b"arpa"]
_IP6 = [b"ip6", b"arpa"]

TopologyProvider = Callable[[], Topology | None]
# An exact-cache entry: the next (response without its ID, counter index) in rotation.
Rotation = Callable[[], tuple[bytes, int]]

# Counter slots: the rcode (BADVERS, 16, included), plus this when the response was truncated.
TRUNCATED_SLOT = 32
_SLOTS = 64

_NOT_LDH = re.compile(r"[^a-z0-9-]")


def node_label(instance_id: str) -> bytes:
    """The DNS label naming an instance under `node.<domain>`: the id itself when it is a
    lowercase letter-digit-hyphen label already, else a sanitised form with a hash of the id
    (two ids that sanitise alike stay apart)."""
    clean = _NOT_LDH.sub("-", instance_id.lower()).strip("-")
    if clean == instance_id and len(clean) <= 63:
        return clean.encode()
    digest = hashlib.sha256(instance_id.encode()).hexdigest()[:10]
    return f"{clean[:52]}-{digest}".lstrip("-").encode()


@dataclass(frozen=True, slots=True)
class _Name:
    """What one name holds, as framed records whose owner points at the question name."""

    rcode: int  # NOERROR (the name exists), NXDOMAIN or REFUSED
    a: tuple[bytes, ...] = ()
    aaaa: tuple[bytes, ...] = ()
    srv: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()  # (SRV record, its additional records)
    soa: bytes = b""  # the zone's SOA, owner compressed into the question name
    apex: bool = False
    ns: tuple[tuple[bytes, tuple[bytes, ...]], ...] = ()  # (NS record, its glue), at the apex
    ptr: tuple[bytes, ...] = ()
    # A container name: built from `topology` (identity compared), rebuilt when it changes.
    on_topology: bool = False
    topology: Topology | None = None


_REFUSED = _Name(REFUSED)


@dataclass(slots=True)
class _Prepared:
    # Per rotation: (flags without the echoed bits, section counts, records after the
    # question, counter slot).
    variants: tuple[tuple[int, bytes, bytes, int], ...]
    on_topology: bool = False
    topology: Topology | None = None
    cursor: int = 0


class Answerer:
    """Answers queries for the catalog's services and the topology's containers.

    `catalog` is read on a cache miss only; call `catalog_changed()` after every change of
    it (`LiveCatalog.subscribe`), or `invalidate()`. `topology` returns the current topology
    (or None before the first), compared by identity when a container answer is used.

    Counters: `counts[rcode]` responses by rcode (`+ TRUNCATED_SLOT` when truncated; see
    `queries_by_rcode`), `dropped` packets not answered, `errors` answers that failed to build
    (answered SERVFAIL; a bug if ever non-zero).
    """

    def __init__(
        self,
        catalog: Catalog,
        topology: TopologyProvider = lambda: None,
        domains: Sequence[str] = ("dockmesh", "consul"),
        ttl: int = 0,
        *,
        max_udp_payload: int = 4096,
        cache_entries: int = 10_000,
        max_rotations: int = 32,
        datacenter: str = "dc1",
        node: str = "dockmesh",
        node_address: str = "127.0.0.1",
    ) -> None:
        if not domains:
            raise ValueError("at least one DNS domain is needed")
        self.catalog = catalog
        # The agent's own node, as the API shows it: the zone's name server.
        self.datacenter = datacenter.lower().encode()
        self.node = node_label(node)
        self.node_address = node_address
        self._topology = topology
        self.ttl = max(0, min(int(ttl), 0x7FFFFFFF))
        self.max_udp_payload = max(MIN_UDP_PAYLOAD, min(max_udp_payload, MAX_MESSAGE))
        self.cache_entries = max(1, cache_entries)
        self.max_rotations = max(1, max_rotations)
        labelled = []
        for d in domains:
            labels = wire.split_labels(dns.name.from_text(d).to_wire() or b"\0")
            if not labels:  # the root would make every name ours: recursion by another name
                raise ValueError(f"not a DNS domain to serve: {d!r}")
            labelled.append([x.lower() for x in labels])
        # PTR targets are named in the first domain, as given.
        self._domains_in_order = [x[:] for x in labelled]
        # Longest first: with `a.b` and `b` both served, `x.a.b` belongs to `a.b`.
        self._domains = sorted(labelled, key=len, reverse=True)
        served = ", ".join(b".".join(d).decode("ascii", "replace") + "." for d in labelled)
        self._not_ours = wire.ede(
            wire.EDE_NOT_AUTHORITATIVE,
            f"not served here: this server answers for {served} only, without recursion; "
            "ask another resolver for other names",
        )
        self.udp_exact: dict[bytes, Rotation] = {}
        self.tcp_exact: dict[bytes, Rotation] = {}
        self._prepared: dict[tuple[bytes, int, int, int, int], _Prepared] = {}
        self._services: dict[bytes, list[str]] | None = None
        self._nodes: dict[bytes, Instance] | None = None
        self._reverse: dict[bytes, list[bytes]] | None = None
        self._containers: tuple[Topology, dict[bytes, list[Container]]] | None = None
        self._soa_rdata: dict[bytes, bytes] = {}
        self._seen = (catalog.topic_index(TOPIC_SERVICES), catalog.topic_index(TOPIC_CHECKS))
        self.counts = [0] * _SLOTS
        self.dropped = 0
        self.errors = 0

    def set_node(self, node: str, datacenter: str, address: str = "127.0.0.1") -> None:
        """The agent's node as the API shows it (name, datacenter, address): the NS target,
        the datacenter names answer for, and what `ns.<domain>` resolves to."""
        self.datacenter = datacenter.lower().encode()
        self.node = node_label(node)
        self.node_address = address
        self.invalidate()

    # --- cache ------------------------------------------------------------------------

    def catalog_changed(self, catalog: Catalog) -> None:
        """After a catalog change (`LiveCatalog.subscribe`): forgets the prebuilt answers,
        unless the change touched nothing DNS reads. Answers depend on the instances (topic
        `services`) and their checks' statuses (topic `checks`); a KV write touches neither,
        and an application writing KV often would otherwise empty the caches each time."""
        seen = (catalog.topic_index(TOPIC_SERVICES), catalog.topic_index(TOPIC_CHECKS))
        if catalog is self.catalog and seen == self._seen:
            return
        self._seen = seen
        self.invalidate(catalog)

    def invalidate(self, catalog: Catalog | None = None) -> None:
        """Forgets every prebuilt answer (after a catalog change; with `catalog`, reads that
        one from now on)."""
        if catalog is not None:
            self.catalog = catalog
        self.udp_exact.clear()
        self.tcp_exact.clear()
        self._prepared.clear()
        self._services = None
        self._nodes = None
        self._reverse = None
        self._soa_rdata.clear()

    def queries_by_rcode(self) -> dict[str, int]:
        """Responses so far by rcode name (`NOERROR`, `NXDOMAIN`, …), truncated ones included."""
        out: dict[str, int] = {}
        for rcode in range(TRUNCATED_SLOT):
            n = self.counts[rcode] + self.counts[rcode + TRUNCATED_SLOT]
            if n:
                out[dns.rcode.to_text(dns.rcode.Rcode.make(rcode))] = n
        return out

    @property
    def truncated(self) -> int:
        return sum(self.counts[TRUNCATED_SLOT:])

    # --- the query path -----------------------------------------------------------------

    def answer(self, packet: bytes, tcp: bool = False) -> bytes | None:
        """The response to `packet` (a DNS message, without TCP's length prefix), or None
        when it must be dropped. Never raises."""
        hit = (self.tcp_exact if tcp else self.udp_exact).get(packet[2:])
        if hit is not None:
            tail, slot = hit()
            self.counts[slot] += 1
            return packet[:2] + tail
        try:
            return self._answer(packet, tcp)
        except Exception:
            self.errors += 1
            if len(packet) < 12 or packet[2] & 0x80:
                self.dropped += 1
                return None
            self.counts[SERVFAIL] += 1
            return wire.header_only(packet, SERVFAIL)

    def _answer(self, packet: bytes, tcp: bool) -> bytes | None:
        q = wire.parse_query(packet)
        if q is None:
            self.dropped += 1
            return None
        if isinstance(q, int):
            self.counts[q] += 1
            return wire.header_only(packet, q)
        if q.edns > 0:
            self.counts[BADVERS] += 1
            return (
                packet[:2]
                + wire.flags_bytes(QR | (q.flags & ECHOED))
                + wire.counts(0, 0, 1)
                + q.question
                + wire.opt(self.max_udp_payload, BADVERS, q.do)
            )
        if tcp:
            limit = MAX_MESSAGE
        elif q.edns < 0:
            limit = MIN_UDP_PAYLOAD
        else:
            limit = max(MIN_UDP_PAYLOAD, min(q.payload, self.max_udp_payload))
        key = (q.qname, q.qtype, q.qclass, limit, -1 if q.edns < 0 else int(q.do))
        prep = self._prepared.get(key)
        if prep is None or (prep.on_topology and prep.topology is not self._topology()):
            if len(self._prepared) >= self.cache_entries:
                self._prepared.clear()
            prep = self._prepare(q, limit)
            self._prepared[key] = prep
        variants = prep.variants
        i = prep.cursor
        prep.cursor = (i + 1) % len(variants)
        echo = q.flags & ECHOED
        flags, section_counts, body, slot = variants[i]
        self.counts[slot] += 1
        if q.plain and not prep.on_topology:
            exact = self.tcp_exact if tcp else self.udp_exact
            if len(exact) >= self.cache_entries:
                exact.clear()
            order = variants[i + 1 :] + variants[: i + 1]
            tails = [(wire.flags_bytes(f | echo) + c + q.question + b, s) for f, c, b, s in order]
            exact[packet[2:]] = itertools.cycle(tails).__next__
        return packet[:2] + wire.flags_bytes(flags | echo) + section_counts + q.question + body

    # --- building answers ----------------------------------------------------------------

    def _prepare(self, q: Query, limit: int) -> _Prepared:
        if q.qclass not in (IN, CLASS_ANY) or q.qtype in (AXFR, IXFR):
            return _Prepared(self._render(q, limit, REFUSED, False, [((), ())], ()))
        if q.qtype in (MAILA, MAILB):
            return _Prepared(self._render(q, limit, NOTIMP, False, [((), ())], ()))
        if q.qtype == OPT:  # OPT is a pseudo-record: asking for one is malformed
            return _Prepared(self._render(q, limit, FORMERR, False, [((), ())], ()))
        name = self._lookup(q.qname)
        soa = (name.soa,) if name.soa else ()  # a reverse name has no zone of ours
        if name.rcode == REFUSED:
            variants = self._render(q, limit, REFUSED, False, [((), ())], (), self._not_ours)
        elif name.rcode == NXDOMAIN:
            variants = self._render(q, limit, NXDOMAIN, True, [((), ())], soa)
        else:
            variants = self._render(q, limit, NOERROR, True, self._rotations(name, q.qtype), soa)
        return _Prepared(variants, name.on_topology, name.topology)

    def _rotations(
        self, name: _Name, qtype: int
    ) -> list[tuple[tuple[bytes, ...], tuple[bytes, ...]]]:
        """The (answer, additional) records per rotation; one empty pair for no data."""
        if qtype == ANY:
            answers = (*name.a, *name.aaaa, *(s for s, _ in name.srv), *name.ptr)
            if name.apex:
                answers = (name.soa, *(r for r, _ in name.ns), *answers)
            extra = tuple(x for _, add in (*name.srv, *name.ns) for x in add)
            return [(answers, extra)]
        if qtype == wire.A:
            records: Sequence[tuple[bytes, tuple[bytes, ...]]] = [(r, ()) for r in name.a]
        elif qtype == wire.AAAA:
            records = [(r, ()) for r in name.aaaa]
        elif qtype == SRV:
            records = name.srv
        elif qtype == SOA and name.apex:
            records = [(name.soa, ())]
        elif qtype == NS:
            records = name.ns
        elif qtype == PTR:
            records = [(r, ()) for r in name.ptr]
        else:
            records = []
        if not records:
            return [((), ())]
        n = len(records)
        step = -(-n // self.max_rotations)
        out = []
        for start in range(0, n, step):
            turn = [*records[start:], *records[:start]]
            out.append((tuple(r for r, _ in turn), tuple(x for _, add in turn for x in add)))
        return out

    def _render(
        self,
        q: Query,
        limit: int,
        rcode: int,
        authoritative: bool,
        rotations: Iterable[tuple[tuple[bytes, ...], tuple[bytes, ...]]],
        authority: tuple[bytes, ...],
        ede: bytes = b"",
    ) -> tuple[tuple[int, bytes, bytes, int], ...]:
        opt = wire.opt(self.max_udp_payload, 0, q.do, ede) if q.edns >= 0 else b""
        base = 12 + len(q.question) + len(opt)
        out = []
        for answers, additional in rotations:
            auth = authority if not answers else ()
            truncated = False
            size = base + sum(map(len, answers)) + sum(map(len, auth))
            if size + sum(map(len, additional)) > limit:
                additional = ()
                if size > limit:
                    truncated = True
                    kept: list[bytes] = []
                    room = limit - base
                    for r in answers:
                        if len(r) > room:
                            break
                        kept.append(r)
                        room -= len(r)
                    answers = tuple(kept)
                    auth = ()
            flags = QR | (AA if authoritative else 0) | (TC if truncated else 0) | rcode
            counts = wire.counts(len(answers), len(auth), len(additional) + (1 if opt else 0))
            body = b"".join((*answers, *auth, *additional, opt))
            out.append((flags, counts, body, rcode + (TRUNCATED_SLOT if truncated else 0)))
        return tuple(out)

    # --- names -----------------------------------------------------------------------------

    def _lookup(self, qname: bytes) -> _Name:
        labels = wire.split_labels(qname)
        if labels[-2:] in (_IN_ADDR, _IP6):
            return self._ptr(labels)
        for domain in self._domains:
            k = len(domain)
            if len(labels) >= k and labels[len(labels) - k :] == domain:
                break
        else:
            return _REFUSED
        rest = labels[: len(labels) - k]
        # The domain's labels end the question name: its SOA's owner points there.
        soa = self._soa(wire.pointer(12 + len(qname) - len(wire.wire_name(domain))), domain)
        if not rest:
            return _Name(NOERROR, soa=soa, apex=True, ns=self._ns(domain))
        if rest == [b"ns"]:
            return self._addresses([self.node_address], soa)
        rest, datacenter = _datacenter(rest)
        if datacenter is not None and datacenter != self.datacenter:
            return _Name(NXDOMAIN, soa=soa)
        kind, inner = rest[-1], rest[:-1]
        if kind == b"service":
            return self._service(inner, soa, domain) if inner else _Name(NOERROR, soa=soa)
        if kind == b"node":
            if not inner:
                return _Name(NOERROR, soa=soa)
            return self._node(inner[0], soa) if len(inner) == 1 else _Name(NXDOMAIN, soa=soa)
        if kind == b"container":
            return self._container(b".".join(inner), soa) if inner else _Name(NOERROR, soa=soa)
        return _Name(NXDOMAIN, soa=soa)

    def _own_node(self, domain: list[bytes]) -> bytes:
        """The agent's node as Consul names a server: `<node>.node.<dc>.<domain>`, wire form."""
        return wire.wire_name([self.node, b"node", self.datacenter, *domain])

    def _ns(self, domain: list[bytes]) -> tuple[tuple[bytes, tuple[bytes, ...]], ...]:
        target = self._own_node(domain)
        glue = _address_record(self.node_address)
        if glue is None or glue[0] == 0:
            return ()
        rdtype, rdata = glue
        return (
            (
                wire.rr(POINTER_TO_QNAME, NS, self.ttl, target),
                (wire.rr(target, rdtype, self.ttl, rdata),),
            ),
        )

    def _ptr(self, labels: list[bytes]) -> _Name:
        reverse = self._reverse
        if reverse is None:
            reverse = {}
            for inst in self.catalog.instances():
                packed = _packed(inst.address)
                if packed is not None:
                    reverse.setdefault(packed, []).append(self._own_node_named(node_label(inst.id)))
            own = _packed(self.node_address)
            if own is not None:
                reverse.setdefault(own, [self._own_node_named(self.node)])
            self._reverse = reverse
        packed = _reversed_address(labels)
        targets = reverse.get(packed) if packed is not None else None
        if not targets:
            return _REFUSED
        ptr = tuple(wire.rr(POINTER_TO_QNAME, PTR, self.ttl, t) for t in dict.fromkeys(targets))
        return _Name(NOERROR, ptr=ptr)

    def _own_node_named(self, label: bytes) -> bytes:
        return wire.wire_name([label, b"node", self.datacenter, *self._domains_in_order[0]])

    def _soa(self, owner: bytes, domain: list[bytes]) -> bytes:
        key = b".".join(domain)
        rdata = self._soa_rdata.get(key)
        if rdata is None:
            rdata = wire.soa_rdata(
                wire.wire_name([b"ns", *domain]),
                wire.wire_name([b"hostmaster", *domain]),
                self.catalog.index & 0xFFFFFFFF,
                # refresh, retry, expire: unused (no secondaries); minimum: RFC 2308, negative
                # answers live min(SOA TTL, minimum), so no longer than positive ones.
                (3600, 600, 86400, self.ttl),
            )
            self._soa_rdata[key] = rdata
        return wire.rr(owner, SOA, self.ttl, rdata)

    def _service_map(self) -> dict[bytes, list[str]]:
        """Lowercased service name → the catalog's names (DNS does not tell `API` from `api`).
        A project's service is named `<service>.<project>` too (`Catalog.service_names`), so
        `api.demo.service` is project demo's `api` before it is tag `api` of a service `demo`."""
        services = self._services
        if services is None:
            services = {}
            for svc in self.catalog.service_names():
                services.setdefault(svc.encode().lower(), []).append(svc)
            self._services = services
        return services

    def _service(self, inner: list[bytes], soa: bytes, domain: list[bytes]) -> _Name:
        candidates: list[tuple[bytes, bytes | None]]
        if len(inner) == 2 and inner[0][:1] == b"_" and inner[1][:1] == b"_":
            tag: bytes | None = inner[1][1:]
            candidates = [(inner[0][1:], None if tag == b"tcp" else tag)]
        else:
            # A whole service name first (names may hold dots), then `<tag>.<name>`.
            candidates = [(b".".join(inner), None)]
            if len(inner) >= 2:
                candidates.append((b".".join(inner[1:]), inner[0]))
        services = self._service_map()
        for wanted, tag in candidates:
            instances = [
                e.instance
                for e in self.catalog.entries_any_case(services.get(wanted, ()), passing=True)
                if tag is None or tag in {t.encode().lower() for t in e.instance.tags}
            ]
            if instances:
                return self._instances(instances, soa, domain)
        return _Name(NXDOMAIN, soa=soa)

    def _instances(self, instances: list[Instance], soa: bytes, domain: list[bytes]) -> _Name:
        a: dict[bytes, None] = {}
        aaaa: dict[bytes, None] = {}
        srv: dict[bytes, tuple[bytes, ...]] = {}
        for inst in instances:
            record = _address_record(inst.address)
            if record is None:
                continue
            rdtype, rdata = record
            if rdtype == 0:  # a host name: the SRV target itself, nothing to add
                target = dns.name.from_wire(rdata, 0)[0]
                additional: tuple[bytes, ...] = ()
            else:
                (a if rdtype == wire.A else aaaa)[
                    wire.rr(POINTER_TO_QNAME, rdtype, self.ttl, rdata)
                ] = None
                target = dns.name.Name([node_label(inst.id), b"node", *domain, b""])
                additional = (wire.rr(target.to_wire() or b"", rdtype, self.ttl, rdata),)
            srv_rdata = wire.srv_rdata(1, inst.weight, inst.port, target.to_wire() or b"")
            srv.setdefault(wire.rr(POINTER_TO_QNAME, SRV, self.ttl, srv_rdata), additional)
        return _Name(NOERROR, tuple(a), tuple(aaaa), tuple(srv.items()), soa)

    def _node(self, label: bytes, soa: bytes) -> _Name:
        nodes = self._nodes
        if nodes is None:
            nodes = {node_label(i.id): i for i in self.catalog.instances()}
            self._nodes = nodes
        inst = nodes.get(label)
        if inst is None:
            if label == self.node:  # the agent's own node: the NS records' target
                return self._addresses([self.node_address], soa)
            return _Name(NXDOMAIN, soa=soa)
        return self._addresses([inst.address], soa)

    def _container(self, name: bytes, soa: bytes) -> _Name:
        topology = self._topology()
        if topology is None:
            return _Name(NXDOMAIN, soa=soa, on_topology=True)
        index = self._containers
        if index is None or index[0] is not topology:
            by_name: dict[bytes, list[Container]] = {}
            for c in topology.containers:
                by_name.setdefault(c.name.encode().lower(), []).append(c)
            index = (topology, by_name)
            self._containers = index
        found = index[1].get(name)
        if not found:
            # Ids (full or a unique prefix) are lowercase hex: the topology's own lookup.
            by_id = topology.container(name.decode("latin-1"))
            found = [by_id] if by_id is not None else []
        if not found:
            return _Name(NXDOMAIN, soa=soa, on_topology=True, topology=topology)
        addresses = [
            address
            for c in found
            if c.running
            for att in c.attachments
            for address in (att.ipv4, att.ipv6)
            if address
        ]
        name_ = self._addresses(addresses, soa)
        return _Name(NOERROR, name_.a, name_.aaaa, soa=soa, on_topology=True, topology=topology)

    def _addresses(self, addresses: Iterable[str], soa: bytes) -> _Name:
        a: dict[bytes, None] = {}
        aaaa: dict[bytes, None] = {}
        for address in addresses:
            record = _address_record(address)
            if record is None or record[0] == 0:
                continue
            rdtype, rdata = record
            (a if rdtype == wire.A else aaaa)[
                wire.rr(POINTER_TO_QNAME, rdtype, self.ttl, rdata)
            ] = None
        return _Name(NOERROR, tuple(a), tuple(aaaa), soa=soa)


def _datacenter(rest: list[bytes]) -> tuple[list[bytes], bytes | None]:
    """The labels before the domain without a datacenter, and that datacenter if the name
    gives one: `x.service.dc1` (Consul's classic form) or `x.service.dc1.dc`."""
    if len(rest) >= 3 and rest[-1] == b"dc" and rest[-3] in _KINDS[:2]:
        return rest[:-2], rest[-2]
    if len(rest) >= 2 and rest[-2] in _KINDS[:2] and rest[-1] not in _KINDS:
        return rest[:-1], rest[-1]
    return rest, None


def _packed(address: str) -> bytes | None:
    try:
        return ipaddress.ip_address(address).packed
    except ValueError:
        return None


def _reversed_address(labels: list[bytes]) -> bytes | None:
    """The address a full reverse name stands for (`4.3.2.10.in-addr.arpa` → 10.2.3.4, 32
    nibbles under ip6.arpa), None for a partial or malformed one."""
    parts = labels[:-2]
    try:
        if labels[-2] == b"in-addr":
            if len(parts) != 4 or not all(p.isdigit() and len(p) <= 3 for p in parts):
                return None
            return ipaddress.IPv4Address(".".join(p.decode() for p in reversed(parts))).packed
        if len(parts) != 32 or not all(len(p) == 1 for p in parts):
            return None
        return bytes.fromhex(b"".join(reversed(parts)).decode("ascii"))
    except ValueError:  # an octet above 255, a label that is not hex
        return None


def _address_record(address: str) -> tuple[int, bytes] | None:
    """(A or AAAA, rdata) for an IP address; (0, wire name) for a host name; None when it is
    neither (an instance without an address)."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        pass
    else:
        return (wire.A if ip.version == 4 else wire.AAAA), ip.packed
    if not address:
        return None
    try:
        return 0, dns.name.from_text(address).to_wire() or b""
    except Exception:  # not a valid host name either
        return None

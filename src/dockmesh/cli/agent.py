"""`dockmesh agent`: the control plane (catalog, health checks, HTTP API, DNS)."""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from typing import Annotated

import typer

from dockmesh.cli.common import EngineOpt, UserError, engine_refs, finite, handle_errors
from dockmesh.dns.limits import DnsLimits

DEFAULT_LIMITS = DnsLimits()


def parse_hostport(value: str, option: str) -> tuple[str, int]:
    """`HOST:PORT` or `[V6]:PORT`, with the port in range."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise UserError(f"{option} {value!r}: expected HOST:PORT, e.g. 127.0.0.1:8500")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    problem = _host_problem(host, bracketed)
    if problem is not None:
        raise UserError(f"{option} {value!r}: {problem}")
    if not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise UserError(f"{option} {value!r}: the port must be a number from 0 to 65535")
    return host, int(port)


def _host_problem(host: str, bracketed: bool) -> str | None:
    """What is wrong with a HOST of HOST:PORT, or None: an IP address (IPv6 in brackets, or
    alone as `::1:8500`), or a host name's characters; not something that looks like an IPv4
    address and is not one (`999.1.1.1`)."""
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    if bracketed:
        return None if ip is not None and ip.version == 6 else "brackets hold an IPv6 address"
    if ip is not None:
        return None
    if "[" in host or "]" in host:
        return "unbalanced brackets (an IPv6 address is written [::1]:8500)"
    digits = all(c.isdigit() or c == "." for c in host)
    chars = all(c.isascii() and (c.isalnum() or c in ".-_") for c in host)
    if digits or not chars:
        return f"{host!r} is not an IP address or a host name"
    return None


DATACENTER = re.compile(r"[A-Za-z0-9_-]{1,63}")
# The same rule as `catalog.sharing.NODE_NAME` (not imported: the command line loads lightly).
NODE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def register(app: typer.Typer) -> None:
    from dockmesh.cli import agentinstall, hostdns

    group = typer.Typer(
        help="Run the agent (no subcommand), install it as a container or host service, or "
        "set the host up around it.",
        context_settings={"help_option_names": ["-h", "--help"]},
        rich_markup_mode=None,
    )
    agentinstall.register(group)
    hostdns.register(group)
    app.add_typer(group, name="agent")

    @group.callback(invoke_without_command=True)
    @handle_errors
    def agent(
        ctx: typer.Context,
        api: Annotated[
            str, typer.Option("--api", help="Where the HTTP API listens (HOST:PORT).")
        ] = "127.0.0.1:8500",
        dns: Annotated[
            str,
            typer.Option("--dns", help="Where the DNS server listens (HOST:PORT; 'off': none)."),
        ] = "127.0.0.1:8600",
        state: Annotated[
            str,
            typer.Option(
                "--state",
                help="SQLite file for manual registrations and KV ('': keep them in memory).",
            ),
        ] = "/var/lib/dockmesh/state.db",
        engine: EngineOpt = None,
        register_compose: Annotated[
            bool,
            typer.Option(
                "--register-compose",
                help="Register every Docker Compose service that exposes exactly one port.",
            ),
        ] = False,
        no_gateway_dns: Annotated[
            bool,
            typer.Option(
                "--no-gateway-dns",
                help="Do not serve DNS on the Docker bridge networks' gateway addresses.",
            ),
        ] = False,
        gateway_dns_port: Annotated[
            int,
            typer.Option(
                "--gateway-dns-port",
                min=1,
                max=65535,
                help="The port DNS listens on at each bridge gateway (Docker's DNS forwards "
                "to 53).",
            ),
        ] = 53,
        dns_tcp_per_source: Annotated[
            int,
            typer.Option(
                "--dns-tcp-per-source",
                min=1,
                max=1_000_000,
                help="DNS TCP connections one source address may hold; one more closes its "
                "connection idle the longest (loopback: no cap unless --dns-limit-loopback).",
            ),
        ] = DEFAULT_LIMITS.tcp_per_source,
        dns_tcp_max: Annotated[
            int,
            typer.Option(
                "--dns-tcp-max",
                min=1,
                max=1_000_000,
                help=(
                    "DNS TCP connections in all; one more closes the one idle the longest"
                    " (all busy: the oldest of the source holding the most)."
                ),
            ),
        ] = DEFAULT_LIMITS.max_tcp_connections,
        dns_tcp_idle_timeout: Annotated[
            float,
            typer.Option(
                "--dns-tcp-idle-timeout",
                min=0.001,
                max=3600.0,
                callback=finite,
                help="Seconds a DNS TCP connection may stay without a query.",
            ),
        ] = DEFAULT_LIMITS.tcp_idle_timeout_s,
        dns_tcp_slow_timeout: Annotated[
            float,
            typer.Option(
                "--dns-tcp-slow-timeout",
                min=0.001,
                max=600.0,
                callback=finite,
                help="Seconds a DNS TCP client has to send a whole query from its first byte, "
                "and to read an answer.",
            ),
        ] = DEFAULT_LIMITS.tcp_slow_timeout_s,
        dns_udp_rate: Annotated[
            float,
            typer.Option(
                "--dns-udp-rate",
                min=0.0,
                max=10_000_000.0,
                callback=finite,
                help="DNS UDP queries a second one source address may ask (0: no limit); "
                "more are dropped.",
            ),
        ] = DEFAULT_LIMITS.udp_rate,
        dns_udp_burst: Annotated[
            int,
            typer.Option(
                "--dns-udp-burst",
                min=1,
                max=100_000_000,
                help="… and how many it may ask at once above that rate.",
            ),
        ] = DEFAULT_LIMITS.udp_burst,
        dns_limit_loopback: Annotated[
            bool,
            typer.Option(
                "--dns-limit-loopback",
                help="Apply the per-source DNS limits to loopback too (every process of the "
                "host shares that address).",
            ),
        ] = False,
        datacenter: Annotated[
            str,
            typer.Option(
                "--datacenter",
                help="The datacenter Consul clients see (and DNS's <svc>.service.<dc>.<domain>).",
            ),
        ] = "dc1",
        store: Annotated[
            str | None,
            typer.Option(
                "--store",
                help="Share the catalog with other hosts' agents through etcd: "
                "etcd://HOST:PORT[,HOST:PORT…] (default: this host's catalog alone; "
                "registrations and KV stay in --state).",
            ),
        ] = None,
        node: Annotated[
            str | None,
            typer.Option(
                "--node",
                help="This agent's node name: its subtree in the shared catalog and the node "
                "Consul clients see (default: the host name with --store, else dockmesh).",
            ),
        ] = None,
    ) -> None:
        """Run the agent: follow the engines, keep the catalog, check health, serve the API
        and DNS. Stops cleanly on SIGTERM or Ctrl-C. `agent install` / `agent uninstall`
        set it up to run by itself (a container, or a systemd service with --service);
        `agent host-dns` makes the host resolve the agent's domain."""
        if ctx.invoked_subcommand is not None:
            return
        from dockmesh.agent import AgentConfig, run_agent
        from dockmesh.cli.policy import configured_policy_dir, netns_dirs_of
        from dockmesh.policy.store import table_name

        try:
            policy_table = table_name(None, os.environ.get("DOCKMESH_POLICY_TABLE"))
        except ValueError as e:
            raise UserError(f"$DOCKMESH_POLICY_TABLE: {e}") from None
        dns_limits = DnsLimits(
            tcp_per_source=dns_tcp_per_source,
            max_tcp_connections=dns_tcp_max,
            tcp_idle_timeout_s=dns_tcp_idle_timeout,
            tcp_slow_timeout_s=dns_tcp_slow_timeout,
            udp_rate=dns_udp_rate,
            udp_burst=dns_udp_burst,
            limit_loopback=dns_limit_loopback,
        )
        problems = dns_limits.problems()
        if problems:
            raise UserError(f"DNS limits: {'; '.join(problems)}")
        if not DATACENTER.fullmatch(datacenter):
            raise UserError(
                f"--datacenter {datacenter!r}: letters, digits, '-' and '_', at most 63"
                " (a DNS label, as Consul requires)"
            )
        etcd: tuple[tuple[str, int], ...] = ()
        if store is not None:
            from dockmesh.catalog.sharing import parse_endpoints

            try:
                etcd = tuple(parse_endpoints(store))
            except ValueError as e:
                raise UserError(f"--store {store!r}: {e}") from None
        # Alone, the node keeps its old name; sharing, two hosts must not both be `dockmesh`.
        default_node = socket.gethostname().split(".")[0] if etcd else ""
        node_name = node if node is not None else (default_node or "dockmesh")
        if not NODE.fullmatch(node_name) or ".." in node_name:
            raise UserError(
                f"--node {node_name!r}: letters, digits, '-', '_' and '.', at most 63, "
                "starting with a letter or digit"
            )
        # `--engine none`: no engine at all (a host that only reads the shared catalog).
        engines = [] if engine == ["none"] else engine_refs(engine)
        config = AgentConfig(
            engines=engines,
            node=node_name,
            etcd=etcd,
            datacenter=datacenter,
            api=parse_hostport(api, "--api"),
            dns=None if dns.lower() in ("off", "none", "") else parse_hostport(dns, "--dns"),
            state=state or None,
            register_compose=register_compose,
            dns_on_gateways=not no_gateway_dns,
            gateway_dns_port=gateway_dns_port,
            dns_limits=dns_limits,
            policy_dir=configured_policy_dir(),
            policy_table=policy_table,
            overlay_netns=netns_dirs_of([(e.name, e.url) for e in engines]),
        )
        run_agent(config)

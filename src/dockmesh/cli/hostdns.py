"""`dockmesh agent host-dns`: the host resolves the agent's domain (forwarded to its DNS)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from dockmesh.cli.common import EXIT_FAILED, UserError, fail, handle_errors, print_json


def register(group: typer.Typer) -> None:
    @group.command("host-dns")
    @handle_errors
    def host_dns(
        dns: Annotated[
            str,
            typer.Option("--dns", help="The agent's DNS server (HOST:PORT, an IP address)."),
        ] = "127.0.0.1:8600",
        domain: Annotated[
            str, typer.Option("--domain", help="The domain forwarded to it.")
        ] = "dockmesh",
        listen: Annotated[
            str,
            typer.Option(
                "--listen",
                help="Where dockmesh's own dnsmasq listens, when it runs one (HOST:PORT; the "
                "host's resolv.conf names it only on port 53).",
            ),
        ] = "127.0.0.1:53",
        root: Annotated[
            Path,
            typer.Option("--root", help="The file system to configure (an image's, a test's)."),
        ] = Path("/"),
        remove: Annotated[
            bool, typer.Option("--remove", help="Undo it: remove what dockmesh wrote.")
        ] = False,
        print_only: Annotated[
            bool, typer.Option("--print", help="Print the plan (files, restart); change nothing.")
        ] = False,
        as_json: Annotated[bool, typer.Option("--json", help="One JSON document.")] = False,
    ) -> None:
        """Make the host resolve the agent's domain: a systemd-resolved drop-in where resolved
        runs, else a dnsmasq rule (and dnsmasq run by dockmesh when none runs). Idempotent;
        never overwrites a file dockmesh did not write."""
        from dockmesh.cli.agent import parse_hostport
        from dockmesh.codecs.hostdns import HostDnsError, HostDnsInputError
        from dockmesh.host.hostdns import apply_host_dns, plan_host_dns, remove_host_dns

        server, port = parse_hostport(dns, "--dns")
        listen_at = parse_hostport(listen, "--listen")
        try:
            if remove:
                if print_only:
                    raise UserError("--remove and --print: remove has no plan to print")
                done = remove_host_dns(root)
                _out({"removed": True, "done": done}, done, as_json)
                return
            plan = plan_host_dns(domain, server, port, root=root, listen=listen_at)
            if print_only:
                lines = [f"resolver: {plan.resolver}"]
                for f in plan.all_files():
                    lines += [f"--- {f.path}", f.text.rstrip("\n")]
                lines += [f"then: {plan.restart.describe()}", *plan.notes]
                _out(plan.to_json(), lines, as_json)
                return
            done = apply_host_dns(plan)
            _out({**plan.to_json(), "done": done}, [*done, *plan.notes], as_json)
        except HostDnsInputError as e:
            raise UserError(str(e)) from None
        except HostDnsError as e:
            fail(f"dockmesh: {e}", EXIT_FAILED)


def _out(doc: dict[str, object], lines: list[str], as_json: bool) -> None:
    if as_json:
        print_json(doc)
    else:
        typer.echo("\n".join(lines))

"""`dockmesh proxy`: the data plane (a health-aware HTTP load balancer)."""

from __future__ import annotations

import re
import sys
from typing import Annotated, Any

import typer
from typer._click.core import Context
from typer._click.exceptions import UsageError as ClickUsageError
from typer.core import TyperCommand

from dockmesh.cli.agent import parse_hostport
from dockmesh.cli.common import UserError, finite, handle_errors


class OneLineErrors(TyperCommand):
    """Bad flags exit 2 with one line on stderr (the CLI's rule for bad input), not click's
    framed panel."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: Context | None = None,
        **extra: Any,
    ) -> Context:
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except ClickUsageError as e:
            sys.stderr.write(f"dockmesh proxy: {e.format_message()}\n")
            sys.exit(2)


def register(app: typer.Typer) -> None:
    @app.command("proxy", cls=OneLineErrors)
    @handle_errors
    def proxy(
        listen: Annotated[
            str, typer.Option("--listen", help="Where clients connect (HOST:PORT).")
        ] = "",
        service: Annotated[
            str | None,
            typer.Option(
                "--service",
                help="Send to this service's passing instances (with --agent); "
                "<service>.<project> for one project's only.",
            ),
        ] = None,
        agent: Annotated[
            str | None,
            typer.Option(
                "--agent",
                help="The agent whose catalog --service follows (http://HOST:PORT; default "
                "$DOCKMESH_AGENT, else http://127.0.0.1:8500).",
            ),
        ] = None,
        backend: Annotated[
            list[str] | None,
            typer.Option(
                "--backend", help="A static backend (http://HOST:PORT); repeat for several."
            ),
        ] = None,
        project: Annotated[
            list[str] | None,
            typer.Option(
                "--project",
                help="Serve the routes this project's containers declare (dockmesh.http.* "
                "labels, a project file's expose:), read from the agent's catalog; repeat for "
                "several.",
            ),
        ] = None,
        all_projects: Annotated[
            bool,
            typer.Option(
                "--all-projects", help="Serve the routes every container in the catalog declares."
            ),
        ] = False,
        balance: Annotated[
            str,
            typer.Option("--balance", help="round_robin|weighted|least_request|p2c|hash:<header>."),
        ] = "round_robin",
        workers: Annotated[
            int, typer.Option("--workers", help="Worker processes sharing the port (SO_REUSEPORT).")
        ] = 1,
        admin: Annotated[
            str | None, typer.Option("--admin", help="Serve /status and /metrics here (HOST:PORT).")
        ] = None,
        config: Annotated[
            str | None,
            typer.Option(
                "--config",
                help="A routes file (YAML): routes by host and path, before the containers'; "
                "read again on SIGHUP and when it changes.",
            ),
        ] = None,
        drain_timeout: Annotated[
            float,
            typer.Option(
                "--drain-timeout",
                help="On SIGTERM, how long in-flight requests get to finish (seconds).",
                callback=finite,
                min=0,
                max=86400,
            ),
        ] = 30.0,
        failure_statuses: Annotated[
            str,
            typer.Option(
                "--failure-statuses",
                help="Upstream statuses that count against a host (breaker, ejection), besides "
                "connect errors, resets and timeouts (add 500 to count the application's "
                "errors). A routes file's passive: section wins over these three flags.",
            ),
        ] = "502,503,504",
        max_ejection_percent: Annotated[
            float,
            typer.Option(
                "--max-ejection-percent",
                min=0.0,
                max=100.0,
                callback=finite,
                help="At most this share of hosts out at once (breaker open or ejected), "
                "never the last one.",
            ),
        ] = 50.0,
        panic_threshold: Annotated[
            float,
            typer.Option(
                "--panic-threshold",
                min=0.0,
                max=100.0,
                callback=finite,
                help="Below this percentage of hosts available, balance over all of them "
                "(0 turns panic off).",
            ),
        ] = 50.0,
        tls_listen: Annotated[
            str | None,
            typer.Option(
                "--tls-listen",
                help="Where clients connect over TLS (HOST:PORT), beside or instead of --listen.",
            ),
        ] = None,
        tls: Annotated[
            str | None,
            typer.Option(
                "--tls",
                help="internal: certificates from the dockmesh CA (`dockmesh ca init`) for "
                "the routes' hosts, issued at first use.",
            ),
        ] = None,
        tls_cert: Annotated[
            list[str] | None,
            typer.Option(
                "--tls-cert", help="A certificate file (PEM) for --tls-listen; repeat for several."
            ),
        ] = None,
        tls_key: Annotated[
            list[str] | None,
            typer.Option("--tls-key", help="Its key file (PEM): one per --tls-cert, in order."),
        ] = None,
        ca_dir: Annotated[
            str | None,
            typer.Option(
                "--ca-dir",
                help="The CA's folder for --tls internal (default $DOCKMESH_CA_DIR, else "
                "/var/lib/dockmesh/ca).",
            ),
        ] = None,
        takeover: Annotated[
            bool,
            typer.Option(
                "--takeover",
                help="Take the listening socket(s) over from the dockmesh proxy serving "
                "--listen (its control socket under $DOCKMESH_RUN_DIR, else /run/dockmesh), "
                "which then drains: a restart with no refused connection.",
            ),
        ] = False,
        access_log: Annotated[
            str | None,
            typer.Option(
                "--access-log",
                help="A line per request to this file (- for stdout); reopened on SIGHUP and "
                "SIGUSR1 (logrotate). Wins over the routes file's access_log:.",
            ),
        ] = None,
        access_log_format: Annotated[
            str,
            typer.Option("--access-log-format", help="common|json."),
        ] = "common",
        access_log_sample: Annotated[
            float,
            typer.Option(
                "--access-log-sample",
                callback=finite,
                min=0.0,
                max=1.0,
                help="Keep this share of the lines of requests answered below 500 (0.1: one "
                "in ten); 5xx lines are always kept.",
            ),
        ] = 1.0,
    ) -> None:
        """Forward HTTP to healthy upstreams: balancing, circuit breakers, outlier ejection,
        retries within a budget, streaming, WebSocket. SIGTERM or Ctrl-C drains: no new
        connection, in-flight requests finish (up to --drain-timeout). SIGHUP, or a change of the
        file, reloads --config (a bad file is logged and the running configuration kept).
        --project serves the routes containers declare (dockmesh.http.* labels). --takeover
        replaces the proxy serving the same --listen without a lost connection."""
        from dockmesh.agentclient import agent_url
        from dockmesh.proxy.config import (
            check_access_log,
            check_balance,
            load_config,
            parse_backend,
        )
        from dockmesh.proxy.run import ProxyOptions, run_proxy
        from dockmesh.proxy.server import PortServed
        from dockmesh.proxy.takeover import TakeoverError
        from dockmesh.proxy.tls import TlsError

        if not listen and not tls_listen:
            raise UserError("--listen HOST:PORT (or --tls-listen HOST:PORT) is required")
        bind = parse_hostport(listen, "--listen") if listen else None
        tls_bind = parse_hostport(tls_listen, "--tls-listen") if tls_listen else None
        if bind and tls_bind and bind[1] == tls_bind[1] and bind[1] != 0:
            # Both sockets take SO_REUSEPORT: the kernel would split clients between them.
            raise UserError("--listen and --tls-listen need different ports")
        tls_flags = _tls_flags(tls, tls_cert or [], tls_key or [], ca_dir, tls_bind is not None)
        file = None
        if config is not None:
            try:
                with open(config, "rb") as f:
                    raw = f.read(2 * 1024 * 1024)
            except OSError as e:
                raise UserError(f"--config {config}: {e.strerror or e}") from None
            file = load_config(raw, config)
        backends = []
        for b in backend or []:
            try:
                backends.append(parse_backend(b))
            except ValueError as e:
                raise UserError(f"--backend {e}") from None
        if service and backends:
            raise UserError("--service and --backend exclude each other: choose one")
        projects = [p.strip() for p in project or []]
        if any(not _PROJECT.fullmatch(p) for p in projects):
            bad = next(p for p in projects if not _PROJECT.fullmatch(p))
            raise UserError(f"--project {bad!r} is not a project name")
        if projects and all_projects:
            raise UserError("--project and --all-projects exclude each other: choose one")
        labelled = bool(projects) or all_projects
        if not service and not backends and not labelled and not (file and file.routes):
            raise UserError(
                "nothing to proxy to: give --service NAME --agent URL, --backend URL, "
                "--project P or --config FILE"
            )
        if service or labelled or (file is not None and any(r.service for r in file.routes)):
            source = "--agent" if agent else "$DOCKMESH_AGENT"
            agent = agent or agent_url()
            why_not = _agent_problem(agent)
            if why_not:
                raise UserError(f"{source} {agent!r}: {why_not}")
        elif agent:
            raise UserError("--agent needs --service, --project (or services in --config)")
        why = check_balance(balance)
        if why:
            raise UserError(f"--balance {why}")
        if not 1 <= workers <= 256:
            raise UserError("--workers must be from 1 to 256")
        admin_bind = parse_hostport(admin, "--admin") if admin else None
        from dockmesh.resilience.passive import parse_statuses

        try:
            statuses = parse_statuses(failure_statuses)
        except ValueError as e:
            raise UserError(f"--failure-statuses {e}") from None
        passive: dict[str, Any] = {
            "failure_statuses": statuses,
            "max_ejection_percent": max_ejection_percent,
            "panic_threshold": panic_threshold,
        }
        log_spec = None
        if access_log is not None:
            try:
                log_spec = check_access_log(access_log, access_log_format, access_log_sample)
            except ValueError as e:
                key, _, why = str(e).partition(": ")
                flag = "--access-log" if key == "path" else f"--access-log-{key}"
                raise UserError(f"{flag} {why}") from None
            if log_spec.path != "-":
                try:
                    with open(log_spec.path, "a"):
                        pass
                except OSError as e:
                    raise UserError(f"--access-log {access_log}: {e.strerror or e}") from None
        try:
            run_proxy(
                ProxyOptions(
                    listen=bind,
                    service=service,
                    agent=agent,
                    backends=backends,
                    balance=balance,
                    workers=workers,
                    admin=admin_bind,
                    file=file,
                    config_path=config,
                    drain_timeout=drain_timeout,
                    passive=passive,
                    follow_labels=labelled,
                    projects=frozenset(projects) if projects else None,
                    tls_listen=tls_bind,
                    tls=tls_flags,
                    takeover=takeover,
                    access_log=log_spec,
                )
            )
        except PortServed as e:
            flag = "--tls-listen" if tls_listen and str(e).startswith(tls_listen) else "--listen"
            raise UserError(f"{flag} {e}") from None
        except TlsError as e:
            raise UserError(f"tls: {e}") from None
        except TakeoverError as e:
            raise UserError(f"--takeover: {e}") from None


def _tls_flags(
    tls: str | None, certs: list[str], keys: list[str], ca_dir: str | None, listening: bool
) -> dict[str, Any]:
    """TlsSpec's fields the flags give (a routes file's `tls:` wins over them)."""
    import os

    out: dict[str, Any] = {}
    if tls is not None:
        if tls != "internal":
            raise UserError(
                f"--tls {tls!r}: expected internal (certificate files: --tls-cert/--tls-key)"
            )
        out["internal"] = True
    if len(certs) != len(keys):
        raise UserError(f"--tls-cert and --tls-key go in pairs: {len(certs)} and {len(keys)} given")
    if certs:
        out["certificates"] = list(zip(certs, keys, strict=True))
    # The environment's CA folder counts only where TLS is served (it may be set for all).
    given = ca_dir or (os.environ.get("DOCKMESH_CA_DIR") if listening else None)
    if given:
        out["ca_dir"] = given
    return out


_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")


def _agent_problem(url: str) -> str | None:
    """What keeps `url` from naming an agent (`http://HOST:PORT`), or None: checked here,
    since the watch would only retry it for ever."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as e:
        return str(e)
    if parts.scheme != "http" or not parts.hostname:
        return "expected http://HOST:PORT"
    if port == 0:
        return "the port must be a number from 1 to 65535"
    return None

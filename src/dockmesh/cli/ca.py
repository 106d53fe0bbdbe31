"""`dockmesh ca init|show`: the local certificate authority (`dockmesh.pki`)."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Annotated

import typer

from dockmesh.cli.common import JsonOpt, UserError, handle_errors, out, print_json

app = typer.Typer(
    help="dockmesh's local certificate authority (the proxy's `tls internal`).",
    no_args_is_help=True,
)

DirOpt = Annotated[
    str | None,
    typer.Option(
        "--dir",
        help="The CA's folder (default $DOCKMESH_CA_DIR, else /var/lib/dockmesh/ca).",
    ),
]


def ca_dir(value: str | None) -> Path:
    from dockmesh.pki import DEFAULT_CA_DIR

    given = value or os.environ.get("DOCKMESH_CA_DIR") or DEFAULT_CA_DIR
    path = Path(given)
    if path.exists() and not path.is_dir():
        raise UserError(f"--dir {given}: not a folder")
    return path


@app.command("init")
@handle_errors
def init(
    directory: DirOpt = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing CA (its leaves stop being trusted)."),
    ] = False,
    name_constraint: Annotated[
        list[str] | None,
        typer.Option(
            "--name-constraint",
            help="Limit the CA to names under this domain (repeat for several); "
            "clients then refuse any leaf outside them.",
        ),
    ] = None,
    json_out: JsonOpt = False,
) -> None:
    """Make the CA: an EC P-256 root (ca.crt, ca.key, mode 0600) valid for 10 years."""
    from dockmesh.pki.ca import CaError, init_ca

    try:
        ca = init_ca(
            ca_dir(directory),
            dt.datetime.now(dt.UTC),
            force=force,
            name_constraints=tuple(name_constraint or ()),
        )
    except CaError as e:
        raise UserError(str(e)) from None
    _print(ca.info().to_json(), json_out)


@app.command("show")
@handle_errors
def show(directory: DirOpt = None, json_out: JsonOpt = False) -> None:
    """Print the CA's subject, SHA-256 fingerprint, expiry and where its certificate is."""
    from dockmesh.pki.ca import CaError, load_ca

    try:
        ca = load_ca(ca_dir(directory))
    except CaError as e:
        raise UserError(str(e)) from None
    _print(ca.info().to_json(), json_out)


def _print(doc: dict[str, object], json_out: bool) -> None:
    if json_out:
        print_json(doc)
        return
    rows = [
        ("subject", doc["subject"]),
        ("fingerprint SHA-256", doc["fingerprint_sha256"]),
        ("not after", doc["not_after"]),
        ("path", doc["path"]),
        ("certificate", doc["cert"]),
    ]
    if doc["name_constraints"]:
        rows.append(("name constraints", ", ".join(doc["name_constraints"])))  # type: ignore[arg-type]
    for k, v in rows:
        out.print(f"{k + ':':<21}{v}", markup=False, highlight=False, soft_wrap=True)

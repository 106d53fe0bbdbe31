"""`dockmesh doctor`'s text view: what is not known reads '-', never 'None'."""

from __future__ import annotations

from dataclasses import replace

from rich.console import Console

from dockmesh.cli.doctor import doctor_view
from dockmesh.diagnose.findings import Evidence, Link, findings, plan_checks, sections
from tests.unit.diagnose.test_findings import ctr, topo


def test_a_network_none_container_reads_dashes_not_none() -> None:
    alone = replace(ctr("alone", "10.9.0.2"), attachments=(), network_mode="none")
    t = topo(alone)
    evidence = Evidence(
        alone,
        plan_checks(t, alone, {}),
        links=(Link("lo", None, 65536, "unknown", ("127.0.0.1/8",)),),
    )
    # The engine reports the `none` network with no address, subnet, gateway, MAC or MTU.
    doc = {
        "container": alone.name,
        "sections": sections(evidence),
        "findings": [f.to_json() for f in findings(evidence)],
    }
    doc["sections"]["networks"] = [  # type: ignore[index]
        {
            "name": "none",
            "driver": "null",
            "ipv4": None,
            "subnet": None,
            "gateway": None,
            "mac": None,
            "mtu": None,
        }
    ]
    console = Console(width=120, record=True)
    console.print(doctor_view(doc))
    text = console.export_text()
    assert "None" not in text
    assert "none" in text and "network-none" not in text  # codes are not shown, messages are
    assert "runs with --network none" in text

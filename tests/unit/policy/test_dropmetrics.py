"""The drop logs on /metrics (dockmesh.policy.dropmetrics): a reading of the kernel's listing
is counted per rule and container pair, and what the collector serves adds up across
readings."""

from __future__ import annotations

from typing import Any

from dockmesh.policy.compile import compile_policy, full_transaction
from dockmesh.policy.dropmetrics import DropCounter, read_drop_logs
from dockmesh.testing.nft import MemoryNft
from tests.unit.policy.test_compile import chapter, seg_policy


def with_flows(doc: Any, name: str, elem: list[Any]) -> Any:
    """The listing with the kernel's elements in the drop log `name`."""
    for item in doc["nftables"]:
        if item.get("set", {}).get("name") == name:
            item["set"]["elem"] = elem
    return doc


def elem(s: str, d: str, packets: int) -> Any:
    return {
        "elem": {
            "val": {"concat": [s, d, "tcp", 5432]},
            "expires": 50,
            "counter": {"packets": packets, "bytes": 60 * packets},
        }
    }


def samples(counter: DropCounter) -> dict[tuple[str, ...], float]:
    out: dict[tuple[str, ...], float] = {}
    for family in counter.collect():
        for s in family.samples:
            if s.name == "dockmesh_policy_drops_total":
                labels = s.labels
                out[(labels["rule"], labels["src"], labels["dst"], labels["verdict"])] = s.value
    return out


def test_readings_are_counted_per_rule_and_pair() -> None:
    topo = chapter()
    rs = compile_policy(seg_policy(), topo, "enforce", "t")
    nft = MemoryNft()
    nft.run(full_transaction(rs))
    read = read_drop_logs(nft.list_table, rs)
    assert read is not None
    log = rs.logs[0].name
    counter = DropCounter()
    # Two containers of the chapter's seg network, by their addresses.
    src, dst = "10.242.0.3", "10.242.0.2"
    names = {c.name for a in (src, dst) for c, _ in topo.attachments_at(a)}
    assert len(names) == 2
    counter.observe(with_flows(read[0], log, [elem(src, dst, 3)]), rs, topo)
    counter.observe(with_flows(read[0], log, [elem(src, dst, 5)]), rs, topo)
    [(key, value)] = samples(counter).items()
    assert key[0] == rs.logs[0].rule and key[3] == "drop"
    assert {key[1], key[2]} == names
    assert value == 5


def test_nothing_is_read_without_drop_logs() -> None:
    assert read_drop_logs(lambda _t: {"nftables": []}, None) is None
    rs = compile_policy(seg_policy(), chapter(), "enforce", "t")
    assert read_drop_logs(lambda _t: None, rs) is None  # the table is gone

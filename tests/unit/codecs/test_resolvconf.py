"""resolv.conf as a resolver reads it (dockmesh.codecs.resolvconf): the lines it knows, the last
of `search`/`domain` winning, comments, and any text read without raising."""

from __future__ import annotations

from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dockmesh.codecs.resolvconf import ResolvConf, parse_resolv_conf
from tests.outcomes import Outcomes


def test_resolv_conf() -> None:
    r = parse_resolv_conf(
        "# hi\nnameserver 127.0.0.11\nsearch a b\n; x\noptions ndots:0 edns0\ndomain c\n"
    )
    assert r.nameservers == ("127.0.0.11",)
    assert r.search == ("c",)
    assert r.options == ("ndots:0", "edns0")


def test_a_line_without_its_value_is_skipped_and_the_json_lists_everything() -> None:
    r = parse_resolv_conf("nameserver\ndomain\nsearch\nnameserver 10.0.0.2 extra\n")
    assert r == ResolvConf(("10.0.0.2",), (), ())
    assert ResolvConf(("a",), ("b", "c"), ("d",)).to_json() == {
        "nameservers": ["a"],
        "search": ["b", "c"],
        "options": ["d"],
    }


words = st.text(
    st.characters(whitelist_categories=("Ll", "Nd"), whitelist_characters=".:-"),
    min_size=1,
    max_size=8,
)
KEYWORDS = ("nameserver", "search", "domain", "options")
# A line of a kind resolv(5) knows, with its values; or a comment or other text, which adds
# nothing (its first word is no keyword).
known = st.tuples(st.sampled_from(KEYWORDS), st.lists(words, min_size=1, max_size=3).map(tuple))
entries = st.one_of(
    known,
    known,
    st.tuples(st.just("other"), st.sampled_from(["# nameserver 10.0.0.9", "; search x", ""])),
    st.tuples(
        st.just("other"),
        st.text(max_size=20).filter(
            lambda t: len(t.splitlines()) <= 1 and (t.split() or [""])[0] not in KEYWORDS
        ),
    ),
)


def test_any_file_reads_as_a_resolver_would() -> None:
    """Lines of the kinds resolv(5) knows, comments and any other text: every nameserver line
    with a value is kept in order, the last search or domain line wins, options add up."""
    servers, search = Outcomes(), Outcomes()

    @settings(max_examples=200)
    @given(st.lists(entries, min_size=1, max_size=8))
    def run(file: list[tuple[str, Any]]) -> None:
        text = "\n".join(v if k == "other" else " ".join([k, *v]) for k, v in file)
        got = parse_resolv_conf(text)
        known = [(k, v) for k, v in file if k != "other"]
        assert got.nameservers == tuple(v[0] for k, v in known if k == "nameserver" and v)
        assert got.options == tuple(x for k, v in known if k == "options" for x in v)
        last = [
            v if k == "search" else v[:1]
            for k, v in known
            if k == "search" or (k == "domain" and v)
        ]
        assert got.search == (last[-1] if last else ())
        servers("some" if got.nameservers else "none")
        search("some" if got.search else "none")

    run()
    servers.require(some=0.1)
    search.require(some=0.1)


@given(st.text(max_size=400))
def test_any_text_reads_without_raising(text: str) -> None:
    got = parse_resolv_conf(text)
    assert all(isinstance(x, str) and x for x in (*got.nameservers, *got.search, *got.options))

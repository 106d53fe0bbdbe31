from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dockmesh.images.sources import (
    AptSource,
    os_codename,
    parse_deb822,
    parse_sources_list,
    pick_mirror,
)

DEB822 = """\
Types: deb
# a comment
URIs: http://mirror.invalid/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://mirror.invalid/debian-security
Suites: bookworm-security
Components: main

Types: deb-src
URIs: http://src.invalid/debian
Suites: bookworm
"""


def test_deb822_picks_the_suite_itself() -> None:
    sources = parse_deb822(DEB822)
    assert sources[0] == AptSource(
        "http://mirror.invalid/debian", ("bookworm", "bookworm-updates"), ("main",)
    )
    assert len(sources) == 2  # deb-src is not a binary source
    assert pick_mirror(sources, "bookworm") == "http://mirror.invalid/debian"
    assert pick_mirror(sources, "trixie") is None


def test_one_line_format_with_options() -> None:
    text = (
        "# deb http://old.invalid/debian bookworm main\n"
        "deb [arch=amd64 signed-by=/k.gpg] http://m.invalid/debian/ bookworm main contrib\n"
    )
    [s] = parse_sources_list(text)
    assert s.uri == "http://m.invalid/debian/" and s.components == ("main", "contrib")
    assert pick_mirror([s], "bookworm") == "http://m.invalid/debian"


def test_codename() -> None:
    assert os_codename('NAME="Debian"\nVERSION_CODENAME=bookworm\n') == "bookworm"
    assert os_codename("NAME=x\n") is None


words = st.text(alphabet="abcdefghijklmnopqrstuvwxyz-", min_size=1, max_size=10)


@given(
    st.lists(
        st.tuples(
            words, st.lists(words, min_size=1, max_size=3), st.lists(words, min_size=1, max_size=3)
        ),
        min_size=1,
        max_size=4,
    )
)
def test_deb822_round_trip(stanzas: list[tuple[str, list[str], list[str]]]) -> None:
    text = "\n\n".join(
        f"Types: deb\nURIs: http://{host}.invalid/debian\nSuites: {' '.join(suites)}\n"
        f"Components: {' '.join(comps)}"
        for host, suites, comps in stanzas
    )
    parsed = parse_deb822(text)
    assert parsed == [
        AptSource(f"http://{h}.invalid/debian", tuple(s), tuple(c)) for h, s, c in stanzas
    ]
    for _, suites, _ in stanzas:
        first = next(src for src in parsed if suites[0] in src.suites)
        assert pick_mirror(parsed, suites[0]) == first.uri

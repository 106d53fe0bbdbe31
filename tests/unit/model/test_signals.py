"""Signal names as Docker and Compose take them (`stop_signal:`): names with or without
SIG, any case, numbers, the real-time signals the engine names; anything else refused in
words."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dockmesh.model.signals import parse_stop_signal


def test_signals_as_the_engine_takes_them() -> None:
    assert parse_stop_signal("term") == "SIGTERM"
    assert parse_stop_signal("SIGQUIT") == "SIGQUIT"
    assert parse_stop_signal("9") == "9"
    assert parse_stop_signal(15) == "15"
    assert parse_stop_signal("sigrtmin+3") == "SIGRTMIN+3"
    assert parse_stop_signal("RTMAX-14") == "SIGRTMAX-14"
    assert parse_stop_signal("iot") == "SIGIOT"
    for bad in ("", "SIG", "SIGRTMIN+99", "1000", "TERM TERM", True):
        with pytest.raises(ValueError, match="not a signal"):
            parse_stop_signal(bad)


@given(st.one_of(st.text(max_size=30), st.integers(), st.booleans()))
def test_any_signal_text_is_taken_or_refused_in_words(text: Any) -> None:
    said = ""
    try:
        sig = parse_stop_signal(text)
    except ValueError as e:
        said = str(e)
    if said:
        assert "\n" not in said
    else:
        assert parse_stop_signal(sig) == sig  # what it gives back, it takes back

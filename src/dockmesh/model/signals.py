"""Signal names as Docker and Compose take them (`stop_signal:`): `SIGTERM`, `term`, `15`,
`SIGRTMIN+3`."""

from __future__ import annotations

import re
import signal

# Linux's real-time signals by the names the engine's table holds: RTMIN, RTMIN+1 … RTMIN+15,
# RTMAX-14 … RTMAX-1, RTMAX (the rest only by number).
_RT = re.compile(r"RTMIN(?:\+([0-9]{1,2}))?|RTMAX(?:-([0-9]{1,2}))?")
_RTMAX = 64
_RT_PLUS, _RT_MINUS = 15, 14
# Aliases too (SIGIOT, SIGCLD, SIGPOLL): the engine takes them.
_NAMES = {
    name.removeprefix("SIG"): name
    for name in signal.Signals.__members__
    if not name.startswith("SIG_") and not name.startswith("SIGRT")
}


def parse_stop_signal(text: str | int) -> str:
    """The signal as the engine takes it (`SIGTERM`, `SIGRTMIN+3`, or a number as text).
    Raises ValueError with a message fit for the user otherwise."""
    if isinstance(text, bool):
        raise ValueError(f"{text!r} is not a signal")
    if isinstance(text, int):
        if not 1 <= text <= _RTMAX:
            raise ValueError(f"{text} is not a signal number (1 to {_RTMAX})")
        return str(text)
    raw = text.strip()
    if raw.isascii() and raw.isdigit() and len(raw) <= 3:
        return parse_stop_signal(int(raw))
    name = raw.upper().removeprefix("SIG")
    if name in _NAMES:
        return _NAMES[name]
    m = _RT.fullmatch(name)
    if m is not None:
        plus, minus = m.group(1), m.group(2)
        offset = int(plus or minus or 0)
        if offset <= (_RT_PLUS if plus is not None else _RT_MINUS):
            if plus is not None and offset:
                return f"SIGRTMIN+{offset}"
            if minus is not None and offset:
                return f"SIGRTMAX-{offset}"
            return "SIGRTMIN" if name.startswith("RTMIN") else "SIGRTMAX"
    shown = raw if len(raw) <= 20 else raw[:20] + "…"
    raise ValueError(f"{shown!r} is not a signal (e.g. SIGTERM, SIGINT, SIGQUIT, or its number)")

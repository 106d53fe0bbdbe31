"""Request targets made comparable before routing, pure: bytes in, a normalised target or
None (the client gets 400) out.

A prefix route `/p/` must not be escaped by a path the upstream resolves elsewhere:
`/p/../x`, `/p/%2e%2e/x`, `/p/.%2E/x`, `/p//../x` (an upstream that merges slashes, as nginx
does by default, reads it as `/x`). So, as nginx does before matching locations, the path is
decoded where the encoding means nothing (RFC 3986 §2.3: percent-encoded unreserved
characters, dots among them), repeated slashes are merged, and dot segments removed
(RFC 3986 §5.2.4); a path that climbs above the root is refused. The normalised form is what
is forwarded too, so the upstream sees the very path that was matched. Other escapes
(`%2F`, `%25`, ...) stay as they came: decoding them would change what the path means. The
query is left alone.

A dot segment hidden from this reading is refused instead: behind an encoded slash or a
backslash (`/p/..%2Fx`, `/p/..%5Cx`, `/p/..\\x`: busybox httpd and nginx serving files decode
`%2F` before resolving, IIS and WHATWG URL parsers take `\\` for `/`) or carrying path
parameters (`/p/..;/x`: Tomcat and Jetty drop `;params` before resolving). Which reading the
upstream has is unknown here, and a real path never holds one.
"""

from __future__ import annotations

import re

_UNRESERVED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_PERCENT = re.compile(rb"%([0-9A-Fa-f]{2})")
_BAD_PERCENT = re.compile(rb"%(?![0-9A-Fa-f]{2})")
# What some upstreams read as a segment's end, beside `/`.
_OTHER_SEPARATOR = re.compile(rb"%2[Ff]|%5[Cc]|\\")


def _hides_dot_segment(seg: bytes) -> bool:
    """Whether `seg` (between two `/`) holds `.` or `..` once split at an encoded slash or a
    backslash and stripped of `;params`."""
    return any(p.partition(b";")[0] in (b".", b"..") for p in _OTHER_SEPARATOR.split(seg))


def _decode_unreserved(m: re.Match[bytes]) -> bytes:
    c = int(m.group(1), 16)
    return bytes((c,)) if c in _UNRESERVED else m.group(0)


def normalise_path(path: bytes) -> bytes | None:
    """`path` (no query) decoded where harmless, slashes merged, dot segments removed; None
    when it does not start with `/`, holds a malformed escape or climbs above the root."""
    if not path.startswith(b"/") or _BAD_PERCENT.search(path) is not None:
        return None
    if b"%" in path:
        path = _PERCENT.sub(_decode_unreserved, path)
    hidden = b"%" in path or b";" in path or b"\\" in path
    out: list[bytes] = []
    trailing = False
    for seg in path.split(b"/")[1:]:
        if seg == b"" or seg == b".":
            trailing = True
        elif hidden and seg != b".." and _hides_dot_segment(seg):
            return None
        elif seg == b"..":
            if not out:
                return None
            out.pop()
            trailing = True
        else:
            out.append(seg)
            trailing = False
    return b"/" + b"/".join(out) + (b"/" if trailing and out else b"")


def normalise_target(target: bytes) -> bytes | None:
    """An origin-form target (path, then maybe `?query`) with its path normalised."""
    path, q, query = target.partition(b"?")
    norm = normalise_path(path)
    if norm is None:
        return None
    return norm + q + query


def is_normal(target: bytes) -> bool:
    """True when `normalise_target` would return `target` itself (cheap for common paths)."""
    if not target.startswith(b"/"):
        return False
    path = target.partition(b"?")[0]
    if b"%" not in path and b"/." not in path and b"//" not in path and b"\\" not in path:
        return True
    return normalise_target(target) == target

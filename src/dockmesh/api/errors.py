"""The one error a request can end in, as Consul gives it: a status and a one-line reason.

Pure: the translation modules raise it, the HTTP layer turns it into a plain-text response.
"""

from __future__ import annotations

_MAX_SHOWN = 60


class ApiError(Exception):
    """A request dockmesh will not carry out. `reason` is one line, fit to show a client."""

    def __init__(self, status: int, reason: str) -> None:
        # Clients print the body: a reason that spans lines would read as several errors.
        self.status = status
        self.reason = " ".join(reason.split()) or "bad request"
        super().__init__(self.reason)


def bad_request(reason: str) -> ApiError:
    return ApiError(400, reason)


def not_found(reason: str) -> ApiError:
    return ApiError(404, reason)


def shown(value: object) -> str:
    """A client's value quoted for an error message: escaped (no raw newlines or control
    characters reach the reason) and cut short (a megabyte of input is not echoed back)."""
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 1] + "…"

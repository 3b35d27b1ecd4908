"""Requests refused before they are understood: what aiohttp's HTTP parser rejects, and what the HTTP
edge of every port (:mod:`apiproxy.httpedge`) rejects before any handler looks at the target (an unknown
method, an HTTP version other than 1.0 or 1.1).

aiohttp's parser exceptions quote the offending request bytes (a header line with its bearer token, the
start of a too-long line), so their text must never reach a client or a log line. This module turns the
exception's *type* (and, for the C parser's generic errors, the fixed reason llhttp gives before it quotes
any bytes) into a bounded reason label, a status code and a fixed message: nothing of the request survives.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from aiohttp import http_exceptions as hx

#: Every reason label of an invalid request, in the order of the checks; pre-registered as metric labels.
INVALID_REASONS: Final = (
    "request_line_too_long",
    "header_too_large",
    "invalid_header",
    "bad_framing",
    "bad_method",
    "bad_request_line",
    "bad_version",
    "bad_target",
    "malformed",
)

#: The request methods the proxy recognises (RFC 9110's and PATCH); any other is answered 501. CONNECT is
#: left out: the proxy never opens a tunnel.
KNOWN_METHODS: Final = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})


@dataclass(frozen=True)
class Invalid:
    """Why a request was refused unread: a label from :data:`INVALID_REASONS`, a code, a fixed message."""

    reason: str
    code: int
    message: str


def invalid(reason: str, limit: int) -> Invalid:
    """The refusal for ``reason``; ``limit`` is the longest request line or header field accepted."""
    code, message = _ANSWERS[reason]
    return Invalid(reason, code, message.format(limit=limit))


_ANSWERS: dict[str, tuple[int, str]] = {
    "request_line_too_long": (414, "the request line is longer than {limit} bytes"),
    "header_too_large": (
        431,
        "a request header field is longer than {limit} bytes, or there are too many header fields",
    ),
    "invalid_header": (
        400,
        "a request header has an invalid name or value (CR, LF, NUL and other control characters are "
        "not allowed: check the token file for a trailing newline)",
    ),
    "bad_framing": (
        400,
        "the request body framing is invalid (Content-Length with Transfer-Encoding, several "
        "Content-Length fields, or bad chunked encoding)",
    ),
    "bad_method": (501, "the request method is not implemented"),
    "bad_request_line": (400, "the request line is malformed; expected 'METHOD /path HTTP/1.1'"),
    "bad_version": (400, "only HTTP/1.1 and HTTP/1.0 are accepted"),
    "bad_target": (400, "the request target is malformed"),
    "malformed": (400, "the request is malformed"),
}
assert set(_ANSWERS) == set(INVALID_REASONS)


def from_parser_error(exc: BaseException | None, *, request_line_done: bool, limit: int) -> Invalid:
    """Classify an exception of aiohttp's HTTP parser (C or pure Python) without reading its text.

    ``request_line_done`` says whether the request line had ended before the error: a too-long line is
    then a header field (431), else the request line itself (414).
    """
    if isinstance(exc, hx.LineTooLong):
        return invalid("header_too_large" if request_line_done else "request_line_too_long", limit)
    if isinstance(exc, hx.InvalidHeader):
        return invalid("invalid_header", limit)
    if isinstance(exc, hx.PayloadEncodingError):  # chunked framing, Content-Length, content coding
        return invalid("bad_framing", limit)
    if isinstance(exc, hx.BadHttpMethod):
        # The pure-Python parser raises it also for a request line that does not split in three (an
        # HTTP/0.9 "GET /path"); it then carries the line, spaces included. A bad method has none.
        return invalid("bad_request_line" if " " in exc.line else "bad_method", limit)
    if isinstance(exc, hx.BadStatusLine):
        return invalid("bad_request_line", limit)
    if isinstance(exc, hx.InvalidURLError):
        return invalid("bad_target", limit)
    if isinstance(exc, hx.HttpProcessingError):
        return invalid(_generic_reason(exc.message), limit)
    return invalid("malformed", limit)


def _generic_reason(message: str) -> str:
    """Sort a generic ``BadHttpMessage`` by the parser's own description, which precedes any quoted
    bytes (llhttp: ``"<reason>:\\n\\n  b'...'"``; the pure-Python parser: a fixed sentence)."""
    described = message.split(":\n", 1)[0].lower()
    if "too many headers" in described:
        return "header_too_large"
    if any(word in described for word in ("chunk", "content-length", "transfer-encoding")):
        return "bad_framing"
    if "header" in described or "lf" in described.split() or "cr" in described.split():
        return "invalid_header"
    if "url" in described or "path" in described:
        return "bad_target"
    return "malformed"

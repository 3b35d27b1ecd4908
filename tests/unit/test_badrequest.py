"""What aiohttp's parsers raise, sorted into bounded reasons without a byte of the request."""

from __future__ import annotations

import pytest
from aiohttp import http_exceptions as hx

from apiproxy.badrequest import INVALID_REASONS, from_parser_error, invalid

SECRET = "k7Qx2PzR9mW4tY8vB3nL6cJ1"

#: (exception as each parser raises it, request line finished?, expected reason, expected code)
CASES: list[tuple[str, BaseException, bool, str, int]] = [
    (
        "long request line",
        hx.LineTooLong(f"/api?x={SECRET}".encode(), 16384),
        False,
        "request_line_too_long",
        414,
    ),
    ("long header", hx.LineTooLong(f"Bearer {SECRET}".encode(), 16384), True, "header_too_large", 431),
    ("too many headers", hx.BadHttpMessage("Too many headers received"), True, "header_too_large", 431),
    ("python: bad header", hx.InvalidHeader(f"Bearer {SECRET}\r".encode()), True, "invalid_header", 400),
    (
        "llhttp: bad header value",
        hx.BadHttpMessage(f"Invalid header value char:\n\n  b'Authorization: Bearer {SECRET}\\x00'\n  ^"),
        True,
        "invalid_header",
        400,
    ),
    (
        "llhttp: CR without LF",
        hx.BadHttpMessage(f"Missing expected LF after header value:\n\n  b'Bearer {SECRET}\\r'\n  ^"),
        True,
        "invalid_header",
        400,
    ),
    (
        "llhttp: CL and TE",
        hx.BadHttpMessage("Transfer-Encoding can't be present with Content-Length:\n\n  b'chunked'"),
        True,
        "bad_framing",
        400,
    ),
    (
        "llhttp: bad chunk size",
        hx.BadHttpMessage(f"Invalid character in chunk size:\n\n  b'zz{SECRET}'\n  ^"),
        True,
        "bad_framing",
        400,
    ),
    ("python: bad chunk", hx.TransferEncodingError(f"zz{SECRET}"), True, "bad_framing", 400),
    (
        "python: two lengths",
        hx.BadHttpMessage("Duplicate 'Content-Length' header found."),
        True,
        "bad_framing",
        400,
    ),
    (
        "llhttp: unknown method",
        hx.BadHttpMethod(error=f"Invalid method encountered:\n\n  b'{SECRET} /'"),
        False,
        "bad_method",
        501,
    ),
    ("python: bad method token", hx.BadHttpMethod(f"GE({SECRET})"), False, "bad_method", 501),
    (
        "python: no version",
        hx.BadHttpMethod(f"GET /api?access_token={SECRET}"),
        False,
        "bad_request_line",
        400,
    ),
    ("bad version", hx.BadStatusLine(f"GET / HTTP/{SECRET}"), False, "bad_request_line", 400),
    (
        "bad target",
        hx.InvalidURLError(f"Invalid char in url path:\n\n  b'/p\\xc3{SECRET}'"),
        False,
        "bad_target",
        400,
    ),
    ("anything else", hx.BadHttpMessage(f"Data after `Connection: close`{SECRET}"), True, "malformed", 400),
    ("not a parser error", RuntimeError(SECRET), True, "malformed", 400),
]


@pytest.mark.parametrize(("exc", "done", "reason", "code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_parser_errors_map_to_a_reason_and_code_and_never_quote_the_request(
    exc: BaseException, done: bool, reason: str, code: int
) -> None:
    refusal = from_parser_error(exc, request_line_done=done, limit=16384)
    assert (refusal.reason, refusal.code) == (reason, code)
    assert SECRET not in refusal.message and refusal.message


def test_every_reason_has_an_answer_that_names_the_limit_where_it_matters() -> None:
    for reason in INVALID_REASONS:
        refusal = invalid(reason, 4096)
        assert refusal.reason == reason and 400 <= refusal.code < 600
    assert "4096" in invalid("request_line_too_long", 4096).message
    assert "4096" in invalid("header_too_large", 4096).message

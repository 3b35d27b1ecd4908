"""What aiohttp's parsers raise, sorted into bounded reasons without a byte of the request, and what the
shared HTTP edge answers with them by default."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import http_exceptions as hx
from aiohttp import web

from apiproxy.badrequest import INVALID_REASONS, from_parser_error, invalid
from apiproxy.httpedge import EdgeServer, by_path
from tests.adversarial.rawhttp import answer_and_hangup

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


# -- the edge's default answers (the plain-HTTP metrics and probe ports) -----------------------------------

_edge_log = logging.getLogger("apiproxy.test-edge")


@pytest.fixture
async def edge_port() -> AsyncIterator[int]:
    """A server as the metrics ports build it: the edge with its default hooks, a few fixed paths."""

    async def ok(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="ok\n")

    runner = web.ServerRunner(EdgeServer(by_path({"/healthz": ok}), logger=_edge_log, access_log=None))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield int(runner.addresses[0][1])
    finally:
        await runner.cleanup()


@pytest.mark.parametrize(
    ("raw", "code", "reason"),
    [
        (
            b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer MARK" + b"A" * 9000 + b"\r\n\r\n",
            431,
            "header_too_large",
        ),
        (b"GET /healthz?MARK" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "request_line_too_long"),
        (b"GET /healthz HTTP/1.1\r\nAuthorization: Bearer MARK\rMARK\r\n\r\n", 400, "invalid_header"),
        (
            b"POST /healthz HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\nMARK",
            400,
            "bad_framing",
        ),
    ],
    ids=["long-header", "long-request-line", "cr-in-header", "cl-and-te"],
)
async def test_the_default_refusal_is_plain_fixed_text_and_closes(
    edge_port: int, caplog: pytest.LogCaptureFixture, raw: bytes, code: int, reason: str
) -> None:
    caplog.set_level(logging.DEBUG)
    answer = await answer_and_hangup("127.0.0.1", edge_port, raw.replace(b"MARK", SECRET.encode()), None)
    response = answer.response
    assert response is not None and (response.version, response.status) == ("HTTP/1.1", code)
    assert response.body.decode() == invalid(reason, 8190).message + "\n"
    assert response.header("Server") is None and answer.closed
    assert (response.header("Connection") or "").lower() == "close"
    assert SECRET not in caplog.text and "Traceback" not in caplog.text, caplog.text
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == [_edge_log.name], caplog.text
    assert f"{reason} -> {code}" in warnings[0].getMessage()


async def test_fixed_paths_answer_get_and_head_only_and_name_no_server(edge_port: int) -> None:
    async with aiohttp.ClientSession() as session:
        for method, path, code, body in (
            ("GET", "/healthz?verbose", 200, b"ok\n"),
            ("HEAD", "/healthz", 200, b""),
            ("GET", "/nothing-here", 404, b"404: Not Found"),
            ("POST", "/healthz", 405, b"405: Method Not Allowed"),
        ):
            async with session.request(method, f"http://127.0.0.1:{edge_port}{path}") as response:
                assert (response.status, await response.read()) == (code, body), (method, path)
                assert "Server" not in response.headers, (method, path)
                if code == 405:
                    assert response.headers["Allow"] == "GET, HEAD"

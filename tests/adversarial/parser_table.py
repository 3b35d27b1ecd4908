"""Requests aiohttp's HTTP parser (or the first checks of the handler) must refuse, one row per case.

Every hostile part of a request carries a fresh random marker; the proxy must never send it back, log it
or audit it. ``MARK`` in a row's bytes is replaced by that case's marker, ``TOKEN`` by a real, valid
bearer token of a remote cluster (so a case refused for its framing cannot pass for an authentication
failure). ``closes`` says the server must hang up after the answer (everything the parser refuses, and
anything the handler refuses before it can trust the framing).
"""

from __future__ import annotations

import secrets
import string
from dataclasses import dataclass

#: Longest request line and header field the proxy under test accepts (``--max-header-bytes``).
LIMIT = 16384

_ALPHABET = string.ascii_letters + string.digits


def new_marker() -> str:
    """24 random letters and digits: a byte string no answer or log line contains by chance."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(24))


@dataclass(frozen=True)
class Row:
    id: str
    raw: bytes
    #: Acceptable status codes (two where the C and the pure-Python parser legitimately differ).
    codes: tuple[int, ...]
    closes: bool = True

    def build(self, marker: str, token: str) -> bytes:
        return self.raw.replace(b"MARK", marker.encode()).replace(b"TOKEN", token.encode())


def _get(target: bytes = b"/api/v1/pods", *headers: bytes, version: bytes = b"HTTP/1.1") -> bytes:
    lines = [b"GET " + target + b" " + version, b"Host: 127.0.0.1", *headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def post_head(*headers: str) -> bytes:
    """The head of an allowed review POST (``TokenReview``) with ``headers`` added."""
    lines = [
        b"POST /apis/authentication.k8s.io/v1/tokenreviews HTTP/1.1",
        b"Host: 127.0.0.1",
        b"Authorization: Bearer TOKEN",
        b"Content-Type: application/json",
        *(h.encode() for h in headers),
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n"


def _post(*headers: bytes, body: bytes) -> bytes:
    return post_head(*(h.decode() for h in headers)) + body


_AUTH = b"Authorization: Bearer TOKEN"
_PAD = b"x" * (LIMIT + 4096)

ROWS: tuple[Row, ...] = (
    Row("long-request-line", _get(b"/api/v1/pods?labelSelector=MARK" + _PAD, _AUTH), (414,)),
    Row("long-authorization", _get(b"/api/v1/pods", b"Authorization: Bearer MARK" + _PAD), (431,)),
    Row("long-header-name", _get(b"/api/v1/pods", _AUTH, b"X-MARK" + _PAD + b": 1"), (431,)),
    Row("cr-in-header-value", _get(b"/api/v1/pods", b"Authorization: Bearer MARK\rMARK"), (400,)),
    Row("lf-in-header-value", _get(b"/api/v1/pods", b"Authorization: Bearer MARK\nMARK"), (400,)),
    Row("nul-in-header-value", _get(b"/api/v1/pods", b"Authorization: Bearer MARK\x00MARK"), (400,)),
    Row("crlf-after-bearer-token", _get(b"/api/v1/pods", b"Authorization: Bearer MARK\r"), (400,)),
    Row("nul-after-bearer-token", _get(b"/api/v1/pods", b"Authorization: Bearer MARK\x00"), (400,)),
    Row("obs-fold", _get(b"/api/v1/pods", _AUTH, b"X-Note: a", b" MARK"), (400,)),
    Row("invalid-header-name", _get(b"/api/v1/pods", _AUTH, b"X-MARK(x)@: 1"), (400,)),
    Row("space-before-colon", _get(b"/api/v1/pods", _AUTH, b"X-MARK : 1"), (400,)),
    Row(
        "content-length-and-chunked",
        _post(b"Content-Length: 30", b"Transfer-Encoding: chunked", body=b'1e\r\n{"MARK": 1}\r\n0\r\n\r\n'),
        (400,),
    ),
    Row(
        "two-content-lengths",
        _post(b"Content-Length: 12", b"Content-Length: 13", body=b'{"MARK": 1} '),
        (400,),
    ),
    Row("bad-chunk-size", _post(b"Transfer-Encoding: chunked", body=b"zzMARK\r\nMARK\r\n0\r\n\r\n"), (400,)),
    Row(
        "chunked-not-last",
        _post(b"Transfer-Encoding: chunked, MARK", body=b"5\r\nMARKx\r\n0\r\n\r\n"),
        (400, 501),
    ),
    Row("unknown-method", b"MARK /api/v1/pods HTTP/1.1\r\nHost: 127.0.0.1\r\n" + _AUTH + b"\r\n\r\n", (501,)),
    Row("method-with-bad-chars", b"GE(MARK) /api/v1/pods HTTP/1.1\r\nHost: x\r\n\r\n", (400, 501)),
    Row("http-2.0", _get(b"/api/v1/pods?access_token=MARK", _AUTH, version=b"HTTP/2.0"), (400, 505)),
    # The C parser reads an HTTP/0.9 request line; the pure-Python one refuses it as a bad method.
    Row("http-0.9", b"GET /api/v1/pods?access_token=MARK\r\n\r\n", (400, 501)),
    Row("garbage-version", _get(b"/api/v1/pods", _AUTH, version=b"HTTP/MARK"), (400,)),
    Row("lowercase-version", _get(b"/api/v1/pods?access_token=MARK", _AUTH, version=b"http/1.1"), (400,)),
    Row(
        "non-ascii-path",
        _get(b"/api/v1/p\xc3\xb6ds?access_token=MARK", _AUTH, b"X-Note: MARK"),
        (400,),
        closes=False,  # the C parser refuses it (and closes); with the pure-Python one the handler does
    ),
    Row("access-token-in-query", _get(b"/api/v1/pods?access_token=MARK"), (401,), closes=False),
    Row(
        "access-token-with-bearer",
        _get(b"/api/v1/pods?access_token=MARK&limit=5", _AUTH),
        (400,),
        closes=False,
    ),
)

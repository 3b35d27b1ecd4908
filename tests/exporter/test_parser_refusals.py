"""Requests aiohttp's parser refuses, sent to both exporter ports over raw sockets: nothing of them leaks.

For every row, on the document port and on the metrics port: the answer is an HTTP/1.1 refusal with the
status the proxy gives the same request (414 long request line, 431 long header, 501 unknown method, else
400) and the exporter's JSON error (the status's name and the reason label of the row), ``Connection:
close``, and no ``Server`` header; the exporter hangs up; the row's random marker is in neither the answer
nor any log line; one warning from the exporter's logger names the peer and the reason; no traceback is
logged. On the document port the refusal is counted as ``document="other", code=<status>``.

The module runs with the parser aiohttp picked (the C one when its extension is built) and again, in a
subprocess, with ``AIOHTTP_NO_EXTENSIONS=1`` (the pure-Python parser): both must answer alike.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

import pytest

from apiproxy.exporter.http import MAX_FIELD_SIZE
from apiproxy.exporter.main import RunningExporter
from apiproxy.httpedge import AIOHTTP_LIMIT
from tests.adversarial.parser_choice import (
    PURE_PYTHON,
    check_the_parser_in_use,
    rerun_with_the_pure_python_parser,
)
from tests.adversarial.parser_table import new_marker
from tests.adversarial.rawhttp import answer_and_hangup
from tests.exporter.conftest import Start

PRIVATE = b"/metadata/private/multicluster.json"


@dataclass(frozen=True)
class Row:
    id: str
    #: The request; ``MARK`` stands for the case's random marker.
    raw: bytes
    reason: str
    status: int
    error: str

    def build(self, marker: str) -> bytes:
        return self.raw.replace(b"MARK", marker.encode())


def _get(target: bytes, *headers: bytes) -> bytes:
    return b"\r\n".join([b"GET " + target + b" HTTP/1.1", b"Host: 127.0.0.1", *headers]) + b"\r\n\r\n"


def _post(*headers: bytes, body: bytes) -> bytes:
    return _get(PRIVATE, *headers).replace(b"GET ", b"POST ", 1) + body


ROWS = (
    Row(
        "unknown-method",
        b"BREW /MARK HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
        "bad_method",
        501,
        "not_implemented",
    ),
    Row(
        "long-request-line",
        _get(PRIVATE + b"?x=MARK" + b"x" * AIOHTTP_LIMIT),
        "request_line_too_long",
        414,
        "uri_too_long",
    ),
    Row(
        "long-authorization",
        _get(PRIVATE, b"Authorization: Bearer eyJhbGciOiJFZERTQSJ9.MARK" + b"A" * MAX_FIELD_SIZE),
        "header_too_large",
        431,
        "request_header_fields_too_large",
    ),
    Row(
        "long-header-name",
        _get(PRIVATE, b"X-MARK" + b"x" * MAX_FIELD_SIZE + b": 1"),
        "header_too_large",
        431,
        "request_header_fields_too_large",
    ),
    Row(
        "cr-in-authorization",
        _get(PRIVATE, b"Authorization: Bearer MARK\rMARK"),
        "invalid_header",
        400,
        "bad_request",
    ),
    Row(
        "nul-in-authorization",
        _get(PRIVATE, b"Authorization: Bearer MARK\x00MARK"),
        "invalid_header",
        400,
        "bad_request",
    ),
    Row(
        "cr-after-bearer-token",
        _get(PRIVATE, b"Authorization: Bearer MARK\r"),
        "invalid_header",
        400,
        "bad_request",
    ),
    Row(
        "content-length-and-chunked",
        _post(b"Content-Length: 30", b"Transfer-Encoding: chunked", body=b'1e\r\n{"MARK": 1}\r\n0\r\n\r\n'),
        "bad_framing",
        400,
        "bad_request",
    ),
    Row(
        "two-content-lengths",
        _post(b"Content-Length: 12", b"Content-Length: 13", body=b'{"MARK": 1} '),
        "bad_framing",
        400,
        "bad_request",
    ),
)


def _count(exporter: RunningExporter, status: int) -> float:
    value: float = exporter.metrics.requests.labels("other", str(status))._value.get()
    return value


@pytest.fixture
async def exporter(start: Start, source_files: dict[str, Path]) -> RunningExporter:
    return await start(**source_files)


@pytest.mark.parametrize("port", ["documents", "metrics"])
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_refused_in_the_exporter_shape_and_nothing_echoed(
    exporter: RunningExporter, caplog: pytest.LogCaptureFixture, row: Row, port: str
) -> None:
    caplog.set_level(logging.DEBUG)
    marker = new_marker()
    counted = _count(exporter, row.status)
    number = exporter.port if port == "documents" else exporter.metrics_port

    answer = await answer_and_hangup("127.0.0.1", number, row.build(marker), None)

    response = answer.response
    assert response is not None, "no answer at all"
    assert (response.version, response.status) == ("HTTP/1.1", row.status), response.body[:300]
    assert response.complete and answer.closed and not answer.trailing, "the exporter kept the connection"
    assert (response.header("Connection") or "").lower() == "close"
    assert response.header("Server") is None, response.header("Server")
    assert (response.header("Content-Type") or "").startswith("application/json")
    error = json.loads(response.body)
    assert error["error"] == row.error and error["reason"] == row.reason, error
    head = "\n".join(f"{k}: {v}" for k, v in response.headers)
    assert marker not in head and marker.encode() not in response.body, "the answer quotes the request"

    text = "\n".join(caplog.text.splitlines() + [r.getMessage() for r in caplog.records])
    assert marker not in text, text
    assert "Traceback" not in text and not any(r.exc_info for r in caplog.records), text
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert [r.name for r in warnings] == ["apiproxy.exporter"], text
    assert "127.0.0.1" in warnings[0].getMessage() and row.reason in warnings[0].getMessage()
    assert _count(exporter, row.status) == counted + (1 if port == "documents" else 0)


async def test_the_exporter_still_serves_after_a_refusal(exporter: RunningExporter) -> None:
    """A refusal closes only its own connection."""
    refused = await answer_and_hangup("127.0.0.1", exporter.port, ROWS[1].build(new_marker()), None)
    assert refused.response is not None and refused.response.status == ROWS[1].status
    request = b"GET /metadata/public/public.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    served = await answer_and_hangup("127.0.0.1", exporter.port, request, None)
    assert served.response is not None and served.response.status == 200
    assert served.response.header("Server") is None


async def test_a_handler_failure_is_a_500_without_the_exception_text(
    exporter: RunningExporter, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = new_marker()

    def broken(request: object, name: str) -> NoReturn:
        raise RuntimeError(f"bug while answering {marker}")

    monkeypatch.setattr(exporter.handler, "_probe", broken)
    failed = exporter.metrics.requests.labels("other", "500")._value.get()
    request = f"GET /healthz?x={marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode()

    answer = await answer_and_hangup("127.0.0.1", exporter.port, request, None)

    response = answer.response
    assert response is not None and response.status == 500 and answer.closed
    assert json.loads(response.body) == {"error": "internal_error"}
    assert response.header("Server") is None and marker.encode() not in response.body
    assert marker not in caplog.text
    assert "RuntimeError" in caplog.text and "in broken" in caplog.text, caplog.text  # the stack, for a fix
    assert exporter.metrics.requests.labels("other", "500")._value.get() == failed + 1


def test_the_parser_in_use_is_the_one_asked_for() -> None:
    check_the_parser_in_use()


@pytest.mark.skipif(PURE_PYTHON, reason="this is the pure-Python run")
def test_the_pure_python_parser_answers_alike() -> None:
    rerun_with_the_pure_python_parser(__file__)

"""Requests aiohttp's parser refuses, over raw TLS sockets: each gets a ``Status`` and nothing of it leaks.

For every row of :data:`ROWS`: the answer is HTTP/1.1 with ``Content-Type: application/json`` and a
``Status`` carrying the same code; no ``Server`` header; the server hangs up after a parse error; the
row's random marker (and the bearer token's signature) is in neither the answer, nor any log line, nor
any audit record; exactly one log line and one audit record account for it; no traceback is logged.

The module runs with the parser aiohttp picked (the C one when its extension is built) and again, in a
subprocess, with ``AIOHTTP_NO_EXTENSIONS=1`` (the pure-Python parser): both must answer alike.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import NoReturn

import aiohttp
import pytest
import pytest_asyncio

from apiproxy.demo.sandbox import Sandbox
from tests.adversarial.parser_choice import (
    PURE_PYTHON,
    check_the_parser_in_use,
    rerun_with_the_pure_python_parser,
)
from tests.adversarial.parser_table import LIMIT, ROWS, Row, new_marker, post_head
from tests.adversarial.rawhttp import READ_DEADLINE, answer_and_hangup, close_writer, read_response
from tests.helpers import eventually

on_module_loop = pytest.mark.asyncio(loop_scope="module")


class Capture(logging.Handler):
    """Every log record of the process, formatted with its traceback if it has one."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def text(self, since: int) -> str:
        return "\n".join(self.format(r) for r in self.records[since:])


@dataclass
class Env:
    box: Sandbox
    logs: Capture


@pytest.fixture(scope="module")
def capture() -> Iterator[Capture]:
    handler = Capture()
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(level)


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def env(tmp_path_factory: pytest.TempPathFactory, capture: Capture) -> AsyncIterator[Env]:
    box = Sandbox(
        tmp_path_factory.mktemp("parser"), settings={"rate_limit_qps": 0.0, "max_header_bytes": LIMIT}
    )
    await box.start()
    try:
        yield Env(box, capture)
    finally:
        await box.stop()


def invalid_count(box: Sandbox) -> float:
    assert box.proxy is not None
    registry = box.proxy.metrics.registry
    return sum(
        s.value
        for m in registry.collect()
        if m.name == "apiproxy_invalid_requests"
        for s in m.samples
        if s.name.endswith("_total")
    )


@on_module_loop
@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
async def test_refused_with_a_status_and_nothing_echoed(env: Env, row: Row) -> None:
    box = env.box
    assert box.proxy is not None
    marker = new_marker()
    token = box.clusters["alpha"].token
    signature = token.rsplit(".", 1)[1]
    logs_before, audit_before, invalid_before = (
        len(env.logs.records),
        len(box.audit_records()),
        invalid_count(box),
    )

    answer = await answer_and_hangup("127.0.0.1", box.proxy.port, row.build(marker, token), box.client_ssl())

    response = answer.response
    assert response is not None, "no answer at all"
    assert response.status in row.codes, (response.status, response.body[:300])
    assert response.version == "HTTP/1.1"
    assert response.complete
    assert (response.header("Content-Type") or "").startswith("application/json")
    status = response.status_json()
    assert status is not None, response.body[:300]
    assert status["code"] == response.status and status["status"] == "Failure" and status["message"]
    assert response.header("Server") is None
    if row.closes:
        assert (response.header("Connection") or "").lower() == "close"
    if (response.header("Connection") or "").lower() == "close":
        assert answer.closed and not answer.trailing, "the server kept the connection open"

    head = "\n".join(f"{k}: {v}" for k, v in response.headers)
    for secret in (marker, signature):
        assert secret not in head and secret.encode() not in response.body, "the answer quotes the request"

    records = env.logs.records[logs_before:]
    text = env.logs.text(logs_before)
    assert marker not in text and signature not in text, text
    assert "Traceback" not in text and not any(r.exc_info for r in records), text
    ours = [r for r in records if r.name == "apiproxy.server"]
    assert len(ours) == 1, text
    assert not [r for r in records if r.name.startswith("aiohttp") and r.levelno >= logging.INFO], text
    if row.closes:
        assert ours[0].levelno == logging.WARNING and "127.0.0.1" in ours[0].getMessage()

    audit = box.audit_records()[audit_before:]
    assert len(audit) == 1, audit
    dumped = json.dumps(audit)
    assert marker not in dumped and signature not in dumped, dumped
    assert audit[0]["status"] == response.status
    assert audit[0]["decision"] == ("unauthenticated" if response.status == 401 else "invalid")
    if row.closes:
        assert audit[0]["source"] == "127.0.0.1"
        assert invalid_count(box) == invalid_before + 1


@on_module_loop
async def test_the_proxy_still_serves_after_the_table(env: Env) -> None:
    box = env.box
    token = box.clusters["alpha"].token
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=box.client_ssl())) as session,
        session.get(
            f"{box.proxy_url}/api/v1/namespaces/default/services",
            headers={"Authorization": f"Bearer {token}"},
        ) as response,
    ):
        assert response.status == 200
        assert "Server" not in response.headers  # relayed from upstream: the simulator sends none either


@on_module_loop
async def test_no_server_header_on_any_port(env: Env) -> None:
    box = env.box
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=box.client_ssl())) as session:
        for url in (
            f"{box.proxy_url}/healthz",
            f"{box.proxy_url}/readyz",
            f"{box.proxy_url}/api/v1/pods",  # 401 Status
            f"{box.metrics_url}/metrics",
            f"{box.metrics_url}/readyz?verbose",
            f"{box.metrics_url}/healthz",
            f"{box.metrics_url}/nothing-here",  # aiohttp's own 404
        ):
            async with session.get(url) as response:
                assert response.status in (200, 401, 404), url
                assert "Server" not in response.headers, (url, response.headers.get("Server"))


@on_module_loop
async def test_exposition_passes_promtool_after_the_table(env: Env) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is required in CI (make test installs it)")
        pytest.skip("promtool is not installed (Debian package prometheus)")
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"{env.box.metrics_url}/metrics") as response,
    ):
        text = await response.text()
    for reason in ("request_line_too_long", "header_too_large", "bad_framing", "bad_method"):
        assert f'apiproxy_invalid_requests_total{{reason="{reason}"}}' in text
    check = subprocess.run(
        [promtool, "check", "metrics"], input=text.encode(), capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout.decode() + check.stderr.decode()


def test_the_parser_in_use_is_the_one_asked_for() -> None:
    check_the_parser_in_use()


@pytest.mark.skipif(PURE_PYTHON, reason="this is the pure-Python run")
def test_the_pure_python_parser_answers_alike() -> None:
    rerun_with_the_pure_python_parser(__file__)


@on_module_loop
async def test_an_internal_error_is_a_status_500_without_the_exception_text(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    box = env.box
    assert box.proxy is not None
    marker = new_marker()

    def broken(request: object) -> NoReturn:
        raise RuntimeError(f"bug while reading {marker}")

    monkeypatch.setattr(box.proxy.handler, "authenticate", broken)
    logs_before, audit_before = len(env.logs.records), len(box.audit_records())
    request = f"GET /api/v1/pods?x={marker} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    answer = await answer_and_hangup("127.0.0.1", box.proxy.port, request, box.client_ssl())

    assert answer.response is not None and answer.response.status == 500
    status = answer.response.status_json()
    assert status is not None and status["code"] == 500
    assert marker.encode() not in answer.response.body and answer.closed
    text = env.logs.text(logs_before)
    assert marker not in text
    assert "RuntimeError" in text and "in broken" in text, text  # the stack, for whoever fixes the bug
    [record] = box.audit_records()[audit_before:]
    assert record["status"] == 500 and record["decision"] == "error"


@on_module_loop
@pytest.mark.skipif(
    not PURE_PYTHON,
    reason="aiohttp's C parser does not fail the body reader when a bad chunk arrives after the handler "
    "has started: the handler waits until the client hangs up (an aiohttp limitation, left alone)",
)
async def test_a_bad_chunk_after_the_handler_started_is_a_status_and_one_log_line(env: Env) -> None:
    """The parser error then reaches the handler's body read instead of ``handle_error``; aiohttp
    also fails its own drain of the body afterwards, which must not log the bytes either."""
    box = env.box
    assert box.proxy is not None and box.proxy.runner is not None
    marker = new_marker()
    server = box.proxy.runner.server
    assert server is not None
    dispatched = server.requests_count
    logs_before, audit_before = len(env.logs.records), len(box.audit_records())
    reader, writer = await asyncio.open_connection("127.0.0.1", box.proxy.port, ssl=box.client_ssl())
    try:
        head = Row("", post_head("Transfer-Encoding: chunked"), (400,)).build(
            marker, box.clusters["alpha"].token
        )
        writer.write(head + b'5\r\n{"a":\r\n')
        await writer.drain()
        await eventually(lambda: server.requests_count > dispatched)  # the handler is reading the body
        writer.write(f"zz{marker}\r\nxx\r\n0\r\n\r\n".encode())
        await writer.drain()
        async with asyncio.timeout(READ_DEADLINE):
            response = await read_response(reader)
            rest = await reader.read()
    finally:
        await close_writer(writer)
    assert response.status == 400 and response.version == "HTTP/1.1" and rest == b""
    assert (response.header("Connection") or "").lower() == "close"
    assert marker.encode() not in response.body
    text = env.logs.text(logs_before)
    assert marker not in text and "Traceback" not in text, text
    assert len([r for r in env.logs.records[logs_before:] if r.levelno >= logging.INFO]) == 1, text
    [record] = box.audit_records()[audit_before:]
    assert record["decision"] == "invalid" and record["status"] == 400

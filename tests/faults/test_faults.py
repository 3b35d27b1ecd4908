"""Fault injection: the upstream refuses, dies, hangs, truncates, errors; clients stall or storm; the
policy and trust files break under load. After each fault the proxy answers with a ``Status`` (or passes
the upstream's answer through intact), leaks no upstream connection and no file descriptor, and serves
again once the fault clears.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apiproxy.demo.sandbox import Sandbox, write_trust_file
from tests.adversarial.rawhttp import (
    K8S_LIST,
    READ_DEADLINE,
    RawRequest,
    RawResponse,
    RawUpstream,
    close_writer,
    parse_head,
    read_body,
    read_head,
    read_response,
)
from tests.helpers import eventually

WATCH_EVENT = b'{"type":"ADDED","object":{"kind":"Pod","apiVersion":"v1","metadata":{"name":"p"}}}\n'


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def start_box(tmp_path: Path, upstream: RawUpstream | None, port: int = 0, **settings: Any) -> Sandbox:
    box = Sandbox(tmp_path, settings={"rate_limit_qps": 0.0, **settings})
    policy = tmp_path / "policy.yaml"
    shutil.copy(box.policy, policy)
    box.policy = policy
    if upstream is not None:
        upstream.ssl_context = box.upstream_server_ssl()
        box.upstream = await upstream.start(port)
    else:
        box.upstream = f"https://127.0.0.1:{port}"
    box.upstream_ca = box.upstream_tls.ca_file
    return await box.start()


@pytest.fixture
async def boxes() -> AsyncIterator[list[Sandbox | RawUpstream]]:
    """Everything a test starts, stopped at the end whatever happened."""
    things: list[Sandbox | RawUpstream] = []
    yield things
    for thing in reversed(things):
        await thing.stop()


def placeholder_ssl() -> ssl.SSLContext:
    return ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # replaced by start_box with the sandbox's upstream cert


async def connect(box: Sandbox) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert box.proxy is not None
    return await asyncio.open_connection("127.0.0.1", box.proxy.port, ssl=box.client_ssl(), limit=1 << 20)


def request_bytes(box: Sandbox, target: str, *, cluster: str = "alpha", close: bool = True) -> bytes:
    token = box.clusters[cluster].token
    extra = "Connection: close\r\n" if close else ""
    return f"GET {target} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n{extra}\r\n".encode()


async def get(box: Sandbox, target: str = "/api/v1/pods?limit=5", cluster: str = "alpha") -> RawResponse:
    reader, writer = await connect(box)
    try:
        writer.write(request_bytes(box, target, cluster=cluster))
        async with asyncio.timeout(READ_DEADLINE * 2):
            return await read_response(reader)
    finally:
        await close_writer(writer)


async def healthy(box: Sandbox, upstream: RawUpstream | None = None) -> None:
    """``/healthz`` answers and a normal request goes through."""
    assert (await get(box, "/healthz")).status == 200
    response = await get(box)
    assert response.status == 200, response.body[:300]
    if upstream is not None:
        assert response.body == K8S_LIST


async def metrics_text(box: Sandbox) -> str:
    async with aiohttp.ClientSession() as session, session.get(box.metrics_url + "/metrics") as resp:
        return await resp.text()


def assert_status(response: RawResponse, code: int) -> dict[str, Any]:
    assert response.status == code, (response.status, response.body[:300])
    doc = response.status_json()
    assert doc is not None, response.body[:300]
    assert doc["code"] == code
    return doc


async def no_leaks(
    upstream: RawUpstream | None, fds_before: int, *, pool: int = 1, tolerance: int = 4
) -> None:
    if upstream is not None:
        await eventually(lambda: upstream.open_connections <= pool, timeout=10)
    await eventually(lambda: open_fds() <= fds_before + tolerance, timeout=10)


# ---- the upstream refuses, dies, hangs ---------------------------------------------------------------------


async def test_upstream_refuses_connections(tmp_path: Path, boxes: list[Any]) -> None:
    port = free_port()  # nothing listens there
    box = await start_box(tmp_path, None, port)
    boxes.append(box)
    fds = open_fds()
    doc = assert_status(await get(box), 503)
    assert "unreachable" in doc["message"]
    assert (await get(box, "/healthz")).status == 200
    # The fault clears: an apiserver appears on that port.
    upstream = RawUpstream(box.upstream_server_ssl())
    await upstream.start(port)
    boxes.append(upstream)
    await healthy(box, upstream)
    await no_leaks(upstream, fds)


async def test_upstream_killed_and_restarted_mid_watch(tmp_path: Path, boxes: list[Any]) -> None:
    async def watch_then_hang(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if "watch=true" not in request.target:
            return await answer(request, writer)
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(f"{len(WATCH_EVENT):x}\r\n".encode() + WATCH_EVENT + b"\r\n")
        await writer.drain()
        return True  # keep the stream open: wait for a next request that never comes

    upstream = RawUpstream(placeholder_ssl(), behaviour=watch_then_hang)
    box = await start_box(tmp_path, upstream)
    boxes.append(box)
    fds = open_fds()
    reader, writer = await connect(box)
    writer.write(request_bytes(box, "/api/v1/pods?watch=true&timeoutSeconds=60"))
    head = await asyncio.wait_for(read_head(reader), READ_DEADLINE)
    assert b" 200 " in head.split(b"\r\n")[0]
    size = await asyncio.wait_for(reader.readuntil(b"\r\n"), READ_DEADLINE)
    assert await reader.readexactly(int(size, 16) + 2) == WATCH_EVENT + b"\r\n"

    await upstream.stop()  # killed: every connection cut, nothing listening
    _, headers = parse_head(head)
    async with asyncio.timeout(READ_DEADLINE):
        _, complete = await read_body(reader, headers, to_eof=True)
    assert not complete, "a watch cut by a dying upstream must not end with a clean terminating chunk"
    await close_writer(writer)
    assert_status(await get(box), 503)

    restarted = RawUpstream(box.upstream_server_ssl())
    await restarted.start(upstream.port)
    boxes.append(restarted)
    await healthy(box, restarted)
    await no_leaks(restarted, fds)


async def hang(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    """Accept the request and never answer (the next read sees the proxy hang up)."""
    return True


async def answer(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(K8S_LIST)
    )
    writer.write(K8S_LIST)
    await writer.drain()
    return True


async def test_upstream_accepts_but_never_answers(tmp_path: Path, boxes: list[Any]) -> None:
    upstream = RawUpstream(placeholder_ssl(), behaviour=hang)
    box = await start_box(tmp_path, upstream, upstream_timeout=1.0)
    boxes.append(box)
    fds = open_fds()
    # A watch waits (its silence is bounded by its own timeout, not the request timeout) ...
    watch_reader, watch_writer = await connect(box)
    watch_writer.write(request_bytes(box, "/api/v1/pods?watch=true&timeoutSeconds=60"))
    watch = asyncio.create_task(read_response(watch_reader))
    await eventually(lambda: len(upstream.arrived) == 1)
    # ... while a non-watch request gets 504 after the upstream timeout.
    doc = assert_status(await get(box), 504)
    assert "did not answer" in doc["message"]
    assert not watch.done(), "the watch must keep waiting: the upstream timeout is for non-watch requests"
    watch.cancel()
    await close_writer(watch_writer)
    # The fault clears.
    upstream.behaviour = answer
    await healthy(box, upstream)
    await no_leaks(upstream, fds)


async def test_upstream_accepts_tcp_but_never_handshakes(tmp_path: Path, boxes: list[Any]) -> None:
    accepted: list[asyncio.StreamWriter] = []
    hung_up: list[bool] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        with contextlib.suppress(ConnectionError):
            await reader.read()  # until the proxy gives up on the handshake and hangs up
        hung_up.append(True)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        box = await start_box(tmp_path, None, port, upstream_timeout=1.0, upstream_connect_timeout=1.0)
        boxes.append(box)
        response = await get(box)
        assert response.status in (503, 504), response.body[:300]
        assert_status(response, response.status)
        await eventually(lambda: accepted and len(hung_up) == len(accepted))
    finally:
        for writer in accepted:
            writer.transport.abort()
        server.close()
        await server.wait_closed()


async def test_truncated_body_is_not_a_clean_end(tmp_path: Path, boxes: list[Any]) -> None:
    async def truncated(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        if "chunked" in request.target:
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            writer.write(b"20\r\n" + b"x" * 32 + b"\r\n")
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n")
            writer.write(b"y" * 500)
        await writer.drain()
        return False  # and hang up

    upstream = RawUpstream(placeholder_ssl(), behaviour=truncated)
    box = await start_box(tmp_path, upstream)
    boxes.append(box)
    fds = open_fds()
    for target in ("/api/v1/pods?limit=1", "/api/v1/namespaces/chunked/pods"):
        reader, writer = await connect(box)
        writer.write(request_bytes(box, target))
        async with asyncio.timeout(READ_DEADLINE):
            response = await read_response(reader)
        await close_writer(writer)
        # Never a clean, complete 200: either the body arrives cut off (streamed responses), or, when the
        # proxy had not started answering yet (small responses are read whole first), a 503 Status.
        if response.status == 200:
            assert not response.complete, (
                f"{target}: a truncated upstream body must reach the client truncated"
            )
        else:
            assert response.status == 503, target
            assert json.loads(response.body)["reason"] == "ServiceUnavailable"
    upstream.behaviour = answer
    await healthy(box, upstream)
    await no_leaks(upstream, fds)


@pytest.mark.parametrize("code", [500, 503, 410, 429])
async def test_upstream_errors_pass_through_intact(tmp_path: Path, boxes: list[Any], code: int) -> None:
    body = (
        b'{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure",'
        b'"message":"upstream says %d","reason":"Whatever","code":%d}' % (code, code)
    )

    async def failing(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 %d Upstream Reason\r\nContent-Type: application/json\r\nRetry-After: 7\r\n"
            b'Warning: 299 - "careful"\r\nContent-Length: %d\r\n\r\n%s' % (code, len(body), body)
        )
        await writer.drain()
        return True

    upstream = RawUpstream(placeholder_ssl(), behaviour=failing)
    box = await start_box(tmp_path, upstream)
    boxes.append(box)
    fds = open_fds()
    response = await get(box)
    assert response.status == code
    assert response.body == body
    assert response.header("Retry-After") == "7"
    assert response.header("Warning") == '299 - "careful"'
    assert response.header("Content-Type") == "application/json"
    upstream.behaviour = answer
    await healthy(box, upstream)
    await no_leaks(upstream, fds)


# ---- clients that stall or storm ---------------------------------------------------------------------------

CHUNK = 64 * 1024
TOTAL = 256 * 1024 * 1024
#: Bytes that may sit in buffers between a stalled client and the upstream (kernel socket buffers on both
#: hops, TLS, aiohttp's read-ahead); far below TOTAL, so a proxy that reads ahead without bound fails.
IN_FLIGHT_BOUND = 48 * 1024 * 1024


class Firehose:
    """An upstream behaviour writing a huge body, recording how far it got and whether it is blocked."""

    def __init__(self) -> None:
        self.sent = 0
        self.blocked = False
        self.finished = False

    async def __call__(self, request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % TOTAL
        )
        block = b"z" * CHUNK
        while self.sent < TOTAL:
            writer.write(block)
            self.sent += CHUNK
            self.blocked = True
            await writer.drain()
            self.blocked = False
        self.finished = True
        return True


def stalled(hose: Firehose) -> Callable[[], bool]:
    """True once the upstream's writes have stayed blocked at the same offset for several polls."""
    seen = {"sent": -1, "polls": 0}

    def probe() -> bool:
        if hose.blocked and hose.sent == seen["sent"]:
            seen["polls"] += 1
        else:
            seen["sent"], seen["polls"] = hose.sent, 0
        return seen["polls"] >= 10

    return probe


async def start_stalled_client(box: Sandbox) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await connect(box)
    writer.write(request_bytes(box, "/api/v1/pods"))
    head = await asyncio.wait_for(read_head(reader), READ_DEADLINE)
    assert b" 200 " in head.split(b"\r\n")[0]
    return reader, writer  # and never read again


async def test_client_that_stops_reading_pauses_upstream(tmp_path: Path, boxes: list[Any]) -> None:
    hose = Firehose()
    upstream = RawUpstream(placeholder_ssl(), behaviour=hose)
    box = await start_box(tmp_path, upstream)
    boxes.append(box)
    fds = open_fds()
    _reader, writer = await start_stalled_client(box)
    await eventually(stalled(hose), timeout=20)
    assert not hose.finished
    assert hose.sent < IN_FLIGHT_BOUND, (
        f"the proxy buffered {hose.sent} bytes for a client that reads nothing"
    )
    # The client goes away: the proxy must drop the upstream stream, not finish reading it.
    writer.transport.abort()
    await eventually(lambda: upstream.open_connections == 0, timeout=10)
    assert not hose.finished
    upstream.behaviour = answer
    await healthy(box, upstream)
    await no_leaks(upstream, fds)


async def test_stalled_client_is_cut_after_a_timeout(tmp_path: Path, boxes: list[Any]) -> None:
    hose = Firehose()
    upstream = RawUpstream(placeholder_ssl(), behaviour=hose)
    box = await start_box(tmp_path, upstream, upstream_timeout=1.0)
    boxes.append(box)
    _reader, writer = await start_stalled_client(box)
    try:
        await eventually(stalled(hose), timeout=20)
        # A non-watch request that made no progress for several times the upstream timeout is over.
        await eventually(lambda: upstream.open_connections == 0, timeout=6)
    finally:
        writer.transport.abort()


async def test_client_hanging_up_mid_body_is_not_an_upstream_failure(
    tmp_path: Path, boxes: list[Any]
) -> None:
    """A client that goes away mid-stream ends the relay quietly: audited as the client's doing, never
    counted as the upstream breaking off (which is what alerts fire on)."""
    release = asyncio.Event()

    async def slow_stream(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n")
        writer.write(b"\r\n20\r\n" + b"x" * 32 + b"\r\n")
        await writer.drain()
        await release.wait()
        for _ in range(64):
            writer.write(b"4000\r\n" + b"z" * 0x4000 + b"\r\n")
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return False

    upstream = RawUpstream(placeholder_ssl(), behaviour=slow_stream)
    box = await start_box(tmp_path, upstream)
    boxes.append(box)
    fds = open_fds()
    target = "/api/v1/namespaces/streaming/pods"
    reader, writer = await connect(box)
    writer.write(request_bytes(box, target))
    async with asyncio.timeout(READ_DEADLINE):
        status, _ = parse_head(await read_head(reader))
        assert status.split(" ")[1] == "200"
        assert await reader.read(1)  # the first chunk is on its way
    writer.transport.abort()
    release.set()

    def audited() -> list[dict[str, Any]]:
        return [r for r in box.audit_records() if r.get("target") == target]

    [record] = await eventually(audited)
    assert record["reason"] == "the client went away", record
    assert record["decision"] == "allow"
    text = await metrics_text(box)
    assert 'apiproxy_upstream_errors_total{kind="stream"} 0.0' in text  # registered at 0, never counted
    upstream.behaviour = answer
    await healthy(box, upstream)
    await no_leaks(upstream, fds)


async def test_thousands_of_connections_opened_and_dropped(tmp_path: Path, boxes: list[Any]) -> None:
    upstream = RawUpstream(placeholder_ssl())
    box = await start_box(tmp_path, upstream)
    boxes.append(box)
    await healthy(box, upstream)
    fds = open_fds()
    assert box.proxy is not None
    port = box.proxy.port
    ctx = box.client_ssl()
    outcomes: dict[str, int] = {}

    async def tcp_only() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.transport.abort()

    async def handshake_then_abort() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.transport.abort()

    async def half_request() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
        writer.write(b"GET /api/v1/pods HTTP/1.1\r\nHost: x\r\nAuthoriz")
        await writer.drain()
        writer.transport.abort()

    async def garbage() -> None:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"\x16\x03\x01\x02\x00" + os.urandom(200))
        await writer.drain()
        writer.transport.abort()

    kinds: list[Callable[[], Awaitable[None]]] = [tcp_only] * 1200 + [handshake_then_abort] * 400
    kinds += [half_request] * 200 + [garbage] * 200
    gate = asyncio.Semaphore(100)

    async def one(kind: Callable[[], Awaitable[None]]) -> None:
        async with gate:
            try:
                await asyncio.wait_for(kind(), READ_DEADLINE)
                outcomes["ok"] = outcomes.get("ok", 0) + 1
            except (OSError, ssl.SSLError, TimeoutError) as exc:
                outcomes[type(exc).__name__] = outcomes.get(type(exc).__name__, 0) + 1

    await asyncio.gather(*(one(kind) for kind in kinds))
    assert sum(outcomes.values()) == 2000
    assert outcomes.get("ok", 0) >= 1900, outcomes
    await healthy(box, upstream)
    await no_leaks(upstream, fds, tolerance=6)


# ---- policy and trust files break under load ---------------------------------------------------------------


class Load:
    """Requests from alpha in a loop; counts answers by status."""

    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.codes: dict[int, int] = {}
        self.last = 0
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            response = await get(self.box, "/api/v1/namespaces/default/pods")
            self.last = response.status
            self.codes[response.status] = self.codes.get(response.status, 0) + 1

    def __enter__(self) -> Load:
        self._task = asyncio.create_task(self._run())
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def served(self, more: int, code: int = 200) -> None:
        """Wait until ``more`` further answers with ``code`` came back."""
        target = self.codes.get(code, 0) + more
        await eventually(lambda: self.codes.get(code, 0) >= target, timeout=10)

    async def now(self, code: int) -> None:
        await eventually(lambda: self.last == code, timeout=10)
        await self.served(3, code)


DENY_PODS = b"""apiVersion: apiproxy.io/v1alpha1
kind: Policy
rules:
  - name: only-services
    clusters: ["*"]
    apiGroups: [""]
    resources: ["services"]
    verbs: ["get", "list", "watch"]
"""


async def test_policy_file_deleted_or_corrupted_under_load(tmp_path: Path, boxes: list[Any]) -> None:
    upstream = RawUpstream(placeholder_ssl())
    box = await start_box(tmp_path, upstream, reload_interval=0.05)
    boxes.append(box)
    good = box.policy.read_bytes()
    fds = open_fds()
    with Load(box) as load:
        await load.served(5)
        for broken in (
            None,
            b"\x00\xff garbage",
            b"rules: [",
            b"apiVersion: apiproxy.io/v1alpha1\nkind: Nope\n",
            b"",
        ):
            if broken is None:
                box.policy.unlink()
            else:
                box.policy.write_bytes(broken)
            await load.served(10)  # keeps serving with the last good policy
            assert set(load.codes) == {200}, load.codes
        box.policy.write_bytes(DENY_PODS)  # a valid change takes effect ...
        await load.now(403)
        box.policy.write_bytes(good)  # ... and so does the fix
        await load.now(200)
    await healthy(box, upstream)
    await no_leaks(upstream, fds, pool=2)


async def test_trust_file_deleted_or_corrupted_under_load(tmp_path: Path, boxes: list[Any]) -> None:
    upstream = RawUpstream(placeholder_ssl())
    box = await start_box(tmp_path, upstream, reload_interval=0.05)
    boxes.append(box)
    good = box.trust_file.read_bytes()
    fds = open_fds()
    with Load(box) as load:
        await load.served(5)
        for broken in (None, b"{not json", b"[]", b'{"x": {"clusterUUID": 1}}', b""):
            if broken is None:
                box.trust_file.unlink()
            else:
                box.trust_file.write_bytes(broken)
            await load.served(10)  # keeps serving with the last good trust store
            assert set(load.codes) == {200}, (broken, load.codes)
        write_trust_file(box.trust_file, [box.clusters["beta"]])  # alpha removed: refused at once
        await load.now(401)
        assert (await get(box, cluster="beta")).status == 200
        box.trust_file.write_bytes(good)
        await load.now(200)
    await healthy(box, upstream)
    await no_leaks(upstream, fds, pool=2)

"""The upstream HTTP/1.1 client (``apiproxy.proxy.http1``) against scripted raw-byte upstreams on loopback.

Every case is about what the proxy relays, and to whom: a response must never be attributed to the wrong
request, a broken or hostile upstream must end in a bounded, labelled failure that leaks no connection,
and nothing a caller supplies may change the request on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp.client_exceptions import ClientConnectionError, ClientPayloadError, ServerTimeoutError

from apiproxy.certs import ServingFiles, write_serving_bundle
from apiproxy.proxy import http1
from apiproxy.proxy.upstream import client_ssl_context
from tests.helpers import eventually

pytestmark = pytest.mark.timeout(30)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
HEAD_OK = b"HTTP/1.1 200 OK\r\nContent-Length: 12345\r\n\r\n"
#: Longest a test waits for something the script promised (a deadline, never a delay).
DEADLINE = 5.0


# ---- a scripted upstream ----------------------------------------------------------------------------------


class Peer:
    """One accepted connection of a scripted upstream, seen from the server's side."""

    def __init__(
        self, upstream: Scripted, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.upstream = upstream
        self.number = number
        self.reader = reader
        self.writer = writer
        self.requests: list[bytes] = []
        #: Set once the client closed (or reset) this connection, as seen by a read.
        self.eof = asyncio.Event()

    async def request(self) -> bytes | None:
        """The next request as received (head, then a Content-Length body), or None once the client closed."""
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof.set()
            return None
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        data = head + (await self.reader.readexactly(length) if length else b"")
        self.requests.append(data)
        self.upstream.requests.append(data)
        return data

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed(self) -> None:
        """Say nothing until the client closes the connection (whatever it sends meanwhile is dropped)."""
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while await self.reader.read(65536):
                pass
        self.eof.set()

    async def closed_by_client(self) -> None:
        """Wait until the client closed this connection (the script must be reading to notice)."""
        async with asyncio.timeout(DEADLINE):
            await self.eof.wait()


Handler = Callable[[Peer], Awaitable[None]]


class Scripted:
    """A loopback server running ``handler`` for each accepted connection; records what arrived."""

    def __init__(self, handler: Handler, ssl_context: ssl.SSLContext | None = None) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.peers: list[Peer] = []
        self.requests: list[bytes] = []
        self.errors: list[BaseException] = []
        self.tasks: set[asyncio.Task[Any]] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self, host: str = "127.0.0.1") -> Scripted:
        self.server = await asyncio.start_server(self._serve, host, 0, ssl=self.ssl_context)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        peer = Peer(self, len(self.peers) + 1, reader, writer)
        self.peers.append(peer)
        try:
            await self.handler(peer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass  # the client went away mid-script: that is often the point
        except asyncio.CancelledError:
            pass  # stop(): ending quietly keeps asyncio from logging the cancelled handler as an error
        except Exception as exc:
            self.errors.append(exc)  # a script assertion: reported when the test ends
        finally:
            writer.close()
            self.tasks.discard(task)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for peer in self.peers:
            peer.writer.transport.abort()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()


def answer(*responses: bytes) -> Handler:
    """Answer requests with ``responses`` in order, on whichever connection they arrive; never close first."""
    queue = list(responses)

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            if not queue:
                raise AssertionError("a request beyond the script")
            await peer.send(queue.pop(0))

    return handler


def silent(peer: Peer) -> Awaitable[None]:
    """Accept, then never say a byte."""
    return peer.until_closed()


async def body(response: http1.Response) -> bytes:
    """The body as a relay loop reads it (chunk by chunk), then released."""
    data = b"".join([chunk async for chunk in response.content.iter_any()])
    response.release()
    return data


class LoopErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.fixture(autouse=True)
def no_loop_errors() -> Iterator[None]:
    """Fail a test whose event loop logged an error: a callback of the client that raised (in
    ``data_received``, say) closes the connection too, and must not pass for the intended refusal."""
    handler = LoopErrors()
    logger = logging.getLogger("asyncio")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
    assert not handler.messages, handler.messages


Serve = Callable[..., Awaitable[Scripted]]
MakePool = Callable[..., http1.Pool]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """Start scripted upstreams; all are stopped at the end, and a failed script assertion fails the test."""
    started: list[Scripted] = []

    async def start(
        handler: Handler, *, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1"
    ) -> Scripted:
        upstream = Scripted(handler, ssl_context)
        started.append(upstream)
        return await upstream.start(host)

    yield start
    for upstream in started:
        await upstream.stop()
    errors = [exc for upstream in started for exc in upstream.errors]
    assert not errors, errors


@pytest.fixture
async def pools() -> AsyncIterator[MakePool]:
    """Make pools; all are closed at the end."""
    made: list[http1.Pool] = []

    def make(
        port: int, *, host: str = "127.0.0.1", ssl_context: ssl.SSLContext | None = None, **options: Any
    ) -> http1.Pool:
        pool = http1.Pool(host, port, ssl_context, **{"connect_timeout": DEADLINE, **options})
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


Start = Callable[..., Awaitable[tuple[Scripted, http1.Pool]]]


@pytest.fixture
def start(serve: Serve, pools: MakePool) -> Start:
    """A scripted plain-HTTP upstream and a pool to it."""

    async def go(handler: Handler, **options: Any) -> tuple[Scripted, http1.Pool]:
        upstream = await serve(handler)
        return upstream, pools(upstream.port, **options)

    return go


class WireSpy:
    """Stands in for a connection's transport, recording every write before passing it on."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self._writes = writes

    def write(self, data: bytes) -> None:
        self._writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


@pytest.fixture
def writes(monkeypatch: pytest.MonkeyPatch) -> list[bytes]:
    """Every ``transport.write`` the pool's connections make, in order."""
    log: list[bytes] = []

    class Recording(http1.Connection):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            assert isinstance(transport, asyncio.Transport)
            self.transport = WireSpy(transport, log)  # type: ignore[assignment]

    monkeypatch.setattr(http1, "Connection", Recording)
    return log


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but never listening: connecting to it is refused, and nobody can take it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


@pytest.fixture
def tls(tmp_path: Path) -> ServingFiles:
    """A CA and a server certificate for 127.0.0.1, localhost and ::1."""
    return write_serving_bundle(tmp_path / "upstream", "upstream")


def server_context(files: ServingFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(files.cert_file, files.key_file)
    return ctx


def ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as sock:
            sock.bind(("::1", 0))
    except OSError:
        return False
    return True


# ---- framing and keep-alive -------------------------------------------------------------------------------


async def test_sequential_requests_reuse_one_keepalive_connection(start: Start) -> None:
    """Reuse is the point of the pool: the apiserver's TLS handshake per request would dominate latency."""
    upstream, pool = await start(answer(OK, OK, OK))
    for _ in range(3):
        response = await pool.request("GET", "/a", [("Accept", "x")], read_timeout=DEADLINE)
        assert (response.status, response.reason) == (200, "OK")
        assert response.headers["Content-Type"] == "text/plain"
        assert response.content_length == 5
        assert await response.read() == b"hello"
    assert len(upstream.peers) == 1 and len(upstream.requests) == 3
    assert (pool.count, len(pool.idle), pool.in_use) == (1, 1, 0)


async def test_chunked_body_with_extensions_and_trailers_is_decoded_and_reused(start: Start) -> None:
    """Watches and large lists come chunked; extensions and trailers must not desync the next response."""
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'5;ext=1;q="x"\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    upstream, pool = await start(answer(chunked, OK))
    response = await pool.request("GET", "/c", [], read_timeout=DEADLINE)
    assert response.content_length is None
    assert await body(response) == b"hello world"
    again = await pool.request("GET", "/c", [], read_timeout=DEADLINE)
    assert await again.read() == b"hello"
    assert len(upstream.peers) == 1


async def test_interim_1xx_responses_are_skipped(start: Start) -> None:
    """A 100 or 103 is not the answer: relaying it as final would end the client's request early."""
    interim = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\nHTTP/1.1 100 Continue\r\n\r\n" + OK
    upstream, pool = await start(answer(interim, OK))
    response = await pool.request("GET", "/i", [], read_timeout=DEADLINE)
    assert response.status == 200
    assert await response.read() == b"hello"
    assert await (await pool.request("GET", "/i", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 1


async def test_head_response_has_no_body_despite_its_content_length(start: Start) -> None:
    """A HEAD answer announces a length it never sends; waiting for it would hang, reading on would desync."""
    upstream, pool = await start(answer(HEAD_OK, OK))
    response = await pool.request("HEAD", "/h", [], read_timeout=DEADLINE)
    assert response.content_length == 12345
    assert response.content.is_eof()
    response.release()
    assert await (await pool.request("GET", "/h", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 1


@pytest.mark.parametrize(
    "bodyless",
    [b"HTTP/1.1 304 Not Modified\r\nETag: x\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"],
    ids=["304", "204"],
)
async def test_bodyless_status_has_an_empty_body_and_reuses_the_connection(
    start: Start, bodyless: bytes
) -> None:
    """204 and 304 carry no body by definition: the next bytes on the connection are the next response."""
    upstream, pool = await start(answer(bodyless, OK))
    response = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert await response.read() == b""
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 1


async def test_connection_close_response_is_not_reused(start: Start) -> None:
    """An upstream that says it will close must not be sent another request on that connection."""
    closing = b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 5\r\n\r\nhello"
    upstream, pool = await start(answer(closing, closing))
    response = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert response.should_close
    assert await response.read() == b"hello"
    assert pool.count == 0
    await upstream.peers[0].closed_by_client()
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 2


@pytest.mark.parametrize(
    "head", [b"HTTP/1.0 200 OK\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\n"], ids=["http1.0", "http1.1-unframed"]
)
async def test_close_delimited_body_is_read_to_eof(start: Start, head: bytes) -> None:
    """A body with no length ends at the upstream's close; it must arrive whole and the connection go."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(head + b"until-eof-body")

    _, pool = await start(handler)
    response = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert response.should_close
    assert await body(response) == b"until-eof-body"
    assert pool.count == 0


@pytest.mark.parametrize(
    "partial",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nonly-some",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    ],
    ids=["content-length", "chunked"],
)
async def test_truncated_body_fails_the_read(start: Start, partial: bytes) -> None:
    """A body cut short must reach the client as an error, never as a complete (wrong) object."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(partial)

    _, pool = await start(handler)
    response = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    with pytest.raises(ClientPayloadError):
        await response.read()
    assert pool.count == 0


async def test_malformed_chunk_mid_body_fails_the_read(start: Start) -> None:
    """Garbage framing after the headers ends the body with an error and the connection with it."""
    headers_seen = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await headers_seen.wait()
        await peer.send(b"zz\r\nmore\r\n")
        await peer.until_closed()

    upstream, pool = await start(handler)
    response = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    headers_seen.set()
    assert await response.content.readexactly(5) == b"hello"
    with pytest.raises(ClientPayloadError):
        await response.content.read()
    response.release()
    assert pool.count == 0
    await upstream.peers[0].closed_by_client()


async def test_compressed_body_passes_through_untouched(start: Start) -> None:
    """The proxy relays the upstream's bytes and Content-Encoding together; decoding one would break both."""
    compressed = gzip.compress(b'{"kind":"PodList"}' * 100)
    response_bytes = (
        b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(compressed)
        + compressed
    )
    _, pool = await start(answer(response_bytes))
    response = await pool.request("GET", "/", [("Accept-Encoding", "gzip")], read_timeout=DEADLINE)
    assert response.headers["Content-Encoding"] == "gzip"
    assert await response.read() == compressed


async def test_repeated_response_headers_are_all_kept(start: Start) -> None:
    """Repeated headers (Warning, Audit-Id...) are relayed as sent: none may be merged away or dropped."""
    response_bytes = (
        b'HTTP/1.1 200 OK\r\nWarning: 299 - "one"\r\nContent-Length: 0\r\nwarning: 299 - "two"\r\n\r\n'
    )
    _, pool = await start(answer(response_bytes))
    response = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert response.headers.getall("Warning") == ['299 - "one"', '299 - "two"']
    response.release()


async def test_body_released_unread_closes_the_connection(start: Start) -> None:
    """The unread rest of a body would be read as the next response: that connection must not be reused."""

    async def handler(peer: Peer) -> None:
        if peer.number == 1:
            await peer.request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            await peer.until_closed()
        else:
            await answer(OK)(peer)

    upstream, pool = await start(handler)
    response = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    response.release()
    assert pool.count == 0
    await upstream.peers[0].closed_by_client()
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 2


async def test_close_mid_body_wakes_the_reader_and_drops_the_connection(start: Start) -> None:
    """A client that goes away must stop the relay loop waiting on the body, and free the connection."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
        await peer.until_closed()

    upstream, pool = await start(handler)
    response = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert await response.content.readexactly(5) == b"hello"
    reader = asyncio.create_task(response.content.read())
    await eventually(lambda: response.content._waiter is not None)  # the reader is blocked on the body
    response.close()
    with pytest.raises(ClientConnectionError):
        await reader
    assert pool.count == 0
    await upstream.peers[0].closed_by_client()
    response.release()  # a no-op once closed
    assert pool.count == 0


# ---- keep-alive races, disconnects and bytes nobody asked for ----------------------------------------------


async def test_idle_connection_closed_by_upstream_is_replaced(start: Start) -> None:
    """The upstream may close idle connections at will; the pool must notice and open a new one."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)  # ... and close once answered

    upstream, pool = await start(handler)
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    await eventually(lambda: pool.count == 0)  # the FIN was seen while idle: out of the pool
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 2


def drop_second_request(peer: Peer) -> Awaitable[None]:
    """Connection 1 answers one request and closes on the next unanswered; later connections answer."""

    async def handler() -> None:
        if peer.number == 1:
            await peer.request()
            await peer.send(OK)
            await peer.request()
            return
        while (request := await peer.request()) is not None:
            await peer.send(HEAD_OK if request.startswith(b"HEAD") else OK)

    return handler()


@pytest.mark.parametrize("method", ["GET", "HEAD", "OPTIONS"])
async def test_keepalive_race_is_retried_for_idempotent_methods(start: Start, method: str) -> None:
    """The upstream closing a reused connection as a request went out is routine; safe requests go again."""
    upstream, pool = await start(drop_second_request)
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    response = await pool.request(method, "/again", [], read_timeout=DEADLINE)
    assert response.status == 200
    await response.read()
    assert len(upstream.peers) == 2
    assert upstream.requests[1] == upstream.requests[2]  # the same request went out again
    assert (pool.count, pool.in_use) == (1, 0)


@pytest.mark.parametrize("method", ["POST", "DELETE"])
async def test_keepalive_race_is_not_retried_for_other_methods(start: Start, method: str) -> None:
    """A request with effects may have been acted on even though no answer came: never send it twice."""
    upstream, pool = await start(drop_second_request)
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    with pytest.raises(http1.Disconnected) as err:
        await pool.request(method, "/", [], body=b"{}", read_timeout=DEADLINE)
    assert err.value.kind == "disconnect" and err.value.retryable
    assert len(upstream.requests) == 2
    assert pool.count == 0


async def test_new_connection_closed_unanswered_is_not_retried(start: Start) -> None:
    """On a fresh connection a close is no keep-alive race but a failing upstream: report it, once."""

    async def handler(peer: Peer) -> None:
        await peer.request()

    upstream, pool = await start(handler)
    with pytest.raises(http1.Disconnected) as err:
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert not err.value.retryable
    assert len(upstream.requests) == 1
    assert pool.count == 0


async def test_partial_answer_then_close_is_not_retried(start: Start) -> None:
    """Once the upstream started answering, the request was seen: only "nothing came back" is the race."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Le")

    upstream, pool = await start(handler)
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    with pytest.raises(http1.Disconnected) as err:
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert not err.value.retryable
    assert len(upstream.peers) == 1 and len(upstream.requests) == 2


async def test_unsolicited_extra_response_closes_the_connection(start: Start) -> None:
    """An extra response would be handed to the next request (a desync): the connection must go."""

    async def handler(peer: Peer) -> None:
        if peer.number == 1:
            await peer.request()
            await peer.send(OK + OK)
            await peer.until_closed()
        else:
            await answer(OK)(peer)

    upstream, pool = await start(handler)
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    await upstream.peers[0].closed_by_client()
    assert pool.count == 0
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 2


async def test_bytes_on_an_idle_connection_close_it(start: Start) -> None:
    """Bytes on an idle connection belong to no request; the next request would read them as its answer."""
    released = asyncio.Event()

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(OK)
        await released.wait()
        await peer.send(OK)
        await peer.until_closed()

    upstream, pool = await start(handler)
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(pool.idle) == 1
    released.set()
    await upstream.peers[0].closed_by_client()
    assert (pool.count, len(pool.idle)) == (0, 0)


async def test_body_sent_to_head_closes_the_connection(start: Start) -> None:
    """An upstream that answers HEAD with a body leaves bytes no request asked for: the connection must go."""

    async def handler(peer: Peer) -> None:
        if peer.number == 1:
            await peer.request()
            await peer.send(OK)  # Content-Length 5 and the 5 bytes, to a HEAD
            await peer.until_closed()
        else:
            await answer(OK)(peer)

    upstream, pool = await start(handler)
    try:
        response = await pool.request("HEAD", "/", [], read_timeout=DEADLINE)
    except http1.ProtocolFailed:
        pass  # the stray body arrived with the head: refused whole
    else:
        assert response.status == 200 and await response.read() == b""
    await upstream.peers[0].closed_by_client()
    assert pool.count == 0
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 2


# ---- responses refused ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "switch",
    [
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nframes",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ],
    ids=["upgrade-headers", "bare"],
)
async def test_switching_protocols_is_refused(start: Start, switch: bytes) -> None:
    """The proxy never asks for an upgrade; relaying one would hand the client a raw tunnel upstream."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(switch)
        await peer.until_closed()

    upstream, pool = await start(handler)
    with pytest.raises(http1.ProtocolFailed) as err:
        await pool.request("GET", "/", [("Connection", "Upgrade")], read_timeout=DEADLINE)
    assert err.value.kind == "protocol"
    assert pool.count == 0
    await upstream.peers[0].closed_by_client()


@pytest.mark.parametrize(
    "oversized",
    [
        b"HTTP/1.1 200 OK\r\nX-Big: " + b"x" * 16384 + b"\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\n" + b"".join(b"X-H%d: v\r\n" % i for i in range(200)) + b"\r\n",
        b"HTTP/1.1 200 " + b"x" * 16384 + b"\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["long-header", "many-headers", "long-status-line"],
)
async def test_oversized_response_head_is_refused(start: Start, oversized: bytes) -> None:
    """A head past the parser's limits is refused rather than buffered without bound."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(oversized)
        await peer.until_closed()

    _, pool = await start(handler)
    with pytest.raises(http1.ProtocolFailed):
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert pool.count == 0


@pytest.mark.parametrize(
    "malformed",
    [
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/2 200\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello",
    ],
    ids=["not-http", "http2", "chunked-and-length", "two-lengths", "negative-length"],
)
async def test_malformed_or_ambiguous_response_head_is_refused(start: Start, malformed: bytes) -> None:
    """Framing the proxy would have to guess at is how responses get smuggled: refuse it."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(malformed)
        await peer.until_closed()

    _, pool = await start(handler)
    with pytest.raises(http1.ProtocolFailed):
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert pool.count == 0


# ---- silence and back-pressure ----------------------------------------------------------------------------


async def test_silence_before_headers_is_a_header_timeout(start: Start) -> None:
    """An upstream that takes the request and says nothing must end in a 504, not hold the client forever."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.until_closed()

    upstream, pool = await start(handler)
    with pytest.raises(http1.HeaderTimeout) as err:
        await pool.request("GET", "/", [], read_timeout=0.2)
    assert err.value.kind == "timeout"
    assert pool.count == 0
    await upstream.peers[0].closed_by_client()


async def test_silence_mid_body_fails_the_body_with_a_server_timeout(start: Start) -> None:
    """A body that stops arriving must end with an error the relay loop sees, and free the connection."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await peer.until_closed()

    upstream, pool = await start(handler)
    response = await pool.request("GET", "/", [], read_timeout=0.2)
    with pytest.raises(ServerTimeoutError):
        await response.read()
    assert pool.count == 0
    await upstream.peers[0].closed_by_client()


BIG = 8 * 1024 * 1024


def stream_chunked(total: int, block: int = 65536) -> Handler:
    """Answer one request with ``total`` bytes of chunked body as fast as the client takes them."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"%x\r\n" % block + b"x" * block + b"\r\n"
        for _ in range(total // block):
            await peer.send(chunk)
        await peer.send(b"0\r\n\r\n")
        await peer.until_closed()

    return handler


async def test_slow_consumer_pauses_the_socket_and_bounds_buffering(start: Start) -> None:
    """A client that reads slowly must not make the proxy buffer a whole large list in memory."""
    _, pool = await start(stream_chunked(BIG))
    response = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    conn = response._conn
    await eventually(lambda: conn.reading_paused)
    # Paused at twice the low-water mark, plus at most one socket read (256 KiB) past it.
    assert response.content.total_bytes <= 4 * http1.READ_LIMIT
    assert len(await body(response)) == BIG
    assert (pool.count, len(pool.idle)) == (1, 1)  # read to the end: reusable


async def test_consumer_not_reading_is_not_upstream_silence(start: Start) -> None:
    """A paused socket is the client's slowness, not the upstream's: it must not end in a timeout."""
    _, pool = await start(stream_chunked(BIG))
    response = await pool.request("GET", "/", [], read_timeout=0.2)
    conn = response._conn
    await eventually(lambda: conn.reading_paused)
    reads = conn.reads
    for _ in range(2):  # the second check runs with no progress at all since the first
        timer = conn.timer
        await eventually(lambda timer=timer: conn.timer is not timer)
    assert conn.reads == reads
    assert not conn.closed and response.content.exception() is None
    assert len(await body(response)) == BIG


# ---- the request on the wire ------------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [None, b"", b'{"a":1}'], ids=["no-body", "empty-body", "body"])
async def test_request_is_written_once_exactly_as_expected(
    start: Start, writes: list[bytes], payload: bytes | None
) -> None:
    """Headers go out in order and spelling as the proxy allowlisted them, head and body in one write."""
    upstream, pool = await start(answer(OK))
    headers = [("Accept", "application/json"), ("User-Agent", "kubectl/v1.31"), ("accept", "x")]
    response = await pool.request("POST", "/api/v1/pods?limit=5", headers, body=payload)
    await response.read()
    expected = (
        b"POST /api/v1/pods?limit=5 HTTP/1.1\r\n"
        b"Host: 127.0.0.1:%d\r\n"
        b"Accept: application/json\r\nUser-Agent: kubectl/v1.31\r\naccept: x\r\n" % upstream.port
    )
    if payload is not None:
        expected += b"Content-Length: %d\r\n" % len(payload)
    expected += b"\r\n" + (payload or b"")
    assert writes == [expected]
    assert upstream.requests == [expected]


@pytest.mark.parametrize(
    ("host", "port", "tls", "expected"),
    [
        ("127.0.0.1", 80, False, "127.0.0.1"),
        ("127.0.0.1", 6443, False, "127.0.0.1:6443"),
        ("10.96.0.1", 443, False, "10.96.0.1:443"),
        ("kubernetes.default.svc", 443, True, "kubernetes.default.svc"),
        ("kubernetes.default.svc", 80, True, "kubernetes.default.svc:80"),
        ("::1", 443, True, "[::1]"),
        ("fd00::1", 6443, True, "[fd00::1]:6443"),
        ("fd00::1", 80, False, "[fd00::1]"),
    ],
)
async def test_host_header(pools: MakePool, host: str, port: int, tls: bool, expected: str) -> None:
    """Host is what virtual hosts and the apiserver's own checks see: default port omitted, IPv6 bracketed."""
    pool = pools(port, host=host, ssl_context=ssl.create_default_context() if tls else None)
    assert pool.encode("GET", "/", [], None) == f"GET / HTTP/1.1\r\nHost: {expected}\r\n\r\n".encode()


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback here")
async def test_host_header_of_an_ipv6_upstream_on_the_wire(serve: Serve, pools: MakePool) -> None:
    """An IPv6 apiserver (a dual-stack cluster's service address) gets a bracketed Host it can parse."""
    upstream = await serve(answer(OK), host="::1")
    pool = pools(upstream.port, host="::1")
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert upstream.requests[0].startswith(b"GET / HTTP/1.1\r\nHost: [::1]:%d\r\n" % upstream.port)


@pytest.mark.parametrize(
    ("target", "headers"),
    [
        ("/x", [("Authorization", "Bearer a\r\nX-Evil: 1")]),
        ("/x", [("Accept", "a\nX-Evil: 1")]),
        ("/x", [("Accept", "a\rb")]),
        ("/x", [("X-A\r\nX-Evil", "1")]),
        ("/x\r\nX-Evil: 1", []),
        ("/x\nX-Evil:1", []),
        ("/a b", []),
        ("/x HTTP/1.1\r\nHost: evil\r\n\r\nGET /y", []),
        ("/api/v1/namespaces/caf\u00e9", []),
        ("/x", [("Accept", "caf\u00e9")]),
    ],
    ids=[
        "crlf-value",
        "lf-value",
        "cr-value",
        "crlf-name",
        "crlf-target",
        "lf-target",
        "space-target",
        "smuggled-request",
        "non-ascii-target",
        "non-ascii-value",
    ],
)
async def test_request_that_would_add_a_line_is_refused(
    start: Start, target: str, headers: list[tuple[str, str]]
) -> None:
    """Nothing a caller supplies may add a header or a request of its own (injection, smuggling)."""
    upstream, pool = await start(answer())
    with pytest.raises(http1.ProtocolFailed):
        await pool.request("GET", target, headers, read_timeout=DEADLINE)
    assert pool.count == 0  # refused before any connection was taken
    assert upstream.requests == []


async def test_caller_cancelled_while_waiting_for_headers_drops_the_connection(start: Start) -> None:
    """The late answer to a cancelled request must never reach the next request on that connection."""
    answer_late = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.number == 1:
            await peer.request()
            await answer_late.wait()
            await peer.send(OK)
            await peer.until_closed()
        else:
            await answer(OK)(peer)

    upstream, pool = await start(handler)
    task = asyncio.create_task(pool.request("GET", "/", [], read_timeout=DEADLINE))
    await eventually(lambda: upstream.requests)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.count == 0
    answer_late.set()
    await upstream.peers[0].closed_by_client()
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 2 and pool.count == 1


async def test_concurrent_requests_use_separate_connections(start: Start) -> None:
    """HTTP/1.1 carries one request at a time: two in flight need two connections, never a shared one."""
    go = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await go.wait()
            await peer.send(OK)

    upstream, pool = await start(handler)
    tasks = [asyncio.create_task(pool.request("GET", f"/{i}", [], read_timeout=DEADLINE)) for i in range(2)]
    await eventually(lambda: len(upstream.requests) == 2)
    assert len(upstream.peers) == 2
    go.set()
    for response in await asyncio.gather(*tasks):
        assert await response.read() == b"hello"
    assert (pool.count, len(pool.idle)) == (2, 2)


async def test_only_a_few_idle_connections_are_kept_after_a_burst(start: Start) -> None:
    """After a burst, the pool keeps ``max_idle`` warm connections and closes the rest at once: each idle
    one holds a TLS session and buffers in the proxy and in the apiserver."""
    go = asyncio.Event()

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await go.wait()
            await peer.send(OK)

    upstream, pool = await start(handler, max_idle=2)
    tasks = [asyncio.create_task(pool.request("GET", f"/{i}", [], read_timeout=DEADLINE)) for i in range(5)]
    await eventually(lambda: len(upstream.requests) == 5)
    go.set()
    for response in await asyncio.gather(*tasks):
        assert await response.read() == b"hello"
    assert (pool.count, len(pool.idle)) == (2, 2)
    await eventually(lambda: sum(peer.eof.is_set() for peer in upstream.peers) == 3)
    # The kept ones still serve.
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 5


# ---- the connection limit ---------------------------------------------------------------------------------


def head_then_hold(peer: Peer) -> Awaitable[None]:
    """Connection 1 sends headers and half a body, then holds; later connections answer normally."""

    async def handler() -> None:
        if peer.number == 1:
            await peer.request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nhello")
            await peer.until_closed()
        else:
            await answer(OK, OK, OK)(peer)

    return handler()


async def test_connection_limit_queues_requests_until_one_is_released(start: Start) -> None:
    """The limit caps what the apiserver sees from the proxy; a queued request takes the freed connection."""
    upstream, pool = await start(answer(OK, OK, OK), limit=2)
    first, second = [await pool.request("GET", "/", [], read_timeout=DEADLINE) for _ in range(2)]
    third = asyncio.create_task(pool.request("GET", "/", [], read_timeout=DEADLINE))
    await eventually(lambda: len(pool.waiters) == 1)
    assert not third.done() and pool.count == 2
    assert await first.read() == b"hello"
    response = await third
    assert response._conn is first._conn
    assert await second.read() == b"hello" and await response.read() == b"hello"
    assert len(upstream.peers) == 2
    assert (pool.count, len(pool.idle)) == (2, 2)


async def test_limit_waiter_connects_when_a_connection_closes(start: Start) -> None:
    """A slot freed by a closed connection goes to the queued request, which connects in it."""
    upstream, pool = await start(head_then_hold, limit=1)
    held = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    queued = asyncio.create_task(pool.request("GET", "/", [], read_timeout=DEADLINE))
    await eventually(lambda: len(pool.waiters) == 1)
    held.close()
    assert await (await queued).read() == b"hello"
    assert len(upstream.peers) == 2
    assert (pool.count, len(pool.idle)) == (1, 1)


async def test_cancelled_limit_waiter_does_not_leak_a_slot(start: Start) -> None:
    """A client that gives up while queued must leave the limit as it found it, or the pool wedges."""
    upstream, pool = await start(head_then_hold, limit=1)
    held = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    queued = asyncio.create_task(pool.request("GET", "/", [], read_timeout=DEADLINE))
    await eventually(lambda: len(pool.waiters) == 1)
    queued.cancel()
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert pool.count == 1
    held.close()
    assert pool.count == 0
    async with asyncio.timeout(DEADLINE):  # a leaked slot would queue this one forever
        assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 2
    assert (pool.count, len(pool.idle)) == (1, 1)


async def test_waiter_cancelled_as_a_connection_is_handed_over_returns_it(start: Start) -> None:
    """A connection handed to a request that was cancelled in the same instant goes back to the pool."""
    upstream, pool = await start(answer(OK, OK), limit=1)
    held = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    queued = asyncio.create_task(pool.request("GET", "/", [], read_timeout=DEADLINE))
    await eventually(lambda: len(pool.waiters) == 1)
    held.release()  # hands the connection to the queued request...
    queued.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await queued
    assert (pool.count, len(pool.idle), pool.in_use) == (1, 1, 0)
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 1


async def test_waiter_cancelled_as_a_slot_is_handed_over_passes_it_on(start: Start) -> None:
    """A free slot handed to a request cancelled in the same instant goes to the next one in the queue."""
    upstream, pool = await start(head_then_hold, limit=1)
    held = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    first = asyncio.create_task(pool.request("GET", "/", [], read_timeout=DEADLINE))
    await eventually(lambda: len(pool.waiters) == 1)
    second = asyncio.create_task(pool.request("GET", "/", [], read_timeout=DEADLINE))
    await eventually(lambda: len(pool.waiters) == 2)
    held.close()  # frees the slot for the first waiter...
    first.cancel()  # ... which is cancelled before it runs
    with pytest.raises(asyncio.CancelledError):
        await first
    async with asyncio.timeout(DEADLINE):
        assert await (await second).read() == b"hello"
    assert len(upstream.peers) == 2
    assert (pool.count, len(pool.idle)) == (1, 1)


async def test_cancelled_connect_frees_its_slot(serve: Serve, pools: MakePool, tls: ServingFiles) -> None:
    """A request cancelled while its connection is still being set up gives its slot back and its socket."""
    upstream = await serve(silent)
    pool = pools(upstream.port, ssl_context=client_ssl_context(tls.ca_file), limit=1, connect_timeout=30)
    task = asyncio.create_task(pool.request("GET", "/", [], read_timeout=DEADLINE))
    await eventually(lambda: upstream.peers)
    assert pool.count == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.count == 0
    await upstream.peers[0].closed_by_client()


# ---- closing and sweeping ---------------------------------------------------------------------------------


async def two_idle_connections(pool: http1.Pool) -> None:
    first = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    second = await pool.request("GET", "/", [], read_timeout=DEADLINE)  # first is still held: a new one
    await first.read()
    await second.read()
    assert len(pool.idle) == 2


async def test_close_closes_idle_connections(start: Start) -> None:
    """Shutdown must not leave connections open on the apiserver."""
    upstream, pool = await start(answer(OK, OK))
    await two_idle_connections(pool)
    await pool.close()
    assert (pool.count, len(pool.idle)) == (0, 0)
    for peer in upstream.peers:
        await peer.closed_by_client()


async def test_close_fails_waiting_requests_and_closes_released_connections(start: Start) -> None:
    """Requests queued at shutdown fail at once, and connections still in use close when released."""
    upstream, pool = await start(answer(OK), limit=1)
    held = await pool.request("GET", "/", [], read_timeout=DEADLINE)
    queued = asyncio.create_task(pool.request("GET", "/", [], read_timeout=DEADLINE))
    await eventually(lambda: len(pool.waiters) == 1)
    await pool.close()
    with pytest.raises(http1.ConnectFailed):
        await queued
    assert await held.read() == b"hello"  # the request in flight finishes...
    assert (pool.count, len(pool.idle)) == (0, 0)  # ... and its connection is not pooled
    await upstream.peers[0].closed_by_client()


async def test_request_after_close_fails(start: Start) -> None:
    """A closed pool opens no new connections."""
    upstream, pool = await start(answer())
    await pool.close()
    with pytest.raises(http1.ConnectFailed):
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert pool.count == 0 and upstream.peers == []


async def test_idle_sweep_closes_only_connections_idle_past_keepalive(start: Start) -> None:
    """Idle connections are not kept forever (the apiserver may be replaced), but fresh ones are kept."""
    upstream, pool = await start(answer(OK, OK, OK), keepalive=30.0)
    await two_idle_connections(pool)
    stale, fresh = pool.idle
    stale.idle_since = pool.loop.time() - pool.keepalive - 1
    pool._sweep()
    assert list(pool.idle) == [fresh] and pool.count == 1
    assert stale.closed and not fresh.closed
    await upstream.peers[0].closed_by_client()
    assert not upstream.peers[1].eof.is_set()
    assert not pool._sweeper.cancelled()  # the next sweep is scheduled
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 2  # the kept connection served it


# ---- connecting and TLS -----------------------------------------------------------------------------------


async def test_refused_port_is_connect_failed(pools: MakePool, refused_port: int) -> None:
    """Nothing listening is a 503 "unreachable", and the attempt holds no slot."""
    pool = pools(refused_port, limit=1)
    with pytest.raises(http1.ConnectFailed) as err:
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert err.value.kind == "connect"
    assert pool.count == 0


async def test_tls_handshake_that_never_completes_is_connect_timeout(
    serve: Serve, pools: MakePool, tls: ServingFiles
) -> None:
    """A peer that accepts but never finishes the handshake must not hold the request past connect_timeout."""
    upstream = await serve(silent)
    pool = pools(upstream.port, ssl_context=client_ssl_context(tls.ca_file), connect_timeout=0.2)
    with pytest.raises(http1.ConnectTimeout) as err:
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert err.value.kind == "timeout"
    assert pool.count == 0
    await upstream.peers[0].closed_by_client()


async def hang_up(peer: Peer) -> None:
    """Accept, then close at once (an upstream restarting)."""


async def speak_plain_http(peer: Peer) -> None:
    """Answer whatever arrives (a TLS ClientHello) as a plain HTTP server would."""
    await peer.reader.read(65536)
    await peer.send(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")


@pytest.mark.parametrize("handler", [hang_up, speak_plain_http], ids=["hang-up", "plain-http"])
async def test_failed_tls_handshake_is_connect_failed(
    serve: Serve, pools: MakePool, tls: ServingFiles, handler: Handler
) -> None:
    """A handshake that breaks (the upstream restarting, or not speaking TLS) is "unreachable", slot freed."""
    upstream = await serve(handler)
    pool = pools(upstream.port, ssl_context=client_ssl_context(tls.ca_file), limit=1)
    with pytest.raises(http1.ConnectFailed) as err:
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert err.value.kind == "connect"
    assert pool.count == 0


async def test_tls_round_trip_reuses_the_connection(serve: Serve, pools: MakePool, tls: ServingFiles) -> None:
    """The real upstream speaks TLS: requests, bodies and keep-alive work the same over it."""
    upstream = await serve(answer(OK, OK), ssl_context=server_context(tls))
    pool = pools(upstream.port, ssl_context=client_ssl_context(tls.ca_file))
    for _ in range(2):
        assert await (await pool.request("GET", "/version", [], read_timeout=DEADLINE)).read() == b"hello"
    assert len(upstream.peers) == 1
    assert upstream.requests[0] == b"GET /version HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % upstream.port


async def test_untrusted_certificate_is_certificate_failed(
    serve: Serve, pools: MakePool, tls: ServingFiles, tmp_path: Path
) -> None:
    """A server certificate from another CA is refused and labelled as a TLS failure, not as unreachable."""
    other = write_serving_bundle(tmp_path / "other", "other")
    upstream = await serve(answer(), ssl_context=server_context(tls))
    pool = pools(upstream.port, ssl_context=client_ssl_context(other.ca_file))
    with pytest.raises(http1.CertificateFailed) as err:
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert err.value.kind == "tls"
    assert pool.count == 0
    assert upstream.requests == []


async def test_certificate_for_another_name_is_certificate_failed(
    serve: Serve, pools: MakePool, tmp_path: Path
) -> None:
    """A trusted CA is not enough: the certificate must name the host the pool connects to."""
    files = write_serving_bundle(tmp_path / "named", "named", names=["kubernetes.default.svc"])
    upstream = await serve(answer(), ssl_context=server_context(files))
    pool = pools(upstream.port, ssl_context=client_ssl_context(files.ca_file))
    with pytest.raises(http1.CertificateFailed):
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    assert pool.count == 0
    assert upstream.requests == []


async def test_replaced_ssl_context_applies_to_new_connections(
    serve: Serve, pools: MakePool, tls: ServingFiles, tmp_path: Path
) -> None:
    """A rotated cluster CA is picked up without restarting: the next connection trusts the new one."""
    other = write_serving_bundle(tmp_path / "other", "other")
    upstream = await serve(answer(OK), ssl_context=server_context(tls))
    pool = pools(upstream.port, ssl_context=client_ssl_context(other.ca_file))
    with pytest.raises(http1.CertificateFailed):
        await pool.request("GET", "/", [], read_timeout=DEADLINE)
    pool.ssl_context = client_ssl_context(tls.ca_file)
    assert await (await pool.request("GET", "/", [], read_timeout=DEADLINE)).read() == b"hello"

"""A lean HTTP/1.1 client for the one upstream: keep-alive connections and nothing else.

The proxy talks to exactly one origin, with headers it has already allowlisted, and relays bodies without
looking at them. A general-purpose client spends most of its time on what that case never needs (URL
objects, header merging, cookies, redirects, tracing, a timer per read), so on a small GET it costs more
than the rest of the proxy together. This client is an asyncio ``Protocol`` per connection that writes the
request head in one piece and hands the bytes to aiohttp's response parser (llhttp, in C), whose
``StreamReader`` is the body stream, so flow control and chunked decoding are aiohttp's well-tested code.

What it guarantees:

- One request at a time per connection. A connection returns to the pool only when its response body was
  read to the end, the response did not ask to close, and nothing arrived that no request asked for;
  anything else closes it, so a response can never be attributed to the wrong request.
- Content-Length, chunked and close-delimited bodies (the last never reused); HEAD; interim 1xx responses
  skipped; ``101 Switching Protocols`` refused (the proxy never asks for an upgrade).
- Back-pressure: the body stream pauses the socket above its high-water mark, so a slow client holds at
  most a bounded amount in memory.
- Silence: no byte for ``read_timeout`` seconds while a request is in flight ends it (``HeaderTimeout``
  before the headers, ``ServerTimeoutError`` on the body after), except while the consumer is the one
  not reading.
- The keep-alive race (the upstream closed an idle connection just as a request went out, so nothing at
  all came back) is retried once on a new connection, for idempotent methods only.
- No CR or LF from a header value or the target can reach the wire.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import socket
import ssl
from collections.abc import Iterable
from typing import cast

from aiohttp.base_protocol import BaseProtocol
from aiohttp.client_exceptions import (
    ClientConnectionError,
    ClientPayloadError,
    ServerDisconnectedError,
    ServerTimeoutError,
)
from aiohttp.http_parser import HttpResponseParser  # the C (llhttp) parser when aiohttp has it
from aiohttp.streams import StreamReader
from multidict import CIMultiDictProxy

#: The body stream's low-water mark in bytes; it pauses the socket at twice this.
READ_LIMIT = 2**17
#: Methods that may be sent again after the keep-alive race.
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
#: How long an unused connection stays open (kube-apiserver's Go server keeps idle ones much longer).
KEEPALIVE_SECONDS = 30.0
#: Most unused connections kept open; each holds a TLS session and buffers, on both ends.
MAX_IDLE = 32


class RequestFailed(Exception):
    """No response headers arrived; ``kind`` is a bounded label for metrics."""

    kind = "protocol"


class ConnectFailed(RequestFailed):
    kind = "connect"


class CertificateFailed(RequestFailed):
    kind = "tls"


class ConnectTimeout(RequestFailed):
    kind = "timeout"


class HeaderTimeout(RequestFailed):
    kind = "timeout"


class Disconnected(RequestFailed):
    kind = "disconnect"

    def __init__(self, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        #: Nothing came back on a reused connection: the request may safely go out again.
        self.retryable = retryable


class ProtocolFailed(RequestFailed):
    kind = "protocol"


class Response:
    """Status, headers and the body stream of one upstream response; its owner must release or close it."""

    __slots__ = ("_conn", "_done", "content", "headers", "reason", "should_close", "status")

    def __init__(
        self,
        conn: Connection,
        status: int,
        reason: str,
        headers: CIMultiDictProxy[str],
        should_close: bool,
        content: StreamReader,
    ) -> None:
        self._conn = conn
        self._done = False
        self.status = status
        self.reason = reason
        self.headers = headers
        self.should_close = should_close
        self.content = content

    @property
    def content_length(self) -> int | None:
        value = self.headers.get("Content-Length")
        return int(value) if value is not None and value.isdigit() else None

    async def read(self) -> bytes:
        """The whole body (for bodies known to be small); the connection is released after."""
        content = self.content
        try:
            data = content.read_nowait(-1) if content.is_eof() else await content.read()
        except BaseException:
            self.close()
            raise
        self.release()
        return data

    def release(self) -> None:
        """Done with the response: the connection is reused if and only if the body was read to its end."""
        if self._done:
            return
        self._done = True
        content = self.content
        complete = content.is_eof() and content.exception() is None
        self._conn.finish(reuse=complete and not self.should_close, graceful=complete)

    def close(self) -> None:
        """Drop the connection now; a relay loop waiting on the body wakes with ``ClientConnectionError``."""
        if self._done:
            return
        self._done = True
        content = self.content
        if not content.is_eof() and content.exception() is None:
            content.set_exception(ClientConnectionError("the response was closed"))
        self._conn.finish(reuse=False)


class Connection(asyncio.Protocol):
    """One connection to the upstream, with at most one request in flight."""

    __slots__ = (
        "closed",
        "idle_since",
        "loop",
        "parser",
        "pool",
        "read_timeout",
        "reading_paused",
        "reads",
        "reads_at_check",
        "reads_at_send",
        "requests",
        "response",
        "timer",
        "transport",
        "waiter",
    )

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.loop = pool.loop
        self.transport: asyncio.Transport | None = None
        self.parser: HttpResponseParser | None = None
        self.response: Response | None = None
        self.waiter: asyncio.Future[Response] | None = None
        self.timer: asyncio.TimerHandle | None = None
        self.read_timeout: float | None = None
        self.reading_paused = False
        self.closed = False
        self.requests = 0
        self.reads = 0  # data_received calls so far: progress, for the silence check
        self.reads_at_check = 0
        self.reads_at_send = 0
        self.idle_since = 0.0

    # What aiohttp's StreamReader expects of its protocol.

    @property
    def connected(self) -> bool:
        return self.transport is not None

    def pause_reading(self) -> None:
        if not self.reading_paused:
            self.reading_paused = True
            if self.transport is not None:
                self.transport.pause_reading()

    def resume_reading(self, resume_parser: bool = True) -> None:
        # StreamReader calls this on nearly every read below its low-water mark: keep it cheap.
        if self.reading_paused:
            self.reading_paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's TLS transport is not a subclass
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.reads += 1
        parser = self.parser
        response = self.response
        if parser is None or (response is not None and response.content.is_eof()):
            # Bytes no request asked for (on an idle connection, or after a complete response): the
            # stream can no longer be trusted to line responses up with requests.
            self._kill()
            return
        try:
            messages, upgraded, _ = parser.feed_data(data)
        except Exception as exc:  # BadHttpMessage, LineTooLong...: not HTTP/1.1 we can relay
            self._fail(ProtocolFailed(f"invalid response from the upstream: {exc}"), exc)
            return
        if upgraded:
            self._fail(ProtocolFailed("the upstream switched protocols unasked"), None)
            return
        for message, content in messages:
            status = message.code
            if status < 200:
                if status == 101:
                    self._fail(ProtocolFailed("the upstream switched protocols unasked"), None)
                    return
                continue  # 100 Continue, 103 Early Hints: the final response follows
            waiter = self.waiter
            if self.response is not None or waiter is None:
                self._fail(ProtocolFailed("the upstream sent a response nobody asked for"), None)
                return
            self.waiter = None
            self.response = Response(
                self, status, message.reason, message.headers, message.should_close, content
            )
            if not waiter.done():
                waiter.set_result(self.response)

    def connection_lost(self, exc: BaseException | None) -> None:
        self.transport = None
        self._leave_pool()
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                # Nothing came back at all: on a reused connection, the keep-alive race.
                retryable = self.requests > 1 and self.reads == self.reads_at_send
                waiter.set_exception(
                    Disconnected("the upstream closed the connection without answering", retryable=retryable)
                )
        response = self.response
        if response is None:
            return
        content = response.content
        if content.is_eof() or content.exception() is not None:
            return
        if self.parser is not None:
            try:
                self.parser.feed_eof()  # ends a close-delimited body; raises on a truncated one
            except Exception as perr:
                content.set_exception(ClientPayloadError(f"the response body was cut short: {perr}"), perr)
        if not content.is_eof() and content.exception() is None:
            _fail_body(content, ServerDisconnectedError(), exc)

    # The request cycle.

    async def send(self, data: bytes, method: str, read_timeout: float | None) -> Response:
        if self.transport is None or self.closed:
            raise Disconnected("the pooled connection was already closed", retryable=True)
        self.requests += 1
        self.parser = HttpResponseParser(
            cast(BaseProtocol, self),  # the body stream only pauses, resumes and asks `connected`
            self.loop,
            READ_LIMIT,
            payload_exception=ClientPayloadError,
            response_with_body=method != "HEAD",
            read_until_eof=True,
            auto_decompress=False,  # bytes pass through as the upstream sent them, gzip included
        )
        self.response = None
        waiter = self.waiter = self.loop.create_future()
        self.reads_at_send = self.reads
        self.read_timeout = read_timeout
        if read_timeout:
            self.reads_at_check = self.reads
            self.timer = self.loop.call_later(read_timeout, self._check_silence)
        self.transport.write(data)
        try:
            response: Response = await waiter
        except BaseException:
            self.waiter = None
            self._kill()
            raise
        return response

    def _check_silence(self) -> None:
        self.timer = None
        if self.closed or self.read_timeout is None:
            return
        response = self.response
        if response is not None and response.content.is_eof():
            return
        if self.reads != self.reads_at_check or self.reading_paused:
            # Progress, or the consumer is the one not reading: not the upstream's silence.
            self.reads_at_check = self.reads
            self.timer = self.loop.call_later(self.read_timeout, self._check_silence)
            return
        why = f"no data from the upstream for {self.read_timeout:g}s"
        if self.waiter is not None:
            waiter, self.waiter = self.waiter, None
            if not waiter.done():
                waiter.set_exception(HeaderTimeout(why))
        elif response is not None and response.content.exception() is None:
            response.content.set_exception(ServerTimeoutError(why))
        self._kill()

    def _fail(self, err: RequestFailed, cause: BaseException | None) -> None:
        """The stream is unusable: fail whoever waits (for headers or body), then close."""
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if not waiter.done():
                waiter.set_exception(err)
        response = self.response
        if response is not None:
            content = response.content
            if not content.is_eof() and content.exception() is None:
                _fail_body(content, ClientPayloadError(str(err)), cause)
        self._kill()

    def finish(self, *, reuse: bool, graceful: bool = False) -> None:
        """The response's owner is done with it: back to the pool, or closed."""
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        self.response = None
        self.parser = None
        if reuse and not self.closed and self.transport is not None:
            self.pool.put(self)
        else:
            self._kill(graceful=graceful)

    def _kill(self, *, graceful: bool = False) -> None:
        transport = self.transport
        self._leave_pool()
        if transport is not None and not transport.is_closing():
            if graceful:
                transport.close()
            else:
                transport.abort()

    def _leave_pool(self) -> None:
        if self.closed:
            return
        self.closed = True
        timer = self.timer
        if timer is not None:
            self.timer = None
            timer.cancel()
        self.pool.gone(self)


class Pool:
    """Keep-alive connections to one origin: at most ``limit`` open (0: unbounded), at most ``max_idle`` of
    them unused."""

    def __init__(
        self,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
        *,
        limit: int = 0,
        connect_timeout: float = 5.0,
        keepalive: float = KEEPALIVE_SECONDS,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self.loop = asyncio.get_running_loop()
        self.host = host
        self.port = port
        #: Used for new connections; replace it to trust a new CA (open connections finish as they are).
        self.ssl_context = ssl_context
        default_port = 443 if ssl_context is not None else 80
        literal = f"[{host}]" if ":" in host else host
        self.host_header = literal if port == default_port else f"{literal}:{port}"
        self.limit = limit
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.keepalive = keepalive
        self._sweep_every = max(keepalive / 2, 0.5)
        self.idle: collections.deque[Connection] = collections.deque()
        self.count = 0  # connections open or being opened
        self.waiters: collections.deque[asyncio.Future[Connection | None]] = collections.deque()
        self.closing = False
        self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)

    async def request(
        self,
        method: str,
        target: str,
        headers: Iterable[tuple[str, str]],
        *,
        body: bytes | None = None,
        read_timeout: float | None = None,
    ) -> Response:
        """Send one request; returns once the response headers arrived (the body streams after)."""
        data = self.encode(method, target, headers, body)
        for attempt in (1, 2):
            conn = await self._acquire()
            try:
                return await conn.send(data, method, read_timeout)
            except Disconnected as exc:
                if attempt == 1 and exc.retryable and method in IDEMPOTENT:
                    continue
                raise
        raise AssertionError("unreachable")

    def encode(
        self, method: str, target: str, headers: Iterable[tuple[str, str]], body: bytes | None
    ) -> bytes:
        """The request head (and body) as sent; refuses anything that would add a line of its own."""
        parts = [method, " ", target, " HTTP/1.1\r\nHost: ", self.host_header, "\r\n"]
        lines = 2
        for name, value in headers:
            parts += (name, ": ", value, "\r\n")
            lines += 1
        if body is not None:
            parts += ("Content-Length: ", str(len(body)), "\r\n")
            lines += 1
        parts.append("\r\n")
        lines += 1
        head = "".join(parts)
        # Exactly one CR and one LF per line written, and a target with no space: nothing a caller
        # supplied can split a line (header injection, request smuggling).
        if head.count("\n") != lines or head.count("\r") != lines or " " in target or not head.isascii():
            raise ProtocolFailed("refusing to send a request line or header with control characters")
        data = head.encode("ascii")
        return data + body if body else data

    async def close(self) -> None:
        self.closing = True
        self._sweeper.cancel()
        while self.idle:
            self.idle.pop()._kill(graceful=True)
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(ConnectFailed("the connection pool is closed"))

    @property
    def in_use(self) -> int:
        """Connections carrying a request now."""
        return self.count - len(self.idle)

    # Connections in and out.

    async def _acquire(self) -> Connection:
        idle = self.idle
        while idle:
            conn = idle.pop()  # the most recently used: the least likely to have been closed upstream
            if conn.transport is not None and not conn.closed:
                return conn
        if self.closing:
            raise ConnectFailed("the connection pool is closed")
        if self.limit and self.count >= self.limit:
            waiter: asyncio.Future[Connection | None] = self.loop.create_future()
            self.waiters.append(waiter)
            try:
                handed = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    passed = waiter.result()
                    if passed is not None:
                        self.put(passed)  # handed over just as we were cancelled
                    else:
                        self._slot_freed()  # a slot was handed over: give it on
                raise
            if handed is not None:
                return handed
            # A slot was handed over (counted for us): connect in it.
        else:
            self.count += 1
        return await self._connect()

    async def _connect(self) -> Connection:
        try:
            async with asyncio.timeout(self.connect_timeout):
                _, conn = await self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.ssl_context,
                    server_hostname=self.host if self.ssl_context is not None else None,
                )
        except BaseException as exc:
            self._slot_freed()
            if isinstance(exc, ssl.SSLCertVerificationError):
                raise CertificateFailed(exc.verify_message or str(exc)) from exc
            if isinstance(exc, TimeoutError):
                raise ConnectTimeout(f"connecting took longer than {self.connect_timeout:g}s") from exc
            if isinstance(exc, ssl.SSLError):
                raise ConnectFailed(f"TLS handshake failed: {exc.reason or exc}") from exc
            if isinstance(exc, OSError):
                raise ConnectFailed(exc.strerror or exc.__class__.__name__) from exc
            raise
        return conn

    def put(self, conn: Connection) -> None:
        if self.closing:
            conn._kill(graceful=True)
            return
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if len(self.idle) >= self.max_idle:
            conn._kill(graceful=True)  # after a burst, keep a few warm connections, not all of them
            return
        conn.idle_since = self.loop.time()
        self.idle.append(conn)

    def gone(self, conn: Connection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)  # linear, but only on a close, and few connections are ever idle
        self._slot_freed()

    def _slot_freed(self) -> None:
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # that waiter connects in this slot: the count stays
                return
        self.count -= 1

    def _sweep(self) -> None:
        now = self.loop.time()
        idle = self.idle
        while idle and now - idle[0].idle_since > self.keepalive:
            idle.popleft()._kill(graceful=True)
        if not self.closing:
            self._sweeper = self.loop.call_later(self._sweep_every, self._sweep)


def _fail_body(content: StreamReader, exc: BaseException, cause: BaseException | None) -> None:
    if cause is None:
        content.set_exception(exc)
    else:
        content.set_exception(exc, cause)

"""HTTP/1.1 spoken byte by byte: a raw client and a raw recording upstream.

No HTTP library sits between the test and the wire, so nothing is normalised: the client writes exactly
the bytes a case names, and the upstream records exactly the bytes the proxy sent (request line, header
lines in order and spelling, body).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

#: Longest a single read of a response may take before the case counts as "no answer".
READ_DEADLINE = 5.0

K8S_LIST = (
    b'{"kind":"List","apiVersion":"v1","metadata":{"resourceVersion":"7"},"items":[]}'  # a kube-ish body
)


@dataclass
class RawResponse:
    version: str
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes
    #: False when the connection ended before the framing (Content-Length or chunked) was satisfied.
    complete: bool = True

    def header(self, name: str) -> str | None:
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return values[0] if values else None

    def status_json(self) -> dict[str, Any] | None:
        """The body as a Kubernetes ``Status`` object, or None if it is not one."""
        if not (self.header("Content-Type") or "").startswith("application/json"):
            return None
        try:
            doc = json.loads(self.body)
        except ValueError:
            return None
        if not isinstance(doc, dict) or doc.get("kind") != "Status" or doc.get("apiVersion") != "v1":
            return None
        return doc


class Closed(Exception):
    """The peer closed the connection before a response head arrived."""


async def read_head(reader: asyncio.StreamReader) -> bytes:
    try:
        return await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise Closed(exc.partial) from exc


def parse_head(head: bytes) -> tuple[str, list[tuple[str, str]]]:
    lines = head.decode("latin-1").split("\r\n")
    headers = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        headers.append((name, value.strip()))
    return lines[0], headers


async def read_body(
    reader: asyncio.StreamReader, headers: list[tuple[str, str]], *, to_eof: bool
) -> tuple[bytes, bool]:
    """Read a message body by its framing; returns (body, complete)."""
    lower = {k.lower(): v for k, v in headers}
    if "chunked" in lower.get("transfer-encoding", "").lower():
        body = bytearray()
        try:
            while True:
                size_line = await reader.readuntil(b"\r\n")
                size = int(size_line.split(b";")[0].strip(), 16)
                if size == 0:
                    while (await reader.readuntil(b"\r\n")) != b"\r\n":
                        pass
                    return bytes(body), True
                body += await reader.readexactly(size)
                if await reader.readexactly(2) != b"\r\n":
                    return bytes(body), False
        except (asyncio.IncompleteReadError, ValueError, ConnectionError):
            return bytes(body), False
    if "content-length" in lower:
        length = int(lower["content-length"])
        try:
            return await reader.readexactly(length), True
        except asyncio.IncompleteReadError as exc:
            return exc.partial, False
        except ConnectionError:
            return b"", False
    if to_eof:
        try:
            return await reader.read(), True
        except ConnectionError:
            return b"", False
    return b"", True


async def read_response(reader: asyncio.StreamReader, *, head_request: bool = False) -> RawResponse:
    head = await read_head(reader)
    status_line, headers = parse_head(head)
    version, _, rest = status_line.partition(" ")
    code, _, reason = rest.partition(" ")
    status = int(code)
    if head_request or status in (204, 304) or status < 200:
        return RawResponse(version, status, reason, headers, b"")
    body, complete = await read_body(reader, headers, to_eof=True)
    return RawResponse(version, status, reason, headers, body, complete)


async def read_all_responses(
    reader: asyncio.StreamReader, deadline: float = READ_DEADLINE
) -> list[RawResponse]:
    """Every response until the server closes the connection (bounded by ``deadline``)."""
    out: list[RawResponse] = []
    try:
        async with asyncio.timeout(deadline):
            while True:
                out.append(await read_response(reader))
    except (Closed, ConnectionError, ssl.SSLError):
        pass
    return out


async def close_writer(writer: asyncio.StreamWriter) -> None:
    writer.close()
    try:
        async with asyncio.timeout(2):
            await writer.wait_closed()
    except (OSError, TimeoutError, ssl.SSLError):
        writer.transport.abort()


# --------------------------------------------------------------------------------------------------------
# The recording upstream
# --------------------------------------------------------------------------------------------------------


@dataclass
class RawRequest:
    method: str
    target: str
    version: str
    headers: list[tuple[str, str]]
    body: bytes
    head: bytes

    def header_names(self) -> list[str]:
        return [k.lower() for k, _ in self.headers]

    def values(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]


#: A behaviour: given the request and the writer, answer (or not); return True to keep the connection.
Behaviour = Callable[[RawRequest, asyncio.StreamWriter], Awaitable[bool]]


async def answer_json(request: RawRequest, writer: asyncio.StreamWriter) -> bool:
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nAudit-Id: upstream-audit\r\n"
        b"Content-Length: " + str(len(K8S_LIST)).encode() + b"\r\n\r\n" + K8S_LIST
    )
    await writer.drain()
    return True


@dataclass
class RawUpstream:
    """A TLS HTTP/1.1 server recording every request byte-exactly; behaviour is swappable per test."""

    ssl_context: ssl.SSLContext
    behaviour: Behaviour = answer_json
    arrived: list[RawRequest] = field(default_factory=list)
    open_connections: int = 0
    accepted: int = 0
    url: str = ""
    port: int = 0
    _server: asyncio.Server | None = None
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)

    async def start(self, port: int = 0) -> str:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", port, ssl=self.ssl_context, limit=1 << 20
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"
        return self.url

    async def stop(self) -> None:
        """Stop listening and cut every open connection (a killed apiserver)."""
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self.open_connections += 1
        self._writers.add(writer)
        try:
            while True:
                try:
                    head = await read_head(reader)
                except Closed:
                    return
                request_line, headers = parse_head(head)
                method, target, version = [*request_line.split(" ", 2), "", ""][:3]
                body, _ = await read_body(reader, headers, to_eof=False)
                request = RawRequest(method, target, version, headers, body, head)
                self.arrived.append(request)
                if not await self.behaviour(request, writer):
                    return
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            return
        finally:
            self.open_connections -= 1
            self._writers.discard(writer)
            writer.transport.abort()


@dataclass
class Answer:
    """The first response to some bytes, and whether the server hung up right after it."""

    response: RawResponse | None
    closed: bool
    #: Everything that arrived after the first response (empty when the server closed at once).
    trailing: bytes = b""


async def answer_and_hangup(
    host: str, port: int, data: bytes, ssl_context: ssl.SSLContext | None, deadline: float = READ_DEADLINE
) -> Answer:
    """Send ``data``, read one response, then wait (bounded) for the server to close the connection.

    The connection counts as closed when EOF or a reset arrives before ``deadline``; a server that keeps
    it open (a keep-alive answer) is noticed when the deadline passes.
    """
    reader, writer = await asyncio.open_connection(host, port, ssl=ssl_context, limit=1 << 20)
    try:
        writer.write(data)
        try:
            async with asyncio.timeout(deadline):
                response = await read_response(reader)
        except (Closed, ConnectionError, ssl.SSLError, TimeoutError):
            return Answer(None, True)
        trailing = bytearray()
        try:
            async with asyncio.timeout(deadline):
                while chunk := await reader.read(65536):
                    trailing += chunk
        except TimeoutError:
            return Answer(response, False, bytes(trailing))
        except (ConnectionError, ssl.SSLError):
            pass
        return Answer(response, True, bytes(trailing))
    finally:
        await close_writer(writer)

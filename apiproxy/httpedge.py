"""The HTTP/1 edge every listener of the project stands on: what is said before a handler is reached.

aiohttp's stock connection handler answers a request its parser refuses in plain text quoting the
offending bytes (an oversized ``Authorization`` line: the token), logs a traceback that quotes them again,
and every response names aiohttp and Python with their versions in ``Server``. Here, for every server
built on :class:`EdgeServer`:

- a parser refusal is classified by :mod:`apiproxy.badrequest` (its type, never its text) and answered
  in HTTP/1.1 with ``Connection: close``; nothing of the request reaches the answer or the log;
- a failure outside the handler's own error handling is logged with its stack but not its text (which
  may quote the request), and answered with a fixed body;
- no response carries a ``Server`` header, whatever the handler set.

What the answers say and how they are counted differs by server (the proxy answers a Kubernetes
``Status`` and audits it, the exporter answers its JSON error shape): :meth:`EdgeServer.refuse_invalid`,
:meth:`EdgeServer.answer_invalid` and :meth:`EdgeServer.answer_failure` are the hooks a server overrides.
"""

from __future__ import annotations

import asyncio
import logging
import traceback
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Final

import aiohttp
from aiohttp import http_exceptions, web
from aiohttp.http import HttpVersion10, HttpVersion11, RawRequestMessage
from aiohttp.web_protocol import ERROR as PARSE_ERROR_MESSAGE
from aiohttp.web_protocol import RequestPayloadError

from apiproxy.badrequest import KNOWN_METHODS, Invalid, from_parser_error, invalid

#: aiohttp's own default for ``max_line_size`` and ``max_field_size``.
AIOHTTP_LIMIT: Final = 8190

log = logging.getLogger("apiproxy.httpedge")

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def peer(request: web.BaseRequest) -> str:
    """The socket's own peer address (aiohttp reads it once per connection); forwarding headers are
    never believed."""
    return request.remote or ""


def log_internal_error(logger: logging.Logger, exc: BaseException, where: str) -> None:
    """A bug, logged with its stack but without the exception's text, which may quote the request."""
    stack = "".join(traceback.format_tb(exc.__traceback__))
    logger.error("internal error (%s): %s\n%s", where, type(exc).__name__, stack.rstrip())


class EdgeRequest(web.BaseRequest):
    """A request whose responses never carry a ``Server`` header (a version string only helps an
    attacker), and which remembers an unsupported HTTP version so a handler can refuse it while the
    response still speaks HTTP/1.1."""

    ATTRS = web.BaseRequest.ATTRS | frozenset({"unsupported_version"})

    def __init__(self, *args: Any, unsupported_version: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.unsupported_version = unsupported_version

    async def _prepare_hook(self, response: web.StreamResponse) -> None:
        # Runs after aiohttp has filled in its default headers and before they are written.
        response.headers.popall("Server", None)


class EdgeProtocol(web.RequestHandler):
    """aiohttp's HTTP/1 connection handler with the edge's answer to what its parser refuses.

    ``handle_error`` is aiohttp's override point for both parsers (C and pure Python): a parse error
    becomes a request whose handler calls it. The default answers in plain text quoting the request
    bytes and logs a traceback with them; this one asks the server for a fixed answer and closes.
    """

    def __init__(self, manager: EdgeServer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._edge = manager
        self._received = 0
        #: Offset of the first line feed on the connection: where the first request line ended. A line
        #: too long before it is the request line (414), after it a header field (431). Only the first
        #: request of a connection is told apart this way: a later one's too-long line counts as a header.
        self._first_line_end: int | None = None

    def data_received(self, data: bytes) -> None:
        if self._first_line_end is None:
            at = data.find(b"\n")
            if at >= 0:
                self._first_line_end = self._received + at
            self._received += len(data)
        super().data_received(data)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's other error log (an exception while it drains an unread request body, a handler
        that returned nothing): one line with the exception's type, never its text or traceback, which
        quote the request. A broken request body was already answered and accounted for."""
        exc = kw.get("exc_info")
        logger = self._edge.logger
        if isinstance(exc, http_exceptions.HttpProcessingError | RequestPayloadError):
            logger.debug("stopped reading a broken request body: %s", type(exc).__name__)
        elif isinstance(exc, BaseException):
            log_internal_error(logger, exc, "connection")
        else:
            logger.error("connection error: %s", args[0] if args and isinstance(args[0], str) else "unknown")

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            # Part of a response is out: nothing more can be said on this connection.
            raise ConnectionError("a response was already under way; closing the connection")
        edge = self._edge
        if isinstance(exc, http_exceptions.HttpProcessingError):
            line_end = self._first_line_end
            done = line_end is not None and line_end <= edge.max_line_size + 1
            limit = edge.max_field_size if done else edge.max_line_size
            response = edge.refuse_invalid(
                request, from_parser_error(exc, request_line_done=done, limit=limit)
            )
        elif isinstance(exc, ConnectionError):
            raise exc  # the client is gone: aiohttp drops the connection quietly
        else:
            # The handler timed out (504) or failed outside its own error handling.
            if exc is not None:
                log_internal_error(edge.logger, exc, f"peer {peer(request) or 'unknown'}")
            else:
                edge.logger.error("request from %s failed with %d", peer(request) or "unknown peer", status)
            response = edge.answer_failure(status if status in (500, 503, 504) else 500)
        response.force_close()
        return response


class EdgeServer(web.Server):
    """aiohttp's low-level server with :class:`EdgeProtocol` connections and :class:`EdgeRequest`
    requests. The defaults of the two hooks answer in plain text; a server with its own error shape
    overrides them."""

    def __init__(self, handler: Handler, *, logger: logging.Logger = log, **kwargs: Any) -> None:
        super().__init__(handler, request_factory=self._request, logger=logger, **kwargs)
        self.logger = logger
        self.max_line_size = int(kwargs.get("max_line_size", AIOHTTP_LIMIT))
        self.max_field_size = int(kwargs.get("max_field_size", AIOHTTP_LIMIT))
        self._handler = handler
        self.request_handler = self._past_the_edge

    async def _past_the_edge(self, request: web.BaseRequest) -> web.StreamResponse:
        """Refuse what one HTTP parser lets through and the other does not, before any handler sees it:
        an HTTP version other than 1.0 and 1.1 (the pure-Python parser passes any ``HTTP/d.d``) and a
        method nobody implements (the C parser refuses those itself; the pure-Python one accepts any
        token). So every port answers such a request alike, whichever parser aiohttp picked."""
        refusal = None
        if isinstance(request, EdgeRequest) and request.unsupported_version:
            refusal = invalid("bad_version", self.max_field_size)
        elif request.method not in KNOWN_METHODS:
            refusal = invalid("bad_method", self.max_field_size)
        if refusal is None:
            return await self._handler(request)
        response = self.refuse_invalid(request, refusal)
        response.force_close()
        return response

    def __call__(self) -> web.RequestHandler:
        # As web.Server.__call__, which reads the same two attributes.
        return EdgeProtocol(self, loop=self._loop, **self._kwargs)

    def refuse_invalid(self, request: web.BaseRequest, refusal: Invalid) -> web.StreamResponse:
        """Answer a request that cannot be read (``refusal`` holds only fixed text) and account for it
        with one log line: the peer, the reason, the status. The edge closes the connection after it."""
        response = self.answer_invalid(refusal)
        self.logger.warning(
            "refused an unreadable request from %s: %s -> %d",
            peer(request) or "unknown peer",
            refusal.reason,
            response.status,
        )
        return response

    def answer_invalid(self, refusal: Invalid) -> web.StreamResponse:
        """What :meth:`refuse_invalid` sends: the refusal's code and fixed message."""
        return web.Response(status=refusal.code, text=refusal.message + "\n")

    def answer_failure(self, code: int) -> web.StreamResponse:
        """The answer to a request the handler could not complete (500, 503 or 504); the failure was
        already logged, and the edge closes the connection after it."""
        return web.Response(status=code, text="the request could not be completed\n")

    def _request(
        self,
        message: RawRequestMessage,
        payload: aiohttp.StreamReader,
        protocol: web.RequestHandler,
        writer: Any,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        """Requests answer in HTTP/1.1 unless the client spoke HTTP/1.0: a parse error (aiohttp's
        placeholder message says HTTP/1.0) and an unsupported version (HTTP/2.0 or 0.9 on the request
        line) would otherwise get a status line in a version the client never agreed to."""
        unsupported = False
        if message is PARSE_ERROR_MESSAGE:
            message = message._replace(version=HttpVersion11)
        elif message.version not in (HttpVersion10, HttpVersion11):
            message = message._replace(version=HttpVersion11)
            unsupported = True
        return EdgeRequest(
            message, payload, protocol, writer, task, self._loop, unsupported_version=unsupported
        )


def by_path(routes: Mapping[str, Handler]) -> Handler:
    """A handler for a small fixed set of ``GET`` paths (probes, ``/metrics``): the raw path without its
    query picks the route; an unknown path is 404 and another method 405, in plain text."""

    async def route(request: web.BaseRequest) -> web.StreamResponse:
        handler = routes.get(request.raw_path.partition("?")[0])
        if handler is None:
            return web.Response(status=404, text="404: Not Found")
        if request.method not in ("GET", "HEAD"):
            return web.Response(status=405, text="405: Method Not Allowed", headers={"Allow": "GET, HEAD"})
        return await handler(request)

    return route

"""The proxy's request pipeline: identify → classify → authorize → forward → stream.

Each step is one call into its own module; this file only strings them together and owns the sockets.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web
from multidict import CIMultiDict

from apiproxy.auth.principal import Principal
from apiproxy.headers import client_response_headers, upstream_request_headers
from apiproxy.policy import Policy, forbidden_message
from apiproxy.requestinfo import MalformedRequest, RequestInfo, classify
from apiproxy.reviews import check_review_body
from apiproxy.status import StatusError
from apiproxy.upstream import Upstream

log = logging.getLogger("apiproxy.server")

Authenticate = Callable[[web.BaseRequest], Principal]
PolicyGetter = Callable[[], Policy]

#: Largest request body accepted (only the review POSTs carry one).
MAX_BODY_BYTES = 64 * 1024


@dataclass(eq=False)
class ActiveWatch:
    """A watch stream being relayed; kept so a policy or trust change can revoke it."""

    principal: Principal
    info: RequestInfo
    upstream: aiohttp.ClientResponse
    started: float = field(default_factory=time.monotonic)
    revoked: str | None = None

    def revoke(self, why: str) -> None:
        """End the stream: closing the upstream response wakes the relay loop, which ends cleanly."""
        if self.revoked is None:
            self.revoked = why
            self.upstream.close()


class ReadinessCache:
    """Answers ``/readyz`` from a check at most ``ttl`` seconds old, so probes cannot hammer upstream."""

    def __init__(self, check: Callable[[], Awaitable[str | None]], ttl: float = 1.0) -> None:
        self._check = check
        self._ttl = ttl
        self._expires = 0.0
        self._result: str | None = "not checked yet"
        self._lock = asyncio.Lock()

    async def get(self) -> str | None:
        async with self._lock:
            now = time.monotonic()
            if now >= self._expires:
                self._result = await self._check()
                self._expires = time.monotonic() + self._ttl
            return self._result


class ProxyHandler:
    """The aiohttp handler for every request on the proxy port."""

    def __init__(self, upstream: Upstream, authenticate: Authenticate, policy: PolicyGetter) -> None:
        self.upstream = upstream
        self.authenticate = authenticate
        self.policy = policy
        self.watches: set[ActiveWatch] = set()
        self.shutting_down = False
        #: Extra readiness conditions (policy loaded, trust store healthy...): each returns why not, or None.
        self.readiness_checks: list[Callable[[], str | None]] = []
        self._upstream_ready = ReadinessCache(upstream.check_ready)
        self._endpoints: dict[str, Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]] = {
            "/healthz": self._live,
            "/livez": self._live,
            "/readyz": self._ready,
            "/ready": self._ready,
        }

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        endpoint = self._endpoints.get(target.partition("?")[0])
        if endpoint is not None and request.method == "GET":
            return await endpoint(request)
        try:
            return await self._proxy(request, target)
        except StatusError as exc:
            log.info("%s %s -> %d %s", request.method, _printable(target), exc.code, exc.message)
            return exc.response()

    async def _proxy(self, request: web.BaseRequest, target: str) -> web.StreamResponse:
        principal = self.authenticate(request)
        try:
            info = classify(request.method, target)
        except MalformedRequest as exc:
            raise StatusError(exc.code, exc.message) from exc
        self.authorize(principal, info)
        headers = upstream_request_headers(request.headers)
        body = await self._read_body(request, info)
        headers["Authorization"] = self.upstream.token.authorization()
        return await self._forward(request, principal, info, headers, body)

    def authorize(self, principal: Principal, info: RequestInfo) -> None:
        decision = self.policy().decide(principal.cluster_uuid, principal.cluster_name, info)
        if not decision.allowed:
            message, details = forbidden_message(info, principal.display, decision.reason)
            raise StatusError(403, message, details=details)

    async def _read_body(self, request: web.BaseRequest, info: RequestInfo) -> bytes | None:
        has_body = request.body_exists or "Transfer-Encoding" in request.headers
        if info.verb != "create":
            if has_body:
                raise StatusError(400, f"a {request.method} request must not carry a body")
            return None
        if "Content-Encoding" in request.headers:
            raise StatusError(415, "compressed request bodies are not supported")
        if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
            raise StatusError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        body = bytearray()
        while chunk := await request.content.read(MAX_BODY_BYTES + 1 - len(body)):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                raise StatusError(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        try:
            check_review_body(info, bytes(body), MAX_BODY_BYTES)
        except MalformedRequest as exc:
            raise StatusError(exc.code, exc.message) from exc
        return bytes(body)

    async def _forward(
        self,
        request: web.BaseRequest,
        principal: Principal,
        info: RequestInfo,
        headers: CIMultiDict[str],
        body: bytes | None,
    ) -> web.StreamResponse:
        watch = info.verb == "watch"
        upstream = await self.upstream.open(
            request.method,
            info.forward_target,
            headers,
            body=body,
            watch=watch,
            watch_timeout=_watch_timeout(info) if watch else None,
        )
        active = ActiveWatch(principal, info, upstream) if watch else None
        if active is not None:
            self.watches.add(active)
        try:
            return await self._relay(request, upstream, active)
        finally:
            if active is not None:
                self.watches.discard(active)
            # Closing (not releasing) drops the upstream connection unless the body was read to the end,
            # so a client that went away never leaves a half-read stream in the pool.
            if upstream.content.is_eof():
                upstream.release()
            else:
                upstream.close()

    async def _relay(
        self, request: web.BaseRequest, upstream: aiohttp.ClientResponse, active: ActiveWatch | None
    ) -> web.StreamResponse:
        """Stream status, headers and body chunks back as they arrive; memory stays one chunk deep."""
        response = web.StreamResponse(
            status=upstream.status,
            reason=upstream.reason,
            headers=client_response_headers(upstream.headers.items()),
        )
        if upstream.content_length is not None:
            response.content_length = upstream.content_length
        else:
            response.enable_chunked_encoding()
        await response.prepare(request)  # headers go out now, before the first event of a watch
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            if active is not None and active.revoked is not None:
                log.info("watch %s ended by the proxy: %s", active.info.path, active.revoked)
            else:
                # The upstream broke off mid-body. Do not pretend the body is complete: drop the client's
                # connection without a terminating chunk, exactly as a dying apiserver would.
                log.warning("upstream stream broke off for %s: %r", _printable(request.raw_path), exc)
                _abort(request)
                return response
        await response.write_eof()
        return response

    async def _live(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="ok")

    async def _ready(self, request: web.BaseRequest) -> web.StreamResponse:
        problems = [p for check in self.readiness_checks if (p := check()) is not None]
        if self.shutting_down:
            problems.insert(0, "shutting down")
        else:
            upstream_problem = await self._upstream_ready.get()
            if upstream_problem is not None:
                problems.append(upstream_problem)
        if problems:
            return web.Response(status=503, text="not ready: " + "; ".join(problems) + "\n")
        return web.Response(text="ok")

    def revoke_watches(self, why: str) -> int:
        """Re-authorize every open watch against the current policy; close those no longer allowed."""
        policy = self.policy()
        closed = 0
        for watch in list(self.watches):
            decision = policy.decide(watch.principal.cluster_uuid, watch.principal.cluster_name, watch.info)
            if not decision.allowed:
                watch.revoke(why)
                closed += 1
        return closed

    def close_all_watches(self, why: str) -> None:
        for watch in list(self.watches):
            watch.revoke(why)


def _watch_timeout(info: RequestInfo) -> float | None:
    for pair in info.forward_target.partition("?")[2].split("&"):
        key, _, value = pair.partition("=")
        if key == "timeoutSeconds" and value.isdigit():
            return float(value)
    return None


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _printable(target: str, limit: int = 200) -> str:
    """A request target safe for a log line: bounded and with control characters escaped."""
    text = target if len(target) <= limit else target[:limit] + "..."
    return text.encode("unicode_escape").decode("ascii")

"""The proxy's request pipeline: identify → classify → authorize → limit → forward → stream.

Each step is one call into its own module; this file only strings them together, owns the sockets, and
accounts for every request once, when it ends (metrics and one audit record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import aiohttp
from aiohttp import http_exceptions, web
from multidict import CIMultiDict

from apiproxy.auth.principal import Principal
from apiproxy.badrequest import Invalid, from_parser_error
from apiproxy.httpedge import EdgeServer, log_internal_error
from apiproxy.httpedge import peer as _peer
from apiproxy.policy import Decision, Policy, forbidden_message
from apiproxy.policy.requestinfo import MalformedRequest, RequestInfo, classify
from apiproxy.policy.reviews import check_review_body
from apiproxy.proxy import conceal, http1
from apiproxy.proxy.audit import AuditLog, Exchange, audit_id, escaped, safe_target
from apiproxy.proxy.authn import Unauthorized
from apiproxy.proxy.headers import client_response_headers, upstream_request_headers
from apiproxy.proxy.limits import RateLimiter, TooManyRequests, WatchCounter, cap_watch_timeout
from apiproxy.proxy.metrics import OTHER, Metrics
from apiproxy.proxy.upstream import Upstream, UpstreamError
from apiproxy.proxy.upstream_facts import UpstreamFacts
from apiproxy.status import StatusError, status_response

log = logging.getLogger("apiproxy.server")

Authenticate = Callable[[web.BaseRequest], Principal]
PolicyGetter = Callable[[], Policy]

#: Largest request body accepted (only the review POSTs carry one).
MAX_BODY_BYTES = 64 * 1024
#: Responses up to this size (with a Content-Length) are read whole and sent in one write: headers and
#: body leave in one TLS record instead of three, which is most of a small GET's cost.
SMALL_BODY_BYTES = 64 * 1024


#: aiohttp's own limit on a request line or header field, when the server is not given one.
DEFAULT_MAX_HEADER_BYTES = 8190

#: A client's unsent backlog beyond which each write is timed: below it, writes cannot block.
STALL_CHECK_BYTES = 64 * 1024


@dataclass
class Limits:
    rate_qps: float = 0.0
    rate_burst: int = 1
    watches_per_cluster: int = 0
    max_watch_timeout: float = 1800.0
    #: Longest a client may leave a response unread before the proxy hangs up on it (and upstream).
    client_stall_timeout: float = 60.0
    #: Seconds between the bookmarks of a concealed watch (kube-apiserver sends one about every minute).
    conceal_bookmark_interval: float = 60.0


class _Closable(Protocol):
    def close(self) -> None: ...


class _ConcealedStop:
    """What a concealed watch has instead of an upstream response: closing it ends the stream."""

    def __init__(self) -> None:
        self.closed = asyncio.Event()

    def close(self) -> None:
        self.closed.set()


@dataclass(eq=False)
class ActiveWatch:
    """A watch stream being relayed (or, for a concealed resource, answered); kept so a policy or trust
    change can revoke it. ``action`` is the policy's decision it was opened under."""

    principal: Principal
    info: RequestInfo
    upstream: _Closable
    started: float = field(default_factory=time.monotonic)
    revoked: str | None = None
    action: str = "allow"

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
            if time.monotonic() >= self._expires:
                self._result = await self._check()
                self._expires = time.monotonic() + self._ttl
            return self._result


class ProxyHandler:
    """The aiohttp handler for every request on the proxy port."""

    def __init__(
        self,
        upstream: Upstream,
        authenticate: Authenticate,
        policy: PolicyGetter,
        *,
        metrics: Metrics | None = None,
        audit: AuditLog | None = None,
        limits: Limits | None = None,
    ) -> None:
        self.upstream = upstream
        self.authenticate = authenticate
        self.policy = policy
        self.metrics = metrics or Metrics()
        self.audit = audit
        self.limits = limits or Limits()
        self.rate = RateLimiter(self.limits.rate_qps, self.limits.rate_burst)
        self.watch_slots = WatchCounter(self.limits.watches_per_cluster)
        self.watches: set[ActiveWatch] = set()
        self.shutting_down = False
        #: Longest request line or header field the server accepts (quoted in refusals); set by the server.
        self.max_header_bytes = DEFAULT_MAX_HEADER_BYTES
        #: Set once the listener is closed: new watches are refused so clients re-watch elsewhere.
        self.draining = False
        #: Extra readiness conditions (policy loaded, trust store healthy...): each returns why not, or None.
        self.readiness_checks: list[Callable[[], str | None]] = []
        #: Conditions worth reporting that do not make the proxy unready (it serves the last good config).
        self.readiness_warnings: list[Callable[[], str | None]] = []
        self._upstream_ready = ReadinessCache(upstream.check_ready)
        #: The apiserver's resourceVersion and resource kinds, for concealed answers.
        self.facts = UpstreamFacts(upstream)
        self._named: tuple[Policy | None, frozenset[tuple[str, str]]] = (None, frozenset())
        #: Metric children by label values: ``labels()`` validates and locks on every call.
        self._children: dict[tuple[str, ...], tuple[Any, Any, Any]] = {}
        self.endpoints: dict[str, Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]] = {
            "/healthz": self.live,
            "/livez": self.live,
            "/readyz": self.ready_public,
            "/ready": self.ready_public,
        }

    # -- the pipeline ---------------------------------------------------------------------------------

    async def __call__(self, request: web.BaseRequest) -> web.StreamResponse:
        target = request.raw_path
        endpoint = self.endpoints.get(target.partition("?")[0])
        if endpoint is not None and request.method == "GET":
            return await endpoint(request)
        ex = Exchange(request.method, target, _peer(request), audit_id(request.headers.get("Audit-ID")))
        try:
            return await self._proxy(request, ex)
        except StatusError as exc:
            return self._refuse(ex, exc)
        except http_exceptions.HttpProcessingError as exc:
            # The body's framing broke while the handler read it (bad chunked encoding): the parser's text
            # quotes the bytes, so only its type is used.
            refusal = from_parser_error(exc, request_line_done=True, limit=self.max_header_bytes)
            ex.decision = "invalid"
            self.metrics.invalid_requests.labels(refusal.reason).inc()
            response = self._refuse(ex, StatusError(refusal.code, refusal.message))
            response.force_close()
            return response
        except (asyncio.CancelledError, ConnectionError):
            ex.reason = ex.reason or "the client went away"
            raise
        except Exception as exc:
            ex.decision = "error"
            _log_internal_error(exc, f"audit {ex.audit_id}")
            if request.writer.output_size > 0:
                raise  # the response has begun: aiohttp closes the connection, nothing else can be said
            response = self._refuse(ex, StatusError(500, "an internal error occurred; see the proxy's log"))
            response.force_close()
            return response
        finally:
            self._account(ex)

    async def _proxy(self, request: web.BaseRequest, ex: Exchange) -> web.StreamResponse:
        ex.decision = "unauthenticated"
        ex.principal = principal = self.authenticate(request)
        ex.decision = "invalid"
        try:
            ex.info = info = classify(request.method, ex.target)
        except MalformedRequest as exc:
            raise StatusError(exc.code, exc.message) from exc
        decision = self._authorize(ex, principal, info)
        ex.decision = "limited"
        self._limit(principal, info)
        if decision.concealed:
            ex.decision = "conceal"
            await self._read_body(request, info)  # refuses a body, as for any GET
            return await self._conceal(request, ex, principal, info)
        ex.decision = "allow"
        headers = upstream_request_headers(request.headers)
        headers["Audit-ID"] = ex.audit_id
        body = await self._read_body(request, info)
        headers["Authorization"] = self.upstream.token.authorization()
        return await self._forward(request, ex, principal, info, headers, body)

    def _authorize(self, ex: Exchange, principal: Principal, info: RequestInfo) -> Decision:
        decision = self.policy().decide(principal.cluster_uuid, principal.cluster_name, info)
        ex.rule = decision.rule
        if not decision.allowed and not decision.concealed:
            ex.decision = "deny"
            ex.reason = decision.reason
            message, details = forbidden_message(info, principal.display, decision.reason)
            raise StatusError(403, message, details=details)
        return decision

    def _limit(self, principal: Principal, info: RequestInfo) -> None:
        if info.verb != "watch":
            self.rate.take(principal.display)

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
            check_review_body(info, bytes(body), MAX_BODY_BYTES, request.headers.get("Content-Type"))
        except MalformedRequest as exc:
            raise StatusError(exc.code, exc.message) from exc
        return bytes(body)

    async def _forward(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        principal: Principal,
        info: RequestInfo,
        headers: CIMultiDict[str],
        body: bytes | None,
    ) -> web.StreamResponse:
        if info.verb == "watch":
            return await self._forward_watch(request, ex, principal, info, headers)
        upstream = await self.upstream.open(request.method, info.forward_target, headers, body=body)
        try:
            return await self._relay(request, ex, upstream, None)
        finally:
            _finish_upstream(upstream)

    def _watch_lifetime(self, principal: Principal) -> float:
        """How long a watch may last: ``--max-watch-timeout``, and never past the credential's expiry, so
        the client has to come back (and authenticate again) before its token runs out."""
        if principal.expires_at is None:
            return self.limits.max_watch_timeout
        return max(1.0, min(self.limits.max_watch_timeout, principal.expires_at - time.time()))

    async def _forward_watch(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        principal: Principal,
        info: RequestInfo,
        headers: CIMultiDict[str],
    ) -> web.StreamResponse:
        """A watch holds a slot of its cluster's cap, a bounded lifetime, and a place in ``watches``."""
        if self.draining:
            raise StatusError(503, "the proxy is shutting down; watch again", headers={"Retry-After": "1"})
        cluster = principal.display
        ex.decision = "limited"
        self.watch_slots.acquire(cluster)
        ex.decision = "allow"
        try:
            target, timeout = cap_watch_timeout(info.forward_target, self._watch_lifetime(principal))
            ex.forwarded = target
            upstream = await self.upstream.open(
                request.method, target, headers, watch=True, watch_timeout=timeout
            )
            active = ActiveWatch(principal, info, upstream)
            self.watches.add(active)
            resource = self._resource_label(info)
            gauge = self.metrics.watches_active.labels(cluster, resource)
            gauge.inc()
            try:
                return await self._relay(request, ex, upstream, active)
            finally:
                gauge.dec()
                self.watches.discard(active)
                self.metrics.watch_duration.labels(resource).observe(time.monotonic() - active.started)
                _finish_upstream(upstream)
        finally:
            self.watch_slots.release(cluster)

    async def _relay(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        upstream: http1.Response,
        active: ActiveWatch | None,
    ) -> web.StreamResponse:
        """Stream status, headers and body chunks back as they arrive; memory stays one chunk deep."""
        ex.status = upstream.status
        headers = client_response_headers(upstream.headers.items())
        length = upstream.content_length
        if active is None and length is not None and length <= SMALL_BODY_BYTES:
            return await self._relay_small(request, ex, upstream, headers)
        response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
        if length is not None:
            response.content_length = upstream.content_length
        else:
            response.enable_chunked_encoding()
        if self.shutting_down:
            response.force_close()
        await response.prepare(request)  # headers go out now, before the first event of a watch
        ex.first_byte = time.perf_counter() - ex.started
        transport = request.transport
        try:
            async for chunk in upstream.content.iter_any():
                ex.bytes += len(chunk)
                if transport is not None and transport.get_write_buffer_size() > STALL_CHECK_BYTES:
                    # The client is behind: a write may block. Bound how long it may stall, so a client
                    # that stops reading cannot hold an upstream stream and a connection for ever.
                    try:
                        async with asyncio.timeout(self.limits.client_stall_timeout):
                            await response.write(chunk)
                    except TimeoutError:
                        ex.reason = f"the client read nothing for {self.limits.client_stall_timeout:g}s"
                        log.warning("%s: %s; closing", ex.audit_id, ex.reason)
                        _abort(request)
                        return response
                else:
                    await response.write(chunk)
            await response.write_eof()
        except ConnectionResetError:
            # Writing to a client that is gone (aiohttp's reset error is also a ClientConnectionError, so
            # this comes first: it is not the upstream's failure).
            ex.reason = "the client went away"
            return response
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            if active is None or active.revoked is None:
                # The upstream broke off mid-body. Do not pretend the body is complete: drop the client's
                # connection without a terminating chunk, exactly as a dying apiserver would.
                ex.reason = "the upstream broke off the response"
                self.metrics.upstream_errors.labels("stream").inc()
                log.warning("upstream stream broke off for %s: %r", ex.audit_id, exc)
                _abort(request)
                return response
            ex.reason = f"ended by the proxy: {active.revoked}"
            with contextlib.suppress(ConnectionResetError):
                await response.write_eof()  # a clean end of the stream: the client watches again
        return response

    async def _relay_small(
        self, request: web.BaseRequest, ex: Exchange, upstream: http1.Response, headers: CIMultiDict[str]
    ) -> web.StreamResponse:
        try:
            body = await upstream.read()
        except (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError) as exc:
            # Nothing was sent yet, so the client can be told plainly.
            raise UpstreamError(
                503, "stream", f"the upstream apiserver broke off its response: {exc}"
            ) from exc
        ex.bytes = len(body)
        ex.first_byte = time.perf_counter() - ex.started
        response = web.Response(status=upstream.status, reason=upstream.reason, headers=headers, body=body)
        if self.shutting_down:
            response.force_close()
        # Sent here, in one write, so the client has its answer before the request is accounted for.
        try:
            await response.prepare(request)
            await response.write_eof()
        except ConnectionResetError:
            ex.reason = "the client went away"
        return response

    # -- concealed resources: answered here, nothing forwarded (see apiproxy.proxy.conceal) ------------------

    async def _conceal(
        self, request: web.BaseRequest, ex: Exchange, principal: Principal, info: RequestInfo
    ) -> web.StreamResponse:
        if info.verb == "get":
            raise conceal.not_found(info.api_group, info.resource, info.name)
        watch = info.verb == "watch"
        encoding = conceal.negotiate(request.headers.get("Accept"), watch=watch)
        options = conceal.WatchOptions.from_target(info.forward_target, watch=watch)
        kind = await self.facts.kind(info.api_group, info.api_version, info.resource)
        if watch:
            return await self._conceal_watch(request, ex, principal, info, encoding, kind, options)
        body = conceal.empty_list(encoding, kind, await self.facts.resource_version())
        response = web.Response(body=body, headers=self._conceal_headers(ex, encoding, watch=False))
        ex.status, ex.bytes = 200, len(body)
        await self._send_concealed(request, ex, response)
        return response

    def _conceal_headers(self, ex: Exchange, encoding: conceal.Encoding, *, watch: bool) -> dict[str, str]:
        return {
            "Audit-ID": ex.audit_id,
            "Cache-Control": "no-cache, private",
            "Content-Type": encoding.content_type(watch=watch),
        }

    async def _send_concealed(
        self, request: web.BaseRequest, ex: Exchange, response: web.StreamResponse
    ) -> None:
        if self.shutting_down:
            response.force_close()
        ex.first_byte = time.perf_counter() - ex.started
        try:
            await response.prepare(request)
            if isinstance(response, web.Response):
                await response.write_eof()
        except ConnectionResetError:
            ex.reason = "the client went away"

    async def _conceal_watch(
        self,
        request: web.BaseRequest,
        ex: Exchange,
        principal: Principal,
        info: RequestInfo,
        encoding: conceal.Encoding,
        kind: conceal.ConcealedKind,
        options: conceal.WatchOptions,
    ) -> web.StreamResponse:
        """A watch that stays open with bookmarks only; it holds a slot and a place in ``watches`` as a
        relayed watch does, so limits, revocation and shutdown treat both alike."""
        if self.draining:
            raise StatusError(503, "the proxy is shutting down; watch again", headers={"Retry-After": "1"})
        cluster = principal.display
        ex.decision = "limited"
        self.watch_slots.acquire(cluster)
        ex.decision = "conceal"
        try:
            # Audited as the watch in force (its timeout capped), though nothing of it goes upstream.
            ex.forwarded, timeout = cap_watch_timeout(info.forward_target, self._watch_lifetime(principal))
            version = await self.facts.resource_version()  # 503 before the stream starts if unknown
            stop = _ConcealedStop()
            active = ActiveWatch(principal, info, stop, action="conceal")
            self.watches.add(active)
            resource = self._resource_label(info)
            gauge = self.metrics.watches_active.labels(cluster, resource)
            gauge.inc()
            try:
                response = web.StreamResponse(headers=self._conceal_headers(ex, encoding, watch=True))
                response.enable_chunked_encoding()
                ex.status = 200
                await self._send_concealed(request, ex, response)
                if ex.reason is None:
                    await self._stream_bookmarks(
                        ex, response, active, stop, encoding, kind, options, version, timeout
                    )
                return response
            finally:
                gauge.dec()
                self.watches.discard(active)
                self.metrics.watch_duration.labels(resource).observe(time.monotonic() - active.started)
        finally:
            self.watch_slots.release(cluster)

    async def _stream_bookmarks(
        self,
        ex: Exchange,
        response: web.StreamResponse,
        active: ActiveWatch,
        stop: _ConcealedStop,
        encoding: conceal.Encoding,
        kind: conceal.ConcealedKind,
        options: conceal.WatchOptions,
        version: str,
        timeout: float,
    ) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        bookmarks = options.allow_bookmarks
        try:
            if options.initial_events_end:
                event = conceal.bookmark_event(encoding, kind, version, initial_events_end=True)
                if event is not None:
                    ex.bytes += len(event)
                    await response.write(event)
            while (left := deadline - loop.time()) > 0:
                wait = min(left, self.limits.conceal_bookmark_interval) if bookmarks else left
                try:
                    async with asyncio.timeout(wait):
                        await stop.closed.wait()
                    ex.reason = f"ended by the proxy: {active.revoked}"
                    break
                except TimeoutError:
                    pass
                if not bookmarks or deadline - loop.time() <= 0:
                    continue
                try:
                    version = await self.facts.resource_version()
                except UpstreamError as exc:
                    log.warning(
                        "%s: concealed watch sends no bookmark this time: %s", ex.audit_id, exc.message
                    )
                    continue
                event = conceal.bookmark_event(encoding, kind, version)
                if event is not None:
                    ex.bytes += len(event)
                    await response.write(event)
            await response.write_eof()  # a clean end, as at timeoutSeconds: the client watches again
        except ConnectionResetError:
            ex.reason = "the client went away"

    # -- refusals and accounting ----------------------------------------------------------------------

    def refuse_invalid(self, request: web.BaseRequest, refusal: Invalid) -> web.Response:
        """Answer a request that cannot be read with a ``Status``, close the connection, and account for
        it: one log line (reason and peer), a metric, an audit record. Nothing of the request is kept:
        not its method, target or headers, which may be the very bytes that broke the parser."""
        ex = Exchange("", "", _peer(request), audit_id(None))
        ex.decision = "invalid"
        ex.status = refusal.code
        ex.reason = refusal.message
        self.metrics.invalid_requests.labels(refusal.reason).inc()
        log.warning(
            "refused an unreadable request from %s: %s -> %d (audit %s)",
            ex.source or "unknown peer",
            refusal.reason,
            refusal.code,
            ex.audit_id,
        )
        response = status_response(refusal.code, refusal.message, headers={"Audit-ID": ex.audit_id})
        response.force_close()
        ex.bytes = len(response.body) if isinstance(response.body, bytes) else 0
        ex.first_byte = time.perf_counter() - ex.started
        self._account(ex)
        return response

    def _refuse(self, ex: Exchange, exc: StatusError) -> web.StreamResponse:
        ex.status = exc.code
        ex.reason = ex.reason or exc.message
        cluster = ex.principal.display if ex.principal else ""
        if isinstance(exc, Unauthorized):
            self.metrics.authentication_failures.labels(exc.reason_label).inc()
        elif isinstance(exc, TooManyRequests):
            self.metrics.rate_limited.labels(cluster, exc.kind).inc()
        elif isinstance(exc, UpstreamError):
            self.metrics.upstream_errors.labels(exc.kind).inc()
        elif ex.decision in ("deny", "invalid"):
            label = "policy" if ex.decision == "deny" else "malformed"
            self.metrics.authorization_denials.labels(cluster, label).inc()
        log.info("%s %s -> %d %s", ex.method, _printable(ex.target), exc.code, escaped(exc.message))
        response = exc.response()
        response.headers["Audit-ID"] = ex.audit_id
        if self.shutting_down:
            response.force_close()
        ex.bytes = len(response.body) if isinstance(response.body, bytes) else 0
        ex.first_byte = time.perf_counter() - ex.started
        return response

    def _account(self, ex: Exchange) -> None:
        info = ex.info
        cluster = ex.principal.display if ex.principal else ""
        verb = info.verb if info is not None else ""
        group, resource = self._labels(ex)
        code = str(ex.status or 499)
        key = (cluster, verb, group, resource, code)
        children = self._children.get(key)
        if children is None:
            m = self.metrics
            children = self._children[key] = (
                m.requests.labels(*key),
                m.request_duration.labels(verb),
                m.response_bytes.labels(cluster, resource),
            )
        requests, duration, response_bytes = children
        requests.inc()
        duration.observe(ex.first_byte if ex.first_byte is not None else time.perf_counter() - ex.started)
        if ex.bytes and ex.decision == "allow":
            response_bytes.inc(ex.bytes)
        if ex.decision == "conceal":
            self.metrics.concealed_requests.labels(cluster, verb, resource).inc()
        if self.audit is not None:
            self.audit.write(ex)

    def _labels(self, ex: Exchange) -> tuple[str, str]:
        """Bounded (group, resource) labels: what the apiserver served, or what the policy names."""
        info = ex.info
        if info is None:
            return "", ""
        if not info.is_resource_request:
            return "", "nonresource"
        if ex.decision == "allow" and 200 <= ex.status < 300:
            return info.api_group, info.resource  # the apiserver served it: a real, finite API surface
        return (info.api_group, info.resource) if self._named_by_policy(info) else (OTHER, OTHER)

    def _named_by_policy(self, info: RequestInfo) -> bool:
        policy = self.policy()
        if self._named[0] is not policy:
            named = {(g, r) for rule in policy.rules for g in rule.api_groups for r in rule.resources}
            self._named = (policy, frozenset(named))
        return (info.api_group, info.resource_path) in self._named[1]

    def _resource_label(self, info: RequestInfo) -> str:
        return info.resource if self._named_by_policy(info) else OTHER

    # -- health ---------------------------------------------------------------------------------------

    async def live(self, request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text="ok")

    async def readiness_problems(self) -> list[str]:
        problems = [p for check in self.readiness_checks if (p := check()) is not None]
        if self.shutting_down:
            problems.insert(0, "shutting down")
        else:
            upstream_problem = await self._upstream_ready.get()
            if upstream_problem is not None:
                problems.append(upstream_problem)
        return problems

    async def ready_public(self, request: web.BaseRequest) -> web.StreamResponse:
        """Readiness on the public port, answered to anyone: the verdict only, no details about upstream
        addresses or configuration (those are on the metrics port, which stays inside the cluster)."""
        if await self.readiness_problems():
            return web.Response(status=503, text="not ready\n")
        return web.Response(text="ok\n")

    async def ready(self, request: web.BaseRequest) -> web.StreamResponse:
        """``ok``, or 503 with the reasons; ``?verbose`` also lists warnings that do not fail readiness
        (a refused policy or trust store update: the last good version is serving)."""
        problems = await self.readiness_problems()
        status = 503 if problems else 200
        if "verbose" not in request.query:
            text = "not ready: " + "; ".join(problems) if problems else "ok"
            return web.Response(status=status, text=text + "\n")
        lines = [f"[-] {p}" for p in problems]
        lines += [f"[!] {w}" for check in self.readiness_warnings if (w := check()) is not None]
        lines.append("readyz check failed" if problems else "readyz check passed")
        return web.Response(status=status, text="\n".join(lines) + "\n")

    # -- revocation -----------------------------------------------------------------------------------

    def revoke_watches(self, why: str, allowed: Callable[[Principal], bool] | None = None) -> int:
        """Re-authorize every open watch; close those the policy (or ``allowed``) no longer permits.

        A watch stays only under the same decision it was opened with: a relayed watch whose resource is
        now concealed is closed (it would go on streaming what must not be seen), and so is a concealed
        watch whose resource is now allowed (the client watches again and gets the real objects)."""
        policy = self.policy()
        closed = 0
        for watch in list(self.watches):
            still = (
                policy.decide(watch.principal.cluster_uuid, watch.principal.cluster_name, watch.info).action
                == watch.action
            )
            if still and allowed is not None:
                still = allowed(watch.principal)
            if not still:
                watch.revoke(why)
                closed += 1
        return closed

    def close_all_watches(self, why: str) -> None:
        for watch in list(self.watches):
            watch.revoke(why)


def _finish_upstream(upstream: http1.Response) -> None:
    # Closing (not releasing) drops the upstream connection unless the body was read to the end, so a
    # client that went away never leaves a half-read stream in the pool.
    if upstream.content.is_eof():
        upstream.release()
    else:
        upstream.close()


def _abort(request: web.BaseRequest) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()


def _printable(target: str, limit: int = 200) -> str:
    """A request target safe for a log line: query values that may hold a credential redacted (see
    :func:`safe_target`), bounded, and with control and non-ASCII characters escaped."""
    return safe_target(target, limit)


def _log_internal_error(exc: BaseException, where: str) -> None:
    log_internal_error(log, exc, where)


class ProxyServer(EdgeServer):
    """The proxy port's server: the shared HTTP edge, whose refusals are Kubernetes ``Status`` answers
    accounted for by the handler (a log line, ``apiproxy_invalid_requests_total``, an audit record);
    it also counts connections and refuses those over the cap."""

    def __init__(self, handler: ProxyHandler, *, max_connections: int, **kwargs: Any) -> None:
        handler.max_header_bytes = int(kwargs.get("max_field_size", DEFAULT_MAX_HEADER_BYTES))
        super().__init__(handler, logger=log, **kwargs)
        self.proxy_handler = handler
        self._max = max_connections
        self._open = 0

    def refuse_invalid(self, request: web.BaseRequest, refusal: Invalid) -> web.StreamResponse:
        return self.proxy_handler.refuse_invalid(request, refusal)

    def answer_failure(self, code: int) -> web.StreamResponse:
        return status_response(code, "the proxy could not complete the request")

    @property
    def open_connections(self) -> int:
        return self._open

    def connection_made(self, handler: Any, transport: asyncio.Transport) -> None:
        super().connection_made(handler, transport)
        self._open += 1
        self.proxy_handler.metrics.connections.set(self._open)
        if 0 < self._max < self._open:
            self.proxy_handler.metrics.rate_limited.labels("", "connections").inc()
            transport.close()

    def connection_lost(self, handler: Any, exc: BaseException | None = None) -> None:
        super().connection_lost(handler, exc)
        self._open -= 1
        self.proxy_handler.metrics.connections.set(self._open)

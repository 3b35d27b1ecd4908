"""The exporter's HTTP face: four documents, two probes, and nothing else.

Per request the work is a dictionary lookup, for private documents one token verification (cached by
the verifier until the token's ``exp``), and an ``If-None-Match`` comparison: the bodies and their ETags
were rendered when the inputs changed. Order of checks on a private path: method, trust store loaded,
token (signature first, then ``iss``/``aud``/``sub``/``nbf``/``exp`` and the scope of *this* path), then
the document; a 304 is only ever given to a caller that passed the token check.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable
from typing import IO, Any, Final

from aiohttp import hdrs, web

from apiproxy.auth import MAX_TOKEN_LENGTH, AuthenticationError, bearer_token
from apiproxy.badrequest import Invalid
from apiproxy.exporter.catalog import DOCUMENTS, Document
from apiproxy.exporter.metrics import CODES, ExporterMetrics
from apiproxy.exporter.state import ExporterState
from apiproxy.httpedge import EdgeServer, Handler

#: Longer ``Authorization`` values are refused (401) before any parsing.
MAX_AUTHORIZATION: Final = MAX_TOKEN_LENGTH + len("Bearer ") + 16
#: aiohttp's limit on one header line; anything longer never reaches the handler: the edge answers 400.
MAX_FIELD_SIZE: Final = 64 * 1024

log = logging.getLogger("apiproxy.exporter")
_JSON: Final = "application/json"
_ALLOW: Final = "GET, HEAD"
_encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode


#: The ``error`` field of a parser refusal, by status.
_REFUSAL_ERRORS: Final = {
    400: "bad_request",
    414: "uri_too_long",
    431: "request_header_fields_too_large",
    501: "not_implemented",
}


def _json(status: int, value: Any, **headers: str) -> web.Response:
    return web.Response(
        status=status,
        body=_encode(value).encode("ascii") + b"\n",
        content_type=_JSON,
        headers=headers,
    )


class ExporterServer(EdgeServer):
    """The exporter's listeners on the project's HTTP edge (:mod:`apiproxy.httpedge`): no ``Server``
    header, and what aiohttp's parser refuses (a header line over ``max_field_size``, bad framing) is
    answered in the exporter's JSON error shape with fixed text, never a byte of the request: for an
    oversized ``Authorization`` header, aiohttp's own answer and log line would quote the token.

    A parser refusal has the status the proxy gives it (:mod:`apiproxy.badrequest`: 414 for a long
    request line, 431 for a long header, 501 for an unknown method, else 400) and an ``error`` naming
    that status, with a ``reason`` naming what was wrong; a failure of the handler is a 500
    ``internal_error``. ``on_error`` counts both by status code.
    """

    def __init__(
        self, handler: Handler, *, on_error: Callable[[int], None] | None = None, **kwargs: Any
    ) -> None:
        # No access log: it would copy request lines and headers of anyone into the log; private reads
        # have their own audit line.
        super().__init__(handler, logger=log, max_field_size=MAX_FIELD_SIZE, access_log=None, **kwargs)
        self._on_error = on_error

    def answer_invalid(self, refusal: Invalid) -> web.StreamResponse:
        self._count(refusal.code)
        error = _REFUSAL_ERRORS.get(refusal.code, "bad_request")
        return _json(refusal.code, {"error": error, "reason": refusal.reason, "message": refusal.message})

    def answer_failure(self, code: int) -> web.StreamResponse:
        self._count(code)
        return _json(code, {"error": "internal_error"})

    def _count(self, status: int) -> None:
        if self._on_error is not None:
            self._on_error(status)


def _etag_matches(header: str, etag: str) -> bool:
    """RFC 9110 weak comparison of ``If-None-Match`` (a list, ``*``, or ``W/`` tags) with our strong tag."""
    for candidate in header.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == etag:
            return True
    return False


class AuditTrail:
    """One JSON line per private read: who (the verified peer, or none), which document, the decision."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream

    @classmethod
    def open(cls, target: str) -> AuditTrail | None:
        if not target:
            return None
        return cls(sys.stdout if target == "-" else open(target, "a", buffering=1))

    def record(self, **fields: Any) -> None:
        line = _encode(
            {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "kind": "metadata-read", **fields}
        )
        self.stream.write(line + "\n")
        self.stream.flush()


class ExporterHandler:
    def __init__(self, state: ExporterState, metrics: ExporterMetrics, audit: AuditTrail | None) -> None:
        self.state = state
        self.metrics = metrics
        self.audit = audit
        self._count = {
            (endpoint, code): metrics.requests.labels(endpoint, code)
            for endpoint in (*(label for label, _ in DOCUMENTS.values()), "healthz", "readyz", "other")
            for code in CODES
        }

    def _done(self, endpoint: str, response: web.Response) -> web.Response:
        self._count[endpoint, str(response.status)].inc()
        return response

    def count_error(self, status: int) -> None:
        """A request aiohttp refused before the handler (unparsable), or a handler failure."""
        counter = self._count.get(("other", str(status)))
        if counter is not None:
            counter.inc()

    async def handle(self, request: web.BaseRequest) -> web.Response:
        path = request.raw_path.partition("?")[0]
        entry = DOCUMENTS.get(path)
        if entry is None:
            if path in ("/healthz", "/readyz"):
                return self._probe(request, path[1:])
            return self._done("other", _json(404, {"error": "not_found", "message": "no such document"}))
        label, scope = entry
        if request.method not in ("GET", "HEAD"):
            return self._done(label, _json(405, {"error": "method_not_allowed"}, Allow=_ALLOW))
        peer = None
        if scope is not None:
            if "trust" in self.state.sources and not self.state.trust_loaded:
                body = {"error": "unavailable", "missing": ["trust store: not loaded yet"]}
                return self._done(label, _json(503, body, **{"Retry-After": "5"}))
            try:
                peer = self._authenticate(request, scope)
            except AuthenticationError as exc:
                self.metrics.auth_failures.labels(label, exc.reason).inc()
                if self.audit is not None:
                    self.audit.record(
                        document=label, peer=None, decision="deny", reason=exc.reason, source=request.remote
                    )
                body = {"error": "unauthorized", "reason": exc.reason, "message": exc.message}
                return self._done(label, _json(401, body, **{"WWW-Authenticate": 'Bearer realm="metadata"'}))
        document = self.state.catalog.get(path)
        assert document is not None
        response = self._document(request, document, private=scope is not None)
        if peer is not None and self.audit is not None:
            self.audit.record(
                document=label, peer=peer, decision="allow", code=response.status, source=request.remote
            )
        return self._done(label, response)

    def _authenticate(self, request: web.BaseRequest, scope: str) -> str:
        values = request.headers.getall(hdrs.AUTHORIZATION, [])
        if not values:
            raise AuthenticationError(
                "missing", f"no bearer token: send 'Authorization: Bearer <JWT>' with scope {scope!r}"
            )
        if len(values) > 1:
            raise AuthenticationError("malformed", "more than one Authorization header")
        if len(values[0]) > MAX_AUTHORIZATION:
            raise AuthenticationError(
                "token_too_large", f"Authorization header is longer than {MAX_AUTHORIZATION} bytes"
            )
        principal = self.state.verifiers[scope].verify(bearer_token(values[0]))
        return principal.cluster_uuid

    @staticmethod
    def _document(request: web.BaseRequest, document: Document, *, private: bool) -> web.Response:
        if document.status != 200:
            return web.Response(
                status=document.status, body=document.body, content_type=_JSON, headers={"Retry-After": "5"}
            )
        headers = {
            hdrs.ETAG: document.etag,
            hdrs.CACHE_CONTROL: "private, no-cache" if private else "no-cache",
        }
        condition = request.headers.get(hdrs.IF_NONE_MATCH)
        if condition is not None and _etag_matches(condition, document.etag):
            return web.Response(status=304, headers=headers)
        return web.Response(body=document.body, content_type=_JSON, headers=headers)

    def _probe(self, request: web.BaseRequest, name: str) -> web.Response:
        if request.method not in ("GET", "HEAD"):
            return self._done(
                name, web.Response(status=405, text="method not allowed\n", headers={"Allow": _ALLOW})
            )
        if name == "healthz":
            return self._done(name, web.Response(text="ok\n"))
        waiting = self.state.not_ready()
        if waiting:
            text = "not ready: sources not loaded yet: " + "; ".join(waiting) + "\n"
            return self._done(name, web.Response(status=503, text=text))
        return self._done(name, web.Response(text="ok\n"))


def build_server(handler: ExporterHandler) -> ExporterServer:
    return ExporterServer(handler.handle, on_error=handler.count_error)


def build_metrics_server(metrics: ExporterMetrics) -> ExporterServer:
    async def exposition(request: web.BaseRequest) -> web.Response:
        if request.raw_path.partition("?")[0] != "/metrics":
            return _json(404, {"error": "not_found"})
        if request.method not in ("GET", "HEAD"):
            return _json(405, {"error": "method_not_allowed"}, Allow=_ALLOW)
        body, content_type = metrics.exposition()
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})

    return ExporterServer(exposition)

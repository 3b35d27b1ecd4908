"""The one connection pool to the real apiserver, and the proxy's own credentials for it.

The proxy authenticates upstream only as itself: a bearer token read from the service-account token file
(kubelet rewrites that file about hourly, so it is re-read when it changes) and the cluster CA. The
caller's credentials are never used here.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from aiohttp import ClientError
from multidict import CIMultiDict
from yarl import URL

from apiproxy.proxy import http1
from apiproxy.reload import Signature, file_signature
from apiproxy.status import StatusError

log = logging.getLogger("apiproxy.upstream")

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")


def in_cluster_url(environ: Mapping[str, str] = os.environ) -> str:
    """The apiserver URL a pod sees, from the variables kubelet injects (empty outside a cluster)."""
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        return ""
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"https://{host}:{port}"


class TokenSource:
    """The proxy's own bearer token, re-read when its file changes.

    The file is looked at no more often than every ``check_interval`` seconds, so the hot path costs a
    clock read. A token file that disappears or turns empty keeps the last good token (kubelet writes
    atomically, so this only happens on real breakage) and logs the error once per change.
    """

    def __init__(self, path: Path, *, check_interval: float = 1.0) -> None:
        self.path = path
        self._seen: Signature | None = None
        self._check_interval = check_interval
        self._next_check = 0.0
        self._header: str | None = None
        self.loaded_at: float | None = None  # wall-clock time of the last successful read
        self.last_error: str | None = None

    def refresh(self) -> None:
        seen = file_signature(self.path)
        if seen is not None and seen == self._seen:
            return
        try:
            token = self.path.read_text().strip()
        except OSError as exc:
            self._record_error(f"cannot read upstream token file {self.path}: {exc.strerror}")
            return
        self._seen = seen
        if not token:
            self._record_error(f"upstream token file {self.path} is empty")
            return
        if self._header is not None:
            log.info("upstream token file %s changed; using the new token", self.path)
        self._header = f"Bearer {token}"
        self.loaded_at = time.time()
        self.last_error = None

    def _record_error(self, message: str) -> None:
        if message != self.last_error:
            log.error("%s", message)
        self.last_error = message

    def authorization(self) -> str:
        """The ``Authorization`` header value for upstream requests."""
        now = time.monotonic()
        if now >= self._next_check:
            self._next_check = now + self._check_interval
            self.refresh()
        if self._header is None:
            raise StatusError(
                503, f"the proxy has no credentials for the upstream apiserver: {self.last_error}"
            )
        return self._header


def client_ssl_context(ca_file: Path | None, max_version: str = "") -> ssl.SSLContext:
    """TLS to the apiserver: verified against the cluster CA (or the system store), TLS 1.2 at least."""
    ctx = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if max_version == "1.2":
        # A TLS 1.3 server sends session tickets after the handshake, and OpenSSL then keeps ~12 KiB
        # more per connection; every open watch holds one (measured: 92 -> 79 KiB RSS per idle watch).
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    url: str
    ca_file: Path | None
    token_file: Path
    connect_timeout: float = 5.0
    #: Longest silence tolerated on a non-watch request before answering 504 (kube-apiserver's own
    #: request timeout is 60 s).
    request_timeout: float = 60.0
    #: Most connections kept to the apiserver; the apiserver multiplexes nothing over HTTP/1.1, so
    #: each concurrent request (watches included) holds one.
    max_connections: int = 0
    token_check_interval: float = 1.0
    #: "1.2" caps the upstream hop at TLS 1.2 (less memory per watch); empty allows TLS 1.3.
    tls_max_version: str = ""


class Upstream:
    """The keep-alive pool to the apiserver and the error mapping for talking to it."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.base = settings.url.rstrip("/")
        url = URL(self.base)
        if url.scheme not in ("http", "https") or not url.host or url.query_string or url.fragment:
            raise ValueError(f"upstream URL must be http(s)://host[:port][/path]: {settings.url!r}")
        self.host = url.host
        #: An apiserver published under a path (behind another gateway) gets it before every target.
        self.prefix = url.raw_path.rstrip("/")
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self.token = TokenSource(settings.token_file, check_interval=settings.token_check_interval)
        self.ssl_context = (
            client_ssl_context(settings.ca_file, settings.tls_max_version) if url.scheme == "https" else None
        )
        self._pool: http1.Pool | None = None

    async def start(self) -> None:
        self.token.refresh()
        self._pool = http1.Pool(
            self.host,
            self.port,
            self.ssl_context,
            limit=self.settings.max_connections,
            connect_timeout=self.settings.connect_timeout,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def reload_ca(self) -> None:
        """Trust the CA file as it is now; new connections use it (pooled ones finish as they are)."""
        if self.ssl_context is not None:
            self.ssl_context = client_ssl_context(self.settings.ca_file, self.settings.tls_max_version)
            if self._pool is not None:
                self._pool.ssl_context = self.ssl_context

    @property
    def pool(self) -> http1.Pool:
        if self._pool is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._pool

    def read_timeout(self, *, watch: bool, watch_timeout: float | None) -> float | None:
        """The longest silence tolerated before the request counts as failed."""
        if not watch:
            return self.settings.request_timeout
        # A watch may be silent for as long as it lives; bound the silence only when its life is bounded.
        return watch_timeout + self.settings.request_timeout if watch_timeout else None

    async def open(
        self,
        method: str,
        target: str,
        headers: CIMultiDict[str] | Mapping[str, str],
        *,
        body: bytes | None = None,
        watch: bool = False,
        watch_timeout: float | None = None,
    ) -> http1.Response:
        """Send the request (to exactly ``target``, as given) and return once the response headers arrived.

        Failures before the response starts become ``UpstreamError`` (503 unreachable, 504 silent), with a
        message that says what failed; the caller owns the returned response and must release or close it.
        """
        try:
            return await self.pool.request(
                method,
                self.prefix + target,
                headers.items(),
                body=body,
                read_timeout=self.read_timeout(watch=watch, watch_timeout=watch_timeout),
            )
        except http1.RequestFailed as exc:
            raise self._error(exc, watch) from exc

    def _error(self, exc: http1.RequestFailed, watch: bool) -> UpstreamError:
        kind = exc.kind
        if kind == "tls":
            return UpstreamError(503, kind, f"cannot verify the upstream apiserver's certificate: {exc}")
        if kind == "connect":
            return UpstreamError(503, kind, f"the upstream apiserver at {self.base} is unreachable: {exc}")
        if kind == "timeout":
            silence = "the watch timeout" if watch else f"{self.settings.request_timeout:g}s"
            return UpstreamError(504, kind, f"the upstream apiserver did not answer within {silence}")
        if kind == "disconnect":
            return UpstreamError(503, kind, "the upstream apiserver closed the connection without answering")
        return UpstreamError(503, kind, f"the upstream apiserver request failed: {exc}")

    async def check_ready(self, timeout: float = 2.0) -> str | None:
        """None when the apiserver answers ``/version`` with 200, else why not (for ``/readyz``)."""
        try:
            headers = {"Authorization": self.token.authorization(), "Accept": "application/json"}
            async with asyncio.timeout(timeout):
                response = await self.open("GET", "/version", headers)
                try:
                    await response.read()
                finally:
                    response.close()
        except StatusError as exc:
            return exc.message
        except TimeoutError:
            return f"upstream /version did not answer within {timeout:g}s"
        except ClientError as exc:
            return f"upstream /version broke off: {exc}"
        if response.status != 200:
            return f"upstream /version answered {response.status}"
        return None


class UpstreamError(StatusError):
    """A failure to reach or hear from the apiserver; ``kind`` is a bounded label for metrics."""

    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(code, message)
        self.kind = kind

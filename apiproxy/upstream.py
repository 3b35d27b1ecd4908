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

import aiohttp
from yarl import URL

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
    """The pooled client session to the apiserver and the error mapping for talking to it."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.base = settings.url.rstrip("/")
        self.token = TokenSource(settings.token_file, check_interval=settings.token_check_interval)
        self.ssl_context = (
            client_ssl_context(settings.ca_file, settings.tls_max_version)
            if self.base.startswith("https")
            else None
        )
        self._session: aiohttp.ClientSession | None = None
        self._short_timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=settings.connect_timeout, sock_read=settings.request_timeout
        )

    async def start(self) -> None:
        self.token.refresh()
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections,
            limit_per_host=0,
            ssl=self.ssl_context if self.ssl_context is not None else False,
            keepalive_timeout=30,
            enable_cleanup_closed=True,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,  # bytes pass through unchanged, gzip included
            read_bufsize=256 * 1024,  # large LISTs move in bigger pieces
            skip_auto_headers=("Accept", "Accept-Encoding", "User-Agent", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def reload_ca(self) -> None:
        """Trust the CA file as it is now; new connections use it (pooled ones finish as they are)."""
        if self.ssl_context is not None:
            self.ssl_context = client_ssl_context(self.settings.ca_file, self.settings.tls_max_version)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Upstream.start() was not awaited")
        return self._session

    def url_for(self, target: str) -> URL:
        """The upstream URL for exactly this raw path and query: no re-encoding, no normalisation."""
        return URL(self.base + target, encoded=True)

    def timeout_for(self, *, watch: bool, watch_timeout: float | None) -> aiohttp.ClientTimeout:
        if not watch:
            return self._short_timeout
        # A watch may be silent for as long as it lives; bound the silence only when its life is bounded.
        sock_read = watch_timeout + self.settings.request_timeout if watch_timeout else None
        return aiohttp.ClientTimeout(
            total=None, sock_connect=self.settings.connect_timeout, sock_read=sock_read
        )

    async def open(
        self,
        method: str,
        target: str,
        headers: Mapping[str, str],
        *,
        body: bytes | None = None,
        watch: bool = False,
        watch_timeout: float | None = None,
    ) -> aiohttp.ClientResponse:
        """Send the request and return once the response headers arrived.

        Failures before the response starts become ``StatusError`` (503 unreachable, 504 silent), with a
        message that says what failed; the caller owns the returned response and must release it.
        """
        try:
            return await self.session.request(
                method,
                self.url_for(target),
                headers=headers,
                data=body,
                allow_redirects=False,
                ssl=self.ssl_context if self.ssl_context is not None else False,
                timeout=self.timeout_for(watch=watch, watch_timeout=watch_timeout),
            )
        except aiohttp.ClientConnectorCertificateError as exc:
            raise UpstreamError(
                503, "tls", f"cannot verify the upstream apiserver's certificate: {exc.certificate_error}"
            ) from exc
        except aiohttp.ClientConnectorError as exc:
            reason = exc.strerror or exc.__class__.__name__
            raise UpstreamError(
                503, "connect", f"the upstream apiserver at {self.base} is unreachable: {reason}"
            ) from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamError(
                504, "timeout", f"the upstream apiserver did not answer within {self._silence(watch)}"
            ) from exc
        except aiohttp.ServerDisconnectedError as exc:
            raise UpstreamError(
                503, "disconnect", "the upstream apiserver closed the connection without answering"
            ) from exc
        except aiohttp.ClientError as exc:
            raise UpstreamError(503, "protocol", f"the upstream apiserver request failed: {exc}") from exc

    def _silence(self, watch: bool) -> str:
        if watch:
            return "the watch timeout"
        return f"{self.settings.request_timeout:g}s"

    async def check_ready(self, timeout: float = 2.0) -> str | None:
        """None when the apiserver answers ``/version`` with 200, else why not (for ``/readyz``)."""
        try:
            headers = {"Authorization": self.token.authorization(), "Accept": "application/json"}
            async with asyncio.timeout(timeout):
                resp = await self.session.get(
                    self.url_for("/version"),
                    headers=headers,
                    allow_redirects=False,
                    ssl=self.ssl_context if self.ssl_context is not None else False,
                )
                async with resp:
                    await resp.read()
                    if resp.status != 200:
                        return f"upstream /version answered {resp.status}"
        except StatusError as exc:
            return exc.message
        except TimeoutError:
            return f"upstream /version did not answer within {timeout:g}s"
        except aiohttp.ClientError as exc:
            return f"upstream unreachable: {exc}"
        return None


class UpstreamError(StatusError):
    """A failure to reach or hear from the apiserver; ``kind`` is a bounded label for metrics."""

    def __init__(self, code: int, kind: str, message: str) -> None:
        super().__init__(code, message)
        self.kind = kind

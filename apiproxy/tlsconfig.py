"""Server-side TLS: the listener's context, built so that its certificate can be swapped live."""

from __future__ import annotations

import logging
import ssl
from pathlib import Path

log = logging.getLogger("apiproxy.tls")


def parse_listen(value: str, default_host: str = "0.0.0.0") -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``:port`` → (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"listen address {value!r} is not HOST:PORT")
    host = host.strip("[]") or default_host
    number = int(port)
    if not 0 <= number <= 65535:
        raise ValueError(f"port {number} out of range in {value!r}")
    return host, number


def server_ssl_context(
    cert_file: Path,
    key_file: Path,
    *,
    client_ca: bytes | None = None,
    require_client_cert: bool = False,
) -> ssl.SSLContext:
    """TLS ≥ 1.2, HTTP/1.1 over ALPN; client certificates verified against ``client_ca`` when given.

    Python's default server context asks for no client certificate at all; with a client CA the
    certificate is requested (``CERT_OPTIONAL``) or demanded (``CERT_REQUIRED``), and always verified.
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_alpn_protocols(["http/1.1"])
    # No TLS 1.3 session tickets: Kubernetes clients do not resume sessions, so each ticket is CPU and a
    # write for nothing on every handshake (and watches reconnect by the thousand).
    ctx.num_tickets = 0
    ctx.load_cert_chain(str(cert_file), str(key_file))
    if client_ca:
        ctx.load_verify_locations(cadata=client_ca.decode("ascii"))
        ctx.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    elif require_client_cert:
        raise ValueError("requiring client certificates needs a client CA")
    return ctx


class LiveServerTLS:
    """A listener context whose certificate and client CAs can be replaced while it serves.

    The listener keeps one ``SSLContext`` for its whole life; its server-name callback, which OpenSSL runs
    on every ClientHello (with or without SNI), points the new connection at the newest context. Open
    connections keep the context they started with.
    """

    def __init__(
        self,
        cert_file: Path,
        key_file: Path,
        *,
        client_ca: bytes | None = None,
        require_client_cert: bool = False,
    ) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.require_client_cert = require_client_cert
        self._client_ca = client_ca
        self._current = self._build()
        # The listener's own context: the verify mode is fixed here, so it must already be right.
        self.context = self._build()
        self.context.sni_callback = self._select

    def _build(self) -> ssl.SSLContext:
        return server_ssl_context(
            self.cert_file,
            self.key_file,
            client_ca=self._client_ca,
            require_client_cert=self.require_client_cert,
        )

    def _select(self, conn: ssl.SSLObject, server_name: str | None, ctx: ssl.SSLContext) -> None:
        conn.context = self._current

    def reload(self, *, client_ca: bytes | None = None) -> None:
        """Build a context from the files as they are now; raises (keeping the old one) if they are bad."""
        if client_ca is not None:
            if self._client_ca is None:
                raise ValueError("client certificate verification cannot be switched on without a restart")
            self._client_ca = client_ca
        self._current = self._build()
        log.info("serving TLS reloaded from %s", self.cert_file)

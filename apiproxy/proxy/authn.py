"""Identify the caller: mTLS peer certificate and/or bearer JWT → :class:`Principal`, or a 401.

The TLS layer has already verified any client certificate against the client CA bundle; this module
decides *who* the verified certificate and the token say the caller is, and that they agree.
"""

from __future__ import annotations

import dataclasses
import logging
import ssl
from collections.abc import Mapping
from types import MappingProxyType

from aiohttp import web

from apiproxy.auth.errors import AuthenticationError
from apiproxy.auth.jwt import TokenVerifier, bearer_token
from apiproxy.auth.mtls import PeerIdentifier, combine
from apiproxy.auth.principal import Principal
from apiproxy.auth.truststore import TrustStore
from apiproxy.status import StatusError

log = logging.getLogger("apiproxy.authn")

#: Principal of every request when authentication is switched off for local development.
ANONYMOUS = Principal(cluster_uuid="anonymous", cluster_name="anonymous", method="jwt", subject="anonymous")


class Unauthorized(StatusError):
    """401 with the failed check in the message; ``reason_label`` is the bounded metrics label."""

    def __init__(self, error: AuthenticationError) -> None:
        super().__init__(401, f"Unauthorized: {error.message}", reason="Unauthorized")
        self.reason_label = error.reason


def request_token(request: web.BaseRequest) -> str | None:
    """The bearer token of the request, None without an ``Authorization`` header."""
    values = request.headers.getall("Authorization", [])
    if not values:
        return None
    if len(values) > 1:
        raise AuthenticationError("malformed", "more than one Authorization header")
    return bearer_token(values[0])


def peer_certificate(request: web.BaseRequest) -> bytes | None:
    """The client certificate the TLS layer verified, DER-encoded, or None."""
    transport = request.transport
    if transport is None:
        return None
    ssl_object = transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject | ssl.SSLSocket):
        return None
    return ssl_object.getpeercert(binary_form=True)


def without_roots(store: TrustStore) -> TrustStore:
    """The store with its root CAs hidden, for when certificates may not identify clusters by root."""
    clusters = {uuid: dataclasses.replace(c, root_cas=()) for uuid, c in store.clusters.items()}
    return TrustStore(clusters=MappingProxyType(clusters), sha256=store.sha256)


class Authenticator:
    """Turns a request's credentials into a Principal against the current trust store.

    Tokens are verified by :class:`TokenVerifier` (cached), certificates attributed by
    :class:`PeerIdentifier` (cached); both caches are rebuilt on every trust store change.
    """

    def __init__(
        self,
        store: TrustStore,
        *,
        audience: str,
        issuer: str,
        leeway: float,
        max_lifetime: float | None,
        cert_identity: bool = False,
        san_clusters: Mapping[str, str] | None = None,
        client_ca_pem: bytes | None = None,
        require_channel_cert: bool = False,
    ) -> None:
        self._cert_identity = cert_identity
        self._use_certificates = cert_identity or bool(san_clusters)
        self._require_channel_cert = require_channel_cert
        self.verifier = TokenVerifier(
            store, audience, issuer=issuer, leeway=leeway, max_lifetime=max_lifetime or None
        )
        self.peers = PeerIdentifier(
            self._identity_store(store), san_clusters or {}, client_ca_pem=client_ca_pem
        )

    def _identity_store(self, store: TrustStore) -> TrustStore:
        return store if self._cert_identity else without_roots(store)

    def trust_changed(self, store: TrustStore) -> None:
        """A new trust store: every cached verdict is dropped at once (removed clusters stop working)."""
        self.verifier = self.verifier.with_trust(store)
        self.peers = self.peers.with_trust(self._identity_store(store))

    def channel_ca_changed(self, client_ca_pem: bytes | None) -> None:
        """A new channel client CA: SANs of certificates it issues are believed from now on."""
        self.peers = PeerIdentifier(self.peers.trust, self.peers.san_map, client_ca_pem=client_ca_pem)

    def __call__(self, request: web.BaseRequest) -> Principal:
        try:
            return self._authenticate(request)
        except AuthenticationError as exc:
            raise Unauthorized(exc) from exc

    def _authenticate(self, request: web.BaseRequest) -> Principal:
        cert_principal = None
        if self._use_certificates or self._require_channel_cert:
            # Only looked at when it can matter: encoding the certificate costs on every request.
            cert = peer_certificate(request)
            if cert is None and self._require_channel_cert:
                raise AuthenticationError("missing", "a client certificate is required")
            if cert is not None and self._use_certificates:
                cert_principal = self.peers.identify(cert)
        token = request_token(request)
        token_principal = self.verifier.verify(token) if token is not None else None
        return combine(cert_principal, token_principal)


def insecure_authenticator(request: web.BaseRequest) -> Principal:
    """Every caller is ``anonymous``: only for ``--insecure-no-auth`` development setups."""
    return ANONYMOUS

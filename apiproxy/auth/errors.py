"""Exceptions of the authentication layer.

:class:`AuthenticationError` is what the request pipeline sees: ``reason`` is a short identifier from a
closed set (:data:`REASONS`), safe to use as a metrics label; ``message`` is safe to show the client (it
never contains the credential) and says which check failed.
"""

from __future__ import annotations

from typing import Final

#: Every ``reason`` an :class:`AuthenticationError` can carry; pre-register metrics labels from this.
REASONS: Final = frozenset(
    {
        "missing",  # no credential at all
        "malformed",  # not a compact JWS / not JSON / wrong claim types
        "token_too_large",
        "bad_algorithm",  # alg none, HMAC, unknown, or not pinned for the cluster's key type
        "unknown_cluster",  # sub names no cluster in the trust store
        "bad_signature",
        "missing_claim",  # exp / sub / aud / iss absent
        "expired",
        "not_yet_valid",
        "too_long_lived",
        "bad_audience",
        "bad_issuer",
        "bad_scope",
        "cluster_mismatch",  # mTLS and JWT name different clusters, or a certificate is ambiguous
    }
)


class AuthenticationError(Exception):
    """A credential was missing or rejected; maps to HTTP 401."""

    def __init__(self, reason: str, message: str) -> None:
        assert reason in REASONS, reason
        super().__init__(message)
        self.reason = reason
        self.message = message

    def __repr__(self) -> str:
        return f"AuthenticationError({self.reason!r}, {self.message!r})"


class KeyFormatError(ValueError):
    """A key (PEM, DER or JWK) could not be loaded or is not allowed (type, curve, size)."""


class TrustStoreError(Exception):
    """The trust store input is broken; the caller keeps its previous snapshot (fail closed)."""

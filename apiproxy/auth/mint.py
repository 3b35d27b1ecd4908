"""Minting tokens in Deckhouse's exact format (for operators, tests and non-Deckhouse remote clusters).

Deckhouse tokens are compact JWS with the header exactly ``{"alg":"EdDSA"}`` (no ``typ``, no ``kid``)
and compact JSON claims in the order ``iss, aud, sub, scope, nbf, exp``. Ed25519 signatures are
deterministic, so minting with the same key and times reproduces a Deckhouse token byte for byte.
"""

from __future__ import annotations

import json
import time
from typing import Any

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from apiproxy.auth.errors import KeyFormatError
from apiproxy.auth.keys import PrivateKey, algorithms_for, b64url_encode, load_private_key

_EC_SIZES = {"ES256": (32, hashes.SHA256), "ES384": (48, hashes.SHA384)}


def _compact(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def sign(private_key: PrivateKey, algorithm: str, signing_input: bytes) -> bytes:
    """A raw JWS signature (EC signatures as fixed-width ``r || s``)."""
    if algorithm not in algorithms_for(private_key):
        raise KeyFormatError(f"algorithm {algorithm!r} does not fit a {type(private_key).__name__}")
    if isinstance(private_key, ed25519.Ed25519PrivateKey):
        return private_key.sign(signing_input)
    if isinstance(private_key, rsa.RSAPrivateKey):
        if algorithm == "RS256":
            return private_key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
        return private_key.sign(signing_input, pss, hashes.SHA256())
    size, digest = _EC_SIZES[algorithm]
    r, s = decode_dss_signature(private_key.sign(signing_input, ec.ECDSA(digest())))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def encode_jws(private_key: PrivateKey, header: dict[str, Any], claims: dict[str, Any]) -> str:
    """Sign arbitrary header and claims (``header["alg"]`` picks the algorithm); for tests and tools."""
    signing_input = b64url_encode(_compact(header)) + "." + b64url_encode(_compact(claims))
    signature = sign(private_key, str(header["alg"]), signing_input.encode("ascii"))
    return signing_input + "." + b64url_encode(signature)


def mint_token(
    private_key: PrivateKey | bytes | str,
    subject: str,
    audience: str,
    *,
    issuer: str = "d8-istio",
    scope: str | None = "api",
    ttl: float,
    now: float | None = None,
    algorithm: str | None = None,
) -> str:
    """A token for remote cluster ``subject`` to call the proxy of cluster ``audience``.

    ``private_key`` is a key object or PEM (``ED25519 PRIVATE KEY`` accepted). The algorithm defaults to
    the first one pinned for the key type (EdDSA, RS256, ES256/ES384).
    """
    key = load_private_key(private_key) if isinstance(private_key, bytes | str) else private_key
    alg = algorithm or algorithms_for(key)[0]
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    start = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iss": issuer, "aud": audience, "sub": subject}
    if scope is not None:
        claims["scope"] = scope
    claims["nbf"] = start
    claims["exp"] = start + int(ttl)
    return encode_jws(key, {"alg": alg}, claims)

"""Tokens this controller mints for a peer, and when an API token must be re-minted.

Private-document tokens live one minute (one fetch). API tokens go into istiod's remote secret and live
``--api-token-ttl`` (30 days by default, Deckhouse mints 366); they are re-minted when a third of their life
remains, so a controller that is down for a while still leaves the peer weeks of validity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.jwt import DEFAULT_ISSUER
from apiproxy.auth.keys import PrivateKey, b64url_decode
from apiproxy.auth.mint import mint_token
from apiproxy.metadata import SCOPE_API, SCOPE_PRIVATE_MULTICLUSTER

ISSUER: Final = DEFAULT_ISSUER
PRIVATE_TOKEN_TTL: Final = 60.0


def private_token(key: PrivateKey, *, our_uuid: str, peer_uuid: str, now: float) -> str:
    """``scope: private-multicluster``, one minute: what the peer's exporter wants for multicluster.json."""
    return mint_token(
        key,
        our_uuid,
        peer_uuid,
        issuer=ISSUER,
        scope=SCOPE_PRIVATE_MULTICLUSTER,
        ttl=PRIVATE_TOKEN_TTL,
        now=now,
    )


def api_token(key: PrivateKey, *, our_uuid: str, peer_uuid: str, now: float, ttl: float) -> str:
    return mint_token(key, our_uuid, peer_uuid, issuer=ISSUER, scope=SCOPE_API, ttl=ttl, now=now)


@dataclass(frozen=True, slots=True)
class TokenInfo:
    not_before: int
    expires: int


def inspect_own_token(token: str, key: PrivateKey, *, our_uuid: str, peer_uuid: str) -> TokenInfo | None:
    """The lifetime of an API token we minted earlier, or None when it is not ours for this peer now.

    Checked: our signature (a key rotation makes the old token not ours), ``iss``, ``sub``, ``aud`` and
    ``scope``. Anything else (a hand-edited secret, a token for a peer whose UUID changed) means re-mint.
    """
    parts = token.split(".")
    if len(parts) != 3:
        return None
    try:
        header = json.loads(b64url_decode(parts[0]))
        claims: Any = json.loads(b64url_decode(parts[1]))
        signature = b64url_decode(parts[2])
    except ValueError:
        return None
    if not isinstance(header, dict) or not isinstance(claims, dict) or header.get("alg") != "EdDSA":
        return None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        return None
    try:
        key.public_key().verify(signature, f"{parts[0]}.{parts[1]}".encode("ascii"))
    except InvalidSignature:
        return None
    expected = {"iss": ISSUER, "sub": our_uuid, "aud": peer_uuid, "scope": SCOPE_API}
    if any(claims.get(k) != v for k, v in expected.items()):
        return None
    nbf, exp = claims.get("nbf"), claims.get("exp")
    if not isinstance(nbf, int) or not isinstance(exp, int) or exp <= nbf:
        return None
    return TokenInfo(nbf, exp)


def needs_remint(info: TokenInfo | None, *, now: float, ttl: float) -> bool:
    """True when there is no usable token, a third of its life (or less) remains, or it outlives ``ttl``.

    A token that would outlive the configured TTL (the TTL was shortened) is replaced at once, so a
    shorter ``--api-token-ttl`` takes effect on the next reconcile; one not yet valid (clock moved back)
    too.
    """
    if info is None:
        return True
    remaining = info.expires - now
    life = float(info.expires - info.not_before)
    return remaining <= life / 3.0 or remaining > ttl + 60.0 or now < info.not_before - 60.0

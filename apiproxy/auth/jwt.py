"""Bearer JWT verification for remote clusters (Deckhouse ``d8-istio`` tokens and compatible issuers).

Order of checks (each failure is an :class:`AuthenticationError` with a bounded ``reason``):

1. size cap, compact-JWS shape, canonical base64url in every segment (one string per signature),
   header and claims UTF-8 JSON objects (no BOM, no UTF-16/32, no lone surrogates, no NaN/Infinity)
   without duplicate members;
2. header ``alg`` must be one we support at all (``none``, ``HS*`` and unknown ones are refused) and no
   ``crit`` header is accepted;
3. the *unverified* ``sub`` is read only to pick that cluster's keys from the trust store; a header ``kid``
   may narrow the choice among that cluster's own keys, never add one (``jku``, ``x5u``, ``jwk``, ``x5c``
   are ignored: nothing named by a token is ever fetched or trusted);
4. ``alg`` must be pinned for the key type (Ed25519 → EdDSA, RSA → RS256/PS256, P-256 → ES256,
   P-384 → ES384); then the signature is verified with ``cryptography`` directly;
5. only then the claims: ``exp``/``nbf``/``iat`` must be numbers (not booleans) of a date between 1970
   and 9999, ``exp`` required and strict unless ``exp_leeway`` is given (the cache uses the same bound),
   ``nbf``/``iat`` with ``leeway``, ``iss``, ``aud`` (string or array containing ours), ``scope``
   (space-separated, must contain ``required_scope``), and the maximum lifetime (400 days unless
   configured otherwise).

Verified tokens are cached by SHA-256 of the token (the token itself is never kept) until their ``exp``.
Rejections are not cached: the cheap failures are cheaper than a cache, and the expensive ones (a valid
shape naming a known cluster with a bad signature) are a rate-limiting matter; caching them would let an
attacker fill the cache and evict good entries. A verifier is bound to one trust snapshot: when the trust
store changes, call :meth:`TokenVerifier.with_trust` and use the new verifier (its cache starts empty, so
a removed cluster's tokens stop working at once).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from apiproxy.auth.errors import AuthenticationError
from apiproxy.auth.keys import SUPPORTED_ALGORITHMS, VerificationKey, b64url_decode
from apiproxy.auth.principal import Principal
from apiproxy.auth.truststore import TrustStore
from apiproxy.jsonutil import no_duplicate_keys

#: Larger bearer tokens are refused before any parsing (Deckhouse tokens are ~320 bytes).
MAX_TOKEN_LENGTH: Final = 8 * 1024
DEFAULT_ISSUER: Final = "d8-istio"
DEFAULT_SCOPE: Final = "api"
DEFAULT_LEEWAY: Final = 60.0
#: Deckhouse issues tokens for up to 366 days; pass this as ``max_lifetime`` to enforce exactly that.
DECKHOUSE_MAX_LIFETIME: Final = 366 * 86400.0
#: The default longest lifetime: Deckhouse's 366 days with room for issuers that round up, while a token
#: minted to live for decades (a credential that never really expires) is refused.
DEFAULT_MAX_LIFETIME: Final = 400 * 86400.0
#: NumericDate claims must name a second between 1970-01-01 and 9999-12-31T23:59:59Z: the four-digit
#: years that date types (Python's ``datetime``, Go's JWT libraries) agree on, and small enough that
#: arithmetic on it is exact in a float and cannot overflow.
MAX_NUMERIC_DATE: Final = 253_402_300_799

_SAFE_ID = re.compile(r"[A-Za-z0-9._:@/-]{1,80}")
_EC_SIZES: Final = {"ES256": 32, "ES384": 48}
_ALLOWED: Final = ", ".join(sorted(SUPPORTED_ALGORITHMS))


def _fail(reason: str, message: str) -> AuthenticationError:
    return AuthenticationError(reason, message)


def _safe(value: object) -> str:
    """A claim value fit for a client message or a log line: printable id or a placeholder."""
    return repr(value) if isinstance(value, str) and _SAFE_ID.fullmatch(value) else "(not shown)"


def _json_segment(segment: str, what: str) -> dict[str, Any]:
    """The JSON object of a header or claims segment.

    JWS (RFC 7515 §5.2) and JWT (RFC 7519 §7.2) say UTF-8; ``json.loads`` on bytes would also guess
    UTF-16/32 and skip a BOM, so two parsers could read one segment differently. Decode UTF-8 ourselves,
    refuse a BOM, refuse strings that are not Unicode (lone surrogates from ``\\ud800`` escapes), and
    refuse the NaN/Infinity constants Python accepts but JSON does not have."""
    try:
        data = b64url_decode(segment)
    except ValueError:
        raise _fail("malformed", f"token {what} is not canonical unpadded base64url") from None
    if data.startswith(b"\xef\xbb\xbf"):
        raise _fail("malformed", f"token {what} starts with a byte order mark; JSON must be plain UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise _fail("malformed", f"token {what} is not UTF-8") from None
    try:
        value = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_no_constant)
        json.dumps(value, ensure_ascii=False).encode("utf-8")  # lone surrogates cannot be encoded
    except UnicodeEncodeError:
        raise _fail("malformed", f"token {what} holds a string that is not valid Unicode") from None
    except (ValueError, RecursionError):
        raise _fail("malformed", f"token {what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise _fail("malformed", f"token {what} is not a JSON object")
    return value


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _number(claims: dict[str, Any], name: str) -> float | None:
    """A NumericDate claim as a float, or ``None`` when absent.

    Checked with exact comparisons before any conversion: an integer of a few hundred digits does not
    fit a float (``OverflowError``), and one that does would make the lifetime arithmetic meaningless."""
    if name not in claims:
        return None
    value = claims[name]  # present but null is malformed, not absent
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail("malformed", f"token claim {name} is not a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _fail("malformed", f"token claim {name} is not a finite number")
    if not 0 <= value <= MAX_NUMERIC_DATE:
        raise _fail("malformed", f"token claim {name} out of range (a date from 1970 to 9999 in seconds)")
    return float(value)


def verify_signature(key: VerificationKey, alg: str, signing_input: bytes, signature: bytes) -> bool:
    """Verify one JWS signature; ``alg`` must already be one of ``key.algorithms``."""
    if alg not in key.algorithms:
        return False
    public = key.key
    try:
        if alg == "EdDSA" and isinstance(public, ed25519.Ed25519PublicKey):
            public.verify(signature, signing_input)
        elif alg == "RS256" and isinstance(public, rsa.RSAPublicKey):
            public.verify(signature, signing_input, padding.PKCS1v15(), hashes.SHA256())
        elif alg == "PS256" and isinstance(public, rsa.RSAPublicKey):
            pss = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.DIGEST_LENGTH)
            public.verify(signature, signing_input, pss, hashes.SHA256())
        elif alg in _EC_SIZES and isinstance(public, ec.EllipticCurvePublicKey):
            size = _EC_SIZES[alg]
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            digest = hashes.SHA256() if alg == "ES256" else hashes.SHA384()
            public.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(digest))
        else:
            return False
    except (InvalidSignature, ValueError):
        return False
    return True


def bearer_token(authorization: str | None) -> str:
    """The token of an ``Authorization: Bearer <token>`` header; raises ``missing``/``malformed``."""
    if not authorization:
        raise _fail("missing", "no bearer token: send 'Authorization: Bearer <JWT>' or a client certificate")
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        raise _fail("malformed", "Authorization header is not a Bearer token")
    token = token.strip()
    if not token:
        raise _fail("missing", "Authorization header has an empty Bearer token")
    return token


class TokenVerifier:
    """Verifies bearer JWTs against one :class:`TrustStore` snapshot, with a cache of good tokens."""

    def __init__(
        self,
        trust: TrustStore,
        audience: str,
        *,
        issuer: str | None = DEFAULT_ISSUER,
        leeway: float = DEFAULT_LEEWAY,
        exp_leeway: float = 0.0,
        max_lifetime: float | None = DEFAULT_MAX_LIFETIME,
        required_scope: str | None = DEFAULT_SCOPE,
        clock: Callable[[], float] = time.time,
        cache_size: int = 10_000,
    ) -> None:
        if not audience:
            raise ValueError("audience (this cluster's UUID) is required")
        self.trust = trust
        self.audience = audience
        self.issuer = issuer
        self.leeway = float(leeway)
        #: Skew tolerated past ``exp``: for minute-long tokens minted by a peer whose clock runs behind.
        self.exp_leeway = float(exp_leeway)
        self.max_lifetime = max_lifetime
        self.required_scope = required_scope
        self.clock = clock
        self.cache_size = cache_size
        self._cache: OrderedDict[bytes, tuple[Principal, float]] = OrderedDict()
        #: Counters for metrics and tests.
        self.cache_hits = 0
        self.cache_misses = 0
        self.cache_evictions = 0

    def with_trust(self, trust: TrustStore) -> TokenVerifier:
        """A verifier with the same settings for a new trust snapshot, with an empty cache."""
        return TokenVerifier(
            trust,
            self.audience,
            issuer=self.issuer,
            leeway=self.leeway,
            exp_leeway=self.exp_leeway,
            max_lifetime=self.max_lifetime,
            required_scope=self.required_scope,
            clock=self.clock,
            cache_size=self.cache_size,
        )

    def clear_cache(self) -> None:
        self._cache.clear()

    @property
    def cache_len(self) -> int:
        return len(self._cache)

    def verify(self, token: str) -> Principal:
        """The :class:`Principal` of a valid token; raises :class:`AuthenticationError` otherwise."""
        if not token:
            raise _fail("missing", "no bearer token")
        if len(token) > MAX_TOKEN_LENGTH:
            raise _fail("token_too_large", f"bearer token is longer than {MAX_TOKEN_LENGTH} bytes")
        try:
            raw = token.encode("ascii")
        except UnicodeEncodeError:
            raise _fail("malformed", "bearer token is not ASCII") from None
        key = hashlib.sha256(raw).digest()
        cache = self._cache
        entry = cache.get(key)
        if entry is not None:
            if self.clock() < entry[1]:
                cache.move_to_end(key)
                self.cache_hits += 1
                return entry[0]
            del cache[key]
        self.cache_misses += 1
        principal, exp = self._verify(token)
        if self.cache_size > 0:
            cache[key] = (principal, exp)
            while len(cache) > self.cache_size:
                cache.popitem(last=False)
                self.cache_evictions += 1
        return principal

    def _verify(self, token: str) -> tuple[Principal, float]:
        parts = token.split(".")
        if len(parts) != 3:
            raise _fail("malformed", "bearer token is not a compact JWS (header.payload.signature)")
        header = _json_segment(parts[0], "header")
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
            raise _fail(
                "bad_algorithm",
                f"token alg {_safe(alg)} is not accepted (allowed: {_ALLOWED})",
            )
        if "crit" in header:
            raise _fail("malformed", "token header has 'crit' extensions, which are not supported")
        claims = _json_segment(parts[1], "payload")

        # Unverified: used only to choose which trusted keys to try.
        sub = claims.get("sub")
        if sub is None:
            raise _fail("missing_claim", "token has no sub claim (the remote cluster UUID)")
        if not isinstance(sub, str) or not sub:
            raise _fail("malformed", "token sub claim is not a non-empty string")
        cluster = self.trust.get(sub)
        if cluster is None:
            raise _fail("unknown_cluster", f"token sub {_safe(sub)} is not a trusted remote cluster")
        keys: tuple[VerificationKey, ...] = cluster.keys
        kid = header.get("kid")
        if isinstance(kid, str):
            by_kid = tuple(k for k in keys if k.kid == kid)
            keys = by_kid or keys
        candidates = [k for k in keys if alg in k.algorithms]
        if not candidates:
            kinds = ", ".join(sorted({k.kind for k in keys})) or "none"
            raise _fail(
                "bad_algorithm",
                f"token alg {alg!r} does not match the key type of cluster {cluster.display} ({kinds})",
            )
        try:
            signature = b64url_decode(parts[2])
        except ValueError:
            raise _fail("malformed", "token signature is not canonical unpadded base64url") from None
        signing_input = f"{parts[0]}.{parts[1]}".encode("ascii")
        if not any(verify_signature(k, alg, signing_input, signature) for k in candidates):
            raise _fail(
                "bad_signature", f"token signature does not verify with the keys of {cluster.display}"
            )

        # Signature is good: now the claims mean something.
        now = self.clock()
        exp = _number(claims, "exp")
        if exp is None:
            raise _fail("missing_claim", "token has no exp claim")
        if now >= exp + self.exp_leeway:
            raise _fail("expired", "token has expired")
        nbf = _number(claims, "nbf")
        if nbf is not None and now + self.leeway < nbf:
            raise _fail("not_yet_valid", "token is not valid yet (nbf is in the future)")
        iat = _number(claims, "iat")
        if iat is not None and now + self.leeway < iat:
            raise _fail("not_yet_valid", "token was issued in the future (iat)")
        if self.issuer is not None:
            iss = claims.get("iss")
            if iss is None:
                raise _fail("missing_claim", "token has no iss claim")
            if iss != self.issuer:
                raise _fail("bad_issuer", f"token issuer {_safe(iss)} is not {self.issuer!r}")
        aud = claims.get("aud")
        if aud is None:
            raise _fail("missing_claim", "token has no aud claim")
        if isinstance(aud, str):
            aud_ok = aud == self.audience
        elif isinstance(aud, list) and all(isinstance(a, str) for a in aud):
            aud_ok = self.audience in aud
        else:
            raise _fail("malformed", "token aud claim is neither a string nor an array of strings")
        if not aud_ok:
            raise _fail("bad_audience", f"token audience does not include this cluster ({self.audience})")
        if self.required_scope is not None:
            scope = claims.get("scope")
            if not isinstance(scope, str) or self.required_scope not in scope.split(" "):
                raise _fail("bad_scope", f"token scope does not include {self.required_scope!r}")
        if self.max_lifetime:
            # From the latest of iat and nbf (both at most now + leeway, checked above), else from now:
            # the measure bounds how long from now a token stays usable, whatever dates it carries.
            starts = [t for t in (iat, nbf) if t is not None]
            start = max(starts) if starts else now
            if exp - start > self.max_lifetime + self.leeway:
                raise _fail(
                    "too_long_lived",
                    f"token lifetime exceeds the allowed maximum of {self.max_lifetime:.0f}s",
                )
        expires_at = exp + self.exp_leeway
        principal = Principal(
            cluster_uuid=cluster.uuid,
            cluster_name=cluster.name,
            method="jwt",
            subject=sub,
            expires_at=expires_at,
        )
        return principal, expires_at

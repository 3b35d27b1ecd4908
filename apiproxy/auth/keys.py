"""Loading signing keys and pinning the JWS algorithms each one may be used with.

Supported public-key inputs:

* PEM ``ED25519 PUBLIC KEY``: Deckhouse's non-standard label around a PKIX (SubjectPublicKeyInfo) DER;
* PEM ``PUBLIC KEY`` (PKIX) and ``RSA PUBLIC KEY`` (PKCS#1);
* a JWKS document ``{"keys": [...]}`` with ``OKP``/``Ed25519``, ``RSA`` and ``EC`` P-256/P-384 keys.

Private keys (for ``token mint``): ``ED25519 PRIVATE KEY`` (PKCS#8 DER), ``PRIVATE KEY`` (PKCS#8),
``RSA PRIVATE KEY`` (PKCS#1) and ``EC PRIVATE KEY`` (SEC1); unencrypted only.

Every key gets a fixed set of algorithms, chosen by its type and never by a token:
Ed25519 → ``EdDSA``; RSA (≥ 2048 bits) → ``RS256``, ``PS256``; EC P-256 → ``ES256``; P-384 → ``ES384``.
``none`` and HMAC are never allowed. Other key types and curves are refused at load time.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from apiproxy.auth.errors import KeyFormatError

PublicKey = ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey
PrivateKey = ed25519.Ed25519PrivateKey | rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey

MIN_RSA_BITS: Final = 2048
#: The algorithms this project will ever verify or sign with.
SUPPORTED_ALGORITHMS: Final = frozenset({"EdDSA", "RS256", "PS256", "ES256", "ES384"})

_EC_ALGORITHMS: Final[Mapping[str, str]] = {"secp256r1": "ES256", "secp384r1": "ES384"}
_JWK_CURVES: Final[Mapping[str, ec.EllipticCurve]] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}
_EC_COORDINATE_BYTES: Final[Mapping[str, int]] = {"P-256": 32, "P-384": 48}

_PEM_BLOCK = re.compile(
    r"-----BEGIN ([A-Z0-9 ]+)-----\s*(.*?)\s*-----END \1-----",
    re.DOTALL,
)
_B64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A trusted public key with the algorithms pinned for it and, from a JWKS, its ``kid``."""

    key: PublicKey
    algorithms: frozenset[str]
    kid: str | None = None

    @property
    def kind(self) -> str:
        """``Ed25519``, ``RSA-<bits>`` or ``EC-<curve>``; for messages."""
        if isinstance(self.key, ed25519.Ed25519PublicKey):
            return "Ed25519"
        if isinstance(self.key, rsa.RSAPublicKey):
            return f"RSA-{self.key.key_size}"
        return f"EC-{self.key.curve.name}"


def algorithms_for(key: PublicKey | PrivateKey) -> tuple[str, ...]:
    """The JWS algorithms pinned for a key type; raises :class:`KeyFormatError` for anything else."""
    if isinstance(key, ed25519.Ed25519PublicKey | ed25519.Ed25519PrivateKey):
        return ("EdDSA",)
    if isinstance(key, rsa.RSAPublicKey | rsa.RSAPrivateKey):
        if key.key_size < MIN_RSA_BITS:
            raise KeyFormatError(f"RSA key of {key.key_size} bits is too small (minimum {MIN_RSA_BITS})")
        return ("RS256", "PS256")
    if isinstance(key, ec.EllipticCurvePublicKey | ec.EllipticCurvePrivateKey):
        alg = _EC_ALGORITHMS.get(key.curve.name)
        if alg is None:
            raise KeyFormatError(f"EC curve {key.curve.name} is not supported (use P-256 or P-384)")
        return (alg,)
    raise KeyFormatError(f"key type {type(key).__name__} is not supported (Ed25519, RSA or EC only)")


def verification_key(key: PublicKey, *, kid: str | None = None, alg: str | None = None) -> VerificationKey:
    """Wrap ``key`` with its pinned algorithms; ``alg`` (a JWK's ``alg``) narrows them to one."""
    pinned = algorithms_for(key)
    if alg is not None:
        if alg not in pinned:
            raise KeyFormatError(f"alg {alg!r} does not fit a {type(key).__name__} key (allowed: {pinned})")
        pinned = (alg,)
    return VerificationKey(key=key, algorithms=frozenset(pinned), kid=kid)


def _pem_blocks(data: bytes | str) -> list[tuple[str, bytes]]:
    text = data.decode("ascii", "replace") if isinstance(data, bytes) else data
    blocks: list[tuple[str, bytes]] = []
    for match in _PEM_BLOCK.finditer(text):
        label, body = match.group(1), re.sub(r"\s+", "", match.group(2))
        if ":" in match.group(2):
            raise KeyFormatError(f"PEM block {label!r} has headers (encrypted keys are not supported)")
        try:
            der = base64.b64decode(body, validate=True)
        except binascii.Error as exc:
            raise KeyFormatError(f"PEM block {label!r} is not valid base64") from exc
        blocks.append((label, der))
    if not blocks:
        raise KeyFormatError("no PEM block found")
    return blocks


def _single_block(data: bytes | str) -> tuple[str, bytes]:
    blocks = _pem_blocks(data)
    if len(blocks) != 1:
        raise KeyFormatError(f"expected one PEM block, found {len(blocks)}")
    return blocks[0]


def load_public_key(data: bytes | str) -> PublicKey:
    """Load one public key from PEM, accepting Deckhouse's ``ED25519 PUBLIC KEY`` label."""
    label, der = _single_block(data)
    if label not in {"PUBLIC KEY", "ED25519 PUBLIC KEY", "RSA PUBLIC KEY", "EC PUBLIC KEY"}:
        raise KeyFormatError(f"PEM label {label!r} is not a public key")
    try:
        key = serialization.load_der_public_key(der)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"PEM block {label!r} does not hold a readable public key") from exc
    if not isinstance(key, PublicKey):
        raise KeyFormatError(f"key type {type(key).__name__} is not supported (Ed25519, RSA or EC only)")
    if label == "ED25519 PUBLIC KEY" and not isinstance(key, ed25519.Ed25519PublicKey):
        raise KeyFormatError(f"PEM label {label!r} holds a {type(key).__name__}")
    algorithms_for(key)
    return key


def load_public_key_pem(data: bytes | str) -> VerificationKey:
    """:func:`load_public_key` wrapped as a :class:`VerificationKey` (no ``kid``)."""
    return verification_key(load_public_key(data))


def load_private_key(data: bytes | str) -> PrivateKey:
    """Load one unencrypted private key from PEM, accepting ``ED25519 PRIVATE KEY`` (PKCS#8 DER)."""
    label, der = _single_block(data)
    if label not in {"PRIVATE KEY", "ED25519 PRIVATE KEY", "RSA PRIVATE KEY", "EC PRIVATE KEY"}:
        raise KeyFormatError(f"PEM label {label!r} is not an unencrypted private key")
    try:
        key = serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError) as exc:
        raise KeyFormatError(f"PEM block {label!r} does not hold a readable private key") from exc
    if not isinstance(key, PrivateKey):
        raise KeyFormatError(f"key type {type(key).__name__} is not supported (Ed25519, RSA or EC only)")
    algorithms_for(key)
    return key


def public_key_pem(key: PublicKey, *, deckhouse: bool = False) -> bytes:
    """PKIX PEM of ``key``; with ``deckhouse=True`` an Ed25519 key gets the ``ED25519 PUBLIC KEY`` label."""
    pem = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    if deckhouse and isinstance(key, ed25519.Ed25519PublicKey):
        pem = pem.replace(b" PUBLIC KEY-----", b" ED25519 PUBLIC KEY-----")
    return pem


# --- JWK / JWKS ---------------------------------------------------------------------------------------


def b64url_decode(value: str) -> bytes:
    """Strict, canonical, unpadded base64url (RFC 7515 §2 and appendix C); raises ``ValueError``.

    Canonical: the URL-safe alphabet only, no ``=`` padding, no length of 1 mod 4, and the unused low
    bits of the last character zero. Without that last rule up to 16 spellings decode to the same bytes,
    so two different token strings would carry one signature (and a cache keyed by the string would see
    two tokens). Re-encoding and comparing is the proof: exactly one string encodes given bytes."""
    if not _B64URL.fullmatch(value) or len(value) % 4 == 1:
        raise ValueError("not unpadded base64url")
    data = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
    if b64url_encode(data) != value:
        raise ValueError("not canonical base64url (unused bits of the last character are set)")
    return data


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise KeyFormatError(f"JWK member {name!r} is missing or not a string")
    try:
        return b64url_decode(value)
    except ValueError as exc:
        raise KeyFormatError(f"JWK member {name!r} is not base64url") from exc


def _optional_str(jwk: Mapping[str, Any], name: str) -> str | None:
    value = jwk.get(name)
    if value is not None and not isinstance(value, str):
        raise KeyFormatError(f"JWK member {name!r} is not a string")
    return value


def load_jwk(jwk: Mapping[str, Any]) -> VerificationKey:
    """One public JWK (RFC 7517/7518/8037) → :class:`VerificationKey`. Private members are refused."""
    if not isinstance(jwk, Mapping):
        raise KeyFormatError("JWK is not a JSON object")
    if any(name in jwk for name in ("d", "p", "q", "dp", "dq", "qi", "k")):
        raise KeyFormatError("JWK contains private or symmetric key material; publish public keys only")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise KeyFormatError(f"JWK use {use!r} is not 'sig'")
    kid = _optional_str(jwk, "kid")
    alg = _optional_str(jwk, "alg")
    kty = jwk.get("kty")
    key: PublicKey
    try:
        if kty == "OKP":
            if jwk.get("crv") != "Ed25519":
                raise KeyFormatError(f"OKP curve {jwk.get('crv')!r} is not supported (Ed25519 only)")
            key = ed25519.Ed25519PublicKey.from_public_bytes(_member(jwk, "x"))
        elif kty == "RSA":
            n = int.from_bytes(_member(jwk, "n"), "big")
            e = int.from_bytes(_member(jwk, "e"), "big")
            key = rsa.RSAPublicNumbers(e, n).public_key()
        elif kty == "EC":
            crv = jwk.get("crv")
            curve = _JWK_CURVES.get(crv) if isinstance(crv, str) else None
            if curve is None or not isinstance(crv, str):
                raise KeyFormatError(f"EC curve {crv!r} is not supported (P-256 or P-384)")
            x, y = _member(jwk, "x"), _member(jwk, "y")
            if len(x) != _EC_COORDINATE_BYTES[crv] or len(y) != _EC_COORDINATE_BYTES[crv]:
                raise KeyFormatError(f"EC coordinates have the wrong length for {crv}")
            numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve)
            key = numbers.public_key()
        else:
            raise KeyFormatError(f"JWK kty {kty!r} is not supported (OKP, RSA or EC)")
    except ValueError as exc:
        if isinstance(exc, KeyFormatError):
            raise
        raise KeyFormatError(f"JWK ({kty}) is not a valid public key: {exc}") from exc
    return verification_key(key, kid=kid, alg=alg)


def parse_jwks(data: bytes | str) -> list[tuple[Mapping[str, Any], VerificationKey]]:
    """Parse a JWKS document; returns each raw JWK object with its loaded key, in document order."""
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise KeyFormatError(f"JWKS is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeyFormatError('JWKS must be a JSON object with a "keys" array')
    result: list[tuple[Mapping[str, Any], VerificationKey]] = []
    for index, jwk in enumerate(doc["keys"]):
        try:
            result.append((jwk, load_jwk(jwk)))
        except KeyFormatError as exc:
            kid = jwk.get("kid") if isinstance(jwk, dict) else None
            raise KeyFormatError(f"JWKS key #{index} (kid {kid!r}): {exc}") from exc
    return result

"""Our addition to ``public.json`` during a key rotation: the next public key and the proof for it.

``authnKeyPubNext`` is the key a cluster is rotating to, ``authnKeyPubNextProof`` the current key's
signature over it (base64url, Ed25519, over a fixed context string and the next key's SubjectPublicKeyInfo
DER). A peer that pinned the current key follows the next one only with a valid proof, so whoever serves
the metadata endpoint cannot slip in a key of theirs. Deckhouse's readers ignore both members.

The exporter (which publishes the pair) and the controller (which makes the proof, and checks the pair of
its peers) share this module, so the two sides cannot disagree on a byte of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.errors import KeyFormatError
from apiproxy.auth.keys import b64url_decode, b64url_encode, load_public_key, public_key_pem

FIELD_NEXT_KEY: Final = "authnKeyPubNext"
FIELD_NEXT_PROOF: Final = "authnKeyPubNextProof"
#: Where the pair is kept during a rotation: keys of the keypair Secret (``d8-remote-authn-keypair``),
#: written by ``apiproxy keys rotate``, read by the exporter.
KEYPAIR_ENTRY_NEXT_PUBLIC: Final = "next-pub.pem"
KEYPAIR_ENTRY_NEXT_PROOF: Final = "next-proof"
_CONTEXT: Final = b"apiproxy key rotation\x00"


class NextKeyError(ValueError):
    """A next key that must not be published or followed; the message says why (never key bytes)."""


def _spki(key: ed25519.Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def make_proof(current: ed25519.Ed25519PrivateKey, next_public: ed25519.Ed25519PublicKey) -> str:
    """The current key's signature over the next public key, as published in ``authnKeyPubNextProof``."""
    return b64url_encode(current.sign(_CONTEXT + _spki(next_public)))


def _ed25519_public(pem: str | bytes, which: str) -> ed25519.Ed25519PublicKey:
    try:
        key = load_public_key(pem)
    except KeyFormatError as exc:
        raise NextKeyError(f"{which} key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise NextKeyError(f"{which} key is not Ed25519 (rotation proofs are Ed25519 signatures)")
    return key


@dataclass(frozen=True, slots=True)
class NextKey:
    """A next key already checked against the current one; ``public_key`` is in Deckhouse's PEM form."""

    public_key: str
    proof: str

    def to_json(self) -> dict[str, str]:
        return {FIELD_NEXT_KEY: self.public_key, FIELD_NEXT_PROOF: self.proof}


def check_next_key(current_pem: str | bytes, next_pem: str | bytes, proof: str | bytes) -> NextKey:
    """The pair as it is published, or :class:`NextKeyError` when ``proof`` is not ``current``'s signature
    over ``next`` (or anything is malformed): fail closed, a key nobody vouched for is never published."""
    current = _ed25519_public(current_pem, "current")
    nxt = _ed25519_public(next_pem, "next")
    text = proof.decode("ascii", "replace") if isinstance(proof, bytes) else proof
    text = text.strip()
    try:
        current.verify(b64url_decode(text), _CONTEXT + _spki(nxt))
    except (InvalidSignature, ValueError):
        raise NextKeyError("the proof is not the current key's signature over the next key") from None
    return NextKey(public_key_pem(nxt, deckhouse=True).decode("ascii"), text)


def verify_proof(current_pem: str, next_pem: str, proof: str) -> bool:
    """True when ``proof`` is ``current``'s signature over ``next``; anything malformed is False."""
    try:
        check_next_key(current_pem, next_pem, proof)
    except NextKeyError:
        return False
    return True

"""Zero-downtime rotation of our token-signing key, and the proof that lets peers follow it.

Deckhouse has no rotation. Ours, in three phases after ``apiproxy keys rotate`` puts a next key into the
keypair Secret (``next-priv.pem``, ``next-pub.pem``, ``next-proof``, annotation
``apiproxy.io/rotation-started``):

1. **publishing** (``--rotation-publish-period``): tokens are still signed with the current key; the next
   public key is published (``public.json`` gains ``authnKeyPubNext`` and ``authnKeyPubNextProof``, which
   Deckhouse's readers ignore) and peers' trust stores accept it beside the current one;
2. **switched** (for the longest token lifetime): new tokens are signed with the next key (remote secrets
   are re-minted, their old tokens no longer being ours); old tokens still verify with the current key;
3. **done**: the next key becomes ``priv.pem``/``pub.pem`` and the ``next-*`` entries go.

The proof is the current key's signature over the next key: a peer that pinned our current key accepts
the next one only with it, so whoever controls the metadata endpoint cannot slip in a key of theirs
(pinning stays meaningful across rotations).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Final

from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.errors import KeyFormatError
from apiproxy.auth.keys import PrivateKey, load_private_key, public_key_pem
from apiproxy.metadata.nextkey import KEYPAIR_ENTRY_NEXT_PROOF, KEYPAIR_ENTRY_NEXT_PUBLIC, check_next_key
from apiproxy.metadata.nextkey import make_proof as make_proof  # one implementation, kept importable here
from apiproxy.metadata.nextkey import verify_proof as verify_proof
from apiproxy.multicluster.keypair import ROTATION_ANNOTATION, keypair_data, private_key_pem

STARTED_ANNOTATION: Final = ROTATION_ANNOTATION
#: Keys of the keypair Secret during a rotation (the exporter publishes the last two).
NEXT_PRIVATE_KEY: Final = "next-priv.pem"
NEXT_PUBLIC_KEY: Final = KEYPAIR_ENTRY_NEXT_PUBLIC
NEXT_PROOF: Final = KEYPAIR_ENTRY_NEXT_PROOF

STEADY, PUBLISHING, SWITCHED, DONE = "steady", "publishing", "switched", "done"


@dataclass(frozen=True, slots=True)
class Keyring:
    current: ed25519.Ed25519PrivateKey
    next: ed25519.Ed25519PrivateKey | None = None
    started: float | None = None

    @classmethod
    def from_secret(cls, data: Mapping[str, bytes], annotations: Mapping[str, str] | None) -> Keyring:
        current = _ed25519(data["priv.pem"])
        nxt = _ed25519(data[NEXT_PRIVATE_KEY]) if NEXT_PRIVATE_KEY in data else None
        started = None
        raw = (annotations or {}).get(STARTED_ANNOTATION)
        if nxt is not None and raw:
            try:
                started = datetime.fromisoformat(raw.replace("Z", "+00:00")).timestamp()
            except ValueError:
                started = None
        return cls(current, nxt if started is not None else None, started)

    def phase(self, now: float, *, publish_period: float, token_lifetime: float) -> str:
        if self.next is None or self.started is None:
            return STEADY
        if now < self.started + publish_period:
            return PUBLISHING
        if now < self.started + publish_period + token_lifetime:
            return SWITCHED
        return DONE

    def signing_key(self, phase: str) -> PrivateKey:
        return self.next if phase in (SWITCHED, DONE) and self.next is not None else self.current

    def secret_data(self) -> dict[str, bytes]:
        data = keypair_data(self.current)
        if self.next is not None:
            data[NEXT_PRIVATE_KEY] = private_key_pem(self.next)
            data[NEXT_PUBLIC_KEY] = keypair_data(self.next)["pub.pem"]
            data[NEXT_PROOF] = make_proof(self.current, self.next.public_key()).encode("ascii")
        return data

    def promoted(self) -> Keyring:
        assert self.next is not None
        return Keyring(self.next)

    def started_annotation(self) -> str | None:
        if self.started is None:
            return None
        return datetime.fromtimestamp(int(self.started), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _ed25519(pem: bytes) -> ed25519.Ed25519PrivateKey:
    key = load_private_key(pem)
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise KeyFormatError("the keypair must be Ed25519 (Deckhouse signs EdDSA)")
    return key


def start(keyring: Keyring, now: float) -> Keyring:
    """``apiproxy keys rotate``: a fresh next key, the clock started; refused while one is under way."""
    if keyring.next is not None:
        raise ValueError("a key rotation is already under way")
    return Keyring(keyring.current, ed25519.Ed25519PrivateKey.generate(), float(int(now)))


def proof_pem_fields(keyring: Keyring) -> dict[str, str]:
    """The members the exporter adds to ``public.json`` for this keyring (none outside a rotation).

    The exporter builds the same members from the Secret's ``next-pub.pem`` and ``next-proof`` with
    :func:`apiproxy.metadata.check_next_key`; this is that function applied to the keyring itself.
    """
    if keyring.next is None:
        return {}
    data = keyring.secret_data()
    current = public_key_pem(keyring.current.public_key(), deckhouse=True)
    return check_next_key(current, data[NEXT_PUBLIC_KEY], data[NEXT_PROOF]).to_json()

"""Key rotation: the proof, the phases, which key signs, and peers following a vouched-for key."""

from __future__ import annotations

import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.keys import public_key_pem
from apiproxy.auth.truststore import parse_trust_json
from apiproxy.multicluster import conditions as cond
from apiproxy.multicluster import rotation, tokens
from apiproxy.multicluster.model import parse_spec
from apiproxy.multicluster.outputs import trust_store
from apiproxy.multicluster.reconcile import Context, reconcile
from tests.multicluster.peers import ENDPOINT, NOW, OUR_UUID, PEER_UUID, Clock, ScriptedPeer, public_doc

DAY = 86400.0


def pem(key: ed25519.Ed25519PrivateKey) -> str:
    return public_key_pem(key.public_key(), deckhouse=True).decode()


def test_the_current_key_vouches_for_the_next_one_only() -> None:
    current, nxt, other = (ed25519.Ed25519PrivateKey.generate() for _ in range(3))
    proof = rotation.make_proof(current, nxt.public_key())
    assert rotation.verify_proof(pem(current), pem(nxt), proof)
    assert not rotation.verify_proof(pem(current), pem(other), proof)
    assert not rotation.verify_proof(pem(other), pem(nxt), proof)
    assert not rotation.verify_proof(pem(current), pem(nxt), proof[:-2] + "AA")
    assert not rotation.verify_proof(pem(current), "junk", proof)
    assert not rotation.verify_proof(pem(current), pem(nxt), "!!")


def test_phases_and_signing_keys() -> None:
    ring = rotation.start(rotation.Keyring(ed25519.Ed25519PrivateKey.generate()), NOW)
    assert ring.next is not None
    phase = lambda t: ring.phase(t, publish_period=600, token_lifetime=30 * DAY)  # noqa: E731
    assert phase(NOW) == rotation.PUBLISHING and ring.signing_key(phase(NOW)) is ring.current
    assert phase(NOW + 600) == rotation.SWITCHED and ring.signing_key(phase(NOW + 600)) is ring.next
    assert phase(NOW + 600 + 30 * DAY) == rotation.DONE
    assert ring.promoted().current is ring.next and ring.promoted().next is None
    assert rotation.Keyring(ring.current).phase(NOW, publish_period=1, token_lifetime=1) == rotation.STEADY
    with pytest.raises(ValueError, match="under way"):
        rotation.start(ring, NOW)


def test_keyring_round_trips_through_the_secret() -> None:
    ring = rotation.start(rotation.Keyring(ed25519.Ed25519PrivateKey.generate()), NOW)
    data = ring.secret_data()
    assert data["priv.pem"].startswith(b"-----BEGIN ED25519 PRIVATE KEY-----")
    annotations = {rotation.STARTED_ANNOTATION: ring.started_annotation() or ""}
    back = rotation.Keyring.from_secret(data, annotations)
    assert back.started == ring.started and back.next is not None
    assert pem(back.next) == pem(ring.next)  # type: ignore[arg-type]
    assert rotation.Keyring.from_secret(data, {}).next is None, "no start time: no rotation"
    fields = rotation.proof_pem_fields(ring)
    assert rotation.verify_proof(pem(ring.current), fields["authnKeyPubNext"], fields["authnKeyPubNextProof"])


def test_trust_store_accepts_the_next_key_beside_the_current() -> None:
    from apiproxy.metadata import parse_public
    from apiproxy.multicluster.outputs import PeerState

    current, nxt = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    state = PeerState("east", parse_public(public_doc(PEER_UUID, current)), next_key=pem(nxt))
    store = parse_trust_json(trust_store([state]))
    assert len(store.clusters[PEER_UUID].keys) == 2


def rotating_doc(
    current: ed25519.Ed25519PrivateKey, nxt: ed25519.Ed25519PrivateKey, proof: str | None = None
) -> bytes:
    doc: dict[str, Any] = json.loads(public_doc(PEER_UUID, current))
    doc["authnKeyPubNext"] = pem(nxt)
    doc["authnKeyPubNextProof"] = (
        proof if proof is not None else rotation.make_proof(current, nxt.public_key())
    )
    return json.dumps(doc).encode()


async def test_a_peer_rotation_is_followed_without_an_administrator() -> None:
    our = ed25519.Ed25519PrivateKey.generate()
    ctx = Context(OUR_UUID, our, 30 * DAY, Clock())
    spec = parse_spec("east", {"metadataEndpoint": ENDPOINT})
    current, nxt = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    first = await reconcile(spec, None, ctx, ScriptedPeer.healthy(current))
    peer = ScriptedPeer.healthy(current)
    peer.answers["/metadata/public/public.json"] = rotating_doc(current, nxt)
    publishing = await reconcile(spec, first.status, ctx, peer)
    assert publishing.ok and publishing.peer.next_key == pem(nxt)
    assert publishing.status["pinnedIdentity"]["nextKeyFingerprint"]
    promoted = ScriptedPeer.healthy(nxt)  # the peer finished: the next key is now its only key
    after = await reconcile(spec, publishing.status, ctx, promoted)
    assert after.ok, after.status["conditions"]
    assert after.peer.public is not None and after.peer.public.authn_key_pub == pem(nxt)


async def test_a_next_key_without_a_valid_proof_is_ignored_and_cannot_take_over() -> None:
    our = ed25519.Ed25519PrivateKey.generate()
    ctx = Context(OUR_UUID, our, 30 * DAY, Clock())
    spec = parse_spec("east", {"metadataEndpoint": ENDPOINT})
    current, attacker = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    first = await reconcile(spec, None, ctx, ScriptedPeer.healthy(current))
    peer = ScriptedPeer.healthy(current)
    forged = rotation.make_proof(attacker, attacker.public_key())
    peer.answers["/metadata/public/public.json"] = rotating_doc(current, attacker, proof=forged)
    result = await reconcile(spec, first.status, ctx, peer)
    assert result.peer.next_key is None and "nextKeyFingerprint" not in result.status["pinnedIdentity"]
    takeover = await reconcile(spec, result.status, ctx, ScriptedPeer.healthy(attacker))
    reasons = {c["type"]: c["reason"] for c in takeover.status["conditions"]}
    assert reasons[cond.PUBLIC] == "RemoteIdentityChanged"


def test_switched_tokens_are_no_longer_ours_with_the_old_key() -> None:
    ring = rotation.start(rotation.Keyring(ed25519.Ed25519PrivateKey.generate()), NOW)
    old_token = tokens.api_token(ring.current, our_uuid=OUR_UUID, peer_uuid=PEER_UUID, now=NOW, ttl=DAY)
    assert ring.next is not None
    assert tokens.inspect_own_token(old_token, ring.next, our_uuid=OUR_UUID, peer_uuid=PEER_UUID) is None

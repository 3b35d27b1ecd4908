"""Key rotation: the proof, the phases, which key signs, and peers following a vouched-for key, as our
exporter publishes it; end to end, a rotation across two controllers with not one failed request."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.keys import load_private_key, public_key_pem
from apiproxy.auth.truststore import parse_trust_json
from apiproxy.certs import make_ca, write_serving_bundle
from apiproxy.exporter.catalog import Identity
from apiproxy.exporter.derive import NextKeyInput
from apiproxy.exporter.main import RunningExporter, start_exporter
from apiproxy.exporter.metrics import ExporterMetrics
from apiproxy.exporter.settings import ExporterSettings
from apiproxy.exporter.state import ExporterState
from apiproxy.metadata import PATH_PUBLIC
from apiproxy.multicluster import conditions as cond
from apiproxy.multicluster import rotation, tokens
from apiproxy.multicluster.fetch import HTTPFetcher
from apiproxy.multicluster.main import keys_rotate
from apiproxy.multicluster.model import parse_spec
from apiproxy.multicluster.outputs import trust_store
from apiproxy.multicluster.reconcile import Context, reconcile
from tests.helpers import eventually
from tests.multicluster.conftest import NAMESPACE, Ours, Peer, StartController
from tests.multicluster.peers import (
    ENDPOINT,
    NOW,
    OUR_UUID,
    PEER_UUID,
    ROOT_CA,
    Clock,
    ScriptedPeer,
    public_doc,
)

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


def exported_public(current: ed25519.Ed25519PrivateKey, nxt: ed25519.Ed25519PrivateKey) -> bytes:
    """``public.json`` mid-rotation exactly as our exporter renders it from the keypair Secret's entries."""
    identity = Identity(PEER_UUID, PEER_UUID, "api.peer.example:4443", "network-x", "cluster.local")
    state = ExporterState(identity, ExporterMetrics(), ["authn_key", "authn_next", "root_ca"])
    data = rotation.Keyring(current, nxt, NOW).secret_data()
    state.set_values(
        {"authn_key": pem(current), "authn_next": NextKeyInput(data["next-pub.pem"], data["next-proof"])}
    )
    state.set_value("root_ca", ROOT_CA)
    document = state.catalog.get(PATH_PUBLIC)
    assert document is not None and document.status == 200
    return document.body


def forged_doc(current: ed25519.Ed25519PrivateKey, nxt: ed25519.Ed25519PrivateKey, proof: str) -> bytes:
    """What our exporter never publishes (it checks the proof first): a hostile endpoint's document."""
    doc: dict[str, Any] = json.loads(public_doc(PEER_UUID, current))
    doc["authnKeyPubNext"] = pem(nxt)
    doc["authnKeyPubNextProof"] = proof
    return json.dumps(doc).encode()


async def test_a_peer_rotation_is_followed_without_an_administrator() -> None:
    our = ed25519.Ed25519PrivateKey.generate()
    ctx = Context(OUR_UUID, our, 30 * DAY, Clock())
    spec = parse_spec("east", {"metadataEndpoint": ENDPOINT})
    current, nxt = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    first = await reconcile(spec, None, ctx, ScriptedPeer.healthy(current))
    peer = ScriptedPeer.healthy(current)
    peer.answers["/metadata/public/public.json"] = exported_public(current, nxt)
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
    peer.answers["/metadata/public/public.json"] = forged_doc(current, attacker, forged)
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


# --- end to end: our exporter publishes, the peer follows, a client never fails -------------------------


@dataclass
class Reads:
    """A client reading through the peer's proxy with whatever token our controllers last wrote."""

    ok: int = 0
    failed: list[str] = field(default_factory=list)


async def read_forever(ours: Ours, peer: Peer, reads: Reads, stop: asyncio.Event) -> None:
    trust = ssl.create_default_context(cadata=peer.ca_pem)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session:
        while not stop.is_set():
            token = remote_token(ours, peer)
            if token is None:
                await asyncio.sleep(0.02)  # not established yet: nothing to read with
                continue
            try:
                url = f"https://{peer.api_host}/api/v1/namespaces/default/pods"
                async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                    await resp.read()
                    if resp.status == 200:
                        reads.ok += 1
                    else:
                        reads.failed.append(f"HTTP {resp.status}")
            except aiohttp.ClientError as exc:
                reads.failed.append(type(exc).__name__)


def remote_token(ours: Ours, peer: Peer) -> str | None:
    secret = ours.secret("istio-remote-secret-east")
    if secret is None:
        return None
    config = yaml.safe_load(base64.b64decode(secret["data"][peer.uuid]))
    token: str = config["users"][0]["user"]["token"]
    return token


async def follow_forever(
    our_endpoint: str, our_ca: str, peer: Peer, peer_key: ed25519.Ed25519PrivateKey, stop: asyncio.Event
) -> dict[str, Any]:
    """The peer's side of the federation: its controller's reconcile of the resource pointing at us, over
    HTTPS against our real exporter, writing the trust file its proxy reads (what its controller's trust
    Secret becomes). Returns the last status."""
    spec = parse_spec("ours", {"metadataEndpoint": our_endpoint, "metadata": {"ca": our_ca}})
    ctx = Context(peer.uuid, peer_key, 30 * DAY)
    fetcher = HTTPFetcher(timeout=5.0)
    status: dict[str, Any] = {}
    written = b""
    try:
        while not stop.is_set():
            result = await reconcile(spec, status, ctx, fetcher)
            status = result.status
            content = trust_store([result.peer])
            if result.peer.public is not None and content != written:
                staged = peer.sandbox.trust_file.with_suffix(".new")
                staged.write_bytes(content)
                staged.replace(peer.sandbox.trust_file)
                written = content
            await asyncio.sleep(0.1)  # the peer controller's resync
    finally:
        await fetcher.close()
    return status


@dataclass
class OurExporter:
    endpoint: str
    ca_pem: str
    running: RunningExporter

    async def public(self) -> dict[str, Any]:
        trust = ssl.create_default_context(cadata=self.ca_pem)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session,
            session.get(self.endpoint + "public/public.json") as resp,
        ):
            assert resp.status == 200
            doc: dict[str, Any] = json.loads(await resp.read())
            return doc


async def start_our_exporter(
    ours: Ours, peer: Peer, follower_key: ed25519.Ed25519PrivateKey, workdir: Path
) -> OurExporter:
    """Our ``apiproxy exporter``: the keypair from our (simulated) cluster's Secret, the rest from files."""
    workdir.mkdir()
    ca = make_ca("our exporter CA")
    serving = write_serving_bundle(workdir, "exporter", ca=ca, names=["127.0.0.1"])
    root = make_ca("our mesh root").cert_pem.decode()
    (workdir / "root.pem").write_text(root)
    peer_root = peer.files["root"].read_text()
    trust = {peer.uuid: {"clusterUUID": peer.uuid, "authnKeyPub": pem(follower_key), "rootCA": peer_root}}
    (workdir / "trust.json").write_text(json.dumps(trust))
    (workdir / "gateways.json").write_text(json.dumps([{"address": "192.0.2.10", "port": 15443}]))
    settings = ExporterSettings(
        cluster_uuid=OUR_UUID,
        api_host="127.0.0.1:1",  # our own proxy is not part of this test
        namespace=NAMESPACE,
        kubeconfig=ours.kubeconfig,
        root_ca_file=workdir / "root.pem",
        trust_file=workdir / "trust.json",
        ingress_gateways_file=workdir / "gateways.json",
        tls_cert_file=serving.cert_file,
        tls_private_key_file=serving.key_file,
        listen="127.0.0.1:0",
        metrics_listen="",
        audit_log="",
        reload_interval=0.1,
    )
    running = await start_exporter(settings, backoff=(0.05, 0.5))
    await eventually(lambda: not running.state.not_ready(), timeout=30)
    return OurExporter(f"https://127.0.0.1:{running.port}/metadata/", ca.cert_pem.decode(), running)


async def test_a_rotation_across_two_controllers_followed_by_the_peer_with_no_failed_request(
    ours: Ours, peer: Peer, start_controller: StartController, tmp_path: Path
) -> None:
    """Our two controllers rotate our key; our real exporter publishes the next key with its proof; the
    peer's reconcile follows it into its proxy's trust file; a client reads through the peer's proxy with
    the remote secret's token the whole time, and not one request fails."""
    follower_key = ed25519.Ed25519PrivateKey.generate()
    exporter = await start_our_exporter(ours, peer, follower_key, tmp_path / "our-exporter")
    stop = asyncio.Event()
    follower = asyncio.create_task(
        follow_forever(exporter.endpoint, exporter.ca_pem, peer, follower_key, stop)
    )
    reads = Reads()
    reader = asyncio.create_task(read_forever(ours, peer, reads, stop))
    first, second = await start_controller(), await start_controller()
    try:
        ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})

        async def reading_on(minimum: int = 5) -> None:
            """A few more successful reads from here on (each phase is read through, not skipped)."""
            target = reads.ok + minimum
            await eventually(lambda: reads.ok >= target or reads.failed, timeout=30)

        await reading_on()
        old_token = remote_token(ours, peer)
        assert old_token is not None

        # 1. publishing: the next key is in the Secret, our exporter publishes it, the peer trusts it.
        assert await asyncio.to_thread(keys_rotate, str(ours.kubeconfig), NAMESPACE) == 0
        keypair = ours.secret("d8-remote-authn-keypair")
        assert keypair is not None
        next_key = load_private_key(base64.b64decode(keypair["data"]["next-priv.pem"]))
        assert isinstance(next_key, ed25519.Ed25519PrivateKey)
        next_pub = pem(next_key)

        async def published() -> bool:
            return (await exporter.public()).get("authnKeyPubNext") == next_pub

        await eventually(published, timeout=30)
        doc = await exporter.public()
        assert rotation.verify_proof(doc["authnKeyPub"], doc["authnKeyPubNext"], doc["authnKeyPubNextProof"])
        assert doc["authnKeyPub"] == pem(ours.key)

        async def peer_accepts(key: ed25519.Ed25519PrivateKey) -> bool:
            token = tokens.api_token(key, our_uuid=OUR_UUID, peer_uuid=peer.uuid, now=time.time(), ttl=600)
            trust = ssl.create_default_context(cadata=peer.ca_pem)
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session,
                session.get(
                    f"https://{peer.api_host}/api", headers={"Authorization": f"Bearer {token}"}
                ) as r,
            ):
                return r.status == 200

        await eventually(lambda: peer_accepts(next_key), timeout=30)
        assert remote_token(ours, peer) == old_token, "still publishing: tokens are not switched yet"
        await reading_on()

        # 2. switched: the publish period is over (the clock of the rotation is its annotation).
        started = datetime.fromtimestamp(time.time() - 601, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        annotate_rotation(ours, started)

        def signed_by_next() -> bool:
            token = remote_token(ours, peer)
            assert token is not None
            found = tokens.inspect_own_token(token, next_key, our_uuid=OUR_UUID, peer_uuid=peer.uuid)
            return found is not None

        await eventually(signed_by_next, timeout=30)
        await reading_on()
        assert await peer_accepts(ours.key), "tokens signed before the switch still verify"

        # 3. done: as if the longest token lifetime had passed; one controller promotes the next key.
        annotate_rotation(ours, "2020-01-01T00:00:00Z")

        async def promoted_and_published() -> bool:
            doc = await exporter.public()
            return doc["authnKeyPub"] == next_pub and "authnKeyPubNext" not in doc

        await eventually(promoted_and_published, timeout=30)
        await eventually(lambda: not_accepted(peer_accepts, ours.key), timeout=30)
        await reading_on()
        await eventually(
            lambda: all(
                run.controller is not None
                and run.controller.key is not None
                and pem(run.controller.key) == next_pub  # type: ignore[arg-type]
                for run in (first, second)
            ),
            timeout=30,
        )
    finally:
        stop.set()
        status = await follower
        await reader
        await exporter.running.stop()
    assert reads.failed == [], f"{len(reads.failed)} failed of {reads.ok + len(reads.failed)}"
    assert status["pinnedIdentity"]["clusterUUID"] == OUR_UUID
    trusted = json.loads(peer.sandbox.trust_file.read_text())[OUR_UUID]
    assert trusted["authnKeyPub"] == next_pub and "authnKeyPubNext" not in trusted
    print(f"rotation read through: {reads.ok} requests, none failed")


async def not_accepted(
    accepts: Callable[[ed25519.Ed25519PrivateKey], Awaitable[bool]], key: ed25519.Ed25519PrivateKey
) -> bool:
    return not await accepts(key)


def annotate_rotation(ours: Ours, started: str) -> None:
    ours.store.patch(
        "secrets", NAMESPACE, "d8-remote-authn-keypair",
        {"metadata": {"annotations": {rotation.STARTED_ANNOTATION: started}}},
    )  # fmt: skip

"""A key rotation seen by the exporter: the next key and its proof are published beside the current key,
checked first, rendered once per change, and refused (logged, counted, not published) without a valid
proof, from the keypair Secret and from files alike."""

from __future__ import annotations

import base64
import json
import logging
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.keys import load_private_key, public_key_pem
from apiproxy.exporter.catalog import Identity
from apiproxy.exporter.derive import NextKeyInput
from apiproxy.exporter.main import ConfigurationError, RunningExporter, identity_of
from apiproxy.exporter.metrics import ExporterMetrics
from apiproxy.exporter.settings import ExporterSettings
from apiproxy.exporter.state import ExporterState
from apiproxy.metadata import PATH_PUBLIC, make_proof, parse_public, verify_proof
from apiproxy.multicluster import rotation
from tests.exporter import cluster as c
from tests.exporter.conftest import Cluster, Start
from tests.helpers import eventually as _eventually

LOCAL_KEY = load_private_key((c.EXPORTER / "local-priv.pem").read_bytes())
assert isinstance(LOCAL_KEY, ed25519.Ed25519PrivateKey)
GOLDEN_PUBLIC = (c.GOLDEN / "public.json").read_bytes()
IDENTITY = Identity(c.LOCAL_UUID, c.LOCAL_UUID, c.API_HOST, "network-x", "cluster.local")


async def eventually(probe: Any, *, timeout: float = 30.0) -> Any:
    return await _eventually(probe, timeout=timeout)


def pem(key: ed25519.Ed25519PrivateKey) -> str:
    return public_key_pem(key.public_key(), deckhouse=True).decode()


def next_input(current: ed25519.Ed25519PrivateKey, nxt: ed25519.Ed25519PrivateKey) -> NextKeyInput:
    return NextKeyInput(pem(nxt).encode(), make_proof(current, nxt.public_key()).encode())


def public_doc(state: ExporterState) -> dict[str, Any]:
    document = state.catalog.get(PATH_PUBLIC)
    assert document is not None and document.status == 200, document
    doc: dict[str, Any] = json.loads(document.body)
    return doc


def loaded_state() -> ExporterState:
    state = ExporterState(IDENTITY, ExporterMetrics(), ["authn_key", "authn_next", "root_ca"])
    state.set_values({"authn_key": pem(LOCAL_KEY), "authn_next": None})
    state.set_value("root_ca", c.ROOT_RSA)
    return state


def errors(metrics: ExporterMetrics) -> float:
    value: float = metrics.source_errors.labels("authn_next")._value.get()
    return value


# --- the state, pure -------------------------------------------------------------------------------------


def test_a_vouched_next_key_follows_deckhouses_members_unchanged() -> None:
    state = loaded_state()
    steady = state.catalog.get(PATH_PUBLIC)
    assert steady is not None
    renders = state.metrics.renders._value.get()
    nxt = ed25519.Ed25519PrivateKey.generate()
    state.set_value("authn_next", next_input(LOCAL_KEY, nxt))
    doc = public_doc(state)
    assert list(doc) == ["clusterUUID", "authnKeyPub", "rootCA", "authnKeyPubNext", "authnKeyPubNextProof"]
    assert doc["authnKeyPubNext"] == pem(nxt)
    assert verify_proof(doc["authnKeyPub"], doc["authnKeyPubNext"], doc["authnKeyPubNextProof"])
    assert parse_public(json.dumps(doc)) == parse_public(steady.body), "Deckhouse readers see no change"
    assert state.metrics.renders._value.get() == renders + 1
    state.set_value("authn_next", next_input(LOCAL_KEY, nxt))  # the same again: nothing to render
    assert state.metrics.renders._value.get() == renders + 1
    state.set_value("authn_next", None)
    assert state.catalog.get(PATH_PUBLIC) == steady


@pytest.mark.parametrize("case", ["other signer", "other key", "corrupt proof", "not a key", "RSA key"])
def test_a_next_key_without_a_valid_proof_is_not_published_logged_once_and_counted(
    case: str, caplog: pytest.LogCaptureFixture
) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    state = loaded_state()
    steady = state.catalog.get(PATH_PUBLIC)
    nxt, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    good = next_input(LOCAL_KEY, nxt)
    bad = {
        "other signer": next_input(other, nxt),
        "other key": NextKeyInput(pem(other).encode(), good.proof),
        "corrupt proof": NextKeyInput(good.public_pem, good.proof[:-3] + b"AAA"),
        "not a key": NextKeyInput(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", good.proof
        ),
        "RSA key": NextKeyInput(
            public_key_pem(rsa.generate_private_key(65537, 2048).public_key()), good.proof
        ),
    }[case]
    with caplog.at_level(logging.ERROR, "apiproxy.exporter"):
        state.set_value("authn_next", bad)
        state.set_value("root_ca", c.ROOT_RSA)  # unrelated updates do not repeat the complaint
    assert state.catalog.get(PATH_PUBLIC) == steady
    assert errors(state.metrics) == 1
    lines = [r.getMessage() for r in caplog.records if "next key" in r.getMessage()]
    assert len(lines) == 1, lines
    assert good.proof.decode() not in lines[0] and "BEGIN" not in lines[0]
    assert not state.not_ready(), "a refused next key never makes the exporter unready"


def test_a_promotion_seen_half_way_is_not_a_refusal() -> None:
    """File sources change one at a time: the new current key may arrive before the next files go."""
    nxt = ed25519.Ed25519PrivateKey.generate()
    state = loaded_state()
    state.set_value("authn_next", next_input(LOCAL_KEY, nxt))
    state.set_value("authn_key", pem(nxt))
    assert "authnKeyPubNext" not in public_doc(state) and public_doc(state)["authnKeyPub"] == pem(nxt)
    assert errors(state.metrics) == 0


def test_the_controller_and_the_exporter_publish_the_same_members() -> None:
    ring = rotation.start(rotation.Keyring(LOCAL_KEY), 1_700_000_000)
    data = ring.secret_data()
    state = loaded_state()
    state.set_value("authn_next", NextKeyInput(data["next-pub.pem"], data["next-proof"]))
    doc = public_doc(state)
    assert {k: doc[k] for k in ("authnKeyPubNext", "authnKeyPubNextProof")} == rotation.proof_pem_fields(ring)


# --- from the keypair Secret ------------------------------------------------------------------------------


def rotating_secret(
    current: ed25519.Ed25519PrivateKey, nxt: ed25519.Ed25519PrivateKey | None, proof: str | None = None
) -> dict[str, Any]:
    secret = c.keypair_secret(pem(current))
    if nxt is not None:
        secret["data"]["next-pub.pem"] = c.b64(pem(nxt))
        secret["data"]["next-proof"] = c.b64(proof or make_proof(current, nxt.public_key()))
    return secret


async def fetch_public(http: aiohttp.ClientSession, exporter: RunningExporter) -> tuple[bytes, str]:
    async with http.get(f"http://127.0.0.1:{exporter.port}{PATH_PUBLIC}") as resp:
        assert resp.status == 200
        return await resp.read(), resp.headers["ETag"]


async def test_a_rotation_of_the_keypair_secret_from_publish_to_promote(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession
) -> None:
    exporter = await start(kubeconfig=cluster.kubeconfig)
    await eventually(lambda: not exporter.state.not_ready())
    body, etag = await fetch_public(http, exporter)
    assert body == GOLDEN_PUBLIC, "no rotation under way: Deckhouse's document byte for byte"
    renders = exporter.metrics.renders._value.get()

    nxt = ed25519.Ed25519PrivateKey.generate()
    cluster.store.update(rotating_secret(LOCAL_KEY, nxt))

    async def published() -> bool:
        return b"authnKeyPubNext" in (await fetch_public(http, exporter))[0]

    await eventually(published)
    body, rotating_etag = await fetch_public(http, exporter)
    doc = json.loads(body)
    assert doc["authnKeyPubNext"] == pem(nxt) and rotating_etag != etag
    assert body.startswith(GOLDEN_PUBLIC[: GOLDEN_PUBLIC.rindex(b'"\n}')]), "Deckhouse's members unchanged"
    assert exporter.metrics.renders._value.get() == renders + 1

    # Promotion: pub.pem is the next key and the next-* entries are gone, in one update of the Secret.
    cluster.store.update(rotating_secret(nxt, None))

    async def promoted() -> bool:
        return bool(json.loads((await fetch_public(http, exporter))[0])["authnKeyPub"] == pem(nxt))

    await eventually(promoted)
    assert "authnKeyPubNext" not in json.loads((await fetch_public(http, exporter))[0])
    assert exporter.metrics.renders._value.get() == renders + 2
    assert errors(exporter.metrics) == 0

    # Our own golden document again once the promoted key is rotated back (no leftovers of a rotation).
    cluster.store.update(rotating_secret(LOCAL_KEY, None))
    await eventually(lambda: fetch_public_is(http, exporter, GOLDEN_PUBLIC))


async def fetch_public_is(http: aiohttp.ClientSession, exporter: RunningExporter, body: bytes) -> bool:
    return (await fetch_public(http, exporter))[0] == body


async def test_a_forged_or_half_next_key_in_the_secret_is_refused_and_the_current_key_served(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession
) -> None:
    exporter = await start(kubeconfig=cluster.kubeconfig)
    await eventually(lambda: not exporter.state.not_ready())
    attacker = ed25519.Ed25519PrivateKey.generate()
    cluster.store.update(
        rotating_secret(LOCAL_KEY, attacker, proof=make_proof(attacker, attacker.public_key()))
    )
    await eventually(lambda: errors(exporter.metrics) == 1)
    assert (await fetch_public(http, exporter))[0] == GOLDEN_PUBLIC

    half = rotating_secret(LOCAL_KEY, ed25519.Ed25519PrivateKey.generate())
    del half["data"]["next-proof"]
    cluster.store.update(half)
    await eventually(lambda: errors(exporter.metrics) == 2)
    assert (await fetch_public(http, exporter))[0] == GOLDEN_PUBLIC
    assert not exporter.state.not_ready()


# --- from files -------------------------------------------------------------------------------------------


async def test_next_key_files_absent_present_and_promoted(
    start: Start, source_files: dict[str, Path], http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    next_pub, next_proof = tmp_path / "next-pub.pem", tmp_path / "next-proof"
    exporter = await start(
        **source_files, authn_next_public_key_file=next_pub, authn_next_proof_file=next_proof
    )
    assert not exporter.state.not_ready(), "no rotation under way: ready without the next key files"
    steady, _ = await fetch_public(http, exporter)
    assert b"authnKeyPubNext" not in steady

    nxt = ed25519.Ed25519PrivateKey.generate()
    for path, content in (
        (next_proof, make_proof(LOCAL_KEY, nxt.public_key())),
        (next_pub, pem(nxt)),
    ):
        staged = path.with_suffix(".new")
        staged.write_text(content)
        staged.replace(path)

    async def published() -> bool:
        return bool(json.loads((await fetch_public(http, exporter))[0]).get("authnKeyPubNext") == pem(nxt))

    await eventually(published)
    # Promotion, file by file as a careless operator would do it: the new current key first.
    staged = tmp_path / "pub.new"
    staged.write_text(pem(nxt))
    staged.replace(source_files["authn_public_key_file"])
    next_pub.unlink()
    next_proof.unlink()

    async def promoted() -> bool:
        doc = json.loads((await fetch_public(http, exporter))[0])
        return bool(doc["authnKeyPub"] == pem(nxt) and "authnKeyPubNext" not in doc)

    await eventually(promoted)
    assert errors(exporter.metrics) == 0, "a promotion is not a refused next key"


def test_next_key_file_flags_go_together() -> None:
    def settings(**files: Path) -> ExporterSettings:
        return ExporterSettings(cluster_uuid=c.LOCAL_UUID, api_host=c.API_HOST, **files)

    with pytest.raises(ConfigurationError, match="go together"):
        identity_of(settings(authn_next_public_key_file=Path("p")))
    with pytest.raises(ConfigurationError, match="needs --authn-public-key-file"):
        identity_of(settings(authn_next_public_key_file=Path("p"), authn_next_proof_file=Path("q")))
    identity_of(
        settings(
            authn_public_key_file=Path("c"),
            authn_next_public_key_file=Path("p"),
            authn_next_proof_file=Path("q"),
        )
    )


def test_keypair_secret_data_is_base64_of_what_the_controller_writes() -> None:
    """The exporter reads the very keys ``apiproxy keys rotate`` writes (names shared, not retyped)."""
    from apiproxy.exporter.derive import next_key_from_secret

    ring = rotation.start(rotation.Keyring(LOCAL_KEY), 1_700_000_000)
    data = {k: base64.b64encode(v).decode() for k, v in ring.secret_data().items()}
    found = next_key_from_secret({"metadata": {"name": "k"}, "data": data})
    assert found is not None and found.public_pem == ring.secret_data()["next-pub.pem"]

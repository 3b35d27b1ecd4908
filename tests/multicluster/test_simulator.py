"""The controller under kopf against the simulator, with a real peer: its proxy and its exporter process."""

from __future__ import annotations

import asyncio
import base64
import json
import ssl
import time
from pathlib import Path

import aiohttp
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.keys import public_key_pem
from apiproxy.multicluster import identity, tokens
from tests.helpers import eventually, kubectl
from tests.multicluster.conftest import NAMESPACE, OUR_UUID, Ours, Peer, Running, StartController

DAY = 86400.0


async def test_establishment_from_a_real_peer_exporter(
    ours: Ours, peer: Peer, start_controller: StartController
) -> None:
    run = await start_controller()
    started = time.monotonic()
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    ready = await eventually(
        lambda: (ours.condition("east") or {}).get("status") == "True" and ours.condition("east"), timeout=30
    )
    elapsed = time.monotonic() - started
    assert ready["reason"] == "Established"
    status = ours.resource("east")["status"]  # type: ignore[index]
    assert status["remoteClusterUUID"] == peer.uuid
    assert status["apiHost"] == peer.api_host
    trust = ours.secret("d8-remote-clusters-public-metadata")
    assert trust is not None
    doc = json.loads(base64.b64decode(trust["data"]["remote-public-metadata.json"]))
    assert list(doc) == [peer.uuid]
    remote = ours.secret("istio-remote-secret-east")
    assert remote is not None and remote["metadata"]["labels"]["istio/multiCluster"] == "true"
    registry = run.metrics.registry
    count = registry.get_sample_value("apiproxy_multicluster_reconcile_duration_seconds_count") or 0
    total = registry.get_sample_value("apiproxy_multicluster_reconcile_duration_seconds_sum") or 0
    assert count >= 1
    print(f"created to Ready in {elapsed:.3f}s; {count:.0f} reconcile(s), {total / count * 1000:.1f} ms each")


def trust_doc(ours: Ours) -> dict[str, object]:
    trust = ours.secret("d8-remote-clusters-public-metadata")
    assert trust is not None
    doc: dict[str, object] = json.loads(base64.b64decode(trust["data"]["remote-public-metadata.json"]))
    return doc


async def established(ours: Ours, name: str = "east") -> None:
    await eventually(lambda: (ours.condition(name) or {}).get("status") == "True", timeout=30)


async def test_kubectl_shows_the_resource_and_the_remote_secret_reaches_the_peer_proxy(
    ours: Ours, peer: Peer, start_controller: StartController, tmp_path: Path
) -> None:
    await start_controller()
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    await established(ours)
    table = await kubectl(ours.kubeconfig, "get", "istiomulticlusters")
    assert table.returncode == 0, table.stderr
    header, row = table.stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "READY", "REASON"]
    assert row.split()[:4] == ["east", "True", "Established", peer.uuid]
    as_yaml = await kubectl(ours.kubeconfig, "get", "istiomulticluster", "east", "-o", "yaml")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert yaml.safe_load(as_yaml.stdout)["status"]["remoteClusterUUID"] == peer.uuid
    (tmp_path / "kubectl-get.txt").write_text(table.stdout + "\n" + as_yaml.stdout)
    print(table.stdout, as_yaml.stdout, sep="\n")

    # istiod's remote secret, as kubectl would use it: through the peer's real proxy
    remote = ours.secret("istio-remote-secret-east")
    assert remote is not None
    assert remote["metadata"]["annotations"]["networking.istio.io/cluster"] == peer.uuid
    kubeconfig = tmp_path / "remote-kubeconfig"
    kubeconfig.write_bytes(base64.b64decode(remote["data"][peer.uuid]))
    pods = await kubectl(kubeconfig, "get", "pods", "-A", "-o", "name")
    assert pods.returncode == 0, pods.stderr
    assert pods.stdout.strip(), "the peer's pods are listed through its proxy"


async def test_deletion_removes_trust_entry_remote_secret_and_mesh_network(
    ours: Ours, peer: Peer, start_controller: StartController
) -> None:
    await start_controller()
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    await established(ours)
    assert list(trust_doc(ours)) == [peer.uuid]
    mesh = ours.store.get("configmaps", NAMESPACE, "apiproxy-multicluster-mesh")
    assert mesh is not None and "fromRegistry" in mesh["data"]["mesh.yaml"]
    assert ours.resource("east")["metadata"]["finalizers"]  # type: ignore[index]
    ours.store.delete("istiomulticlusters", None, "east")
    await eventually(lambda: ours.resource("east") is None, timeout=30)
    assert trust_doc(ours) == {}
    assert ours.secret("istio-remote-secret-east") is None
    mesh = ours.store.get("configmaps", NAMESPACE, "apiproxy-multicluster-mesh")
    assert mesh is not None and yaml.safe_load(mesh["data"]["mesh.yaml"]) == {
        "meshConfig": {"caCertificates": []},
        "meshNetworks": {},
    }


async def test_identity_change_is_pinned_until_accepted(
    ours: Ours, peer: Peer, start_controller: StartController
) -> None:
    run = await start_controller()
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    await established(ours)
    pinned = dict(trust_doc(ours))
    new_key = ed25519.Ed25519PrivateKey.generate()
    replacement = peer.files["pub"].with_suffix(".new")
    replacement.write_bytes(public_key_pem(new_key.public_key(), deckhouse=True))
    replacement.replace(peer.files["pub"])  # a new inode, as kubelet swaps a mounted Secret
    fingerprint = identity.fingerprint(public_key_pem(new_key.public_key()).decode())

    async def exporter_serves_new_key() -> bool:
        trust = ssl.create_default_context(cadata=peer.ca_pem)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session,
            session.get(peer.endpoint + "public/public.json") as resp,
        ):
            served = await resp.json(content_type=None)
        return bool(identity.fingerprint(served["authnKeyPub"]) == fingerprint)

    await eventually(exporter_serves_new_key, timeout=30)
    changed = await eventually(
        lambda: (
            (ours.condition("east", "PublicMetadataExchangeReady") or {}).get("reason")
            == "RemoteIdentityChanged"
            and ours.condition("east", "PublicMetadataExchangeReady")
        ),
        timeout=30,
    )
    assert fingerprint in changed["message"]
    assert trust_doc(ours) == pinned, "the old key stays trusted; the new one is not applied"
    assert run.metrics.identity_changed.labels("east")._value.get() == 1
    obj = ours.resource("east")
    assert obj is not None
    ours.store.patch(
        "istiomulticlusters",
        None,
        "east",
        {"metadata": {"annotations": {"apiproxy.io/accept-identity": fingerprint}}},
    )

    def accepted() -> bool:
        entry = trust_doc(ours).get(peer.uuid)
        return isinstance(entry, dict) and identity.fingerprint(entry["authnKeyPub"]) == fingerprint

    await eventually(accepted, timeout=30)
    await established(ours)
    assert run.metrics.identity_changed.labels("east")._value.get() == 0


async def test_two_controllers_generate_one_keypair(ours: Ours, start_controller: StartController) -> None:
    ours.store.delete("secrets", NAMESPACE, "d8-remote-authn-keypair")
    first, second = await start_controller(), await start_controller()
    await eventually(
        lambda: first.controller and first.controller.key and second.controller and second.controller.key
    )
    assert first.controller is not None and second.controller is not None
    secret = ours.secret("d8-remote-authn-keypair")
    assert secret is not None
    data = {k: base64.b64decode(v) for k, v in secret["data"].items()}
    assert data["priv.pem"].startswith(b"-----BEGIN ED25519 PRIVATE KEY-----")
    assert data["pub.pem"].startswith(b"-----BEGIN ED25519 PUBLIC KEY-----")
    pub = public_key_pem(first.controller.key.public_key(), deckhouse=True)  # type: ignore[union-attr]
    assert pub == data["pub.pem"]
    assert public_key_pem(second.controller.key.public_key(), deckhouse=True) == pub  # type: ignore[union-attr]


async def test_api_token_is_reminted_when_a_third_of_its_life_remains(
    ours: Ours, peer: Peer, start_controller: StartController
) -> None:
    """Real clock, aged tokens: the peer's exporter and proxy check times too, so the clock cannot be
    faked here (the injected-clock schedule is in test_core); instead the remote secret is given a token
    minted earlier, once with more than a third of its life left (kept) and once with less (re-minted)."""
    run = await start_controller(api_token_ttl=30 * DAY)
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    await established(ours)

    def current_token() -> str:
        secret = ours.secret("istio-remote-secret-east")
        assert secret is not None
        config = yaml.safe_load(base64.b64decode(secret["data"][peer.uuid]))
        return str(config["users"][0]["user"]["token"])

    def age_token(days: float) -> str:
        token = tokens.api_token(
            ours.key, our_uuid=OUR_UUID, peer_uuid=peer.uuid, now=time.time() - days * DAY, ttl=30 * DAY
        )
        secret = ours.secret("istio-remote-secret-east")
        assert secret is not None
        config = yaml.safe_load(base64.b64decode(secret["data"][peer.uuid]))
        config["users"][0]["user"]["token"] = token
        secret["data"][peer.uuid] = base64.b64encode(yaml.safe_dump(config).encode()).decode()
        ours.store.update(secret)
        return token

    async def restart_after(days: float) -> str:
        """Stop the controller, age the token while it is down, start a new one and let it reconcile."""
        nonlocal run
        run.stop.set()
        await asyncio.to_thread(run.thread.join, 20)
        token = age_token(days)
        run = await start_controller(api_token_ttl=30 * DAY)
        await eventually(lambda: reconciles(run) >= 2, timeout=30)
        return token

    young = await restart_after(19)  # 11 days left of 30: kept
    assert current_token() == young
    old = await restart_after(21)  # 9 days left: re-minted
    assert current_token() != old
    info = tokens.inspect_own_token(current_token(), ours.key, our_uuid=OUR_UUID, peer_uuid=peer.uuid)
    assert info is not None and info.expires > time.time() + 29 * DAY


def reconciles(run: Running) -> float:
    value = run.metrics.registry.get_sample_value("apiproxy_multicluster_reconcile_duration_seconds_count")
    return value or 0.0


async def test_rotation_across_two_controllers(
    ours: Ours, peer: Peer, start_controller: StartController
) -> None:
    from apiproxy.auth.keys import load_private_key
    from apiproxy.multicluster.main import keys_rotate

    first = await start_controller(rotation_publish_period=1.0)
    second = await start_controller(rotation_publish_period=1.0)
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    await established(ours)

    assert await asyncio.to_thread(keys_rotate, str(ours.kubeconfig), NAMESPACE) == 0
    assert await asyncio.to_thread(keys_rotate, str(ours.kubeconfig), NAMESPACE) == 1, (
        "one rotation at a time"
    )
    keypair = ours.secret("d8-remote-authn-keypair")
    assert keypair is not None
    next_key = load_private_key(base64.b64decode(keypair["data"]["next-priv.pem"]))
    next_pub = base64.b64decode(keypair["data"]["next-pub.pem"]).decode()
    # The peer follows (what its controller does on reading our authnKeyPubNext): both keys trusted.
    entries = {c.uuid: c.metadata() for c in peer.sandbox.clusters.values()}
    entries[OUR_UUID]["authnKeyPubNext"] = next_pub
    tmp = peer.sandbox.trust_file.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries))
    tmp.replace(peer.sandbox.trust_file)

    def token_signed_by_next() -> bool:
        secret = ours.secret("istio-remote-secret-east")
        assert secret is not None
        config = yaml.safe_load(base64.b64decode(secret["data"][peer.uuid]))
        token = config["users"][0]["user"]["token"]
        return tokens.inspect_own_token(token, next_key, our_uuid=OUR_UUID, peer_uuid=peer.uuid) is not None

    await eventually(token_signed_by_next, timeout=30)
    await established(ours)

    # As if the longest token lifetime had passed: the next key is promoted, once, by either controller.
    ours.store.patch(
        "secrets", NAMESPACE, "d8-remote-authn-keypair",
        {"metadata": {"annotations": {"apiproxy.io/rotation-started": "2020-01-01T00:00:00Z"}}},
    )  # fmt: skip

    def promoted() -> bool:
        data = (ours.secret("d8-remote-authn-keypair") or {}).get("data") or {}
        return "next-priv.pem" not in data and base64.b64decode(data["pub.pem"]).decode() == next_pub

    await eventually(promoted, timeout=30)
    annotations = ours.secret("d8-remote-authn-keypair")["metadata"].get("annotations") or {}  # type: ignore[index]
    assert "apiproxy.io/rotation-started" not in annotations
    await eventually(
        lambda: all(
            run.controller is not None
            and run.controller.key is not None
            and public_key_pem(run.controller.key.public_key(), deckhouse=True).decode() == next_pub
            for run in (first, second)
        ),
        timeout=30,
    )
    await established(ours)

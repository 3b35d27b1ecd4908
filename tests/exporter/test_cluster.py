"""The exporter against a seeded simulated cluster: golden documents, and every source change visible in
the next response without a restart."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from multidict import CIMultiDict

from apiproxy.auth.keys import public_key_pem
from apiproxy.metadata import parse_federation, parse_multicluster, parse_public, parse_spiffe_bundle
from tests.exporter import cluster as c
from tests.exporter.conftest import Cluster, Start
from tests.helpers import eventually

PUBLIC = "/metadata/public/public.json"
SPIFFE = "/metadata/public/spiffe-bundle-endpoint"
MULTICLUSTER = "/metadata/private/multicluster.json"
FEDERATION = "/metadata/private/federation.json"
GOLDEN_FILES = {
    PUBLIC: "public.json",
    SPIFFE: "spiffe-bundle-endpoint.json",
    MULTICLUSTER: "multicluster.json",
    FEDERATION: "federation.json",
}


class Peer:
    """A peer reading this exporter with Deckhouse-format tokens of the right scope for each path."""

    def __init__(
        self, http: aiohttp.ClientSession, port: int, key: Any = c.ALPHA_KEY, sub: str = c.ALPHA
    ) -> None:
        self.http, self.base, self.key, self.sub = http, f"http://127.0.0.1:{port}", key, sub

    def headers(self, path: str) -> dict[str, str]:
        if path == MULTICLUSTER:
            return {
                "Authorization": "Bearer " + c.token(self.key, sub=self.sub, scope="private-multicluster")
            }
        if path == FEDERATION:
            return {"Authorization": "Bearer " + c.token(self.key, sub=self.sub, scope="private-federation")}
        return {}

    async def get(self, path: str, **headers: str) -> tuple[int, bytes, CIMultiDict[str]]:
        async with self.http.get(self.base + path, headers={**self.headers(path), **headers}) as resp:
            return resp.status, await resp.read(), resp.headers.copy()

    async def json(self, path: str) -> Any:
        status, body, _ = await self.get(path)
        assert status == 200, body
        return json.loads(body)

    async def ready(self) -> None:
        async def probe() -> bool:
            status, _, _ = await self.get("/readyz")
            return status == 200

        await eventually(probe, timeout=20)


async def kube_exporter(cluster: Cluster, start: Start, http: aiohttp.ClientSession, **settings: Any) -> Peer:
    exporter = await start(kubeconfig=cluster.kubeconfig, **settings)
    peer = Peer(http, exporter.port)
    await peer.ready()
    return peer


async def test_golden_documents_from_the_seeded_cluster(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession
) -> None:
    peer = await kube_exporter(cluster, start, http)
    for path, name in GOLDEN_FILES.items():
        status, body, headers = await peer.get(path)
        assert status == 200, (path, body)
        golden = c.GOLDEN / name
        if os.environ.get("UPDATE_GOLDEN"):
            golden.write_bytes(body)
        assert body == golden.read_bytes(), path
        assert headers["Content-Type"] == "application/json"
        assert headers["ETag"].startswith('"')
    # The documents are what a peer's controller accepts.
    public = parse_public((c.GOLDEN / "public.json").read_bytes())
    assert public.cluster_uuid == c.LOCAL_UUID and "ED25519 PUBLIC KEY" in public.authn_key_pub
    assert parse_multicluster((c.GOLDEN / "multicluster.json").read_bytes()).api_host == c.API_HOST
    assert len(parse_federation((c.GOLDEN / "federation.json").read_bytes()).public_services) == 2
    assert len(parse_spiffe_bundle((c.GOLDEN / "spiffe-bundle-endpoint.json").read_bytes())) == 1


async def test_load_balancer_address_change_is_in_the_next_response(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession
) -> None:
    peer = await kube_exporter(cluster, start, http)
    service = c.gateway_service(ingress=[{"ip": "192.0.2.44"}])
    cluster.store.update(service)

    async def moved() -> bool:
        doc = await peer.json(MULTICLUSTER)
        return doc["ingressGateways"] == [{"address": "192.0.2.44", "port": 15443}]

    await eventually(moved)
    assert (await peer.json(FEDERATION))["ingressGateways"] == [{"address": "192.0.2.44", "port": 15443}]


async def test_rotated_root_ca_and_keypair_are_published(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession
) -> None:
    peer = await kube_exporter(cluster, start, http)
    _, _, before = await peer.get(PUBLIC)
    cluster.store.update(c.root_ca_configmap(c.ROOT_EC))
    await eventually(lambda: _has(peer, PUBLIC, "rootCA", c.ROOT_EC))
    bundle = await peer.json(SPIFFE)
    assert [k["kty"] for k in bundle["keys"]] == ["EC"]

    new_pub = public_key_pem(ed25519.Ed25519PrivateKey.generate().public_key(), deckhouse=True).decode()
    cluster.store.update(c.keypair_secret(new_pub))
    await eventually(lambda: _has(peer, PUBLIC, "authnKeyPub", new_pub))
    _, _, after = await peer.get(PUBLIC)
    assert after["ETag"] != before["ETag"]


async def _has(peer: Peer, path: str, field: str, value: Any) -> bool:
    return bool((await peer.json(path))[field] == value)


async def test_new_peer_in_the_trust_store_gets_in_without_restart(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession
) -> None:
    exporter = await start(kubeconfig=cluster.kubeconfig)
    alpha = Peer(http, exporter.port)
    await alpha.ready()
    gamma_key = ed25519.Ed25519PrivateKey.generate()
    gamma_uuid = "0d6b6c2a-1111-4222-8333-944455556666"
    gamma = Peer(http, exporter.port, gamma_key, gamma_uuid)
    status, body, _ = await gamma.get(MULTICLUSTER)
    assert status == 401 and json.loads(body)["reason"] == "unknown_cluster"

    trust = json.loads(c.TRUST_JSON)
    trust[gamma_uuid] = {
        "clusterUUID": gamma_uuid,
        "authnKeyPub": public_key_pem(gamma_key.public_key(), deckhouse=True).decode(),
        "rootCA": c.ROOT_EC,
    }
    cluster.store.update(c.trust_secret(json.dumps(trust).encode()))

    async def admitted() -> bool:
        status, _, _ = await gamma.get(MULTICLUSTER)
        return status == 200

    await eventually(admitted)
    # Removing a peer shuts it out just as fast.
    del trust[c.ALPHA]
    cluster.store.update(c.trust_secret(json.dumps(trust).encode()))

    async def shut_out() -> bool:
        status, _, _ = await alpha.get(MULTICLUSTER)
        return status == 401

    await eventually(shut_out)


async def test_advertise_override_wins_and_a_malformed_one_keeps_the_last_good(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    exporter = await start(kubeconfig=cluster.kubeconfig)
    peer = Peer(http, exporter.port)
    await peer.ready()
    override = [{"address": "gateway.example.net", "port": 443}, {"address": "198.51.100.1", "port": 8443}]
    cluster.store.create(c.advertise_configmap(json.dumps(override)))

    async def overridden() -> bool:
        return bool((await peer.json(MULTICLUSTER))["ingressGateways"] == override)

    await eventually(overridden)
    errors = exporter.metrics.source_errors.labels("advertise")
    assert errors._value.get() == 0
    cluster.store.update(c.advertise_configmap('[{"address": "", "port": 70000}]'))
    await eventually(lambda: errors._value.get() == 1)
    assert (await peer.json(MULTICLUSTER))["ingressGateways"] == override
    assert any("refused advertise update" in r.getMessage() for r in caplog.records)

    cluster.store.delete("configmaps", c.NS, "metadata-exporter-ingressgateway-advertise")

    async def discovered_again() -> bool:
        doc = await peer.json(MULTICLUSTER)
        return doc["ingressGateways"][0]["address"] == "203.0.113.10"

    await eventually(discovered_again)


async def test_new_public_service_is_published(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession
) -> None:
    peer = await kube_exporter(cluster, start, http)
    cluster.store.create(c.public_service("ledger", "payments", [("https", 443)]))

    async def published() -> bool:
        doc = await peer.json(FEDERATION)
        return "ledger.payments.svc.cluster.local" in [s["hostname"] for s in doc["publicServices"]]

    await eventually(published)


async def test_node_port_gateway_uses_ready_schedulable_nodes_with_a_ready_gateway_pod(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession
) -> None:
    cluster.store.delete("services", c.NS, "ingressgateway")
    cluster.store.create(c.gateway_service("NodePort"))
    for obj in (
        c.node("gw-a", external="198.51.100.10", internal="10.0.1.10"),
        c.node("gw-b", internal="10.0.1.11"),
        c.node("gw-unready", ready=False, external="198.51.100.12"),
        c.node("gw-cordoned", cordoned=True, external="198.51.100.13"),
        c.gateway_pod("ingressgateway-a", "gw-a"),
        c.gateway_pod("ingressgateway-b", "gw-b"),
        c.gateway_pod("ingressgateway-unready-node", "gw-unready"),
        c.gateway_pod("ingressgateway-cordoned-node", "gw-cordoned"),
    ):
        cluster.store.create(obj)
    peer = await kube_exporter(cluster, start, http)
    expected = [{"address": "10.0.1.11", "port": 30443}, {"address": "198.51.100.10", "port": 30443}]
    assert (await peer.json(MULTICLUSTER))["ingressGateways"] == expected

    cluster.store.update(c.node("gw-cordoned", external="198.51.100.13"))  # uncordoned

    async def joined() -> bool:
        doc = await peer.json(MULTICLUSTER)
        return {"address": "198.51.100.13", "port": 30443} in doc["ingressGateways"]

    await eventually(joined)


async def test_missing_source_is_503_naming_it_never_an_empty_document(
    cluster: Cluster, start: Start, http: aiohttp.ClientSession
) -> None:
    cluster.store.delete("secrets", c.NS, "d8-remote-authn-keypair")
    peer = await kube_exporter(cluster, start, http)
    status, body, _ = await peer.get(PUBLIC)
    assert status == 503
    assert json.loads(body)["missing"] == ["authnKeyPub: Secret d8-istio/d8-remote-authn-keypair not found"]
    status, _, _ = await peer.get(SPIFFE)
    assert status == 200  # the root CA is there
    cluster.store.create(c.keypair_secret())

    async def back() -> bool:
        status, _, _ = await peer.get(PUBLIC)
        return status == 200

    await eventually(back)


async def test_not_ready_until_the_sources_are_loaded(
    start: Start, tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    """With no apiserver at all, nothing is served as if it were known."""
    kubeconfig = tmp_path / "unreachable"
    from apiproxy.certs import make_ca
    from apiproxy.kubeconfig import render_kubeconfig

    kubeconfig.write_text(render_kubeconfig("https://127.0.0.1:9", make_ca("x").cert_pem, token="t"))
    exporter = await start(kubeconfig=kubeconfig)
    peer = Peer(http, exporter.port)
    status, body, _ = await peer.get("/readyz")
    assert status == 503 and b"sources not loaded yet" in body
    status, body, _ = await peer.get(PUBLIC)
    assert status == 503 and b"not loaded yet" in body
    status, body, _ = await peer.get(MULTICLUSTER)
    assert status == 503 and b"trust store" in body
    assert (await peer.get("/healthz"))[0] == 200

"""The metadata exporter against the real apiserver, with exactly the RBAC deploy/ ships for it.

Deckhouse's objects (keypair Secret, root-CA ConfigMap, trust Secret, a LoadBalancer ingress gateway with
its status, public services) are created in the real cluster; the exporter, logged in as its own service
account bound to deploy/base/exporter-rbac.yaml, must serve byte for byte the golden documents the
simulator-backed tests pin, and follow a change at once.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from apiproxy.exporter.main import RunningExporter, start_exporter
from tests.exporter import cluster as c
from tests.exporter.conftest import base_settings
from tests.exporter.test_cluster import GOLDEN_FILES, MULTICLUSTER, Peer
from tests.helpers import eventually
from tests.real.cluster import rendered_into
from tests.real.conftest import Real

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "base"
NS = c.NS


def _create_federation_objects(real: Real) -> None:
    cluster = real.cluster
    cluster.kubectl("create", "namespace", NS, check=False)
    for namespace in ("payments", "search"):
        cluster.kubectl("create", "namespace", namespace, check=False)
    gateway = c.gateway_service(ingress=[{"hostname": "gw.east.example.com"}, {"ip": "203.0.113.10"}])
    status = gateway.pop("status")
    for port in gateway["spec"]["ports"]:
        port.pop("nodePort")  # the mesh's own gateway holds them here; a LoadBalancer publishes `port`
    objects = [
        c.keypair_secret(),
        c.root_ca_configmap(),
        c.trust_secret(),
        gateway,
        c.public_service("checkout", "payments", [("http", 8080), ("grpc", 9090)]),
        c.public_service("catalog", "search", [("http", 80)]),
    ]
    cluster.apply(objects)
    set_gateway_status(real, status)


def set_gateway_status(real: Real, status: dict[str, object]) -> None:
    """A LoadBalancer's addresses are status, written by a cloud controller: here, by the test."""
    cluster = real.cluster
    current = json.loads(cluster.kubectl("get", "service", "ingressgateway", "-n", NS, "-o", "json").stdout)
    current["status"] = status
    code, _, body = cluster.request(
        "PUT",
        f"/api/v1/namespaces/{NS}/services/ingressgateway/status",
        json.dumps(current).encode(),
        {"Content-Type": "application/json"},
    )
    assert code == 200, body[:300]


@pytest.fixture(scope="module")
def exporter_kubeconfig(real: Real, tmp_path_factory: pytest.TempPathFactory) -> Path:
    _create_federation_objects(real)
    token = real.cluster.install_identity(
        NS, "apiproxy-exporter", rendered_into(DEPLOY / "exporter-rbac.yaml", NS)
    )
    return real.cluster.kubeconfig_for(tmp_path_factory.mktemp("exporter") / "kubeconfig", token)


@pytest.fixture
async def exporter(exporter_kubeconfig: Path, tmp_path: Path) -> AsyncIterator[RunningExporter]:
    running = await start_exporter(
        base_settings(tmp_path, kubeconfig=exporter_kubeconfig), backoff=(0.05, 0.5)
    )
    try:
        yield running
    finally:
        await running.stop()


async def test_golden_documents_from_the_real_apiserver_with_the_shipped_rbac(
    real: Real, exporter: RunningExporter
) -> None:
    async with aiohttp.ClientSession() as http:
        peer = Peer(http, exporter.port)
        await peer.ready()
        for path, name in GOLDEN_FILES.items():
            status, body, _ = await peer.get(path)
            assert status == 200, (path, body)
            assert body == (c.GOLDEN / name).read_bytes(), path


async def test_a_gateway_address_change_on_the_apiserver_is_in_the_next_document(
    real: Real, exporter: RunningExporter
) -> None:
    async with aiohttp.ClientSession() as http:
        peer = Peer(http, exporter.port)
        await peer.ready()
        set_gateway_status(real, {"loadBalancer": {"ingress": [{"ip": "198.51.100.99"}]}})
        headers = {"Authorization": f"Bearer {c.token()}"}

        async def published() -> bool:
            async with http.get(f"http://127.0.0.1:{exporter.port}{MULTICLUSTER}", headers=headers) as resp:
                doc = await resp.json()
            return doc["ingressGateways"] == [{"address": "198.51.100.99", "port": 15443}]

        await eventually(published, timeout=20)

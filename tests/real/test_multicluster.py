"""The IstioMulticluster controller against a real kube-apiserver, logged in with exactly the RBAC deploy/
ships for it.

The real apiserver judges what the simulator can only imitate: the CRD's structural schema, defaults and
validation, printer columns, kopf's finalizer and status-subresource patches, the Secrets, ConfigMap and
Events the controller writes, and that deploy/multicluster/rbac.yaml allows all of it. The peer (its
proxy in front of a simulator and its real exporter process) is the one of tests/multicluster.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.keys import public_key_pem
from apiproxy.multicluster import identity, rotation
from apiproxy.multicluster.model import parse_spec
from apiproxy.multicluster.reconcile import Context, reconcile
from tests.helpers import eventually
from tests.multicluster.conftest import OUR_UUID, free_port, running_peer
from tests.multicluster.peers import ENDPOINT, PEER_UUID, Clock, ScriptedPeer, public_doc
from tests.real.cluster import rendered_into
from tests.real.conftest import Real

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "multicluster"
NS = "mc-real"  # not d8-istio: test_exporter seeds a keypair there, and this keypair must be generated
SA = "apiproxy-multicluster"
GROUP_PLURAL = "istiomulticlusters.deckhouse.io"
T = TypeVar("T")


def get_json(real: Real, *args: str) -> Any:
    return json.loads(real.cluster.kubectl(*args, "-o", "json").stdout)


def resource(real: Real, name: str) -> dict[str, Any] | None:
    found = real.cluster.kubectl("get", GROUP_PLURAL, name, "-o", "json", check=False)
    if found.returncode != 0:
        assert "NotFound" in found.stderr, found.stderr
        return None
    obj: dict[str, Any] = json.loads(found.stdout)
    return obj


def condition(obj: dict[str, Any] | None, kind: str = "Ready") -> dict[str, Any] | None:
    for cond in ((obj or {}).get("status") or {}).get("conditions") or ():
        if cond["type"] == kind:
            return dict(cond)
    return None


def secret(real: Real, name: str) -> dict[str, Any] | None:
    found = real.cluster.kubectl("get", "secret", name, "-n", NS, "-o", "json", check=False)
    if found.returncode != 0:
        assert "NotFound" in found.stderr, found.stderr
        return None
    obj: dict[str, Any] = json.loads(found.stdout)
    return obj


def secret_value(obj: dict[str, Any], key: str) -> bytes:
    return base64.b64decode(obj["data"][key])


def trust_doc(real: Real) -> dict[str, Any]:
    trust = secret(real, "d8-remote-clusters-public-metadata")
    assert trust is not None
    doc: dict[str, Any] = json.loads(secret_value(trust, "remote-public-metadata.json"))
    return doc


def in_thread(probe: Callable[[], T]) -> Callable[[], Awaitable[T]]:
    """A kubectl-backed probe run off the event loop, which meanwhile serves the peer's proxy."""

    async def run() -> T:
        return await asyncio.to_thread(probe)

    return run


@pytest.fixture(scope="module")
def crd(real: Real) -> Iterator[None]:
    real.cluster.kubectl("apply", "-f", str(DEPLOY / "crd.yaml"))
    real.cluster.kubectl("wait", "--for=condition=Established", f"crd/{GROUP_PLURAL}", "--timeout=60s")
    yield


@pytest.fixture(scope="module")
def controller_kubeconfig(real: Real, crd: None, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Our service account bound to exactly deploy/multicluster/rbac.yaml; a kubeconfig with its token."""
    token = real.cluster.install_identity(NS, SA, rendered_into(DEPLOY / "rbac.yaml", NS))
    return real.cluster.kubeconfig_for(tmp_path_factory.mktemp("multicluster") / "kubeconfig", token)


def explain(real: Real, field: str, timeout: float = 60) -> str:
    """``kubectl explain``: the apiserver publishes a new CRD's OpenAPI schema shortly after it is
    Established, so this waits (on the answer itself) until it is there."""
    deadline = time.monotonic() + timeout
    while True:
        result = real.cluster.kubectl("explain", field, check=False)
        if result.returncode == 0:
            return result.stdout
        assert "couldn't find resource" in result.stderr, result.stderr
        assert time.monotonic() < deadline, f"kubectl explain {field}: {result.stderr}"
        time.sleep(0.2)


def test_the_crd_is_structural_and_validates_deckhouse_and_our_resources(real: Real, crd: None) -> None:
    cluster = real.cluster
    established = get_json(real, "get", "crd", GROUP_PLURAL)
    conditions = {c["type"]: c["status"] for c in established["status"]["conditions"]}
    assert conditions.get("Established") == "True"
    assert conditions.get("NonStructuralSchema", "False") == "False", established["status"]["conditions"]
    explained = explain(real, "istiomulticlusters.spec")
    for name in ("metadataEndpoint", "enableIngressGateway", "metadata", "expectedClusterUUID"):
        assert name in explained, explained
    assert "https" in explain(real, "istiomulticluster.spec.metadataEndpoint")

    deckhouse = {
        "apiVersion": "deckhouse.io/v1alpha1",
        "kind": "IstioMulticluster",
        "metadata": {"name": "crd-deckhouse"},
        "spec": {
            "metadataEndpoint": "https://istio.east.example.com/metadata/",
            "metadata": {"ca": "-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"},
        },
    }
    ours = {
        "apiVersion": "deckhouse.io/v1alpha1",
        "kind": "IstioMulticluster",
        "metadata": {"name": "crd-ours"},
        "spec": {
            "metadataEndpoint": "https://istio.west.example.com/metadata/",
            "enableIngressGateway": False,
            "metadata": {"insecureSkipVerify": True},
            "expectedClusterUUID": "3f0c9a52-7e1b-4d8a-b6c2-91e4f0a7d3b8",
        },
    }
    try:
        cluster.apply([deckhouse, ours])
        stored = get_json(real, "get", GROUP_PLURAL, "crd-deckhouse")
        assert stored["spec"]["enableIngressGateway"] is True, "the schema's default"
        assert stored["spec"]["metadata"]["insecureSkipVerify"] is False, "the schema's default"
        assert get_json(real, "get", GROUP_PLURAL, "crd-ours")["spec"] == ours["spec"]
        table = cluster.kubectl("get", "istiomulticlusters").stdout.splitlines()
        assert table[0].split() == ["NAME", "READY", "REASON", "REMOTE", "UUID", "API", "HOST", "TOKEN",
                                    "EXPIRY", "AGE"]  # fmt: skip
        assert {line.split()[0] for line in table[1:]} >= {"crd-deckhouse", "crd-ours"}
    finally:
        cluster.kubectl("delete", GROUP_PLURAL, "crd-deckhouse", "crd-ours", "--ignore-not-found", "--wait")

    refused = [
        ({}, "spec.metadataEndpoint: Required value"),
        ({"metadataEndpoint": "http://plain.example.com/metadata/"}, "spec.metadataEndpoint"),
        (
            {"metadataEndpoint": "https://x.example.com/metadata/", "expectedClusterUUID": "not-a-uuid"},
            "spec.expectedClusterUUID",
        ),
    ]
    for spec, message in refused:
        bad = {**deckhouse, "metadata": {"name": "crd-bad"}, "spec": spec}
        result = cluster.kubectl("create", "-f", "-", input=json.dumps(bad), check=False)
        assert result.returncode != 0, spec
        assert "is invalid" in result.stderr and message in result.stderr, result.stderr
    assert resource(real, "crd-bad") is None


class ControllerProcess:
    """``apiproxy multicluster`` as its own process with a --config file; stopped by SIGTERM."""

    def __init__(self, kubeconfig: Path, workdir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.metrics_port = free_port()
        self.config = workdir / "multicluster.yaml"
        self.config.write_text(
            yaml.safe_dump(
                {
                    "cluster-uuid": OUR_UUID,
                    "namespace": NS,
                    "kubeconfig": str(kubeconfig),
                    "resync": "2s",
                    "retry-base": "200ms",
                    "retry-cap": "1s",
                    "metrics-listen": f"127.0.0.1:{self.metrics_port}",
                }
            )
        )
        self.log = workdir / "controller.log"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "apiproxy", "multicluster", "--config", str(self.config),
                stdout=log, stderr=log, stdin=asyncio.subprocess.DEVNULL,
            )  # fmt: skip

    async def stop(self) -> None:
        assert self.proc is not None
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 30)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def metric(self, name: str, labels: str = "") -> float | None:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as resp,
            ):
                text = await resp.text()
        except aiohttp.ClientError:
            return None
        match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None

    async def metric_is(self, name: str, value: float) -> bool:
        return await self.metric(name) == value


@pytest.fixture
async def controller(controller_kubeconfig: Path, tmp_path: Path) -> AsyncIterator[ControllerProcess]:
    running = ControllerProcess(controller_kubeconfig, tmp_path)
    await running.start()
    try:
        yield running
    finally:
        await running.stop()
    log = running.log_text()
    assert "PRIVATE KEY" not in log and "eyJ" not in log, "no key or token in the logs"


async def our_key(real: Real, controller: ControllerProcess) -> tuple[ed25519.Ed25519PrivateKey, str]:
    """The keypair the controller generated at startup (read as admin), and its resourceVersion."""

    def generated() -> dict[str, Any] | None:
        assert controller.proc is not None and controller.proc.returncode is None, controller.log_text()
        return secret(real, "d8-remote-authn-keypair")

    keypair = await eventually(in_thread(generated), timeout=60)
    priv = secret_value(keypair, "priv.pem")
    assert priv.startswith(b"-----BEGIN ED25519 PRIVATE KEY-----")
    assert secret_value(keypair, "pub.pem").startswith(b"-----BEGIN ED25519 PUBLIC KEY-----")
    der = base64.b64decode(b"".join(line for line in priv.splitlines() if not line.startswith(b"-----")))
    key = serialization.load_der_private_key(der, password=None)
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    return key, keypair["metadata"]["resourceVersion"]


def create(real: Real, name: str, spec: dict[str, Any]) -> None:
    real.cluster.apply(
        [{"apiVersion": "deckhouse.io/v1alpha1", "kind": "IstioMulticluster", "metadata": {"name": name},
          "spec": spec}]
    )  # fmt: skip


async def ready(real: Real, name: str, controller: ControllerProcess, timeout: float = 60) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        assert controller.proc is not None and controller.proc.returncode is None, controller.log_text()[
            -3000:
        ]
        obj = resource(real, name)
        cond = condition(obj)
        return obj if cond and cond["status"] == "True" else None

    try:
        return await eventually(in_thread(probe), timeout=timeout)
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}; resource: {json.dumps(resource(real, name))[:3000]}\n"
            f"controller log:\n{controller.log_text()[-4000:]}"
        ) from None


def written_versions(real: Real, names: dict[str, list[str]]) -> dict[str, str]:
    """kind/name → resourceVersion: an unchanged one proves the object was not written."""
    return {
        f"{kind}/{name}": get_json(real, "get", kind, name, "-n", NS)["metadata"]["resourceVersion"]
        for kind, objects in names.items()
        for name in objects
    }


async def test_controller_establishes_pins_and_cleans_up_on_the_real_apiserver(
    real: Real, controller: ControllerProcess, tmp_path: Path
) -> None:
    key, keypair_version = await our_key(real, controller)
    async with running_peer(tmp_path / "peer", key) as peer:
        started = time.monotonic()
        create(real, "east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
        obj = await ready(real, "east", controller)
        elapsed = time.monotonic() - started

        # status, as kopf patched it through the status subresource
        status = obj["status"]
        generation = obj["metadata"]["generation"]
        assert status["observedGeneration"] == generation
        conditions = {c["type"]: c for c in status["conditions"]}
        assert set(conditions) == {
            "PublicMetadataExchangeReady", "PrivateMetadataExchangeReady", "RemoteAPIServerReady", "Ready"
        }  # fmt: skip
        for cond in conditions.values():
            assert cond["status"] == "True", cond
            assert cond["observedGeneration"] == generation, cond
            assert cond["reason"] and cond["lastTransitionTime"]
        assert conditions["Ready"]["reason"] == "Established"
        assert status["remoteClusterUUID"] == peer.uuid
        assert status["apiHost"] == peer.api_host
        assert status["metadataCache"]["public"]["clusterUUID"] == peer.uuid
        assert status["metadataCache"]["private"]["apiHost"] == peer.api_host
        assert status["metadataCache"]["publicLastFetchTimestamp"]
        assert status["metadataCache"]["privateLastFetchTimestamp"]
        assert status["pinnedIdentity"]["clusterUUID"] == peer.uuid
        assert "apiproxy.io/multicluster-cleanup" in obj["metadata"]["finalizers"]

        # the outputs, written by the controller's own identity
        trust = trust_doc(real)
        assert list(trust) == [peer.uuid]
        assert trust[peer.uuid]["authnKeyPub"] == peer.files["pub"].read_text()
        assert trust[peer.uuid]["rootCA"] == peer.files["root"].read_text()
        remote = secret(real, "istio-remote-secret-east")
        assert remote is not None
        assert remote["metadata"]["labels"]["istio/multiCluster"] == "true"
        assert remote["metadata"]["annotations"]["networking.istio.io/cluster"] == peer.uuid
        assert list(remote["data"]) == [peer.uuid]
        config = yaml.safe_load(secret_value(remote, peer.uuid))
        cluster_entry = config["clusters"][0]["cluster"]
        assert cluster_entry["server"] == f"https://{peer.api_host}"
        assert base64.b64decode(cluster_entry["certificate-authority-data"]).decode() == peer.ca_pem
        assert config["users"][0]["user"]["token"].count(".") == 2
        mesh = get_json(real, "get", "configmap", "apiproxy-multicluster-mesh", "-n", NS)
        settings = yaml.safe_load(mesh["data"]["mesh.yaml"])
        assert settings["meshConfig"]["caCertificates"] == [{"pem": peer.files["root"].read_text()}]
        [network] = settings["meshNetworks"].values()
        assert {"fromRegistry": peer.uuid} in network["endpoints"]
        assert network["gateways"] == [{"address": "198.51.100.7", "port": 15443}]
        printed = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apiproxy", "multicluster", "mesh-config",
            "--kubeconfig", str(controller.kubeconfig), "--namespace", NS,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, err = await asyncio.wait_for(printed.communicate(), 60)
        assert printed.returncode == 0, err.decode()[-2000:]
        assert out.decode() == mesh["data"]["mesh.yaml"], "mesh-config prints what the controller wrote"

        # Events on the resource: in `default` with a namespace-less reference, so describe shows them
        events = get_json(real, "get", "events", "-n", "default")["items"]
        mine = [e for e in events if e["involvedObject"].get("name") == "east"]
        assert {e["reason"] for e in mine} >= {"Ready"}, [(e["reason"], e["message"]) for e in events]
        for event in mine:
            assert event["involvedObject"]["kind"] == "IstioMulticluster"
            assert "namespace" not in event["involvedObject"]
            assert event["involvedObject"]["uid"] == obj["metadata"]["uid"]
        described = real.cluster.kubectl("describe", "istiomulticluster", "east").stdout
        events_section = described.split("\nEvents:", 1)[1]
        assert "Ready" in events_section and "apiproxy-multicluster" in events_section, described[-1500:]

        # kubectl: printer columns and the status as YAML
        table = real.cluster.kubectl("get", "istiomulticlusters").stdout
        header, row = table.splitlines()[:2]
        assert header.split()[:3] == ["NAME", "READY", "REASON"]
        assert row.split()[:5] == ["east", "True", "Established", peer.uuid, peer.api_host]
        as_yaml = real.cluster.kubectl("get", "istiomulticluster", "east", "-o", "yaml").stdout
        assert yaml.safe_load(as_yaml)["status"]["remoteClusterUUID"] == peer.uuid

        # the reconcile time of this one peer, from the controller's own histogram
        count: float = await eventually(
            lambda: controller.metric("apiproxy_multicluster_reconcile_duration_seconds_count"), timeout=30
        )
        total = await controller.metric("apiproxy_multicluster_reconcile_duration_seconds_sum")
        assert total is not None and count >= 1
        print(
            f"\ncreate -> Ready on the real apiserver: {elapsed:.3f}s; "
            f"{count:.0f} reconcile(s), {total / count * 1000:.1f} ms each on average\n"
        )
        print(table, as_yaml, sep="\n")

        # a restarted controller resumes: same keypair, nothing rewritten when nothing changed
        outputs = {
            "secret": [
                "d8-remote-authn-keypair",
                "d8-remote-clusters-public-metadata",
                "istio-remote-secret-east",
            ],
            "configmap": ["apiproxy-multicluster-mesh"],
        }
        before = written_versions(real, outputs)
        await controller.stop()
        await controller.start()

        async def reconciled_since_restart() -> bool:
            count = await controller.metric("apiproxy_multicluster_reconcile_duration_seconds_count")
            return count is not None and count >= 1

        await eventually(reconciled_since_restart, timeout=60)
        await ready(real, "east", controller)
        assert written_versions(real, outputs) == before

        # an identity change at the peer is pinned until an administrator accepts it
        pinned = trust_doc(real)
        new_key = ed25519.Ed25519PrivateKey.generate()
        replacement = peer.files["pub"].with_suffix(".new")
        replacement.write_bytes(public_key_pem(new_key.public_key(), deckhouse=True))
        replacement.replace(peer.files["pub"])  # a new inode, as kubelet swaps a mounted Secret
        fingerprint = identity.fingerprint(public_key_pem(new_key.public_key()).decode())

        def identity_changed() -> dict[str, Any] | None:
            cond = condition(resource(real, "east"), "PublicMetadataExchangeReady")
            return cond if cond and cond["reason"] == "RemoteIdentityChanged" else None

        changed = await eventually(in_thread(identity_changed), timeout=60)
        assert changed["status"] == "False" and fingerprint in changed["message"]
        assert condition(resource(real, "east"))["status"] == "False"  # type: ignore[index]
        assert trust_doc(real) == pinned, "the old key stays trusted; the new one is not applied"
        assert secret(real, "istio-remote-secret-east") is not None, "nothing established is torn down"
        gauge = 'apiproxy_multicluster_remote_identity_changed{multicluster_name="east"}'
        await eventually(lambda: controller.metric_is(gauge, 1.0), timeout=30)
        warned = get_json(real, "get", "events", "-n", "default")["items"]
        assert any(e["type"] == "Warning" and "RemoteIdentityChanged" in e["message"] for e in warned), [
            (e["reason"], e["message"]) for e in warned
        ]

        real.cluster.kubectl(
            "annotate", "istiomulticluster", "east", f"apiproxy.io/accept-identity={fingerprint}"
        )

        def accepted() -> bool:
            entry = trust_doc(real).get(peer.uuid)
            return isinstance(entry, dict) and identity.fingerprint(entry["authnKeyPub"]) == fingerprint

        await eventually(in_thread(accepted), timeout=60)
        await ready(real, "east", controller)
        await eventually(lambda: controller.metric_is(gauge, 0.0), timeout=30)

        # deletion: kopf's finalizer runs our cleanup, then lets the resource go
        real.cluster.kubectl("delete", "istiomulticluster", "east", "--wait=false")
        await eventually(in_thread(lambda: resource(real, "east") is None), timeout=60)
        assert trust_doc(real) == {}
        assert secret(real, "istio-remote-secret-east") is None
        mesh = get_json(real, "get", "configmap", "apiproxy-multicluster-mesh", "-n", NS)
        assert yaml.safe_load(mesh["data"]["mesh.yaml"]) == {
            "meshConfig": {"caCertificates": []},
            "meshNetworks": {},
        }

    # the shipped RBAC allowed every request the controller made (404: read before create; 409: a race)
    refused = [
        (e["verb"], e["requestURI"], e["responseStatus"]["code"])
        for e in real.cluster.audit_events_by(real.cluster.service_account_user(NS, SA))
        if e["responseStatus"]["code"] >= 400 and e["responseStatus"]["code"] not in (404, 409)
    ]
    assert refused == []
    keypair = secret(real, "d8-remote-authn-keypair")
    assert keypair is not None and keypair["metadata"]["resourceVersion"] == keypair_version, (
        "the keypair is generated once and never rewritten"
    )


def write_status(real: Real, name: str, status: dict[str, Any]) -> dict[str, Any]:
    """PUT ``status`` through the status subresource (what kopf's patch reaches) and return what the
    apiserver stored: fields its structural schema does not declare are pruned on the way."""
    current = get_json(real, "get", GROUP_PLURAL, name)
    current["status"] = status
    code, _, body = real.cluster.request(
        "PUT",
        f"/apis/deckhouse.io/v1alpha1/istiomulticlusters/{name}/status",
        json.dumps(current).encode(),
        {"Content-Type": "application/json"},
    )
    assert code == 200, body[:500]
    stored: dict[str, Any] = json.loads(body)["status"]
    return stored


async def test_every_status_field_the_controller_writes_survives_the_schema(real: Real, crd: None) -> None:
    """The real apiserver prunes what the CRD does not declare, silently. A peer's key rotation records
    the vouched-for next key in ``status.pinnedIdentity``; were it pruned, a restarted controller would
    read the pin without it and take the peer's promotion of that key for an identity change."""
    our = ed25519.Ed25519PrivateKey.generate()
    ctx = Context(OUR_UUID, our, 30 * 86400.0, Clock())
    spec_doc = {"metadataEndpoint": ENDPOINT, "metadata": {"insecureSkipVerify": True}}
    spec = parse_spec("rotating", spec_doc)
    current, nxt = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    first = await reconcile(spec, None, ctx, ScriptedPeer.healthy(current))
    publishing_peer = ScriptedPeer.healthy(current)
    doc = json.loads(public_doc(PEER_UUID, current))
    doc["authnKeyPubNext"] = public_key_pem(nxt.public_key(), deckhouse=True).decode()
    doc["authnKeyPubNextProof"] = rotation.make_proof(current, nxt.public_key())
    publishing_peer.answers["/metadata/public/public.json"] = json.dumps(doc).encode()
    publishing = await reconcile(spec, first.status, ctx, publishing_peer, generation=1)
    assert publishing.ok and publishing.status["pinnedIdentity"].get("nextKeyFingerprint")
    assert {c["type"] for c in publishing.status["conditions"]} >= {"TLSVerified", "Ready"}

    create(real, "rotating", spec_doc)
    try:
        stored = write_status(real, "rotating", json.loads(json.dumps(publishing.status)))
        assert stored == publishing.status, "the apiserver pruned a status field the schema lacks"
        # a restarted controller starts from the stored status: the promotion is followed, no admin
        promoted = await reconcile(spec, stored, ctx, ScriptedPeer.healthy(nxt), generation=1)
        reasons = {c["type"]: c["reason"] for c in promoted.status["conditions"]}
        assert promoted.ok, reasons
    finally:
        real.cluster.kubectl("delete", GROUP_PLURAL, "rotating", "--ignore-not-found", "--wait")

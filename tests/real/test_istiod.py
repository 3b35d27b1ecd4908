"""Acceptance by the real user: a real istiod, running against a real *primary*, discovers the *remote*
cluster (the seeded real apiserver of ``make test-real``) through the proxy with the shipped policy, with
the federation kit doing the wiring.

On *remote*: the proxy, the metadata exporter and the IstioMulticluster controller; on *primary*: the
exporter and the controller. An IstioMulticluster on each side names the other side's exporter; the
controllers generate their keypairs, pin each other, write the trust store the proxy reads and the remote
secret and mesh settings istiod runs with. Nothing of the trust is written by the test.

istiod's own endpoints judge: ``/debug/clusterz`` must say ``synced`` (never ``timeout``), the remote
services and endpoints must be in its registry, and a change on the remote must reach it. The proxy's
audit log then says what istiod asked for: nothing denied, no Secret ever forwarded.

Run with ``make test-istio`` (builds pilot-discovery from the Go module proxy once, minutes the first time).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiproxy.auth.keys import b64url_decode
from apiproxy.certs import Issued, make_ca, make_leaf
from apiproxy.demo.sandbox import Sandbox, new_cluster
from apiproxy.kubeconfig import render_kubeconfig
from apiproxy.multicluster.model import TRUST_KEY, TRUST_SECRET
from tests.real import gobuild
from tests.real.cluster import Process, RealCluster, StartError, _tail, free_port
from tests.real.conftest import Real, real_sandbox
from tests.real.istiod import (
    ISTIO_NAMESPACE,
    Istiod,
    SecretFile,
    apiproxy_process,
    mesh_files,
    prepare_primary,
    prepare_remote,
    write_remote_secret,
)

REMOTE = "remote"
PRIMARY = "primary"
#: The clusters' UUIDs for the session (the proxy's audience, the exporters' and controllers' identity).
REMOTE_UUID = str(uuid.uuid4())
PRIMARY_UUID = str(uuid.uuid4())
#: Where the remote's controller and exporter keep their objects (Deckhouse's namespace).
REMOTE_NAMESPACE = "d8-istio"
#: istiod gives a remote cluster this long (PILOT_REMOTE_CLUSTER_TIMEOUT) before it calls it `timeout`.
SYNC_DEADLINE = 30.0
#: A namespace of the seeded mesh where the tests add their own services.
NAMESPACE = "accounts"
#: The API token lifetime of the rotation test: re-minted when a third of it remains.
ROTATION_TTL = 45
#: How long the key rotation test's primary publishes its next key before signing with it.
PUBLISH_PERIOD = 4

pytestmark = pytest.mark.timeout(600)

#: What istiod (the version tests/real/istiod/go.mod pins) asks of a remote with Istio's and Gateway
#: API's CRDs: (verb, group, resource, namespace, decision), one streaming watch-list each. The table
#: in docs/istiod-requests.md says the same; a new Istio that asks for more or less fails here first.
ISTIOD_REQUESTS = {
    ("watch", "", "namespaces", None, "allow"),
    ("watch", "", "nodes", None, "allow"),
    ("watch", "", "pods", None, "allow"),
    ("watch", "", "services", None, "allow"),
    ("watch", "discovery.k8s.io", "endpointslices", None, "allow"),
    ("watch", "apiextensions.k8s.io", "customresourcedefinitions", None, "allow"),
    ("watch", "networking.istio.io", "workloadentries", None, "allow"),
    ("watch", "gateway.networking.k8s.io", "gateways", None, "allow"),
    ("watch", "", "configmaps", "istio-system", "allow"),
    ("watch", "", "secrets", None, "conceal"),
}


@pytest.fixture(scope="session")
def istiod_binary() -> Path:
    try:
        return gobuild.ensure("pilot-discovery")
    except gobuild.BuildError as exc:
        pytest.fail(f"test-istio: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def primary(tmp_path_factory: pytest.TempPathFactory, istiod_binary: Path) -> Iterator[RealCluster]:
    """The cluster istiod runs against: its own control plane, Istio's CRDs, ``istio-system``."""
    cluster = RealCluster(tmp_path_factory.mktemp("primary"), name="primary")
    try:
        cluster.start()
        prepare_primary(cluster)
    except (StartError, RuntimeError) as exc:
        cluster.stop()
        pytest.fail(f"test-istio: primary: {exc}", pytrace=False)
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def remote(real: Real) -> Real:
    """The seeded real cluster of ``make test-real``, with Istio's and Gateway API's CRDs."""
    try:
        prepare_remote(real.cluster)
    except RuntimeError as exc:
        pytest.fail(f"test-istio: remote: {exc}", pytrace=False)
    return real


def remote_kubeconfig(box: Sandbox, cluster: str = "alpha") -> str:
    """A hand-written remote secret's kubeconfig: the proxy as ``server:``, a token minted by ``cluster``'s
    key (a key the federation kit never trusted, for the refusal test)."""
    return render_kubeconfig(
        box.proxy_url, box.serving.ca_file.read_bytes(), token=box.clusters[cluster].token, name=REMOTE
    )


@dataclass
class Federation:
    real: Real
    primary: RealCluster
    proxy: Sandbox
    istiod: Istiod
    #: The proxy's name for the cluster whose tokens istiod presents.
    caller: str = PRIMARY

    async def status(self) -> str | None:
        return await asyncio.to_thread(self.istiod.cluster_status, REMOTE)

    async def wait_synced(self, timeout: float = SYNC_DEADLINE) -> float:
        """Seconds until istiod calls the remote ``synced``; fails at once on ``timeout`` or an exit."""
        started = time.monotonic()
        seen: list[str | None] = []
        while True:
            if not self.istiod.alive():
                pytest.fail(f"istiod exited:\n{self.istiod.log_tail()}")
            status = await self.status()
            if not seen or seen[-1] != status:
                seen.append(status)
            if status == "synced":
                return time.monotonic() - started
            assert status != "timeout", f"istiod timed out syncing {REMOTE}: {seen}\n{self.istiod.log_tail()}"
            if time.monotonic() - started > timeout:
                pytest.fail(f"{REMOTE} not synced within {timeout:.0f}s: {seen}\n{self.istiod.log_tail()}")
            await asyncio.sleep(0.1)

    async def until(self, probe: Any, what: str, timeout: float = 30) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            result = await asyncio.to_thread(probe)
            if result:
                return result
            if time.monotonic() > deadline:
                pytest.fail(f"istiod never showed {what} within {timeout:.0f}s\n{self.istiod.log_tail()}")
            await asyncio.sleep(0.2)

    def caller_records(self) -> list[dict[str, Any]]:
        """The proxy's audit records of requests with the tokens istiod presents (the primary's). A watch
        is recorded when it ends: read them once istiod or the proxy has stopped."""
        return [r for r in self.proxy.audit_records() if r.get("cluster") == self.caller]

    def istiod_records(self) -> list[dict[str, Any]]:
        """istiod's requests: the primary's, less its controller's checks of the remote API."""
        return [r for r in self.caller_records() if not _api_check(r)]

    def open_watches(self, cluster: str | None = None) -> int:
        """Watches the proxy holds open for ``cluster`` now (its ``apiproxy_watches_active`` gauge)."""
        assert self.proxy.proxy is not None
        total = 0.0
        for family in self.proxy.proxy.metrics.registry.collect():
            for sample in family.samples:
                if sample.name == "apiproxy_watches_active" and sample.labels.get("cluster") == (
                    cluster or self.caller
                ):
                    total += sample.value
        return int(total)


def _api_check(record: dict[str, Any]) -> bool:
    """The controller's check of the remote API, made with the token it then gives istiod: ``GET /api``
    (its ``GET /readyz`` is the proxy's own readiness, never audited). istiod asks for no discovery."""
    return record.get("url") in ("/api", "/readyz")


# -- the federation kit: exporter and controller on both sides, the proxy on remote --------------------


def _tls_files(directory: Path, ca: Issued, name: str) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    make_leaf(ca, name, names=["127.0.0.1", "localhost"]).write(cert, key)
    return cert, key


def _mesh_root(directory: Path, name: str) -> Path:
    """The root CA an Istio of ``name`` would publish (its ``istio-ca-root-cert``)."""
    path = directory / f"{name}-mesh-root.pem"
    path.write_bytes(make_ca(f"{name} mesh root CA").cert_pem)
    return path


@dataclass
class Side:
    """One cluster's half of the federation kit: its exporter and its controller, as processes."""

    name: str
    cluster: RealCluster
    uuid: str
    namespace: str
    exporter_port: int
    workdir: Path
    processes: list[Process] = field(default_factory=list)

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.exporter_port}/metadata/"

    def start(
        self, *, api_host: str, tls: tuple[Path, Path], gateway: str, controller_flags: tuple[str, ...]
    ) -> None:
        self.cluster.kubectl("create", "namespace", self.namespace, check=False)
        gateways = self.workdir / "ingress-gateways.json"
        self.workdir.mkdir(parents=True, exist_ok=True)
        gateways.write_text(json.dumps([{"address": gateway, "port": 15443}]))
        kubeconfig = str(self.cluster.admin_kubeconfig)
        # The controller first: it generates the keypair the exporter publishes.
        self.processes.append(
            apiproxy_process(
                f"{self.name}-controller",
                self.workdir,
                "multicluster",
                f"--cluster-uuid={self.uuid}",
                f"--namespace={self.namespace}",
                f"--kubeconfig={kubeconfig}",
                "--resync=1s",
                "--retry-base=0.5s",
                "--retry-cap=2s",
                "--metrics-listen=",
                *controller_flags,
            )
        )
        self.processes.append(
            apiproxy_process(
                f"{self.name}-exporter",
                self.workdir,
                "exporter",
                f"--cluster-uuid={self.uuid}",
                f"--cluster-id={self.name}",
                f"--api-host={api_host}",
                f"--namespace={self.namespace}",
                f"--kubeconfig={kubeconfig}",
                f"--root-ca-file={_mesh_root(self.workdir, self.name)}",
                f"--ingress-gateways-file={gateways}",
                f"--listen=127.0.0.1:{self.exporter_port}",
                "--metrics-listen=",
                f"--tls-cert-file={tls[0]}",
                f"--tls-private-key-file={tls[1]}",
                f"--audit-log={self.workdir / 'exporter-audit.log'}",
            )
        )

    def check_alive(self) -> None:
        for proc in self.processes:
            if not proc.alive():
                pytest.fail(f"{proc.name} exited with {proc.popen.returncode}:\n{_tail(proc.log, 30)}")

    def peer_with(self, name: str, other: Side, ca_pem: bytes) -> None:
        """An IstioMulticluster on this side for ``other``'s exporter; ``ca_pem`` verifies the exporter
        and the API host it publishes."""
        resource = {
            "apiVersion": "deckhouse.io/v1alpha1",
            "kind": "IstioMulticluster",
            "metadata": {"name": name},
            "spec": {"metadataEndpoint": other.endpoint, "metadata": {"ca": ca_pem.decode()}},
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(resource))

    def resource(self, name: str) -> dict[str, Any] | None:
        got = self.cluster.kubectl("get", "istiomulticluster", name, "-o", "json", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else None

    def condition(self, name: str, kind: str = "Ready") -> dict[str, Any]:
        for c in ((self.resource(name) or {}).get("status") or {}).get("conditions") or []:
            if c.get("type") == kind:
                return dict(c)
        return {}

    def unpeer(self, name: str) -> None:
        """Delete the resource while the controller runs (its finalizer cleans up); a finalizer left by a
        controller that is gone is removed so the next test starts clean."""
        done = self.cluster.kubectl(
            "delete", "istiomulticluster", name, "--ignore-not-found", "--timeout=30s", check=False
        )
        if done.returncode != 0:
            self.cluster.kubectl(
                "patch", "istiomulticluster", name, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}', check=False,
            )  # fmt: skip

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()

    def secret(self, name: str) -> dict[str, Any] | None:
        got = self.cluster.kubectl("get", "secret", name, "-n", self.namespace, "-o", "json", check=False)
        return json.loads(got.stdout) if got.returncode == 0 else None


@dataclass
class Kit:
    remote: Side
    primary: Side
    trust: SecretFile
    #: Seconds from the IstioMulticluster resources' creation to the primary's being Ready.
    established: float = 0.0
    mesh_settings: str = ""
    #: The remote's resource for the primary: its remote-API condition (the primary has no proxy).
    remote_ready: dict[str, Any] = field(default_factory=dict)


def remote_secret_token(secret: dict[str, Any] | None) -> str | None:
    """The bearer token in the kubeconfig of the remote secret the primary's controller wrote."""
    data = (secret or {}).get("data") or {}
    if REMOTE not in data:
        return None
    config = yaml.safe_load(base64.b64decode(data[REMOTE]))
    token: str = config["users"][0]["user"]["token"]
    return token


async def _eventually(probe: Callable[[], Any], what: str, kit: Kit, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        kit.remote.check_alive()
        kit.primary.check_alive()
        result = await asyncio.to_thread(probe)
        if result:
            return result
        if time.monotonic() > deadline:
            logs = "\n".join(
                f"--- {p.name}\n{_tail(p.log, 15)}" for p in kit.remote.processes + kit.primary.processes
            )
            pytest.fail(f"never {what} within {timeout:.0f}s\n{logs}")
        await asyncio.sleep(0.2)


@contextlib.asynccontextmanager
async def federation(
    real: Real,
    primary: RealCluster,
    binary: Path,
    workdir: Path,
    *,
    primary_flags: tuple[str, ...] = (),
    istiod_env: dict[str, str] | None = None,
    **proxy_settings: Any,
) -> AsyncIterator[tuple[Federation, Kit]]:
    """The federation kit wires istiod to the remote: on *remote* the proxy (shipped policy), the exporter
    and the controller; on *primary* the exporter and the controller (``--namespace istio-system``, so the
    remote secret lands where istiod looks); an IstioMulticluster on each side for the other's exporter.
    The proxy's trust store is the Secret the remote's controller writes; istiod gets the remote secret
    the primary's controller wrote and the mesh settings it produced. Nothing is written by hand."""
    port = free_port()
    box = real_sandbox(
        real,
        workdir / "proxy",
        listen=f"127.0.0.1:{port}",
        cluster_uuid=REMOTE_UUID,
        cluster_name=[(PRIMARY_UUID, PRIMARY)],
        **proxy_settings,
    )
    remote_side = Side(REMOTE, real.cluster, REMOTE_UUID, REMOTE_NAMESPACE, free_port(), workdir / "remote")
    primary_side = Side(PRIMARY, primary, PRIMARY_UUID, ISTIO_NAMESPACE, free_port(), workdir / "primary")
    trust = SecretFile(
        real.cluster.admin_kubeconfig, REMOTE_NAMESPACE, TRUST_SECRET, TRUST_KEY, box.trust_file
    )
    kit = Kit(remote_side, primary_side, trust)
    istiod = Istiod(binary, workdir / "istiod", primary.admin_kubeconfig, env=istiod_env or {})
    try:
        remote_side.start(
            api_host=f"127.0.0.1:{port}",
            tls=_tls_files(workdir / "remote", box.proxy_ca, "remote-exporter"),
            gateway="192.0.2.10",
            controller_flags=(),
        )
        primary_side.start(
            api_host=f"127.0.0.1:{primary.port}",
            tls=_tls_files(workdir / "primary", primary.ca, "primary-exporter"),
            gateway="192.0.2.20",
            controller_flags=primary_flags,
        )
        began = time.monotonic()
        # The proxy's serving CA also signed the remote exporter's certificate; the primary's cluster CA
        # the primary exporter's (its API host is the primary's apiserver).
        await asyncio.to_thread(remote_side.peer_with, PRIMARY, primary_side, primary.ca.cert_pem)
        await asyncio.to_thread(primary_side.peer_with, REMOTE, remote_side, box.proxy_ca.cert_pem)
        trust.start()
        if not await asyncio.to_thread(trust.wait_for, lambda raw: PRIMARY_UUID.encode() in raw, 60):
            await _eventually(lambda: False, "a trust store naming the primary", kit, 0)
        await box.start()
        await _eventually(
            lambda: primary_side.condition(REMOTE).get("status") == "True",
            "the primary's peer Ready",
            kit,
            60,
        )
        kit.established = time.monotonic() - began
        secret = await asyncio.to_thread(primary_side.secret, f"istio-remote-secret-{REMOTE}")
        assert secret is not None, "the primary's controller wrote no remote secret"
        assert secret["metadata"]["labels"].get("istio/multiCluster") == "true"
        settings = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "apiproxy", "multicluster", "mesh-config",
             f"--kubeconfig={primary.admin_kubeconfig}"],
            capture_output=True, text=True, timeout=60, check=True,
        )  # fmt: skip
        kit.mesh_settings = settings.stdout
        istiod.mesh_config, istiod.mesh_networks = mesh_files(settings.stdout)
        try:
            await asyncio.to_thread(istiod.start)
        except StartError as exc:
            pytest.fail(f"test-istio: {exc}", pytrace=False)
        yield Federation(real, primary, box, istiod), kit
    finally:
        await asyncio.to_thread(istiod.stop)
        await asyncio.to_thread(primary_side.unpeer, REMOTE)
        await asyncio.to_thread(remote_side.unpeer, PRIMARY)
        await asyncio.to_thread(primary_side.stop)
        await asyncio.to_thread(remote_side.stop)
        await asyncio.to_thread(trust.stop)
        await box.stop()


@contextlib.asynccontextmanager
async def hand_wired(
    real: Real,
    primary: RealCluster,
    binary: Path,
    workdir: Path,
    *,
    kubeconfig: Callable[[Sandbox], str],
    istiod_env: dict[str, str] | None = None,
) -> AsyncIterator[Federation]:
    """A remote secret written by the test, for a token no controller would mint."""
    box = real_sandbox(real, workdir / "proxy")
    await box.start()
    istiod = Istiod(binary, workdir / "istiod", primary.admin_kubeconfig, env=istiod_env or {})
    try:
        await asyncio.to_thread(write_remote_secret, primary, REMOTE, kubeconfig(box))
        try:
            await asyncio.to_thread(istiod.start)
        except StartError as exc:
            pytest.fail(f"test-istio: {exc}", pytrace=False)
        yield Federation(real, primary, box, istiod, caller="alpha")
    finally:
        await asyncio.to_thread(istiod.stop)
        await asyncio.to_thread(
            primary.kubectl,
            "delete",
            "secret",
            f"istio-remote-secret-{REMOTE}",
            "-n",
            ISTIO_NAMESPACE,
            "--ignore-not-found",
        )
        await box.stop()


def direct(real: Real, target: str) -> list[dict[str, Any]]:
    status, _, body = real.cluster.request("GET", target, headers={"Accept": "application/json"})
    assert status == 200, (target, status)
    items: list[dict[str, Any]] = json.loads(body)["items"]
    return items


def host(name: str, namespace: str) -> str:
    return f"{name}.{namespace}.svc.cluster.local"


def service(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {"selector": {"app": name}, "ports": [{"name": "http", "port": 80, "targetPort": 8080}]},
    }


def endpoint_slice(name: str, addresses: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": f"{name}-1",
            "namespace": NAMESPACE,
            "labels": {"kubernetes.io/service-name": name},
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [a], "conditions": {"ready": True}} for a in addresses],
    }


def request_table(records: list[dict[str, Any]]) -> Counter[tuple[str, str, str, int]]:
    """istiod's requests by (verb, resource or URL, decision, status)."""
    table: Counter[tuple[str, str, str, int]] = Counter()
    for r in records:
        what = r.get("resource") or r.get("url") or r.get("target", "?")
        if r.get("group"):
            what = f"{r['group']}/{what}"
        if r.get("namespace"):
            what = f"{what} (ns {r['namespace']})"
        table[(r.get("verb") or r["method"], what, r["decision"], r["status"])] += 1
    return table


def render_table(table: Counter[tuple[str, str, str, int]]) -> str:
    lines = ["| verb | resource | decision | status | requests |", "|---|---|---|---|---|"]
    for (verb, what, decision, status), count in sorted(table.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        lines.append(f"| {verb} | {what} | {decision} | {status} | {count} |")
    return "\n".join(lines)


async def test_istiod_syncs_the_remote_through_the_proxy_and_sees_its_changes(
    remote: Real, primary: RealCluster, istiod_binary: Path, tmp_path: Path
) -> None:
    async with federation(remote, primary, istiod_binary, tmp_path) as (fed, kit):
        istiod = fed.istiod
        await fed.wait_synced(timeout=SYNC_DEADLINE + 30)
        since_start = time.monotonic() - istiod.started
        print(f"\nresources created -> primary's peer Ready: {kit.established:.1f}s")
        print(f"istiod start -> {REMOTE} synced: {since_start:.1f}s")

        # istiod runs with what the primary's controller produced: the remote's root CA, its network.
        produced = yaml.safe_load(kit.mesh_settings)
        remote_root = (kit.remote.workdir / f"{REMOTE}-mesh-root.pem").read_text()
        assert [c["pem"] for c in produced["meshConfig"]["caCertificates"]] == [remote_root]
        [network] = produced["meshNetworks"].values()
        assert network["endpoints"] == [{"fromRegistry": REMOTE}]
        assert yaml.safe_load(istiod.mesh_file.read_text())["caCertificates"] == [{"pem": remote_root}]
        assert yaml.safe_load(istiod.networks_file.read_text())["networks"] == produced["meshNetworks"]
        kit.remote_ready = await asyncio.to_thread(kit.remote.condition, PRIMARY, "RemoteAPIServerReady")

        assert await asyncio.to_thread(istiod.metric, "istiod_managed_clusters", cluster_type="remote") == 1
        assert not await asyncio.to_thread(istiod.metric, "controller_sync_errors_total", cluster=REMOTE)
        assert not await asyncio.to_thread(istiod.metric, "remote_cluster_sync_timeouts_total")

        # Every remote service is in istiod's registry, and its endpoints are in the remote's shard.
        services = direct(remote, "/api/v1/services")
        expected_hosts = {host(s["metadata"]["name"], s["metadata"]["namespace"]) for s in services}
        hosts = await asyncio.to_thread(istiod.service_hosts)
        assert expected_hosts <= hosts, sorted(expected_hosts - hosts)[:10]
        ready: dict[str, set[str]] = {}
        for eps in direct(remote, "/apis/discovery.k8s.io/v1/endpointslices"):
            owner = eps["metadata"].get("labels", {}).get("kubernetes.io/service-name")
            for endpoint in eps.get("endpoints") or []:
                if owner and endpoint.get("conditions", {}).get("ready"):
                    key = host(owner, eps["metadata"]["namespace"])
                    ready.setdefault(key, set()).update(endpoint["addresses"])
        assert ready, "the seeded mesh has no ready endpoints to look for"
        for hostname, addresses in ready.items():
            held = await asyncio.to_thread(istiod.endpoint_addresses, hostname, REMOTE)
            assert addresses <= held, (hostname, sorted(addresses - held)[:5])

        # A change on the remote reaches istiod through the proxy: a new service, then a scaled slice.
        name = f"istiod-sees-{uuid.uuid4().hex[:6]}"
        await asyncio.to_thread(remote.cluster.apply, [service(name), endpoint_slice(name, ["10.250.0.1"])])
        try:
            await fed.until(lambda: host(name, NAMESPACE) in istiod.service_hosts(), "the new service")
            await fed.until(
                lambda: istiod.endpoint_addresses(host(name, NAMESPACE), REMOTE) == {"10.250.0.1"},
                "the new service's endpoint",
            )
            scaled = endpoint_slice(name, ["10.250.0.1", "10.250.0.2", "10.250.0.3"])
            await asyncio.to_thread(remote.cluster.kubectl, "apply", "-f", "-", input=json.dumps(scaled))
            await fed.until(
                lambda: (
                    istiod.endpoint_addresses(host(name, NAMESPACE), REMOTE)
                    == {"10.250.0.1", "10.250.0.2", "10.250.0.3"}
                ),
                "the scaled EndpointSlice",
            )
        finally:
            await _cleanup(remote, name)
        assert await fed.status() == "synced"
        assert not await asyncio.to_thread(istiod.metric, "controller_sync_errors_total", cluster=REMOTE)
    checks = [r for r in fed.caller_records() if _api_check(r)]
    assert checks, "the primary's controller never checked the remote API through the proxy"
    assert {(r["decision"], r["status"]) for r in checks} == {("allow", 200)}
    print(f"the controller's API checks: {sorted({(r['url'], r['rule']) for r in checks})}")
    print(f"remote's IstioMulticluster {PRIMARY}: {kit.remote_ready}")
    records = fed.istiod_records()
    table = request_table(records)
    (tmp_path / "istiod-requests.md").write_text(render_table(table) + "\n")
    print(render_table(table))
    assert records, "istiod made no request through the proxy"
    denied = {k: n for k, n in table.items() if k[2] != "allow" and k[2] != "conceal"}
    assert not denied, denied
    asked = {
        (r.get("verb"), r.get("group"), r.get("resource"), r.get("namespace"), r["decision"]) for r in records
    }
    assert asked == ISTIOD_REQUESTS, (sorted(asked - ISTIOD_REQUESTS), sorted(ISTIOD_REQUESTS - asked))
    secret_records = [r for r in records if r.get("resource") == "secrets"]
    assert secret_records, "istiod never asked for Secrets (the policy's conceal rule would be dead)"
    assert {r["decision"] for r in secret_records} == {"conceal"}
    forwarded = list(remote.cluster.audit_events_by(remote.proxy_user))
    assert forwarded, "the remote apiserver saw nothing from the proxy"
    assert not [e for e in forwarded if _secret(e)]
    assert {e["verb"] for e in forwarded} <= {"get", "list", "watch"}


def _relist(record: dict[str, Any]) -> bool:
    """A full read of a collection: a LIST, or a streaming watch-list (``sendInitialEvents=true``)."""
    return record.get("verb") == "list" or (
        record.get("verb") == "watch" and "sendInitialEvents=true" in record.get("target", "")
    )


def _secret(event: dict[str, Any]) -> bool:
    resource: str | None = event.get("objectRef", {}).get("resource")
    return resource == "secrets"


async def _cleanup(remote: Real, name: str) -> None:
    await asyncio.to_thread(
        remote.cluster.kubectl,
        "delete",
        "service,endpointslice",
        name,
        f"{name}-1",
        "-n",
        NAMESPACE,
        "--ignore-not-found",
        check=False,
    )


async def test_istiod_resyncs_after_the_proxy_restarts(
    remote: Real, primary: RealCluster, istiod_binary: Path, tmp_path: Path
) -> None:
    """The proxy goes away under istiod's watches and comes back on the same address: istiod relists
    through it and the remote is ``synced`` again, with changes made meanwhile."""
    async with federation(remote, primary, istiod_binary, tmp_path) as (fed, _kit):
        await fed.wait_synced(timeout=SYNC_DEADLINE + 30)
        informers = fed.open_watches()
        await fed.proxy.stop()
        before = len(fed.istiod_records())
        name = f"while-down-{uuid.uuid4().hex[:6]}"
        await asyncio.to_thread(remote.cluster.apply, [service(name), endpoint_slice(name, ["10.250.1.1"])])
        try:
            await fed.proxy.start()
            restarted = time.monotonic()
            await fed.until(
                lambda: fed.istiod.endpoint_addresses(host(name, NAMESPACE), REMOTE) == {"10.250.1.1"},
                "the service created while the proxy was down",
                timeout=60,
            )
            print(f"\nproxy restart -> change seen by istiod: {time.monotonic() - restarted:.1f}s")
            # Every informer comes back (client-go's backoff decides when).
            await fed.until(lambda: fed.open_watches() >= informers, "all informers back", timeout=90)
            print(f"proxy restart -> all {informers} informers back: {time.monotonic() - restarted:.1f}s")
            assert await fed.status() == "synced"
            assert fed.istiod.alive()
        finally:
            await _cleanup(remote, name)
    after = fed.istiod_records()[before:]
    relists = Counter(r["resource"] for r in after if _relist(r))
    resumed = Counter(r["resource"] for r in after if r.get("verb") == "watch" and not _relist(r))
    print(f"after the restart: relists {dict(relists)}; watches resumed {dict(resumed)}")
    assert sum(relists.values()) + sum(resumed.values()) >= informers
    assert {r["decision"] for r in after} <= {"allow", "conceal"}


def _claims(token: str | None) -> dict[str, Any]:
    assert token is not None, "no token in the remote secret"
    claims: dict[str, Any] = json.loads(b64url_decode(token.split(".")[1]))
    return claims


def _ended_watches(fed: Federation) -> int:
    return sum(1 for r in fed.istiod_records() if r.get("verb") == "watch")


@dataclass
class Switch:
    """How istiod moved from one remote secret to the next, sampled every 50 ms."""

    took: float
    not_synced: float
    endpoints_missing: float
    statuses: list[str | None]

    def __str__(self) -> str:
        return (
            f"istiod on the new token: {self.took:.1f}s; not synced for {self.not_synced:.2f}s, "
            f"endpoints missing for {self.endpoints_missing:.2f}s; statuses {self.statuses}"
        )


async def istiod_moves_to_the_new_token(
    fed: Federation,
    kit: Kit,
    hostname: str,
    addresses: set[str],
    *,
    replaced: Callable[[], bool],
    timeout: float,
) -> Switch:
    """Sample istiod every 50 ms from *before* the controller replaces the remote secret (``replaced()``
    turns true) until istiod has closed every watch of its old client (the proxy would end them at the
    old token's ``exp`` at the latest), holds as many watches again and calls the remote synced.
    Measured over the whole window: the time the remote was not ``synced`` and ``hostname``'s endpoints
    were not ``addresses``; ``took`` counts from when the new secret was seen."""
    informers, ended_before = fed.open_watches(), _ended_watches(fed)
    seen: list[float] = []

    async def follow_secret() -> None:
        while not await asyncio.to_thread(replaced):
            kit.primary.check_alive()
            await asyncio.sleep(0.2)
        seen.append(time.monotonic())

    follower = asyncio.create_task(follow_secret())
    began = last = time.monotonic()
    switch = Switch(0.0, 0.0, 0.0, [])
    try:
        while (
            not seen
            or _ended_watches(fed) < ended_before + informers
            or fed.open_watches() < informers
            or await fed.status() != "synced"
        ):
            if follower.done() and follower.exception() is not None:
                raise follower.exception()  # type: ignore[misc]
            status = await fed.status()
            held = await asyncio.to_thread(fed.istiod.endpoint_addresses, hostname, REMOTE)
            now = time.monotonic()
            if status != "synced":
                switch.not_synced += now - last
            if held != addresses:
                switch.endpoints_missing += now - last
            last = now
            if not switch.statuses or switch.statuses[-1] != status:
                switch.statuses.append(status)
            assert status != "timeout", switch.statuses
            assert fed.istiod.alive()
            assert now - began < timeout, f"istiod never moved to a new token: {switch.statuses}"
            await asyncio.sleep(0.05)
    finally:
        follower.cancel()
    switch.took = time.monotonic() - seen[0]
    return switch


async def test_the_controller_re_mints_the_remote_token_under_istiod_once_per_lifetime(
    remote: Real, primary: RealCluster, istiod_binary: Path, tmp_path: Path
) -> None:
    """With a short ``--api-token-ttl`` the primary's controller re-mints the remote secret's token when a
    third of its life remains, while istiod watches with it: istiod rebuilds the remote's client from the
    new kubeconfig. Measured: how long the remote is not ``synced`` and whether its endpoints leave
    istiod's registry meanwhile. The new token is not replaced again before its own re-mint point,
    although the controller reconciles every second."""
    flags = (f"--api-token-ttl={ROTATION_TTL}s",)
    async with federation(remote, primary, istiod_binary, tmp_path, primary_flags=flags) as (fed, kit):
        await fed.wait_synced(timeout=SYNC_DEADLINE + 30)
        secret_name = f"istio-remote-secret-{REMOTE}"

        def token_now() -> str | None:
            return remote_secret_token(kit.primary.secret(secret_name))

        first = await asyncio.to_thread(token_now)
        claims = _claims(first)
        assert claims["exp"] - claims["nbf"] == ROTATION_TTL
        assert (claims["sub"], claims["aud"], claims["scope"]) == (PRIMARY_UUID, REMOTE_UUID, "api")
        name = f"rotation-{uuid.uuid4().hex[:6]}"
        hostname = host(name, NAMESPACE)
        await asyncio.to_thread(remote.cluster.apply, [service(name), endpoint_slice(name, ["10.250.2.1"])])
        try:
            await fed.until(
                lambda: fed.istiod.endpoint_addresses(hostname, REMOTE) == {"10.250.2.1"}, "the endpoint"
            )
            assert fed.istiod.alive()
            due = claims["exp"] - ROTATION_TTL / 3
            switch = await istiod_moves_to_the_new_token(
                fed,
                kit,
                hostname,
                {"10.250.2.1"},
                replaced=lambda: token_now() not in (None, first),
                timeout=max(0.0, due - time.time()) + 60,
            )
            second = await asyncio.to_thread(token_now)
            # The re-mint came when a third of the first token's life remained, not before.
            assert time.time() >= due - 2, "re-minted before a third of the token's life remained"
            new_claims = _claims(second)
            assert new_claims["exp"] - new_claims["nbf"] == ROTATION_TTL
            assert new_claims["nbf"] >= due - 2
            print(f"\ntoken re-minted -> {switch}")
            # At most once per lifetime: the new token stays until its own re-mint point.
            quiet_until = new_claims["exp"] - ROTATION_TTL / 3 - 2
            while time.time() < quiet_until:
                assert await asyncio.to_thread(token_now) == second, "re-minted twice in one lifetime"
                kit.primary.check_alive()
                await asyncio.sleep(0.5)
            assert await fed.status() == "synced"
            assert await asyncio.to_thread(fed.istiod.endpoint_addresses, hostname, REMOTE) == {"10.250.2.1"}
            assert (
                await asyncio.to_thread(fed.istiod.metric, "istiod_managed_clusters", cluster_type="remote")
                == 1
            )
        finally:
            await _cleanup(remote, name)


async def test_a_token_the_proxy_does_not_trust_leaves_the_remote_unsynced_and_nothing_crashes(
    remote: Real, primary: RealCluster, istiod_binary: Path, tmp_path: Path
) -> None:
    """A remote secret whose token no trusted cluster minted (a revoked or foreign key): every request
    is a 401 with nothing forwarded; istiod gives up on the remote at its sync timeout and keeps
    serving. The one remote secret written by hand: no controller mints a token nobody trusts."""

    def stranger(box: Sandbox) -> str:
        key = new_cluster("stranger", box.local_uuid)
        return render_kubeconfig(
            box.proxy_url, box.serving.ca_file.read_bytes(), token=key.token, name=REMOTE
        )

    async with hand_wired(
        remote,
        primary,
        istiod_binary,
        tmp_path,
        kubeconfig=stranger,
        istiod_env={"PILOT_REMOTE_CLUSTER_TIMEOUT": "3s"},
    ) as fed:
        await fed.until(lambda: fed.istiod.cluster_status(REMOTE) == "timeout", "the remote timing out")
        assert await asyncio.to_thread(fed.istiod.metric, "remote_cluster_sync_timeouts_total")
        assert await asyncio.to_thread(fed.istiod.metric, "controller_sync_errors_total", cluster=REMOTE)
        assert fed.istiod.alive()
        records = fed.proxy.audit_records()
    assert records
    assert {(r["decision"], r["status"]) for r in records} == {("unauthenticated", 401)}


async def test_deleting_the_istiomulticluster_on_remote_revokes_the_primary_under_istiod(
    remote: Real, primary: RealCluster, istiod_binary: Path, tmp_path: Path
) -> None:
    """The IstioMulticluster for the primary is deleted on *remote* while istiod watches: the remote's
    controller drops the primary from the trust store, the proxy ends istiod's open watches at its next
    reload and answers every retry 401, so a change made after the revocation never reaches istiod.
    istiod itself keeps running (and, this Istio version, keeps calling the remote ``synced`` with its
    last-known state; only its sync-error counter moves)."""
    async with federation(remote, primary, istiod_binary, tmp_path) as (fed, kit):
        await fed.wait_synced(timeout=SYNC_DEADLINE + 30)
        assert fed.open_watches() > 0
        deleted = time.monotonic()
        await asyncio.to_thread(
            remote.cluster.kubectl, "delete", "istiomulticluster", PRIMARY, "--timeout=30s"
        )
        finalized = time.monotonic() - deleted
        while fed.open_watches():
            assert time.monotonic() - deleted < 30, "the proxy kept a revoked cluster's watches open"
            kit.remote.check_alive()
            await asyncio.sleep(0.05)
        cut = time.monotonic() - deleted
        assert PRIMARY_UUID.encode() not in fed.proxy.trust_file.read_bytes()
        name = f"after-revoke-{uuid.uuid4().hex[:6]}"
        await asyncio.to_thread(remote.cluster.apply, [service(name), endpoint_slice(name, ["10.250.3.1"])])
        try:

            def refused_endpointslices() -> int:
                return sum(
                    1
                    for r in fed.proxy.audit_records()
                    if r["decision"] == "unauthenticated" and "/endpointslices" in r.get("target", "")
                )

            # istiod's EndpointSlice informer came back after the change was made, and was refused.
            baseline = refused_endpointslices()
            await fed.until(lambda: refused_endpointslices() > baseline, "istiod retrying", timeout=60)
            assert not await asyncio.to_thread(fed.istiod.endpoint_addresses, host(name, NAMESPACE), REMOTE)
            assert await asyncio.to_thread(fed.istiod.metric, "controller_sync_errors_total", cluster=REMOTE)
            assert fed.istiod.alive()
            kit.remote.check_alive()
            kit.primary.check_alive()
            print(
                f"\nIstioMulticluster deleted -> finalized {finalized:.2f}s, watches ended {cut:.2f}s; "
                f"istiod says {await fed.status()!r} afterwards"
            )
        finally:
            await _cleanup(remote, name)
    after = [r for r in fed.proxy.audit_records() if r["decision"] != "unauthenticated"]
    ended = {r["reason"] for r in after if r.get("verb") == "watch"}
    assert ended == {"ended by the proxy: trust store changed"}


async def test_the_primary_rotates_its_key_under_istiod_and_the_remote_follows(
    remote: Real, primary: RealCluster, istiod_binary: Path, tmp_path: Path
) -> None:
    """``apiproxy keys rotate`` on the primary while istiod watches: the next key is published, the
    remote's controller puts it beside the current one in the proxy's trust store, then the primary's
    controller signs with it and re-mints the remote secret. istiod moves to the new token; the proxy
    refuses none of its requests."""
    flags = (f"--rotation-publish-period={PUBLISH_PERIOD}s",)
    try:
        async with federation(remote, primary, istiod_binary, tmp_path, primary_flags=flags) as (fed, kit):
            await fed.wait_synced(timeout=SYNC_DEADLINE + 30)
            secret_name = f"istio-remote-secret-{REMOTE}"

            def token_now() -> str | None:
                return remote_secret_token(kit.primary.secret(secret_name))

            first = await asyncio.to_thread(token_now)
            name = f"key-rotation-{uuid.uuid4().hex[:6]}"
            hostname = host(name, NAMESPACE)
            await asyncio.to_thread(
                remote.cluster.apply, [service(name), endpoint_slice(name, ["10.250.4.1"])]
            )
            try:
                await fed.until(
                    lambda: fed.istiod.endpoint_addresses(hostname, REMOTE) == {"10.250.4.1"}, "the endpoint"
                )
                await asyncio.to_thread(
                    subprocess.run,
                    [sys.executable, "-m", "apiproxy", "keys", "rotate",
                     f"--kubeconfig={primary.admin_kubeconfig}", f"--namespace={ISTIO_NAMESPACE}"],
                    capture_output=True, text=True, timeout=60, check=True,
                )  # fmt: skip
                rotated = time.monotonic()
                # Published first: the proxy trusts the next key before a token is signed with it.
                trusted = await asyncio.to_thread(
                    kit.trust.wait_for, lambda raw: b"authnKeyPubNext" in raw, PUBLISH_PERIOD + 10
                )
                assert trusted, "the remote's trust store never gained the primary's next key"
                switch = await istiod_moves_to_the_new_token(
                    fed,
                    kit,
                    hostname,
                    {"10.250.4.1"},
                    replaced=lambda: token_now() not in (None, first),
                    timeout=PUBLISH_PERIOD + 60,
                )
                print(f"\nkey rotated -> {time.monotonic() - rotated:.1f}s; {switch}")
                assert await fed.status() == "synced"
            finally:
                await _cleanup(remote, name)
        refused = [r for r in fed.caller_records() if r["decision"] not in ("allow", "conceal")]
        assert not refused, Counter((r["decision"], r.get("resource") or r.get("url")) for r in refused)
    finally:
        # The next test starts from a fresh keypair, not one half-way through a rotation.
        await asyncio.to_thread(
            primary.kubectl,
            "delete",
            "secret",
            "d8-remote-authn-keypair",
            "-n",
            ISTIO_NAMESPACE,
            "--ignore-not-found",
        )

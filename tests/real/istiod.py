"""istiod (``pilot-discovery``) as a local process against a real primary cluster.

Everything istiod would take from its pod is given explicitly: the primary's admin kubeconfig instead of
in-cluster credentials, ``POD_NAMESPACE``/``POD_NAME``/``CLUSTER_ID`` in its environment, a mesh config
and meshNetworks file, loopback ports for every listener, and empty webhook configuration names so it
patches nothing. Its working directory holds the relative paths it writes (``./var/run/secrets/istiod``
for its own serving certificate, issued by the self-signed CA it keeps in the primary's ``istio-ca-secret``).

Its own debug endpoints are the assertions' source of truth: ``/debug/clusterz`` (each remote cluster's
``syncStatus``), ``/debug/registryz`` (services), ``/debug/endpointShardz`` (endpoints per cluster) and
``/metrics``, all on the monitoring port.

:func:`remote_secret` is the one place that knows the shape of Istio's remote secret, so the object a
controller writes can replace the one a test writes without touching anything else.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from prometheus_client.parser import text_string_to_metric_families

from apiproxy.kubewatch import Event, KubernetesClient, WatchLoop, WatchTarget, list_then_watch
from tests.real import gobuild
from tests.real.cluster import Process, RealCluster, StartError, _spawn, _tail, free_port

ISTIO_NAMESPACE = "istio-system"
#: The CRD of the federation kit's controller, applied on both clusters.
MULTICLUSTER_CRD = Path(__file__).resolve().parents[2] / "deploy" / "multicluster" / "crd.yaml"
MULTICLUSTER_LABEL = "istio/multiCluster"
CLUSTER_ANNOTATION = "networking.istio.io/cluster"

#: The mesh config a primary istiod of a multi-primary mesh runs with; nothing here is specific to the
#: proxy (the remote is reached only through its kubeconfig).
MESH_CONFIG = """\
trustDomain: cluster.local
rootNamespace: istio-system
defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
"""

#: One network: every remote endpoint is directly reachable (no east-west gateway to resolve).
MESH_NETWORKS = "networks: {}\n"


def _istio_file(*parts: str) -> Path:
    path = gobuild.module_source().joinpath(*parts)
    if not path.exists():
        raise gobuild.BuildError(f"the pinned Istio source has no {'/'.join(parts)}")
    return path


def istio_crds() -> Path:
    """Istio's CRDs from the same source the binary is built from."""
    return _istio_file("manifests", "charts", "base", "files", "crd-all.gen.yaml")


def gateway_api_crds() -> Path:
    """The Gateway API CRDs Istio's own integration tests install, at the version this Istio expects."""
    return _istio_file("tests", "integration", "pilot", "testdata", "gateway-api-crd.yaml")


def install_crds(cluster: RealCluster, *manifests: Path) -> None:
    # `create`, not `apply`: these CRDs are larger than apply's last-applied annotation may be.
    for manifest in manifests:
        cluster.kubectl("create", "-f", str(manifest))
    cluster.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=90s")


def install_multicluster_crd(cluster: RealCluster) -> None:
    cluster.kubectl("apply", "-f", str(MULTICLUSTER_CRD))
    cluster.kubectl(
        "wait", "--for=condition=Established", "crd/istiomulticlusters.deckhouse.io", "--timeout=60s"
    )


def prepare_primary(cluster: RealCluster) -> None:
    """Istio's CRDs (established), istiod's namespace, and the IstioMulticluster CRD on the cluster istiod
    runs against."""
    install_crds(cluster, istio_crds())
    cluster.kubectl("create", "namespace", ISTIO_NAMESPACE, check=False)
    install_multicluster_crd(cluster)


def prepare_remote(cluster: RealCluster) -> None:
    """A remote of a multi-primary mesh has Istio installed too, and Gateway API: with these CRDs present
    istiod starts its WorkloadEntry and Gateway informers on the remote, so the policy is tested
    against everything it would read from a real one. The federation kit's CRD is there too."""
    install_crds(cluster, istio_crds(), gateway_api_crds())
    install_multicluster_crd(cluster)


def remote_secret(cluster_id: str, kubeconfig: str, *, name: str | None = None) -> dict[str, Any]:
    """The Secret istiod's multicluster controller turns into a remote cluster: labelled
    ``istio/multiCluster: "true"``, one kubeconfig under the cluster's id."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": name or f"istio-remote-secret-{cluster_id}",
            "namespace": ISTIO_NAMESPACE,
            "labels": {MULTICLUSTER_LABEL: "true"},
            "annotations": {CLUSTER_ANNOTATION: cluster_id},
        },
        "type": "Opaque",
        "stringData": {cluster_id: kubeconfig},
    }


def write_remote_secret(primary: RealCluster, cluster_id: str, kubeconfig: str) -> None:
    """Create or replace a hand-written remote secret on ``primary``: only for a token the federation kit
    would never mint (one no trusted cluster signed)."""
    primary.kubectl("apply", "-f", "-", input=json.dumps(remote_secret(cluster_id, kubeconfig)))


def mesh_files(mesh_settings: str) -> tuple[str, str]:
    """istiod's ``--meshConfig`` and ``--networksConfig`` from the controller's mesh settings
    (``apiproxy multicluster mesh-config``): the peers' root CAs join :data:`MESH_CONFIG` as
    ``caCertificates``, and ``meshNetworks`` becomes the networks file."""
    produced = yaml.safe_load(mesh_settings)
    mesh = yaml.safe_load(MESH_CONFIG)
    mesh["caCertificates"] = produced["meshConfig"]["caCertificates"]
    return yaml.safe_dump(mesh), yaml.safe_dump({"networks": produced["meshNetworks"]})


# -- the federation kit's processes -----------------------------------------------------------------------


def apiproxy_process(name: str, workdir: Path, *args: str) -> Process:
    """``python -m apiproxy ARGS`` as its own process, logging to ``workdir/NAME.log``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return _spawn(name, [sys.executable, "-m", "apiproxy", *args], workdir / f"{name}.log", workdir)


class SecretFile:
    """What kubelet does for a Secret volume: one key of a Secret, written atomically to a file whenever it
    changes (list, then watch, through the official client). The proxy reads the trust store the
    controller writes this way: ``--trust-secret`` needs an in-cluster service account, which a process
    on loopback does not have."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str, key: str, path: Path) -> None:
        self.path = path
        self.key = key
        self.name = name
        self.writes = 0
        self.changed = threading.Condition()
        client = KubernetesClient.from_config(str(kubeconfig), watch_seconds=60)
        target = WatchTarget("secrets", namespace, name=name)
        self.loop = WatchLoop(
            f"Secret {namespace}/{name} -> {path.name}",
            lambda stop: list_then_watch(client, target, stop),
            self.handle,
            backoff=(0.2, 2.0),
        )

    def handle(self, event: Event) -> None:
        if event.get("type") == "RESET":
            named = [o for o in event.get("objects") or () if o.get("metadata", {}).get("name") == self.name]
            event = {"type": "ADDED", "object": named[0]} if named else {"type": "DELETED"}
        if event.get("type") not in ("ADDED", "MODIFIED"):
            return  # kubelet keeps the last content of a deleted Secret's volume
        encoded = (event.get("object", {}).get("data") or {}).get(self.key)
        if encoded is None:
            return
        raw = base64.b64decode(encoded)
        if self.path.exists() and self.path.read_bytes() == raw:
            return
        tmp = self.path.with_suffix(".sync")
        tmp.write_bytes(raw)
        tmp.replace(self.path)
        with self.changed:
            self.writes += 1
            self.changed.notify_all()

    def wait_for(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate(file bytes)`` holds (checked after each write)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while not (self.path.exists() and predicate(self.path.read_bytes())):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.changed.wait(remaining)
        return True

    def start(self) -> SecretFile:
        self.loop.start()
        return self

    def stop(self) -> None:
        self.loop.stop(timeout=2)


@dataclass
class Ports:
    http: int = field(default_factory=free_port)
    https: int = field(default_factory=free_port)
    grpc: int = field(default_factory=free_port)
    secure_grpc: int = field(default_factory=free_port)
    monitoring: int = field(default_factory=free_port)
    ctrlz: int = field(default_factory=free_port)


@dataclass
class Istiod:
    """One pilot-discovery process; ``start()``, query, ``stop()``."""

    binary: Path
    workdir: Path
    kubeconfig: Path
    cluster_id: str = "primary"
    ports: Ports = field(default_factory=Ports)
    #: Extra environment (e.g. ``PILOT_REMOTE_CLUSTER_TIMEOUT``) on top of the fixed one.
    env: dict[str, str] = field(default_factory=dict)
    process: Process | None = None
    started: float = 0.0
    #: The two mesh files' content (the controller's mesh settings, by :func:`mesh_files`).
    mesh_config: str = MESH_CONFIG
    mesh_networks: str = MESH_NETWORKS

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log = self.workdir / "istiod.log"
        self.mesh_file = self.workdir / "mesh.yaml"
        self.networks_file = self.workdir / "meshNetworks.yaml"

    def argv(self) -> list[str]:
        loopback = "127.0.0.1"
        return [
            str(self.binary),
            "discovery",
            f"--kubeconfig={self.kubeconfig}",
            f"--meshConfig={self.mesh_file}",
            f"--networksConfig={self.networks_file}",
            f"--clusterID={self.cluster_id}",
            f"--httpAddr={loopback}:{self.ports.http}",
            f"--httpsAddr={loopback}:{self.ports.https}",
            f"--grpcAddr={loopback}:{self.ports.grpc}",
            f"--secureGRPCAddr={loopback}:{self.ports.secure_grpc}",
            f"--monitoringAddr={loopback}:{self.ports.monitoring}",
            f"--ctrlz_address={loopback}",
            f"--ctrlz_port={self.ports.ctrlz}",
            "--profile=false",
            "--shutdownDuration=1s",
            "--log_output_level=default:info",
        ]

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KUBE", "ISTIO", "PILOT"))}
        env.update(
            POD_NAMESPACE=ISTIO_NAMESPACE,
            POD_NAME="istiod-apiproxy-test",
            CLUSTER_ID=self.cluster_id,
            REVISION="default",
            # Nothing to patch: no webhooks are installed on the primary.
            INJECTION_WEBHOOK_CONFIG_NAME="",
            VALIDATION_WEBHOOK_CONFIG_NAME="",
            # The debug endpoints on the monitoring port (the default, said out loud: they are the test's
            # source of truth).
            ENABLE_DEBUG_ON_HTTP="true",
        )
        env.update(self.env)
        return env

    def start(self, *, timeout: float = 120) -> Istiod:
        self.mesh_file.write_text(self.mesh_config)
        self.networks_file.write_text(self.mesh_networks)
        self.started = time.monotonic()
        handle = self.log.open("ab")
        try:
            popen = subprocess.Popen(
                self.argv(),
                stdout=handle,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.workdir,
                env=self.environment(),
            )
        finally:
            handle.close()
        self.process = Process("istiod", popen, self.log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.process.alive():
                raise StartError(
                    f"istiod exited with {popen.returncode} before its monitoring port answered; "
                    f"last lines of {self.log}:\n{_tail(self.log, 40)}"
                )
            try:
                if self._get("/metrics")[0] == 200:
                    return self
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.2)
        raise StartError(
            f"istiod's monitoring port did not answer within {timeout:.0f}s:\n{_tail(self.log, 40)}"
        )

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log, lines)

    # -- istiod's own view --------------------------------------------------------------------------------

    def _get(self, path: str) -> tuple[int, bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.ports.monitoring, timeout=10)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def debug(self, name: str) -> Any:
        status, body = self._get(f"/debug/{name}")
        if status != 200:
            raise RuntimeError(f"istiod /debug/{name}: {status} {body[:200]!r}")
        return json.loads(body)

    def cluster_status(self, cluster_id: str) -> str | None:
        """``syncStatus`` of ``cluster_id`` in ``/debug/clusterz`` (None while istiod does not know it)."""
        for entry in self.debug("clusterz") or []:
            if entry.get("id") == cluster_id:
                status: str = entry.get("syncStatus", "")
                return status
        return None

    def metrics(self) -> Iterator[tuple[str, dict[str, str], float]]:
        status, body = self._get("/metrics")
        if status != 200:
            raise RuntimeError(f"istiod /metrics: {status}")
        for family in text_string_to_metric_families(body.decode()):
            for sample in family.samples:
                yield sample.name, dict(sample.labels), float(sample.value)

    def metric(self, name: str, **labels: str) -> float | None:
        """The sum of ``name``'s samples matching ``labels``; None when there is no such sample."""
        values = [v for n, got, v in self.metrics() if n == name and labels.items() <= got.items()]
        return sum(values) if values else None

    def service_hosts(self) -> set[str]:
        return {s.get("hostname", "") for s in self.debug("registryz") or []}

    def endpoint_addresses(self, hostname: str, cluster_id: str) -> set[str]:
        """Addresses istiod holds for ``hostname`` in ``cluster_id``'s shard of ``/debug/endpointShardz``."""
        found: set[str] = set()
        for shards in (self.debug("endpointShardz") or {}).get(hostname, {}).values():
            for key, endpoints in (shards.get("Shards") or {}).items():
                if key.endswith(f"/{cluster_id}"):
                    for endpoint in endpoints or []:
                        found.update(endpoint.get("Addresses") or [])
        return found


def ensure_binary() -> Path:
    return gobuild.ensure("pilot-discovery")

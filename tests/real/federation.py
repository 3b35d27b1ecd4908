"""Two real clusters, east and west, each running the whole federation kit as an operator runs it.

A :class:`Member` is one cluster: a :class:`~tests.real.cluster.RealCluster` (etcd and kube-apiserver) with
the IstioMulticluster CRD, a small seeded mesh, its own Istio root CA (``istio-ca-root-cert``), its
advertised ingress gateway, and the three parts as processes (``python -m apiproxy serve|exporter|
multicluster --config FILE``), each logged in as its own service account:

* the proxy as the identity :meth:`RealCluster.install_proxy_identity` gives (exactly the RBAC
  ``apiproxy policy rbac`` derives from the shipped policy) plus :data:`TRUST_READER`, read access to the
  one trust Secret it watches (``--trust-secret``, through ``$KUBECONFIG``): revocation reaches it through
  the real apiserver, not through a file;
* the exporter bound to deploy/base/exporter-rbac.yaml, the controller to deploy/multicluster/rbac.yaml,
  both rendered into the kit's namespace as Kustomize would.

One CA per member issues its exporter's and its proxy's serving certificates: it is the ``spec.metadata.ca``
a peer's IstioMulticluster names, and so the CA in the peer's istiod remote secret. Ports are fixed per
member, so a part restarts where it was. Both members use the default cluster domain.

:class:`Federation` starts both members in parallel and stops everything it started, by pid.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml

from apiproxy.certs import make_ca, make_leaf
from apiproxy.metadata import DEFAULT_NAMESPACE
from apiproxy.multicluster.model import KEYPAIR_SECRET, TRUST_KEY, TRUST_SECRET, remote_secret_name
from tests.real.cluster import Process, RealCluster, _tail, free_port, rendered_into
from tests.real.seed import seed

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
CRD = DEPLOY / "multicluster" / "crd.yaml"
SHIPPED_POLICY = ROOT / "policies" / "istio-remote.yaml"
NS = DEFAULT_NAMESPACE
GROUP_PLURAL = "istiomulticlusters.deckhouse.io"
GROUP_PATH = "deckhouse.io/v1alpha1"
PROXY_NS, PROXY_SA = "apiproxy", "apiproxy"
EXPORTER_SA, CONTROLLER_SA = "apiproxy-exporter", "apiproxy-multicluster"
#: How often each controller fetches its peer again: the faults below show within seconds.
RESYNC = "1s"
T = TypeVar("T")

#: What ``--trust-secret`` needs beyond the policy's RBAC: the one Secret, by name (the watch asks with a
#: ``metadata.name`` field selector, so ``resourceNames`` covers list and watch too).
TRUST_READER = f"""\
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: apiproxy-trust-reader, namespace: {NS}}}
rules:
  - apiGroups: [""]
    resources: [secrets]
    resourceNames: [{TRUST_SECRET}]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: apiproxy-trust-reader, namespace: {NS}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: apiproxy-trust-reader}}
subjects: [{{kind: ServiceAccount, name: {PROXY_SA}, namespace: {PROXY_NS}}}]
"""


class NotYet(AssertionError):
    """A condition polled by :func:`wait_until` did not hold by its deadline."""


def wait_until(probe: Callable[[], T | None], what: str, *, timeout: float = 60, every: float = 0.1) -> T:
    """Poll ``probe`` until it returns something truthy; raise :class:`NotYet` at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result:
            return result
        if time.monotonic() > deadline:
            raise NotYet(f"not {what} within {timeout:.0f}s")
        time.sleep(every)


@dataclass
class Part:
    """One of the kit's three processes: ``python -m apiproxy COMMAND --config FILE``."""

    name: str
    command: str
    config: Path
    workdir: Path
    env: dict[str, str] = field(default_factory=dict)
    process: Process | None = None

    @property
    def log(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self) -> None:
        assert not self.alive(), f"{self.name} is already running"
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env.update(self.env)
        with self.log.open("ab") as handle:
            popen = subprocess.Popen(
                [sys.executable, "-m", "apiproxy", self.command, "--config", str(self.config)],
                stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                cwd=ROOT, env=env,
            )  # fmt: skip
        self.process = Process(self.name, popen, self.log)

    def stop(self) -> None:
        """SIGTERM, as kubelet stops a pod (SIGKILL after 15 s)."""
        if self.process is not None:
            self.process.stop()
            self.process = None  # stopped on purpose: not a part that died

    def kill(self) -> None:
        """SIGKILL: the process gets no chance to finish anything."""
        if self.process is not None:
            self.process.popen.send_signal(signal.SIGKILL)
            self.process.popen.wait()
            self.process = None

    def alive(self) -> bool:
        return self.process is not None and self.process.alive()

    def tail(self, lines: int = 30) -> str:
        return f"--- {self.name} ({'running' if self.alive() else 'exited'}):\n{_tail(self.log, lines)}"


class Member:
    """One cluster of the federation; ``install()`` then ``start()`` (or each part's ``start()``)."""

    def __init__(self, name: str, workdir: Path) -> None:
        self.name = name
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.uuid = str(uuid.uuid4())
        self.cluster = RealCluster(workdir / "apiserver", name)
        self.proxy_port, self.exporter_port, self.metrics_port = free_port(), free_port(), free_port()
        self.ca = make_ca(f"{name} federation CA")
        self.ca_pem = self.ca.cert_pem.decode()
        self.mesh_root = make_ca(f"{name} mesh root CA").cert_pem.decode()
        self.gateway = {"address": "198.51.100.10" if name == "east" else "203.0.113.20", "port": 15443}
        self.parts: dict[str, Part] = {}

    # -- addresses ----------------------------------------------------------------------------------------

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.exporter_port}/metadata/"

    @property
    def proxy_url(self) -> str:
        return f"https://127.0.0.1:{self.proxy_port}"

    @property
    def proxy(self) -> Part:
        return self.parts["proxy"]

    @property
    def exporter(self) -> Part:
        return self.parts["exporter"]

    @property
    def controller(self) -> Part:
        return self.parts["controller"]

    # -- installation -------------------------------------------------------------------------------------

    def install(self) -> Member:
        """The apiserver, then what an installation provides before the kit's pods start."""
        cluster = self.cluster
        cluster.start()
        cluster.kubectl("apply", "-f", str(CRD))
        seed(cluster, pods=12, services=4, namespaces=2, nodes=2)
        cluster.kubectl("create", "namespace", NS, check=False)
        cluster.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "istio-ca-root-cert", "namespace": NS},
                    "data": {"root-cert.pem": self.mesh_root},
                },
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "metadata-exporter-ingressgateway-advertise", "namespace": NS},
                    "data": {"ingressgateways-array.json": json.dumps([self.gateway])},
                },
            ]
        )
        proxy_token = cluster.install_proxy_identity(SHIPPED_POLICY, namespace=PROXY_NS, name=PROXY_SA)
        cluster.kubectl("apply", "-f", "-", input=TRUST_READER)
        exporter_token = cluster.install_identity(
            NS, EXPORTER_SA, rendered_into(DEPLOY / "base" / "exporter-rbac.yaml", NS)
        )
        controller_token = cluster.install_identity(
            NS, CONTROLLER_SA, rendered_into(DEPLOY / "multicluster" / "rbac.yaml", NS)
        )
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{GROUP_PLURAL}", "--timeout=60s")
        self._configure(proxy_token, exporter_token, controller_token)
        return self

    def _configure(self, proxy_token: str, exporter_token: str, controller_token: str) -> None:
        work, cluster = self.workdir, self.cluster
        for part in ("proxy", "exporter"):
            make_leaf(self.ca, f"{self.name}-{part}", names=["127.0.0.1", "localhost"]).write(
                work / f"{part}.crt", work / f"{part}.key"
            )
        token_file = work / "proxy-token"
        token_file.write_text(proxy_token)
        proxy_kubeconfig = cluster.kubeconfig_for(work / "proxy.kubeconfig", proxy_token)
        configs: dict[str, dict[str, Any]] = {
            "proxy": {
                "listen": f"127.0.0.1:{self.proxy_port}",
                "tls-cert-file": str(work / "proxy.crt"),
                "tls-private-key-file": str(work / "proxy.key"),
                "upstream": cluster.url,
                "upstream-ca-file": str(cluster.ca_file),
                "upstream-token-file": str(token_file),
                "cluster-uuid": self.uuid,
                "trust-secret": f"{NS}/{TRUST_SECRET}",
                "policy": str(SHIPPED_POLICY),
                "metrics-listen": "",
                "audit-log": str(work / "proxy-audit.log"),
                "shutdown-delay": "0s",
                "shutdown-grace": "2s",
            },
            "exporter": {
                "cluster-uuid": self.uuid,
                "api-host": f"127.0.0.1:{self.proxy_port}",
                "namespace": NS,
                "kubeconfig": str(cluster.kubeconfig_for(work / "exporter.kubeconfig", exporter_token)),
                "tls-cert-file": str(work / "exporter.crt"),
                "tls-private-key-file": str(work / "exporter.key"),
                "listen": f"127.0.0.1:{self.exporter_port}",
                "metrics-listen": "",
                "audit-log": str(work / "exporter-audit.log"),
            },
            "controller": {
                "cluster-uuid": self.uuid,
                "namespace": NS,
                "kubeconfig": str(cluster.kubeconfig_for(work / "controller.kubeconfig", controller_token)),
                "resync": RESYNC,
                "retry-base": "200ms",
                "retry-cap": "1s",
                "fetch-timeout": "3s",
                "metrics-listen": f"127.0.0.1:{self.metrics_port}",
                "liveness-listen": "",
            },
        }
        commands = {"proxy": "serve", "exporter": "exporter", "controller": "multicluster"}
        for part, config in configs.items():
            path = work / f"{part}.yaml"
            path.write_text(yaml.safe_dump(config))
            env = {"KUBECONFIG": str(proxy_kubeconfig)} if part == "proxy" else {}
            self.parts[part] = Part(f"{self.name}-{part}", commands[part], path, work, env)

    # -- the parts ----------------------------------------------------------------------------------------

    def start(self) -> None:
        """All three at once, as a Deployment rollout would; then wait until each is up."""
        for part in self.parts.values():
            part.start()
        self.wait_proxy()
        self.wait_controller()
        self.wait_exporter()

    def check_alive(self) -> None:
        for part in self.parts.values():
            if part.process is not None and not part.alive():
                raise AssertionError(f"{part.name} exited ({part.process.popen.returncode})\n{part.tail()}")

    def client_ssl(self) -> ssl.SSLContext:
        """What a peer verifies this member's proxy and exporter with: the CA of spec.metadata.ca."""
        return ssl.create_default_context(cadata=self.ca_pem)

    def get(self, url: str, token: str | None = None, timeout: float = 5) -> tuple[int, bytes]:
        """One HTTPS GET to this member's proxy or exporter (``url`` is absolute)."""
        rest = url.split("//", 1)[1]
        hostport, path = rest.split("/", 1)
        host, port = hostport.rsplit(":", 1)
        conn = http.client.HTTPSConnection(host, int(port), context=self.client_ssl(), timeout=timeout)
        try:
            headers = {"Authorization": f"Bearer {token}"} if token else {}
            conn.request("GET", "/" + path, headers=headers)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def _answers(self, url: str, status: int) -> bool:
        try:
            return self.get(url)[0] == status
        except OSError:
            return False

    def wait_proxy(self, timeout: float = 90) -> None:
        """Listening, which it does once it has read its trust Secret (which nobody installed: the
        controller, started at the same time, creates it empty), Ready although it trusts no peer yet, and
        denying by default: a request without a token is a 401."""

        def up() -> bool:
            self.check_alive()
            ready = self._answers(self.proxy_url + "/readyz", 200)
            return ready and self._answers(self.proxy_url + "/api", 401)

        self._wait(up, "the proxy answering", self.proxy, timeout)

    def wait_exporter(self, timeout: float = 90) -> None:
        def up() -> bool:
            self.check_alive()
            return self._answers(self.endpoint + "public/public.json", 200)

        self._wait(up, "the exporter serving public.json", self.exporter, timeout)

    def wait_controller(self, timeout: float = 90) -> None:
        """Up: its keypair Secret exists and its metrics endpoint answers."""

        def up() -> bool:
            self.check_alive()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=2)
                try:
                    conn.request("GET", "/metrics")
                    if conn.getresponse().status != 200:
                        return False
                finally:
                    conn.close()
            except OSError:
                return False
            return self.secret(KEYPAIR_SECRET) is not None

        self._wait(up, "the controller up", self.controller, timeout)

    def reconciles(self) -> float:
        """How many reconciles the controller has finished (its own histogram's count)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.metrics_port, timeout=5)
        try:
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
        finally:
            conn.close()
        for line in text.splitlines():
            if line.startswith("apiproxy_multicluster_reconcile_duration_seconds_count"):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def _wait(self, probe: Callable[[], bool], what: str, part: Part, timeout: float) -> None:
        try:
            wait_until(probe, f"{self.name}: {what}", timeout=timeout)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{part.tail()}") from None

    def stop(self) -> None:
        for part in self.parts.values():
            with contextlib.suppress(Exception):
                part.stop()
        self.cluster.stop()

    # -- what the apiserver holds (as admin) --------------------------------------------------------------

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        return self.cluster.kubectl(*args, input=input, check=check)

    def get_json(self, *args: str) -> dict[str, Any] | None:
        found = self.kubectl("get", *args, "-o", "json", check=False)
        if found.returncode != 0:
            assert "NotFound" in found.stderr, found.stderr
            return None
        obj: dict[str, Any] = json.loads(found.stdout)
        return obj

    def resource(self, name: str) -> dict[str, Any] | None:
        return self.get_json(GROUP_PLURAL, name)

    def conditions(self, name: str) -> dict[str, dict[str, Any]]:
        status = (self.resource(name) or {}).get("status") or {}
        return {c["type"]: c for c in status.get("conditions") or ()}

    def secret(self, name: str) -> dict[str, Any] | None:
        return self.get_json("secret", name, "-n", NS)

    def trust(self) -> dict[str, Any]:
        secret = self.secret(TRUST_SECRET)
        assert secret is not None
        doc: dict[str, Any] = json.loads(base64.b64decode(secret["data"][TRUST_KEY]))
        return doc

    def remote_secrets(self) -> list[dict[str, Any]]:
        found = self.get_json("secrets", "-n", NS, "-l", "istio/multiCluster=true")
        return list((found or {}).get("items") or [])

    def version(self, kind: str, name: str) -> str:
        obj = self.get_json(kind, name, "-n", NS)
        assert obj is not None, f"{kind} {name} is gone"
        return str(obj["metadata"]["resourceVersion"])

    def refused(self) -> list[tuple[str, str, str, int]]:
        """Requests of the kit's three service accounts that this apiserver refused (401, 403): with
        the RBAC they were given, there must be none."""
        users = {
            self.cluster.service_account_user(PROXY_NS, PROXY_SA),
            self.cluster.service_account_user(NS, EXPORTER_SA),
            self.cluster.service_account_user(NS, CONTROLLER_SA),
        }
        return [
            (e["user"]["username"], e["verb"], e["requestURI"], e["responseStatus"]["code"])
            for e in self.cluster.audit_events()
            if e.get("user", {}).get("username") in users and e["responseStatus"]["code"] in (401, 403)
        ]

    def peer_with(self, other: Member) -> None:
        """``kubectl apply`` an IstioMulticluster naming ``other``'s metadata endpoint and CA, as an
        administrator does."""
        resource = {
            "apiVersion": "deckhouse.io/v1alpha1",
            "kind": "IstioMulticluster",
            "metadata": {"name": other.name},
            "spec": {"metadataEndpoint": other.endpoint, "metadata": {"ca": other.ca_pem}},
        }
        self.kubectl("apply", "-f", "-", input=json.dumps(resource))


class Federation:
    """East and west, installed and started in parallel; ``stop()`` ends every process started."""

    def __init__(self, workdir: Path) -> None:
        self.east = Member("east", workdir / "east")
        self.west = Member("west", workdir / "west")
        self.workdir = workdir

    @property
    def members(self) -> tuple[Member, Member]:
        return self.east, self.west

    def start(self) -> Federation:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(Member.install, self.members))
            list(pool.map(Member.start, self.members))
        return self

    def stop(self) -> None:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(lambda m: m.stop(), self.members))

    def check_alive(self) -> None:
        for member in self.members:
            member.check_alive()

    def logs(self, lines: int = 15) -> str:
        return "\n".join(p.tail(lines) for m in self.members for p in m.parts.values())

    def wait(self, probe: Callable[[], T | None], what: str, *, timeout: float = 60) -> T:
        """:func:`wait_until`, failing at once when a part died, with the parts' log tails."""

        def checked() -> T | None:
            self.check_alive()
            return probe()

        try:
            return wait_until(checked, what, timeout=timeout, every=0.2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None


class Watch:
    """A watch stream (``?watch=true``) read line by line: ``next_event()`` in the caller's thread, or
    ``drain()`` in a background one that notes when the server ends it."""

    def __init__(self, port: int, context: ssl.SSLContext, path: str, token: str | None = None) -> None:
        self.conn = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        self.conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        self.response = self.conn.getresponse()
        self.status = self.response.status
        self.ended = threading.Event()
        self.ended_at = 0.0

    @classmethod
    def through_proxy(cls, member: Member, path: str, token: str) -> Watch:
        """As a peer's istiod watches: through ``member``'s proxy, with a bearer token."""
        return cls(member.proxy_port, member.client_ssl(), path, token)

    @classmethod
    def as_admin(cls, member: Member, path: str) -> Watch:
        """Straight from ``member``'s apiserver, as its administrator."""
        return cls(member.cluster.port, member.cluster.admin_ssl(), path)

    def next_event(self) -> dict[str, Any]:
        line = self.response.readline()
        assert line, "the watch ended"
        event: dict[str, Any] = json.loads(line)
        return event

    def drain(self) -> None:
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        with contextlib.suppress(OSError, http.client.HTTPException):
            while self.response.readline():
                pass
        self.ended_at = time.monotonic()
        self.ended.set()

    def close(self) -> None:
        if self.conn.sock is not None:
            with contextlib.suppress(OSError):
                self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.conn.close()


@contextlib.contextmanager
def running_federation(workdir: Path) -> Iterator[Federation]:
    federation = Federation(workdir)
    try:
        yield federation.start()
    finally:
        federation.stop()


def remote_secret_kubeconfig(member: Member, peer: Member, path: Path) -> tuple[Path, str]:
    """``member``'s istiod kubeconfig for ``peer``, exactly as its controller wrote it; and its token."""
    secret = member.secret(remote_secret_name(peer.name))
    assert secret is not None, f"{member.name} has no remote secret for {peer.name}"
    raw = base64.b64decode(secret["data"][peer.uuid])
    path.write_bytes(raw)
    config = yaml.safe_load(raw)
    return path, str(config["users"][0]["user"]["token"])

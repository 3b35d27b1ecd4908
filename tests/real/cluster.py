"""A real Kubernetes control plane on loopback: etcd and kube-apiserver, a throwaway PKI, seed data.

:class:`RealCluster` owns a directory and two processes it starts and stops by their own pids. It makes:

* a CA, a serving certificate for ``127.0.0.1``/``localhost``, an admin client certificate
  (``O=system:masters``) and a kubeconfig for it;
* etcd and kube-apiserver built by :mod:`tests.real.gobuild` at the versions ``go.mod`` pins;
* a service-account issuer and signing key, so TokenRequest works (``kubectl create token``);
* an audit log of everything the apiserver served (``audit_events()``), so a test can prove that a
  refused request never reached it;
* ``--authorization-mode RBAC``, anonymous requests off.

:meth:`RealCluster.install_proxy_identity` gives the proxy a service account bound to exactly the RBAC
that ``apiproxy policy rbac`` derives from a policy, and a TokenRequest token for it: the generated RBAC
is tested against the real authorizer by every request the proxy forwards.

A failed start raises :class:`StartError` with the tail of the process's log.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from apiproxy.certs import Issued, make_ca, make_leaf
from tests.real import gobuild

KUBECTL = os.environ.get("KUBECTL", "/usr/bin/kubectl")

ISSUER = "https://kubernetes.default.svc.cluster.local"

AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: ["RequestReceived"]
rules:
  - level: Metadata
"""


class StartError(RuntimeError):
    """etcd or kube-apiserver did not come up; the message ends with its log tail."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@dataclass
class Process:
    """A child process with its log file; stopped by its own pid, TERM first."""

    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.popen.poll() is not None:
            return
        self.popen.terminate()
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()


def _spawn(name: str, argv: list[str], log: Path, cwd: Path) -> Process:
    handle = log.open("ab")
    try:
        popen = subprocess.Popen(
            argv, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=cwd
        )
    finally:
        handle.close()
    return Process(name, popen, log)


@dataclass
class RealCluster:
    """One control plane; ``start()``, use, ``stop()``. ``name`` only labels files and messages."""

    workdir: Path
    name: str = "real"
    etcd_dir: Path | None = None
    processes: list[Process] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self.ca = make_ca(f"{self.name} cluster CA")
        self.ca_file = self.workdir / "ca.crt"
        self.ca_file.write_bytes(self.ca.cert_pem)
        serving = make_leaf(
            self.ca,
            "kube-apiserver",
            names=["127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc"],
        )
        self.serving_cert, self.serving_key = self.workdir / "apiserver.crt", self.workdir / "apiserver.key"
        serving.write(self.serving_cert, self.serving_key)
        admin: Issued = make_leaf(
            self.ca, "apiproxy-test-admin", server=False, client=True, organization="system:masters"
        )
        self.admin_cert, self.admin_key = self.workdir / "admin.crt", self.workdir / "admin.key"
        admin.write(self.admin_cert, self.admin_key)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.sa_key_file = self.workdir / "sa.key"
        self.sa_pub_file = self.workdir / "sa.pub"
        self.sa_key_file.write_bytes(
            sa_key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        self.sa_pub_file.write_bytes(
            sa_key.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        self.audit_log = self.workdir / "audit.log"
        (self.workdir / "audit-policy.yaml").write_text(AUDIT_POLICY)
        self.admin_kubeconfig = self.workdir / "admin.kubeconfig"
        self.admin_kubeconfig.write_text(
            json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": self.name,
                            "cluster": {"server": self.url, "certificate-authority": str(self.ca_file)},
                        }
                    ],
                    "users": [
                        {
                            "name": "admin",
                            "user": {
                                "client-certificate": str(self.admin_cert),
                                "client-key": str(self.admin_key),
                            },
                        }
                    ],
                    "contexts": [{"name": self.name, "context": {"cluster": self.name, "user": "admin"}}],
                    "current-context": self.name,
                }
            )
        )

    # -- lifecycle ----------------------------------------------------------------------------------------

    def start(
        self, apiserver: Path | None = None, etcd_binary: Path | None = None, *, timeout: float = 120
    ) -> RealCluster:
        binary = apiserver or gobuild.ensure("kube-apiserver")
        etcd_binary = etcd_binary or gobuild.ensure("etcd")
        shm = Path("/dev/shm")
        self.etcd_dir = Path(
            tempfile.mkdtemp(prefix=f"apiproxy-etcd-{self.name}-", dir=shm if shm.is_dir() else None)
        )
        client_port, peer_port = free_port(), free_port()
        etcd_url = self.etcd_url = f"http://127.0.0.1:{client_port}"
        peer_url = f"http://127.0.0.1:{peer_port}"
        etcd = _spawn(
            "etcd",
            [
                str(etcd_binary),
                "--name=apiproxy-test",
                f"--data-dir={self.etcd_dir / 'data'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=apiproxy-test={peer_url}",
                "--log-level=warn",
            ],
            self.workdir / "etcd.log",
            self.workdir,
        )
        self.processes.append(etcd)
        self._wait(etcd, lambda: _http_ok(f"{etcd_url}/health"), timeout=30, what="etcd /health")
        apiserver_proc = _spawn(
            "kube-apiserver",
            [
                str(binary),
                f"--etcd-servers={etcd_url}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={self.serving_cert}",
                f"--tls-private-key-file={self.serving_key}",
                f"--client-ca-file={self.ca_file}",
                f"--service-account-issuer={ISSUER}",
                f"--service-account-key-file={self.sa_pub_file}",
                f"--service-account-signing-key-file={self.sa_key_file}",
                f"--api-audiences={ISSUER}",
                "--authorization-mode=RBAC",
                "--anonymous-auth=false",
                "--service-cluster-ip-range=10.96.0.0/16",
                # No controller-manager runs, so no "default" service account exists to admit pods with.
                "--disable-admission-plugins=ServiceAccount",
                f"--audit-log-path={self.audit_log}",
                f"--audit-policy-file={self.workdir / 'audit-policy.yaml'}",
                "--audit-log-format=json",
                "--audit-log-mode=blocking",
                f"--cert-dir={self.workdir / 'certs'}",
                # The "kubernetes" Service's endpoints would name 127.0.0.1, which kube refuses: none.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                "--v=1",
            ],
            self.workdir / "kube-apiserver.log",
            self.workdir,
        )
        self.processes.append(apiserver_proc)
        self._wait(apiserver_proc, lambda: self._readyz(), timeout=timeout, what="kube-apiserver /readyz")
        return self

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()
        self.processes.clear()
        if self.etcd_dir is not None:
            shutil.rmtree(self.etcd_dir, ignore_errors=True)
            self.etcd_dir = None

    def _wait(self, proc: Process, probe: Any, *, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise StartError(
                    f"{proc.name} exited with {proc.popen.returncode} before {what} answered; "
                    f"last lines of {proc.log}:\n{_tail(proc.log)}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if probe():
                    return
            time.sleep(0.1)
        raise StartError(
            f"{what} not ready within {timeout:.0f}s; last lines of {proc.log}:\n{_tail(proc.log)}"
        )

    # -- clients ------------------------------------------------------------------------------------------

    def admin_ssl(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        ctx.load_cert_chain(self.admin_cert, self.admin_key)
        return ctx

    def request(
        self,
        method: str,
        target: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        *,
        token: str | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request to the apiserver directly: as admin (client certificate), or with ``token``."""
        ctx = self.admin_ssl() if token is None else ssl.create_default_context(cafile=str(self.ca_file))
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=ctx, timeout=30)
        try:
            all_headers = dict(headers or {})
            if token is not None:
                all_headers["Authorization"] = f"Bearer {token}"
            conn.request(method, target, body=body, headers=all_headers)
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def _readyz(self) -> bool:
        status, _, _ = self.request("GET", "/readyz")
        return status == 200

    def kubectl(
        self, *args: str, input: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """The real kubectl as cluster admin."""
        result = subprocess.run(
            [KUBECTL, f"--kubeconfig={self.admin_kubeconfig}", *args],
            input=input,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if check and result.returncode != 0:
            raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
        return result

    def apply(self, objects: list[dict[str, Any]]) -> None:
        """Create objects in one ``kubectl create`` (a v1 List)."""
        self.kubectl(
            "create", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
        )

    def compact(self) -> int:
        """Compact etcd up to its current revision (what the apiserver does every 5 minutes), so older
        resourceVersions are gone: lists at them are 410 Gone. Returns the revision compacted to."""
        status = _post_json(f"{self.etcd_url}/v3/maintenance/status", {})
        revision = int(status["header"]["revision"])
        _post_json(f"{self.etcd_url}/v3/kv/compaction", {"revision": revision, "physical": True})
        return revision

    def audit_events(self) -> list[dict[str, Any]]:
        """What the audit log holds now. kube-apiserver writes a request's event after its response is
        out, so a request that just returned may not be in it yet: use :meth:`settled_audit_events`."""
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines() if line.strip()]

    def settled_audit_events(self, timeout: float = 15.0) -> list[dict[str, Any]]:
        """The audit log once everything answered before this call is in it: a marker request is sent
        after them, and the log is read until the marker's own event is there."""
        marker = f"audit-marker-{uuid.uuid4().hex[:12]}"
        status, _, _ = self.request("GET", f"/api/v1/namespaces/default/configmaps/{marker}")
        assert status == 404, status
        deadline = time.monotonic() + timeout
        while True:
            events = self.audit_events()
            if any(e.get("objectRef", {}).get("name") == marker for e in events):
                return events
            if time.monotonic() > deadline:
                raise AssertionError(f"the apiserver did not audit {marker} within {timeout:.0f}s")
            time.sleep(0.05)

    def audit_events_by(self, username: str) -> Iterator[dict[str, Any]]:
        for event in self.audit_events():
            if event.get("user", {}).get("username") == username:
                yield event

    # -- the proxy's identity -----------------------------------------------------------------------------

    def install_proxy_identity(
        self, policy: Path, *, namespace: str = "apiproxy", name: str = "apiproxy", duration: str = "2h"
    ) -> str:
        """A service account bound to exactly ``apiproxy policy rbac POLICY``; returns a TokenRequest
        token for it."""
        rbac = subprocess.run(
            [
                sys.executable,
                "-m",
                "apiproxy",
                "policy",
                "rbac",
                str(policy),
                "--name",
                name,
                "--service-account",
                f"{namespace}/{name}",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        ).stdout
        return self.install_identity(namespace, name, rbac, duration=duration)

    def install_identity(self, namespace: str, name: str, rbac: str, *, duration: str = "2h") -> str:
        """Service account ``namespace/name`` with the RBAC manifests ``rbac`` applied as they are (their
        namespaces created first); returns a TokenRequest token for it, as kubelet would mount one."""
        self.kubectl("create", "namespace", namespace, check=False)
        self.kubectl("create", "serviceaccount", name, "-n", namespace)
        for ns in _namespaces_in(rbac):
            self.kubectl("create", "namespace", ns, check=False)
        self.kubectl("apply", "-f", "-", input=rbac)
        token = self.kubectl(
            "create", "token", name, "-n", namespace, f"--duration={duration}"
        ).stdout.strip()
        if token.count(".") != 2:
            raise RuntimeError("kubectl create token printed no token")
        return token

    def kubeconfig_for(self, path: Path, token: str) -> Path:
        """A kubeconfig naming this apiserver with a bearer token (what a pod's in-cluster config is)."""
        from apiproxy.kubeconfig import render_kubeconfig

        path.write_text(render_kubeconfig(self.url, self.ca_file.read_bytes(), token=token, name=self.name))
        return path

    def service_account_user(self, namespace: str = "apiproxy", name: str = "apiproxy") -> str:
        return f"system:serviceaccount:{namespace}:{name}"


def rendered_into(manifest: Path, namespace: str) -> str:
    """RBAC manifests as Kustomize's ``namespace:`` would render them into ``namespace``: Roles and
    RoleBindings moved there, every subject's namespace set to it."""
    import yaml

    docs = list(yaml.safe_load_all(manifest.read_text()))
    for doc in docs:
        if doc["kind"] in ("Role", "RoleBinding"):
            doc["metadata"]["namespace"] = namespace
        for subject in doc.get("subjects", []):
            subject["namespace"] = namespace
    return yaml.safe_dump_all(docs)


def _namespaces_in(manifests: str) -> set[str]:
    import yaml

    found: set[str] = set()
    for doc in yaml.safe_load_all(manifests):
        ns = (doc or {}).get("metadata", {}).get("namespace")
        if ns:
            found.add(ns)
    return found


def _post_json(url: str, body: dict[str, Any]) -> dict[str, Any]:
    """etcd's JSON gateway (``/v3/...``): enough to read its status and compact, without etcdctl."""
    host_port, path = url.split("//", 1)[1].split("/", 1)
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        conn.request("POST", "/" + path, body=json.dumps(body), headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"etcd {path}: {resp.status} {data[:200]!r}")
        result: dict[str, Any] = json.loads(data)
        return result
    finally:
        conn.close()


def _http_ok(url: str) -> bool:
    host_port = url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=2)
    try:
        conn.request("GET", "/" + url.split("//", 1)[1].split("/", 1)[1])
        return conn.getresponse().status == 200
    finally:
        conn.close()

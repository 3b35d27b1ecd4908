"""A whole federation on loopback: a simulated apiserver, the proxy in front of it, and remote clusters.

The demo, the end-to-end tests and the benchmarks all need the same thing: real TLS on both sides, a
Deckhouse-format trust file naming remote clusters with their own Ed25519 keys and root CAs, tokens
minted by those clusters, and a kubeconfig a real kubectl can use. This module builds it in a directory.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
import ssl
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.keys import public_key_pem
from apiproxy.auth.mint import mint_token
from apiproxy.certs import Issued, make_ca, make_leaf, write_serving_bundle
from apiproxy.kubeconfig import render_kubeconfig
from apiproxy.proxy import app
from apiproxy.proxy.settings import Settings
from apiproxy.simulator import Simulator, seed_mesh

#: Where the shipped policies live when running from a source checkout.
POLICIES_DIR = Path(__file__).resolve().parents[2] / "policies"


@dataclass
class RemoteCluster:
    """A federated cluster as the proxy sees it: identity, signing key, root CA, and a token."""

    name: str
    uuid: str
    key: ed25519.Ed25519PrivateKey
    root: Issued
    token: str = ""

    def metadata(self) -> dict[str, str]:
        """This cluster's entry in Deckhouse's ``remote-public-metadata.json``."""
        return {
            "clusterUUID": self.uuid,
            "authnKeyPub": public_key_pem(self.key.public_key(), deckhouse=True).decode(),
            "rootCA": self.root.cert_pem.decode(),
        }

    def client_certificate(self, directory: Path, san: str | None = None) -> tuple[Path, Path]:
        """A client certificate issued by this cluster's root (for mTLS identity)."""
        leaf = make_leaf(
            self.root, f"{self.name}-ingress", names=[san] if san else None, server=False, client=True
        )
        cert, key = directory / f"{self.name}-client.crt", directory / f"{self.name}-client.key"
        leaf.write(cert, key)
        return cert, key


def new_cluster(name: str, audience: str, *, ttl: float = 24 * 3600) -> RemoteCluster:
    key = ed25519.Ed25519PrivateKey.generate()
    cluster = RemoteCluster(name=name, uuid=str(uuidlib.uuid4()), key=key, root=make_ca(f"Root CA {name}"))
    cluster.token = mint_token(key, cluster.uuid, audience, ttl=ttl)
    return cluster


def write_trust_file(path: Path, clusters: list[RemoteCluster]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({c.uuid: c.metadata() for c in clusters}, indent=2))
    tmp.replace(path)


@dataclass
class Sandbox:
    """Files and servers of one loopback federation; ``await start()``, use, ``await stop()``."""

    workdir: Path
    policy: Path = field(default_factory=lambda: POLICIES_DIR / "istio-remote.yaml")
    cluster_names: tuple[str, ...] = ("alpha", "beta")
    seed: dict[str, Any] = field(default_factory=lambda: {"pods": 60, "services": 20, "namespaces": 4})
    settings: dict[str, Any] = field(default_factory=dict)
    simulator_options: dict[str, Any] = field(default_factory=dict)
    #: Use another upstream instead of starting the simulator (its CA is then ``upstream_ca``).
    upstream: str | None = None
    upstream_ca: Path | None = None

    local_uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    clusters: dict[str, RemoteCluster] = field(default_factory=dict)
    simulator: Simulator | None = None
    proxy: app.Proxy | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.upstream_token = secrets.token_urlsafe(32)
        self.upstream_token_file = self.workdir / "upstream-token"
        self.upstream_token_file.write_text(self.upstream_token)
        self.proxy_ca = make_ca("apiproxy serving CA")
        self.serving = write_serving_bundle(self.workdir, "apiproxy", ca=self.proxy_ca)
        self.upstream_tls = write_serving_bundle(self.workdir, "simulator")
        self.trust_file = self.workdir / "remote-public-metadata.json"
        self.audit_file = self.workdir / "audit.log"
        for name in self.cluster_names:
            self.clusters[name] = new_cluster(name, self.local_uuid)
        write_trust_file(self.trust_file, list(self.clusters.values()))

    @property
    def proxy_url(self) -> str:
        assert self.proxy is not None
        return f"https://127.0.0.1:{self.proxy.port}"

    @property
    def metrics_url(self) -> str:
        assert self.proxy is not None
        return f"http://127.0.0.1:{self.proxy.metrics_port}"

    def audit_records(self) -> list[dict[str, Any]]:
        """The audit records written so far (flushing the proxy's buffer first)."""
        if self.proxy is not None and self.proxy.audit is not None:
            self.proxy.audit.flush()
        if not self.audit_file.exists():
            return []
        return [json.loads(line) for line in self.audit_file.read_text().splitlines() if line.strip()]

    def proxy_settings(self) -> Settings:
        upstream = self.upstream or (self.simulator.url if self.simulator else "")
        base = Settings(
            listen="127.0.0.1:0",
            tls_cert_file=self.serving.cert_file,
            tls_private_key_file=self.serving.key_file,
            upstream=upstream,
            upstream_ca_file=self.upstream_ca or self.upstream_tls.ca_file,
            upstream_token_file=self.upstream_token_file,
            cluster_uuid=self.local_uuid,
            trust_file=self.trust_file,
            cluster_name=[(c.uuid, c.name) for c in self.clusters.values()],
            policy=self.policy,
            reload_interval=0.1,
            metrics_listen="127.0.0.1:0",
            audit_log=str(self.audit_file),
            shutdown_delay=0.0,
            shutdown_grace=5.0,
        )
        return dataclasses.replace(base, **self.settings)

    def upstream_server_ssl(self) -> ssl.SSLContext:
        """The serving context of the upstream (simulator or a test's own server)."""
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.upstream_tls.cert_file, self.upstream_tls.key_file)
        return ctx

    async def start(self) -> Sandbox:
        if self.upstream is None:
            self.simulator = Simulator(tokens={self.upstream_token}, **self.simulator_options)
            seed_mesh(self.simulator.store, **self.seed)
            await self.simulator.start(host="127.0.0.1", port=0, ssl_context=self.upstream_server_ssl())
        self.proxy = await app.start(self.proxy_settings())
        return self

    async def stop(self) -> None:
        if self.proxy is not None:
            await self.proxy.stop()
            self.proxy = None
        if self.simulator is not None:
            await self.simulator.stop()
            self.simulator = None

    def client_ssl(self) -> ssl.SSLContext:
        """What a remote cluster's client trusts: the proxy's serving CA."""
        return ssl.create_default_context(cafile=str(self.serving.ca_file))

    def kubeconfig(
        self, cluster: str = "alpha", *, token: str | None = None, name: str | None = None
    ) -> Path:
        """A kubeconfig for a remote cluster's client, pointing at the proxy."""
        path = self.workdir / f"kubeconfig-{name or cluster}"
        path.write_text(
            render_kubeconfig(
                self.proxy_url,
                self.serving.ca_file.read_bytes(),
                token=token if token is not None else self.clusters[cluster].token,
                name=name or cluster,
            )
        )
        return path

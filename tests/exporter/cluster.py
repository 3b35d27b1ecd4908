"""A seeded cluster for the exporter: Deckhouse's objects in ``d8-istio`` on top of the simulator's mesh,
keys and roots from tests/fixtures, so every document it produces is byte-for-byte predictable."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any

from apiproxy.auth.keys import load_private_key
from apiproxy.auth.mint import encode_jws, mint_token
from apiproxy.simulator.store import Store

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DECKHOUSE = FIXTURES / "deckhouse"
EXPORTER = FIXTURES / "exporter"
GOLDEN = EXPORTER / "golden"

#: This cluster is the audience of the Deckhouse sample tokens; alpha and beta are its peers.
LOCAL_UUID = (DECKHOUSE / "local-cluster-uuid").read_text().strip()
ALPHA = "3f0c9a52-7e1b-4d8a-b6c2-91e4f0a7d3b8"
BETA = "c71d2e90-5a3f-4b6e-8d14-0f9b2a6e7c45"
NS = "d8-istio"
API_HOST = "api.east.example.com:443"

LOCAL_PUB = (EXPORTER / "local-pub.pem").read_text()
ROOT_RSA = (EXPORTER / "root-ca-rsa.pem").read_text()
ROOT_EC = (EXPORTER / "root-ca-ec.pem").read_text()
TRUST_JSON = (DECKHOUSE / "remote-public-metadata.json").read_bytes()
ALPHA_KEY = load_private_key((DECKHOUSE / "alpha-priv.pem").read_bytes())
BETA_KEY = load_private_key((DECKHOUSE / "beta-priv.pem").read_bytes())


def b64(data: bytes | str) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def meta(name: str, namespace: str | None = NS, **labels: str) -> dict[str, Any]:
    out: dict[str, Any] = {"name": name}
    if namespace is not None:
        out["namespace"] = namespace
    if labels:
        out["labels"] = labels
    return out


def keypair_secret(pub: str = LOCAL_PUB) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta("d8-remote-authn-keypair"),
        "type": "Opaque",
        "data": {"pub.pem": b64(pub), "priv.pem": b64((EXPORTER / "local-priv.pem").read_text())},
    }


def root_ca_configmap(pem: str = ROOT_RSA) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta("istio-ca-root-cert"),
        "data": {"root-cert.pem": pem},
    }


def trust_secret(trust: bytes = TRUST_JSON) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": meta("d8-remote-clusters-public-metadata"),
        "type": "Opaque",
        "data": {"remote-public-metadata.json": b64(trust)},
    }


def advertise_configmap(value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": meta("metadata-exporter-ingressgateway-advertise"),
        "data": {"ingressgateways-array.json": value},
    }


def gateway_service(
    kind: str = "LoadBalancer", ingress: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    service: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta("ingressgateway", app="ingressgateway"),
        "spec": {
            "type": kind,
            "selector": {"app": "ingressgateway"},
            "ports": [
                {"name": "status-port", "port": 15021, "targetPort": 15021, "nodePort": 31021},
                {"name": "tls", "port": 15443, "targetPort": 15443, "nodePort": 30443},
            ],
        },
    }
    if kind == "LoadBalancer":
        service["status"] = {"loadBalancer": {"ingress": ingress or []}}
    return service


def node(
    name: str,
    *,
    ready: bool = True,
    cordoned: bool = False,
    external: str | None = None,
    internal: str = "10.0.0.1",
) -> dict[str, Any]:
    addresses = [{"type": "InternalIP", "address": internal}, {"type": "Hostname", "address": name}]
    if external:
        addresses.insert(0, {"type": "ExternalIP", "address": external})
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": meta(name, None),
        "spec": {"unschedulable": True} if cordoned else {},
        "status": {
            "addresses": addresses,
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def gateway_pod(name: str, node_name: str, *, ready: bool = True) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta(name, app="ingressgateway"),
        "spec": {"nodeName": node_name, "containers": [{"name": "istio-proxy", "image": "proxyv2"}]},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        },
    }


def public_service(name: str, namespace: str, ports: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta(name, namespace, **{"federation.istio.deckhouse.io/public-service": "true"}),
        "spec": {
            "type": "ClusterIP",
            "ports": [{"name": n, "port": p, "targetPort": p} for n, p in ports],
        },
    }


def seed_federation(store: Store) -> None:
    """Deckhouse's objects for a cluster whose gateway is a LoadBalancer with an IP and a hostname."""
    store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(NS, None)})
    for namespace in ("payments", "search"):
        if store.get("namespaces", None, namespace) is None:
            store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": meta(namespace, None)})
    store.create(keypair_secret())
    store.create(root_ca_configmap())
    store.create(trust_secret())
    store.create(gateway_service(ingress=[{"hostname": "gw.east.example.com"}, {"ip": "203.0.113.10"}]))
    store.create(public_service("checkout", "payments", [("http", 8080), ("grpc", 9090)]))
    store.create(public_service("catalog", "search", [("http", 80)]))


def token(
    key: Any = ALPHA_KEY,
    *,
    sub: str = ALPHA,
    aud: str = LOCAL_UUID,
    scope: str | None = "private-multicluster",
    ttl: float = 600,
    now: float | None = None,
) -> str:
    return mint_token(key, sub, aud, scope=scope, ttl=ttl, now=time.time() if now is None else now)


def token_without_iss(scope: str = "private-multicluster") -> str:
    now = int(time.time())
    claims = {"aud": LOCAL_UUID, "sub": ALPHA, "scope": scope, "nbf": now, "exp": now + 600}
    return encode_jws(ALPHA_KEY, {"alg": "EdDSA"}, claims)


def unsigned_token(alg: str, scope: str = "private-multicluster") -> str:
    """``alg: none`` (no signature) or ``HS256`` keyed with the peer's *public* key (the confusion attack)."""
    import hashlib
    import hmac

    from apiproxy.auth.keys import b64url_encode

    now = int(time.time())
    claims = {
        "iss": "d8-istio",
        "aud": LOCAL_UUID,
        "sub": ALPHA,
        "scope": scope,
        "nbf": now,
        "exp": now + 600,
    }
    head = b64url_encode(json.dumps({"alg": alg}).encode()) + "." + b64url_encode(json.dumps(claims).encode())
    if alg == "none":
        return head + "."
    public = json.loads(TRUST_JSON)[ALPHA]["authnKeyPub"].encode()
    return head + "." + b64url_encode(hmac.new(public, head.encode(), hashlib.sha256).digest())

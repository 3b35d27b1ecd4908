"""Rendering a kubeconfig for a remote cluster to reach the proxy.

The output is what ``kubectl`` and istiod's remote secret (``istio/multiCluster: "true"`` Secret with a
kubeconfig under the cluster's name) accept: one cluster, one user, one context, all under ``name``,
with ``certificate-authority-data`` and either a bearer ``token`` or client certificate data, or both.
"""

from __future__ import annotations

import base64
from typing import Any
from urllib.parse import urlsplit

import yaml
from cryptography import x509


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def render_kubeconfig(
    server: str,
    ca_pem: bytes | None,
    *,
    token: str | None = None,
    client_cert_pem: bytes | None = None,
    client_key_pem: bytes | None = None,
    name: str = "apiproxy",
    namespace: str | None = None,
    insecure_skip_tls_verify: bool = False,
) -> str:
    """YAML kubeconfig text; raises ``ValueError`` on inconsistent input.

    ``ca_pem`` None means the client's system roots (a peer whose API host has a public certificate);
    ``insecure_skip_tls_verify`` is only for a peer whose IstioMulticluster asks for it explicitly.
    """
    url = urlsplit(server)
    if url.scheme != "https" or not url.hostname:
        raise ValueError(f"server must be an https:// URL, got {server!r}")
    if ca_pem is not None:
        try:
            x509.load_pem_x509_certificates(ca_pem)
        except ValueError as exc:
            raise ValueError(f"CA is not a PEM certificate bundle: {exc}") from exc
    if (client_cert_pem is None) != (client_key_pem is None):
        raise ValueError("client certificate and client key go together")
    if token is None and client_cert_pem is None:
        raise ValueError("a token or a client certificate is required")
    user: dict[str, Any] = {}
    if token is not None:
        token = token.strip()
        if not token or any(c.isspace() for c in token):
            raise ValueError("token is empty or contains whitespace")
        user["token"] = token
    if client_cert_pem is not None and client_key_pem is not None:
        try:
            x509.load_pem_x509_certificates(client_cert_pem)
        except ValueError as exc:
            raise ValueError(f"client certificate is not PEM: {exc}") from exc
        user["client-certificate-data"] = _b64(client_cert_pem)
        user["client-key-data"] = _b64(client_key_pem)
    context: dict[str, Any] = {"cluster": name, "user": name}
    if namespace:
        context["namespace"] = namespace
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = _b64(ca_pem)
    elif insecure_skip_tls_verify:
        cluster["insecure-skip-tls-verify"] = True
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": name, "user": user}],
        "contexts": [{"name": name, "context": context}],
        "current-context": name,
        "preferences": {},
    }
    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False)

"""Every option of ``apiproxy exporter`` in one typed table; flags and ``--config`` keys come from here.

Built by the same machinery as ``serve``'s (:mod:`apiproxy.settings`), so a flag ``--root-ca-file`` is the
config key ``root-ca-file`` and durations read ``30s``. Kubernetes names default to Deckhouse's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from apiproxy.metadata import (
    ADVERTISE_CONFIGMAP,
    DEFAULT_CLUSTER_DOMAIN,
    DEFAULT_NAMESPACE,
    KEYPAIR_SECRET,
    ROOT_CA_CONFIGMAP,
    TRUST_SECRET,
)
from apiproxy.settings import duration_arg, opt


@dataclass
class ExporterSettings:
    # Identity of this cluster
    cluster_uuid: str = opt(
        os.environ.get("CLUSTER_UUID", ""),
        "this cluster's UUID: published in public.json and the audience private tokens must name "
        "(env CLUSTER_UUID); required",
    )
    api_host: str = opt("", "public HOST[:PORT] of this cluster's API proxy, for multicluster.json; required")
    cluster_domain: str = opt(DEFAULT_CLUSTER_DOMAIN, "cluster DNS domain (public service hostnames)")
    cluster_id: str = opt("", "clusterID in multicluster.json (default: the cluster UUID)")
    network_name: str = opt(
        "", "Istio network name (default: network-<cluster domain, dashed>-<adler32 of the UUID>)"
    )
    # Kubernetes sources
    namespace: str = opt(
        DEFAULT_NAMESPACE, "namespace of the keypair, root CA, trust store and ingress gateway"
    )
    kubeconfig: Path | None = opt(None, "kubeconfig to reach the apiserver (default: in-cluster config)")
    authn_keypair_secret: str = opt(
        KEYPAIR_SECRET, "Secret holding pub.pem (and next-pub.pem, next-proof during a rotation)"
    )
    root_ca_configmap: str = opt(ROOT_CA_CONFIGMAP, "ConfigMap holding root-cert.pem")
    trust_secret: str = opt(TRUST_SECRET, "Secret holding the peers' remote-public-metadata.json")
    advertise_configmap: str = opt(
        ADVERTISE_CONFIGMAP,
        "ConfigMap whose ingressgateways-array.json overrides the discovered gateways",
    )
    ingress_gateway_selector: str = opt(
        "app=ingressgateway", "label selector of the ingress gateway Service and its pods"
    )
    public_service_label: str = opt(
        "federation.istio.deckhouse.io/public-service",
        "label that marks a Service (any namespace) as offered to federated peers",
    )
    gateway_port_name: str = opt("tls", "name of the gateway Service port peers connect to")
    # File sources (each replaces its Kubernetes source; re-read when it changes)
    authn_public_key_file: Path | None = opt(None, "this cluster's token-signing public key (PEM)")
    authn_next_public_key_file: Path | None = opt(
        None,
        "a key rotation's next public key (PEM; the keypair Secret's next-pub.pem); absent file: no "
        "rotation under way. Needs --authn-public-key-file and --authn-next-proof-file",
    )
    authn_next_proof_file: Path | None = opt(
        None, "the current key's proof for the next key (the keypair Secret's next-proof)"
    )
    root_ca_file: Path | None = opt(None, "this cluster's root CA (PEM)")
    trust_file: Path | None = opt(None, "the peers' remote-public-metadata.json")
    ingress_gateways_file: Path | None = opt(None, 'ingress gateways, [{"address", "port"}] JSON')
    # Tokens of private documents
    jwt_issuer: str = opt("d8-istio", "required token issuer (iss)")
    jwt_leeway: float = opt(60.0, "clock skew tolerated on nbf/iat and exp", type=duration_arg)
    jwt_max_lifetime: float = opt(
        400 * 86400.0,
        "longest accepted token lifetime, as for serve (peers mint one-minute tokens); 0 accepts any",
        type=duration_arg,
    )
    # Listeners
    listen: str = opt("0.0.0.0:8080", "address of the metadata endpoint (HOST:PORT)")
    metrics_listen: str = opt("0.0.0.0:9091", "address of /metrics (plain HTTP; empty disables)")
    tls_cert_file: Path | None = opt(None, "serve TLS with this certificate (PEM); default plain HTTP")
    tls_private_key_file: Path | None = opt(None, "private key of --tls-cert-file (PEM)")
    # Operations
    reload_interval: float = opt(1.0, "how often file sources are checked for changes", type=duration_arg)
    audit_log: str = opt("-", "where audit records of private reads go: -, a file, or empty to disable")
    log_level: str = opt(
        "info", "debug, info, warning or error", choices=("debug", "info", "warning", "error")
    )
    log_format: str = opt("text", "text or json", choices=("text", "json"))

    def effective_cluster_id(self) -> str:
        return self.cluster_id or self.cluster_uuid

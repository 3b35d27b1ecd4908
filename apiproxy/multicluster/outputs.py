"""The content of everything the controller writes, as pure functions of the peers' pinned state.

Deterministic (sorted keys, stable order) so "written only when the content changes" is a byte
comparison, and so two controllers computing from the same state write the same bytes.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import yaml

from apiproxy.kubeconfig import render_kubeconfig
from apiproxy.metadata import IngressGateway, MulticlusterMetadata, PublicMetadata
from apiproxy.multicluster import model

#: The port and mode Istio's east-west gateway uses for cross-network traffic (Deckhouse's values).
GATEWAY_PORT_DEFAULT = 15443


@dataclass(frozen=True, slots=True)
class PeerState:
    """What one resource contributes to the shared outputs: its pinned public and latest private data."""

    name: str
    public: PublicMetadata | None
    private: MulticlusterMetadata | None = None
    enable_ingress_gateway: bool = True
    #: The peer's next key during its key rotation (vouched for by its pinned key).
    next_key: str | None = None


def trust_store(peers: Iterable[PeerState]) -> bytes:
    """``remote-public-metadata.json``: UUID → ``{clusterUUID, authnKeyPub, rootCA}``, Deckhouse's format.

    Only pinned, valid peers appear; the proxy and the exporter read exactly this file.
    """
    doc: dict[str, dict[str, str]] = {}
    for peer in peers:
        if peer.public is None:
            continue
        entry = peer.public.to_json()
        if peer.next_key:
            entry["authnKeyPubNext"] = peer.next_key
        doc[peer.public.cluster_uuid] = entry
    return json.dumps(doc, sort_keys=True, indent=2).encode("utf-8") + b"\n"


def remote_secret(
    *,
    peer_name: str,
    namespace: str,
    api_host: str,
    cluster_id: str,
    token: str,
    ca_pem: str | None,
    insecure_skip_verify: bool,
) -> dict[str, Any]:
    """istiod's remote secret: one kubeconfig under the peer's cluster ID, discovered by its label."""
    kubeconfig = render_kubeconfig(
        f"https://{api_host}",
        ca_pem.encode("ascii") if ca_pem else None,
        token=token,
        name=cluster_id,
        insecure_skip_tls_verify=insecure_skip_verify,
    )
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": model.remote_secret_name(peer_name),
            "namespace": namespace,
            "labels": {
                model.ISTIO_MULTICLUSTER_LABEL: "true",
                model.MANAGED_BY_LABEL: model.MANAGED_BY,
                model.PEER_LABEL: peer_name,
            },
            "annotations": {model.ISTIO_CLUSTER_ANNOTATION: cluster_id},
        },
        "stringData": {cluster_id: kubeconfig},
    }


def _gateway(g: IngressGateway) -> dict[str, Any]:
    return {"address": g.address, "port": g.port}


def mesh_settings(peers: Iterable[PeerState]) -> dict[str, Any]:
    """``meshConfig.caCertificates`` (peers' root CAs) and ``meshNetworks`` (network → registry, gateways).

    The shape an IstioOperator's ``spec`` or a Sail ``Istio``'s ``spec.values`` takes.
    """
    ca_certificates: list[dict[str, str]] = []
    networks: dict[str, Any] = {}
    for peer in sorted(peers, key=lambda p: p.name):
        if peer.public is None:
            continue
        ca_certificates.append({"pem": peer.public.root_ca})
        if peer.private is None:
            continue
        private = peer.private
        gateways = [_gateway(g) for g in private.ingress_gateways] if peer.enable_ingress_gateway else []
        networks[private.network_name] = {
            "endpoints": [{"fromRegistry": private.cluster_id}],
            "gateways": gateways,
        }
    return {"meshConfig": {"caCertificates": ca_certificates}, "meshNetworks": networks}


def mesh_yaml(peers: Iterable[PeerState]) -> str:
    return yaml.safe_dump(mesh_settings(peers), sort_keys=True, default_flow_style=False)


def public_from_status(status: Mapping[str, Any] | None) -> PublicMetadata | None:
    """The pinned public document a resource's status carries (``metadataCache.public``), if any."""
    cache = (status or {}).get("metadataCache")
    raw = cache.get("public") if isinstance(cache, Mapping) else None
    if not isinstance(raw, Mapping) or not (status or {}).get("pinnedIdentity"):
        return None
    uuid, key, ca = raw.get("clusterUUID"), raw.get("authnKeyPub"), raw.get("rootCA")
    if isinstance(uuid, str) and isinstance(key, str) and isinstance(ca, str):
        return PublicMetadata(uuid, key, ca)
    return None


def private_from_status(status: Mapping[str, Any] | None) -> MulticlusterMetadata | None:
    cache = (status or {}).get("metadataCache")
    raw = cache.get("private") if isinstance(cache, Mapping) else None
    if not isinstance(raw, Mapping):
        return None
    try:
        gateways = tuple(
            IngressGateway(str(g["address"]), int(g["port"])) for g in raw.get("ingressGateways") or ()
        )
        return MulticlusterMetadata(
            str(raw["clusterID"]), str(raw["apiHost"]), str(raw["networkName"]), gateways
        )
    except (KeyError, TypeError, ValueError):
        return None


def next_key_from_status(status: Mapping[str, Any] | None) -> str | None:
    cache = (status or {}).get("metadataCache")
    raw = cache.get("public") if isinstance(cache, Mapping) else None
    value = raw.get("authnKeyPubNext") if isinstance(raw, Mapping) else None
    return value if isinstance(value, str) and value else None

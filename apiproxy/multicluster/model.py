"""The IstioMulticluster resource as the controller reads it, and the names it writes.

Deckhouse's schema (``deckhouse.io/v1alpha1``, cluster-scoped) so existing resources work unchanged;
``spec.expectedClusterUUID`` is ours and optional.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlsplit

# Deckhouse's object names, defined once beside the document formats; re-exported for the controller.
from apiproxy.auth.secretsource import DATA_KEY
from apiproxy.metadata import KEYPAIR_SECRET as KEYPAIR_SECRET
from apiproxy.metadata import TRUST_SECRET as TRUST_SECRET

GROUP: Final = "deckhouse.io"
VERSION: Final = "v1alpha1"
PLURAL: Final = "istiomulticlusters"
KIND: Final = "IstioMulticluster"

TRUST_KEY: Final = DATA_KEY
REMOTE_SECRET_PREFIX: Final = "istio-remote-secret-"  # noqa: S105 (a name)
MESH_CONFIGMAP: Final = "apiproxy-multicluster-mesh"
MESH_KEY: Final = "mesh.yaml"
MANAGED_BY_LABEL: Final = "app.kubernetes.io/managed-by"
MANAGED_BY: Final = "apiproxy-multicluster"
PEER_LABEL: Final = "apiproxy.io/istiomulticluster"
ACCEPT_IDENTITY_ANNOTATION: Final = "apiproxy.io/accept-identity"
ISTIO_MULTICLUSTER_LABEL: Final = "istio/multiCluster"
ISTIO_CLUSTER_ANNOTATION: Final = "networking.istio.io/cluster"

_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


class SpecError(ValueError):
    """The resource's spec cannot be used; the message names the field."""


def is_uuid(value: object) -> bool:
    """RFC 4122 textual syntax (any version): what Deckhouse's ``clusterUUID`` is."""
    return isinstance(value, str) and _UUID.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class PeerSpec:
    """One peer, from ``spec`` and the accept annotation."""

    name: str
    metadata_endpoint: str
    enable_ingress_gateway: bool = True
    ca_pem: str | None = None
    insecure_skip_verify: bool = False
    expected_cluster_uuid: str | None = None
    accept_identity: str | None = None

    def document_url(self, path: str) -> str:
        """``<metadataEndpoint>/public/public.json`` whatever the endpoint's trailing slash."""
        return self.metadata_endpoint.rstrip("/") + "/" + path.lstrip("/")


def parse_spec(name: str, spec: Mapping[str, Any], annotations: Mapping[str, str] | None = None) -> PeerSpec:
    """Validate what the CRD schema cannot express; raise :class:`SpecError`."""
    endpoint = spec.get("metadataEndpoint")
    if not isinstance(endpoint, str) or not endpoint:
        raise SpecError("spec.metadataEndpoint is required")
    url = urlsplit(endpoint)
    if url.scheme == "https":
        if not url.hostname:
            raise SpecError("spec.metadataEndpoint has no host")
    elif url.scheme == "file":
        if not url.path:
            raise SpecError("spec.metadataEndpoint file:// URL has no path")
    else:
        raise SpecError(f"spec.metadataEndpoint must be https:// or file://, got scheme {url.scheme!r}")
    if url.query or url.fragment:
        raise SpecError("spec.metadataEndpoint must not have a query or fragment")
    enable = spec.get("enableIngressGateway", True)
    if not isinstance(enable, bool):
        raise SpecError("spec.enableIngressGateway must be a boolean")
    meta = spec.get("metadata") or {}
    if not isinstance(meta, Mapping):
        raise SpecError("spec.metadata must be an object")
    ca = meta.get("ca") or None
    if ca is not None and not isinstance(ca, str):
        raise SpecError("spec.metadata.ca must be a PEM string")
    insecure = meta.get("insecureSkipVerify", False)
    if not isinstance(insecure, bool):
        raise SpecError("spec.metadata.insecureSkipVerify must be a boolean")
    expected = spec.get("expectedClusterUUID") or None
    if expected is not None and not is_uuid(expected):
        raise SpecError("spec.expectedClusterUUID is not a UUID")
    accept = (annotations or {}).get(ACCEPT_IDENTITY_ANNOTATION) or None
    return PeerSpec(
        name=name,
        metadata_endpoint=endpoint,
        enable_ingress_gateway=enable,
        ca_pem=ca,
        insecure_skip_verify=insecure,
        expected_cluster_uuid=expected.lower() if expected else None,
        accept_identity=accept,
    )


def remote_secret_name(peer_name: str) -> str:
    return REMOTE_SECRET_PREFIX + peer_name

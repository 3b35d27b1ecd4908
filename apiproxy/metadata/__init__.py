"""Deckhouse's federation documents: their exact formats, how to build them and how to validate them.

One place for these formats, shared by the exporter (which renders them) and the IstioMulticluster
controller (which fetches and checks them), so both sides can never disagree on a field name or a rule.
"""

from apiproxy.metadata.formats import (
    DEFAULT_CLUSTER_DOMAIN,
    PATH_FEDERATION,
    PATH_MULTICLUSTER,
    PATH_PUBLIC,
    PATH_SPIFFE_BUNDLE,
    SCOPE_API,
    SCOPE_PRIVATE_FEDERATION,
    SCOPE_PRIVATE_MULTICLUSTER,
    FederationMetadata,
    IngressGateway,
    MetadataFormatError,
    MulticlusterMetadata,
    PublicMetadata,
    PublicService,
    ServicePort,
    deckhouse_public_key_pem,
    network_name,
    parse_federation,
    parse_ingress_gateways,
    parse_multicluster,
    parse_public,
)
from apiproxy.metadata.nextkey import (
    FIELD_NEXT_KEY,
    FIELD_NEXT_PROOF,
    NextKey,
    NextKeyError,
    check_next_key,
    make_proof,
    verify_proof,
)
from apiproxy.metadata.spiffe import parse_spiffe_bundle, spiffe_bundle

__all__ = [
    "DEFAULT_CLUSTER_DOMAIN",
    "FIELD_NEXT_KEY",
    "FIELD_NEXT_PROOF",
    "PATH_FEDERATION",
    "PATH_MULTICLUSTER",
    "PATH_PUBLIC",
    "PATH_SPIFFE_BUNDLE",
    "SCOPE_API",
    "SCOPE_PRIVATE_FEDERATION",
    "SCOPE_PRIVATE_MULTICLUSTER",
    "FederationMetadata",
    "IngressGateway",
    "MetadataFormatError",
    "MulticlusterMetadata",
    "NextKey",
    "NextKeyError",
    "PublicMetadata",
    "PublicService",
    "ServicePort",
    "check_next_key",
    "deckhouse_public_key_pem",
    "make_proof",
    "network_name",
    "parse_federation",
    "parse_ingress_gateways",
    "parse_multicluster",
    "parse_public",
    "parse_spiffe_bundle",
    "spiffe_bundle",
    "verify_proof",
]

"""The four Deckhouse metadata documents, the advertise override, token scopes and the network name.

Documents (field names and nesting exactly as Deckhouse's exporter writes them):

* ``public.json``: ``{"clusterUUID", "authnKeyPub", "rootCA"}``, and during one of our key rotations
  ``authnKeyPubNext`` and ``authnKeyPubNextProof`` after them (:mod:`apiproxy.metadata.nextkey`);
* ``multicluster.json``: ``{"clusterID", "apiHost", "networkName",
  "ingressGateways": [{"address", "port"}]}``;
* ``federation.json``: ``{"ingressGateways": [...], "publicServices": [{"hostname", "ports": [{"name",
  "port"}]}]}``.

Every ``parse_*`` function is strict (fail closed): wrong types, empty required strings, ports outside
1..65535 and duplicate JSON members are :class:`MetadataFormatError`; unknown members are ignored so a newer
peer can add fields. The ``to_json`` methods give the document as a dict in Deckhouse's member order.
"""

from __future__ import annotations

import ipaddress
import json
import re
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

from cryptography import x509

from apiproxy.auth.errors import KeyFormatError
from apiproxy.auth.keys import load_public_key, public_key_pem
from apiproxy.jsonutil import no_duplicate_keys
from apiproxy.metadata.nextkey import NextKey

PATH_PUBLIC: Final = "/metadata/public/public.json"
PATH_SPIFFE_BUNDLE: Final = "/metadata/public/spiffe-bundle-endpoint"
PATH_MULTICLUSTER: Final = "/metadata/private/multicluster.json"
PATH_FEDERATION: Final = "/metadata/private/federation.json"

#: Token scopes: the proxy's API, and one per private document. Never interchangeable.
SCOPE_API: Final = "api"
SCOPE_PRIVATE_MULTICLUSTER: Final = "private-multicluster"
SCOPE_PRIVATE_FEDERATION: Final = "private-federation"

DEFAULT_CLUSTER_DOMAIN: Final = "cluster.local"

#: Deckhouse's names for the objects the exporter reads and the controller writes, in its Istio namespace.
DEFAULT_NAMESPACE: Final = "d8-istio"
KEYPAIR_SECRET: Final = "d8-remote-authn-keypair"  # noqa: S105 (a name)
TRUST_SECRET: Final = "d8-remote-clusters-public-metadata"  # noqa: S105 (a name)
ROOT_CA_CONFIGMAP: Final = "istio-ca-root-cert"
ADVERTISE_CONFIGMAP: Final = "metadata-exporter-ingressgateway-advertise"

#: Larger documents are refused before parsing (real ones are a few KiB).
MAX_DOCUMENT_BYTES: Final = 1024 * 1024

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DNS_NAME = re.compile(r"(?=.{1,253}\Z)" + _LABEL + r"(?:\." + _LABEL + r")*\.?")
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^:\[\]]+)(?::(\d{1,5}))?")


class MetadataFormatError(ValueError):
    """A document or an input does not have Deckhouse's format; the message says where and why."""


def network_name(cluster_domain: str, cluster_uuid: str) -> str:
    """Deckhouse's formula: ``network-<clusterDomain, dots as dashes>-<adler32(clusterUUID), decimal>``."""
    checksum = zlib.adler32(cluster_uuid.encode("utf-8"))
    return f"network-{cluster_domain.replace('.', '-')}-{checksum}"


def deckhouse_public_key_pem(pem: str | bytes) -> str:
    """A public key re-encoded as Deckhouse publishes it (Ed25519 under ``ED25519 PUBLIC KEY``).

    The key is parsed first, so a corrupt or unsupported key is never published (``MetadataFormatError``).
    """
    try:
        key = load_public_key(pem)
    except KeyFormatError as exc:
        raise MetadataFormatError(f"authnKeyPub: {exc}") from exc
    return public_key_pem(key, deckhouse=True).decode("ascii")


def check_root_ca(pem: str) -> str:
    """One or more PEM certificates, returned unchanged; anything else is a ``MetadataFormatError``."""
    try:
        certificates = x509.load_pem_x509_certificates(pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError) as exc:
        raise MetadataFormatError(f"rootCA is not PEM certificates: {exc}") from exc
    if not certificates:
        raise MetadataFormatError("rootCA has no certificate")
    return pem


# --- values -------------------------------------------------------------------------------------------


def _check_address(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise MetadataFormatError(f"{where}: address must be a non-empty string")
    try:
        ipaddress.ip_address(value)
    except ValueError:
        if not _DNS_NAME.fullmatch(value):
            raise MetadataFormatError(
                f"{where}: address {value[:80]!r} is neither an IP nor a DNS name"
            ) from None
    return value


def _check_port(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise MetadataFormatError(f"{where}: port must be an integer from 1 to 65535")
    return value


def _check_string(doc: Mapping[str, Any], name: str, where: str) -> str:
    value = doc.get(name)
    if not isinstance(value, str) or not value:
        raise MetadataFormatError(f"{where}: {name} must be a non-empty string")
    return value


def _list(value: object, name: str, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise MetadataFormatError(f"{where}: {name} must be an array")
    return value


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, dict):
        raise MetadataFormatError(f"{where}: must be an object")
    return value


@dataclass(frozen=True, slots=True, order=True)
class IngressGateway:
    """Where peers reach this cluster's east-west gateway (Istio's ``meshNetworks`` gateway entry)."""

    address: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return {"address": self.address, "port": self.port}

    @classmethod
    def from_json(cls, value: object, where: str) -> IngressGateway:
        doc = _object(value, where)
        return cls(_check_address(doc.get("address"), where), _check_port(doc.get("port"), where))


@dataclass(frozen=True, slots=True, order=True)
class ServicePort:
    name: str
    port: int

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "port": self.port}


@dataclass(frozen=True, slots=True, order=True)
class PublicService:
    """A Service offered to federated peers, named by its cluster-local DNS name."""

    hostname: str
    ports: tuple[ServicePort, ...]

    def to_json(self) -> dict[str, Any]:
        return {"hostname": self.hostname, "ports": [p.to_json() for p in self.ports]}

    @classmethod
    def from_json(cls, value: object, where: str) -> PublicService:
        doc = _object(value, where)
        hostname = _check_address(doc.get("hostname"), where)
        ports = []
        for i, raw in enumerate(_list(doc.get("ports"), "ports", where)):
            port_doc = _object(raw, f"{where} port #{i}")
            name = port_doc.get("name", "")
            if not isinstance(name, str):
                raise MetadataFormatError(f"{where} port #{i}: name must be a string")
            ports.append(ServicePort(name, _check_port(port_doc.get("port"), f"{where} port #{i}")))
        return cls(hostname, tuple(ports))


def _gateways(value: object, where: str) -> tuple[IngressGateway, ...]:
    items = _list(value, "ingressGateways", where)
    return tuple(
        IngressGateway.from_json(item, f"{where} ingressGateways #{i}") for i, item in enumerate(items)
    )


@dataclass(frozen=True, slots=True)
class PublicMetadata:
    cluster_uuid: str
    authn_key_pub: str
    root_ca: str
    #: Published only while a rotation is under way; Deckhouse's three members stay first and unchanged.
    next_key: NextKey | None = None

    def to_json(self) -> dict[str, Any]:
        doc = {"clusterUUID": self.cluster_uuid, "authnKeyPub": self.authn_key_pub, "rootCA": self.root_ca}
        if self.next_key is not None:
            doc.update(self.next_key.to_json())
        return doc


@dataclass(frozen=True, slots=True)
class MulticlusterMetadata:
    cluster_id: str
    api_host: str
    network_name: str
    ingress_gateways: tuple[IngressGateway, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "clusterID": self.cluster_id,
            "apiHost": self.api_host,
            "networkName": self.network_name,
            "ingressGateways": [g.to_json() for g in self.ingress_gateways],
        }


@dataclass(frozen=True, slots=True)
class FederationMetadata:
    ingress_gateways: tuple[IngressGateway, ...]
    public_services: tuple[PublicService, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "ingressGateways": [g.to_json() for g in self.ingress_gateways],
            "publicServices": [s.to_json() for s in self.public_services],
        }


# --- parsing ------------------------------------------------------------------------------------------


def load_json(data: bytes | str, what: str) -> Any:
    """Strict JSON: size-capped, UTF-8, no duplicate members (two readers must never see two values)."""
    if len(data) > MAX_DOCUMENT_BYTES:
        raise MetadataFormatError(f"{what} is larger than {MAX_DOCUMENT_BYTES} bytes")
    try:
        return json.loads(data, object_pairs_hook=no_duplicate_keys)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise MetadataFormatError(f"{what} is not valid JSON: {exc}") from None


def check_api_host(value: str) -> str:
    """``host`` or ``host:port`` (``[v6]:port`` too): what peers put in the ``server`` of a kubeconfig."""
    match = _HOST_PORT.fullmatch(value)
    if match is None:
        raise MetadataFormatError(f"apiHost {value[:80]!r} is not HOST[:PORT]")
    host, port = match.group(1), match.group(2)
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise MetadataFormatError(f"apiHost {value[:80]!r} has a bad IPv6 address") from None
    else:
        _check_address(host, "apiHost")
    if port is not None:
        _check_port(int(port), "apiHost")
    return value


def parse_ingress_gateways(
    data: bytes | str, what: str = "ingressgateways-array.json"
) -> tuple[IngressGateway, ...]:
    """The advertise override (``[{"address", "port"}, ...]``); order kept, as the operator wrote it."""
    return _gateways(load_json(data, what), what)


def parse_public(data: bytes | str) -> PublicMetadata:
    where = "public.json"
    doc = _object(load_json(data, where), where)
    uuid = _check_string(doc, "clusterUUID", where)
    key = _check_string(doc, "authnKeyPub", where)
    deckhouse_public_key_pem(key)
    root = check_root_ca(_check_string(doc, "rootCA", where))
    return PublicMetadata(uuid, key, root)


def parse_multicluster(data: bytes | str) -> MulticlusterMetadata:
    where = "multicluster.json"
    doc = _object(load_json(data, where), where)
    return MulticlusterMetadata(
        cluster_id=_check_string(doc, "clusterID", where),
        api_host=check_api_host(_check_string(doc, "apiHost", where)),
        network_name=_check_string(doc, "networkName", where),
        ingress_gateways=_gateways(doc.get("ingressGateways"), where),
    )


def parse_federation(data: bytes | str) -> FederationMetadata:
    where = "federation.json"
    doc = _object(load_json(data, where), where)
    services = _list(doc.get("publicServices"), "publicServices", where)
    return FederationMetadata(
        ingress_gateways=_gateways(doc.get("ingressGateways"), where),
        public_services=tuple(
            PublicService.from_json(item, f"{where} publicServices #{i}") for i, item in enumerate(services)
        ),
    )


def sorted_unique(gateways: Sequence[IngressGateway]) -> tuple[IngressGateway, ...]:
    """Deterministic order for discovered gateways: by address, then port, duplicates dropped."""
    return tuple(sorted(set(gateways)))

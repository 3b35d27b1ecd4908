"""From Kubernetes objects to metadata values: pure functions, no I/O, fed by the watches.

Each function takes the apiserver's JSON dicts and returns a value of :mod:`apiproxy.metadata`, or raises
:class:`~apiproxy.metadata.MetadataFormatError` when an object exists but cannot be used (the caller keeps
the last good value). Order is always deterministic, so a document only changes when the cluster does.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from apiproxy.metadata import IngressGateway, MetadataFormatError, PublicService, ServicePort
from apiproxy.metadata.formats import check_root_ca, deckhouse_public_key_pem, parse_ingress_gateways
from apiproxy.metadata.nextkey import KEYPAIR_ENTRY_NEXT_PROOF, KEYPAIR_ENTRY_NEXT_PUBLIC

KEYPAIR_PUBLIC_KEY: Final = "pub.pem"
#: Present in the keypair Secret only while a rotation is under way (``apiproxy keys rotate``).
KEYPAIR_NEXT_PUBLIC_KEY: Final = KEYPAIR_ENTRY_NEXT_PUBLIC
KEYPAIR_NEXT_PROOF: Final = KEYPAIR_ENTRY_NEXT_PROOF
ROOT_CA_KEY: Final = "root-cert.pem"
ADVERTISE_KEY: Final = "ingressgateways-array.json"

Obj = Mapping[str, Any]


def _dig(obj: Any, *path: str) -> Any:
    for step in path:
        if not isinstance(obj, Mapping):
            return None
        obj = obj.get(step)
    return obj


def name_of(obj: Obj) -> str:
    namespace, name = _dig(obj, "metadata", "namespace"), _dig(obj, "metadata", "name")
    return f"{namespace}/{name}" if namespace else str(name)


def secret_value(secret: Obj, key: str) -> bytes | None:
    """A Secret's decoded ``data[key]``; None when the key is absent."""
    encoded = _dig(secret, "data", key)
    if encoded is None:
        return None
    if not isinstance(encoded, str):
        raise MetadataFormatError(f"Secret {name_of(secret)} key {key!r} is not a string")
    try:
        return base64.b64decode(encoded, validate=True)
    except binascii.Error:
        raise MetadataFormatError(f"Secret {name_of(secret)} key {key!r} is not base64") from None


def configmap_value(configmap: Obj, key: str) -> str | None:
    value = _dig(configmap, "data", key)
    if value is not None and not isinstance(value, str):
        raise MetadataFormatError(f"ConfigMap {name_of(configmap)} key {key!r} is not a string")
    return value


def authn_key_from_secret(secret: Obj, key: str = KEYPAIR_PUBLIC_KEY) -> str | None:
    """This cluster's token-signing public key, re-encoded as Deckhouse publishes it; None if absent."""
    raw = secret_value(secret, key)
    return None if raw is None else deckhouse_public_key_pem(raw)


@dataclass(frozen=True, slots=True)
class NextKeyInput:
    """The next key and its proof as found, not yet checked: the check needs the current key, which a
    file source may deliver separately (:class:`~apiproxy.exporter.state.ExporterState` makes it)."""

    public_pem: bytes
    proof: bytes


def next_key_from_secret(secret: Obj) -> NextKeyInput | None:
    """The rotation's next key of the keypair Secret; None outside a rotation.

    One of the two without the other is a broken rotation: a ``MetadataFormatError`` (nothing is
    published for it, and the current key keeps being served).
    """
    public, proof = secret_value(secret, KEYPAIR_NEXT_PUBLIC_KEY), secret_value(secret, KEYPAIR_NEXT_PROOF)
    if public is None and proof is None:
        return None
    if public is None or proof is None:
        raise MetadataFormatError(
            f"Secret {name_of(secret)} has only one of {KEYPAIR_NEXT_PUBLIC_KEY} and {KEYPAIR_NEXT_PROOF}"
        )
    return NextKeyInput(public, proof)


def root_ca_from_configmap(configmap: Obj, key: str = ROOT_CA_KEY) -> str | None:
    value = configmap_value(configmap, key)
    return None if value is None else check_root_ca(value)


def advertise_from_configmap(configmap: Obj, key: str = ADVERTISE_KEY) -> tuple[IngressGateway, ...] | None:
    """The operator's override of the gateway addresses; None when the ConfigMap has no such key."""
    value = configmap_value(configmap, key)
    if value is None:
        return None
    return parse_ingress_gateways(value, f"ConfigMap {name_of(configmap)} key {key}")


# --- discovered ingress gateways -----------------------------------------------------------------------


def _condition_true(obj: Obj, kind: str) -> bool:
    conditions = _dig(obj, "status", "conditions") or ()
    return any(
        isinstance(c, Mapping) and c.get("type") == kind and c.get("status") == "True" for c in conditions
    )


def _named_port(service: Obj, port_name: str) -> Mapping[str, Any] | None:
    for port in _dig(service, "spec", "ports") or ():
        if isinstance(port, Mapping) and port.get("name") == port_name:
            return port
    return None


def node_address(node: Obj) -> str | None:
    """The node's ExternalIP, else its InternalIP (first of each)."""
    addresses = [a for a in _dig(node, "status", "addresses") or () if isinstance(a, Mapping)]
    for kind in ("ExternalIP", "InternalIP"):
        for address in addresses:
            if address.get("type") == kind and isinstance(address.get("address"), str):
                return str(address["address"])
    return None


def _usable_node(node: Obj) -> bool:
    return _condition_true(node, "Ready") and not _dig(node, "spec", "unschedulable")


def _ready_pod(pod: Obj) -> bool:
    return (
        _dig(pod, "metadata", "deletionTimestamp") is None
        and _dig(pod, "status", "phase") == "Running"
        and _condition_true(pod, "Ready")
    )


def gateways_from_cluster(
    services: Iterable[Obj], pods: Iterable[Obj], nodes: Iterable[Obj], port_name: str = "tls"
) -> tuple[IngressGateway, ...]:
    """The gateway addresses peers should dial, sorted by address then port.

    LoadBalancer: every ``status.loadBalancer.ingress`` IP (else hostname) with the Service port named
    ``port_name``. NodePort: that port's ``nodePort`` on every Ready, schedulable node running a Ready
    gateway pod, at the node's ExternalIP, else InternalIP. A Service without the named port contributes
    nothing (its gateways would be unreachable on the wrong port).
    """
    nodes_by_name = {str(_dig(n, "metadata", "name")): n for n in nodes}
    gateway_nodes = {str(_dig(p, "spec", "nodeName")) for p in pods if _ready_pod(p)}
    found: set[IngressGateway] = set()
    for service in services:
        port = _named_port(service, port_name)
        if port is None:
            continue
        kind = _dig(service, "spec", "type")
        if kind == "LoadBalancer":
            number = port.get("port")
            for ingress in _dig(service, "status", "loadBalancer", "ingress") or ():
                address = (
                    ingress.get("ip") or ingress.get("hostname") if isinstance(ingress, Mapping) else None
                )
                if isinstance(address, str) and isinstance(number, int):
                    found.add(IngressGateway(address, number))
        elif kind == "NodePort":
            number = port.get("nodePort")
            if not isinstance(number, int):
                continue
            for node_name in gateway_nodes:
                node = nodes_by_name.get(node_name)
                if node is None or not _usable_node(node):
                    continue
                address = node_address(node)
                if address is not None:
                    found.add(IngressGateway(address, number))
    return tuple(sorted(found))


def public_services(services: Iterable[Obj], cluster_domain: str) -> tuple[PublicService, ...]:
    """Each Service as ``<name>.<namespace>.svc.<clusterDomain>`` with its named ports (spec order),
    sorted by hostname."""
    out = []
    for service in services:
        name, namespace = _dig(service, "metadata", "name"), _dig(service, "metadata", "namespace")
        if not isinstance(name, str) or not isinstance(namespace, str):
            continue
        ports = tuple(
            ServicePort(str(p.get("name") or ""), p["port"])
            for p in _dig(service, "spec", "ports") or ()
            if isinstance(p, Mapping) and isinstance(p.get("port"), int)
        )
        out.append(PublicService(f"{name}.{namespace}.svc.{cluster_domain}", ports))
    return tuple(sorted(out, key=lambda s: s.hostname))

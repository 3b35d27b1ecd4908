"""The rendered documents: built once per change of the inputs, then served as-is to every request.

:func:`render` is pure: an :class:`Inputs` snapshot and this cluster's :class:`Identity` give a
:class:`Catalog`, one :class:`Document` per path, each either the exact bytes to send (with its strong
``ETag``) or a 503 naming what is missing. A document is never served with empty fields.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from apiproxy.metadata import (
    PATH_FEDERATION,
    PATH_MULTICLUSTER,
    PATH_PUBLIC,
    PATH_SPIFFE_BUNDLE,
    SCOPE_PRIVATE_FEDERATION,
    SCOPE_PRIVATE_MULTICLUSTER,
    FederationMetadata,
    IngressGateway,
    MetadataFormatError,
    MulticlusterMetadata,
    NextKey,
    PublicMetadata,
    PublicService,
    spiffe_bundle,
)

#: Path → (metrics label, required token scope or None for public documents).
DOCUMENTS: Mapping[str, tuple[str, str | None]] = MappingProxyType(
    {
        PATH_PUBLIC: ("public", None),
        PATH_SPIFFE_BUNDLE: ("spiffe_bundle", None),
        PATH_MULTICLUSTER: ("multicluster", SCOPE_PRIVATE_MULTICLUSTER),
        PATH_FEDERATION: ("federation", SCOPE_PRIVATE_FEDERATION),
    }
)


@dataclass(frozen=True, slots=True)
class Identity:
    """Settings that describe this cluster (they never change while the exporter runs)."""

    cluster_uuid: str
    cluster_id: str
    api_host: str
    network_name: str
    cluster_domain: str


@dataclass(frozen=True, slots=True)
class Inputs:
    """Everything the documents are made of; a ``None`` value is missing, and ``missing`` says why."""

    authn_key_pub: str | None = None
    #: During a key rotation: the next key, already checked against ``authn_key_pub``.
    next_key: NextKey | None = None
    root_ca: str | None = None
    gateways: tuple[IngressGateway, ...] | None = None
    public_services: tuple[PublicService, ...] | None = None
    missing: Mapping[str, str] = field(default_factory=dict)


def _encode(value: Any) -> bytes:
    return json.dumps(value, indent=2, ensure_ascii=True).encode("ascii") + b"\n"


@dataclass(frozen=True, slots=True)
class Document:
    """A response ready to send: ``status`` 200 with a body and ETag, or 503 with a JSON error."""

    status: int
    body: bytes
    etag: str = ""

    @classmethod
    def ok(cls, value: Any) -> Document:
        body = _encode(value)
        return cls(200, body, '"' + hashlib.sha256(body).hexdigest()[:32] + '"')

    @classmethod
    def unavailable(cls, missing: list[str]) -> Document:
        return cls(503, _encode({"error": "unavailable", "missing": missing}))


@dataclass(frozen=True, slots=True)
class Catalog:
    documents: Mapping[str, Document]
    inputs: Inputs

    def get(self, path: str) -> Document | None:
        return self.documents.get(path)


def _need(inputs: Inputs, *names: str) -> list[str]:
    values = {
        "authnKeyPub": inputs.authn_key_pub,
        "rootCA": inputs.root_ca,
        "ingressGateways": inputs.gateways,
        "publicServices": inputs.public_services,
    }
    return [f"{n}: {inputs.missing.get(n, 'not loaded yet')}" for n in names if values[n] is None]


def render(identity: Identity, inputs: Inputs) -> Catalog:
    docs: dict[str, Document] = {}
    missing = _need(inputs, "authnKeyPub", "rootCA")
    if missing or inputs.authn_key_pub is None or inputs.root_ca is None:
        docs[PATH_PUBLIC] = Document.unavailable(missing)
    else:
        public = PublicMetadata(identity.cluster_uuid, inputs.authn_key_pub, inputs.root_ca, inputs.next_key)
        docs[PATH_PUBLIC] = Document.ok(public.to_json())
    if inputs.root_ca is None:
        docs[PATH_SPIFFE_BUNDLE] = Document.unavailable(_need(inputs, "rootCA"))
    else:
        try:
            docs[PATH_SPIFFE_BUNDLE] = Document.ok(spiffe_bundle(inputs.root_ca))
        except MetadataFormatError as exc:
            docs[PATH_SPIFFE_BUNDLE] = Document.unavailable([f"rootCA: {exc}"])
    if inputs.gateways is None:
        docs[PATH_MULTICLUSTER] = Document.unavailable(_need(inputs, "ingressGateways"))
    else:
        multicluster = MulticlusterMetadata(
            identity.cluster_id, identity.api_host, identity.network_name, inputs.gateways
        )
        docs[PATH_MULTICLUSTER] = Document.ok(multicluster.to_json())
    if inputs.gateways is None or inputs.public_services is None:
        docs[PATH_FEDERATION] = Document.unavailable(_need(inputs, "ingressGateways", "publicServices"))
    else:
        docs[PATH_FEDERATION] = Document.ok(
            FederationMetadata(inputs.gateways, inputs.public_services).to_json()
        )
    return Catalog(MappingProxyType(docs), inputs)

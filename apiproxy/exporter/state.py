"""The exporter's current view of its inputs, fed by the source threads, read by the request handlers.

Writers (watch threads, the file reloader) call ``set_*``/``refuse`` under a lock; each call that changes
the inputs re-renders the :class:`~apiproxy.exporter.catalog.Catalog` once and swaps it in. Readers on the
event loop only read ``catalog`` and ``verifiers``, immutable objects replaced whole, so a request never
waits for a writer and never sees half an update.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import MappingProxyType
from typing import Any

from apiproxy.auth import DEFAULT_MAX_LIFETIME, TokenVerifier, TrustStore
from apiproxy.exporter.catalog import DOCUMENTS, Catalog, Identity, Inputs, render
from apiproxy.exporter.derive import NextKeyInput, gateways_from_cluster, public_services
from apiproxy.exporter.metrics import ExporterMetrics
from apiproxy.metadata import (
    FIELD_NEXT_KEY,
    IngressGateway,
    MetadataFormatError,
    NextKey,
    NextKeyError,
    check_next_key,
    deckhouse_public_key_pem,
)

log = logging.getLogger("apiproxy.exporter")

#: Sources whose value is one object (or None when the object or its key is absent).
VALUE_SOURCES = ("authn_key", "authn_next", "root_ca", "advertise", "ingress_gateways_file")
#: Sources whose value is a list of Kubernetes objects.
LIST_SOURCES = ("gateway_services", "gateway_pods", "nodes", "public_services")
_DISCOVERY = ("advertise", "gateway_services", "gateway_pods", "nodes")


class ExporterState:
    def __init__(
        self,
        identity: Identity,
        metrics: ExporterMetrics,
        sources: Sequence[str],
        *,
        issuer: str | None = "d8-istio",
        leeway: float = 60.0,
        max_lifetime: float | None = DEFAULT_MAX_LIFETIME,
        gateway_port_name: str = "tls",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.identity = identity
        self.metrics = metrics
        self.sources = tuple(sources)
        self.gateway_port_name = gateway_port_name
        self.clock = clock
        self._lock = threading.Lock()
        self._loaded: set[str] = set()
        self._values: dict[str, Any] = {}
        self._objects: dict[str, list[Mapping[str, Any]]] = {}
        self._missing: dict[str, str] = {}
        self._errors: dict[str, str] = {}
        self.trust = TrustStore()
        self._base_verifiers = {
            scope: TokenVerifier(
                self.trust,
                identity.cluster_uuid,
                issuer=issuer,
                leeway=leeway,
                # Peers mint one-minute tokens for each fetch: a peer clock running behind must not make
                # every token look expired on arrival.
                exp_leeway=leeway,
                max_lifetime=max_lifetime,
                required_scope=scope,
                clock=clock,
            )
            for _, scope in DOCUMENTS.values()
            if scope is not None
        }
        #: Token verifier of each private document, by required scope; replaced when the trust store changes.
        self.verifiers: Mapping[str, TokenVerifier] = MappingProxyType(dict(self._base_verifiers))
        self.catalog: Catalog = render(identity, self._inputs())
        self.metrics.trusted_clusters.set(0)

    # -- readers -----------------------------------------------------------------------------------------

    @property
    def trust_loaded(self) -> bool:
        return "trust" in self._loaded

    def not_ready(self) -> list[str]:
        """Sources not loaded yet (empty when ready), with the last error of each when there is one."""
        return [
            f"{s}: {self._errors[s]}" if s in self._errors else s
            for s in self.sources
            if s not in self._loaded
        ]

    # -- writers (any thread) ------------------------------------------------------------------------------

    def set_value(self, source: str, value: Any, missing: str | None = None) -> None:
        """A new value of a one-object source; ``None`` with ``missing`` saying why (e.g. not found)."""
        self.set_values({source: value}, {source: missing} if missing else None)

    def set_values(self, values: Mapping[str, Any], missing: Mapping[str, str] | None = None) -> None:
        """Several sources read from one object (the keypair Secret's current and next key), swapped
        together and rendered once: a half-applied promotion would publish a key with a proof that no
        longer matches it."""
        with self._lock:
            for source, value in values.items():
                self._values[source] = value
                reason = (missing or {}).get(source)
                if value is None and reason:
                    self._missing[source] = reason
                else:
                    self._missing.pop(source, None)
                self._loaded_locked(source)
            self._rebuild_locked()

    def set_objects(self, source: str, objects: Iterable[Mapping[str, Any]]) -> None:
        with self._lock:
            self._objects[source] = list(objects)
            self._loaded_locked(source)
            self._rebuild_locked()

    def set_trust(self, store: TrustStore) -> None:
        with self._lock:
            if store.sha256 != self.trust.sha256 or "trust" not in self._loaded:
                self.trust = store
                self.verifiers = MappingProxyType(
                    {scope: v.with_trust(store) for scope, v in self._base_verifiers.items()}
                )
                self.metrics.trusted_clusters.set(len(store))
                log.info("trust store loaded: %d peer cluster(s)", len(store))
            self._loaded_locked("trust")

    def refuse(self, source: str, message: str) -> None:
        """A broken update: logged and counted; the last good value keeps serving."""
        self.metrics.source_errors.labels(source).inc()
        with self._lock:
            kept = source in self._loaded
            self._errors[source] = message
            self._rebuild_locked()
        log.error("refused %s update: %s%s", source, message, "; keeping the last good value" if kept else "")

    def watch_failed(self, source: str, message: str) -> None:
        """The source's watch broke (already logged by the loop): counted; values stay as they were."""
        self.metrics.source_errors.labels(source).inc()
        with self._lock:
            if source not in self._loaded:
                self._errors[source] = message

    def _loaded_locked(self, source: str) -> None:
        self._loaded.add(source)
        self._errors.pop(source, None)
        self.metrics.source_ready.labels(source).set(1)
        self.metrics.source_last_update.labels(source).set(self.clock())

    # -- rendering -----------------------------------------------------------------------------------------

    def _gateways(self) -> tuple[IngressGateway, ...] | None:
        if "ingress_gateways_file" in self.sources:
            value: tuple[IngressGateway, ...] | None = self._values.get("ingress_gateways_file")
            return value
        if not all(s in self._loaded for s in _DISCOVERY):
            return None
        advertised: tuple[IngressGateway, ...] | None = self._values.get("advertise")
        if advertised is not None:
            return advertised
        return gateways_from_cluster(
            self._objects.get("gateway_services", ()),
            self._objects.get("gateway_pods", ()),
            self._objects.get("nodes", ()),
            self.gateway_port_name,
        )

    def _inputs(self) -> Inputs:
        if "public_services" not in self.sources:
            services: Any = ()  # files only: nothing to publish
        elif "public_services" in self._loaded:
            services = public_services(self._objects.get("public_services", ()), self.identity.cluster_domain)
        else:
            services = None
        missing = {
            name: self._missing[source]
            for name, source in (("authnKeyPub", "authn_key"), ("rootCA", "root_ca"))
            if source in self._missing
        }
        for name, source in (("authnKeyPub", "authn_key"), ("rootCA", "root_ca")):
            # Why a value is still missing; a refused update behind a good value changes nothing.
            if source in self._errors and name not in missing and self._values.get(source) is None:
                missing[name] = self._errors[source]
        next_key, refused = self._next_key()
        if refused is not None:
            missing[FIELD_NEXT_KEY] = refused
        return Inputs(
            authn_key_pub=self._values.get("authn_key"),
            next_key=next_key,
            root_ca=self._values.get("root_ca"),
            gateways=self._gateways(),
            public_services=services,
            missing=missing,
        )

    def _next_key(self) -> tuple[NextKey | None, str | None]:
        """The rotation's next key to publish, checked against the current one, or why it is refused."""
        raw: NextKeyInput | None = self._values.get("authn_next")
        current: str | None = self._values.get("authn_key")
        if raw is None or current is None:
            return None, None
        try:
            return check_next_key(current, raw.public_pem, raw.proof), None
        except NextKeyError as exc:
            try:
                if deckhouse_public_key_pem(raw.public_pem) == current:
                    # A promotion seen half-way (a file source): the next key is already the current one.
                    return None, None
            except MetadataFormatError:
                pass
            # A fingerprint, never key bytes: two different refused keys are two log lines and counts.
            fingerprint = hashlib.sha256(raw.public_pem).hexdigest()[:16]
            return None, f"next key sha256:{fingerprint} not published: {exc}"

    def _rebuild_locked(self) -> None:
        inputs = self._inputs()
        if inputs == self.catalog.inputs:
            return
        refused = inputs.missing.get(FIELD_NEXT_KEY)
        if refused is not None and refused != self.catalog.inputs.missing.get(FIELD_NEXT_KEY):
            self.metrics.source_errors.labels("authn_next").inc()
            log.error("refused the rotation's next key: %s", refused)
        self.catalog = render(self.identity, inputs)
        self.metrics.renders.inc()
        self.metrics.gateways.set(len(inputs.gateways or ()))
        self.metrics.public_services.set(len(inputs.public_services or ()))

"""The exporter's own metrics, in its own registry, served on its own port.

Every fixed label value is created at start with 0, so a rate() or an alert has a series to look at
before the first event (an absent series looks like "all is well").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from apiproxy.auth import REASONS

#: Metrics label of each path (``other`` for everything unknown).
ENDPOINTS: Final = ("public", "spiffe_bundle", "multicluster", "federation", "healthz", "readyz", "other")
PRIVATE: Final = ("multicluster", "federation")
#: Every status the exporter answers with (414, 431 and 501 are refusals of its HTTP parser).
CODES: Final = ("200", "304", "400", "401", "404", "405", "414", "431", "500", "501", "503")
#: Every source the exporter can follow, Kubernetes objects and files alike.
SOURCES: Final = (
    "authn_key",
    "authn_next",
    "root_ca",
    "trust",
    "advertise",
    "gateway_services",
    "gateway_pods",
    "nodes",
    "public_services",
    "ingress_gateways_file",
)


class ExporterMetrics:
    def __init__(self, sources: Iterable[str] = SOURCES) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "apiproxy_exporter_requests",
            "Requests answered, by document and status code",
            ["document", "code"],
            registry=r,
        )
        self.auth_failures = Counter(
            "apiproxy_exporter_auth_failures",
            "Refused tokens on private documents, by document and the check that failed",
            ["document", "reason"],
            registry=r,
        )
        self.source_last_update = Gauge(
            "apiproxy_exporter_source_last_update_timestamp_seconds",
            "When a source last delivered a good value (Unix time; 0 = never)",
            ["source"],
            registry=r,
        )
        self.source_ready = Gauge(
            "apiproxy_exporter_source_ready",
            "1 when a source has been loaded at least once",
            ["source"],
            registry=r,
        )
        self.source_errors = Counter(
            "apiproxy_exporter_source_errors",
            "Refused source updates (malformed object or file) and failed watches; the last good "
            "value keeps serving",
            ["source"],
            registry=r,
        )
        self.renders = Counter(
            "apiproxy_exporter_renders", "Times the documents were rebuilt after an input changed", registry=r
        )
        self.gateways = Gauge(
            "apiproxy_exporter_ingress_gateways", "Ingress gateways published to peers", registry=r
        )
        self.public_services = Gauge(
            "apiproxy_exporter_public_services", "Public services published to federation peers", registry=r
        )
        self.trusted_clusters = Gauge(
            "apiproxy_exporter_trusted_clusters",
            "Peers in the trust store (may read private documents)",
            registry=r,
        )
        for endpoint in ENDPOINTS:
            for code in CODES:
                self.requests.labels(endpoint, code)
        for document in PRIVATE:
            for reason in sorted(REASONS):
                self.auth_failures.labels(document, reason)
        for source in sources:
            self.source_last_update.labels(source)
            self.source_ready.labels(source)
            self.source_errors.labels(source)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

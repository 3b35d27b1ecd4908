"""Prometheus metrics of the proxy.

Every label value comes from a bounded set: clusters from the trust store, verbs from the classifier,
groups and resources from the policy (anything else is ``other``), codes from HTTP, reasons from closed
enumerations. Nothing a caller can spell freely (names, namespaces, paths) ever becomes a label.
"""

from __future__ import annotations

import os
import platform
import time

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from apiproxy import __version__
from apiproxy.auth.errors import REASONS as AUTHENTICATION_FAILURE_REASONS
from apiproxy.badrequest import INVALID_REASONS

#: Latency buckets (seconds) for requests measured to their first byte.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: Watch lifetimes: from seconds to the hour-long watches of an idle informer.
WATCH_BUCKETS = (1, 5, 15, 60, 120, 300, 600, 900, 1800, 3600, 7200)

OTHER = "other"

# The fixed label values of the labelled counters: each is registered at 0 when the metrics are created,
# so ``rate()`` and alerts see a series from the start instead of nothing until the first event.

#: ``apiproxy_upstream_errors_total{kind}``: the ``kind`` of every upstream failure (http1's error
#: classes, plus ``stream`` for a response broken off mid-body).
UPSTREAM_ERROR_KINDS = ("connect", "tls", "timeout", "disconnect", "protocol", "stream")
#: ``apiproxy_rate_limited_total{kind}``: per cluster, and ``connections`` for the whole proxy.
RATE_LIMIT_KINDS = ("rate", "watches")
#: ``apiproxy_authorization_denials_total{reason}``.
DENIAL_REASONS = ("policy", "malformed")
#: ``apiproxy_policy_reloads_total{result}`` and ``apiproxy_trust_reloads_total{result}``.
RELOAD_RESULTS = ("success", "failure")

#: Set (by the supervisor of ``--workers``) when several processes share metrics through files.
MULTIPROCESS = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))


class Metrics:
    """All collectors, on a registry of their own (so tests and several proxies in one process agree)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = self.registry = registry or CollectorRegistry()
        self.requests = Counter(
            "apiproxy_requests_total",
            "Requests answered, by remote cluster, verb, API group, resource and HTTP status code.",
            ["cluster", "verb", "group", "resource", "code"],
            registry=r,
        )
        self.request_duration = Histogram(
            "apiproxy_request_duration_seconds",
            "Time to the first byte of the response (watches: until their headers are sent).",
            ["verb"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.watches_active = Gauge(
            "apiproxy_watches_active",
            "Watch streams open now.",
            ["cluster", "resource"],
            registry=r,
            multiprocess_mode="livesum",
        )
        self.watch_duration = Histogram(
            "apiproxy_watch_duration_seconds",
            "Lifetime of finished watch streams.",
            ["resource"],
            buckets=WATCH_BUCKETS,
            registry=r,
        )
        self.response_bytes = Counter(
            "apiproxy_response_bytes_total",
            "Response body bytes relayed to clients.",
            ["cluster", "resource"],
            registry=r,
        )
        self.authentication_failures = Counter(
            "apiproxy_authentication_failures_total",
            "Requests refused with 401, by the check that failed.",
            ["reason"],
            registry=r,
        )
        self.authorization_denials = Counter(
            "apiproxy_authorization_denials_total",
            "Requests refused with 403 by the policy, or 400 as malformed.",
            ["cluster", "reason"],
            registry=r,
        )
        self.concealed_requests = Counter(
            "apiproxy_concealed_requests_total",
            "Requests the proxy answered itself, as if empty, because the policy conceals their resource "
            "(nothing of them is forwarded); also counted in apiproxy_requests_total with their code.",
            ["cluster", "verb", "resource"],
            registry=r,
        )
        self.rate_limited = Counter(
            "apiproxy_rate_limited_total",
            "Requests refused with 429, by limit.",
            ["cluster", "kind"],
            registry=r,
        )
        self.upstream_errors = Counter(
            "apiproxy_upstream_errors_total",
            "Failures talking to the apiserver (connect, tls, timeout, disconnect, protocol, stream).",
            ["kind"],
            registry=r,
        )
        self.invalid_requests = Counter(
            "apiproxy_invalid_requests_total",
            "Requests refused before they could be read (HTTP parser errors, unknown method or version), "
            "by reason.",
            ["reason"],
            registry=r,
        )
        self.upstream_token_age = Gauge(
            "apiproxy_upstream_token_age_seconds",
            "Seconds since the proxy's own service-account token was last read.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.policy_reloads = Counter(
            "apiproxy_policy_reloads_total", "Policy loads, by result.", ["result"], registry=r
        )
        self.trust_reloads = Counter(
            "apiproxy_trust_reloads_total", "Trust store loads, by result.", ["result"], registry=r
        )
        self.reload_successful = Gauge(
            "apiproxy_config_last_reload_successful",
            "1 when the newest version of a watched file was loaded, 0 while it is refused.",
            ["config"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.trusted_clusters = Gauge(
            "apiproxy_trusted_clusters",
            "Remote clusters in the current trust store.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.config_info = Gauge(
            "apiproxy_config_info",
            "Always 1; labels identify the policy and trust store in force.",
            ["policy_sha256", "trust_sha256"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.certificate_expiry = Gauge(
            "apiproxy_certificate_expiry_timestamp_seconds",
            "Expiry (Unix time) of the certificates the proxy serves or trusts.",
            ["cert"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.connections = Gauge(
            "apiproxy_connections_active",
            "Client connections open now.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self.build_info = Gauge(
            "apiproxy_build_info",
            "Always 1; labels carry the version.",
            ["version", "python"],
            registry=r,
            multiprocess_mode="livemax",
        )
        self.build_info.labels(__version__, platform.python_version()).set(1)
        if not MULTIPROCESS:  # with workers, the supervisor exports the shared files only
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
        for result in RELOAD_RESULTS:
            self.policy_reloads.labels(result)
            self.trust_reloads.labels(result)
        for kind in UPSTREAM_ERROR_KINDS:
            self.upstream_errors.labels(kind)
        for reason in sorted(AUTHENTICATION_FAILURE_REASONS):
            self.authentication_failures.labels(reason)
        for reason in INVALID_REASONS:
            self.invalid_requests.labels(reason)
        self.rate_limited.labels("", "connections")
        self._clusters: frozenset[str] = frozenset()
        self._config_labels: tuple[str, str] | None = None

    def set_config(self, policy_sha256: str, trust_sha256: str) -> None:
        labels = (policy_sha256, trust_sha256)
        if labels == self._config_labels:
            return
        if self._config_labels is not None:
            # Workers share files in which a series cannot be removed: 0 marks the old one superseded.
            self.config_info.labels(*self._config_labels).set(0)
            if not MULTIPROCESS:
                self.config_info.remove(*self._config_labels)
        self.config_info.labels(*labels).set(1)
        self._config_labels = labels

    def set_clusters(self, clusters: frozenset[str]) -> None:
        """Register the per-cluster counters of newly trusted clusters at 0 (a removed cluster keeps its
        series: its counts are history, and a counter must not go backwards)."""
        for cluster in sorted(clusters - self._clusters):
            for kind in RATE_LIMIT_KINDS:
                self.rate_limited.labels(cluster, kind)
            for reason in DENIAL_REASONS:
                self.authorization_denials.labels(cluster, reason)
        self._clusters = self._clusters | clusters

    def set_token_age(self, loaded_at: float | None) -> None:
        """Refreshed on every reload tick (a callback gauge would not work across worker processes)."""
        self.upstream_token_age.set(time.time() - loaded_at if loaded_at is not None else float("nan"))

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

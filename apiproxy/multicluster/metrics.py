"""The controller's metrics, in their own registry (served on ``--metrics-listen``).

Deckhouse's names are kept where they exist (``d8_istio_multicluster_*``: 1 while the step fails, 0 once it
works, as its hooks set them) so its alerts keep working; ours add the success time of each step, the
expiry of each remote token, an identity-changed gauge and the reconcile duration.
"""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class ControllerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.fetch_error = Gauge(
            "d8_istio_multicluster_metadata_endpoints_fetch_error_count",
            "1 while fetching a peer's metadata fails",
            ["multicluster_name", "endpoint"],
            registry=r,
        )
        self.api_check_error = Gauge(
            "d8_istio_multicluster_api_host_check_error_count",
            "1 while a peer's API host does not answer as an apiserver",
            ["multicluster_name", "api_host"],
            registry=r,
        )
        self.last_success = Gauge(
            "apiproxy_multicluster_last_success_timestamp_seconds",
            "when each step last succeeded for a peer (step: public, private, api)",
            ["multicluster_name", "step"],
            registry=r,
        )
        self.token_expiry = Gauge(
            "apiproxy_multicluster_remote_token_expiry_timestamp_seconds",
            "expiry of the API token in a peer's istiod remote secret",
            ["multicluster_name"],
            registry=r,
        )
        self.identity_changed = Gauge(
            "apiproxy_multicluster_remote_identity_changed",
            "1 while a peer serves an identity other than the pinned one, until an admin accepts it",
            ["multicluster_name"],
            registry=r,
        )
        self.ready = Gauge(
            "apiproxy_multicluster_ready", "1 when the peer is established", ["multicluster_name"], registry=r
        )
        self.reconcile_seconds = Histogram(
            "apiproxy_multicluster_reconcile_duration_seconds",
            "one peer's reconcile, fetches and writes included",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.writes = Counter(
            "apiproxy_multicluster_writes_total",
            "objects written because their content changed (kind: trust, remote-secret, mesh, keypair)",
            ["kind"],
            registry=r,
        )

    def forget(self, name: str) -> None:
        """Drop every series of a deleted resource, so its alerts resolve."""
        for gauge in (self.fetch_error, self.api_check_error, self.last_success):
            for labels in list(gauge._metrics):  # prometheus_client keeps children by label tuple
                if labels and labels[0] == name:
                    gauge.remove(*labels)
        for gauge in (self.token_expiry, self.identity_changed, self.ready):
            with contextlib.suppress(KeyError):
                gauge.remove(name)

"""Wiring of ``apiproxy exporter``: settings → sources → state → HTTP listeners, and shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from apiproxy.exporter.catalog import Identity
from apiproxy.exporter.http import AuditTrail, ExporterHandler, build_metrics_server, build_server
from apiproxy.exporter.metrics import ExporterMetrics
from apiproxy.exporter.settings import ExporterSettings
from apiproxy.exporter.sources import kubernetes_sources, source_names, start_watches, watch_files
from apiproxy.exporter.state import ExporterState
from apiproxy.kubewatch import KubernetesClient, ListWatchClient, WatchLoop
from apiproxy.metadata import MetadataFormatError, network_name
from apiproxy.metadata.formats import check_api_host
from apiproxy.reload import Reloader, WatchedFiles
from apiproxy.tlsconfig import LiveServerTLS, parse_listen

log = logging.getLogger("apiproxy.exporter")


class ConfigurationError(ValueError):
    """Settings that cannot work; the exporter refuses to start."""


def identity_of(settings: ExporterSettings) -> Identity:
    if not settings.cluster_uuid:
        raise ConfigurationError("--cluster-uuid (or env CLUSTER_UUID) is required")
    if not settings.api_host:
        raise ConfigurationError(
            "--api-host is required (the public HOST[:PORT] of this cluster's API proxy)"
        )
    try:
        check_api_host(settings.api_host)
    except MetadataFormatError as exc:
        raise ConfigurationError(str(exc)) from exc
    if not settings.jwt_issuer:
        raise ConfigurationError("--jwt-issuer must not be empty: the token issuer is always checked")
    if (settings.authn_next_public_key_file is None) != (settings.authn_next_proof_file is None):
        raise ConfigurationError("--authn-next-public-key-file and --authn-next-proof-file go together")
    if settings.authn_next_public_key_file is not None and settings.authn_public_key_file is None:
        raise ConfigurationError(
            "--authn-next-public-key-file needs --authn-public-key-file (the key its proof is checked with)"
        )
    if (settings.tls_cert_file is None) != (settings.tls_private_key_file is None):
        raise ConfigurationError("--tls-cert-file and --tls-private-key-file go together")
    return Identity(
        cluster_uuid=settings.cluster_uuid,
        cluster_id=settings.effective_cluster_id(),
        api_host=settings.api_host,
        network_name=settings.network_name or network_name(settings.cluster_domain, settings.cluster_uuid),
        cluster_domain=settings.cluster_domain,
    )


def _bound_port(site: web.TCPSite) -> int:
    server: Any = site._server
    return int(server.sockets[0].getsockname()[1])


@dataclass
class RunningExporter:
    state: ExporterState
    metrics: ExporterMetrics
    reloader: Reloader
    runner: web.ServerRunner
    site: web.TCPSite
    handler: ExporterHandler
    metrics_runner: web.ServerRunner | None = None
    metrics_site: web.TCPSite | None = None
    loops: list[WatchLoop] = field(default_factory=list)
    tls: LiveServerTLS | None = None

    @property
    def port(self) -> int:
        return _bound_port(self.site)

    @property
    def metrics_port(self) -> int:
        if self.metrics_site is None:
            raise RuntimeError("the metrics endpoint is disabled")
        return _bound_port(self.metrics_site)

    async def stop(self) -> None:
        for loop in self.loops:
            loop.stop(timeout=0)
        await self.reloader.stop()
        await self.runner.cleanup()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()


async def start_exporter(
    settings: ExporterSettings,
    *,
    client: ListWatchClient | None = None,
    backoff: tuple[float, float] = (1.0, 30.0),
) -> RunningExporter:
    """Start every source and both listeners; ``client`` replaces the Kubernetes client (tests)."""
    identity = identity_of(settings)
    host, port = parse_listen(settings.listen)
    metrics = ExporterMetrics(source_names(settings))
    state = ExporterState(
        identity,
        metrics,
        source_names(settings),
        issuer=settings.jwt_issuer,
        leeway=settings.jwt_leeway,
        max_lifetime=settings.jwt_max_lifetime or None,
        gateway_port_name=settings.gateway_port_name,
    )
    reloader = Reloader(settings.reload_interval)
    watch_files(settings, state, reloader)
    watched = kubernetes_sources(settings, state)
    if watched and client is None:
        try:
            client = await asyncio.to_thread(
                KubernetesClient.from_config, str(settings.kubeconfig) if settings.kubeconfig else None
            )
        except Exception as exc:  # the client raises its own config exception types
            raise ConfigurationError(
                f"cannot reach Kubernetes ({exc}); give --kubeconfig or file sources"
            ) from exc
    tls = None
    if settings.tls_cert_file is not None and settings.tls_private_key_file is not None:
        try:
            tls = LiveServerTLS(settings.tls_cert_file, settings.tls_private_key_file)
        except (OSError, ValueError) as exc:
            raise ConfigurationError(f"serving certificate: {exc}") from exc
        reloader.add(
            WatchedFiles(
                "serving certificate", [settings.tls_cert_file, settings.tls_private_key_file], tls.reload
            )
        )
    audit = AuditTrail.open(settings.audit_log)
    handler = ExporterHandler(state, metrics, audit)
    runner = web.ServerRunner(build_server(handler), shutdown_timeout=2.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls.context if tls is not None else None)
    await site.start()
    running = RunningExporter(state, metrics, reloader, runner, site, handler, tls=tls)
    if settings.metrics_listen:
        mhost, mport = parse_listen(settings.metrics_listen)
        running.metrics_runner = web.ServerRunner(build_metrics_server(metrics))
        await running.metrics_runner.setup()
        running.metrics_site = web.TCPSite(running.metrics_runner, mhost, mport)
        await running.metrics_site.start()
    if watched:
        assert client is not None
        running.loops = start_watches(watched, client, state, backoff=backoff)
    reloader.start()
    log.info(
        "exporter for cluster %s listening on %s (%s), %d source(s)",
        identity.cluster_uuid,
        settings.listen,
        "TLS" if tls else "plain HTTP",
        len(state.sources),
    )
    return running


async def run_exporter(settings: ExporterSettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    running = await start_exporter(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        log.info("exporter stopping")
        await running.stop()

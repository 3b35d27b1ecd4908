"""Assemble the proxy from its settings and run it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web
from cryptography import x509

from apiproxy.auth.errors import TrustStoreError
from apiproxy.auth.mtls import build_client_ca_bundle
from apiproxy.auth.principal import Principal
from apiproxy.auth.secretsource import SecretTrustSource, kubernetes_stream
from apiproxy.auth.truststore import TrustSnapshotSource, TrustSource, TrustStore
from apiproxy.httpedge import EdgeServer, by_path
from apiproxy.policy import Policy, parse_policy
from apiproxy.proxy.audit import AuditLog
from apiproxy.proxy.authn import Authenticator, insecure_authenticator
from apiproxy.proxy.memory import Glibc, HeapTrimmer
from apiproxy.proxy.metrics import Metrics
from apiproxy.proxy.server import Authenticate, Limits, ProxyHandler, ProxyServer
from apiproxy.proxy.settings import Settings
from apiproxy.proxy.upstream import Upstream, UpstreamSettings
from apiproxy.reload import Reloader, WatchedFile, WatchedFiles
from apiproxy.tlsconfig import LiveServerTLS, parse_listen

log = logging.getLogger("apiproxy")


class ConfigurationError(ValueError):
    """Settings that cannot work together; reported before anything listens."""


def _parse_policy(data: bytes, source: str) -> Policy:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{source}: not UTF-8 text") from exc
    return parse_policy(text, source)


class TrustWatch:
    """Adapts a trust source to the reloader: a broken update is logged once and the old store kept."""

    name = "trust store"

    def __init__(self, source: TrustSnapshotSource) -> None:
        self.source = source
        self.last_error: str | None = None
        self.on_result: Callable[[str, str | None], None] | None = None

    @property
    def current(self) -> TrustStore:
        return self.source.current

    def refresh(self) -> bool:
        try:
            changed = self.source.refresh()
        except TrustStoreError as exc:
            message = f"refused new trust store: {exc}; keeping the last good one"
            if message != self.last_error:
                log.error("%s", message)
                if self.on_result:
                    self.on_result(self.name, message)
            self.last_error = message
            return False
        self.last_error = None
        if changed:
            log.info("trust store reloaded: %d remote cluster(s)", len(self.source.current))
            if self.on_result:
                self.on_result(self.name, None)
        return changed


@dataclass
class Proxy:
    """A running proxy: its handler, its listener and the sources it follows."""

    settings: Settings
    handler: ProxyHandler
    upstream: Upstream
    reloader: Reloader
    policy: WatchedFile[Policy]
    tls: LiveServerTLS
    metrics: Metrics
    audit: AuditLog | None = None
    trust: TrustWatch | None = None
    authenticator: Authenticator | None = None
    runner: web.ServerRunner | None = None
    metrics_runner: web.ServerRunner | None = None
    sites: list[web.TCPSite] = field(default_factory=list)
    metrics_sites: list[web.TCPSite] = field(default_factory=list)

    @property
    def port(self) -> int:
        """The proxy port actually bound (``--listen`` may ask for port 0)."""
        return _bound_port(self.sites, "the proxy")

    @property
    def metrics_port(self) -> int:
        return _bound_port(self.metrics_sites, "the metrics endpoint")

    async def stop(self, *, delay: float = 0.0) -> None:
        """Graceful stop: not ready at once, keep serving for ``delay``, stop accepting, end watches
        cleanly, let short requests finish within the grace period, then close everything."""
        self.handler.shutting_down = True
        if delay > 0:
            log.info("not ready; still serving for %gs so load balancers stop sending traffic", delay)
            await asyncio.sleep(delay)
        for site in self.sites:
            await site.stop()
        self.handler.draining = True
        self.handler.close_all_watches("the proxy is shutting down")
        if self.runner is not None:
            await self.runner.cleanup()
        await self.reloader.stop()
        await self.upstream.close()
        if self.metrics_runner is not None:
            await self.metrics_runner.cleanup()
        if self.audit is not None:
            self.audit.flush()
        if self.trust is not None and isinstance(self.trust.source, SecretTrustSource):
            self.trust.source.stop()


def _bound_port(sites: list[web.TCPSite], what: str) -> int:
    server = sites[0]._server if sites else None
    sockets = getattr(server, "sockets", None)
    if not sockets:
        raise RuntimeError(f"{what} is not listening")
    return int(sockets[0].getsockname()[1])


def check_settings(settings: Settings) -> None:
    if settings.tls_cert_file is None or settings.tls_private_key_file is None:
        raise ConfigurationError("--tls-cert-file and --tls-private-key-file are required")
    if settings.require_client_cert and not settings.client_ca_file:
        raise ConfigurationError("--require-client-cert needs --client-ca-file")
    if settings.insecure_no_auth:
        return
    if not settings.cluster_uuid:
        raise ConfigurationError("--cluster-uuid (or env CLUSTER_UUID) is required: it is the token audience")
    if not (settings.trust_file or settings.jwks_file or settings.trust_secret):
        raise ConfigurationError("one of --trust-file, --jwks-file or --trust-secret is required")
    if settings.trust_secret and settings.trust_file:
        raise ConfigurationError("--trust-secret and --trust-file are alternatives; give one")
    if settings.trust_secret and settings.trust_secret.count("/") != 1:
        raise ConfigurationError("--trust-secret must be NAMESPACE/NAME")


async def trust_source(settings: Settings) -> TrustSnapshotSource:
    names = settings.cluster_names()
    if settings.trust_secret:
        namespace, name = settings.trust_secret.split("/")
        source = SecretTrustSource(namespace, name, stream_factory=kubernetes_stream(), names=names)
        source.start()
        if not await asyncio.to_thread(source.wait_synced, 30):
            source.stop()
            raise ConfigurationError(f"could not read Secret {settings.trust_secret} within 30s")
        return source
    try:
        return TrustSource(settings.trust_file, settings.jwks_file, names)
    except TrustStoreError as exc:
        raise ConfigurationError(f"cannot load the trust store: {exc}") from exc


def _read(path: Path | None) -> bytes | None:
    return path.read_bytes() if path is not None else None


async def start(settings: Settings) -> Proxy:
    """Load everything, fail fast on bad input, then listen."""
    check_settings(settings)
    assert settings.tls_cert_file is not None and settings.tls_private_key_file is not None
    metrics = Metrics()

    def reloaded(kind: str) -> Callable[[str, str | None], None]:
        counter = {"policy": metrics.policy_reloads, "trust": metrics.trust_reloads}.get(kind)

        def record(name: str, error: str | None) -> None:
            if counter is not None:
                counter.labels("failure" if error else "success").inc()
            metrics.reload_successful.labels(kind).set(0 if error else 1)

        return record

    policy: WatchedFile[Policy] = WatchedFile("policy", settings.policy, _parse_policy)
    policy.on_result = reloaded("policy")
    policy.load()

    trust: TrustWatch | None = None
    authenticator: Authenticator | None = None
    authenticate: Authenticate
    channel_ca = _read(settings.client_ca_file)
    if settings.insecure_no_auth:
        log.warning(
            "AUTHENTICATION IS DISABLED (--insecure-no-auth): every caller is 'anonymous'. "
            "Never run this way outside a development machine."
        )
        authenticate = insecure_authenticator
    else:
        trust = TrustWatch(await trust_source(settings))
        trust.on_result = reloaded("trust")
        trust.on_result(trust.name, None)
        authenticator = Authenticator(
            trust.current,
            audience=settings.cluster_uuid,
            issuer=settings.jwt_issuer,
            leeway=settings.jwt_leeway,
            max_lifetime=settings.jwt_max_lifetime,
            cert_identity=settings.cert_identity,
            san_clusters=settings.san_clusters(),
            client_ca_pem=channel_ca,
            require_channel_cert=settings.require_client_cert,
        )
        authenticate = authenticator

    def client_ca_bundle() -> bytes | None:
        roots = trust.current if trust is not None and settings.cert_identity else TrustStore()
        bundle = build_client_ca_bundle(channel_ca, roots)
        return bundle or None

    tls = LiveServerTLS(
        settings.tls_cert_file,
        settings.tls_private_key_file,
        client_ca=client_ca_bundle(),
        require_client_cert=settings.require_client_cert,
    )

    upstream = Upstream(
        UpstreamSettings(
            url=settings.upstream,
            ca_file=settings.upstream_ca_file,
            token_file=settings.upstream_token_file,
            connect_timeout=settings.upstream_connect_timeout,
            request_timeout=settings.upstream_timeout,
            tls_max_version=settings.upstream_tls_max_version,
        )
    )
    await upstream.start()
    metrics.set_token_age(upstream.token.loaded_at)
    audit = AuditLog.open(settings.audit_log)
    handler = ProxyHandler(
        upstream,
        authenticate,
        lambda: policy.current,
        metrics=metrics,
        audit=audit,
        limits=Limits(
            rate_qps=settings.rate_limit_qps,
            rate_burst=settings.rate_limit_burst,
            watches_per_cluster=settings.max_watches_per_cluster,
            max_watch_timeout=settings.max_watch_timeout,
            client_stall_timeout=settings.upstream_timeout,
        ),
    )
    handler.readiness_checks.append(lambda: None if policy.loaded else "policy not loaded")
    handler.readiness_warnings.append(lambda: policy.last_error)

    def config_changed() -> None:
        metrics.set_config(policy.sha256, trust.current.sha256 if trust is not None else "")
        if trust is not None:
            metrics.trusted_clusters.set(len(trust.current))
            metrics.set_clusters(frozenset(c.display for c in trust.current.clusters.values()))
            handler.rate.forget({c.display for c in trust.current.clusters.values()})

    config_changed()
    _certificate_expiry(metrics, "serving", settings.tls_cert_file)
    _certificate_expiry(metrics, "client_ca", settings.client_ca_file)
    _certificate_expiry(metrics, "upstream_ca", settings.upstream_ca_file)

    reloader = Reloader(settings.reload_interval)

    def policy_changed() -> None:
        config_changed()
        _revoke(handler, "policy changed")

    reloader.add(policy, policy_changed)
    if trust is not None and authenticator is not None:
        watched = trust

        def trust_changed() -> None:
            assert authenticator is not None
            authenticator.trust_changed(watched.current)
            if settings.cert_identity:
                tls.reload(client_ca=client_ca_bundle())
            config_changed()
            known = set(watched.current.clusters)
            _revoke(handler, "trust store changed", lambda p: p.cluster_uuid in known)

        reloader.add(trust, trust_changed)
        # An empty trust store is a warning, not unreadiness: a fresh install has no peer until the first
        # IstioMulticluster is Ready, and a proxy that refuses everyone (401) is serving correctly; a
        # Deployment that never became Available would stall every rollout. The alert
        # ApiproxyNoTrustedClusters says it instead.
        handler.readiness_warnings.append(
            lambda: None if len(watched.current) else "trust store is empty: every request is refused (401)"
        )
        handler.readiness_warnings.append(lambda: watched.last_error)

    def serving_changed() -> None:
        tls.reload()
        _certificate_expiry(metrics, "serving", settings.tls_cert_file)

    serving = WatchedFiles(
        "serving certificate", [settings.tls_cert_file, settings.tls_private_key_file], serving_changed
    )
    serving.on_result = reloaded("serving_certificate")
    reloader.add(serving)
    if settings.client_ca_file is not None:
        client_ca_file = settings.client_ca_file

        def client_ca_changed() -> None:
            nonlocal channel_ca
            channel_ca = client_ca_file.read_bytes()
            tls.reload(client_ca=client_ca_bundle())
            if authenticator is not None:
                authenticator.channel_ca_changed(channel_ca)
            _certificate_expiry(metrics, "client_ca", client_ca_file)

        client_ca_watch = WatchedFiles("client CA", [client_ca_file], client_ca_changed)
        client_ca_watch.on_result = reloaded("client_ca")
        reloader.add(client_ca_watch)
    if settings.upstream_ca_file is not None and settings.upstream_ca_file.exists():
        upstream_ca_file = settings.upstream_ca_file

        def upstream_ca_changed() -> None:
            upstream.reload_ca()
            _certificate_expiry(metrics, "upstream_ca", upstream_ca_file)

        upstream_ca_watch = WatchedFiles("upstream CA", [upstream_ca_file], upstream_ca_changed)
        upstream_ca_watch.on_result = reloaded("upstream_ca")
        reloader.add(upstream_ca_watch)
    server = ProxyServer(
        handler,
        max_connections=settings.max_connections,
        handler_cancellation=True,
        access_log=None,
        auto_decompress=False,
        max_line_size=settings.max_header_bytes,
        max_field_size=settings.max_header_bytes,
    )
    tick = _Tick(
        audit,
        lambda: metrics.set_token_age(upstream.token.loaded_at),
        HeapTrimmer(Glibc.load()),
        lambda: server.open_connections,
    )
    reloader.add(tick)
    reloader.start()

    proxy = Proxy(settings, handler, upstream, reloader, policy, tls, metrics, audit, trust, authenticator)
    proxy.runner = web.ServerRunner(server, shutdown_timeout=settings.shutdown_grace)
    await proxy.runner.setup()
    host, port = parse_listen(settings.listen)
    site = web.TCPSite(
        proxy.runner,
        host,
        port,
        ssl_context=tls.context,
        backlog=1024,
        reuse_port=settings.reuse_port or None,
    )
    await site.start()
    proxy.sites.append(site)
    if settings.metrics_listen:
        await _start_metrics(proxy, settings.metrics_listen)
    log.info("apiproxy listening on https://%s:%d, forwarding to %s", host, proxy.port, settings.upstream)
    return proxy


class _Tick:
    """Work done on every reload tick: push out the batched audit records, refresh the token-age gauge,
    and hand free memory back to the OS once a burst of connections has ended."""

    name = "periodic housekeeping"

    def __init__(
        self,
        audit: AuditLog | None,
        refresh_gauges: Callable[[], None],
        trimmer: HeapTrimmer | None = None,
        connections: Callable[[], int] = lambda: 0,
    ) -> None:
        self.audit = audit
        self.refresh_gauges = refresh_gauges
        self.trimmer = trimmer
        self.connections = connections

    def refresh(self) -> bool:
        if self.audit is not None:
            self.audit.flush()
        self.refresh_gauges()
        if self.trimmer is not None:
            self.trimmer.maybe_trim(self.connections())
        return False


def _certificate_expiry(metrics: Metrics, name: str, path: Path | None) -> None:
    """Export the earliest expiry among the certificates in ``path`` (a bundle may hold several)."""
    if path is None:
        return
    try:
        certs = x509.load_pem_x509_certificates(path.read_bytes())
    except (OSError, ValueError):
        return
    if certs:
        metrics.certificate_expiry.labels(name).set(min(c.not_valid_after_utc.timestamp() for c in certs))


async def _start_metrics(proxy: Proxy, listen: str) -> None:
    """Plain-HTTP endpoint for Prometheus and kubelet probes: /metrics, /healthz, /livez, /readyz."""
    handler = proxy.handler

    async def metrics(request: web.BaseRequest) -> web.Response:
        body, content_type = proxy.metrics.exposition()
        return web.Response(body=body, headers={"Content-Type": content_type})

    routes = {"/metrics": metrics, "/healthz": handler.live, "/livez": handler.live}
    routes |= {"/readyz": handler.ready, "/ready": handler.ready}
    proxy.metrics_runner = web.ServerRunner(EdgeServer(by_path(routes), logger=log, access_log=None))
    await proxy.metrics_runner.setup()
    host, port = parse_listen(listen)
    site = web.TCPSite(proxy.metrics_runner, host, port)
    await site.start()
    proxy.metrics_sites.append(site)


def _revoke(handler: ProxyHandler, why: str, allowed: Callable[[Principal], bool] | None = None) -> None:
    closed = handler.revoke_watches(why, allowed)
    if closed:
        log.info("%s: closed %d watch stream(s) no longer allowed", why, closed)


async def serve(settings: Settings) -> None:
    proxy = await start(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
        log.info("signal received: shutting down")
    finally:
        await proxy.stop(delay=settings.shutdown_delay)

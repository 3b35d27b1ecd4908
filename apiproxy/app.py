"""Assemble the proxy from its settings and run it until SIGTERM/SIGINT."""

from __future__ import annotations

import asyncio
import logging
import signal
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from apiproxy.auth.errors import TrustStoreError
from apiproxy.auth.mtls import build_client_ca_bundle
from apiproxy.auth.secretsource import SecretTrustSource, kubernetes_stream
from apiproxy.auth.truststore import TrustSnapshotSource, TrustSource, TrustStore
from apiproxy.authn import Authenticator, insecure_authenticator
from apiproxy.policy import Policy, parse_policy
from apiproxy.reload import Reloader, WatchedFile
from apiproxy.server import Authenticate, ProxyHandler
from apiproxy.settings import Settings
from apiproxy.tlsconfig import LiveServerTLS, parse_listen
from apiproxy.upstream import Upstream, UpstreamSettings

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
            self.last_error = message
            return False
        self.last_error = None
        if changed:
            log.info("trust store reloaded: %d remote cluster(s)", len(self.source.current))
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
    trust: TrustWatch | None = None
    authenticator: Authenticator | None = None
    runner: web.ServerRunner | None = None
    sites: list[web.TCPSite] = field(default_factory=list)

    @property
    def port(self) -> int:
        server = self.sites[0]._server if self.sites else None
        sockets = getattr(server, "sockets", None)
        if not sockets:
            raise RuntimeError("not listening")
        return int(sockets[0].getsockname()[1])

    async def stop(self) -> None:
        self.handler.shutting_down = True
        await self.reloader.stop()
        self.handler.close_all_watches("the proxy is shutting down")
        if self.runner is not None:
            await self.runner.cleanup()
        await self.upstream.close()
        if self.trust is not None and isinstance(self.trust.source, SecretTrustSource):
            self.trust.source.stop()


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
    policy: WatchedFile[Policy] = WatchedFile("policy", settings.policy, _parse_policy)
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
        )
    )
    await upstream.start()
    handler = ProxyHandler(upstream, authenticate, lambda: policy.current)
    handler.readiness_checks.append(lambda: None if policy.loaded else "policy not loaded")

    reloader = Reloader(settings.reload_interval)
    reloader.add(policy, lambda: _revoke(handler, "policy changed"))
    if trust is not None and authenticator is not None:
        watched = trust

        def trust_changed() -> None:
            assert authenticator is not None
            authenticator.trust_changed(watched.current)
            if settings.cert_identity:
                tls.reload(client_ca=client_ca_bundle())
            _revoke(handler, "trust store changed")

        reloader.add(trust, trust_changed)
        handler.readiness_checks.append(lambda: None if len(watched.current) else "trust store is empty")
    reloader.start()

    proxy = Proxy(settings, handler, upstream, reloader, policy, tls, trust, authenticator)
    server = web.Server(handler, handler_cancellation=True, access_log=None, auto_decompress=False)
    proxy.runner = web.ServerRunner(server, shutdown_timeout=5.0)
    await proxy.runner.setup()
    host, port = parse_listen(settings.listen)
    site = web.TCPSite(proxy.runner, host, port, ssl_context=tls.context, backlog=1024)
    await site.start()
    proxy.sites.append(site)
    log.info("apiproxy listening on https://%s:%d, forwarding to %s", host, proxy.port, settings.upstream)
    return proxy


def _revoke(handler: ProxyHandler, why: str) -> None:
    closed = handler.revoke_watches(why)
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
        await proxy.stop()

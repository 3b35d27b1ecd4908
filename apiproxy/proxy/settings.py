"""Every option of ``apiproxy serve`` in one typed table: flags, ``--config`` keys, defaults and help
come from here (through the shared machinery of :mod:`apiproxy.settings`)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path

from apiproxy.proxy.upstream import SERVICE_ACCOUNT_DIR, in_cluster_url
from apiproxy.settings import add_arguments, duration_arg, from_namespace, mapping_arg, opt, parse_settings


@dataclass
class Settings:
    # Listener
    listen: str = opt("0.0.0.0:4443", "address the proxy listens on (HOST:PORT)")
    tls_cert_file: Path | None = opt(None, "serving certificate (PEM, chain allowed); required")
    tls_private_key_file: Path | None = opt(None, "serving private key (PEM); required")
    # Upstream
    upstream: str = opt(
        in_cluster_url() or "https://kubernetes.default.svc",
        "apiserver URL (default: the in-cluster service from KUBERNETES_SERVICE_HOST/PORT)",
    )
    upstream_ca_file: Path | None = opt(SERVICE_ACCOUNT_DIR / "ca.crt", "CA bundle for the apiserver")
    upstream_token_file: Path = opt(
        SERVICE_ACCOUNT_DIR / "token", "the proxy's own bearer token; re-read when it changes"
    )
    upstream_timeout: float = opt(
        60.0,
        "longest upstream silence on a non-watch request before 504, and longest a client may leave a "
        "response unread before the proxy hangs up",
        type=duration_arg,
    )
    upstream_connect_timeout: float = opt(5.0, "upstream connect timeout", type=duration_arg)
    upstream_tls_max_version: str = opt(
        "",
        "cap TLS to the apiserver at this version; 1.2 saves ~13 KiB per open watch (default: 1.3 allowed)",
        choices=("", "1.2"),
    )
    # Authentication
    cluster_uuid: str = opt(
        os.environ.get("CLUSTER_UUID", ""),
        "this cluster's UUID: the audience tokens must name (env CLUSTER_UUID)",
    )
    trust_file: Path | None = opt(None, "remote clusters' public metadata (remote-public-metadata.json)")
    jwks_file: Path | None = opt(None, "JWKS of non-Deckhouse issuers; a key's kid is the cluster UUID")
    trust_secret: str | None = opt(
        None,
        "watch NAMESPACE/NAME Secret for the trust store instead of a file "
        "(in-cluster service account, or $KUBECONFIG when set; needs get/list/watch on that Secret)",
    )
    cluster_name: list[tuple[str, str]] = opt(
        None, "friendly name of a remote cluster, UUID=NAME (repeatable)", type=mapping_arg, action="append"
    )
    jwt_issuer: str = opt("d8-istio", "required token issuer (iss)")
    jwt_leeway: float = opt(
        60.0,
        "clock skew tolerated on nbf/iat (exp is strict: the token cache honours it)",
        type=duration_arg,
    )
    jwt_max_lifetime: float = opt(
        400 * 86400.0,
        "longest accepted token lifetime, exp - max(iat, nbf) or exp - now without both, e.g. 366d "
        "(default 400d: Deckhouse issues at most 366d); 0 accepts any",
        type=duration_arg,
    )
    client_ca_file: Path | None = opt(None, "verify client certificates against this CA")
    require_client_cert: bool = opt(False, "refuse TLS connections without a client certificate")
    cert_identity: bool = opt(
        False,
        "let a client certificate issued by a remote cluster's rootCA authenticate as that cluster",
    )
    cert_san_cluster: list[tuple[str, str]] = opt(
        None,
        "client-certificate SAN that identifies a cluster, SAN=UUID (repeatable)",
        type=mapping_arg,
        action="append",
    )
    insecure_no_auth: bool = opt(False, "serve without authentication (development only; logs loudly)")
    # Authorization
    policy: Path = opt(Path("/etc/apiproxy/policy.yaml"), "allowlist policy file; reloaded on change")
    # Limits
    rate_limit_qps: float = opt(
        100.0, "per-cluster sustained rate of non-watch requests (token bucket; 0 disables)"
    )
    rate_limit_burst: int = opt(300, "per-cluster burst of non-watch requests")
    max_watches_per_cluster: int = opt(100, "concurrent watch streams per remote cluster (0 disables)")
    max_connections: int = opt(2000, "client connections open at once, over all clusters")
    max_watch_timeout: float = opt(
        1800.0,
        "cap on a watch's timeoutSeconds; watches without one get 50-100%% of it (jitter)",
        type=duration_arg,
    )
    max_header_bytes: int = opt(16384, "largest request line or header field accepted")
    # Operations
    metrics_listen: str = opt(
        "0.0.0.0:9090", "address of the metrics and probe endpoint (plain HTTP; empty disables)"
    )
    shutdown_delay: float = opt(
        5.0, "on SIGTERM, seconds of not-ready before the listener closes", type=duration_arg
    )
    shutdown_grace: float = opt(
        30.0, "on SIGTERM, longest wait for requests to finish before exiting", type=duration_arg
    )
    workers: int = opt(
        1,
        "processes serving the port (SO_REUSEPORT), for more than one core; limits are split between "
        "them and metrics aggregated",
    )
    reuse_port: bool = opt(False, "share the listening port with other processes (set for each worker)")
    reload_interval: float = opt(1.0, "how often watched files are checked for changes", type=duration_arg)
    audit_log: str = opt("-", "where audit records go: - for stdout, a file path, or empty to disable")
    log_level: str = opt(
        "info", "debug, info, warning or error", choices=("debug", "info", "warning", "error")
    )
    log_format: str = opt("text", "text or json", choices=("text", "json"))
    uvloop: bool = opt(True, "use uvloop when installed (falls back cleanly when it is not)")

    def cluster_names(self) -> dict[str, str]:
        return dict(self.cluster_name or ())

    def san_clusters(self) -> dict[str, str]:
        return dict(self.cert_san_cluster or ())


def settings_from_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser, Settings)
    settings: Settings = from_namespace(parser.parse_args(list(argv)), Settings)
    return settings


def to_args(settings: Settings) -> list[str]:
    """The ``apiproxy serve`` flags that reproduce ``settings`` (for running the proxy as a process)."""
    defaults = Settings()
    args: list[str] = []
    for f in fields(Settings):
        value = getattr(settings, f.name)
        if value == getattr(defaults, f.name):
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            args.append(flag if value else "--no-" + f.name.replace("_", "-"))
        elif isinstance(value, list):
            for key, item in value:
                args += [flag, f"{key}={item}"]
        elif value is not None:
            args += [flag, str(value)]
    return args


def serve_settings(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Settings:
    """Parse ``serve`` flags; with ``--config FILE`` its values become the defaults that flags override."""
    settings: Settings = parse_settings(parser, argv, Settings)
    return settings

"""Every option of ``apiproxy serve`` in one typed table: flags, defaults and help come from here."""

from __future__ import annotations

import argparse
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from apiproxy.upstream import SERVICE_ACCOUNT_DIR, in_cluster_url

_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``24h``, ``366d``, ``1h30m``, ``250ms`` or plain seconds → seconds (≥ 0)."""
    text = text.strip()
    if _NUMBER.fullmatch(text):
        return float(text)
    position, seconds = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        seconds += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if not text or position != len(text):
        raise ValueError(f"{text!r} is not a duration (examples: 30s, 15m, 24h, 366d, 1h30m)")
    return seconds


def _duration_arg(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _mapping_arg(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key or not value:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _opt(default: Any, help: str, **extra: Any) -> Any:
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Settings:
    # Listener
    listen: str = _opt("0.0.0.0:4443", "address the proxy listens on (HOST:PORT)")
    tls_cert_file: Path | None = _opt(None, "serving certificate (PEM, chain allowed); required")
    tls_private_key_file: Path | None = _opt(None, "serving private key (PEM); required")
    # Upstream
    upstream: str = _opt(
        in_cluster_url() or "https://kubernetes.default.svc",
        "apiserver URL (default: the in-cluster service from KUBERNETES_SERVICE_HOST/PORT)",
    )
    upstream_ca_file: Path | None = _opt(SERVICE_ACCOUNT_DIR / "ca.crt", "CA bundle for the apiserver")
    upstream_token_file: Path = _opt(
        SERVICE_ACCOUNT_DIR / "token", "the proxy's own bearer token; re-read when it changes"
    )
    upstream_timeout: float = _opt(
        60.0,
        "longest upstream silence on a non-watch request before 504, and longest a client may leave a "
        "response unread before the proxy hangs up",
        type=_duration_arg,
    )
    upstream_connect_timeout: float = _opt(5.0, "upstream connect timeout", type=_duration_arg)
    upstream_tls_max_version: str = _opt(
        "",
        "cap TLS to the apiserver at this version; 1.2 saves ~13 KiB per open watch (default: 1.3 allowed)",
        choices=("", "1.2"),
    )
    # Authentication
    cluster_uuid: str = _opt(
        os.environ.get("CLUSTER_UUID", ""),
        "this cluster's UUID: the audience tokens must name (env CLUSTER_UUID)",
    )
    trust_file: Path | None = _opt(None, "remote clusters' public metadata (remote-public-metadata.json)")
    jwks_file: Path | None = _opt(None, "JWKS of non-Deckhouse issuers; a key's kid is the cluster UUID")
    trust_secret: str | None = _opt(None, "watch NAMESPACE/NAME Secret for the trust store instead of a file")
    cluster_name: list[tuple[str, str]] = _opt(
        None, "friendly name of a remote cluster, UUID=NAME (repeatable)", type=_mapping_arg, action="append"
    )
    jwt_issuer: str = _opt("d8-istio", "required token issuer (iss)")
    jwt_leeway: float = _opt(
        60.0,
        "clock skew tolerated on nbf/iat (exp is strict: the token cache honours it)",
        type=_duration_arg,
    )
    jwt_max_lifetime: float = _opt(
        400 * 86400.0,
        "longest accepted token lifetime, exp - max(iat, nbf) or exp - now without both, e.g. 366d "
        "(default 400d: Deckhouse issues at most 366d); 0 accepts any",
        type=_duration_arg,
    )
    client_ca_file: Path | None = _opt(None, "verify client certificates against this CA")
    require_client_cert: bool = _opt(False, "refuse TLS connections without a client certificate")
    cert_identity: bool = _opt(
        False,
        "let a client certificate issued by a remote cluster's rootCA authenticate as that cluster",
    )
    cert_san_cluster: list[tuple[str, str]] = _opt(
        None,
        "client-certificate SAN that identifies a cluster, SAN=UUID (repeatable)",
        type=_mapping_arg,
        action="append",
    )
    insecure_no_auth: bool = _opt(False, "serve without authentication (development only; logs loudly)")
    # Authorization
    policy: Path = _opt(Path("/etc/apiproxy/policy.yaml"), "allowlist policy file; reloaded on change")
    # Limits
    rate_limit_qps: float = _opt(
        100.0, "per-cluster sustained rate of non-watch requests (token bucket; 0 disables)"
    )
    rate_limit_burst: int = _opt(300, "per-cluster burst of non-watch requests")
    max_watches_per_cluster: int = _opt(100, "concurrent watch streams per remote cluster (0 disables)")
    max_connections: int = _opt(2000, "client connections open at once, over all clusters")
    max_watch_timeout: float = _opt(
        1800.0,
        "cap on a watch's timeoutSeconds; watches without one get 50-100%% of it (jitter)",
        type=_duration_arg,
    )
    max_header_bytes: int = _opt(16384, "largest request line or header field accepted")
    # Operations
    metrics_listen: str = _opt(
        "0.0.0.0:9090", "address of the metrics and probe endpoint (plain HTTP; empty disables)"
    )
    shutdown_delay: float = _opt(
        5.0, "on SIGTERM, seconds of not-ready before the listener closes", type=_duration_arg
    )
    shutdown_grace: float = _opt(
        30.0, "on SIGTERM, longest wait for requests to finish before exiting", type=_duration_arg
    )
    workers: int = _opt(
        1,
        "processes serving the port (SO_REUSEPORT), for more than one core; limits are split between "
        "them and metrics aggregated",
    )
    reuse_port: bool = _opt(False, "share the listening port with other processes (set for each worker)")
    reload_interval: float = _opt(1.0, "how often watched files are checked for changes", type=_duration_arg)
    audit_log: str = _opt("-", "where audit records go: - for stdout, a file path, or empty to disable")
    log_level: str = _opt(
        "info", "debug, info, warning or error", choices=("debug", "info", "warning", "error")
    )
    log_format: str = _opt("text", "text or json", choices=("text", "json"))
    uvloop: bool = _opt(True, "use uvloop when installed (falls back cleanly when it is not)")

    def cluster_names(self) -> dict[str, str]:
        return dict(self.cluster_name or ())

    def san_clusters(self) -> dict[str, str]:
        return dict(self.cert_san_cluster or ())


def add_arguments(parser: argparse.ArgumentParser, settings_class: type[Any] = Settings) -> None:
    """One flag per field of ``settings_class`` (``serve``'s by default), ``--like-this``, with its
    default shown in ``--help``."""
    parser.add_argument(
        "--config",
        metavar="FILE",
        help="YAML file of options (keys are these flag names without '--'); flags given here override it",
    )
    defaults = settings_class()
    for f in fields(settings_class):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        help_text = f.metadata["help"]
        if isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_text)
            continue
        kwargs: dict[str, Any] = {"default": default, "help": help_text + " (default: %(default)s)"}
        if "action" in f.metadata:
            kwargs["action"] = f.metadata["action"]
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        kwargs["type"] = f.metadata.get("type", _type_of(default, f.type))
        parser.add_argument(flag, **kwargs)


def _type_of(default: Any, annotation: Any) -> Callable[[str], Any]:
    text = str(annotation)
    if "Path" in text:
        return Path
    if isinstance(default, float) or text == "float":
        return float
    if isinstance(default, int) or text == "int":
        return int
    return str


def from_namespace(ns: argparse.Namespace, settings_class: type[Any] = Settings) -> Any:
    return settings_class(**{f.name: getattr(ns, f.name) for f in fields(settings_class)})


def settings_from_args(argv: Sequence[str]) -> Settings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    settings: Settings = from_namespace(parser.parse_args(list(argv)))
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


class ConfigFileError(ValueError):
    """A configuration file that cannot be used; the message names the file and the key."""


def _flag_fields(settings_class: type[Any]) -> dict[str, Any]:
    return {f.name.replace("_", "-"): f for f in fields(settings_class)}


def load_config(path: Path, settings_class: type[Any] = Settings) -> dict[str, Any]:
    """Read a YAML mapping whose keys are flag names of ``settings_class`` (``tls-cert-file: /path``).

    Values are converted by the same functions as the flags, so ``30s`` works for a duration, and every
    unknown key or bad value is an error naming the key.
    """
    import yaml

    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigFileError(f"{path}: {exc}") from exc
    if document is None:
        return {}
    if not isinstance(document, dict):
        raise ConfigFileError(f"{path}: must be a mapping of option names to values")
    known = _flag_fields(settings_class)
    defaults = settings_class()
    values: dict[str, Any] = {}
    for key, raw in document.items():
        f = known.get(str(key))
        if f is None:
            hint = (
                f" (did you mean {str(key).replace('_', '-')!r}?)"
                if str(key).replace("_", "-") in known
                else ""
            )
            raise ConfigFileError(f"{path}: unknown option {key!r}{hint}")
        try:
            values[f.name] = _convert(f, raw, getattr(defaults, f.name))
        except (ValueError, TypeError, argparse.ArgumentTypeError) as exc:
            raise ConfigFileError(f"{path}: option {key!r}: {exc}") from exc
    return values


def _convert(f: Any, raw: Any, default: Any) -> Any:
    if isinstance(default, bool):
        if not isinstance(raw, bool):
            raise ValueError(f"expected true or false, got {raw!r}")
        return raw
    if f.metadata.get("action") == "append":
        if isinstance(raw, dict):
            return [(str(k), str(v)) for k, v in raw.items()]
        if not isinstance(raw, list):
            raise ValueError("expected a mapping or a list of KEY=VALUE")
        return [_mapping_arg(str(item)) for item in raw]
    if raw is None:
        return None
    if isinstance(raw, dict | list):
        raise ValueError(f"expected a single value, got {type(raw).__name__}")
    convert = f.metadata.get("type", _type_of(default, f.type))
    value = convert(str(raw))
    choices = f.metadata.get("choices")
    if choices and value not in choices:
        raise ValueError(f"must be one of {', '.join(choices)}")
    return value


def serve_settings(parser: argparse.ArgumentParser, argv: Sequence[str]) -> Settings:
    """Parse ``serve`` flags; with ``--config FILE`` its values become the defaults that flags override."""
    settings: Settings = parse_settings(parser, argv, Settings)
    return settings


def parse_settings(parser: argparse.ArgumentParser, argv: Sequence[str], settings_class: type[Any]) -> Any:
    """Parse the flags of ``settings_class``; a ``--config FILE`` supplies defaults that flags override."""
    args = parser.parse_args(list(argv))
    config = getattr(args, "config", None)
    if config:
        try:
            parser.set_defaults(**load_config(Path(config), settings_class))
        except ConfigFileError as exc:
            parser.error(str(exc))
        args = parser.parse_args(list(argv))
    return from_namespace(args, settings_class)

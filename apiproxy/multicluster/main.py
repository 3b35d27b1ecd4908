"""``apiproxy multicluster``: settings → Kubernetes clients → controller → kopf, plus ``mesh-config``."""

from __future__ import annotations

import asyncio
import importlib
import logging
import sys
import time
from pathlib import Path
from typing import Any

from apiproxy import logs
from apiproxy.multicluster.controller import Controller
from apiproxy.multicluster.fetch import HTTPFetcher
from apiproxy.multicluster.kube import KubeObjects
from apiproxy.multicluster.metrics import ControllerMetrics
from apiproxy.multicluster.settings import MulticlusterSettings

log = logging.getLogger("apiproxy.multicluster")


def kube_configuration(settings: MulticlusterSettings) -> Any:
    """The official client's configuration: from ``--kubeconfig``, else the in-cluster service account."""
    config: Any = importlib.import_module("kubernetes.config")
    client: Any = importlib.import_module("kubernetes.client")
    configuration = client.Configuration()
    if settings.kubeconfig is not None:
        config.load_kube_config(config_file=str(settings.kubeconfig), client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    return configuration


def connection_info(configuration: Any, namespace: str) -> Any:
    """The same credentials for kopf, so both clients speak to one apiserver as one identity."""
    import kopf

    token = None
    auth = (configuration.api_key or {}).get("authorization") or (configuration.api_key or {}).get(
        "BearerToken"
    )
    if auth:
        token = auth.split(" ", 1)[1] if auth.lower().startswith("bearer ") else auth
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert or None,
        insecure=not configuration.verify_ssl,
        certificate_path=configuration.cert_file or None,
        private_key_path=configuration.key_file or None,
        token=token,
        default_namespace=namespace,  # where kopf posts Events about our cluster-scoped resources
    )


def start_metrics(listen: str, metrics: ControllerMetrics) -> Any:
    """Serve ``/metrics`` in a thread; returns the server (``shutdown()`` stops it), None when disabled."""
    if not listen:
        return None
    from prometheus_client import start_http_server

    from apiproxy.tlsconfig import parse_listen

    host, port = parse_listen(listen)
    server, _thread = start_http_server(port, addr=host, registry=metrics.registry)
    log.info("metrics on http://%s/metrics", listen)
    return server


async def run_controller(
    settings: MulticlusterSettings, *, stop_flag: Any = None, ready_flag: Any = None
) -> None:
    import kopf

    from apiproxy.multicluster.events import EventPoster
    from apiproxy.multicluster.operator import build_registry

    configuration = kube_configuration(settings)
    client: Any = importlib.import_module("kubernetes.client")
    objects = KubeObjects(client.ApiClient(configuration))
    fetcher = HTTPFetcher(timeout=settings.fetch_timeout)
    metrics = ControllerMetrics()
    events = EventPoster(objects)
    controller = Controller(settings, objects, fetcher, metrics=metrics, events=events)
    start_metrics(settings.metrics_listen, metrics)
    registry = build_registry(
        controller, kubeconfig_login=lambda: connection_info(configuration, settings.namespace)
    )
    try:
        await kopf.operator(
            registry=registry,
            standalone=True,
            clusterwide=True,
            liveness_endpoint=f"http://{settings.liveness_listen}/healthz"
            if settings.liveness_listen
            else None,
            stop_flag=stop_flag,
            ready_flag=ready_flag,
        )
    finally:
        await events.drain()
        await fetcher.close()


class QuietTicks(logging.Filter):
    """Drop kopf's ``Timer 'resync' succeeded.`` line below DEBUG: the timer ticks every few seconds for
    every resource and mostly finds nothing due, so at INFO it would bury the lines that matter (the
    controller logs every condition transition and write itself)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno > logging.INFO or logging.getLogger().isEnabledFor(logging.DEBUG):
            return True
        return not record.getMessage().startswith("Timer 'resync' succeeded")


def run(settings: MulticlusterSettings) -> int:
    logs.configure(settings.log_level, settings.log_format)
    logging.getLogger("kopf.objects").addFilter(QuietTicks())
    # kopf's /healthz is probed by kubelet every few seconds; one access line per probe is noise.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    if not settings.cluster_uuid:
        print("apiproxy multicluster: --cluster-uuid is required", file=sys.stderr)
        return 2
    try:
        asyncio.run(run_controller(settings))
    except (ValueError, OSError) as exc:
        print(f"apiproxy multicluster: {exc}", file=sys.stderr)
        return 2
    return 0


def mesh_config(settings: MulticlusterSettings) -> int:
    """Print the mesh settings the controller writes, computed from the resources' statuses now."""
    from apiproxy.multicluster import model, outputs
    from apiproxy.multicluster.controller import Snapshot

    configuration = kube_configuration(settings)
    client: Any = importlib.import_module("kubernetes.client")
    api = client.CustomObjectsApi(client.ApiClient(configuration))
    listed = api.list_cluster_custom_object(model.GROUP, model.VERSION, model.PLURAL)
    peers = [Snapshot.of(item).peer() for item in listed.get("items") or []]
    sys.stdout.write(outputs.mesh_yaml(peers))
    return 0


def keys_rotate(kubeconfig: str | None, namespace: str) -> int:
    """``apiproxy keys rotate``: put a next key (and the current key's proof for it) into the keypair Secret.

    The running controller takes it from there (publish, switch, promote; see
    :mod:`apiproxy.multicluster.rotation`). Refused while a rotation is under way.
    """
    from apiproxy.multicluster import model, rotation
    from apiproxy.multicluster.keypair import write_keyring
    from apiproxy.multicluster.kube import Conflict, secret_data

    settings = MulticlusterSettings(kubeconfig=Path(kubeconfig) if kubeconfig else None, namespace=namespace)
    configuration = kube_configuration(settings)
    client: Any = importlib.import_module("kubernetes.client")
    objects = KubeObjects(client.ApiClient(configuration))

    async def rotate() -> int:
        secret = await objects.get("Secret", namespace, model.KEYPAIR_SECRET)
        if secret is None:
            print(
                f"apiproxy keys rotate: Secret {namespace}/{model.KEYPAIR_SECRET} does not exist",
                file=sys.stderr,
            )
            return 1
        current = rotation.Keyring.from_secret(
            secret_data(secret), (secret.get("metadata") or {}).get("annotations")
        )
        try:
            started = rotation.start(current, time.time())
            await write_keyring(objects, secret, started)
        except (ValueError, Conflict) as exc:
            print(f"apiproxy keys rotate: {exc}", file=sys.stderr)
            return 1
        print(f"key rotation started at {started.started_annotation()}: the next key is published first")
        return 0

    return asyncio.run(rotate())

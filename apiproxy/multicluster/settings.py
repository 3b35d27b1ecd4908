"""Every option of ``apiproxy multicluster`` in one typed table; each flag is also a ``--config`` key."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from apiproxy.metadata import DEFAULT_NAMESPACE
from apiproxy.settings import duration_arg, opt


@dataclass
class MulticlusterSettings:
    cluster_uuid: str = opt(
        os.environ.get("CLUSTER_UUID", ""),
        "this cluster's UUID: the sub of every token we mint (env CLUSTER_UUID); required",
    )
    namespace: str = opt(
        DEFAULT_NAMESPACE, "namespace of the keypair, trust store, remote secrets and mesh settings"
    )
    kubeconfig: Path | None = opt(None, "kubeconfig to reach the apiserver (default: in-cluster config)")
    resync: float = opt(60.0, "how often each peer is fetched again (jittered ±10%%)", type=duration_arg)
    api_token_ttl: float = opt(
        30 * 86400.0, "lifetime of the API tokens in istiod's remote secrets", type=duration_arg
    )
    rotation_publish_period: float = opt(
        600.0,
        "after 'apiproxy keys rotate', how long the next key is only published before tokens switch to it "
        "(longer than the peers' --resync)",
        type=duration_arg,
    )
    fetch_timeout: float = opt(10.0, "longest wait for one metadata or API answer", type=duration_arg)
    retry_base: float = opt(5.0, "first retry delay after a failure (doubles, capped)", type=duration_arg)
    retry_cap: float = opt(300.0, "longest retry delay", type=duration_arg)
    mesh_configmap: str = opt("apiproxy-multicluster-mesh", "ConfigMap receiving the mesh settings")
    metrics_listen: str = opt("0.0.0.0:9092", "address of /metrics (plain HTTP; empty disables)")
    liveness_listen: str = opt(
        "", "address of kopf's /healthz liveness endpoint (plain HTTP; empty disables)"
    )
    log_level: str = opt(
        "info", "debug, info, warning or error", choices=("debug", "info", "warning", "error")
    )
    log_format: str = opt("text", "text or json", choices=("text", "json"))

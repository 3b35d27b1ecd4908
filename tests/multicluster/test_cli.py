"""``apiproxy multicluster``: flags and ``--config`` keys, and ``mesh-config`` printing what the controller
writes from the resources' statuses."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
import yaml

from apiproxy.cli import _build_parsers, main
from apiproxy.multicluster.settings import MulticlusterSettings
from apiproxy.settings import parse_settings
from tests.multicluster.conftest import Ours


def settings_of(*argv: str) -> MulticlusterSettings:
    _, parsers = _build_parsers()
    settings: MulticlusterSettings = parse_settings(parsers["multicluster"], list(argv), MulticlusterSettings)
    return settings


def test_defaults_are_the_issues() -> None:
    s = settings_of()
    assert (s.namespace, s.resync, s.api_token_ttl, s.metrics_listen) == (
        "d8-istio",
        60.0,
        30 * 86400.0,
        "0.0.0.0:9092",
    )
    assert s.kubeconfig is None


def test_every_flag_is_a_config_key_and_flags_override(tmp_path: Path) -> None:
    config = tmp_path / "multicluster.yaml"
    values = {"cluster-uuid": "0b5c1e3a-2f4d-4c6e-9a8b-7d6e5f4a3b2c", "resync": "2m", "api-token-ttl": "7d"}
    values |= {"namespace": "istio-system", "kubeconfig": "/kc"}
    config.write_text(yaml.safe_dump(values))
    s = settings_of("--config", str(config), "--resync", "30s")
    assert s.cluster_uuid == "0b5c1e3a-2f4d-4c6e-9a8b-7d6e5f4a3b2c"
    assert (s.resync, s.api_token_ttl, s.namespace, str(s.kubeconfig)) == (
        30.0,
        7 * 86400.0,
        "istio-system",
        "/kc",
    )


def test_unknown_config_keys_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text("api_token_ttl: 1d\n")
    with pytest.raises(SystemExit):
        settings_of("--config", str(config))
    assert "did you mean 'api-token-ttl'" in capsys.readouterr().err


def test_missing_cluster_uuid_is_an_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CLUSTER_UUID", raising=False)
    assert main(["multicluster", "--cluster-uuid", ""]) == 2
    assert "--cluster-uuid is required" in capsys.readouterr().err


async def test_mesh_config_prints_the_mesh_settings(ours: Ours) -> None:
    ours.create("east", {"metadataEndpoint": "https://east/metadata/"})
    status = {
        "pinnedIdentity": {"clusterUUID": "u-east", "authnKeyFingerprint": "sha256:00"},
        "metadataCache": {
            "public": {"clusterUUID": "u-east", "authnKeyPub": "k", "rootCA": "ROOT-EAST"},
            "private": {"clusterID": "u-east", "apiHost": "api.east:443", "networkName": "net-east",
                        "ingressGateways": [{"address": "203.0.113.1", "port": 15443}]},
        },
    }  # fmt: skip
    ours.store.patch("istiomulticlusters", None, "east", {"status": status}, subresource="status")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiproxy", "multicluster", "mesh-config",
        "--kubeconfig", str(ours.kubeconfig), "--cluster-uuid", "0b5c1e3a-2f4d-4c6e-9a8b-7d6e5f4a3b2c",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    assert yaml.safe_load(out) == {
        "meshConfig": {"caCertificates": [{"pem": "ROOT-EAST"}]},
        "meshNetworks": {
            "net-east": {
                "endpoints": [{"fromRegistry": "u-east"}],
                "gateways": [{"address": "203.0.113.1", "port": 15443}],
            }
        },
    }


async def test_metrics_are_served_on_their_own_port() -> None:
    import aiohttp

    from apiproxy.multicluster.main import start_metrics
    from apiproxy.multicluster.metrics import ControllerMetrics
    from tests.multicluster.conftest import free_port

    metrics = ControllerMetrics()
    metrics.identity_changed.labels("east").set(1)
    port = free_port()
    server = start_metrics(f"127.0.0.1:{port}", metrics)
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            text = await resp.text()
    finally:
        server.shutdown()
        server.server_close()
    assert 'apiproxy_multicluster_remote_identity_changed{multicluster_name="east"} 1.0' in text
    assert "d8_istio_multicluster_metadata_endpoints_fetch_error_count" in text

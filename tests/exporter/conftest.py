"""Fixtures: a seeded simulated cluster, and exporters reading it (or files) on loopback ports."""

from __future__ import annotations

import dataclasses
import json
import secrets
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apiproxy.certs import write_serving_bundle
from apiproxy.exporter.main import RunningExporter, start_exporter
from apiproxy.exporter.settings import ExporterSettings
from apiproxy.kubeconfig import render_kubeconfig
from apiproxy.simulator import Simulator, seed_mesh
from tests.exporter.cluster import API_HOST, EXPORTER, LOCAL_UUID, TRUST_JSON, seed_federation


@dataclasses.dataclass
class Cluster:
    simulator: Simulator
    kubeconfig: Path

    @property
    def store(self) -> Any:
        return self.simulator.store


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    token = secrets.token_urlsafe(16)
    tls = write_serving_bundle(tmp_path, "simulator")
    sim = Simulator(tokens={token}, bookmark_interval=60.0, history_limit=1000)
    seed_mesh(sim.store, pods=6, services=3, namespaces=2, nodes=3)
    seed_federation(sim.store)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    await sim.start(host="127.0.0.1", port=0, ssl_context=ctx)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(render_kubeconfig(sim.url, tls.ca_file.read_bytes(), token=token, name="sim"))
    try:
        yield Cluster(sim, kubeconfig)
    finally:
        await sim.stop()


def base_settings(tmp_path: Path, **overrides: Any) -> ExporterSettings:
    settings = ExporterSettings(
        cluster_uuid=LOCAL_UUID,
        api_host=API_HOST,
        listen="127.0.0.1:0",
        metrics_listen="127.0.0.1:0",
        audit_log=str(tmp_path / "audit.log"),
        reload_interval=0.05,
    )
    return dataclasses.replace(settings, **overrides)


Start = Callable[..., Awaitable[RunningExporter]]


@pytest.fixture
async def start(tmp_path: Path) -> AsyncIterator[Start]:
    """``await start(**settings)``: an exporter on loopback, stopped at the end of the test."""
    running: list[RunningExporter] = []

    async def _start(**overrides: Any) -> RunningExporter:
        exporter = await start_exporter(base_settings(tmp_path, **overrides), backoff=(0.05, 0.2))
        running.append(exporter)
        return exporter

    yield _start
    for exporter in running:
        await exporter.stop()


@pytest.fixture
def source_files(tmp_path: Path) -> dict[str, Path]:
    files = {
        "authn_public_key_file": tmp_path / "pub.pem",
        "root_ca_file": tmp_path / "root-cert.pem",
        "trust_file": tmp_path / "remote-public-metadata.json",
        "ingress_gateways_file": tmp_path / "ingressgateways-array.json",
    }
    files["authn_public_key_file"].write_bytes((EXPORTER / "local-pub.pem").read_bytes())
    files["root_ca_file"].write_bytes((EXPORTER / "root-ca-ec.pem").read_bytes())
    files["trust_file"].write_bytes(TRUST_JSON)
    files["ingress_gateways_file"].write_text(json.dumps([{"address": "198.51.100.7", "port": 15443}]))
    return files


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def audit_records(tmp_path: Path) -> list[dict[str, Any]]:
    path = tmp_path / "audit.log"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

"""``apiproxy exporter`` as its own process, as deployed: a --config file, the seeded cluster through a
kubeconfig, TLS terminated by the exporter itself and its certificate replaced while it runs."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import socket
import ssl
import sys
from pathlib import Path

import aiohttp
import yaml

from apiproxy.certs import write_serving_bundle
from tests.exporter import cluster as c
from tests.exporter.conftest import Cluster
from tests.helpers import eventually


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_exporter_process_serves_tls_from_the_cluster_and_reloads_its_certificate(
    cluster: Cluster, tmp_path: Path
) -> None:
    first = write_serving_bundle(tmp_path / "first", "exporter", names=["127.0.0.1"])
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    shutil.copy(first.cert_file, cert)
    shutil.copy(first.key_file, key)
    port, metrics = free_port(), free_port()
    config = tmp_path / "exporter.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cluster-uuid": c.LOCAL_UUID,
                "api-host": c.API_HOST,
                "kubeconfig": str(cluster.kubeconfig),
                "tls-cert-file": str(cert),
                "tls-private-key-file": str(key),
                "reload-interval": "100ms",
                "audit-log": str(tmp_path / "audit.log"),
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiproxy", "exporter", "--config", str(config),
        "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    base = f"https://127.0.0.1:{port}"
    try:
        trust_first = ssl.create_default_context(cafile=str(first.ca_file))
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust_first)) as s:

            async def ready() -> bool:
                try:
                    async with s.get(base + "/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, timeout=30)
            token = c.token(scope="private-multicluster")
            async with s.get(
                base + "/metadata/private/multicluster.json", headers={"Authorization": f"Bearer {token}"}
            ) as r:
                assert r.status == 200
                assert await r.read() == (c.GOLDEN / "multicluster.json").read_bytes()
                assert "aiohttp" not in r.headers.get("Server", "")
            async with s.get(base + "/metadata/public/public.json") as r:
                assert await r.read() == (c.GOLDEN / "public.json").read_bytes()

        second = write_serving_bundle(tmp_path / "second", "exporter", names=["127.0.0.1"])
        shutil.copy(second.key_file, tmp_path / "tls.key.new")
        shutil.copy(second.cert_file, tmp_path / "tls.crt.new")
        (tmp_path / "tls.key.new").replace(key)
        (tmp_path / "tls.crt.new").replace(cert)
        trust_second = ssl.create_default_context(cafile=str(second.ca_file))

        async def serves_new_certificate() -> bool:
            try:
                async with (
                    aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust_second)) as s2,
                    s2.get(base + "/healthz") as r,
                ):
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(serves_new_certificate, timeout=20)
        async with aiohttp.ClientSession() as plain, plain.get(f"http://127.0.0.1:{metrics}/metrics") as r:
            text = await r.text()
        assert 'apiproxy_exporter_requests_total{code="200",document="multicluster"} 1.0' in text
        audit = [json.loads(line) for line in (tmp_path / "audit.log").read_text().splitlines()]
        assert audit == [
            {**audit[0], "document": "multicluster", "peer": c.ALPHA, "decision": "allow", "code": 200}
        ]
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            _, stderr = await asyncio.wait_for(proc.communicate(), 15)
        except TimeoutError:
            proc.kill()
            raise
    assert proc.returncode == 0, stderr.decode()[-2000:]


async def test_exporter_refuses_to_start_without_its_identity(tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiproxy", "exporter", "--api-host", "api.example.com",
        "--authn-public-key-file", str(c.EXPORTER / "local-pub.pem"),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 2
    assert b"--cluster-uuid" in stderr

"""``serve --workers 2``: one port, two processes, one set of metrics, one clean shutdown."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp

from apiproxy.demo.sandbox import Sandbox
from apiproxy.proxy.settings import Settings, to_args
from apiproxy.proxy.workers import worker_settings
from benchmarks.procs import free_port
from tests.e2e.test_operations import sample
from tests.helpers import eventually


def children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def test_each_worker_gets_its_share_of_the_limits() -> None:
    s = worker_settings(
        Settings(
            workers=4,
            rate_limit_qps=100,
            rate_limit_burst=300,
            max_watches_per_cluster=10,
            max_connections=2000,
        )
    )
    assert (s.workers, s.reuse_port, s.metrics_listen) == (1, True, "")
    assert (s.rate_limit_qps, s.rate_limit_burst, s.max_watches_per_cluster, s.max_connections) == (
        25,
        75,
        3,
        500,
    )


async def test_two_workers_serve_one_port_and_aggregate_metrics(sandbox: Sandbox) -> None:
    port, metrics = free_port(), free_port()
    sandbox.settings = {
        "listen": f"127.0.0.1:{port}",
        "metrics_listen": f"127.0.0.1:{metrics}",
        "workers": 2,
        "shutdown_delay": 0.2,
        "shutdown_grace": 5.0,
        "audit_log": "",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiproxy", "serve", *to_args(sandbox.proxy_settings()),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    headers = {"Authorization": f"Bearer {sandbox.clusters['alpha'].token}"}
    try:
        async with aiohttp.ClientSession() as plain:

            async def ready() -> bool:
                try:
                    async with plain.get(f"http://127.0.0.1:{metrics}/readyz") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(ready, timeout=30)
            assert len(children(proc.pid)) == 2
            # A new connection per request, so the kernel spreads them over both workers.
            connector = aiohttp.TCPConnector(ssl=sandbox.client_ssl(), force_close=True)
            async with aiohttp.ClientSession(connector=connector, headers=headers) as s:
                for _ in range(20):
                    async with s.get(f"https://127.0.0.1:{port}/api/v1/nodes") as resp:
                        assert resp.status == 200
            async with plain.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
                text = await resp.text()
                assert "Server" not in resp.headers
            assert sample(text, "apiproxy_requests_total", cluster="alpha", verb="list", code="200") == 20
            assert sample(text, "apiproxy_trusted_clusters") == 2
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 20) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

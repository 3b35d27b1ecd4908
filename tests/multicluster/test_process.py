"""``apiproxy multicluster`` as its own process, as deployed: a --config file, a kubeconfig, /metrics and
kopf's /healthz on their ports, establishment with a real peer, and a clean exit on SIGTERM."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path

import aiohttp
import yaml

from tests.helpers import eventually
from tests.multicluster.conftest import NAMESPACE, OUR_UUID, Ours, Peer, free_port


async def test_controller_process_establishes_serves_metrics_and_stops(
    ours: Ours, peer: Peer, tmp_path: Path
) -> None:
    metrics, health = free_port(), free_port()
    config = tmp_path / "multicluster.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "cluster-uuid": OUR_UUID,
                "namespace": NAMESPACE,
                "kubeconfig": str(ours.kubeconfig),
                "resync": "1s",
                "metrics-listen": f"127.0.0.1:{metrics}",
                "liveness-listen": f"127.0.0.1:{health}",
            }
        )
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiproxy", "multicluster", "--config", str(config),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
        await eventually(lambda: (ours.condition("east") or {}).get("status") == "True", timeout=60)
        async with aiohttp.ClientSession() as session:

            async def scrape() -> str | None:
                try:
                    async with session.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
                        text = await resp.text()
                except aiohttp.ClientError:
                    return None
                return text if 'apiproxy_multicluster_ready{multicluster_name="east"} 1.0' in text else None

            text = await eventually(scrape, timeout=30)

            async def resynced() -> bool:
                """The resync timer has reconciled the resource again (after its creation)."""
                async with session.get(f"http://127.0.0.1:{metrics}/metrics") as resp:
                    for line in (await resp.text()).splitlines():
                        if line.startswith("apiproxy_multicluster_reconcile_duration_seconds_count"):
                            return float(line.rsplit(" ", 1)[1]) >= 3
                return False

            await eventually(resynced, timeout=30)
            assert 'd8_istio_multicluster_metadata_endpoints_fetch_error_count{endpoint="' in text
            async with session.get(f"http://127.0.0.1:{health}/healthz") as resp:
                assert resp.status == 200
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, stderr.decode()[-2000:]
    assert b"PRIVATE KEY" not in stderr and b"eyJ" not in stderr, "no key or token in the logs"
    # The timer ticks every 0.25 s here and has run many times; its successes are not logged at INFO,
    # and kopf names the handlers by their ids, not by Python's qualified names.
    log = stderr.decode()
    assert "Timer 'resync'" not in log and "<locals>" not in log, log[-2000:]
    assert "GET /healthz" not in log, "kubelet's probes are not access-logged"

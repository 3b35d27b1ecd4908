"""Cost of serving the exporter's documents: one private request (token checked) and one 304.

Run: ``python benchmarks/exporter_bench.py [--runs N]``. Two views, medians and p90 in microseconds:

* ``handler``: the exporter's request handler alone (``ExporterHandler.handle`` on a prepared request),
  i.e. the server-side work the exporter adds; a private request with a fresh token each run ("cold": the
  EdDSA signature is verified) and with the same token ("cached": the steady state of a peer reusing its
  token), and a 304 for a public document;
* ``loopback``: a full HTTP round trip over one keep-alive connection on 127.0.0.1 (client + server +
  kernel), sequential requests, so the figure is latency, not throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

try:
    import apiproxy  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import aiohttp
from aiohttp.test_utils import make_mocked_request

from apiproxy.auth.mint import mint_token
from apiproxy.exporter.main import start_exporter
from apiproxy.exporter.settings import ExporterSettings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
LOCAL_UUID = (FIXTURES / "deckhouse" / "local-cluster-uuid").read_text().strip()
ALPHA = "3f0c9a52-7e1b-4d8a-b6c2-91e4f0a7d3b8"
PRIVATE = "/metadata/private/multicluster.json"
PUBLIC = "/metadata/public/public.json"


def _stats(samples: list[int]) -> dict[str, float]:
    samples.sort()
    return {
        "median": round(statistics.median(samples) / 1000, 1),
        "p90": round(samples[int(len(samples) * 0.9)] / 1000, 1),
    }


def _token(now: float) -> str:
    key = (FIXTURES / "deckhouse" / "alpha-priv.pem").read_bytes()
    return mint_token(key, ALPHA, LOCAL_UUID, scope="private-multicluster", ttl=600, now=now)


async def _measure(runs: int) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="exporter-bench-"))
    gateways = workdir / "gateways.json"
    gateways.write_text(json.dumps([{"address": "198.51.100.7", "port": 15443}]))
    settings = ExporterSettings(
        cluster_uuid=LOCAL_UUID,
        api_host="api.example.com:443",
        listen="127.0.0.1:0",
        metrics_listen="",
        audit_log=str(workdir / "audit.log"),
        authn_public_key_file=FIXTURES / "exporter" / "local-pub.pem",
        root_ca_file=FIXTURES / "exporter" / "root-ca-rsa.pem",
        trust_file=FIXTURES / "deckhouse" / "remote-public-metadata.json",
        ingress_gateways_file=gateways,
    )
    exporter = await start_exporter(settings)
    handle = exporter.handler.handle
    etag = exporter.state.catalog.documents[PUBLIC].etag
    now = time.time()
    tokens = [_token(now - i) for i in range(runs + 50)]  # distinct tokens: each one verified cold
    cached = tokens[-1]
    out: dict[str, Any] = {"handler": {}, "loopback": {}}

    async def timed(make: Any, count: int) -> list[int]:
        samples = []
        for i in range(count):
            request = make(i)
            start = time.perf_counter_ns()
            response = await handle(request)
            samples.append(time.perf_counter_ns() - start)
            assert response.status in (200, 304), response.status
        return samples

    def private(token_of: Any) -> Any:
        return lambda i: make_mocked_request(
            "GET", PRIVATE, headers={"Authorization": f"Bearer {token_of(i)}"}
        )

    await timed(private(lambda i: tokens[runs + (i % 50)]), 50)  # warm-up
    out["handler"]["private_cold_us"] = _stats(await timed(private(lambda i: tokens[i]), runs))
    out["handler"]["private_cached_us"] = _stats(await timed(private(lambda i: cached), runs))
    not_modified = lambda i: make_mocked_request("GET", PUBLIC, headers={"If-None-Match": etag})  # noqa: E731
    out["handler"]["not_modified_us"] = _stats(await timed(not_modified, runs))

    base = f"http://127.0.0.1:{exporter.port}"
    async with aiohttp.ClientSession() as session:

        async def round_trips(path: str, headers: dict[str, str], expect: int) -> dict[str, float]:
            samples = []
            for _ in range(runs):
                start = time.perf_counter_ns()
                async with session.get(base + path, headers=headers) as resp:
                    await resp.read()
                samples.append(time.perf_counter_ns() - start)
                assert resp.status == expect, resp.status
            return _stats(samples)

        auth = {"Authorization": f"Bearer {cached}"}
        await round_trips(PRIVATE, auth, 200)
        out["loopback"]["private_cached_us"] = await round_trips(PRIVATE, auth, 200)
        out["loopback"]["not_modified_us"] = await round_trips(PUBLIC, {"If-None-Match": etag}, 304)
    await exporter.stop()
    return out


def run(runs: int = 2000) -> dict[str, Any]:
    return asyncio.run(_measure(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args()
    print(json.dumps(run(args.runs), indent=2))


if __name__ == "__main__":
    main()

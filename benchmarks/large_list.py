"""Large LIST through the proxy vs. directly: MB/s and the proxy's memory while streaming.

    python -m benchmarks.large_list [--size-mb 50] [--rounds 3]

The upstream is a bare TLS server streaming a fixed body (benchmarks/blob_upstream.py); the proxy runs
as its own process with TLS, JWT authentication, the shipped policy and its defaults. The proxy's RSS is
read from /proc before the first transfer (after a warm-up request) and its peak (VmHWM) after the last.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

from apiproxy.sandbox import Sandbox
from apiproxy.settings import to_args
from benchmarks.procs import PYTHON, free_port, spawn, status_kib, stop, wait_ready


async def fetch(url: str, ctx: ssl.SSLContext, token: str) -> tuple[int, float]:
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as session,
        session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        resp.raise_for_status()
        size = 0
        start = time.perf_counter()
        async for chunk in resp.content.iter_chunked(1 << 20):
            size += len(chunk)
        return size, time.perf_counter() - start


def run(size_mb: int, rounds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="apiproxy-bench-"))
    box = Sandbox(work)
    up_port, proxy_port = free_port(), free_port()
    upstream = spawn(
        [
            PYTHON,
            "-m",
            "benchmarks.blob_upstream",
            "--port",
            str(up_port),
            "--cert",
            str(box.upstream_tls.cert_file),
            "--key",
            str(box.upstream_tls.key_file),
            "--size",
            str(size_mb * 1024 * 1024),
        ],
        work / "upstream.log",
    )
    box.upstream = f"https://127.0.0.1:{up_port}"
    box.settings = {"listen": f"127.0.0.1:{proxy_port}"}
    proxy = spawn([PYTHON, "-m", "apiproxy", "serve", *to_args(box.proxy_settings())], work / "proxy.log")
    upstream_ctx = ssl.create_default_context(cafile=str(box.upstream_tls.ca_file))
    proxy_ctx = box.client_ssl()
    token = box.clusters["alpha"].token
    try:
        wait_ready(f"{box.upstream}/version", upstream_ctx, upstream)
        wait_ready(f"https://127.0.0.1:{proxy_port}/healthz", proxy_ctx, proxy)
        path = "/api/v1/pods?limit=0"
        asyncio.run(fetch(f"https://127.0.0.1:{proxy_port}/version", proxy_ctx, token))  # warm-up
        rss_before = status_kib(proxy.pid, "VmRSS")
        results: dict[str, list[float]] = {"direct": [], "proxy": []}
        for _ in range(rounds):
            for name, base, ctx in (
                ("direct", box.upstream, upstream_ctx),
                ("proxy", f"https://127.0.0.1:{proxy_port}", proxy_ctx),
            ):
                size, seconds = asyncio.run(fetch(base + path, ctx, token if name == "proxy" else "x"))
                results[name].append(size / seconds / 1e6)
        peak = status_kib(proxy.pid, "VmHWM")
    finally:
        stop(proxy)
        stop(upstream)
    direct, via = max(results["direct"]), max(results["proxy"])
    return {
        "size_mb": size_mb,
        "direct_MBps": round(direct, 1),
        "proxy_MBps": round(via, 1),
        "ratio_proxy_over_direct": round(via / direct, 3),
        "proxy_rss_before_MiB": round(rss_before / 1024, 1),
        "proxy_peak_rss_MiB": round(peak / 1024, 1),
        "proxy_rss_growth_MiB": round((peak - rss_before) / 1024, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-mb", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(run(args.size_mb, args.rounds), indent=2))


if __name__ == "__main__":
    main()

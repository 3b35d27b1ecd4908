"""Load generators: wrk for throughput, and asyncio clients where wrk cannot express the case.

Every loop here is bounded both in count and in time.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import re
import signal
import ssl
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp

WRK = os.environ.get("WRK", "/usr/bin/wrk")
STAMP = re.compile(rb'"bench\.apiproxy\.io/sent":"(\d+)"')

#: wrk's script: the Authorization header from the environment, and the figures as one JSON line.
WRK_LUA = r"""
local auth = os.getenv("BENCH_AUTH")
wrk.method = "GET"
wrk.headers["Accept"] = "application/json"
if auth and auth ~= "" then wrk.headers["Authorization"] = auth end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors":{"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d},"latency_us":{"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean))
end
"""


@dataclass
class Target:
    """One way to reach the upstream: directly, through the proxy, or through kubectl proxy."""

    name: str
    base: str
    ssl: ssl.SSLContext | None
    authorization: str | None
    pid: int | None = None  # the process under test (None for direct)
    extra: dict[str, Any] = field(default_factory=dict)

    def headers(self) -> dict[str, str]:
        h = {"Accept": "application/json"}
        if self.authorization:
            h["Authorization"] = self.authorization
        return h


def run_wrk(
    target: Target,
    path: str,
    *,
    connections: int,
    seconds: float,
    script: Path,
    cpus: set[int] | None,
    threads: int = 1,
) -> dict[str, Any]:
    """Max throughput at fixed concurrency: ``threads`` wrk threads (one unless told), ``connections``
    keep-alive connections shared among them, opened at the start of the run. wrk's ``-d`` takes whole
    seconds: for a fraction, it gets the next whole second and SIGINT at ``seconds`` (it then stops and
    reports what it measured). ``requests``, ``bytes`` and ``seconds`` are wrk's own counts and duration."""
    whole = max(1, math.ceil(seconds))
    cut = seconds < whole
    cmd = [WRK, f"-t{threads}", f"-c{connections}", f"-d{whole}s", "--timeout", "5s"]
    cmd += ["-s", str(script), target.base + path]
    env = {**os.environ, "BENCH_AUTH": target.authorization or ""}

    def pin() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)

    with subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=pin,
    ) as proc:
        try:
            try:
                stdout, stderr = proc.communicate(timeout=seconds if cut else whole + 30)
            except subprocess.TimeoutExpired:
                if not cut:
                    raise
                proc.send_signal(signal.SIGINT)
                stdout, stderr = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    line = next((x for x in stdout.splitlines() if x.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no figures: {stdout}\n{stderr}")
    data: dict[str, Any] = json.loads(line[len("WRKJSON ") :])
    secs = data["duration_us"] / 1e6
    errors = sum(data["errors"].values())
    return {
        "rps": round(data["requests"] / secs, 1),
        "requests": data["requests"],
        "bytes": data["bytes"],
        "seconds": secs,
        "errors": errors,
        "MBps": round(data["bytes"] / secs / 1e6, 2),
        "p50_ms": data["latency_us"]["p50"] / 1000,
        "p99_ms": data["latency_us"]["p99"] / 1000,
    }


# --- a minimal HTTP/1.1 client on asyncio streams (keep-alive, no per-request overhead of a framework) ---


class RawConnection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, target: Target) -> RawConnection:
        url = urlsplit(target.base)
        reader, writer = await asyncio.open_connection(
            url.hostname,
            url.port,
            ssl=target.ssl,
            server_hostname=url.hostname if target.ssl else None,
            limit=1 << 20,
        )
        return cls(reader, writer)

    def send(self, target: Target, path: str) -> None:
        url = urlsplit(target.base)
        lines = [f"GET {path} HTTP/1.1", f"Host: {url.hostname}:{url.port}"]
        lines += [f"{k}: {v}" for k, v in target.headers().items()]
        self.writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())

    async def head(self) -> tuple[int, dict[str, str]]:
        status = await self.reader.readline()
        if not status:
            raise ConnectionError("connection closed")
        headers: dict[str, str] = {}
        while (line := await self.reader.readline()) not in (b"\r\n", b"\n", b""):
            k, _, v = line.decode("latin-1").partition(":")
            headers[k.strip().lower()] = v.strip()
        return int(status.split()[1]), headers

    async def body(self, headers: dict[str, str]) -> int:
        if "content-length" in headers:
            data = await self.reader.readexactly(int(headers["content-length"]))
            return len(data)
        size = 0
        while True:  # chunked
            n = int((await self.reader.readline()).split(b";")[0], 16)
            if n == 0:
                await self.reader.readline()
                return size
            size += len(await self.reader.readexactly(n + 2)) - 2

    def close(self) -> None:
        self.writer.close()


@dataclass
class KeepAlivePool:
    """Keep-alive connections to one target for one path, kept across ``fixed_rate`` runs (on one event
    loop): ``warm`` opens the first ones; a run opens more while all are busy, at most ``limit`` more over
    the pool's life, and puts every connection back when its answer is read."""

    target: Target
    path: str
    limit: int = 16
    idle: list[RawConnection] = field(default_factory=list)
    opened: int = 0  # beyond the warm ones

    async def warm(self, connections: int = 2, requests: int = 20) -> None:
        """Open ``connections`` and send ``requests`` on each: TLS sessions, the middlebox's upstream pool."""
        conns = [await RawConnection.open(self.target) for _ in range(connections)]
        self.idle.extend(conns)
        for conn in conns:
            for _ in range(requests):
                conn.send(self.target, self.path)
                await conn.body((await conn.head())[1])

    def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


@dataclass
class FixedRateRun:
    """One ``fixed_rate`` run: latencies in seconds from each request's scheduled send time."""

    latencies: list[float]
    requests: int
    errors: int


async def fixed_rate(pool: KeepAlivePool, *, rate: float, seconds: float) -> FixedRateRun:
    """Open-loop load at ``rate`` requests/s for ``seconds`` on ``pool``'s connections; latency counts
    from the *scheduled* send time, so a stall shows up in the figures instead of silently delaying the
    next request (no coordinated omission). Returns when every request has been answered."""
    target, path, idle = pool.target, pool.path, pool.idle
    latencies: list[float] = []
    errors = 0

    async def one(scheduled: float) -> None:
        nonlocal errors
        if idle:
            conn = idle.pop()
        elif pool.opened < pool.limit:
            pool.opened += 1
            conn = await RawConnection.open(target)
        else:
            errors += 1
            return
        try:
            conn.send(target, path)
            status, headers = await conn.head()
            await conn.body(headers)
            latencies.append(time.perf_counter() - scheduled)
            if status != 200:
                errors += 1
            idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, ValueError):
            errors += 1
            conn.close()

    total = int(rate * seconds)
    start = time.perf_counter() + 0.05
    tasks = []
    for i in range(total):
        scheduled = start + i / rate
        delay = scheduled - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(scheduled)))
    async with asyncio.timeout(30):
        await asyncio.gather(*tasks)
    return FixedRateRun(latencies, total, errors)


def fixed_rate_figures(runs: list[FixedRateRun]) -> dict[str, Any]:
    """The figures of one or more runs, their samples pooled: percentiles, counts and the raw samples."""
    latencies = [x for run in runs for x in run.latencies]
    return summarize_ms(latencies) | {
        "requests": sum(run.requests for run in runs),
        "errors": sum(run.errors for run in runs),
        "samples_ms": _ms(latencies),
    }


def _ms(values: list[float]) -> list[float]:
    return [round(v * 1000, 4) for v in values]


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, round(q / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def summarize_ms(values: list[float]) -> dict[str, Any]:
    s = sorted(values)
    return {
        "count": len(s),
        "p50_ms": round(percentile(s, 50) * 1000, 4),
        "p90_ms": round(percentile(s, 90) * 1000, 4),
        "p99_ms": round(percentile(s, 99) * 1000, 4),
        "max_ms": round(s[-1] * 1000, 4) if s else float("nan"),
    }


# --- LISTs ---


def session(target: Target, limit: int = 8) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=target.ssl if target.ssl else False, limit=limit),
        auto_decompress=False,
        timeout=aiohttp.ClientTimeout(total=120),
    )


async def large_list(target: Target, path: str) -> tuple[int, float]:
    """Bytes and seconds of one LIST read to the end."""
    async with session(target) as s:
        start = time.perf_counter()
        async with s.get(target.base + path, headers=target.headers()) as resp:
            resp.raise_for_status()
            size = 0
            async for chunk in resp.content.iter_chunked(1 << 20):
                size += len(chunk)
        return size, time.perf_counter() - start


async def paged_list(s: aiohttp.ClientSession, target: Target, path: str, query: str) -> tuple[int, int]:
    """One informer's initial LIST: ``limit=500`` then ``continue`` pages until done; (items, bytes)."""
    items = size = pages = 0
    cont = ""
    while pages < 1000:
        url = f"{target.base}{path}?{query}limit=500&resourceVersion=0"
        if cont:
            url = f"{target.base}{path}?{query}limit=500&continue={cont}"
        async with s.get(url, headers=target.headers()) as resp:
            resp.raise_for_status()
            body = await resp.read()
        doc = json.loads(body)
        items += len(doc["items"])
        size += len(body)
        pages += 1
        cont = doc["metadata"].get("continue", "")
        if not cont:
            break
    return items, size


# --- watches ---


@dataclass
class WatchClients:
    """Many idle watch streams on raw connections, recording delivery latency of stamped events."""

    target: Target
    path: str
    conns: list[RawConnection] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    latencies_ns: list[int] = field(default_factory=list)
    failures: int = 0
    events: int = 0

    async def open(self, count: int, *, concurrency: int = 64, deadline: float = 180) -> float:
        """Open ``count`` watches (at most ``concurrency`` handshakes at once); returns seconds taken."""
        start = time.monotonic()
        sem = asyncio.Semaphore(concurrency)

        async def one() -> None:
            async with sem:
                if time.monotonic() - start > deadline:
                    self.failures += 1
                    return
                try:
                    conn = await RawConnection.open(self.target)
                    conn.send(self.target, self.path)
                    status, _ = await conn.head()
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    self.failures += 1
                    return
                if status != 200:
                    self.failures += 1
                    conn.close()
                    return
                self.conns.append(conn)
                self.tasks.append(asyncio.ensure_future(self._read(conn)))

        await asyncio.gather(*(one() for _ in range(count)))
        return time.monotonic() - start

    async def _read(self, conn: RawConnection) -> None:
        try:
            while line := await conn.reader.readline():
                if (m := STAMP.search(line)) is not None:
                    self.latencies_ns.append(time.time_ns() - int(m.group(1)))
                    self.events += 1
        except (OSError, ValueError, asyncio.LimitOverrunError):
            pass

    async def close(self) -> None:
        for conn in self.conns:
            conn.writer.transport.abort()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        self.conns.clear()
        self.tasks.clear()

"""``serve --workers N``: several proxy processes on one port, for pods with more than one core.

A supervisor starts N ``apiproxy serve`` processes that share the listening port through SO_REUSEPORT
(the kernel spreads connections over them). Each worker gets 1/N of the per-cluster limits, since a
cluster's connections spread over the workers too. Workers record their metrics in files of a shared
directory; the supervisor serves ``/metrics`` from all of them, and the probes: healthy while every worker
runs, ready while the proxy port answers ``/readyz``. A worker that dies takes the others down with it, so
kubelet restarts the pod as a whole rather than leaving it half-served.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import math
import os
import shutil
import signal
import ssl
import sys
import tempfile
from pathlib import Path

import aiohttp
from aiohttp import web

from apiproxy.httpedge import EdgeServer, by_path
from apiproxy.proxy.settings import Settings, to_args
from apiproxy.tlsconfig import parse_listen

log = logging.getLogger("apiproxy.workers")


def worker_settings(settings: Settings) -> Settings:
    """One worker's share: the same proxy on a shared port, 1/N of each limit, no metrics endpoint."""
    n = settings.workers
    return dataclasses.replace(
        settings,
        workers=1,
        reuse_port=True,
        metrics_listen="",
        rate_limit_qps=settings.rate_limit_qps / n,
        rate_limit_burst=max(1, math.ceil(settings.rate_limit_burst / n)),
        max_watches_per_cluster=math.ceil(settings.max_watches_per_cluster / n),
        max_connections=math.ceil(settings.max_connections / n),
    )


class Supervisor:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.metrics_dir = Path(tempfile.mkdtemp(prefix="apiproxy-metrics-"))
        self.workers: list[asyncio.subprocess.Process] = []
        self.stopping = False
        host, self.port = parse_listen(settings.listen)
        self.probe_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
        # The probe only asks the local proxy whether it is ready; it sends nothing secret.
        self.probe_ssl = ssl.create_default_context()
        self.probe_ssl.check_hostname = False
        self.probe_ssl.verify_mode = ssl.CERT_NONE

    async def start_workers(self) -> None:
        env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(self.metrics_dir))
        args = to_args(worker_settings(self.settings))
        for _ in range(self.settings.workers):
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "apiproxy", "serve", *args, env=env, stdin=asyncio.subprocess.DEVNULL
            )
            self.workers.append(proc)
        log.info("started %d workers: pids %s", len(self.workers), [p.pid for p in self.workers])

    async def metrics(self, request: web.BaseRequest) -> web.Response:
        from prometheus_client import CollectorRegistry
        from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        return web.Response(body=generate_latest(registry), headers={"Content-Type": CONTENT_TYPE_LATEST})

    def _dead(self) -> list[int]:
        return [p.pid for p in self.workers if p.returncode is not None]

    async def live(self, request: web.BaseRequest) -> web.Response:
        dead = self._dead()
        if dead:
            return web.Response(status=503, text=f"workers exited: {dead}\n")
        return web.Response(text="ok\n")

    async def ready(self, request: web.BaseRequest) -> web.Response:
        if self.stopping:
            return web.Response(status=503, text="not ready: shutting down\n")
        if self._dead():
            return web.Response(status=503, text="not ready: a worker exited\n")
        url = f"https://{self.probe_host}:{self.port}/readyz"
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.probe_ssl)) as session,
                session.get(url, timeout=aiohttp.ClientTimeout(total=3)) as resp,
            ):
                if resp.status == 200:
                    return web.Response(text="ok\n")
                return web.Response(status=503, text=f"not ready: the proxy port answered {resp.status}\n")
        except (aiohttp.ClientError, TimeoutError) as exc:
            return web.Response(status=503, text=f"not ready: the proxy port does not answer ({exc!r})\n")

    async def serve_endpoints(self) -> web.ServerRunner | None:
        if not self.settings.metrics_listen:
            return None
        routes = {"/metrics": self.metrics, "/healthz": self.live, "/livez": self.live}
        routes |= {"/readyz": self.ready, "/ready": self.ready}
        runner = web.ServerRunner(EdgeServer(by_path(routes), logger=log, access_log=None))
        await runner.setup()
        host, port = parse_listen(self.settings.metrics_listen)
        await web.TCPSite(runner, host, port).start()
        return runner

    async def stop_workers(self) -> None:
        self.stopping = True
        for proc in self.workers:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        deadline = self.settings.shutdown_delay + self.settings.shutdown_grace + 5
        try:
            async with asyncio.timeout(deadline):
                await asyncio.gather(*(p.wait() for p in self.workers))
        except TimeoutError:
            for proc in self.workers:
                if proc.returncode is None:
                    log.error("worker %d did not stop within %gs; killing it", proc.pid, deadline)
                    proc.kill()
            await asyncio.gather(*(p.wait() for p in self.workers))

    async def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or until a worker dies (exit 1)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        runner = await self.serve_endpoints()
        await self.start_workers()
        waits = [asyncio.ensure_future(p.wait()) for p in self.workers]
        stopped = asyncio.ensure_future(stop.wait())
        try:
            done, _ = await asyncio.wait([stopped, *waits], return_when=asyncio.FIRST_COMPLETED)
            code = 0
            if stopped not in done:
                log.error("a worker exited unexpectedly (pids %s); stopping the others", self._dead())
                code = 1
            else:
                log.info("signal received: stopping %d workers", len(self.workers))
            await self.stop_workers()
            return code
        finally:
            stopped.cancel()
            for w in waits:
                w.cancel()
            if runner is not None:
                await runner.cleanup()
            with contextlib.suppress(OSError):
                shutil.rmtree(self.metrics_dir)


async def supervise(settings: Settings) -> int:
    return await Supervisor(settings).run()

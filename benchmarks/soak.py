"""Soak: the proxy under a mixed remote-cluster workload with reloads and certificate rotation.

    python -m benchmarks.soak [--duration 600] [--requests 0] [--clusters 3] [--watchers 4]

Everything runs on loopback as separate processes: the simulated kube-apiserver
(``python -m apiproxy.simulator``) and the proxy (``python -m apiproxy serve``, flags from the sandbox's
settings). Asyncio clients, one set per remote cluster, LIST (with paging), GET and WATCH through the proxy
with their own tokens, while a rotator rewrites the policy file, the trust file and the serving
certificate/key every ``--rotate-every`` seconds (contents equivalent, so no request should fail; a
serving-certificate rotation is verified by the certificate a new TLS connection is presented).

Reported (JSON on stdout): requests served by kind, watch events, errors by kind, rotations done and seen,
the proxy's RSS (MiB) and open FDs after warm-up and at the end of the load. Exit status 1 when:

* any unexpected error happened (any non-200 answer, connection or protocol error, a watch that did not
  start, or a rotated serving certificate that was never presented);
* RSS grew by more than ``--max-rss-growth-mib`` (default 48 MiB) between the end of warm-up and the end
  of the run: CPython's allocator keeps some arenas, so a small growth is not a leak, a steady one is;
* the FD count under load grew by more than ``--fd-tolerance`` (default 16; the load holds a fixed number
  of client and upstream connections, the tolerance covers idle pooled connections coming and going).

``--duration 20`` is a smoke run (about 25 s wall time including start-up). The work directory (logs of
both processes) is removed after a passing run and kept, with its path in the report, after a failing one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import ssl
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from cryptography import x509

from apiproxy.certs import write_serving_bundle
from apiproxy.demo.sandbox import Sandbox, write_trust_file
from apiproxy.proxy.settings import to_args
from benchmarks.procs import PYTHON, free_port, open_fds, spawn, status_kib, stop, wait_ready

LIST_PATHS = (
    "/api/v1/pods",
    "/api/v1/services",
    "/api/v1/namespaces",
    "/api/v1/nodes",
    "/apis/discovery.k8s.io/v1/endpointslices",
)
WATCH_PATHS = (
    "/api/v1/pods",
    "/api/v1/services",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/api/v1/namespaces",
)
ACCEPT_MIX = ("application/json", "application/vnd.kubernetes.protobuf,application/json")


@dataclass
class Tally:
    served: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    watch_events: int = 0
    rotations: Counter[str] = field(default_factory=Counter)
    cert_rotations_seen: int = 0
    cert_rotations_missed: int = 0

    @property
    def total(self) -> int:
        return sum(self.served.values())


class Workload:
    def __init__(self, box: Sandbox, base: str, args: argparse.Namespace) -> None:
        self.box = box
        self.base = base
        self.args = args
        self.tally = Tally()
        self.stopping = asyncio.Event()
        self.ctx = box.client_ssl()
        self.namespaces: list[str] = []

    def done(self) -> bool:
        cap = self.args.requests
        return self.stopping.is_set() or bool(cap and self.tally.total >= cap)

    def session(self, cluster: str) -> aiohttp.ClientSession:
        token = self.box.clusters[cluster].token
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.ctx, limit=2),
            headers={"Authorization": f"Bearer {token}", "User-Agent": f"soak/{cluster}"},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=60),
            auto_decompress=False,
        )

    def error(self, kind: str) -> None:
        self.tally.errors[kind] += 1

    async def lister(self, cluster: str, rng: random.Random) -> None:
        async with self.session(cluster) as s:
            while not self.done():
                path = rng.choice(LIST_PATHS)
                query = "limit=200"
                for _ in range(3):  # follow up to three pages
                    try:
                        async with s.get(
                            f"{self.base}{path}?{query}", headers={"Accept": "application/json"}
                        ) as resp:
                            body = await resp.read()
                            if resp.status != 200:
                                self.error(f"list {resp.status}")
                                break
                            self.tally.served["list"] += 1
                            cont = json.loads(body).get("metadata", {}).get("continue")
                    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                        self.error(f"list {type(exc).__name__}")
                        break
                    if not cont:
                        break
                    query = f"limit=200&continue={cont}"

    async def getter(self, cluster: str, rng: random.Random) -> None:
        async with self.session(cluster) as s:
            while not self.done():
                path = rng.choice(
                    [f"/api/v1/namespaces/{rng.choice(self.namespaces)}", "/version", "/api", "/apis"]
                )
                try:
                    async with s.get(self.base + path, headers={"Accept": rng.choice(ACCEPT_MIX)}) as resp:
                        await resp.read()
                        if resp.status != 200:
                            self.error(f"get {resp.status}")
                        else:
                            self.tally.served["get"] += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.error(f"get {type(exc).__name__}")

    async def watcher(self, cluster: str, path: str, rng: random.Random) -> None:
        async with self.session(cluster) as s:
            while not self.done():
                timeout = rng.randint(3, 12)
                url = f"{self.base}{path}?watch=true&allowWatchBookmarks=true&timeoutSeconds={timeout}"
                try:
                    async with s.get(url, headers={"Accept": "application/json"}) as resp:
                        if resp.status != 200:
                            self.error(f"watch {resp.status}")
                            await asyncio.sleep(0.5)  # pacing after a refusal, not a timing assertion
                            continue
                        self.tally.served["watch"] += 1
                        while not self.done():
                            line = await resp.content.readline()
                            if not line:
                                break
                            self.tally.watch_events += 1
                except (aiohttp.ClientError, TimeoutError) as exc:
                    self.error(f"watch {type(exc).__name__}")

    async def rotator(self, policy_text: str) -> None:
        """Rewrite policy, trust and serving certificate with equivalent contents, in turn."""
        rng = random.Random(7)
        n = 0
        while not self.done():
            try:
                await asyncio.wait_for(self.stopping.wait(), self.args.rotate_every)
                return
            except TimeoutError:
                pass
            n += 1
            self.box.policy.write_text(policy_text + f"\n# rotation {n}\n")
            self.tally.rotations["policy"] += 1
            clusters = list(self.box.clusters.values())
            rng.shuffle(clusters)
            write_trust_file(self.box.trust_file, clusters)
            self.tally.rotations["trust"] += 1
            await self.rotate_serving_cert()

    async def rotate_serving_cert(self) -> None:
        staging = Path(tempfile.mkdtemp(dir=self.box.workdir))
        files = write_serving_bundle(staging, "apiproxy", ca=self.box.proxy_ca)
        serial = x509.load_pem_x509_certificate(files.cert_file.read_bytes()).serial_number
        os.replace(files.key_file, self.box.serving.key_file)
        os.replace(files.cert_file, self.box.serving.cert_file)
        shutil.rmtree(staging, ignore_errors=True)
        self.tally.rotations["serving-cert"] += 1
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if await self.presented_serial() == serial:
                self.tally.cert_rotations_seen += 1
                return
            await asyncio.sleep(0.1)  # polling for a condition with a deadline
        self.tally.cert_rotations_missed += 1

    async def presented_serial(self) -> int | None:
        host, _, port = self.base.removeprefix("https://").partition(":")
        try:
            _, writer = await asyncio.open_connection(host, int(port), ssl=self.ctx)
        except (OSError, ssl.SSLError):
            return None
        der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        writer.close()
        return x509.load_der_x509_certificate(der).serial_number if der else None


def measure(pid: int) -> dict[str, float]:
    return {"rss_mib": round(status_kib(pid, "VmRSS") / 1024, 1), "fds": open_fds(pid)}


async def drive(box: Sandbox, base: str, proxy_pid: int, args: argparse.Namespace) -> dict[str, Any]:
    load = Workload(box, base, args)
    async with load.session("c0") as s, s.get(base + "/api/v1/namespaces") as resp:
        load.namespaces = [item["metadata"]["name"] for item in (await resp.json())["items"]]
    policy_text = box.policy.read_text()
    tasks = [asyncio.create_task(load.rotator(policy_text))]
    for i, cluster in enumerate(box.clusters):
        rng = random.Random(i)
        tasks += [asyncio.create_task(load.lister(cluster, rng)) for _ in range(args.listers)]
        tasks.append(asyncio.create_task(load.getter(cluster, rng)))
        for w in range(args.watchers):
            tasks.append(asyncio.create_task(load.watcher(cluster, WATCH_PATHS[w % len(WATCH_PATHS)], rng)))

    started = time.monotonic()
    warmup = min(60.0, max(3.0, args.duration * 0.2))
    await asyncio.sleep(warmup)  # the run's own schedule
    start = measure(proxy_pid)
    served_at_start = load.tally.total
    deadline = started + args.duration
    while (left := deadline - time.monotonic()) > 0 and not load.done():
        with contextlib.suppress(TimeoutError):  # wake up to re-check the request cap
            await asyncio.wait_for(load.stopping.wait(), min(left, 0.5))
    end = measure(proxy_pid)
    load.stopping.set()
    await asyncio.wait(tasks, timeout=2)  # loops notice at their next request; open watches are cut
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    t = load.tally
    return {
        "duration_s": round(time.monotonic() - started, 1),
        "warmup_s": warmup,
        "requests_served": t.total,
        "requests_after_warmup": t.total - served_at_start,
        "served_by_kind": dict(t.served),
        "watch_events": t.watch_events,
        "errors_by_kind": dict(t.errors),
        "rotations": dict(t.rotations),
        "serving_cert_rotations_presented": t.cert_rotations_seen,
        "serving_cert_rotations_missed": t.cert_rotations_missed,
        "proxy_start": start,
        "proxy_end": end,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="apiproxy-soak-"))
    names = tuple(f"c{i}" for i in range(args.clusters))
    box = Sandbox(work, cluster_names=names)
    policy = work / "policy.yaml"
    shutil.copy(box.policy, policy)
    box.policy = policy
    sim_port, proxy_port = free_port(), free_port()
    simulator = spawn(
        [
            PYTHON, "-m", "apiproxy.simulator",
            "--listen", f"127.0.0.1:{sim_port}",
            "--tls-dir", str(work),
            "--token-file", str(box.upstream_token_file),
            "--pods", str(args.pods),
            "--no-record",
        ],
        work / "simulator.log",
    )  # fmt: skip
    box.upstream = f"https://127.0.0.1:{sim_port}"
    box.upstream_ca = box.upstream_tls.ca_file
    box.settings = {
        "listen": f"127.0.0.1:{proxy_port}",
        "metrics_listen": f"127.0.0.1:{free_port()}",
        "audit_log": "",
        "rate_limit_qps": 0.0,
        "reload_interval": 0.5,
        "shutdown_delay": 0.0,  # no load balancer to drain in front of it
    }
    proxy = spawn([PYTHON, "-m", "apiproxy", "serve", *to_args(box.proxy_settings())], work / "proxy.log")
    base = f"https://127.0.0.1:{proxy_port}"
    try:
        upstream_ctx = ssl.create_default_context(cafile=str(box.upstream_tls.ca_file))
        wait_ready(
            f"{box.upstream}/version",
            upstream_ctx,
            simulator,
            headers={"Authorization": f"Bearer {box.upstream_token}"},
        )
        wait_ready(f"{base}/healthz", box.client_ssl(), proxy)
        report = asyncio.run(drive(box, base, proxy.pid, args))
        report["proxy_exited"] = proxy.poll() is not None
    finally:
        stop(proxy)
        stop(simulator)
    report["workdir"] = str(work)
    if not verdict(report, args):
        shutil.rmtree(work, ignore_errors=True)  # keep the logs only of a failed run
    return report


def verdict(report: dict[str, Any], args: argparse.Namespace) -> list[str]:
    problems = []
    if report["errors_by_kind"]:
        problems.append(f"unexpected errors: {report['errors_by_kind']}")
    if report["serving_cert_rotations_missed"]:
        problems.append(
            f"{report['serving_cert_rotations_missed']} serving certificate rotation(s) never presented"
        )
    if report["proxy_exited"]:
        problems.append("the proxy exited during the run")
    growth = report["proxy_end"]["rss_mib"] - report["proxy_start"]["rss_mib"]
    if growth > args.max_rss_growth_mib:
        problems.append(f"RSS grew {growth:.1f} MiB (limit {args.max_rss_growth_mib})")
    fd_growth = report["proxy_end"]["fds"] - report["proxy_start"]["fds"]
    if fd_growth > args.fd_tolerance:
        problems.append(f"open FDs grew by {fd_growth} (tolerance {args.fd_tolerance})")
    if report["requests_served"] == 0:
        problems.append("nothing was served")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--duration", type=float, default=600.0, help="seconds of load (default 600)")
    parser.add_argument("--requests", type=int, default=0, help="stop after this many requests (0: no cap)")
    parser.add_argument("--clusters", type=int, default=3, help="remote clusters (default 3)")
    parser.add_argument("--listers", type=int, default=2, help="LIST loops per cluster (default 2)")
    parser.add_argument("--watchers", type=int, default=4, help="watch loops per cluster (default 4)")
    parser.add_argument("--pods", type=int, default=600, help="pods in the simulator (default 600)")
    parser.add_argument("--rotate-every", type=float, default=5.0, help="seconds between rotations")
    parser.add_argument("--max-rss-growth-mib", type=float, default=48.0)
    parser.add_argument("--fd-tolerance", type=int, default=16)
    args = parser.parse_args(argv)
    report = run(args)
    problems = verdict(report, args)
    report["verdict"] = "FAIL: " + "; ".join(problems) if problems else "ok"
    print(json.dumps(report, indent=2))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())

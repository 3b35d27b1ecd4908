"""``python -m benchmarks``: the proxy against the direct path and ``kubectl proxy``, side by side.

Sets up everything on loopback (recorded responses, nginx, a watch event source, the proxy and kubectl
proxy as their own processes), runs every scenario against every target, then prints a table and writes
a JSON file and PNG plots under ``benchmarks/results/``. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import platform
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from apiproxy.demo.sandbox import Sandbox
from apiproxy.kubeconfig import render_kubeconfig
from apiproxy.proxy.settings import Settings, to_args
from benchmarks import auth_bench, fixtures, policy_bench, procs, report
from benchmarks.clients import (
    FixedRateRun,
    KeepAlivePool,
    Target,
    WatchClients,
    fixed_rate,
    fixed_rate_figures,
    large_list,
    paged_list,
    run_wrk,
    session,
    summarize_ms,
)

NGINX = os.environ.get("NGINX", "/usr/sbin/nginx")
KUBECTL = os.environ.get("KUBECTL", "/usr/bin/kubectl")
PY_SPY = os.environ.get("PY_SPY", str(Path(sys.executable).parent / "py-spy"))
RESULTS = Path(__file__).resolve().parent / "results"
WATCH_PATH = "/api/v1/pods?allowWatchBookmarks=true&resourceVersion=1&timeoutSeconds=1800&watch=true"

#: kubectl proxy's read-only filter, comparable to policies/istio-remote.yaml (paths only: it cannot
#: see the query, the verb or the caller).
KUBECTL_ACCEPT_PATHS = ",".join(
    [
        r"^/version$",
        r"^/api/v1/(namespaces/[^/]+/)?(namespaces|pods|services|nodes|configmaps)(/[^/]+)?$",
        r"^/apis/discovery\.k8s\.io/v1/(namespaces/[^/]+/)?endpointslices(/[^/]+)?$",
        r"^/apis/apiextensions\.k8s\.io/v1/customresourcedefinitions(/[^/]+)?$",
        r"^/apis/gateway\.networking\.k8s\.io/v1/(namespaces/[^/]+/)?gateways(/[^/]+)?$",
        r"^/apis/networking\.istio\.io/v1/(namespaces/[^/]+/)?workloadentries(/[^/]+)?$",
    ]
)
KUBECTL_REJECT_METHODS = "^(POST|PUT|PATCH|DELETE)$"
T = TypeVar("T")


@dataclass
class Params:
    get_seconds: float = 10  # per target, split into get_rounds interleaved rounds
    get_rounds: int = 5
    get_connections: int = 32
    rate: float = 200
    rate_seconds: float = 10  # per target, split into rate_rounds interleaved rounds
    rate_rounds: int = 5
    large_mb: float = 50
    large_rounds: int = 3
    watches: int = 10_000
    idle_seconds: float = 5
    event_rate: float = 1000
    event_seconds: float = 5
    burst_scale: float = 1.0
    burst_rounds: int = 3
    cold_runs: int = 3
    auth_runs: int = 2000
    policy_iterations: int = 5000
    warmup_seconds: float = 2

    @classmethod
    def make(cls, quick: bool, scale: float) -> Params:
        p = cls()
        if quick:
            p = cls(
                get_seconds=1,
                get_rounds=2,
                rate_seconds=1,
                rate_rounds=2,
                large_mb=2,
                large_rounds=1,
                watches=50,
                idle_seconds=0.5,
                event_rate=100,
                event_seconds=1,
                burst_scale=0.02,
                burst_rounds=1,
                cold_runs=1,
                auth_runs=50,
                policy_iterations=50,
                warmup_seconds=0,
            )
        if scale != 1.0:
            p.large_mb = max(0.5, p.large_mb * scale)
            p.watches = max(10, int(p.watches * scale))
            p.burst_scale = p.burst_scale * scale
        return p


@dataclass
class Bench:
    """Everything running for one benchmark run, and the places it writes to."""

    work: Path
    params: Params
    load_cpus: set[int] | None
    sut_cpus: set[int] | None
    box: Sandbox = field(init=False)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    watch_targets: list[Target] = field(default_factory=list)
    recorded: fixtures.Recorded | None = None
    #: ``serve --workers`` for the proxy under test (1: a single process, as in a one-core pod).
    proxy_workers: int = 1
    #: The CPUs of the whole-machine layout: the harness's own affinity before it pinned itself to the load
    #: generators' CPU (children inherit that pin unless given this mask). None: leave as inherited.
    machine_cpus: set[int] | None = None
    wrk_script: Path = field(init=False)
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.box = Sandbox(self.work / "sandbox")
        self.wrk_script = self.work / "bench.lua"
        from benchmarks.clients import WRK_LUA

        self.wrk_script.write_text(WRK_LUA)

    # --- processes ---

    def spawn(self, name: str, args: list[str], *, unpinned: bool = False) -> subprocess.Popen[bytes]:
        """Start a process of the run: on the system-under-test CPU, or (``unpinned``) on every CPU."""
        cpus = self.machine_cpus if unpinned else self.sut_cpus
        proc = procs.spawn(args, self.work / f"{name}.log", cpus=cpus)
        self.procs.append(proc)
        return proc

    @contextlib.contextmanager
    def scoped_procs(self) -> Iterator[None]:
        """Stop the processes started inside the block when it ends, even on error."""
        mark = len(self.procs)
        try:
            yield
        finally:
            for proc in reversed(self.procs[mark:]):
                procs.stop_tree(proc)
            del self.procs[mark:]

    def upstream_ssl(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.box.upstream_tls.ca_file))

    def proxy_args(
        self, upstream: str, port: int, metrics_port: int, workers: int | None = None
    ) -> list[str]:
        """``serve`` arguments; ``workers`` None: the run's ``proxy_workers``."""
        self.box.upstream = upstream
        known = {f.name for f in dataclasses.fields(Settings)}
        wanted: dict[str, Any] = {
            "listen": f"127.0.0.1:{port}",
            "metrics_listen": f"127.0.0.1:{metrics_port}",
            "log_level": "warning",
            "reload_interval": 1.0,
            # Limits sized for the load (the defaults would throttle the benchmark itself); the limiter
            # still runs on every request.
            "rate_limit_qps": 1_000_000.0,
            "rate_limit_burst": 1_000_000,
            "max_watches_per_cluster": 50_000,
            "max_connections": 50_000,
            "workers": self.proxy_workers if workers is None else workers,
        }
        missing = sorted(set(wanted) - known)
        if missing:
            self.notes.append(f"proxy settings not available yet, left out: {', '.join(missing)}")
        self.box.settings = {k: v for k, v in wanted.items() if k in known}
        return [procs.PYTHON, "-m", "apiproxy", "serve", *to_args(self.box.proxy_settings())]

    def start_proxy(
        self, name: str, upstream: str, *, workers: int | None = None, unpinned: bool = False
    ) -> Target:
        port, mport = procs.free_port(), procs.free_port()
        proc = self.spawn(name, self.proxy_args(upstream, port, mport, workers), unpinned=unpinned)
        token = self.box.clusters["alpha"].token
        return Target(
            "proxy",
            f"https://127.0.0.1:{port}",
            self.box.client_ssl(),
            f"Bearer {token}",
            proc.pid,
            {"proc": proc, "metrics": f"http://127.0.0.1:{mport}/metrics", "port": port},
        )

    def kubeconfig(self, name: str, upstream: str) -> Path:
        path = self.work / f"kubeconfig-{name}"
        path.write_text(
            render_kubeconfig(
                upstream,
                self.box.upstream_tls.ca_file.read_bytes(),
                token=self.box.upstream_token,
                name=name,
            )
        )
        return path

    def kubectl_proxy_args(self, kubeconfig: Path, port: int) -> list[str]:
        return [
            KUBECTL,
            "--kubeconfig",
            str(kubeconfig),
            "proxy",
            "--address=127.0.0.1",
            f"--port={port}",
            f"--reject-methods={KUBECTL_REJECT_METHODS}",
            f"--accept-paths={KUBECTL_ACCEPT_PATHS}",
        ]

    def start_kubectl(self, name: str, upstream: str, *, unpinned: bool = False) -> Target:
        port = procs.free_port()
        proc = self.spawn(
            name, self.kubectl_proxy_args(self.kubeconfig(name, upstream), port), unpinned=unpinned
        )
        return Target("kubectl", f"http://127.0.0.1:{port}", None, None, proc.pid, {"proc": proc})

    def start(self) -> None:
        p = self.params
        rec = fixtures.record(
            self.work / "docroot", scale=p.burst_scale, large_bytes=int(p.large_mb * 1024 * 1024)
        )
        self.recorded = rec
        token = self.box.upstream_token
        up_port, ev_port = procs.free_port(), procs.free_port()
        conf = fixtures.nginx_config(
            self.work,
            rec.docroot,
            up_port,
            self.box.upstream_tls.cert_file,
            self.box.upstream_tls.key_file,
            token,
        )
        nginx = self.spawn("nginx", [NGINX, "-c", str(conf), "-e", str(self.work / "nginx-error.log")])
        events = self.spawn(
            "event-source",
            [
                procs.PYTHON,
                "-m",
                "benchmarks.event_source",
                f"--port={ev_port}",
                f"--cert={self.box.upstream_tls.cert_file}",
                f"--key={self.box.upstream_tls.key_file}",
                f"--token={token}",
            ],
        )
        upstream, event_url = f"https://127.0.0.1:{up_port}", f"https://127.0.0.1:{ev_port}"
        auth = {"Authorization": f"Bearer {token}"}
        procs.wait_ready(upstream + "/version", self.upstream_ssl(), nginx, headers=auth)
        procs.wait_ready(event_url + "/version", self.upstream_ssl(), events, headers=auth)
        direct = Target("direct", upstream, self.upstream_ssl(), f"Bearer {token}", None, {"proc": nginx})
        proxy = self.start_proxy("proxy", upstream)
        kubectl = self.start_kubectl("kubectl-proxy", upstream)
        w_direct = Target("direct", event_url, self.upstream_ssl(), f"Bearer {token}", None, {"proc": events})
        w_proxy = self.start_proxy("proxy-watch", event_url)
        w_kubectl = self.start_kubectl("kubectl-proxy-watch", event_url)
        for t in (proxy, w_proxy):
            procs.wait_ready(t.base + "/readyz", t.ssl, t.extra["proc"])
        for t in (kubectl, w_kubectl):
            procs.wait_ready(t.base + "/version", None, t.extra["proc"])
        self.targets = [direct, proxy, kubectl]
        self.watch_targets = [w_direct, w_proxy, w_kubectl]

    def start_machine(self, workers: int, proxy_workers: int | None = None) -> list[Target]:
        """A second set for the whole-machine layout, every process unpinned: an nginx with ``workers``
        worker processes (same recorded docroot), a proxy with ``--workers proxy_workers`` (None: as
        many as nginx), a kubectl proxy. Stop them with ``scoped_procs``."""
        proxy_workers = workers if proxy_workers is None else proxy_workers
        assert self.recorded is not None
        token = self.box.upstream_token
        workdir = self.work / "machine"
        workdir.mkdir(exist_ok=True)
        port = procs.free_port()
        conf = fixtures.nginx_config(
            workdir,
            self.recorded.docroot,
            port,
            self.box.upstream_tls.cert_file,
            self.box.upstream_tls.key_file,
            token,
            workers=workers,
        )
        nginx = self.spawn(
            "nginx-machine", [NGINX, "-c", str(conf), "-e", str(workdir / "nginx-error.log")], unpinned=True
        )
        upstream = f"https://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {token}"}
        procs.wait_ready(upstream + "/version", self.upstream_ssl(), nginx, headers=auth)
        direct = Target("direct", upstream, self.upstream_ssl(), f"Bearer {token}", None, {"proc": nginx})
        proxy = self.start_proxy("proxy-machine", upstream, workers=proxy_workers, unpinned=True)
        kubectl = self.start_kubectl("kubectl-proxy-machine", upstream, unpinned=True)
        procs.wait_ready(proxy.base + "/readyz", proxy.ssl, proxy.extra["proc"])
        procs.wait_ready(kubectl.base + "/version", None, kubectl.extra["proc"])
        # /readyz answers as soon as one worker listens; wait for all of them (one socket each).
        deadline = time.monotonic() + 30
        while (listening := procs.listening_sockets(proxy.extra["port"])) < proxy_workers:
            if time.monotonic() > deadline:
                raise RuntimeError(f"proxy --workers {proxy_workers}: only {listening} listening after 30 s")
            if proxy.extra["proc"].poll() is not None:
                code = proxy.extra["proc"].returncode
                raise RuntimeError(f"proxy --workers {proxy_workers} exited with {code}")
            time.sleep(0.02)
        return [direct, proxy, kubectl]

    def stop(self) -> None:
        for proc in reversed(self.procs):
            procs.stop_tree(proc)
        self.procs.clear()


def run_async(coro: Awaitable[T]) -> T:
    async def wrap() -> T:
        return await coro

    try:
        import uvloop

        return uvloop.run(wrap())
    except ImportError:
        return asyncio.run(wrap())


def ratios(per_target: dict[str, Any], key: str) -> dict[str, float | None]:
    def ratio(a: str, b: str) -> float | None:
        x, y = per_target.get(a, {}).get(key), per_target.get(b, {}).get(key)
        if not isinstance(x, int | float) or not isinstance(y, int | float) or not y:
            return None
        return round(x / y, 3)

    return {"proxy/direct": ratio("proxy", "direct"), "proxy/kubectl": ratio("proxy", "kubectl")}


# --- scenarios ---


@dataclass
class _WrkTally:
    """One target's wrk rounds added up, and the CPU seconds read around each round."""

    requests: int = 0
    bytes: int = 0
    errors: int = 0
    seconds: float = 0.0  # wrk's measured durations
    round_rps: list[float] = field(default_factory=list)
    round_p50_ms: list[float] = field(default_factory=list)
    round_p99_ms: list[float] = field(default_factory=list)
    box_cpu: float = 0.0
    upstream_cpu: float = 0.0
    load_cpu: float = 0.0

    def figures(self) -> dict[str, Any]:
        """The figures run_wrk gives for one run, over all the rounds: rates from the summed counts and
        durations, p50/p99 the median of the per-round values."""
        secs = self.seconds
        return {
            "rps": round(self.requests / secs, 1) if secs else None,
            "requests": self.requests,
            "errors": self.errors,
            "MBps": round(self.bytes / secs / 1e6, 2) if secs else None,
            "p50_ms": round(statistics.median(self.round_p50_ms), 4),
            "p99_ms": round(statistics.median(self.round_p99_ms), 4),
            "measured_seconds": round(secs, 3),
            "round_rps": self.round_rps,
            "round_p50_ms": self.round_p50_ms,
            "round_p99_ms": self.round_p99_ms,
        }

    def percent(self, cpu_seconds: float) -> float | None:
        return round(cpu_seconds / self.seconds * 100, 1) if self.seconds else None


def _wrk_rounds(
    p: Params,
    targets: list[Target],
    wrk: Callable[[Target, float], dict[str, Any]],
    upstream: int | None = None,
) -> tuple[dict[str, Any], dict[str, _WrkTally]]:
    """small-GET throughput with the targets interleaved in time: a warm-up of ``warmup_seconds`` per
    target, once, then ``get_rounds`` rounds, each running ``wrk`` on every target for
    ``get_seconds / get_rounds`` in turn, round ``i`` starting with target ``i mod len(targets)``. Around
    each round, the CPU seconds of the target's middlebox (its process tree), of ``upstream``'s process
    tree if given, and of reaped children (wrk) are read and summed. Returns the scenario's figures and
    each target's tally."""
    rounds = max(1, p.get_rounds)
    round_seconds = p.get_seconds / rounds
    if p.warmup_seconds:
        for t in targets:
            wrk(t, p.warmup_seconds)
    # The middlebox's CPU summed over its process tree (the supervisor and workers of ``--workers N``; a
    # single process otherwise).
    boxes = {t.name: procs.process_tree(t.pid) if t.pid else [] for t in targets}
    up_tree = procs.process_tree(upstream) if upstream else []
    tallies = {t.name: _WrkTally() for t in targets}
    orders: list[list[str]] = []
    for i in range(rounds):
        k = i % len(targets)
        order = targets[k:] + targets[:k]
        orders.append([t.name for t in order])
        for t in order:
            tally, box = tallies[t.name], boxes[t.name]
            box0, up0 = procs.cpu_seconds_of(box), procs.cpu_seconds_of(up_tree)
            load0 = resource.getrusage(resource.RUSAGE_CHILDREN)  # wrk, once reaped
            fig = wrk(t, round_seconds)
            load1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            tally.box_cpu += procs.cpu_seconds_used(box0, procs.cpu_seconds_of(box))
            tally.upstream_cpu += procs.cpu_seconds_used(up0, procs.cpu_seconds_of(up_tree))
            tally.load_cpu += load1.ru_utime + load1.ru_stime - load0.ru_utime - load0.ru_stime
            tally.requests += fig["requests"]
            tally.bytes += fig["bytes"]
            tally.errors += fig["errors"]
            tally.seconds += fig["seconds"]
            tally.round_rps.append(fig["rps"])
            tally.round_p50_ms.append(fig["p50_ms"])
            tally.round_p99_ms.append(fig["p99_ms"])
    out: dict[str, Any] = {
        "seconds": p.get_seconds,
        "warmup_seconds": p.warmup_seconds,
        "rounds": rounds,
        "round_seconds": round(round_seconds, 3),
        "round_order": orders,
    }
    for t in targets:
        out[t.name] = tallies[t.name].figures()
        if boxes[t.name]:
            out[t.name]["cpu_percent"] = tallies[t.name].percent(tallies[t.name].box_cpu)
            out[t.name]["processes"] = len(boxes[t.name])
    out["ratios"] = ratios(out, "rps")
    if "proxy" in tallies and "kubectl" in tallies:
        pairs = zip(tallies["proxy"].round_rps, tallies["kubectl"].round_rps, strict=True)
        per_round = [round(x / y, 3) if y else None for x, y in pairs]
        out["ratio_rounds"] = per_round
        known = [x for x in per_round if x is not None]
        out["ratio_spread"] = {"min": min(known), "max": max(known)} if known else None
    return out, tallies


def small_get_throughput(b: Bench) -> dict[str, Any]:
    """Max throughput of the small GET with wrk, pinned (a core each for load and system under test), the
    targets interleaved in rounds (see ``_wrk_rounds``)."""
    p = b.params
    out: dict[str, Any] = {"path": fixtures.SMALL_GET_PATH, "connections": p.get_connections}
    out.update(_wrk_rounds(p, b.targets, _small_get_wrk(b, b.load_cpus))[0])
    return out


def _small_get_wrk(
    b: Bench, cpus: set[int] | None, threads: int = 1
) -> Callable[[Target, float], dict[str, Any]]:
    """wrk on the small GET with the run's connections and script: ``(target, seconds) -> figures``."""

    def wrk(t: Target, seconds: float) -> dict[str, Any]:
        return run_wrk(
            t,
            fixtures.SMALL_GET_PATH,
            connections=b.params.get_connections,
            seconds=seconds,
            script=b.wrk_script,
            cpus=cpus,
            threads=threads,
        )

    return wrk


def small_get_machine(b: Bench) -> dict[str, Any]:
    """small_get_throughput's load on the whole machine: its own nginx, proxy (``--workers`` one per CPU)
    and kubectl proxy, none pinned, and wrk with two threads, also unpinned; the targets interleaved in
    rounds as there, with the upstream's and wrk's CPU% per target as well."""
    p = b.params
    workers = os.cpu_count() or 1
    threads = 2
    out: dict[str, Any] = {
        "path": fixtures.SMALL_GET_PATH,
        "connections": p.get_connections,
        "layout": "unpinned",
        "proxy_workers": workers,
        "nginx_workers": workers,
        "wrk_threads": threads,
        "cpus": sorted(b.machine_cpus) if b.machine_cpus else "any",
    }
    with b.scoped_procs():
        targets = b.start_machine(workers)
        nginx = targets[0].extra["proc"]
        wrk = _small_get_wrk(b, b.machine_cpus, threads)
        figures, tallies = _wrk_rounds(p, targets, wrk, upstream=nginx.pid)
    out.update(figures)
    for name, tally in tallies.items():
        out[name]["upstream_cpu_percent"] = tally.percent(tally.upstream_cpu)
        out[name]["wrk_cpu_percent"] = tally.percent(tally.load_cpu)
    return out


async def _latency_rounds(
    targets: list[Target], path: str, *, rate: float, rounds: int, round_seconds: float
) -> tuple[dict[str, list[FixedRateRun]], dict[str, int], list[list[str]]]:
    """``rounds`` rounds of ``fixed_rate`` over ``targets`` in turn, round ``i`` starting with target
    ``i mod len(targets)``; one keep-alive pool per target, warmed once, for all the rounds. Returns the
    runs per target, the connections each pool opened, and each round's order."""
    pools = [KeepAlivePool(t, path) for t in targets]
    runs: dict[str, list[FixedRateRun]] = {t.name: [] for t in targets}
    orders: list[list[str]] = []
    try:
        for pool in pools:
            await pool.warm()
        warm = {pool.target.name: len(pool.idle) for pool in pools}
        for i in range(rounds):
            k = i % len(pools)
            order = pools[k:] + pools[:k]
            orders.append([pool.target.name for pool in order])
            for pool in order:
                runs[pool.target.name].append(await fixed_rate(pool, rate=rate, seconds=round_seconds))
        connections = {pool.target.name: warm[pool.target.name] + pool.opened for pool in pools}
    finally:
        for pool in pools:
            pool.close()
    return runs, connections, orders


def small_get_latency(b: Bench) -> dict[str, Any]:
    """Fixed-rate latency, the targets interleaved in time: ``rate_rounds`` rounds, each measuring every
    target for ``rate_seconds / rate_rounds`` in turn (the order rotated every round), so a drift of the
    machine spreads over all the targets instead of biasing one. Percentiles are over each target's
    samples of all the rounds; the per-round p50s show the noise."""
    p = b.params
    rounds = max(1, p.rate_rounds)
    round_seconds = p.rate_seconds / rounds
    runs, connections, orders = run_async(
        _latency_rounds(
            b.targets, fixtures.SMALL_GET_PATH, rate=p.rate, rounds=rounds, round_seconds=round_seconds
        )
    )
    out: dict[str, Any] = {
        "rate": p.rate,
        "seconds": p.rate_seconds,
        "rounds": rounds,
        "round_seconds": round(round_seconds, 3),
        "round_order": orders,
    }
    for t in b.targets:
        fig = fixed_rate_figures(runs[t.name])
        fig["round_p50_ms"] = [summarize_ms(run.latencies)["p50_ms"] for run in runs[t.name]]
        fig["connections"] = connections[t.name]
        out[t.name] = fig
    for q in ("p50_ms", "p90_ms", "p99_ms"):
        out[f"added_{q}"] = round(out["proxy"][q] - out["direct"][q], 4)
        out[f"kubectl_added_{q}"] = round(out["kubectl"][q] - out["direct"][q], 4)
    direct = out["direct"]["round_p50_ms"]
    for prefix, name in (("", "proxy"), ("kubectl_", "kubectl")):
        added = [round(x - d, 4) for x, d in zip(out[name]["round_p50_ms"], direct, strict=True)]
        out[f"{prefix}added_p50_ms_rounds"] = added
        out[f"{prefix}added_p50_ms_spread"] = {"min": min(added), "max": max(added)}
    out["ratios"] = ratios(out, "p50_ms")
    return out


class RssSampler:
    """Samples a process's RSS every 50 ms in a thread (VmHWM gives the peak; this gives the curve)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.samples: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while self.pid and not self._stop.wait(0.05):
            with contextlib.suppress(OSError, KeyError):
                self.samples.append(procs.status_kib(self.pid, "VmRSS"))

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)


def _large_list_figures(b: Bench, t: Target) -> dict[str, Any]:
    """One target's large LIST: a warm-up LIST, then ``large_rounds`` LISTs read to the end (best and
    median MB/s); for a target with a pid (the middlebox), its RSS before, peak (``VmHWM``, reset before
    the rounds) and growth, and the highest RSS sampled every 50 ms."""
    p = b.params
    assert b.recorded is not None
    run_async(large_list(t, fixtures.LARGE_LIST_PATH))  # warm-up: pools, buffers
    fig: dict[str, Any] = {}
    if t.pid:
        fig["rss_before_MiB"] = round(procs.status_kib(t.pid, "VmRSS") / 1024, 1)
        fig["peak_reset"] = procs.reset_peak_rss(t.pid)
    rates = []
    with RssSampler(t.pid) as sampler:
        for _ in range(p.large_rounds):
            size, secs = run_async(large_list(t, fixtures.LARGE_LIST_PATH))
            if size != b.recorded.large_list_bytes:
                raise RuntimeError(f"{t.name}: LIST gave {size} bytes, not {b.recorded.large_list_bytes}")
            rates.append(size / secs / 1e6)
    fig["MBps"] = round(max(rates), 1)
    fig["MBps_median"] = round(statistics.median(rates), 1)
    if t.pid:
        peak = procs.status_kib(t.pid, "VmHWM")
        fig["peak_rss_MiB"] = round(peak / 1024, 1)
        fig["rss_growth_MiB"] = round(peak / 1024 - fig["rss_before_MiB"], 1)
        fig["sampled_max_rss_MiB"] = round(max(sampler.samples, default=0) / 1024, 1)
    return fig


def large_list_scenario(b: Bench) -> dict[str, Any]:
    assert b.recorded is not None
    out: dict[str, Any] = {"bytes": b.recorded.large_list_bytes, "rounds": b.params.large_rounds}
    for t in b.targets:
        out[t.name] = _large_list_figures(b, t)
    out["ratios"] = ratios(out, "MBps")
    return out


def large_list_machine(b: Bench) -> dict[str, Any]:
    """large_list's LISTs on the whole machine: its own nginx (one worker per CPU), proxy and kubectl
    proxy, none pinned, and the LIST client (this process) unpinned while it reads. One LIST is one
    connection, so the proxy runs a single process (``--workers 1``): more workers would not help, and
    its RSS is that one process's."""
    assert b.recorded is not None
    nginx_workers = os.cpu_count() or 1
    proxy_workers = 1
    out: dict[str, Any] = {
        "bytes": b.recorded.large_list_bytes,
        "rounds": b.params.large_rounds,
        "layout": "unpinned",
        "proxy_workers": proxy_workers,
        "nginx_workers": nginx_workers,
        "cpus": sorted(b.machine_cpus) if b.machine_cpus else "any",
    }
    with b.scoped_procs():
        targets = b.start_machine(nginx_workers, proxy_workers=proxy_workers)
        # The harness is pinned to the load generators' CPU; widen it (this thread, and the RSS sampler's
        # thread started from it) for the reads, and restore the pin after.
        with pinned(b.machine_cpus):
            out["client_cpus"] = sorted(os.sched_getaffinity(0))
            for t in targets:
                out[t.name] = _large_list_figures(b, t)
    out["ratios"] = ratios(out, "MBps")
    return out


async def _stats(b: Bench) -> int:
    direct = b.watch_targets[0]
    async with session(direct) as s, s.get(direct.base + "/bench/stats", headers=direct.headers()) as r:
        return int((await r.json())["watches"])


async def _fire(b: Bench, rate: float, seconds: float) -> dict[str, Any]:
    direct = b.watch_targets[0]
    url = f"{direct.base}/bench/fire?rate={rate}&seconds={seconds}"
    async with session(direct) as s, s.post(url, headers=direct.headers()) as r:
        result: dict[str, Any] = await r.json()
        return result


async def _poll_stats(b: Bench, done: Callable[[int], bool], timeout: float) -> int:
    """Poll the event source's watch count until ``done(count)`` or ``timeout`` seconds."""
    count = await _stats(b)
    for _ in range(int(timeout / 0.2)):
        if done(count):
            break
        await asyncio.sleep(0.2)
        count = await _stats(b)
    return count


def watch_capacity() -> int:
    """Most watches the fd limit allows: a relaying process holds two descriptors per watch."""
    _soft, hard = procs.raise_nofile()
    return max(10, (hard - 400) // 2)


async def _watch_one(b: Bench, t: Target, count: int) -> dict[str, Any]:
    p = b.params
    clients = WatchClients(t, WATCH_PATH)
    fig: dict[str, Any] = {"requested": count}
    try:
        fig["open_seconds"] = round(await clients.open(count, deadline=max(60.0, count / 50)), 2)
        fig["opened"], fig["open_failures"] = len(clients.conns), clients.failures
        fig["upstream_watches"] = await _poll_stats(b, lambda n: n >= len(clients.conns), 60)
        await asyncio.sleep(min(1.0, p.idle_seconds))
        if t.pid:
            cpu0 = procs.cpu_seconds(t.pid)
            t0 = time.monotonic()
            await asyncio.sleep(p.idle_seconds)
            fig["idle_cpu_percent"] = round(
                (procs.cpu_seconds(t.pid) - cpu0) / (time.monotonic() - t0) * 100, 2
            )
            fig["idle_rss_MiB"] = round(procs.status_kib(t.pid, "VmRSS") / 1024, 1)
            fig["idle_fds"] = procs.open_fds(t.pid)
            if fig["opened"]:
                fig["rss_KiB_per_watch"] = round(procs.status_kib(t.pid, "VmRSS") / fig["opened"], 1)
        fired = await _fire(b, p.event_rate, p.event_seconds)
        await asyncio.sleep(1.0)  # stragglers
        fig["events_sent"], fig["events_received"] = fired["sent"], clients.events
        lat = sorted(x / 1e9 for x in clients.latencies_ns)
        fig.update({f"event_{k}": v for k, v in summarize_ms(lat).items()})
        fig["event_samples_ms"] = [round(x * 1000, 3) for x in lat]
    finally:
        await clients.close()
        await _poll_stats(b, lambda n: n == 0, 30)
    return fig


def watches_scenario(b: Bench) -> dict[str, Any]:
    p = b.params
    cap = watch_capacity()
    count = min(p.watches, cap)
    out: dict[str, Any] = {
        "requested": p.watches,
        "count": count,
        "fd_hard_limit": procs.raise_nofile()[1],
        "event_rate": p.event_rate,
        "event_seconds": p.event_seconds,
        "idle_seconds": p.idle_seconds,
    }
    if count < p.watches:
        b.notes.append(
            f"watches capped at {count} (not {p.watches}): RLIMIT_NOFILE hard limit {out['fd_hard_limit']}, "
            "and a relaying process holds two descriptors per watch"
        )
    for t in b.watch_targets:
        out[t.name] = run_async(_watch_one(b, t, count))
    d, pr, k = out["direct"], out["proxy"], out["kubectl"]
    for q in ("p50_ms", "p99_ms"):
        out[f"added_event_{q}"] = round(pr[f"event_{q}"] - d[f"event_{q}"], 3)
        out[f"kubectl_added_event_{q}"] = round(k[f"event_{q}"] - d[f"event_{q}"], 3)
    out["ratios"] = ratios(out, "event_p99_ms")
    out["ratios_idle_rss"] = {"proxy/kubectl": _div(pr.get("idle_rss_MiB"), k.get("idle_rss_MiB"))}
    return out


def _div(a: Any, b: Any) -> float | None:
    return round(a / b, 3) if isinstance(a, int | float) and isinstance(b, int | float) and b else None


async def _burst(t: Target) -> tuple[float, int, int]:
    async with session(t, limit=8) as s:
        start = time.perf_counter()
        results = await asyncio.gather(
            *(
                paged_list(s, t, path, fixtures.BURST_QUERY.get(name, ""))
                for name, (path, *_r) in fixtures.BURST.items()
            )
        )
        return time.perf_counter() - start, sum(r[0] for r in results), sum(r[1] for r in results)


def burst_scenario(b: Bench) -> dict[str, Any]:
    p = b.params
    assert b.recorded is not None
    out: dict[str, Any] = {"objects": b.recorded.burst_counts, "bytes": sum(b.recorded.burst_bytes.values())}
    expected = sum(b.recorded.burst_counts.values())
    for t in b.targets:
        times = []
        for _ in range(p.burst_rounds):
            secs, items, _size = run_async(_burst(t))
            if items != expected:
                raise RuntimeError(f"{t.name}: burst listed {items} objects, not {expected}")
            times.append(secs)
        out[t.name] = {
            "seconds": round(statistics.median(times), 3),
            "best_seconds": round(min(times), 3),
            "MBps": round(out["bytes"] / statistics.median(times) / 1e6, 1),
        }
    out["ratios"] = ratios(out, "seconds")
    return out


def cold_start_scenario(b: Bench) -> dict[str, Any]:
    upstream = b.targets[0].base
    proxy_times, kubectl_times = [], []
    for i in range(b.params.cold_runs):
        port, mport = procs.free_port(), procs.free_port()
        args = b.proxy_args(upstream, port, mport)
        start = time.monotonic()
        proc = procs.spawn(args, b.work / f"cold-proxy-{i}.log", cpus=b.sut_cpus)
        try:
            procs.wait_ready(f"https://127.0.0.1:{port}/readyz", b.box.client_ssl(), proc, interval=0.002)
            proxy_times.append(time.monotonic() - start)
        finally:
            procs.stop(proc)
        kport = procs.free_port()
        start = time.monotonic()
        proc = procs.spawn(
            b.kubectl_proxy_args(b.kubeconfig("cold", upstream), kport),
            b.work / f"cold-kubectl-{i}.log",
            cpus=b.sut_cpus,
        )
        try:
            procs.wait_ready(f"http://127.0.0.1:{kport}/version", None, proc, interval=0.002)
            kubectl_times.append(time.monotonic() - start)
        finally:
            procs.stop(proc)
    out: dict[str, Any] = {
        "runs": b.params.cold_runs,
        "proxy": {"seconds": round(statistics.median(proxy_times), 3), "all": proxy_times},
        "kubectl": {"seconds": round(statistics.median(kubectl_times), 3), "all": kubectl_times},
    }
    out["ratios"] = {"proxy/kubectl": _div(out["proxy"]["seconds"], out["kubectl"]["seconds"])}
    return out


def auth_scenario(b: Bench) -> dict[str, Any]:
    return auth_bench.run(b.params.auth_runs)


def policy_scenario(b: Bench) -> dict[str, Any]:
    return policy_bench.run_all(b.params.policy_iterations)


SCENARIOS: dict[str, Callable[[Bench], dict[str, Any]]] = {
    "small_get_throughput": small_get_throughput,
    "small_get_machine": small_get_machine,
    "small_get_latency": small_get_latency,
    "large_list": large_list_scenario,
    "large_list_machine": large_list_machine,
    "watches": watches_scenario,
    "istiod_burst": burst_scenario,
    "cold_start": cold_start_scenario,
    "auth": auth_scenario,
    "policy": policy_scenario,
}


def profile_proxy(b: Bench, seconds: float, out_dir: Path, stem: str) -> dict[str, Any]:
    """py-spy on the proxy under the small-GET wrk load: a flame graph and the collapsed stacks."""
    if not Path(PY_SPY).exists():
        return {"error": f"{PY_SPY} not found (pip install py-spy)"}
    proxy = b.targets[1]
    assert proxy.pid is not None
    result: dict[str, Any] = {}
    for fmt, suffix in (("raw", "txt"), ("flamegraph", "svg")):
        path = out_dir / f"{stem}-profile.{suffix}"
        cmd = [PY_SPY, "record", "-f", fmt, "-r", "200", "-d", str(int(seconds)), "-o", str(path)]
        cmd += ["-p", str(proxy.pid)]
        spy = subprocess.Popen(
            cmd,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        time.sleep(0.5)
        run_wrk(
            proxy,
            fixtures.SMALL_GET_PATH,
            connections=b.params.get_connections,
            seconds=seconds,
            script=b.wrk_script,
            cpus=b.load_cpus,
        )
        try:
            _, err = spy.communicate(timeout=seconds + 30)
        except subprocess.TimeoutExpired:
            spy.kill()
            _, err = spy.communicate()
        if spy.returncode != 0:
            return {"error": err.decode(errors="replace")[-500:]}
        result[fmt] = str(path)
    result.update(report.summarize_profile(Path(result["raw"])))
    return result


def pinning() -> tuple[set[int] | None, set[int] | None]:
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, {cpus[1]}


@contextlib.contextmanager
def pinned(cpus: set[int] | None) -> Iterator[None]:
    before = os.sched_getaffinity(0)
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def tool_versions() -> dict[str, str]:
    def first_line(cmd: list[str]) -> str:
        try:
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
        except OSError:
            return "missing"
        return (out.stdout + out.stderr).strip().splitlines()[0] if (out.stdout + out.stderr) else "?"

    return {
        "nginx": first_line([NGINX, "-v"]),
        "wrk": first_line(["/usr/bin/wrk", "-v"]),
        "kubectl": first_line([KUBECTL, "version", "--client"]),
        "python": sys.version.split()[0],
    }


def missing_tools() -> list[str]:
    from benchmarks.clients import WRK

    return [tool for tool in (NGINX, WRK, KUBECTL) if not shutil.which(tool) and not Path(tool).exists()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of every scenario")
    parser.add_argument("--scale", type=float, default=1.0, help="multiply sizes (LIST, watches, burst)")
    parser.add_argument("--only", action="append", choices=sorted(SCENARIOS), help="run only these")
    parser.add_argument("--out", type=Path, default=RESULTS, help="directory for JSON and PNGs")
    parser.add_argument("--no-plots", action="store_true")
    parser.add_argument("--no-pin", action="store_true", help="do not pin load and system under test")
    parser.add_argument("--profile", type=float, default=0, metavar="SECONDS", help="py-spy the proxy")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    parser.add_argument(
        "--proxy-workers",
        type=int,
        default=1,
        metavar="N",
        help="run the proxy with --workers N (try with --no-pin; small_get_throughput's CPU%% then sums the "
        "supervisor and its workers, the other CPU and RSS figures cover the supervisor only)",
    )
    args = parser.parse_args(argv)

    missing = missing_tools()
    if missing:
        print(f"missing tools: {', '.join(missing)} (make tools installs them)", file=sys.stderr)
        return 2
    nofile = procs.raise_nofile()
    params = Params.make(args.quick, args.scale)
    load_cpus, sut_cpus = (None, None) if args.no_pin else pinning()
    work = Path(tempfile.mkdtemp(prefix="apiproxy-bench-"))
    work.chmod(0o755)  # nginx's worker (www-data when started as root) reads the docroot
    bench = Bench(
        work,
        params,
        load_cpus,
        sut_cpus,
        proxy_workers=args.proxy_workers,
        machine_cpus=os.sched_getaffinity(0),
    )
    if args.no_pin and (not args.only or "small_get_throughput" in args.only):
        bench.notes.append(
            "--no-pin: small_get_throughput ran unpinned, so its figures and its 'per core' target are not "
            "per core in this run"
        )
    stamp = time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    doc: dict[str, Any] = {
        "meta": {
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "quick": args.quick,
            "scale": args.scale,
            "params": dataclasses.asdict(params),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "load_generator_cpus": sorted(load_cpus) if load_cpus else "any",
                "system_under_test_cpus": sorted(sut_cpus) if sut_cpus else "any",
                "nofile": list(nofile),
            },
            "tools": tool_versions(),
        },
        "scenarios": {},
    }
    try:
        with pinned(load_cpus):
            bench.start()
            assert bench.recorded is not None
            doc["meta"]["small_get_bytes"] = bench.recorded.small_get_bytes
            for name, fn in SCENARIOS.items():
                if args.only and name not in args.only:
                    continue
                t0 = time.monotonic()
                print(f"== {name} ...", file=sys.stderr, flush=True)
                try:
                    doc["scenarios"][name] = fn(bench)
                except Exception as exc:  # one broken scenario must not hide the others' figures
                    doc["scenarios"][name] = {"error": f"{type(exc).__name__}: {exc}"}
                doc["scenarios"][name]["elapsed_seconds"] = round(time.monotonic() - t0, 2)
            doc["meta"]["metrics"] = scrape_metrics(bench.targets[1])
            if args.profile:
                doc["profile"] = profile_proxy(bench, args.profile, args.out, f"bench-{stamp}")
    finally:
        bench.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    doc["meta"]["notes"] = bench.notes
    doc["meta"]["elapsed_seconds"] = round(time.time() - started, 1)
    doc["targets"] = report.check_targets(doc["scenarios"])
    samples = report.pop_samples(doc)
    path = args.out / f"bench-{stamp}.json"
    path.write_text(json.dumps(doc, indent=2))
    (args.out / f"bench-{stamp}-samples.json").write_text(json.dumps(samples))
    (args.out / "latest.json").write_text(json.dumps(doc, indent=2))
    print(report.table(doc))
    if not args.no_plots:
        for png in report.plots(doc, samples, args.out, f"bench-{stamp}"):
            print(f"plot: {png}")
    print(f"results: {path}")
    return 0


def scrape_metrics(proxy: Target) -> dict[str, Any]:
    url = str(proxy.extra.get("metrics", ""))
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:  # noqa: S310
            text = resp.read().decode()
    except (OSError, ValueError) as exc:
        return {"error": str(exc)}
    lines = [x for x in text.splitlines() if x and not x.startswith("#")]
    return {"url": url, "samples": len(lines), "bytes": len(text)}

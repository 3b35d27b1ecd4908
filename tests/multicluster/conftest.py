"""Two clusters on loopback: ours (a simulated apiserver serving the IstioMulticluster CRD, our controller
run by kopf against it) and a peer (the real proxy in front of its own simulator, and the real
``apiproxy exporter`` as a process, publishing the peer's documents over TLS)."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import secrets
import socket
import ssl
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.keys import public_key_pem
from apiproxy.certs import make_ca, write_serving_bundle
from apiproxy.demo.sandbox import RemoteCluster, Sandbox, write_trust_file
from apiproxy.kubeconfig import render_kubeconfig
from apiproxy.multicluster import model
from apiproxy.multicluster.controller import Controller
from apiproxy.multicluster.fetch import HTTPFetcher
from apiproxy.multicluster.keypair import keypair_data
from apiproxy.multicluster.kube import KubeObjects, secret_body
from apiproxy.multicluster.main import connection_info, kube_configuration
from apiproxy.multicluster.metrics import ControllerMetrics
from apiproxy.multicluster.settings import MulticlusterSettings
from apiproxy.simulator import Simulator
from tests.helpers import eventually

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "deploy" / "multicluster" / "crd.yaml").read_text())
OUR_UUID = "0b5c1e3a-2f4d-4c6e-9a8b-7d6e5f4a3b2c"
NAMESPACE = "d8-istio"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclasses.dataclass
class Ours:
    """Our cluster: the simulated apiserver with the CRD, and our signing key (pre-seeded keypair)."""

    simulator: Simulator
    kubeconfig: Path
    key: ed25519.Ed25519PrivateKey

    @property
    def store(self) -> Any:
        return self.simulator.store

    def resource(self, name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.store.get("istiomulticlusters", None, name)
        return obj

    def condition(self, name: str, kind: str = "Ready") -> dict[str, Any] | None:
        for c in ((self.resource(name) or {}).get("status") or {}).get("conditions") or ():
            if c["type"] == kind:
                return dict(c)
        return None

    def secret(self, name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.store.get("secrets", NAMESPACE, name)
        return obj

    def create(self, name: str, spec: dict[str, Any], annotations: dict[str, str] | None = None) -> None:
        meta: dict[str, Any] = {"name": name}
        if annotations:
            meta["annotations"] = annotations
        self.store.create(
            {
                "apiVersion": "deckhouse.io/v1alpha1",
                "kind": "IstioMulticluster",
                "metadata": meta,
                "spec": spec,
            }
        )


@pytest.fixture
async def ours(tmp_path: Path) -> AsyncIterator[Ours]:
    token = secrets.token_urlsafe(16)
    tls = write_serving_bundle(tmp_path / "ours", "simulator")
    sim = Simulator(tokens={token}, bookmark_interval=60.0)
    sim.add_crd(CRD)
    key = ed25519.Ed25519PrivateKey.generate()
    for namespace in (NAMESPACE, "default"):  # every cluster has `default`: Events about our resources
        sim.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    sim.store.create(
        secret_body(model.KEYPAIR_SECRET, NAMESPACE, keypair_data(key), labels={"seeded": "by-test"})
    )
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    await sim.start(host="127.0.0.1", port=0, ssl_context=ctx)
    kubeconfig = tmp_path / "ours-kubeconfig"
    kubeconfig.write_text(render_kubeconfig(sim.url, tls.ca_file.read_bytes(), token=token, name="ours"))
    try:
        yield Ours(sim, kubeconfig, key)
    finally:
        await sim.stop()


@dataclasses.dataclass
class Peer:
    """The peer cluster: its proxy (in front of its simulator) and its exporter process."""

    sandbox: Sandbox
    uuid: str
    exporter_url: str
    ca_pem: str
    process: asyncio.subprocess.Process
    files: dict[str, Path]

    @property
    def endpoint(self) -> str:
        return self.exporter_url + "/metadata/"

    @property
    def api_host(self) -> str:
        assert self.sandbox.proxy is not None
        return f"127.0.0.1:{self.sandbox.proxy.port}"


def trust_ours(sandbox: Sandbox, key: ed25519.Ed25519PrivateKey, uuid: str = OUR_UUID) -> None:
    """Put our public key into the peer's trust file (what the peer's own controller would do)."""
    sandbox.clusters["ours"] = RemoteCluster("ours", uuid, key, make_ca("our root"))
    write_trust_file(sandbox.trust_file, list(sandbox.clusters.values()))


@contextlib.asynccontextmanager
async def running_peer(workdir: Path, our_key: ed25519.Ed25519PrivateKey) -> AsyncIterator[Peer]:
    """A peer that already trusts ``our_key``: its proxy in front of its simulator, and its exporter
    process serving its metadata over TLS (also used against the real apiserver by tests/real)."""
    sandbox = Sandbox(workdir, cluster_names=(), seed={"pods": 3, "services": 2, "namespaces": 1})
    trust_ours(sandbox, our_key)
    await sandbox.start()
    assert sandbox.proxy is not None
    peer_key = ed25519.Ed25519PrivateKey.generate()
    files = {
        "pub": workdir / "peer-pub.pem",
        "root": workdir / "peer-root.pem",
        "gateways": workdir / "gateways.json",
    }
    files["pub"].write_bytes(public_key_pem(peer_key.public_key(), deckhouse=True))
    files["root"].write_bytes(make_ca("peer mesh root").cert_pem)
    files["gateways"].write_text(json.dumps([{"address": "198.51.100.7", "port": 15443}]))
    serving = write_serving_bundle(workdir / "exporter", "exporter", ca=sandbox.proxy_ca, names=["127.0.0.1"])
    port, metrics = free_port(), free_port()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiproxy", "exporter",
        "--cluster-uuid", sandbox.local_uuid,
        "--api-host", f"127.0.0.1:{sandbox.proxy.port}",
        "--authn-public-key-file", str(files["pub"]),
        "--root-ca-file", str(files["root"]),
        "--trust-file", str(sandbox.trust_file),
        "--ingress-gateways-file", str(files["gateways"]),
        "--tls-cert-file", str(serving.cert_file), "--tls-private-key-file", str(serving.key_file),
        "--listen", f"127.0.0.1:{port}", "--metrics-listen", f"127.0.0.1:{metrics}",
        "--reload-interval", "100ms", "--audit-log", "",
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    url = f"https://127.0.0.1:{port}"
    ca_pem = sandbox.proxy_ca.cert_pem.decode()
    trust = ssl.create_default_context(cadata=ca_pem)
    try:
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=trust)) as session:

            async def serving_public() -> bool:
                try:
                    async with session.get(url + "/metadata/public/public.json") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(serving_public, timeout=30)
        yield Peer(sandbox, sandbox.local_uuid, url, ca_pem, proc, files)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        await asyncio.wait_for(proc.wait(), 10)
        await sandbox.stop()


@pytest.fixture
async def peer(tmp_path: Path, ours: Ours) -> AsyncIterator[Peer]:
    async with running_peer(tmp_path / "peer", ours.key) as running:
        yield running


@dataclasses.dataclass
class Running:
    """A controller under kopf in a thread of its own (kopf owns its event loop: at exit it cancels every
    task created after it started, so it cannot share the test's loop)."""

    thread: threading.Thread
    stop: threading.Event
    built: threading.Event
    controller: Controller | None = None
    error: BaseException | None = None

    @property
    def metrics(self) -> ControllerMetrics:
        assert self.controller is not None
        return self.controller.metrics


StartController = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_controller(ours: Ours) -> AsyncIterator[StartController]:
    """``await start_controller(**settings)``: our controller under kopf, against our simulator."""
    import kopf

    from apiproxy.multicluster.events import EventPoster
    from apiproxy.multicluster.operator import build_registry

    running: list[Running] = []

    async def _start(clock: Callable[[], float] | None = None, **overrides: Any) -> Running:
        settings = MulticlusterSettings(
            cluster_uuid=OUR_UUID,
            namespace=NAMESPACE,
            kubeconfig=ours.kubeconfig,
            resync=0.5,
            retry_base=0.2,
            retry_cap=1.0,
            fetch_timeout=5.0,
            metrics_listen="",
        )
        settings = dataclasses.replace(settings, **overrides)
        run = Running(threading.Thread(), threading.Event(), threading.Event())

        async def main() -> None:
            configuration = kube_configuration(settings)
            client: Any = importlib.import_module("kubernetes.client")
            objects = KubeObjects(client.ApiClient(configuration))
            extra = {"clock": clock} if clock is not None else {}
            fetcher = HTTPFetcher(timeout=settings.fetch_timeout)
            controller = Controller(
                settings, objects, fetcher, metrics=ControllerMetrics(), events=EventPoster(objects), **extra
            )
            run.controller = controller
            run.built.set()
            registry = build_registry(
                controller, kubeconfig_login=lambda: connection_info(configuration, NAMESPACE)
            )
            try:
                await kopf.operator(registry=registry, standalone=True, clusterwide=True, stop_flag=run.stop)
            finally:
                await fetcher.close()

        def target() -> None:
            try:
                asyncio.run(main())
            except BaseException as exc:  # reported by the test that reads run.error
                run.error = exc
                run.built.set()

        run.thread = threading.Thread(target=target, name="controller", daemon=True)
        run.thread.start()
        await asyncio.to_thread(run.built.wait, 30)
        running.append(run)
        return run

    yield _start
    for run in running:
        run.stop.set()
    for run in running:
        await asyncio.to_thread(run.thread.join, 20)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclasses.dataclass
class ScriptedServer:
    """A TLS server whose answers a test chooses per path (a broken or hostile metadata endpoint)."""

    url: str
    ca_pem: str
    routes: dict[str, Handler]

    @property
    def endpoint(self) -> str:
        return self.url + "/metadata/"


@pytest.fixture
async def scripted(tmp_path: Path) -> AsyncIterator[ScriptedServer]:
    ca = make_ca("scripted peer CA")
    serving = write_serving_bundle(tmp_path / "scripted", "scripted", ca=ca, names=["127.0.0.1"])
    routes: dict[str, Handler] = {}

    async def handle(request: web.Request) -> web.StreamResponse:
        handler = routes.get(request.path)
        if handler is None:
            return web.Response(status=404)
        return await handler(request)

    app = web.Application()
    app.router.add_route("GET", "/{tail:.*}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)
    await runner.setup()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(serving.cert_file, serving.key_file)
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=ctx)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield ScriptedServer(f"https://127.0.0.1:{port}", ca.cert_pem.decode(), routes)
    finally:
        await runner.cleanup()

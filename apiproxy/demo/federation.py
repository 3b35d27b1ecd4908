"""``apiproxy demo``: two clusters, *east* and *west*, federate by themselves on loopback.

Each cluster is what a real one runs: a kube-apiserver (simulated, in this process) serving the
IstioMulticluster CRD, and the three parts of the kit as their own processes: ``apiproxy serve`` in front
of it, ``apiproxy exporter`` and ``apiproxy multicluster`` talking to it. Each cluster has its own Istio
root CA, its controller generates its own signing keypair, and both use the same cluster domain. The tour
creates one IstioMulticluster on each side and shows what a newcomer should notice at every step: how
the conditions turn Ready, what the controller wrote, that east's istiod kubeconfig reads west through
west's proxy and nothing else, and that deleting the resource revokes access within seconds.

The proxy reads its trust store from a file, as a pod reads the mounted trust Secret; the demo plays the
kubelet and copies the Secret into the file whenever the controller changes it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import yaml

from apiproxy.auth.keys import load_public_key
from apiproxy.certs import write_serving_bundle
from apiproxy.demo.sandbox import Sandbox
from apiproxy.kubeconfig import render_kubeconfig
from apiproxy.metadata import DEFAULT_CLUSTER_DOMAIN
from apiproxy.multicluster import model
from apiproxy.multicluster.identity import fingerprint
from apiproxy.simulator import Simulator, seed_mesh

KUBECTL = shutil.which("kubectl")
CRD_FILE = Path(__file__).resolve().parents[2] / "deploy" / "multicluster" / "crd.yaml"
NAMESPACE = "d8-istio"
CONDITIONS = ("PublicMetadataExchangeReady", "PrivateMetadataExchangeReady", "RemoteAPIServerReady", "Ready")
#: How long each wait of the tour may take before its step fails (the whole tour takes seconds).
WAIT = 45.0
#: Six Python processes start together; on a loaded machine their imports alone take many seconds.
STARTUP_WAIT = 120.0
#: Revocation must reach the peer's proxy within this many seconds for the step to pass.
REVOCATION_BUDGET = 10.0


async def stop_process(proc: asyncio.subprocess.Process, sig: int = signal.SIGTERM) -> None:
    """Signal a part and wait for it to exit; one that ignores the signal for 15 s is killed."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(sig)
    try:
        await asyncio.wait_for(proc.wait(), 15)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()


class StepFailed(Exception):
    """A step of the tour did not behave as the story says."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(predicate: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """Poll ``predicate`` (sync or async) until it returns something truthy; fail the step on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result
        if time.monotonic() > deadline:
            raise StepFailed(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


def decoded(secret: dict[str, Any] | None, key: str) -> bytes | None:
    if secret is None or key not in (secret.get("data") or {}):
        return None
    return base64.b64decode(secret["data"][key])


@dataclass
class Cluster:
    """One side of the federation: its apiserver in this process; proxy, exporter, controller as processes."""

    name: str
    workdir: Path
    box: Sandbox = field(init=False)
    processes: dict[str, asyncio.subprocess.Process] = field(default_factory=dict)
    exporter_port: int = 0
    proxy_port: int = 0
    metrics_port: int = 0
    admin_kubeconfig: Path = field(init=False)
    _mount: asyncio.Task[None] | None = None

    def __post_init__(self) -> None:
        self.box = Sandbox(self.workdir, cluster_names=(), seed={"pods": 24, "services": 8, "namespaces": 3})

    # --- what the simulated apiserver holds ------------------------------------------------------------
    @property
    def store(self) -> Any:
        assert self.box.simulator is not None
        return self.box.simulator.store

    @property
    def uuid(self) -> str:
        return self.box.local_uuid

    @property
    def endpoint(self) -> str:
        return f"https://127.0.0.1:{self.exporter_port}/metadata/"

    @property
    def ca_pem(self) -> str:
        """The CA peers are told to trust (spec.metadata.ca): it issued the exporter's and proxy's certs."""
        return self.box.proxy_ca.cert_pem.decode()

    def resource(self, name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.store.get("istiomulticlusters", None, name)
        return obj

    def conditions(self, name: str) -> dict[str, tuple[str, str]]:
        status = (self.resource(name) or {}).get("status") or {}
        return {c["type"]: (c["status"], c.get("reason", "")) for c in status.get("conditions") or ()}

    def secret(self, name: str) -> dict[str, Any] | None:
        obj: dict[str, Any] | None = self.store.get("secrets", NAMESPACE, name)
        return obj

    # --- lifecycle -------------------------------------------------------------------------------------
    async def start(self) -> None:
        self.box.upstream = None
        sim = self.box.simulator = Simulator(tokens={self.box.upstream_token})
        seed_mesh(sim.store, **self.box.seed)
        await sim.start(host="127.0.0.1", port=0, ssl_context=self.box.upstream_server_ssl())
        sim.add_crd(yaml.safe_load(CRD_FILE.read_text()))
        self.box.trust_file.write_text("{}")  # no peer yet; the controller's Secret replaces it
        if self.store.get("namespaces", None, NAMESPACE) is None:
            self.store.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}})
        mesh_root = write_serving_bundle(self.workdir / "mesh-root", "unused")
        self.store.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "istio-ca-root-cert", "namespace": NAMESPACE},
                "data": {"root-cert.pem": mesh_root.ca_file.read_text()},
            }
        )
        gateway = {"address": "198.51.100.10" if self.name == "east" else "203.0.113.20", "port": 15443}
        self.store.create(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "metadata-exporter-ingressgateway-advertise", "namespace": NAMESPACE},
                "data": {"ingressgateways-array.json": json.dumps([gateway])},
            }
        )
        self.admin_kubeconfig = self.workdir / "admin-kubeconfig"
        self.admin_kubeconfig.write_text(
            render_kubeconfig(
                sim.url,
                self.box.upstream_tls.ca_file.read_bytes(),
                token=self.box.upstream_token,
                name=f"{self.name}-admin",
            )
        )
        self._mount = asyncio.create_task(self._mount_trust_secret())
        await self._start_proxy()
        await self._start_controller()
        await self._start_exporter()

    async def _spawn(self, what: str, *args: str) -> None:
        log = (self.workdir / f"{what}.log").open("ab")  # a restarted part adds to its log
        self.processes[what] = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "apiproxy", *args, stdout=log, stderr=log
        )
        log.close()

    async def _start_proxy(self) -> None:
        """``apiproxy serve`` in front of the simulated apiserver, reading the mounted trust store."""
        assert self.box.simulator is not None
        self.proxy_port = self.proxy_port or free_port()  # a restarted proxy keeps its port
        self.metrics_port = self.metrics_port or free_port()
        config = self.workdir / "proxy.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "listen": f"127.0.0.1:{self.proxy_port}",
                    "tls-cert-file": str(self.box.serving.cert_file),
                    "tls-private-key-file": str(self.box.serving.key_file),
                    "upstream": self.box.simulator.url,
                    "upstream-ca-file": str(self.box.upstream_tls.ca_file),
                    "upstream-token-file": str(self.box.upstream_token_file),
                    "cluster-uuid": self.uuid,
                    "trust-file": str(self.box.trust_file),
                    "policy": str(self.box.policy),
                    "reload-interval": "100ms",
                    "metrics-listen": f"127.0.0.1:{self.metrics_port}",
                    "audit-log": str(self.box.audit_file),
                    "shutdown-delay": "0s",
                    "log-level": "warning",
                }
            )
        )
        await self._spawn("proxy", "serve", "--config", str(config))

    async def proxy_refuses_anonymous(self) -> bool:
        """Up, and denying by default: a request without a token is a 401 (False while not listening)."""
        self.running()
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.box.client_ssl())) as s,
                s.get(self.proxy_url + "/api") as resp,
            ):
                return resp.status == 401
        except aiohttp.ClientError:
            return False

    async def public_metadata(self) -> dict[str, Any] | None:
        """``public.json`` as this cluster's exporter serves it now; None while it does not."""
        self.running()
        try:
            async with (
                aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.box.client_ssl())) as s,
                s.get(self.endpoint + "public/public.json") as resp,
            ):
                if resp.status != 200:
                    return None
                doc: dict[str, Any] = await resp.json(content_type=None)
                return doc
        except aiohttp.ClientError:
            return None

    async def wait_up(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """Wait until the three parts are up: the proxy denies by default, the controller has its keypair
        Secret, the exporter serves ``public.json``. Returns that Secret and that document."""
        await wait_for(self.proxy_refuses_anonymous, f"{self.name}'s proxy to answer", STARTUP_WAIT)
        secret = await wait_for(
            partial(self.secret, model.KEYPAIR_SECRET), f"{self.name}'s keypair Secret", STARTUP_WAIT
        )
        doc = await wait_for(
            self.public_metadata, f"{self.name}'s exporter to serve public.json", STARTUP_WAIT
        )
        return secret, doc

    @property
    def proxy_url(self) -> str:
        return f"https://127.0.0.1:{self.proxy_port}"

    async def _start_controller(self) -> None:
        config = self.workdir / "multicluster.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "cluster-uuid": self.uuid,
                    "namespace": NAMESPACE,
                    "kubeconfig": str(self.admin_kubeconfig),
                    "resync": "2s",
                    "retry-base": "200ms",
                    "retry-cap": "1s",
                    "fetch-timeout": "5s",
                    # after `apiproxy keys rotate`, the next key is published this long (longer than the
                    # peer's resync) before tokens switch to it
                    "rotation-publish-period": "5s",
                    "metrics-listen": "",
                    "log-level": "warning",
                }
            )
        )
        await self._spawn("controller", "multicluster", "--config", str(config))

    async def _start_exporter(self) -> None:
        serving = write_serving_bundle(
            self.workdir / "exporter", "exporter", ca=self.box.proxy_ca, names=["127.0.0.1"]
        )
        self.exporter_port = self.exporter_port or free_port()
        config = self.workdir / "exporter.yaml"
        config.write_text(
            yaml.safe_dump(
                {
                    "cluster-uuid": self.uuid,
                    "api-host": f"127.0.0.1:{self.proxy_port}",
                    "namespace": NAMESPACE,
                    "kubeconfig": str(self.admin_kubeconfig),
                    "tls-cert-file": str(serving.cert_file),
                    "tls-private-key-file": str(serving.key_file),
                    "listen": f"127.0.0.1:{self.exporter_port}",
                    "metrics-listen": "",
                    "audit-log": "",
                    "log-level": "warning",
                }
            )
        )
        await self._spawn("exporter", "exporter", "--config", str(config))

    async def _mount_trust_secret(self) -> None:
        """Copy the trust Secret into the proxy's trust file when it changes (what kubelet does)."""
        last: bytes | None = None
        while True:
            data = decoded(self.secret(model.TRUST_SECRET), model.TRUST_KEY)
            if data is not None and data != last:
                tmp = self.box.trust_file.with_suffix(".tmp")
                tmp.write_bytes(data)
                tmp.replace(self.box.trust_file)
                last = data
            await asyncio.sleep(0.05)

    async def stop_part(self, what: str, sig: int = signal.SIGTERM) -> None:
        """Stop one part (``proxy``, ``exporter`` or ``controller``) and wait until it has exited."""
        await stop_process(self.processes.pop(what), sig)

    async def start_part(self, what: str) -> None:
        """Start one part again as it was started first (same ports, same configuration)."""
        starts = {
            "proxy": self._start_proxy,
            "exporter": self._start_exporter,
            "controller": self._start_controller,
        }
        await starts[what]()

    def running(self) -> None:
        for what, proc in self.processes.items():
            if proc.returncode is not None:
                log = (self.workdir / f"{what}.log").read_text(errors="replace")[-1500:]
                raise StepFailed(f"{self.name}'s {what} exited ({proc.returncode}):\n{log}")

    async def stop(self) -> None:
        if self._mount is not None:
            self._mount.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._mount
        await asyncio.gather(*(stop_process(proc) for proc in self.processes.values()))
        self.processes.clear()
        await self.box.stop()


class Tour:
    """Prints each step and whether it behaved as the story says; counts failures for ``--once``."""

    def __init__(self, east: Cluster, west: Cluster, workdir: Path) -> None:
        self.east, self.west, self.workdir = east, west, workdir
        self.failures = 0
        self.watch: aiohttp.ClientResponse | None = None
        self.watch_session: aiohttp.ClientSession | None = None
        self.kubectl_watch: asyncio.subprocess.Process | None = None
        self.timings: dict[str, float] = {}

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    async def step(self, title: str, notice: str, action: Callable[[], Awaitable[str]]) -> bool:
        self.say(f"\n── {title}")
        self.say(f"   notice: {notice}")
        started = time.monotonic()
        try:
            detail = await action()
            self.east.running()
            self.west.running()
        except Exception as exc:
            self.failures += 1
            message = str(exc) if isinstance(exc, StepFailed) else repr(exc)
            for line in message.splitlines():
                self.say(f"   ✗ FAILED: {line}")
            return False
        for line in detail.rstrip().splitlines():
            self.say(f"   {line}")
        self.say(f"   ✓ as expected ({time.monotonic() - started:.1f}s)")
        return True

    # --- helpers ---------------------------------------------------------------------------------------
    def istiod_kubeconfig(self) -> tuple[Path, dict[str, Any]]:
        """East's istiod kubeconfig for west, exactly as east's controller wrote it in the remote secret."""
        secret = self.east.secret("istio-remote-secret-west")
        data = decoded(secret, self.west.uuid)
        if data is None:
            raise StepFailed("east has no remote secret for west")
        path = self.workdir / "east-istiod-kubeconfig-for-west"
        path.write_bytes(data)
        return path, yaml.safe_load(data)

    def east_token(self) -> str:
        _, config = self.istiod_kubeconfig()
        return str(config["users"][0]["user"]["token"])

    def session(self, token: str) -> aiohttp.ClientSession:
        ssl_ctx = self.west.box.client_ssl()
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_ctx),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )

    async def west_get(self, path: str, token: str) -> tuple[int, Any]:
        async with self.session(token) as s, s.get(self.west.proxy_url + path) as resp:
            return resp.status, await resp.json(content_type=None)

    async def kubectl(self, kubeconfig: Path, *args: str) -> tuple[int, str]:
        assert KUBECTL is not None
        proc = await asyncio.create_subprocess_exec(
            KUBECTL,
            f"--kubeconfig={kubeconfig}",
            f"--cache-dir={self.workdir / 'kube-cache'}",
            *args,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 30)
        return proc.returncode or 0, out.decode()

    # --- the steps -------------------------------------------------------------------------------------
    async def create_both(self) -> str:
        lines = []
        for here, there in ((self.east, self.west), (self.west, self.east)):

            def body(ca: str, there: Cluster = there) -> dict[str, Any]:
                return {
                    "apiVersion": "deckhouse.io/v1alpha1",
                    "kind": "IstioMulticluster",
                    "metadata": {"name": there.name},
                    "spec": {"metadataEndpoint": there.endpoint, "metadata": {"ca": ca}},
                }

            shown = yaml.safe_dump(body(f"<{there.name}'s CA, PEM>"), sort_keys=False)
            lines.append(f"[{here.name}] kubectl create -f -")
            lines += ["   " + line for line in shown.splitlines()]
            here.store.create(body(there.ca_pem))
        self.timings["created"] = time.monotonic()
        return "\n".join(lines)

    async def until_ready(self) -> str:
        seen: dict[tuple[str, str], tuple[str, str]] = {}
        pairs = ((self.east, "west"), (self.west, "east"))

        def progress() -> bool:
            for here, name in pairs:
                conditions = here.conditions(name)
                for kind in CONDITIONS:
                    state = conditions.get(kind)
                    if state is not None and seen.get((here.name, kind)) != state:
                        seen[(here.name, kind)] = state
                        at = time.monotonic() - self.timings["created"]
                        self.say(f"   +{at:5.2f}s  [{here.name}] {name}: {kind}={state[0]} ({state[1]})")
            return all(here.conditions(name).get("Ready", ("",))[0] == "True" for here, name in pairs)

        await wait_for(progress, "both IstioMulticlusters to be Ready")
        elapsed = time.monotonic() - self.timings["created"]
        self.timings["ready"] = elapsed
        lines = [f"both resources created → both sides Ready: {elapsed:.2f}s"]
        if KUBECTL:
            code, out = await self.kubectl(self.east.admin_kubeconfig, "get", "istiomulticlusters")
            lines += ["[east] $ kubectl get istiomulticlusters", *out.splitlines()]
            if code != 0:
                raise StepFailed("kubectl get istiomulticlusters failed")
        return "\n".join(lines)

    async def show_outputs(self) -> str:
        lines = []
        for here, there in ((self.east, self.west), (self.west, self.east)):
            trust = json.loads(decoded(here.secret(model.TRUST_SECRET), model.TRUST_KEY) or b"{}")
            lines.append(
                f"[{here.name}] Secret {NAMESPACE}/{model.TRUST_SECRET} (trust store of proxy and exporter):"
            )
            for uuid, entry in trust.items():
                who = there.name if uuid == there.uuid else "?"
                lines.append(f"   {uuid} ({who}): key {fingerprint(entry['authnKeyPub'])[:23]}…, its root CA")
            if list(trust) != [there.uuid]:
                raise StepFailed(f"{here.name} should trust exactly {there.name}, got {list(trust)}")
            remote = here.secret(f"istio-remote-secret-{there.name}")
            if remote is None:
                raise StepFailed(f"{here.name} has no remote secret for {there.name}")
            config = yaml.safe_load(decoded(remote, there.uuid) or b"{}")
            claims = jwt.decode(config["users"][0]["user"]["token"], options={"verify_signature": False})
            meta = remote["metadata"]
            lines.append(f"[{here.name}] Secret {NAMESPACE}/{meta['name']} (istiod's remote secret):")
            lines.append(f"   label istio/multiCluster={meta['labels']['istio/multiCluster']}")
            peer_id = meta["annotations"]["networking.istio.io/cluster"]
            lines.append(f"   annotation networking.istio.io/cluster={peer_id}")
            lines.append(f"   server {config['clusters'][0]['cluster']['server']}  ({there.name}'s proxy)")
            exp = time.strftime("%Y-%m-%d", time.gmtime(claims["exp"]))
            lines.append(
                f"   token (not shown): iss={claims['iss']} sub={claims['sub'][:8]}… "
                f"aud={claims['aud'][:8]}… scope={claims.get('scope')} expires {exp}"
            )
        return "\n".join(lines)

    async def list_and_watch(self) -> str:
        kubeconfig, _ = self.istiod_kubeconfig()
        lines = []
        if KUBECTL:
            code, out = await self.kubectl(kubeconfig, "get", "pods", "-A")
            if code != 0:
                raise StepFailed(out.strip())
            rows = out.splitlines()
            lines.append(f"$ kubectl --kubeconfig {kubeconfig} get pods -A")
            lines += [*rows[:5], f"... {len(rows) - 1} pods of west"]
        else:
            status, body = await self.west_get("/api/v1/pods", self.east_token())
            if status != 200:
                raise StepFailed(f"listing pods: HTTP {status}")
            lines.append(f"GET /api/v1/pods (kubectl not installed): {len(body['items'])} pods of west")
        pod = self.west.store.list("pods")[0]
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        path = f"/api/v1/namespaces/{ns}/pods?watch=true&fieldSelector=metadata.name%3D{name}"
        self.watch_session = self.session(self.east_token())
        self.watch = await self.watch_session.get(self.west.proxy_url + path)
        if self.watch.status != 200:
            raise StepFailed(f"watch: HTTP {self.watch.status}")
        first = json.loads(await asyncio.wait_for(self.watch.content.readline(), 10))
        lines.append(f"watch {ns}/{name} as east's istiod ← {first['type']}")
        if KUBECTL:
            self.kubectl_watch = await asyncio.create_subprocess_exec(
                KUBECTL, f"--kubeconfig={kubeconfig}", f"--cache-dir={self.workdir / 'kube-cache'}",
                "get", "pod", name, "-n", ns, "--watch-only",
                "-o", "custom-columns=NAME:.metadata.name,DEMO:.metadata.labels.demo", "--no-headers",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
            lines.append(f"$ kubectl get pod {name} -n {ns} --watch-only -o custom-columns=...")
        await self._change_pod_until_seen(pod, lines)
        return "\n".join(lines)

    async def _change_pod_until_seen(self, pod: dict[str, Any], lines: list[str]) -> None:
        """Change the pod in west's apiserver until both watchers report it: kubectl's watch may open a
        moment after the change (its list comes first), so the label is bumped until its line arrives."""
        assert self.watch is not None
        version = 0
        seen_http = seen_kubectl = False
        deadline = time.monotonic() + 20
        while not (seen_http and (seen_kubectl or self.kubectl_watch is None)):
            if time.monotonic() > deadline:
                raise StepFailed("the watch did not report the change within 20s")
            version += 1
            pod["metadata"].setdefault("labels", {})["demo"] = f"changed-{version}"
            pod = self.west.store.update(pod)
            lines.append(f"   (in west's apiserver, the pod's label becomes demo=changed-{version})")
            if not seen_http:
                event = json.loads(await asyncio.wait_for(self.watch.content.readline(), 10))
                labels = event["object"]["metadata"].get("labels") or {}
                lines.append(f"← {event['type']} demo={labels.get('demo')}")
                seen_http = event["type"] == "MODIFIED"
            if self.kubectl_watch is not None and not seen_kubectl:
                assert self.kubectl_watch.stdout is not None
                with contextlib.suppress(TimeoutError):
                    line = await asyncio.wait_for(self.kubectl_watch.stdout.readline(), 1.0)
                    if not line:
                        raise StepFailed(f"kubectl's watch ended (exit {await self.kubectl_watch.wait()})")
                    if line.strip():
                        lines.append(f"kubectl ← {line.decode().strip()}")
                        seen_kubectl = True

    async def secrets_refused(self) -> str:
        token = self.east_token()
        lines = []
        if KUBECTL:
            kubeconfig, _ = self.istiod_kubeconfig()
            code, out = await self.kubectl(kubeconfig, "get", "secrets", "-A")
            lines += [f"$ kubectl --kubeconfig {kubeconfig.name} get secrets -A", *out.strip().splitlines()]
            if code != 0 or "d8-remote-authn-keypair" in out:
                raise StepFailed("west's secrets were listed")
        else:
            status, body = await self.west_get("/api/v1/secrets", token)
            lines.append(f"GET /api/v1/secrets → HTTP {status}, {len(body.get('items') or [])} items")
            if status != 200 or body.get("items"):
                raise StepFailed("west's secrets were listed")
        lines.append("   (concealed: answered as empty by west's proxy, never forwarded to the apiserver)")
        path = f"/api/v1/namespaces/{NAMESPACE}/secrets/{model.KEYPAIR_SECRET}"
        status, body = await self.west_get(path, token)
        lines.append(f"GET {path} → HTTP {status} {body.get('reason')}: {body.get('message')}")
        if status not in (403, 404):
            raise StepFailed(f"reading west's keypair answered HTTP {status}")
        return "\n".join(lines)

    async def delete_on_west(self) -> str:
        token = self.east_token()
        status, _ = await self.west_get("/api/v1/namespaces", token)
        if status != 200:
            raise StepFailed(f"east's token should still work before the deletion, got HTTP {status}")
        self.say("   [west] kubectl delete istiomulticluster east")
        started = time.monotonic()
        self.west.store.delete("istiomulticlusters", None, "east")

        async def refused() -> bool:
            code, _ = await self.west_get("/api/v1/namespaces", token)
            return code == 401

        await wait_for(refused, "east's token to be refused at west's proxy", REVOCATION_BUDGET)
        refused_after = time.monotonic() - started
        assert self.watch is not None
        closed_after = None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REVOCATION_BUDGET):
                while await self.watch.content.readline():
                    pass
            closed_after = time.monotonic() - started
        if closed_after is None:
            raise StepFailed(f"east's open watch was not closed within {REVOCATION_BUDGET:.0f}s")
        lines = [
            f"east's token refused at west's proxy (HTTP 401) after {refused_after:.2f}s",
            f"east's open watch closed by west's proxy after {closed_after:.2f}s",
        ]
        if self.kubectl_watch is not None:
            try:
                await asyncio.wait_for(self.kubectl_watch.wait(), REVOCATION_BUDGET)
                lines.append(f"kubectl's watch ended (exit {self.kubectl_watch.returncode})")
            except TimeoutError:
                lines.append("kubectl's watch is still open (it retries)")
        await wait_for(lambda: self.west.resource("east") is None, "west's resource to be gone")
        trust = json.loads(decoded(self.west.secret(model.TRUST_SECRET), model.TRUST_KEY) or b"{}")
        lines.append(
            f"[west] trust store now: {trust or '{}'}; remote secret for east: "
            f"{'gone' if self.west.secret('istio-remote-secret-east') is None else 'still there'}"
        )
        if trust or self.west.secret("istio-remote-secret-east") is not None:
            raise StepFailed("west still holds east's trust entry or remote secret")
        self.timings["refused"] = refused_after
        return "\n".join(lines)

    async def rotate_east(self) -> str:
        """West federates with east again; then east rotates its key while a reader keeps reading west
        with east's remote-secret token: publishing, then switched, and not one read fails."""
        lines = ["[west] kubectl create -f -   (the IstioMulticluster for east, again)"]
        self.west.store.create(
            {
                "apiVersion": "deckhouse.io/v1alpha1",
                "kind": "IstioMulticluster",
                "metadata": {"name": "east"},
                "spec": {"metadataEndpoint": self.east.endpoint, "metadata": {"ca": self.east.ca_pem}},
            }
        )
        await wait_for(lambda: self.west.conditions("east").get("Ready", ("",))[0] == "True", "west Ready")
        lines.append("[west] east: Ready=True (Established)")

        async def accepted() -> bool:
            status, _ = await self.west_get("/api/v1/namespaces?limit=1", self.east_token())
            return status == 200

        await wait_for(accepted, "west's proxy to trust east again")
        ok, failed = [0], [0]
        failures: list[str] = []
        stop = asyncio.Event()

        async def read_forever() -> None:
            while not stop.is_set():
                status, _ = await self.west_get("/api/v1/namespaces?limit=1", self.east_token())
                if status == 200:
                    ok[0] += 1
                else:
                    failed[0] += 1
                    failures.append(f"HTTP {status} after {ok[0]} good reads")
                await asyncio.sleep(0.05)

        async def more_reads(n: int = 5) -> None:
            target = ok[0] + n
            await wait_for(lambda: ok[0] >= target or failed[0], "more reads through west's proxy")

        reader = asyncio.create_task(read_forever())
        try:
            await more_reads()
            old_token = self.east_token()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "apiproxy", "keys", "rotate",
                "--kubeconfig", str(self.east.admin_kubeconfig), "--namespace", NAMESPACE,
                stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
            )  # fmt: skip
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            if proc.returncode != 0:
                raise StepFailed(f"apiproxy keys rotate failed: {err.decode(errors='replace')[-300:]}")
            lines.append(f"[east] $ apiproxy keys rotate --kubeconfig ... --namespace {NAMESPACE}")
            keypair = self.east.secret(model.KEYPAIR_SECRET)
            next_pub = (decoded(keypair, "next-pub.pem") or b"").decode()
            if not next_pub:
                raise StepFailed("no next key in east's keypair Secret")
            next_fp = fingerprint(next_pub)
            lines.append(f"   next key {next_fp[:23]}…, signed by the current one")

            def west_trusts_next() -> bool:
                trust = json.loads(decoded(self.west.secret(model.TRUST_SECRET), model.TRUST_KEY) or b"{}")
                entry = trust.get(self.east.uuid) or {}
                nxt = entry.get("authnKeyPubNext")
                return isinstance(nxt, str) and fingerprint(nxt) == next_fp

            await wait_for(west_trusts_next, "west to trust east's next key beside the current one")
            lines.append("1. publishing: east's exporter publishes it with its proof; west trusts both keys")
            if self.east_token() != old_token:
                raise StepFailed("east switched tokens before west trusted the next key")
            await more_reads()

            def signed_by_next() -> bool:
                try:
                    jwt.decode(
                        self.east_token(),
                        key=load_public_key(next_pub),
                        algorithms=["EdDSA"],
                        options={"verify_aud": False},
                    )
                except jwt.PyJWTError:
                    return False
                return True

            await wait_for(signed_by_next, "east's remote secret to carry a token signed by the next key")
            lines.append("2. switched: east re-minted its remote secret with the next key; west accepts it")
            await more_reads()
            lines.append(
                "3. (not shown) promoted: after the longest token lifetime (--api-token-ttl + 5 min)"
            )
        finally:
            stop.set()
            await reader
        lines.append(f"reads of west by east's istiod during the rotation: {ok[0]} ok, {failed[0]} failed")
        if failed[0]:
            raise StepFailed(f"{failed[0]} read(s) failed during the rotation: {failures[:3]}")
        return "\n".join(lines)

    async def close(self) -> None:
        if self.watch is not None:
            self.watch.close()
        if self.watch_session is not None:
            await self.watch_session.close()
        if self.kubectl_watch is not None and self.kubectl_watch.returncode is None:
            self.kubectl_watch.terminate()
            await self.kubectl_watch.wait()


async def federation_tour(workdir: Path, once: bool) -> int:
    began = time.monotonic()
    east, west = Cluster("east", workdir / "east"), Cluster("west", workdir / "west")
    tour = Tour(east, west, workdir)
    say = tour.say
    try:
        say("apiproxy demo: two clusters, east and west, federate by themselves on loopback")
        await asyncio.gather(east.start(), west.start())
        say(f"   apiservers, proxies up; exporters, controllers started in {time.monotonic() - began:.1f}s")
        say(
            "   (each proxy mounts its cluster's trust Secret as a file; the demo copies it as kubelet would)"
        )
        for c in (east, west):
            assert c.box.simulator is not None
            say(f"   {c.name}: cluster UUID {c.uuid}, cluster domain {DEFAULT_CLUSTER_DOMAIN}")
            say(f"      apiserver (simulated) {c.box.simulator.url}")
            pids = {what: proc.pid for what, proc in c.processes.items()}
            say(f"      apiproxy serve         {c.proxy_url}   (pid {pids['proxy']})")
            say(f"      apiproxy exporter      {c.endpoint}   (pid {pids['exporter']})")
            say(f"      apiproxy multicluster  (pid {pids['controller']})   logs: {c.workdir}/*.log")
        await tour.step(
            "0. The parts come up; each controller generates its keypair, each exporter publishes it",
            "no key copied by hand: the keypair Secret is the controller's, public.json the exporter's",
            lambda: _keys_published(east, west),
        )
        await tour.step(
            "1. Create an IstioMulticluster on both sides, each naming the other's metadata endpoint",
            "only the endpoint and the CA that verifies it are given; UUIDs, keys and API hosts are learned",
            tour.create_both,
        )
        await tour.step(
            "2. The conditions turn Ready, as the controllers exchange metadata",
            "private metadata is served only once the other side has pinned and trusts our key",
            tour.until_ready,
        )
        await tour.step(
            "3. Each side's trust store and istiod remote secret, written by its controller",
            "each side trusts exactly the other; the remote secret points at the other side's proxy",
            tour.show_outputs,
        )
        await tour.step(
            "4. East's istiod kubeconfig reads west's pods through west's proxy, and watches a change",
            "the kubeconfig is the remote secret's, unchanged; the apiserver behind the proxy is west's",
            tour.list_and_watch,
        )
        await tour.step(
            "5. Secrets stay west's: a read by east is concealed or refused",
            "istiod needs no Secret of a remote cluster, so the proxy's policy gives none",
            tour.secrets_refused,
        )
        await tour.step(
            "6. Delete the IstioMulticluster on west: east loses access within seconds",
            "no token to revoke: west's controller drops east's key from its trust store; the proxy reloads",
            tour.delete_on_west,
        )
        await tour.step(
            "7. East rotates its key (apiproxy keys rotate) with no failed request in between",
            "peers are shown the next key, vouched for by the current one, before any token uses it",
            tour.rotate_east,
        )
        total = time.monotonic() - began
        ready = tour.timings.get("ready")
        say("\nSummary")
        if ready is not None:
            say(f"   both resources created → both sides Ready: {ready:.2f}s")
        say(f"   whole tour: {total:.1f}s, {tour.failures} failed step(s)")
        say(f"   files and logs: {workdir}")
        if tour.failures:
            return 1
        if once:
            return 0
        say("\nTry it yourself (Ctrl-C stops):")
        say(f"   kubectl --kubeconfig {east.admin_kubeconfig} get istiomulticlusters")
        say(f"   kubectl --kubeconfig {west.admin_kubeconfig} get secrets -n {NAMESPACE}")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        return 0
    finally:
        await tour.close()
        await asyncio.gather(east.stop(), west.stop())


async def _keys_published(east: Cluster, west: Cluster) -> str:
    lines = []
    for c in (east, west):
        secret, doc = await c.wait_up()
        pub = (decoded(secret, "pub.pem") or b"").decode()
        lines.append(f"[{c.name}] GET {c.proxy_url}/api without a token → 401 (deny by default)")
        if fingerprint(doc["authnKeyPub"]) != fingerprint(pub) or doc["clusterUUID"] != c.uuid:
            raise StepFailed(f"{c.name}'s exporter publishes another key or UUID")
        lines.append(f"[{c.name}] Secret {NAMESPACE}/{model.KEYPAIR_SECRET}: key {fingerprint(pub)[:23]}…")
        lines.append(f"[{c.name}] GET {c.endpoint}public/public.json → clusterUUID, authnKeyPub, rootCA")
    return "\n".join(lines)

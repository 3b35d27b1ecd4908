"""``apiproxy demo --proxy-only``: one proxy on loopback, and a guided tour of what it does.

(``apiproxy demo`` without the flag runs the two-cluster federation tour of :mod:`apiproxy.demo.federation`.)

Nothing outside this machine is needed: a simulated kube-apiserver, the proxy in front of it with real
TLS, a remote cluster "alpha" with its own Ed25519 key in a Deckhouse-format trust file, and a kubeconfig
for kubectl. Each step prints what it did and whether it behaved as it should.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from apiproxy.auth.mint import mint_token
from apiproxy.demo.sandbox import Sandbox

KUBECTL = shutil.which("kubectl")


class Tour:
    def __init__(self, box: Sandbox) -> None:
        self.box = box
        self.failures = 0

    def say(self, text: str = "") -> None:
        print(text, flush=True)

    async def step(self, title: str, action: Callable[[], Awaitable[str]]) -> None:
        self.say(f"\n── {title}")
        try:
            detail = await action()
        except Exception as exc:
            self.failures += 1
            self.say(f"   ✗ FAILED: {exc!r}")
            return
        for line in detail.rstrip().splitlines():
            self.say(f"   {line}")
        self.say("   ✓ as expected")

    def session(self, token: str) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self.box.client_ssl()),
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
        )

    async def get(self, path: str, token: str) -> tuple[int, Any]:
        async with self.session(token) as s, s.get(self.box.proxy_url + path) as resp:
            return resp.status, await resp.json(content_type=None)


async def _list_pods(tour: Tour) -> str:
    box = tour.box
    if KUBECTL:
        proc = await asyncio.create_subprocess_exec(
            KUBECTL,
            f"--kubeconfig={box.kubeconfig('alpha')}",
            f"--cache-dir={box.workdir / 'kube-cache'}",
            "get",
            "pods",
            "-A",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 30)
        if proc.returncode != 0:
            raise RuntimeError(err.decode().strip())
        lines = out.decode().splitlines()
        shown = "\n".join(lines[:6])
        header = "$ kubectl get pods -A   (as cluster alpha, through the proxy)"
        return f"{header}\n{shown}\n... {len(lines) - 1} pods"
    status, body = await tour.get("/api/v1/pods?limit=5", box.clusters["alpha"].token)
    if status != 200:
        raise RuntimeError(f"HTTP {status}: {body}")
    names = [f"{p['metadata']['namespace']}/{p['metadata']['name']}" for p in body["items"]]
    return "GET /api/v1/pods?limit=5 →\n" + "\n".join(names)


async def _watch(tour: Tour) -> str:
    box = tour.box
    assert box.simulator is not None
    pod = box.simulator.store.list("pods")[0]
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    path = f"/api/v1/namespaces/{ns}/pods?watch=true&fieldSelector=metadata.name%3D{name}&timeoutSeconds=30"
    lines = [f"GET {path}"]
    async with tour.session(box.clusters["alpha"].token) as s, s.get(box.proxy_url + path) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {await resp.text()}")
        first = json.loads(await asyncio.wait_for(resp.content.readline(), 10))
        lines.append(f"← {first['type']} {ns}/{name}")
        pod["metadata"].setdefault("labels", {})["demo"] = "changed"
        box.simulator.store.update(pod)
        lines.append("   (the pod's labels change in the apiserver: demo=changed)")
        event = json.loads(await asyncio.wait_for(resp.content.readline(), 10))
        if event["type"] != "MODIFIED" or event["object"]["metadata"]["labels"].get("demo") != "changed":
            raise RuntimeError(f"unexpected event {event['type']}")
        lines.append(
            f"← {event['type']} {ns}/{name} labels.demo={event['object']['metadata']['labels']['demo']}"
        )
    return "\n".join(lines)


async def _forged(tour: Tour) -> str:
    box = tour.box
    alpha, beta = box.clusters["alpha"], box.clusters["beta"]
    forged = mint_token(beta.key, alpha.uuid, box.local_uuid, ttl=3600)
    status, body = await tour.get("/api/v1/pods", forged)
    if status != 401:
        raise RuntimeError(f"expected 401, got {status}")
    return f"a token claiming to be alpha, signed with beta's key:\nHTTP {status}: {body['message']}"


async def _denied(tour: Tour) -> str:
    box = tour.box
    status, body = await tour.get(
        "/api/v1/namespaces/istio-system/serviceaccounts", box.clusters["alpha"].token
    )
    if status != 403:
        raise RuntimeError(f"expected 403, got {status}")
    from apiproxy.policy import load_policy
    from apiproxy.policy.requestinfo import classify

    alpha = box.clusters["alpha"]
    explanation = load_policy(box.policy).explain(
        alpha.uuid, alpha.name, classify("GET", "/api/v1/namespaces/istio-system/serviceaccounts")
    )
    return (
        "GET /api/v1/namespaces/istio-system/serviceaccounts as alpha:\n"
        f"HTTP {status} {body['reason']}: {body['message']}\n"
        f"$ apiproxy policy explain --policy {box.policy} --cluster {alpha.uuid} GET "
        f"/api/v1/namespaces/istio-system/serviceaccounts\n{explanation}"
    )


async def _observe(tour: Tour) -> str:
    box = tour.box
    async with aiohttp.ClientSession() as s, s.get(box.metrics_url + "/metrics") as resp:
        text = await resp.text()
    wanted = (
        "apiproxy_requests_total{",
        "apiproxy_authentication_failures_total{",
        "apiproxy_authorization_denials_total{",
        "apiproxy_trusted_clusters ",
    )
    lines = [f"$ curl {box.metrics_url}/metrics   (a few of the series)"]
    lines += [line for line in text.splitlines() if line.startswith(wanted) and not line.endswith(" 0.0")]
    records = box.audit_records()
    if not records:
        raise RuntimeError("no audit records were written")
    lines.append(f"audit log ({box.audit_file}), last {min(3, len(records))} of {len(records)} records:")
    for record in records[-3:]:
        lines.append(json.dumps(record, separators=(",", ":")))
    return "\n".join(lines)


async def tour(workdir: Path, once: bool) -> int:
    box = Sandbox(workdir, seed={"pods": 120, "services": 40, "namespaces": 6})
    await box.start()
    t = Tour(box)
    try:
        alpha = box.clusters["alpha"]
        assert box.simulator is not None
        t.say("apiproxy demo: a simulated kube-apiserver and apiproxy in front of it, on loopback")
        t.say(f"   apiserver (simulated): {box.simulator.url}")
        t.say(f"   apiproxy:              {box.proxy_url}   policy: {box.policy}")
        t.say(f"   remote cluster alpha:  {alpha.uuid}   (trust file: {box.trust_file})")
        await t.step("1. List pods through the proxy with alpha's token", lambda: _list_pods(t))
        await t.step("2. A watch receives an event when an object changes", lambda: _watch(t))
        await t.step("3. A forged token is refused", lambda: _forged(t))
        await t.step("4. A request outside the policy is denied, with the reason", lambda: _denied(t))
        await t.step("5. What operators see: live metrics and the audit log", lambda: _observe(t))
        kubeconfig = box.kubeconfig("alpha")
        t.say("\nTry it yourself:")
        t.say(f"   kubectl --kubeconfig {kubeconfig} get pods -A")
        t.say(f"   kubectl --kubeconfig {kubeconfig} get serviceaccounts -A  # denied by the policy")
        t.say(f"   kubectl --kubeconfig {kubeconfig} get secrets -A          # concealed: none, none read")
        if t.failures:
            t.say(f"\n{t.failures} step(s) failed")
            return 1
        if once:
            return 0
        t.say("\nServing until Ctrl-C ...")
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        t.say("stopping")
        return 0
    finally:
        await box.stop()

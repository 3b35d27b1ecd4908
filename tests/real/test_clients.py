"""Real clients through the proxy in front of a real kube-apiserver: kubectl and the official Python client.

The apiserver is the judge: what a client gets through the proxy is compared with what the apiserver
serves directly, and a refused request is proven never to have reached it (its audit log).
"""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from typing import Any

import aiohttp
import kubernetes
import pytest

from apiproxy.demo.sandbox import Sandbox
from tests.helpers import eventually, kubectl
from tests.real.conftest import Real


def core_api(box: Sandbox) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(config_file=str(box.kubeconfig()))
    )


def proxy_session(box: Sandbox) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        base_url=box.proxy_url,
        headers={"Authorization": f"Bearer {box.clusters['alpha'].token}"},
        connector=aiohttp.TCPConnector(ssl=box.client_ssl()),
    )


def direct_json(real: Real, target: str) -> Any:
    status, _, body = real.cluster.request("GET", target, headers={"Accept": "application/json"})
    assert status == 200, body[:300]
    return json.loads(body)


# -- kubectl -----------------------------------------------------------------------------------------------


async def test_kubectl_get_pods_all_namespaces_wide(real: Real, proxy: Sandbox) -> None:
    result = await kubectl(proxy.kubeconfig(), "get", "pods", "-A", "-o", "wide", "--no-headers")
    assert result.returncode == 0, result.stderr
    rows = {tuple(line.split()[:2]) for line in result.stdout.splitlines()}
    direct = direct_json(real, "/api/v1/pods")["items"]
    assert rows == {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in direct}
    assert len(rows) >= 300
    node_of = {p["metadata"]["name"]: p["spec"]["nodeName"] for p in direct}
    first = result.stdout.splitlines()[0].split()
    assert node_of[first[1]] in first  # -o wide shows the NODE column the apiserver's table serves


async def test_kubectl_api_resources_lists_what_the_apiserver_serves(proxy: Sandbox) -> None:
    result = await kubectl(proxy.kubeconfig(), "api-resources", "--no-headers")
    assert result.returncode == 0, result.stderr
    names = {line.split()[0] for line in result.stdout.splitlines()}
    assert {"pods", "services", "namespaces", "nodes", "endpointslices", "customresourcedefinitions"} <= names


async def test_kubectl_watch_sees_a_change_made_on_the_apiserver(real: Real, proxy: Sandbox) -> None:
    namespace = "accounts"
    name = f"watched-{uuid.uuid4().hex[:8]}"
    proc = await asyncio.create_subprocess_exec(
        "/usr/bin/kubectl",
        f"--kubeconfig={proxy.kubeconfig()}",
        "get",
        "services",
        "-n",
        namespace,
        "-w",
        "--no-headers",
        "--output-watch-events",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:
        first = await asyncio.wait_for(proc.stdout.readline(), 30)
        assert first.split()[0] == b"ADDED"
        real.cluster.kubectl("create", "service", "clusterip", name, "-n", namespace, "--tcp=80:8080")

        async def saw_it() -> bool:
            line = await asyncio.wait_for(proc.stdout.readline(), 30)  # type: ignore[union-attr]
            return name.encode() in line

        await eventually(saw_it, timeout=30)
    finally:
        proc.terminate()
        await proc.wait()
        real.cluster.kubectl("delete", "service", name, "-n", namespace, "--ignore-not-found")


async def test_kubectl_auth_can_i_is_refused_by_the_proxy_not_answered_upstream(
    real: Real, proxy: Sandbox
) -> None:
    before = len(real.cluster.settled_audit_events())
    result = await kubectl(proxy.kubeconfig(), "auth", "can-i", "list", "pods")
    # SelfSubjectAccessReview is a create the policy does not allow: kubectl prints the proxy's Status.
    assert result.returncode != 0
    assert "forbidden" in (result.stdout + result.stderr).lower()
    after = real.cluster.settled_audit_events()[before:]
    assert not [e for e in after if e.get("objectRef", {}).get("resource") == "selfsubjectaccessreviews"]


# -- the official Python client ----------------------------------------------------------------------------


async def test_python_client_pages_with_limit_and_continue(real: Real, proxy: Sandbox) -> None:
    def all_pages() -> tuple[list[str], int]:
        api, names, token, pages = core_api(proxy), [], None, 0
        while True:
            page = api.list_pod_for_all_namespaces(limit=50, _continue=token)
            pages += 1
            names += [p.metadata.name for p in page.items]
            token = page.metadata._continue
            if not token:
                return names, pages

    names, pages = await asyncio.to_thread(all_pages)
    direct = [p["metadata"]["name"] for p in direct_json(real, "/api/v1/pods")["items"]]
    assert sorted(names) == sorted(direct)
    assert pages == -(-len(direct) // 50)


async def test_python_client_watch_with_bookmarks_sees_a_change(real: Real, proxy: Sandbox) -> None:
    namespace = "payments"
    name = f"cm-{uuid.uuid4().hex[:8]}"
    seen: list[str] = []
    started = threading.Event()
    done = threading.Event()
    rv = direct_json(real, f"/api/v1/namespaces/{namespace}/services?limit=1")["metadata"]["resourceVersion"]

    def watch() -> None:
        w = kubernetes.watch.Watch()
        started.set()
        for event in w.stream(
            core_api(proxy).list_namespaced_service,
            namespace,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=30,
        ):
            seen.append(event["type"])
            if event["type"] == "ADDED" and event["object"].metadata.name == name:
                done.set()
                w.stop()

    watcher = asyncio.get_running_loop().run_in_executor(None, watch)
    await asyncio.to_thread(started.wait, 10)
    real.cluster.kubectl("create", "service", "clusterip", name, "-n", namespace, "--tcp=80:80")
    try:
        await asyncio.wait_for(watcher, 40)
        assert done.is_set(), seen
    finally:
        real.cluster.kubectl("delete", "service", name, "-n", namespace, "--ignore-not-found")


async def test_too_old_resource_version_is_410_and_the_client_relists(real: Real, proxy: Sandbox) -> None:
    """A list at a compacted resourceVersion is 410 Gone from etcd, passed through as the apiserver's
    Status; the client relists from now. (A *watch* at revision 1 is no 410 on a fresh cluster: the
    watch cache was filled from revision 1 and still holds every event.)"""
    real.cluster.compact()  # what the apiserver does every 5 minutes: revision 1 is history now
    target = "/api/v1/namespaces/accounts/pods?resourceVersion=1&resourceVersionMatch=Exact"
    async with proxy_session(proxy) as http, http.get(target) as resp:
        status = await resp.json()
    assert resp.status == 410, status
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
    _, _, direct = real.cluster.request("GET", target, headers={"Accept": "application/json"})
    assert json.loads(direct)["message"] == status["message"]

    def relist() -> int:
        from kubernetes.client.rest import ApiException

        api = core_api(proxy)
        try:
            api.list_namespaced_pod("accounts", resource_version="1", resource_version_match="Exact")
        except ApiException as exc:
            assert exc.status == 410, exc.body
            return len(api.list_namespaced_pod("accounts").items)
        raise AssertionError("an exact list at a compacted resourceVersion was served")

    relisted = await asyncio.to_thread(relist)
    assert relisted == len(direct_json(real, "/api/v1/namespaces/accounts/pods")["items"])


async def test_streaming_watch_list_sends_initial_events_then_the_end_bookmark(
    real: Real, proxy: Sandbox
) -> None:
    target = (
        "/api/v1/namespaces/accounts/pods?watch=true&sendInitialEvents=true&allowWatchBookmarks=true"
        "&resourceVersionMatch=NotOlderThan&timeoutSeconds=30"
    )
    expected = {p["metadata"]["name"] for p in direct_json(real, "/api/v1/namespaces/accounts/pods")["items"]}
    added: set[str] = set()
    async with proxy_session(proxy) as http, http.get(target) as resp:
        assert resp.status == 200
        while True:
            event = json.loads(await asyncio.wait_for(resp.content.readline(), 30))
            if event["type"] == "ADDED":
                added.add(event["object"]["metadata"]["name"])
            elif event["type"] == "BOOKMARK":
                annotations = event["object"]["metadata"].get("annotations", {})
                if annotations.get("k8s.io/initial-events-end") == "true":
                    break
    assert added == expected


@pytest.mark.parametrize(
    "target",
    ["/api/v1/namespaces/accounts/pods", "/api/v1/nodes", "/apis/discovery.k8s.io/v1/endpointslices"],
)
async def test_protobuf_list_is_byte_identical_to_the_direct_answer(
    real: Real, proxy: Sandbox, target: str
) -> None:
    rv = direct_json(real, f"{target}?limit=1")["metadata"]["resourceVersion"]
    exact = f"{target}?resourceVersion={rv}&resourceVersionMatch=Exact"
    accept = {"Accept": "application/vnd.kubernetes.protobuf"}
    status, headers, direct = real.cluster.request("GET", exact, headers=accept)
    assert status == 200 and headers["content-type"] == "application/vnd.kubernetes.protobuf"
    async with proxy_session(proxy) as http, http.get(exact, headers=accept) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"] == "application/vnd.kubernetes.protobuf"
        assert await resp.read() == direct
    assert direct.startswith(b"k8s\x00")


async def test_protobuf_watch_is_byte_identical_to_the_direct_stream(real: Real, proxy: Sandbox) -> None:
    namespace = "inventory"
    rv = direct_json(real, f"/api/v1/namespaces/{namespace}/services?limit=1")["metadata"]["resourceVersion"]
    target = f"/api/v1/namespaces/{namespace}/services?watch=true&resourceVersion={rv}&timeoutSeconds=30"
    accept = "application/vnd.kubernetes.protobuf;stream=watch"
    name = f"watched-{uuid.uuid4().hex[:8]}"
    ctx = real.cluster.admin_ssl()

    async def frames(session: aiohttp.ClientSession, count: int) -> list[bytes]:
        async with session.get(target, headers={"Accept": accept}) as resp:
            assert resp.status == 200, await resp.text()
            assert resp.headers["Content-Type"] == accept
            out = []
            for _ in range(count):
                size = int.from_bytes(await asyncio.wait_for(resp.content.readexactly(4), 30), "big")
                out.append(await resp.content.readexactly(size))
            return out

    async with (
        proxy_session(proxy) as via_proxy,
        aiohttp.ClientSession(base_url=real.cluster.url, connector=aiohttp.TCPConnector(ssl=ctx)) as direct,
    ):
        proxied_task = asyncio.create_task(frames(via_proxy, 2))
        direct_task = asyncio.create_task(frames(direct, 2))
        # Both watches start from the same resourceVersion, so both see these two events whenever they
        # connect.
        real.cluster.kubectl("create", "service", "clusterip", name, "-n", namespace, "--tcp=80:80")
        real.cluster.kubectl("label", "service", name, "-n", namespace, "changed=yes")
        try:
            proxied, direct_frames = await asyncio.wait_for(asyncio.gather(proxied_task, direct_task), 40)
        finally:
            real.cluster.kubectl("delete", "service", name, "-n", namespace, "--ignore-not-found")
    assert proxied == direct_frames
    assert name.encode() in proxied[0]

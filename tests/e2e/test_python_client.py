"""The official kubernetes Python client through the proxy: list, and a watch stream."""

from __future__ import annotations

import asyncio
import ssl
import threading
from pathlib import Path

import kubernetes

from apiproxy.demo.sandbox import Sandbox


def core_api(box: Sandbox) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(config_file=str(box.kubeconfig()))
    )


async def test_list_pods_in_all_namespaces(sandbox: Sandbox) -> None:
    assert sandbox.simulator is not None
    pods = await asyncio.to_thread(lambda: core_api(sandbox).list_pod_for_all_namespaces())
    assert len(pods.items) == len(sandbox.simulator.store.list("pods"))
    assert all(p.status.pod_ip for p in pods.items)


async def test_list_pages_with_limit_and_continue(sandbox: Sandbox) -> None:
    assert sandbox.simulator is not None

    def all_pages() -> list[str]:
        api, names, token = core_api(sandbox), [], None
        while True:
            page = api.list_pod_for_all_namespaces(limit=7, _continue=token)
            names += [p.metadata.name for p in page.items]
            token = page.metadata._continue
            if not token:
                return names

    names = await asyncio.to_thread(all_pages)
    assert sorted(names) == sorted(p["metadata"]["name"] for p in sandbox.simulator.store.list("pods"))


async def test_watch_stream_receives_changes(sandbox: Sandbox) -> None:
    store = sandbox.simulator.store if sandbox.simulator else None
    assert store is not None
    service = store.list("services")[0]
    ns, name = service["metadata"]["namespace"], service["metadata"]["name"]
    seen: list[tuple[str, str]] = []
    got_added = threading.Event()
    loop = asyncio.get_running_loop()

    def watch() -> None:
        w = kubernetes.watch.Watch()
        for event in w.stream(
            core_api(sandbox).list_namespaced_service,
            ns,
            field_selector=f"metadata.name={name}",
            timeout_seconds=20,
        ):
            seen.append((event["type"], event["object"].metadata.name))
            if event["type"] == "ADDED":
                got_added.set()
            if event["type"] == "DELETED":
                w.stop()

    watcher = loop.run_in_executor(None, watch)
    await asyncio.wait_for(asyncio.to_thread(got_added.wait, 20), 25)
    service["metadata"].setdefault("labels", {})["changed"] = "1"
    store.update(service)
    store.delete("services", ns, name)
    await asyncio.wait_for(watcher, 25)
    assert seen == [("ADDED", name), ("MODIFIED", name), ("DELETED", name)]


async def test_upstream_hop_capped_at_tls12_still_serves(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, settings={"upstream_tls_max_version": "1.2"})
    await box.start()
    try:
        assert box.proxy is not None and box.proxy.upstream.ssl_context is not None
        assert box.proxy.upstream.ssl_context.maximum_version == ssl.TLSVersion.TLSv1_2
        pods = await asyncio.to_thread(lambda: core_api(box).list_namespaced_pod("istio-system"))
        assert pods.items
    finally:
        await box.stop()

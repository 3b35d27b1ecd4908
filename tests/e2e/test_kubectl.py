"""The real kubectl (client-go) through the proxy, as a remote cluster's operator would use it."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from apiproxy.demo.sandbox import Sandbox
from tests.helpers import KUBECTL, kubectl

pytestmark = pytest.mark.skipif(not Path(KUBECTL).exists(), reason="kubectl is not installed")


async def test_get_pods_in_all_namespaces(sandbox: Sandbox) -> None:
    assert sandbox.simulator is not None
    result = await kubectl(sandbox.kubeconfig(), "get", "pods", "-A", "--no-headers")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    pods = sandbox.simulator.store.list("pods")
    assert len(lines) == len(pods)
    first = pods[0]["metadata"]
    assert any(line.split()[:2] == [first["namespace"], first["name"]] for line in lines)


async def test_get_services_as_json(sandbox: Sandbox) -> None:
    assert sandbox.simulator is not None
    namespace = sandbox.simulator.store.list("services")[0]["metadata"]["namespace"]
    result = await kubectl(sandbox.kubeconfig(), "get", "svc", "-n", namespace, "-o", "json")
    assert result.returncode == 0, result.stderr
    names = sorted(item["metadata"]["name"] for item in result.json()["items"])
    expected = sorted(s["metadata"]["name"] for s in sandbox.simulator.store.list("services", namespace))
    assert names == expected and names


async def test_api_resources(sandbox: Sandbox) -> None:
    result = await kubectl(sandbox.kubeconfig(), "api-resources", "--no-headers")
    assert result.returncode == 0, result.stderr
    resources = {line.split()[0] for line in result.stdout.splitlines()}
    assert {"pods", "services", "namespaces", "nodes", "endpointslices"} <= resources


async def test_get_pods_watch_receives_an_event(sandbox: Sandbox) -> None:
    assert sandbox.simulator is not None
    pod = sandbox.simulator.store.list("pods")[0]
    ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
    kubeconfig = sandbox.kubeconfig()
    proc = await asyncio.create_subprocess_exec(
        KUBECTL,
        f"--kubeconfig={kubeconfig}",
        f"--cache-dir={kubeconfig.parent / 'kube-cache'}",
        "get",
        "pods",
        "-n",
        ns,
        "--watch",
        "--output-watch-events",
        "--no-headers",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    try:

        async def line_about(event: str) -> str:
            while True:
                raw = await proc.stdout.readline()  # type: ignore[union-attr]
                if not raw:
                    raise AssertionError("kubectl --watch ended early")
                text = raw.decode()
                if text.split()[:2] == [event, name]:
                    return text

        await asyncio.wait_for(line_about("ADDED"), 20)
        pod["metadata"].setdefault("labels", {})["touched"] = "yes"
        sandbox.simulator.store.update(pod)
        await asyncio.wait_for(line_about("MODIFIED"), 20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()

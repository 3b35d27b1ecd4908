"""The policy end to end: what kubectl may and may not do through the proxy, and live revocation."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp
import pytest

from apiproxy.demo.sandbox import POLICIES_DIR, Sandbox
from tests.helpers import KUBECTL, eventually, kubectl

HAVE_KUBECTL = Path(KUBECTL).exists()


def a_pod(box: Sandbox) -> tuple[str, str]:
    assert box.simulator is not None
    pod = box.simulator.store.list("pods")[0]["metadata"]
    return pod["namespace"], pod["name"]


@pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")
@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["get", "endpoints", "-A"], 'cannot list resource "endpoints"'),
        (["delete", "pod", "{pod}", "-n", "{ns}"], 'cannot delete resource "pods"'),
        (["exec", "{pod}", "-n", "{ns}", "--", "true"], ""),
        (["logs", "{pod}", "-n", "{ns}"], 'cannot get resource "pods/log"'),
        (["port-forward", "{pod}", "-n", "{ns}", "18080:80"], ""),
        (["label", "pod", "{pod}", "-n", "{ns}", "x=y"], 'cannot patch resource "pods"'),
        (["create", "namespace", "intruder"], 'cannot create resource "namespaces"'),
    ],
)
async def test_kubectl_writes_and_sensitive_reads_are_refused(
    sandbox: Sandbox, args: list[str], words: str
) -> None:
    ns, pod = a_pod(sandbox)
    argv = [a.format(ns=ns, pod=pod) for a in args]
    result = await kubectl(sandbox.kubeconfig(), *argv, timeout=30)
    assert result.returncode != 0
    assert "Forbidden" in result.stderr or "forbidden" in result.stderr, result.stderr
    assert words in result.stderr
    assert sandbox.simulator is not None
    writes = [r for r in sandbox.simulator.requests if r.method != "GET"]
    assert writes == []


@pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")
async def test_kubectl_apply_is_refused(sandbox: Sandbox) -> None:
    manifest = sandbox.workdir / "cm.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: evil, namespace: default}\ndata: {a: b}\n"
    )
    result = await kubectl(sandbox.kubeconfig(), "apply", "-f", str(manifest), "--validate=false")
    assert result.returncode != 0
    assert "forbidden" in result.stderr.lower()
    assert sandbox.simulator is not None
    assert [r for r in sandbox.simulator.requests if r.method != "GET"] == []


@pytest.mark.skipif(not HAVE_KUBECTL, reason="kubectl is not installed")
async def test_mesh_config_is_readable_by_name_only(sandbox: Sandbox) -> None:
    config = sandbox.kubeconfig()
    ok = await kubectl(config, "get", "configmap", "istio", "-n", "istio-system", "-o", "json")
    assert ok.returncode == 0, ok.stderr
    assert ok.json()["metadata"]["name"] == "istio"
    # Listing them is concealed (istiod 1.26 watches every configmap): nothing found, nothing forwarded.
    listed = await kubectl(config, "get", "configmaps", "-n", "istio-system")
    assert listed.returncode == 0 and "No resources found" in listed.stderr, listed.stderr
    assert sandbox.simulator is not None
    assert [
        r
        for r in sandbox.simulator.requests
        if r.raw_target.startswith("/api/v1/namespaces/istio-system/configmaps?")
    ] == []


async def test_review_posts_are_the_only_writes_that_pass(sandbox: Sandbox) -> None:
    token = sandbox.clusters["alpha"].token
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "abc"}}
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=sandbox.client_ssl()), headers={"Authorization": f"Bearer {token}"}
    ) as s:
        async with s.post(
            sandbox.proxy_url + "/apis/authentication.k8s.io/v1/tokenreviews", json=review
        ) as r:
            assert r.status == 201, await r.text()
            assert (await r.json())["kind"] == "TokenReview"
        wrong_kind = dict(review, kind="SubjectAccessReview")
        async with s.post(
            sandbox.proxy_url + "/apis/authentication.k8s.io/v1/tokenreviews", json=wrong_kind
        ) as r:
            assert r.status == 400
        async with s.post(
            sandbox.proxy_url + "/api/v1/namespaces", json={"apiVersion": "v1", "kind": "Namespace"}
        ) as r:
            assert r.status == 403
    assert sandbox.simulator is not None
    posts = [r.raw_target for r in sandbox.simulator.requests if r.method == "POST"]
    assert posts == ["/apis/authentication.k8s.io/v1/tokenreviews"]


async def test_policy_edit_closes_a_watch_it_no_longer_allows(sandbox: Sandbox, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text((POLICIES_DIR / "istio-remote.yaml").read_text())
    sandbox.policy = policy
    await sandbox.stop()
    await sandbox.start()
    token = sandbox.clusters["alpha"].token
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=sandbox.client_ssl()), headers={"Authorization": f"Bearer {token}"}
    ) as s:
        nodes = await s.get(sandbox.proxy_url + "/api/v1/nodes?watch=true")
        pods = await s.get(sandbox.proxy_url + "/api/v1/pods?watch=true")
        assert nodes.status == pods.status == 200
        await asyncio.wait_for(nodes.content.readline(), 5)
        await asyncio.wait_for(pods.content.readline(), 5)

        # The admin takes nodes out of the policy (as a ConfigMap update would: a new file renamed in).
        text = policy.read_text().replace('resources: ["namespaces", "pods", "services", "nodes"]',
                                          'resources: ["namespaces", "pods", "services"]')  # fmt: skip
        assert "nodes" not in text.split("service-registry-core")[1].split("- name:")[0]
        staged = tmp_path / "policy.new"
        staged.write_text(text)
        staged.replace(policy)

        async def drained() -> bytes:
            return await nodes.content.read()

        rest = await asyncio.wait_for(drained(), 10)  # the nodes watch ends, cleanly
        assert all(json.loads(line)["type"] in ("ADDED", "BOOKMARK") for line in rest.splitlines() if line)
        assert sandbox.proxy is not None
        handler = sandbox.proxy.handler
        await eventually(lambda: len(handler.watches) == 1)  # the pods watch lives on
        async with s.get(sandbox.proxy_url + "/api/v1/nodes?watch=true") as again:
            assert again.status == 403
        pods.close()
        nodes.close()


async def test_policy_check_passes_for_both_shipped_policies() -> None:
    import sys

    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "apiproxy", "policy", "check",
        str(POLICIES_DIR / "istio-remote.yaml"), str(POLICIES_DIR / "discovery-minimal.yaml"),
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    assert proc.returncode == 0, out.decode()

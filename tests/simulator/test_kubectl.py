"""The real kubectl against the simulator over TLS: discovery, tables, paging, JSON output."""

from __future__ import annotations

import asyncio
import json
import ssl
from pathlib import Path

import pytest

from apiproxy.certs import write_serving_bundle
from apiproxy.simulator import Simulator, seed_mesh

KUBECTL = Path("/usr/bin/kubectl")

pytestmark = pytest.mark.skipif(not KUBECTL.exists(), reason="kubectl not installed")


async def kubectl(kubeconfig: Path, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        str(KUBECTL),
        f"--kubeconfig={kubeconfig}",
        "--cache-dir",
        str(kubeconfig.parent / "cache"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0, err.decode()
    return out.decode()


async def test_kubectl(tmp_path: Path) -> None:
    files = write_serving_bundle(tmp_path, "simulator")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(files.cert_file, files.key_file)
    sim = Simulator(tokens={"kubectl-token"})
    seed_mesh(sim.store, pods=30, services=6, namespaces=2, nodes=2)
    await sim.start(host="127.0.0.1", port=0, ssl_context=ctx)
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "sim",
                        "cluster": {"server": sim.url, "certificate-authority": str(files.ca_file)},
                    }
                ],
                "users": [{"name": "sim", "user": {"token": "kubectl-token"}}],
                "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": "sim"}}],
                "current-context": "sim",
            }
        )
    )
    try:
        pods = await kubectl(kubeconfig, "get", "pods", "-A", "-o", "wide")
        lines = pods.splitlines()
        assert lines[0].split()[:6] == ["NAMESPACE", "NAME", "READY", "STATUS", "RESTARTS", "AGE"]
        assert len(lines) == 1 + sim.store.count("pods")
        assert any(" 2/2 " in line and " Running " in line and "worker-0" in line for line in lines)

        resources = await kubectl(kubeconfig, "api-resources")
        rows = {line.split()[0]: line.split() for line in resources.splitlines()[1:]}
        assert rows["pods"][1:] == ["po", "v1", "true", "Pod"]
        assert rows["endpointslices"][1:] == ["discovery.k8s.io/v1", "true", "EndpointSlice"]
        assert "tokenreviews" in rows and "nodes" in rows

        ns = "bookinfo"
        listed = json.loads(await kubectl(kubeconfig, "get", "pods", "-n", ns, "-o", "json"))
        assert listed["kind"] == "List"
        assert {p["metadata"]["name"] for p in listed["items"]} == {
            p["metadata"]["name"] for p in sim.store.list("pods", ns)
        }
        assert all(p["kind"] == "Pod" for p in listed["items"])

        await kubectl(kubeconfig, "label", "configmap", "istio", "-n", "istio-system", "team=mesh")
        assert sim.store.get("configmaps", "istio-system", "istio")["metadata"]["labels"] == {"team": "mesh"}
        svc = await kubectl(kubeconfig, "get", "svc", "-n", "istio-system")
        assert "istio-ingressgateway" in svc and "LoadBalancer" in svc
    finally:
        await sim.stop()

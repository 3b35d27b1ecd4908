"""Custom resources from a CRD: kube's semantics for generation, /status, finalizers and JSON patch, and
what kubectl sees (discovery, printer columns)."""

from __future__ import annotations

import secrets
import ssl
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiproxy.certs import write_serving_bundle
from apiproxy.kubeconfig import render_kubeconfig
from apiproxy.simulator import Simulator
from apiproxy.simulator.store import JSONPatchError, apply_json_patch
from apiproxy.status import StatusError
from tests.helpers import kubectl

ROOT = Path(__file__).resolve().parents[2]
CRD = yaml.safe_load((ROOT / "deploy" / "multicluster" / "crd.yaml").read_text())
R = "istiomulticlusters"


def new_store() -> Any:
    sim = Simulator()
    sim.add_crd(CRD)
    sim.store.create(
        {"apiVersion": "deckhouse.io/v1alpha1", "kind": "IstioMulticluster", "metadata": {"name": "a"},
         "spec": {"metadataEndpoint": "https://x/"}, "status": {"ignored": True}}
    )  # fmt: skip
    return sim.store


def test_status_is_ignored_on_create_and_generation_starts_at_one() -> None:
    obj = new_store().get(R, None, "a")
    assert "status" not in obj and obj["metadata"]["generation"] == 1


def test_generation_counts_spec_changes_only() -> None:
    store = new_store()
    assert store.patch(R, None, "a", {"metadata": {"annotations": {"x": "y"}}})["metadata"]["generation"] == 1
    assert (
        store.patch(R, None, "a", {"status": {"a": 1}}, subresource="status")["metadata"]["generation"] == 1
    )
    assert store.patch(R, None, "a", {"spec": {"enableIngressGateway": False}})["metadata"]["generation"] == 2


def test_main_endpoint_keeps_status_and_status_endpoint_keeps_the_rest() -> None:
    store = new_store()
    store.patch(R, None, "a", {"status": {"a": 1}}, subresource="status")
    after_main = store.patch(R, None, "a", {"status": {"a": 2}, "spec": {"metadataEndpoint": "https://y/"}})
    assert after_main["status"] == {"a": 1} and after_main["spec"]["metadataEndpoint"] == "https://y/"
    after_status = store.patch(
        R, None, "a", {"status": {"a": 3}, "spec": {"metadataEndpoint": "https://z/"}}, subresource="status"
    )
    assert after_status["status"] == {"a": 3} and after_status["spec"]["metadataEndpoint"] == "https://y/"


def test_deletion_waits_for_finalizers() -> None:
    store = new_store()
    store.patch(R, None, "a", {"metadata": {"finalizers": ["x/cleanup"]}})
    marked = store.delete(R, None, "a")
    assert marked["metadata"]["deletionTimestamp"]
    assert store.get(R, None, "a") is not None
    store.json_patch(R, None, "a", [{"op": "remove", "path": "/metadata/finalizers"}])
    assert store.get(R, None, "a") is None


def test_json_patch_test_op_is_kubes_optimistic_lock() -> None:
    store = new_store()
    rv = store.get(R, None, "a")["metadata"]["resourceVersion"]
    lock = {"op": "test", "path": "/metadata/resourceVersion", "value": rv}
    store.json_patch(R, None, "a", [lock, {"op": "add", "path": "/metadata/labels", "value": {"k": "v"}}])
    with pytest.raises(StatusError) as err:
        store.json_patch(R, None, "a", [{"op": "test", "path": "/metadata/resourceVersion", "value": rv}])
    assert err.value.code == 422


@pytest.mark.parametrize(
    "ops, expected",
    [
        ([{"op": "add", "path": "/a/-", "value": 3}], {"a": [1, 2, 3]}),
        ([{"op": "replace", "path": "/a/0", "value": 9}], {"a": [9, 2]}),
        ([{"op": "remove", "path": "/a/1"}], {"a": [1]}),
        ([{"op": "copy", "from": "/a", "path": "/b"}], {"a": [1, 2], "b": [1, 2]}),
        ([{"op": "move", "from": "/a", "path": "/c~1d"}], {"c/d": [1, 2]}),
    ],
)
def test_json_patch_ops(ops: list[Any], expected: Any) -> None:
    assert apply_json_patch({"a": [1, 2]}, ops) == expected


@pytest.mark.parametrize(
    "ops",
    [[{"op": "remove", "path": "/nope"}], [{"op": "bogus", "path": "/a"}], [{"op": "add", "path": "a"}], {}],
)
def test_bad_json_patches_are_refused(ops: Any) -> None:
    with pytest.raises(JSONPatchError):
        apply_json_patch({"a": [1, 2]}, ops)


async def test_kubectl_discovers_the_crd_and_prints_its_columns(tmp_path: Path) -> None:
    token = secrets.token_urlsafe(8)
    sim = Simulator(tokens={token})
    sim.add_crd(CRD)
    tls = write_serving_bundle(tmp_path, "simulator")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(tls.cert_file, tls.key_file)
    await sim.start(ssl_context=ctx)
    try:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(render_kubeconfig(sim.url, tls.ca_file.read_bytes(), token=token, name="sim"))
        sim.store.create(
            {"apiVersion": "deckhouse.io/v1alpha1", "kind": "IstioMulticluster", "metadata": {"name": "east"},
             "spec": {"metadataEndpoint": "https://x/"}}
        )  # fmt: skip
        conditions = [
            {"type": "Other", "status": "False"},
            {"type": "Ready", "status": "True", "reason": "Established"},
        ]
        status = {"remoteClusterUUID": "u-1", "conditions": conditions}
        sim.store.patch(R, None, "east", {"status": status}, subresource="status")
        resources = await kubectl(kubeconfig, "api-resources", "--api-group=deckhouse.io")
        assert resources.returncode == 0, resources.stderr
        assert "istiomulticlusters" in resources.stdout
        table = await kubectl(kubeconfig, "get", "istiomulticlusters")
        assert table.returncode == 0, table.stderr
        header, row = table.stdout.splitlines()
        assert header.split()[:3] == ["NAME", "READY", "REASON"]
        assert row.split()[:4] == ["east", "True", "Established", "u-1"]
    finally:
        await sim.stop()

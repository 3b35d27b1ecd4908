"""The store on its own: revisions, history, snapshots, cascading namespace deletion."""

from __future__ import annotations

import pytest

from apiproxy.simulator import Store, seed_mesh
from apiproxy.status import StatusError


def test_seed_is_deterministic_and_consistent() -> None:
    a, b = Store(), Store()
    summary = seed_mesh(a, pods=20, services=4, namespaces=2, nodes=2)
    seed_mesh(b, pods=20, services=4, namespaces=2, nodes=2)
    strip = lambda objs: [(o["metadata"]["name"], o["metadata"]["uid"]) for o in objs]  # noqa: E731
    assert strip(a.list("pods")) == strip(b.list("pods"))
    assert summary.counts["pods"] == 20 + 4  # app pods + coredns x2, istiod, ingress gateway
    ips = {p["status"]["podIP"] for p in a.list("pods")}
    for slc in a.list("endpointslices"):
        for ep in slc["endpoints"]:
            if "targetRef" in ep:
                assert ep["addresses"][0] in ips


def test_revisions_and_errors() -> None:
    s = Store()
    obj = s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}})
    assert obj["metadata"]["resourceVersion"] == str(s.resource_version)
    with pytest.raises(StatusError) as err:
        s.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}})
    assert err.value.code == 409 and err.value.reason == "AlreadyExists"
    with pytest.raises(StatusError) as err:
        s.delete("ns", None, "missing")
    assert err.value.code == 404 and err.value.message == 'namespaces "missing" not found'
    gen = s.create(
        {"apiVersion": "v1", "kind": "Pod", "metadata": {"generateName": "web-", "namespace": "a"}}
    )
    assert gen["metadata"]["name"].startswith("web-") and len(gen["metadata"]["name"]) == 9


def test_namespace_deletion_cascades() -> None:
    s = Store()
    seed_mesh(s, pods=10, services=2, namespaces=2, nodes=1)
    ns = "bookinfo"
    assert s.list("pods", ns)
    s.delete("namespaces", None, ns)
    for kind in ("pods", "services", "endpointslices", "configmaps"):
        assert s.list(kind, ns) == []


def test_snapshot_iteration_undoes_later_changes() -> None:
    s = Store()
    for name in ("a", "b", "c"):
        s.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
    rv = s.resource_version
    s.delete("nodes", None, "b")
    s.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "bb"}})
    s.patch("nodes", None, "c", {"metadata": {"labels": {"x": "1"}}})
    coll = s.collection("nodes")
    snap = list(coll.snapshot_iter(rv, None))
    assert [o.name for o in snap] == ["a", "b", "c"]
    assert snap[2].labels == {}
    assert [o.name for o in coll.snapshot_iter(rv, "a")] == ["b", "c"]

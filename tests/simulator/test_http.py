"""Reads, writes, errors and discovery over HTTP, checked against what kube-apiserver answers."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from apiproxy.simulator import Simulator
from apiproxy.simulator.seed import PADDING_ANNOTATION

TABLE_ACCEPT = (
    "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,"
    "application/json"
)
DISCOVERY_ACCEPT = (
    "application/json;g=apidiscovery.k8s.io;v=v2;as=APIGroupDiscoveryList,"
    "application/json;g=apidiscovery.k8s.io;v=v2beta1;as=APIGroupDiscoveryList,application/json"
)


async def get_json(http: aiohttp.ClientSession, path: str, status: int = 200, **kw: Any) -> Any:
    async with http.get(path, **kw) as resp:
        body = await resp.read()
        assert resp.status == status, body
        assert resp.headers["Content-Type"] == "application/json"
        return json.loads(body)


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


async def test_health_is_public_and_everything_else_needs_a_token(sim: Simulator) -> None:
    async with aiohttp.ClientSession(base_url=sim.url) as anon:
        for path in ("/healthz", "/livez", "/readyz"):
            async with anon.get(path) as resp:
                assert resp.status == 200
                assert await resp.text() == "ok"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic eDp5"}):
            async with anon.get("/api/v1/pods", headers=headers) as resp:
                assert resp.status == 401
                body = await resp.json()
        assert body == {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": "Unauthorized",
            "reason": "Unauthorized",
            "code": 401,
        }
        sim.tokens.add("rotated")
        async with anon.get("/version", headers={"Authorization": "Bearer rotated"}) as resp:
            assert resp.status == 200
            assert (await resp.json())["gitVersion"].startswith("v1.30.")
    assert [r.token for r in sim.requests[-2:]] == [None, "rotated"]
    assert sim.requests[-1].raw_target == "/version"


async def test_requests_are_recorded_raw(sim: Simulator, http: aiohttp.ClientSession) -> None:
    target = "/api/v1/namespaces/bookinfo/pods?labelSelector=app%3Dreviews&limit=5"
    async with http.get(aiohttp.client.URL(target, encoded=True)) as resp:
        assert resp.status == 200
    rec = sim.requests[-1]
    assert (rec.method, rec.raw_target, rec.token) == ("GET", target, "sa-token")
    assert rec.headers["Authorization"] == "Bearer sa-token"


async def test_discovery(http: aiohttp.ClientSession) -> None:
    api = await get_json(http, "/api", headers={"Accept": DISCOVERY_ACCEPT})
    assert api["kind"] == "APIVersions" and api["versions"] == ["v1"]
    core = await get_json(http, "/api/v1")
    by_name = {r["name"]: r for r in core["resources"]}
    assert by_name["pods"]["shortNames"] == ["po"] and by_name["pods"]["categories"] == ["all"]
    assert by_name["pods"]["namespaced"] and not by_name["nodes"]["namespaced"]
    assert "watch" in by_name["services"]["verbs"] and by_name["services"]["singularName"] == "service"
    assert {"pods/log", "pods/status", "pods/exec", "pods/eviction"} <= set(by_name)
    assert by_name["pods/eviction"]["group"] == "policy"
    groups = await get_json(http, "/apis")
    assert [g["name"] for g in groups["groups"]] == [
        "discovery.k8s.io",
        "authentication.k8s.io",
        "authorization.k8s.io",
    ]
    group = await get_json(http, "/apis/discovery.k8s.io")
    assert group["preferredVersion"] == {"groupVersion": "discovery.k8s.io/v1", "version": "v1"}
    es = await get_json(http, "/apis/discovery.k8s.io/v1/")
    assert [r["name"] for r in es["resources"]] == ["endpointslices"]
    authz = await get_json(http, "/apis/authorization.k8s.io/v1")
    sar = next(r for r in authz["resources"] if r["name"] == "subjectaccessreviews")
    assert sar["verbs"] == ["create"]


@pytest.mark.parametrize(
    ("method", "path", "code", "reason"),
    [
        ("GET", "/api/v1/widgets", 404, "NotFound"),
        ("GET", "/apis/apps/v1/deployments", 404, "NotFound"),
        ("GET", "/api/v2/pods", 404, "NotFound"),
        ("GET", "/api/v1/pods/foo", 404, "NotFound"),
        ("GET", "/api/v1/namespaces/default/nodes", 404, "NotFound"),
        ("GET", "/api/v1/namespaces/default/pods/x/bogus", 404, "NotFound"),
        ("GET", "/nope", 404, "NotFound"),
        ("GET", "/apis/authentication.k8s.io/v1/tokenreviews", 405, "MethodNotAllowed"),
        ("POST", "/api/v1/namespaces/default/pods/x", 405, "MethodNotAllowed"),
        ("PUT", "/api/v1/namespaces/default/pods", 405, "MethodNotAllowed"),
        ("POST", "/api", 405, "MethodNotAllowed"),
    ],
)
async def test_error_statuses(
    http: aiohttp.ClientSession, method: str, path: str, code: int, reason: str
) -> None:
    async with http.request(method, path, json={}) as resp:
        assert resp.status == code
        assert resp.headers["Content-Type"] == "application/json"
        body = await resp.json()
    assert (body["kind"], body["code"], body["reason"], body["status"]) == ("Status", code, reason, "Failure")


async def test_get_and_not_found(sim: Simulator, http: aiohttp.ClientSession) -> None:
    pod = sim.store.list("pods", "bookinfo")[0]
    name = pod["metadata"]["name"]
    got = await get_json(http, f"/api/v1/namespaces/bookinfo/pods/{name}")
    assert got == pod
    assert got["kind"] == "Pod" and got["apiVersion"] == "v1"
    assert {c["name"] for c in got["spec"]["containers"]} >= {"istio-proxy"}
    assert got["metadata"]["ownerReferences"][0]["kind"] == "ReplicaSet"
    assert got["status"]["phase"] == "Running" and got["status"]["podIP"]
    missing = await get_json(http, "/api/v1/namespaces/bookinfo/pods/x", status=404)
    assert missing["message"] == 'pods "x" not found'
    assert missing["details"] == {"name": "x", "kind": "pods"}
    slc = await get_json(http, "/apis/discovery.k8s.io/v1/namespaces/bookinfo/endpointslices/x", status=404)
    assert slc["message"] == 'endpointslices.discovery.k8s.io "x" not found'
    assert slc["details"] == {"name": "x", "group": "discovery.k8s.io", "kind": "endpointslices"}
    node = await get_json(http, "/api/v1/nodes/worker-01")
    assert node["metadata"]["labels"]["topology.kubernetes.io/zone"] == "eu-west-1b"
    async with http.get(f"/api/v1/namespaces/bookinfo/pods/{name}/log?tailLines=2") as resp:
        assert resp.status == 200 and resp.content_type == "text/plain"
        assert len((await resp.text()).splitlines()) == 2
    status = await get_json(http, f"/api/v1/namespaces/bookinfo/pods/{name}/status")
    assert status["metadata"]["name"] == name


async def test_list_shape_sorting_and_selectors(sim: Simulator, http: aiohttp.ClientSession) -> None:
    lst = await get_json(http, "/api/v1/pods")
    assert (lst["kind"], lst["apiVersion"]) == ("PodList", "v1")
    assert lst["metadata"]["resourceVersion"] == str(sim.store.resource_version)
    keys = [(i["metadata"]["namespace"], i["metadata"]["name"]) for i in lst["items"]]
    assert keys == sorted(f"{ns}/{n}" for ns, n in keys) or keys == sorted(keys)
    assert "kind" not in lst["items"][0]  # typed list items carry no TypeMeta
    assert len(lst["items"]) == sim.store.count("pods")

    ns_only = await get_json(http, "/api/v1/namespaces/bookinfo/pods")
    assert {i["metadata"]["namespace"] for i in ns_only["items"]} == {"bookinfo"}
    sel = await get_json(
        http, "/api/v1/pods", params={"labelSelector": "app in (productpage,reviews),version!=v2"}
    )
    assert sel["items"] and all(
        i["metadata"]["labels"]["app"] in ("productpage", "reviews")
        and i["metadata"]["labels"]["version"] != "v2"
        for i in sel["items"]
    )
    node = sel["items"][0]["spec"]["nodeName"]
    by_node = await get_json(
        http, "/api/v1/pods", params={"fieldSelector": f"spec.nodeName={node},status.phase!=Failed"}
    )
    assert by_node["items"] and {i["spec"]["nodeName"] for i in by_node["items"]} == {node}
    cm = await get_json(
        http, "/api/v1/namespaces/istio-system/configmaps", params={"fieldSelector": "metadata.name=istio"}
    )
    assert names(cm["items"]) == ["istio"]

    bad = await get_json(http, "/api/v1/pods", status=400, params={"fieldSelector": "spec.foo=bar"})
    assert bad["reason"] == "BadRequest"
    assert bad["message"] == (
        'Unable to find "/v1, Resource=pods" that match label selector "", field selector "spec.foo=bar": '
        "field label not supported: spec.foo"
    )
    bad = await get_json(http, "/api/v1/pods", status=400, params={"labelSelector": "app in x"})
    assert bad["message"].startswith("unable to parse requirement")


async def test_paging_continue_and_consistent_snapshot(sim: Simulator, http: aiohttp.ClientSession) -> None:
    full = await get_json(http, "/api/v1/pods")
    first = await get_json(http, "/api/v1/pods", params={"limit": "7"})
    assert len(first["items"]) == 7
    assert first["metadata"]["remainingItemCount"] == len(full["items"]) - 7
    token, list_rv = first["metadata"]["continue"], first["metadata"]["resourceVersion"]
    # Mutations between pages do not show up: pages are a snapshot at the first page's RV.
    victim = full["items"][10]["metadata"]
    sim.store.delete("pods", victim["namespace"], victim["name"])
    sim.store.create({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "aaa-new", "namespace": "zzz"}})
    got = list(first["items"])
    while token:
        page = await get_json(http, "/api/v1/pods", params={"limit": "7", "continue": token})
        assert page["metadata"]["resourceVersion"] == list_rv
        got += page["items"]
        token = page["metadata"].get("continue")
    assert names(got) == names(full["items"])
    # resourceVersion=0 is served from the "watch cache", which ignores limit.
    rv0 = await get_json(http, "/api/v1/pods", params={"limit": "5", "resourceVersion": "0"})
    assert "continue" not in rv0["metadata"] and len(rv0["items"]) == len(full["items"])
    both = await get_json(
        http,
        "/api/v1/pods",
        status=400,
        params={"continue": first["metadata"]["continue"], "resourceVersion": "5"},
    )
    assert both["reason"] == "BadRequest"
    garbage = await get_json(http, "/api/v1/pods", status=400, params={"continue": "!!!"})
    assert garbage["message"].startswith("invalid continue token: continue key is not valid")  # kube's words
    namespace = full["items"][0]["metadata"]["namespace"]
    in_ns = await get_json(http, f"/api/v1/namespaces/{namespace}/pods")
    ns_page = await get_json(http, f"/api/v1/namespaces/{namespace}/pods", params={"limit": "2"})
    assert ns_page["metadata"]["remainingItemCount"] == len(in_ns["items"]) - 2  # counted in the namespace


async def test_expired_continue_is_410() -> None:
    sim = Simulator(tokens={"t"}, history_limit=3)
    for i in range(5):
        sim.store.create(
            {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"c{i}", "namespace": "a"}}
        )
    await sim.start()
    try:
        async with aiohttp.ClientSession(base_url=sim.url, headers={"Authorization": "Bearer t"}) as http:
            first = await get_json(http, "/api/v1/configmaps", params={"limit": "2"})
            for i in range(4):  # push the page's RV out of the retained history
                sim.store.patch("configmaps", "a", "c0", {"data": {"n": str(i)}})
            body = await get_json(
                http,
                "/api/v1/configmaps",
                status=410,
                params={"limit": "2", "continue": first["metadata"]["continue"]},
            )
            assert body["reason"] == "Expired" and body["code"] == 410
            assert body["message"].startswith("The provided continue parameter is too old")
    finally:
        await sim.stop()


async def test_table_and_partial_metadata(sim: Simulator, http: aiohttp.ClientSession) -> None:
    table = await get_json(
        http, "/api/v1/namespaces/bookinfo/pods", headers={"Accept": TABLE_ACCEPT}, params={"limit": "500"}
    )
    assert (table["kind"], table["apiVersion"]) == ("Table", "meta.k8s.io/v1")
    cols = [c["name"] for c in table["columnDefinitions"]]
    assert cols[:5] == ["Name", "Ready", "Status", "Restarts", "Age"] and "IP" in cols and "Node" in cols
    row = table["rows"][0]
    assert row["cells"][1:3] == ["2/2", "Running"]
    assert row["object"]["kind"] == "PartialObjectMetadata" and "spec" not in row["object"]
    with_obj = await get_json(
        http, "/api/v1/nodes", headers={"Accept": TABLE_ACCEPT}, params={"includeObject": "Object"}
    )
    assert with_obj["rows"][0]["object"]["kind"] == "Node"
    cms = await get_json(
        http, "/api/v1/namespaces/istio-system/configmaps/istio", headers={"Accept": TABLE_ACCEPT}
    )
    assert [c["name"] for c in cms["columnDefinitions"]] == ["Name", "Data", "Age"]
    assert cms["rows"][0]["cells"][:2] == ["istio", 2]

    meta_list = await get_json(
        http,
        "/api/v1/services",
        headers={"Accept": "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"},
    )
    assert meta_list["kind"] == "PartialObjectMetadataList"
    assert set(meta_list["items"][0]) == {"kind", "apiVersion", "metadata"}
    meta = await get_json(
        http,
        "/api/v1/nodes/worker-00",
        headers={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"},
    )
    assert meta["kind"] == "PartialObjectMetadata" and meta["metadata"]["name"] == "worker-00"


async def test_accept_negotiation(http: aiohttp.ClientSession) -> None:
    lst = await get_json(
        http, "/api/v1/nodes", headers={"Accept": "application/vnd.kubernetes.protobuf,application/json"}
    )
    assert lst["kind"] == "NodeList"
    body = await get_json(
        http, "/api/v1/nodes", status=406, headers={"Accept": "application/vnd.kubernetes.protobuf"}
    )
    assert body["reason"] == "NotAcceptable"


async def test_writes(sim: Simulator, http: aiohttp.ClientSession) -> None:
    cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "demo"}, "data": {"a": "1"}}
    async with http.post("/api/v1/namespaces/bookinfo/configmaps", json=cm) as resp:
        assert resp.status == 201
        created = await resp.json()
    assert created["metadata"]["uid"] and created["metadata"]["creationTimestamp"]
    rv = created["metadata"]["resourceVersion"]
    assert rv == str(sim.store.resource_version)
    async with http.post("/api/v1/namespaces/bookinfo/configmaps", json=cm) as resp:
        assert resp.status == 409 and (await resp.json())["reason"] == "AlreadyExists"
    async with http.post("/api/v1/namespaces/nowhere/configmaps", json=cm) as resp:
        assert resp.status == 404 and (await resp.json())["message"] == 'namespaces "nowhere" not found'

    created["data"] = {"a": "2"}
    async with http.put("/api/v1/namespaces/bookinfo/configmaps/demo", json=created) as resp:
        assert resp.status == 200
        updated = await resp.json()
    assert int(updated["metadata"]["resourceVersion"]) > int(rv)
    assert updated["metadata"]["uid"] == created["metadata"]["uid"]
    async with http.put("/api/v1/namespaces/bookinfo/configmaps/demo", json=created) as resp:  # stale RV
        assert resp.status == 409
        assert (await resp.json())["reason"] == "Conflict"

    patch = json.dumps({"metadata": {"labels": {"x": "y"}}, "data": {"b": "3"}})
    async with http.patch(
        "/api/v1/namespaces/bookinfo/configmaps/demo",
        data=patch,
        headers={"Content-Type": "application/merge-patch+json"},
    ) as resp:
        assert resp.status == 200
        patched = await resp.json()
    assert patched["data"] == {"a": "2", "b": "3"} and patched["metadata"]["labels"] == {"x": "y"}

    async with http.delete("/api/v1/namespaces/bookinfo/configmaps/demo") as resp:
        assert resp.status == 200
        assert (await resp.json())["metadata"]["name"] == "demo"
    assert sim.store.get("configmaps", "bookinfo", "demo") is None


async def test_reviews_answer_and_persist_nothing(sim: Simulator, http: aiohttp.ClientSession) -> None:
    rv = sim.store.resource_version
    review = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": "sa-token"}}
    async with http.post("/apis/authentication.k8s.io/v1/tokenreviews", json=review) as resp:
        assert resp.status == 201
        body = await resp.json()
    assert body["status"]["authenticated"] is True and body["status"]["user"]["username"]
    review["spec"] = {"token": "bogus"}
    async with http.post("/apis/authentication.k8s.io/v1/tokenreviews", json=review) as resp:
        assert (await resp.json())["status"].get("authenticated") is not True
    sar = {
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SubjectAccessReview",
        "spec": {"user": "u", "resourceAttributes": {"verb": "list", "resource": "pods"}},
    }
    async with http.post("/apis/authorization.k8s.io/v1/subjectaccessreviews", json=sar) as resp:
        assert resp.status == 201
        assert (await resp.json())["status"]["allowed"] is True
    assert sim.store.resource_version == rv


async def test_fat_list_is_streamed_and_complete() -> None:
    sim = Simulator(tokens={"t"})
    from apiproxy.simulator import seed_mesh

    seed_mesh(sim.store, pods=400, services=4, namespaces=2, nodes=2, pod_annotation_bytes=20_000)
    await sim.start()
    try:
        async with (
            aiohttp.ClientSession(base_url=sim.url, headers={"Authorization": "Bearer t"}) as http,
            http.get("/api/v1/pods") as resp,
        ):
            assert resp.headers.get("Transfer-Encoding") == "chunked"
            body = await resp.read()
        assert len(body) > 8_000_000
        pods = json.loads(body)["items"]
        assert sum(PADDING_ANNOTATION in p["metadata"]["annotations"] for p in pods) == 400
    finally:
        await sim.stop()

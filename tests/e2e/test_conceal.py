"""Concealed resources through a running proxy in front of the simulator, with real clients.

The shipped istio-remote policy conceals secrets (and cluster-wide configmap lists and watches). The
simulator holds secrets and records every request it receives, so each test can prove that not one
request for a secret reached it, while the clients got answers they accept: an empty list with the
apiserver's current resourceVersion, a watch with bookmarks that ends at its timeout, and 404 for a name.
"""

from __future__ import annotations

import asyncio
import json
import struct
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import kubernetes
import pytest

from apiproxy import protowire as pw
from apiproxy.demo.sandbox import POLICIES_DIR, Sandbox
from tests.helpers import KUBECTL, eventually, kubectl

PROTOBUF = "application/vnd.kubernetes.protobuf"
CONCEALED_SECRETS = "/api/v1/secrets"


@pytest.fixture
async def box(sandbox: Sandbox) -> AsyncIterator[Sandbox]:
    """The sandbox with bookmarks every 0.1 s instead of every minute, and a fresh version each time."""
    assert sandbox.proxy is not None and sandbox.simulator is not None
    sandbox.proxy.handler.limits.conceal_bookmark_interval = 0.1
    sandbox.proxy.handler.facts.ttl = 0.05
    assert sandbox.simulator.store.list("secrets"), (
        "the simulator must hold secrets for this to mean anything"
    )
    yield sandbox
    assert secret_requests(sandbox) == []


def secret_requests(box: Sandbox) -> list[str]:
    """Every request target the upstream received that touches secrets (there must never be one)."""
    assert box.simulator is not None
    return [r.raw_target for r in box.simulator.requests if "secrets" in r.raw_target]


def upstream_targets(box: Sandbox) -> list[str]:
    """What the upstream received, but for the readiness probe's ``/version``."""
    assert box.simulator is not None
    return [r.raw_target for r in box.simulator.requests if r.raw_target != "/version"]


def current_version(box: Sandbox) -> str:
    assert box.simulator is not None
    return str(box.simulator.store.resource_version)


def core_api(box: Sandbox) -> kubernetes.client.CoreV1Api:
    return kubernetes.client.CoreV1Api(
        kubernetes.config.new_client_from_config(config_file=str(box.kubeconfig()))
    )


def client(box: Sandbox, cluster: str = "alpha") -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=box.client_ssl()),
        headers={"Authorization": f"Bearer {box.clusters[cluster].token}"},
    )


async def read_frames(resp: aiohttp.ClientResponse) -> list[bytes]:
    """Protobuf watch frames (4-byte big-endian length + message) until the server ends the stream."""
    frames = []
    while True:
        try:
            head = await resp.content.readexactly(4)
        except asyncio.IncompleteReadError as exc:
            assert exc.partial == b"", "the stream ended inside a frame"
            return frames
        (length,) = struct.unpack(">I", head)
        frames.append(await resp.content.readexactly(length))


def watch_event(frame: bytes) -> tuple[str, pw.Unknown]:
    """A WatchEvent {1 type, 2 RawExtension {1 raw}} → its type and the embedded object's envelope."""
    by_number = {f.number: f.value for f in pw.fields(frame)}
    assert set(by_number) == {1, 2}
    raw_extension = by_number[2]
    assert isinstance(raw_extension, bytes) and isinstance(by_number[1], bytes)
    (raw,) = [f.value for f in pw.fields(raw_extension) if f.number == 1]
    assert isinstance(raw, bytes)
    return by_number[1].decode(), pw.decode_unknown(raw)


def field_map(data: bytes) -> dict[int, Any]:
    out: dict[int, Any] = {}
    for f in pw.fields(data):
        out.setdefault(f.number, []).append(f.value)
    return out


# -- the official Python client -------------------------------------------------------------------------


async def test_python_client_lists_no_secrets_at_the_current_resource_version(box: Sandbox) -> None:
    version_before = current_version(box)
    secrets = await asyncio.to_thread(lambda: core_api(box).list_secret_for_all_namespaces())
    assert secrets.items == []
    assert secrets.kind == "SecretList" and secrets.api_version == "v1"
    assert secrets.metadata.resource_version == version_before == current_version(box)
    # The one upstream read: the proxy's own, for the resourceVersion.
    assert upstream_targets(box) == ["/api/v1/namespaces?limit=1"]
    # The list comes with the istiod field selector, too: accepted, and nothing changes.
    selected = await asyncio.to_thread(
        lambda: core_api(box).list_secret_for_all_namespaces(
            field_selector="type!=helm.sh/release.v1,type!=kubernetes.io/service-account-token",
            label_selector="app=x",
            limit=500,
            resource_version="0",
        )
    )
    assert selected.items == [] and selected.metadata.resource_version == version_before


async def test_python_client_watch_gets_bookmarks_and_ends_at_timeout_seconds(box: Sandbox) -> None:
    assert box.simulator is not None
    store = box.simulator.store
    events: list[dict[str, Any]] = []
    first = threading.Event()

    def watch() -> float:
        started = time.monotonic()
        for event in kubernetes.watch.Watch().stream(
            core_api(box).list_secret_for_all_namespaces, allow_watch_bookmarks=True, timeout_seconds=2
        ):
            events.append(event)
            first.set()
        return time.monotonic() - started

    watcher = asyncio.ensure_future(asyncio.to_thread(watch))
    await asyncio.to_thread(first.wait, 20)
    version_at_start = int(current_version(box))
    store.create(
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "moved-on", "namespace": "default"}}
    )
    lasted = await asyncio.wait_for(watcher, 30)
    # The stream ended by itself, at timeoutSeconds (not before; give the client a second to notice).
    assert 2.0 <= lasted < 25.0
    assert events and {e["type"] for e in events} == {"BOOKMARK"}
    versions = [int(e["raw_object"]["metadata"]["resourceVersion"]) for e in events]
    assert {e["raw_object"]["kind"] for e in events} == {"Secret"}
    assert versions == sorted(versions)
    # Bookmarks follow the apiserver's clock: a later one carries the revision of the configmap created.
    assert versions[0] <= version_at_start < versions[-1] == int(current_version(box))


async def test_python_client_reads_a_named_secret_as_not_found(box: Sandbox) -> None:
    assert box.simulator is not None
    real = box.simulator.store.list("secrets")[0]["metadata"]
    with pytest.raises(kubernetes.client.ApiException) as caught:
        await asyncio.to_thread(lambda: core_api(box).read_namespaced_secret(real["name"], real["namespace"]))
    assert caught.value.status == 404
    body = json.loads(caught.value.body)
    assert body["message"] == f'secrets "{real["name"]}" not found'
    assert (body["reason"], body["details"]) == ("NotFound", {"name": real["name"], "kind": "secrets"})
    assert upstream_targets(box) == []  # a GET needs not even the resourceVersion


# -- kubectl --------------------------------------------------------------------------------------------

needs_kubectl = pytest.mark.skipif(not Path(KUBECTL).exists(), reason="kubectl is not installed")


@needs_kubectl
async def test_kubectl_get_secrets_finds_none(box: Sandbox) -> None:
    result = await kubectl(box.kubeconfig(), "get", "secrets", "-A")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    assert "No resources found" in result.stderr
    result = await kubectl(
        box.kubeconfig(), "get", "secret", "istio-ingressgateway-certs", "-n", "istio-system"
    )
    assert result.returncode == 1
    assert 'Error from server (NotFound): secrets "istio-ingressgateway-certs" not found' in result.stderr


# -- raw protobuf ---------------------------------------------------------------------------------------


async def test_protobuf_list_is_an_empty_secret_list(box: Sandbox) -> None:
    async with (
        client(box) as session,
        session.get(
            box.proxy_url + CONCEALED_SECRETS + "?limit=500&resourceVersion=0",
            headers={"Accept": f"{PROTOBUF},application/json"},
        ) as resp,
    ):
        body = await resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Type"] == PROTOBUF
    unknown = pw.decode_unknown(body)
    assert (unknown.api_version, unknown.kind) == ("v1", "SecretList")
    fields = field_map(unknown.raw)
    assert set(fields) == {1}  # ListMeta only: no items
    list_meta = field_map(fields[1][0])
    assert list_meta == {1: [b""], 2: [current_version(box).encode()], 3: [b""]}


async def test_protobuf_metadata_only_list(box: Sandbox) -> None:
    accept = (
        f"{PROTOBUF};as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,"
        "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1,application/json"
    )
    async with (
        client(box) as session,
        session.get(box.proxy_url + "/api/v1/configmaps", headers={"Accept": accept}) as resp,
    ):
        body = await resp.read()
        assert resp.status == 200
    unknown = pw.decode_unknown(body)
    assert (unknown.api_version, unknown.kind) == ("meta.k8s.io/v1", "PartialObjectMetadataList")
    assert not [t for t in upstream_targets(box) if "configmaps" in t]


async def test_protobuf_streaming_list_watch_ends_its_initial_events_then_times_out(box: Sandbox) -> None:
    target = (
        CONCEALED_SECRETS + "?watch=true&sendInitialEvents=true&resourceVersionMatch=NotOlderThan"
        "&allowWatchBookmarks=true&timeoutSeconds=1"
        "&fieldSelector=type%21%3Dhelm.sh%2Frelease.v1%2Ctype%21%3Dkubernetes.io%2Fservice-account-token"
    )
    async with (
        client(box) as session,
        session.get(box.proxy_url + target, headers={"Accept": f"{PROTOBUF}, application/json"}) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"] == f"{PROTOBUF};stream=watch"
        frames = await asyncio.wait_for(read_frames(resp), 10)
    event_type, first = watch_event(frames[0])
    assert (event_type, first.api_version, first.kind) == ("BOOKMARK", "v1", "Secret")
    meta = field_map(field_map(first.raw)[1][0])
    assert meta[6] == [current_version(box).encode()]
    annotation = field_map(meta[12][0])
    assert annotation == {1: [b"k8s.io/initial-events-end"], 2: [b"true"]}
    for frame in frames[1:]:  # periodic bookmarks: no annotation
        event_type, obj = watch_event(frame)
        assert event_type == "BOOKMARK" and 12 not in field_map(field_map(obj.raw)[1][0])


async def test_a_json_watch_without_bookmarks_stays_silent_until_its_timeout(box: Sandbox) -> None:
    async with (
        client(box) as session,
        session.get(box.proxy_url + CONCEALED_SECRETS + "?watch=1&timeoutSeconds=1") as resp,
    ):
        assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
        started = time.monotonic()
        assert await asyncio.wait_for(resp.read(), 10) == b""
        assert time.monotonic() - started >= 0.5


# -- accounting, limits, revocation ---------------------------------------------------------------------


async def test_concealed_requests_are_audited_and_counted_apart(box: Sandbox) -> None:
    async with client(box) as session:
        async with session.get(box.proxy_url + CONCEALED_SECRETS) as resp:
            assert resp.status == 200
        async with session.get(box.proxy_url + "/api/v1/namespaces/a/secrets/b") as resp:
            assert resp.status == 404
        async with session.get(box.proxy_url + "/api/v1/namespaces/a/serviceaccounts") as resp:
            assert resp.status == 403
        async with aiohttp.ClientSession() as plain, plain.get(box.metrics_url + "/metrics") as resp:
            metrics = await resp.text()
    assert 'apiproxy_concealed_requests_total{cluster="alpha",resource="secrets",verb="list"} 1.0' in metrics
    assert 'apiproxy_concealed_requests_total{cluster="alpha",resource="secrets",verb="get"} 1.0' in metrics
    assert (
        'apiproxy_requests_total{cluster="alpha",code="200",group="",resource="secrets",verb="list"}'
        in metrics
    )
    records = await eventually(lambda: (r := box.audit_records()) and len(r) >= 3 and r)
    by_verb = {(r.get("verb"), r.get("resource")): r for r in records}
    listed = by_verb[("list", "secrets")]
    assert (listed["decision"], listed["rule"], listed["status"]) == ("conceal", "secrets-concealed", 200)
    got = by_verb[("get", "secrets")]
    assert (got["decision"], got["status"]) == ("conceal", 404)
    assert by_verb[("list", "serviceaccounts")]["decision"] == "deny"


async def test_unknown_resource_version_is_a_503_not_an_invented_one(box: Sandbox) -> None:
    assert box.simulator is not None
    box.simulator.tokens.clear()  # the apiserver now refuses the proxy's own reads
    async with client(box) as session, session.get(box.proxy_url + CONCEALED_SECRETS) as resp:
        status = await resp.json()
        assert resp.status == 503
    assert (status["kind"], status["code"], status["reason"]) == ("Status", 503, "ServiceUnavailable")
    assert "resourceVersion" in status["message"] and "401" in status["message"]


async def test_concealed_watches_count_against_the_cluster_watch_limit(tmp_path: Path) -> None:
    box = Sandbox(tmp_path, settings={"max_watches_per_cluster": 1})
    await box.start()
    try:
        assert box.proxy is not None
        async with client(box) as session:
            first = await session.get(box.proxy_url + CONCEALED_SECRETS + "?watch=1&timeoutSeconds=30")
            assert first.status == 200
            async with session.get(box.proxy_url + "/api/v1/configmaps?watch=1") as second:
                assert second.status == 429
            assert len(box.proxy.handler.watches) == 1
            first.close()
        await eventually(lambda: not box.proxy.handler.watches if box.proxy else True)
    finally:
        await box.stop()


async def test_a_policy_change_that_allows_secrets_closes_the_concealed_watch(tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    shipped = (POLICIES_DIR / "istio-remote.yaml").read_text()
    policy.write_text(shipped)
    box = Sandbox(tmp_path / "box", policy=policy)
    await box.start()
    try:
        assert box.proxy is not None
        async with (
            client(box) as session,
            session.get(box.proxy_url + CONCEALED_SECRETS + "?watch=1&timeoutSeconds=60") as resp,
        ):
            assert resp.status == 200
            await eventually(lambda: box.proxy is not None and len(box.proxy.handler.watches) == 1)
            opened = "  - name: gateway-credentials\n    clusters: ['*']\n    apiGroups: ['']\n"
            opened += "    resources: [secrets]\n    verbs: [get, list, watch]\n"
            policy.write_text(shipped + opened)
            # The stream ends cleanly (the client watches again, and would now get real objects).
            assert await asyncio.wait_for(resp.read(), 10) == b""
        records = await eventually(lambda: [r for r in box.audit_records() if r.get("verb") == "watch"])
        assert records[0]["decision"] == "conceal"
        assert records[0]["reason"] == "ended by the proxy: policy changed"
    finally:
        await box.stop()


async def test_a_burst_of_concealed_lists_costs_one_resource_version_read(box: Sandbox) -> None:
    assert box.proxy is not None
    box.proxy.handler.facts.ttl = 60.0  # the whole burst falls in one cache period, however slow the host

    async def one(session: aiohttp.ClientSession) -> str:
        async with session.get(box.proxy_url + CONCEALED_SECRETS) as resp:
            assert resp.status == 200
            return str((await resp.json())["metadata"]["resourceVersion"])

    async with client(box) as session:
        versions = await asyncio.gather(*(one(session) for _ in range(20)))
    assert set(versions) == {current_version(box)}
    assert upstream_targets(box) == ["/api/v1/namespaces?limit=1"]


CONCEAL_ENDPOINTSLICES = """\
  - name: endpointslices-concealed
    clusters: ["*"]
    apiGroups: ["discovery.k8s.io"]
    resources: ["endpointslices", "widgets"]
    verbs: ["list", "watch"]
    action: conceal
"""


async def test_the_kind_of_a_group_resource_comes_from_discovery(tmp_path: Path) -> None:
    """A resource outside the built-in table: its kind is read once from its group version's discovery
    document (cached), and a resource the group version does not serve is a 404."""
    policy = tmp_path / "policy.yaml"
    policy.write_text("apiVersion: apiproxy.io/v1alpha1\nkind: Policy\nrules:\n" + CONCEAL_ENDPOINTSLICES)
    box = Sandbox(tmp_path / "box", policy=policy)
    await box.start()
    try:
        async with client(box) as session:
            for _ in range(2):
                async with session.get(box.proxy_url + "/apis/discovery.k8s.io/v1/endpointslices") as resp:
                    assert resp.status == 200
                    listed = await resp.json()
            async with session.get(box.proxy_url + "/apis/discovery.k8s.io/v1/widgets") as resp:
                assert resp.status == 404
                assert (await resp.json())["message"] == "the server could not find the requested resource"
        assert (listed["kind"], listed["apiVersion"], listed["items"]) == (
            "EndpointSliceList",
            "discovery.k8s.io/v1",
            [],
        )
        targets = upstream_targets(box)
        assert targets.count("/apis/discovery.k8s.io/v1") == 1
        assert not [t for t in targets if "endpointslices" in t or "widgets" in t]
    finally:
        await box.stop()


async def test_shutdown_ends_a_concealed_watch_cleanly(tmp_path: Path) -> None:
    box = Sandbox(tmp_path)
    await box.start()
    stopped = False
    try:
        assert box.proxy is not None
        handler = box.proxy.handler
        async with (
            client(box) as session,
            session.get(box.proxy_url + CONCEALED_SECRETS + "?watch=1&timeoutSeconds=300") as resp,
        ):
            assert resp.status == 200
            await eventually(lambda: len(handler.watches) == 1)
            stopping = asyncio.ensure_future(box.stop())
            assert await asyncio.wait_for(resp.read(), 10) == b""  # a clean end, not a broken stream
            await stopping
            stopped = True
        assert not handler.watches
    finally:
        if not stopped:
            await box.stop()


async def test_a_policy_change_that_conceals_secrets_closes_a_relayed_watch(tmp_path: Path) -> None:
    """The other direction, the one that matters for security: a watch relaying real Secrets must not
    outlive the policy that allowed it once they are concealed."""
    policy = tmp_path / "policy.yaml"
    shipped = (POLICIES_DIR / "istio-remote.yaml").read_text()
    opt_in = "  - name: gateway-credentials\n    clusters: ['*']\n    apiGroups: ['']\n"
    opt_in += "    resources: [secrets]\n    verbs: [get, list, watch]\n    namespaces: [istio-system]\n"
    policy.write_text(shipped + opt_in)
    box = Sandbox(tmp_path / "box", policy=policy)
    await box.start()
    try:
        assert box.proxy is not None and box.simulator is not None
        target = "/api/v1/namespaces/istio-system/secrets?watch=1&timeoutSeconds=60"
        async with client(box) as session, session.get(box.proxy_url + target) as resp:
            assert resp.status == 200
            first = json.loads(await asyncio.wait_for(resp.content.readline(), 10))
            assert first["type"] == "ADDED" and first["object"]["kind"] == "Secret"  # real, relayed
            assert [t for t in secret_requests(box) if t.startswith(target.partition("?")[0])]
            policy.write_text(shipped)
            await asyncio.wait_for(resp.read(), 10)  # the stream ends (it would otherwise last 60 s)
        assert not box.proxy.handler.watches
        records = await eventually(lambda: [r for r in box.audit_records() if r.get("verb") == "watch"])
        assert (records[0]["decision"], records[0]["reason"]) == (
            "allow",
            "ended by the proxy: policy changed",
        )
    finally:
        await box.stop()

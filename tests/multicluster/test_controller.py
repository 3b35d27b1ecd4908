"""The controller's edges with an in-memory object store: writes only on change, never partial, deletion,
invalid specs, keypair generation, and the schedule (injected clock)."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.multicluster.controller import Controller, Schedule, Snapshot
from apiproxy.multicluster.kube import Conflict, apply
from apiproxy.multicluster.settings import MulticlusterSettings
from tests.multicluster.peers import ENDPOINT, NOW, OUR_UUID, PEER_UUID, Clock, ScriptedPeer


class MemoryObjects:
    """Secrets and ConfigMaps by (kind, namespace, name), with resourceVersions and a write log."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.writes: list[tuple[str, str, str]] = []
        self.rv = 0
        self.fail_writes = False

    def _store(self, kind: str, namespace: str, body: Any, verb: str) -> dict[str, Any]:
        if self.fail_writes:
            raise OSError("apiserver unreachable")
        self.rv += 1
        obj = copy.deepcopy(dict(body))
        obj["metadata"] = {**obj["metadata"], "resourceVersion": str(self.rv), "namespace": namespace}
        self.objects[(kind, namespace, obj["metadata"]["name"])] = obj
        self.writes.append((verb, kind, obj["metadata"]["name"]))
        return copy.deepcopy(obj)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        obj = self.objects.get((kind, namespace, name))
        return copy.deepcopy(obj) if obj else None

    async def create(self, kind: str, namespace: str, body: Any) -> dict[str, Any]:
        if (kind, namespace, body["metadata"]["name"]) in self.objects:
            raise Conflict("exists")
        return self._store(kind, namespace, body, "create")

    async def replace(self, kind: str, namespace: str, name: str, body: Any) -> dict[str, Any]:
        current = self.objects[(kind, namespace, name)]
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            raise Conflict("stale")
        return self._store(kind, namespace, body, "replace")

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        if self.objects.pop((kind, namespace, name), None) is not None:
            self.writes.append(("delete", kind, name))


def resource(name: str = "east", spec: dict[str, Any] | None = None, status: Any = None) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "generation": 1, "creationTimestamp": "2026-01-01T00:00:00Z"},
        "spec": spec or {"metadataEndpoint": ENDPOINT},
        "status": status or {},
    }


@pytest.fixture
def objects() -> MemoryObjects:
    return MemoryObjects()


def controller(objects: MemoryObjects, peer: ScriptedPeer, clock: Clock | None = None) -> Controller:
    settings = MulticlusterSettings(cluster_uuid=OUR_UUID, metrics_listen="")
    events: list[tuple[str, str]] = []
    c = Controller(
        settings, objects, peer, clock=clock or Clock(), events=lambda _b, k, r, _m: events.append((k, r))
    )
    c.events_seen = events  # type: ignore[attr-defined]
    return c


async def test_first_reconcile_writes_everything_once_and_a_resync_writes_nothing(
    objects: MemoryObjects,
) -> None:
    peer = ScriptedPeer.healthy(ed25519.Ed25519PrivateKey.generate())
    c = controller(objects, peer)
    status = await c.reconcile(resource(), {})
    kinds = sorted(name for _verb, _kind, name in objects.writes)
    assert kinds == sorted(
        ["d8-remote-authn-keypair", "istio-remote-secret-east", "d8-remote-clusters-public-metadata",
         "apiproxy-multicluster-mesh"]
    )  # fmt: skip
    writes = len(objects.writes)
    again = await c.reconcile(resource(status=status), {})
    assert len(objects.writes) == writes, "nothing changed: nothing written"
    assert [c["lastTransitionTime"] for c in again["conditions"]] == [
        c["lastTransitionTime"] for c in status["conditions"]
    ]
    assert [kind for kind, _reason in c.events_seen] == ["Normal"] * 4  # type: ignore[attr-defined]


async def test_startup_creates_an_empty_trust_store_and_never_overwrites_one(objects: MemoryObjects) -> None:
    """A fresh install: the proxy mounts the trust Secret, so it must exist before the first peer."""
    c = controller(objects, ScriptedPeer.healthy(ed25519.Ed25519PrivateKey.generate()))
    await c.startup()
    trust = await objects.get("Secret", "d8-istio", "d8-remote-clusters-public-metadata")
    assert trust is not None
    assert json.loads(base64.b64decode(trust["data"]["remote-public-metadata.json"])) == {}
    assert trust["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "apiproxy-multicluster"

    # A restart finds the peers' trust store and leaves it to the reconciles (it is not emptied).
    status = await c.reconcile(resource(), {})
    assert status["conditions"]
    held = await objects.get("Secret", "d8-istio", "d8-remote-clusters-public-metadata")
    assert (
        held is not None
        and PEER_UUID in base64.b64decode(held["data"]["remote-public-metadata.json"]).decode()
    )
    writes = len(objects.writes)
    restarted = controller(objects, ScriptedPeer.healthy(ed25519.Ed25519PrivateKey.generate()))
    await restarted.startup()
    assert len(objects.writes) == writes, objects.writes[writes:]


async def test_a_failing_write_keeps_the_old_status_and_backs_off(objects: MemoryObjects) -> None:
    clock = Clock()
    c = controller(objects, ScriptedPeer.healthy(ed25519.Ed25519PrivateKey.generate()), clock)
    await c.startup()
    objects.fail_writes = True
    with pytest.raises(OSError):
        await c.reconcile(resource(), {})
    assert not c.schedule.is_due("east")
    assert c.schedule.failures["east"] == 1


async def test_the_trust_store_holds_every_peer_of_the_index(objects: MemoryObjects) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    c = controller(objects, ScriptedPeer.healthy(key))
    west_status = await controller(
        MemoryObjects(),
        ScriptedPeer.healthy(
            ed25519.Ed25519PrivateKey.generate(), uuid="c71d2e90-5a3f-4b6e-8d14-0f9b2a6e7c45"
        ),
    ).reconcile(resource("west"), {})
    others = {"west": Snapshot.of(resource("west", status=west_status))}
    await c.reconcile(resource(), others)
    trust = objects.objects[("Secret", "d8-istio", "d8-remote-clusters-public-metadata")]
    import base64

    doc = json.loads(base64.b64decode(trust["data"]["remote-public-metadata.json"]))
    assert set(doc) == {PEER_UUID, "c71d2e90-5a3f-4b6e-8d14-0f9b2a6e7c45"}
    await c.delete("east", others)
    doc = json.loads(
        base64.b64decode(
            objects.objects[("Secret", "d8-istio", "d8-remote-clusters-public-metadata")]["data"][
                "remote-public-metadata.json"
            ]
        )
    )
    assert set(doc) == {"c71d2e90-5a3f-4b6e-8d14-0f9b2a6e7c45"}
    assert ("Secret", "d8-istio", "istio-remote-secret-east") not in objects.objects


async def test_an_invalid_spec_is_a_condition_not_a_crash(objects: MemoryObjects) -> None:
    c = controller(objects, ScriptedPeer())
    status = await c.reconcile(resource(spec={"metadataEndpoint": "http://plain/"}), {})
    assert {cnd["reason"] for cnd in status["conditions"]} == {"InvalidSpec"}
    assert ("Warning", "InvalidSpec") in c.events_seen  # type: ignore[attr-defined]


async def test_apply_replaces_with_the_read_resource_version_and_keeps_foreign_labels(
    objects: MemoryObjects,
) -> None:
    body = {
        "metadata": {"name": "s", "namespace": "ns", "labels": {"mine": "1"}},
        "data": {"k": "djE="},
        "type": "Opaque",
    }
    assert await apply(objects, "Secret", body)
    objects.objects[("Secret", "ns", "s")]["metadata"]["labels"]["theirs"] = "x"
    assert not await apply(objects, "Secret", body)
    changed = {**body, "data": {"k": "djI="}}
    assert await apply(objects, "Secret", changed)
    stored = objects.objects[("Secret", "ns", "s")]
    assert stored["metadata"]["labels"] == {"mine": "1", "theirs": "x"} and stored["data"] == {"k": "djI="}


def test_schedule_resyncs_with_jitter_and_backs_off_with_a_cap() -> None:
    clock = Clock(NOW)
    schedule = Schedule(resync=60, retry_base=5, retry_cap=40, clock=clock)
    delay = schedule.done("a", ok=True)
    assert 54 <= delay <= 66 and not schedule.is_due("a")
    clock.now += delay
    assert schedule.is_due("a")
    delays = [schedule.done("a", ok=False) for _ in range(6)]
    assert delays[0] <= 6 and max(delays) <= 40 and delays[-1] >= 32
    schedule.done("a", ok=True)
    assert "a" not in schedule.failures


async def test_a_stale_body_never_drops_an_established_peer(objects: MemoryObjects) -> None:
    """A handler queued behind another one runs with its own event's body (here: no status yet)."""
    import base64

    from apiproxy.multicluster.fetch import FetchError

    peer = ScriptedPeer.healthy(ed25519.Ed25519PrivateKey.generate())
    c = controller(objects, peer)
    created = resource()
    await c.reconcile(created, {})
    peer.answers["/metadata/public/public.json"] = FetchError("FetchFailed", "connection refused")
    status = await c.reconcile(created, {})  # the creation event's body: status empty
    assert status["pinnedIdentity"]["clusterUUID"] == PEER_UUID
    trust = objects.objects[("Secret", "d8-istio", "d8-remote-clusters-public-metadata")]
    assert PEER_UUID in json.loads(base64.b64decode(trust["data"]["remote-public-metadata.json"]))
    assert ("Secret", "d8-istio", "istio-remote-secret-east") in objects.objects

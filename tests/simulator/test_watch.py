"""Watch streams: initial state, live events, history replay, bookmarks, 410, timeouts, clean ends."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from apiproxy.simulator import Simulator
from tests.helpers import eventually
from tests.simulator.conftest import TOKEN, EventReader

CM = "/api/v1/namespaces/bookinfo/configmaps"


def cm(name: str, ns: str = "bookinfo", **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
    }


async def open_watch(http: aiohttp.ClientSession, path: str, **params: str) -> aiohttp.ClientResponse:
    resp = await http.get(path, params={"watch": "true", **params})
    assert resp.status == 200
    assert resp.headers["Content-Type"] == "application/json"
    assert resp.headers["Transfer-Encoding"] == "chunked"
    return resp


async def test_initial_state_then_live_events(sim: Simulator, http: aiohttp.ClientSession) -> None:
    existing = {c["metadata"]["name"] for c in sim.store.list("configmaps", "bookinfo")}
    resp = await open_watch(http, CM)
    events = EventReader(resp)
    initial = await events.take(len(existing))
    assert {e["type"] for e in initial} == {"ADDED"}
    assert {e["object"]["metadata"]["name"] for e in initial} == existing
    assert initial[0]["object"]["kind"] == "ConfigMap"

    sim.store.create(cm("live"))
    sim.store.patch("configmaps", "bookinfo", "live", {"data": {"k": "v"}})
    sim.store.create(cm("elsewhere", ns="payments"))  # other namespace: not seen
    sim.store.delete("configmaps", "bookinfo", "live")
    added, modified, deleted = await events.take(3)
    assert (added["type"], modified["type"], deleted["type"]) == ("ADDED", "MODIFIED", "DELETED")
    assert modified["object"]["data"] == {"k": "v"}
    assert int(deleted["object"]["metadata"]["resourceVersion"]) == sim.store.resource_version
    resp.close()


async def test_disconnect_releases_the_watcher(sim: Simulator, http: aiohttp.ClientSession) -> None:
    resp = await open_watch(http, "/api/v1/pods", resourceVersion=str(sim.store.resource_version))
    await eventually(lambda: sim.store.watcher_count() == 1, timeout=5)
    resp.close()
    await eventually(lambda: sim.store.watcher_count() == 0, timeout=5)


async def test_resume_from_resource_version_replays_history(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    start = sim.store.resource_version
    sim.store.create(cm("a1"))
    sim.store.create(cm("a2"))
    resp = await open_watch(http, CM, resourceVersion=str(start))
    events = EventReader(resp)
    sim.store.delete("configmaps", "bookinfo", "a1")
    got = await events.take(3)
    assert [(e["type"], e["object"]["metadata"]["name"]) for e in got] == [
        ("ADDED", "a1"),
        ("ADDED", "a2"),
        ("DELETED", "a1"),
    ]
    resp.close()


async def test_too_old_resource_version_is_an_error_event() -> None:
    sim = Simulator(tokens={TOKEN}, history_limit=2)
    for i in range(5):
        sim.store.create(cm(f"c{i}"))
    await sim.start()
    try:
        async with aiohttp.ClientSession(
            base_url=sim.url, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            resp = await open_watch(http, CM, resourceVersion="2")
            events = EventReader(resp)
            error = await events.next()
            assert error is not None and error["type"] == "ERROR"
            status = error["object"]
            assert (status["kind"], status["code"], status["reason"]) == ("Status", 410, "Expired")
            assert status["message"].startswith("too old resource version: 2 (")
            assert await events.next() is None  # and the stream ends
    finally:
        await sim.stop()


async def test_bookmarks() -> None:
    sim = Simulator(tokens={TOKEN}, bookmark_interval=0.05)
    sim.store.create(cm("x"))
    await sim.start()
    try:
        async with aiohttp.ClientSession(
            base_url=sim.url, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            resp = await open_watch(http, CM, allowWatchBookmarks="true")
            events = EventReader(resp)
            added, first = await events.take(2)
            assert added["type"] == "ADDED"
            assert first["type"] == "BOOKMARK"
            periodic = await events.until("BOOKMARK")
            bookmark = periodic[-1]["object"]
            assert bookmark["kind"] == "ConfigMap"
            assert bookmark["metadata"] == {"resourceVersion": str(sim.store.resource_version)}
            sim.store.create(cm("y"))
            seen = await events.until("BOOKMARK")
            assert [e["type"] for e in seen if e["type"] != "BOOKMARK"] == ["ADDED"]
            assert seen[-1]["object"]["metadata"]["resourceVersion"] == str(sim.store.resource_version)
            resp.close()
            # Without allowWatchBookmarks: none at all, only the stream end at timeoutSeconds.
            resp = await open_watch(
                http, CM, resourceVersion=str(sim.store.resource_version), timeoutSeconds="1"
            )
            assert await EventReader(resp).next(timeout=5) is None
    finally:
        await sim.stop()


async def test_send_initial_events(sim: Simulator, http: aiohttp.ClientSession) -> None:
    count = len(sim.store.list("services"))
    resp = await open_watch(
        http,
        "/api/v1/services",
        sendInitialEvents="true",
        resourceVersionMatch="NotOlderThan",
        allowWatchBookmarks="true",
    )
    got = await EventReader(resp).take(count + 1)
    assert {e["type"] for e in got[:-1]} == {"ADDED"}
    end = got[-1]
    assert end["type"] == "BOOKMARK"
    assert end["object"]["metadata"]["annotations"] == {"k8s.io/initial-events-end": "true"}
    assert end["object"]["metadata"]["resourceVersion"] == str(sim.store.resource_version)
    resp.close()
    async with http.get("/api/v1/services", params={"watch": "1", "sendInitialEvents": "true"}) as bad:
        assert bad.status == 422
        assert (await bad.json())["reason"] == "Invalid"


async def test_timeout_seconds_ends_the_stream_cleanly(sim: Simulator, http: aiohttp.ClientSession) -> None:
    resp = await open_watch(
        http, "/api/v1/nodes", resourceVersion=str(sim.store.resource_version), timeoutSeconds="1"
    )
    assert await asyncio.wait_for(resp.read(), 5) == b""  # a complete chunked body: clean end
    assert sim.store.watcher_count() == 0


async def test_legacy_watch_path_and_single_object(sim: Simulator, http: aiohttp.ClientSession) -> None:
    sim.store.create(cm("one"))
    sim.store.create(cm("two"))
    resp = await http.get("/api/v1/watch/namespaces/bookinfo/configmaps/one")
    assert resp.status == 200
    events = EventReader(resp)
    (first,) = await events.take(1)
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "one")
    sim.store.patch("configmaps", "bookinfo", "two", {"data": {"a": "b"}})
    sim.store.patch("configmaps", "bookinfo", "one", {"data": {"a": "b"}})
    (mod,) = await events.take(1)
    assert (mod["type"], mod["object"]["metadata"]["name"]) == ("MODIFIED", "one")
    resp.close()
    # The first ``watch`` value decides.
    async with http.get(CM, params=[("watch", "false"), ("watch", "true")]) as listed:
        assert (await listed.json())["kind"] == "ConfigMapList"


async def test_selectors_turn_leaving_objects_into_deleted(
    sim: Simulator, http: aiohttp.ClientSession
) -> None:
    sim.store.create(cm("sel", tier="web"))
    resp = await open_watch(http, CM, labelSelector="tier=web")
    events = EventReader(resp)
    (initial,) = await events.take(1)
    assert initial["object"]["metadata"]["name"] == "sel"
    sim.store.patch("configmaps", "bookinfo", "sel", {"metadata": {"labels": {"tier": "db"}}})
    sim.store.patch("configmaps", "bookinfo", "sel", {"metadata": {"labels": {"tier": "web"}}})
    left, back = await events.take(2)
    assert left["type"] == "DELETED" and left["object"]["metadata"]["labels"] == {"tier": "web"}
    assert back["type"] == "ADDED"
    resp.close()


async def test_partial_metadata_and_table_watches(sim: Simulator, http: aiohttp.ClientSession) -> None:
    resp = await http.get(
        "/api/v1/nodes",
        params={"watch": "true"},
        headers={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"},
    )
    (ev,) = await EventReader(resp).take(1)
    assert ev["object"]["kind"] == "PartialObjectMetadata" and "status" not in ev["object"]
    resp.close()
    resp = await http.get(
        "/api/v1/nodes",
        params={"watch": "true"},
        headers={"Accept": "application/json;as=Table;v=v1;g=meta.k8s.io"},
    )
    first, second = await EventReader(resp).take(2)
    assert first["object"]["kind"] == "Table" and first["object"]["columnDefinitions"]
    assert second["object"]["columnDefinitions"] is None and len(second["object"]["rows"]) == 1
    resp.close()


async def test_slow_watcher_is_cut_off() -> None:
    sim = Simulator(tokens={TOKEN}, watch_queue_size=5)
    await sim.start()
    try:
        async with aiohttp.ClientSession(
            base_url=sim.url, headers={"Authorization": f"Bearer {TOKEN}"}
        ) as http:
            resp = await open_watch(http, CM, resourceVersion="1")
            await eventually(lambda: sim.store.watcher_count() == 1, timeout=5)
            for i in range(20):  # no await in between: the watcher cannot keep up
                sim.store.create(cm(f"burst{i}"))
            assert sim.store.watcher_count() == 0
            rest = await asyncio.wait_for(resp.read(), 5)  # completes: the stream was ended, not cut
            assert len(rest.splitlines()) <= 5
    finally:
        await sim.stop()


async def test_stop_ends_open_watches_cleanly() -> None:
    sim = Simulator(tokens={TOKEN})
    sim.store.create(cm("x"))
    await sim.start()
    async with aiohttp.ClientSession(base_url=sim.url, headers={"Authorization": f"Bearer {TOKEN}"}) as http:
        streams = [await open_watch(http, CM) for _ in range(3)]
        for s in streams:
            assert (await EventReader(s).take(1))[0]["type"] == "ADDED"
        await asyncio.wait_for(sim.stop(), 10)
        for s in streams:
            # read() completes without a payload error only if the terminating chunk arrived
            assert await asyncio.wait_for(s.read(), 5) == b""

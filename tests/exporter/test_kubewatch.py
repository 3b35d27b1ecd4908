"""The shared list+watch loop, with a scripted client: relists drop what was deleted meanwhile,
watch windows resume from the last version, 410 and failures start over."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from typing import Any

from apiproxy.exporter.sources import ObjectSet
from apiproxy.kubewatch import Event, WatchLoop, WatchTarget, list_then_watch


def obj(name: str, rv: int) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns", "resourceVersion": str(rv)}}


class ScriptedClient:
    def __init__(self, lists: list[list[dict[str, Any]]], windows: list[list[Event] | Exception]) -> None:
        self.lists, self.windows = lists, windows
        self.watched_from: list[str] = []

    def list(self, target: WatchTarget) -> tuple[list[dict[str, Any]], str]:
        items = self.lists.pop(0)
        return items, str(max((int(o["metadata"]["resourceVersion"]) for o in items), default=0))

    def watch(self, target: WatchTarget, resource_version: str, stop: threading.Event) -> Iterable[Event]:
        self.watched_from.append(resource_version)
        window = self.windows.pop(0) if self.windows else []
        if isinstance(window, Exception):
            raise window
        if not self.windows and not self.lists:
            stop.set()
        return iter(window)


def test_windows_resume_from_the_last_version_and_410_relists() -> None:
    client = ScriptedClient(
        [[obj("a", 1), obj("b", 2)], [obj("a", 9)]],
        [
            [{"type": "MODIFIED", "object": obj("a", 5)}, {"type": "BOOKMARK", "object": obj("", 7)}],
            [{"type": "ERROR", "object": {"code": 410}}],
        ],
    )
    stop = threading.Event()
    events = list(list_then_watch(client, WatchTarget("services", "ns"), stop))
    assert [e["type"] for e in events] == ["RESET", "MODIFIED"]
    assert client.watched_from == ["2", "7"]  # second window starts after the bookmark


def test_object_set_forgets_objects_missing_from_a_relist() -> None:
    objects = ObjectSet()
    assert objects.apply({"type": "RESET", "objects": [obj("a", 1), obj("b", 2)]}) == [
        obj("a", 1),
        obj("b", 2),
    ]
    assert objects.apply({"type": "DELETED", "object": obj("a", 3)}) == [obj("b", 2)]
    assert objects.apply({"type": "BOOKMARK", "object": obj("", 4)}) is None
    assert objects.apply({"type": "RESET", "objects": [obj("c", 5)]}) == [obj("c", 5)]


def test_loop_reconnects_after_failures_and_delivers_a_fresh_list() -> None:
    seen: list[str] = []
    failures: list[Exception] = []
    done = threading.Event()
    calls = iter(range(100))

    def events(stop: threading.Event) -> Iterator[Event]:
        n = next(calls)
        if n == 0:
            raise ConnectionError("apiserver down")
        yield {"type": "RESET", "objects": [obj(f"x{n}", n)]}
        if n >= 2:
            done.set()
            stop.wait()

    def handle(event: Event) -> None:
        seen.append(event["objects"][0]["metadata"]["name"])

    loop = WatchLoop("test", events, handle, backoff=(0.001, 0.01), on_failure=failures.append)
    loop.start()
    try:
        assert done.wait(5)
    finally:
        loop.stop()
    assert seen == ["x1", "x2"] and len(failures) == 1

"""Events about our cluster-scoped resources: a namespace-less reference in ``default`` (where the
apiserver admits them and ``kubectl describe`` finds them), posted in the background, never failing."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import pytest

from apiproxy.multicluster.events import EVENTS_NAMESPACE, EventPoster, event_body
from tests.multicluster.peers import NOW

BODY = {
    "apiVersion": "deckhouse.io/v1alpha1",
    "kind": "IstioMulticluster",
    "metadata": {"name": "east", "uid": "8d6c3f0e-1111-4a2b-9c3d-5e6f7a8b9c0d", "generation": 3},
}


def test_the_event_names_the_cluster_scoped_resource_without_a_namespace() -> None:
    event = event_body(BODY, "Warning", "ReadyFailed", "x" * 5000, now=NOW)
    assert event["metadata"] == {"generateName": "east.", "namespace": "default"}
    assert event["involvedObject"] == {
        "apiVersion": "deckhouse.io/v1alpha1",
        "kind": "IstioMulticluster",
        "name": "east",
        "uid": "8d6c3f0e-1111-4a2b-9c3d-5e6f7a8b9c0d",
    }
    assert (event["type"], event["reason"], len(event["message"])) == ("Warning", "ReadyFailed", 1024)
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-09-21T14:13:20Z"
    assert "eventTime" not in event, "a legacy Event: the form the apiserver admits in default"


class Recording:
    def __init__(self, fail: bool = False) -> None:
        self.created: list[tuple[str, str, Mapping[str, Any]]] = []
        self.fail = fail

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return None

    async def create(self, kind: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if self.fail:
            raise OSError("forbidden")
        self.created.append((kind, namespace, body))
        return dict(body)

    async def replace(self, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        raise AssertionError("events are only created")

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        raise AssertionError("events are only created")


async def test_the_poster_creates_in_the_background() -> None:
    objects = Recording()
    poster = EventPoster(objects, clock=lambda: NOW)
    poster(BODY, "Normal", "Ready", "Established: multicluster established")
    await poster.drain()
    [(kind, namespace, body)] = objects.created
    assert (kind, namespace, body["reason"]) == ("Event", EVENTS_NAMESPACE, "Ready")


async def test_a_failed_post_is_one_log_line_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    poster = EventPoster(Recording(fail=True), clock=lambda: NOW)
    with caplog.at_level(logging.WARNING, logger="apiproxy.multicluster"):
        poster(BODY, "Warning", "ReadyFailed", "secret message body")
        await poster.drain()
    [record] = caplog.records
    assert "ReadyFailed" in record.getMessage() and "OSError" in record.getMessage()
    assert "secret message body" not in record.getMessage()

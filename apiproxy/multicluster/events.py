"""Kubernetes Events about our IstioMulticluster resources, posted where ``kubectl describe`` finds them.

An IstioMulticluster is cluster-scoped. ``kubectl describe`` (client-go's event search) looks for Events
whose ``involvedObject`` has the resource's kind, name, UID and an *empty* namespace, and the apiserver
accepts such an Event only in namespace ``default`` (as client-go's own recorder does for Nodes). kopf's
``kopf.event`` instead fills the reference's namespace with its default namespace, so those Events exist
but no ``describe`` ever shows them: we post our own.

Posting is fire-and-forget: an Event is a diagnostic, so a failure to post is one log line, never a failed
reconcile.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from apiproxy.multicluster.kube import Objects

log = logging.getLogger("apiproxy.multicluster")

#: Where the apiserver admits Events about cluster-scoped objects (an empty involvedObject namespace).
EVENTS_NAMESPACE = "default"
COMPONENT = "apiproxy-multicluster"


def _timestamp(now: float) -> str:
    return datetime.fromtimestamp(int(now), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def event_body(
    body: Mapping[str, Any], kind: str, reason: str, message: str, *, now: float
) -> dict[str, Any]:
    """A core/v1 Event about the cluster-scoped ``body`` (no namespace in its reference)."""
    meta = body.get("metadata") or {}
    name = str(meta.get("name") or "")
    reference = {
        "apiVersion": body.get("apiVersion"),
        "kind": body.get("kind"),
        "name": name,
        "uid": meta.get("uid"),
    }
    stamp = _timestamp(now)
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": EVENTS_NAMESPACE},
        "involvedObject": {k: v for k, v in reference.items() if v},
        "type": kind,
        "reason": reason,
        "message": message[:1024],
        "source": {"component": COMPONENT},
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class EventPoster:
    """The controller's event sink: builds the Event now, posts it in the background."""

    def __init__(self, objects: Objects, clock: Callable[[], float] = time.time) -> None:
        self.objects = objects
        self.clock = clock
        self._pending: set[asyncio.Task[None]] = set()

    def __call__(self, body: Mapping[str, Any], kind: str, reason: str, message: str) -> None:
        event = event_body(body, kind, reason, message, now=self.clock())
        task = asyncio.get_running_loop().create_task(self._post(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _post(self, event: dict[str, Any]) -> None:
        try:
            await self.objects.create("Event", EVENTS_NAMESPACE, event)
        except Exception as exc:  # a diagnostic: never fails the reconcile that caused it
            log.warning("event %s not posted: %s", event["reason"], type(exc).__name__)

    async def drain(self) -> None:
        """Wait for the Events already queued (at shutdown, and in tests)."""
        if self._pending:
            await asyncio.gather(*list(self._pending), return_exceptions=True)

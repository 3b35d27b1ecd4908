"""kopf wiring: handlers at the edge; the rest is in :class:`~apiproxy.multicluster.controller.Controller`.

* an index of every IstioMulticluster (kopf fills it completely before any handler runs, so the first
  trust store written after a restart already holds every peer);
* create/update/resume: reconcile at once (update only for ``spec`` and annotation changes: kopf leaves
  ``status`` out of its diff, so our own status patches never retrigger us);
* a timer ticking every few seconds that reconciles the resources that are due: the jittered
  ``--resync``, or the capped exponential backoff after a failure (both in
  :class:`~apiproxy.multicluster.controller.Schedule`, so they are tested with an injected clock);
* delete (with kopf's finalizer): the peer leaves the trust store, the mesh and its remote secret goes.

Peering is off (``standalone``): the Deployment runs one replica with the ``Recreate`` strategy, and every
write is idempotent and compare-before-write, so even an overlap during a rollout converges; peering would
need its own CRD and RBAC for no gain here. Progress is kept in annotations under ``apiproxy.io``, not in
``status``, which is ours (Deckhouse's fields plus conditions).
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from apiproxy.multicluster import model
from apiproxy.multicluster.controller import Controller, Snapshot

log = logging.getLogger("apiproxy.multicluster")

RESOURCE = (model.GROUP, model.VERSION, model.PLURAL)


def _others(index: Any) -> dict[str, Snapshot]:
    """The index as ``name → Snapshot`` (each key holds one value: names are unique)."""
    out: dict[str, Snapshot] = {}
    for name, values in (index or {}).items():
        for snapshot in values:
            out[str(name)] = snapshot
    return out


def tick_interval(resync: float) -> float:
    return max(0.2, min(5.0, resync / 4.0))


def build_registry(controller: Controller, *, kubeconfig_login: Any = None) -> kopf.OperatorRegistry:
    """A registry of their own (never kopf's global one), so tests can run several controllers at once."""
    registry = kopf.OperatorRegistry()
    settings = controller.settings

    @kopf.on.startup(id="configure", registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True
        settings.scanning.disabled = True  # one known CRD: no need to watch every CRD in the cluster
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="apiproxy.io")
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix="apiproxy.io", key="last-handled-configuration"
        )
        settings.persistence.finalizer = "apiproxy.io/multicluster-cleanup"
        settings.posting.level = logging.WARNING  # kopf's own events: only problems; ours are explicit
        settings.watching.server_timeout = 300
        settings.queueing.error_delays = (1, 2, 5, 10, 30)
        await controller.startup()

    if kubeconfig_login is not None:

        @kopf.on.login(id="login", registry=registry)
        def login(**_: Any) -> kopf.ConnectionInfo:
            info: kopf.ConnectionInfo = kubeconfig_login()
            return info

    @kopf.index(*RESOURCE, id="peers", registry=registry)
    def peers(body: kopf.Body, name: str, **_: Any) -> dict[str, Snapshot]:
        return {name: Snapshot.of(body)}

    async def reconcile(body: kopf.Body, patch: kopf.Patch, peers: Any) -> None:
        try:
            status = await controller.reconcile(body, _others(peers))
        except Exception as exc:  # a write failed: keep the old status, let kopf retry later
            delay = controller.schedule.due.get(body.metadata.name, 0) - controller.clock()
            raise kopf.TemporaryError(f"{type(exc).__name__}: {exc}"[:300], delay=max(1.0, delay)) from None
        patch.status.update(status)

    @kopf.on.create(*RESOURCE, id="established", backoff=settings.retry_base, registry=registry)
    @kopf.on.resume(*RESOURCE, id="established", backoff=settings.retry_base, registry=registry)
    async def established(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        await reconcile(body, patch, kwargs["peers"])

    @kopf.on.update(
        *RESOURCE, id="spec_changed", field="spec", backoff=settings.retry_base, registry=registry
    )
    async def spec_changed(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        await reconcile(body, patch, kwargs["peers"])

    @kopf.on.update(
        *RESOURCE,
        id="identity_accepted",
        field=f"metadata.annotations.{model.ACCEPT_IDENTITY_ANNOTATION}",
        backoff=settings.retry_base,
        registry=registry,
    )
    async def identity_accepted(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        await reconcile(body, patch, kwargs["peers"])

    @kopf.timer(
        *RESOURCE,
        id="resync",
        interval=tick_interval(settings.resync),
        backoff=settings.retry_base,
        registry=registry,
    )
    async def resync(body: kopf.Body, patch: kopf.Patch, **kwargs: Any) -> None:
        if controller.schedule.is_due(body.metadata.name):
            await reconcile(body, patch, kwargs["peers"])

    @kopf.on.delete(*RESOURCE, id="removed", backoff=settings.retry_base, registry=registry)
    async def removed(name: str, **kwargs: Any) -> None:
        await controller.delete(name, _others(kwargs["peers"]))

    return registry

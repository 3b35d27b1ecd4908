"""The controller's edge logic, independent of kopf: one reconcile with its writes, deletion, scheduling.

The kopf layer (:mod:`.operator`) hands in the resource and a snapshot of every other resource (kopf's
index, complete before any handler runs), and patches the status this returns. Outputs shared by all
peers (trust store, mesh settings) are computed from that snapshot plus the fresh result, so a restart
or one resource's reconcile never drops another peer.

Order inside a reconcile: fetch, then the per-peer remote secret, then the shared trust store and mesh
ConfigMap, and the status last (by kopf, after we return). An exception anywhere leaves the previous
status; the next attempt recomputes everything from scratch and writes only what differs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from apiproxy.auth.keys import PrivateKey
from apiproxy.multicluster import conditions as cond
from apiproxy.multicluster import model, outputs, rotation, tokens
from apiproxy.multicluster.backoff import resync_delay, retry_delay
from apiproxy.multicluster.conditions import Condition, Reason
from apiproxy.multicluster.fetch import Fetcher
from apiproxy.multicluster.keypair import ensure_keypair, write_keyring
from apiproxy.multicluster.kube import Conflict, Objects, apply, configmap_body, secret_body, secret_data
from apiproxy.multicluster.metrics import ControllerMetrics
from apiproxy.multicluster.reconcile import Context, Result, rfc3339
from apiproxy.multicluster.reconcile import reconcile as reconcile_peer
from apiproxy.multicluster.settings import MulticlusterSettings

log = logging.getLogger("apiproxy.multicluster")

#: ``(resource body, event type, reason, message)``; :class:`~apiproxy.multicluster.events.EventPoster`
#: in production.
EventSink = Callable[[Mapping[str, Any], str, str, str], None]


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What the index keeps of one resource: enough to rebuild the shared outputs and spot duplicates."""

    name: str
    created: str
    status: Mapping[str, Any]
    enable_ingress_gateway: bool = True

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> Snapshot:
        meta = body.get("metadata") or {}
        spec = body.get("spec") or {}
        return cls(
            name=str(meta.get("name", "")),
            created=str(meta.get("creationTimestamp") or ""),
            status=dict(body.get("status") or {}),
            enable_ingress_gateway=spec.get("enableIngressGateway", True) is not False,
        )

    def peer(self) -> outputs.PeerState:
        return outputs.PeerState(
            self.name,
            outputs.public_from_status(self.status),
            outputs.private_from_status(self.status),
            self.enable_ingress_gateway,
            outputs.next_key_from_status(self.status),
        )

    def pinned_uuid(self) -> str | None:
        pinned = self.status.get("pinnedIdentity")
        uuid = pinned.get("clusterUUID") if isinstance(pinned, Mapping) else None
        return uuid if isinstance(uuid, str) else None


def api_token_of(secret: Mapping[str, Any] | None) -> str | None:
    """The bearer token inside the kubeconfig of a remote secret we wrote earlier."""
    for value in secret_data(secret).values():
        try:
            config = yaml.safe_load(value)
            token = config["users"][0]["user"]["token"]
        except (yaml.YAMLError, KeyError, IndexError, TypeError):
            continue
        if isinstance(token, str):
            return token
    return None


@dataclass
class Schedule:
    """When each resource is next due, with backoff after consecutive failures."""

    resync: float
    retry_base: float
    retry_cap: float
    clock: Callable[[], float] = time.time
    due: dict[str, float] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)

    def done(self, name: str, ok: bool) -> float:
        if ok:
            self.failures.pop(name, None)
            delay = resync_delay(self.resync)
        else:
            self.failures[name] = self.failures.get(name, 0) + 1
            delay = retry_delay(self.failures[name], base=self.retry_base, cap=self.retry_cap)
        self.due[name] = self.clock() + delay
        return delay

    def is_due(self, name: str) -> bool:
        return self.clock() >= self.due.get(name, 0.0)

    def forget(self, name: str) -> None:
        self.due.pop(name, None)
        self.failures.pop(name, None)


class Controller:
    def __init__(
        self,
        settings: MulticlusterSettings,
        objects: Objects,
        fetcher: Fetcher,
        *,
        metrics: ControllerMetrics | None = None,
        clock: Callable[[], float] = time.time,
        events: EventSink | None = None,
    ) -> None:
        if not settings.cluster_uuid:
            raise ValueError("--cluster-uuid is required")
        if not model.is_uuid(settings.cluster_uuid):
            raise ValueError(f"--cluster-uuid {settings.cluster_uuid!r} is not a UUID")
        self.settings = settings
        self.objects = objects
        self.fetcher = fetcher
        self.metrics = metrics or ControllerMetrics()
        self.clock = clock
        self.events: EventSink = events or (lambda *_: None)
        self.schedule = Schedule(settings.resync, settings.retry_base, settings.retry_cap, clock)
        self.key: PrivateKey | None = None
        self._locks: dict[str, asyncio.Lock] = {}
        self._shared_lock = asyncio.Lock()
        #: name → (creationTimestamp, pinned UUID) as of this process's last reconcile of it.
        self._pins: dict[str, tuple[str, str | None]] = {}
        #: The last status this process computed per resource. Only this controller writes status, so
        #: it is never older than the body kopf hands in, which can be: a handler queued behind another
        #: one for the same resource runs with the body of its own event. Reconciling from a stale body
        #: would forget the pinned identity and drop an established peer from the trust store.
        self._statuses: dict[str, dict[str, Any]] = {}

    async def startup(self) -> None:
        self.key = await ensure_keypair(self.objects, self.settings.namespace)
        await self._ensure_trust_store()

    async def _ensure_trust_store(self) -> None:
        """Create the trust Secret, trusting nobody, when it does not exist yet. The proxy mounts it and
        the exporter watches it, so on a fresh install both start (and the Deployments become Available)
        before the first peer is established. An existing one is never touched here: after a restart it
        holds peers the first reconciles have not re-read yet."""
        ns = self.settings.namespace
        if await self.objects.get("Secret", ns, model.TRUST_SECRET) is not None:
            return
        empty = secret_body(
            model.TRUST_SECRET,
            ns,
            {model.TRUST_KEY: outputs.trust_store(())},
            labels={model.MANAGED_BY_LABEL: model.MANAGED_BY},
        )
        try:
            await self.objects.create("Secret", ns, empty)
        except Conflict:
            return  # written meanwhile (by a peer's first reconcile, or by an operator): theirs stands
        self.metrics.writes.labels("trust").inc()
        log.info("created the trust store Secret %s/%s, trusting no peer yet", ns, model.TRUST_SECRET)

    async def signing_key(self) -> PrivateKey:
        """The key to sign with now: the keypair Secret is re-read, so ``keys rotate`` takes effect and a
        finished rotation is completed here (the next key promoted, written once)."""
        ns = self.settings.namespace
        secret = await self.objects.get("Secret", ns, model.KEYPAIR_SECRET)
        if secret is None:
            self.key = await ensure_keypair(self.objects, ns)
            return self.key
        keyring = rotation.Keyring.from_secret(
            secret_data(secret), (secret.get("metadata") or {}).get("annotations")
        )
        lifetime = max(self.settings.api_token_ttl, tokens.PRIVATE_TOKEN_TTL) + 300.0
        phase = keyring.phase(
            self.clock(), publish_period=self.settings.rotation_publish_period, token_lifetime=lifetime
        )
        if phase == rotation.DONE:
            await write_keyring(self.objects, secret, keyring.promoted())
            log.info("key rotation finished: the next key is now the current one")
            keyring = keyring.promoted()
            phase = rotation.STEADY
        self.key = keyring.signing_key(phase)
        return self.key

    def _lock(self, name: str) -> asyncio.Lock:
        return self._locks.setdefault(name, asyncio.Lock())

    # -- reconcile -----------------------------------------------------------------------------------

    async def reconcile(self, body: Mapping[str, Any], others: Mapping[str, Snapshot]) -> dict[str, Any]:
        """Reconcile one resource now; returns the status to patch. Raises only when a write failed."""
        meta = body.get("metadata") or {}
        name = str(meta["name"])
        async with self._lock(name):
            started = time.monotonic()
            try:
                status, ok = await self._reconcile(name, body, others)
            except Exception:
                self.schedule.done(name, ok=False)
                raise
            finally:
                self.metrics.reconcile_seconds.observe(time.monotonic() - started)
            self.schedule.done(name, ok)
            return status

    async def _reconcile(
        self, name: str, body: Mapping[str, Any], others: Mapping[str, Snapshot]
    ) -> tuple[dict[str, Any], bool]:
        key = await self.signing_key()
        meta = body.get("metadata") or {}
        previous = dict(self._statuses.get(name) or body.get("status") or {})
        generation = meta.get("generation")
        try:
            spec = model.parse_spec(name, body.get("spec") or {}, meta.get("annotations") or {})
        except model.SpecError as exc:
            invalid = self._invalid_spec(body, previous, str(exc), generation)
            self._statuses[name] = invalid
            return invalid, False

        ns = self.settings.namespace
        secret_name = model.remote_secret_name(name)
        existing = await self.objects.get("Secret", ns, secret_name)
        ours = {k: v for k, v in others.items() if k != name}
        me = dataclasses.replace(Snapshot.of(body), status=previous)

        def claimed_by_other(uuid: str) -> str | None:
            # The index may lag our own latest status patches by kopf's batching window, so the pins
            # this process made itself count too.
            owners = {s.name: s.created for s in ours.values() if s.pinned_uuid() == uuid}
            for other, (created, pinned) in self._pins.items():
                if other != name and other in ours and pinned == uuid:
                    owners[other] = created
            if me.pinned_uuid() == uuid:
                owners[name] = me.created
            if not owners:
                return None
            first = min(owners.items(), key=lambda item: (item[1], item[0]))[0]
            return None if first == name else first

        ctx = Context(self.settings.cluster_uuid, key, self.settings.api_token_ttl, self.clock)
        result = await reconcile_peer(
            spec,
            previous,
            ctx,
            self.fetcher,
            generation=generation,
            existing_api_token=api_token_of(existing),
            claimed_by_other=claimed_by_other,
        )
        if result.remote_secret is not None:
            desired = dict(result.remote_secret)
            string_data = desired.pop("stringData")
            metadata = {**desired["metadata"], "namespace": ns}
            secret = secret_body(
                secret_name,
                ns,
                {k: v.encode() for k, v in string_data.items()},
                labels=metadata["labels"],
                annotations=metadata["annotations"],
            )
            if await apply(self.objects, "Secret", secret):
                self.metrics.writes.labels("remote-secret").inc()
                log.info("wrote remote secret %s/%s for peer %s", ns, secret_name, name)
        if result.duplicate and existing is not None:
            await self.objects.delete("Secret", ns, secret_name)
            log.warning("peer %s duplicates another resource's peer: its remote secret is removed", name)
        self._pins[name] = (me.created, result.status.get("pinnedIdentity", {}).get("clusterUUID"))
        peers = {k: s.peer() for k, s in ours.items()}
        peers[name] = result.peer
        await self.write_shared(peers)
        self._observe(name, result)
        for change in result.changed:
            kind = "Normal" if change.ok else "Warning"
            self.events(
                body,
                kind,
                f"{change.type}{'' if change.ok else 'Failed'}",
                f"{change.reason}: {change.message}"[:1000],
            )
        self._statuses[name] = result.status
        return result.status, result.ok

    def _invalid_spec(
        self, body: Mapping[str, Any], previous: Mapping[str, Any], message: str, generation: Any
    ) -> dict[str, Any]:
        now = rfc3339(self.clock())
        bad = [Condition(t, False, Reason.INVALID_SPEC, message) for t in cond.TYPES[:4]]
        merged, changed = cond.merge(previous.get("conditions"), bad, now=now, generation=generation)
        if changed:
            self.events(body, "Warning", "InvalidSpec", message[:1000])
        return {**previous, "conditions": merged, "observedGeneration": generation}

    async def write_shared(self, peers: Mapping[str, outputs.PeerState]) -> None:
        """The trust store and mesh settings from every peer; serialized so two writers never interleave."""
        ns = self.settings.namespace
        labels = {model.MANAGED_BY_LABEL: model.MANAGED_BY}
        async with self._shared_lock:
            trust = secret_body(
                model.TRUST_SECRET, ns, {model.TRUST_KEY: outputs.trust_store(peers.values())}, labels=labels
            )
            if await apply(self.objects, "Secret", trust):
                self.metrics.writes.labels("trust").inc()
                log.info(
                    "trust store now holds %d peer(s)", sum(p.public is not None for p in peers.values())
                )
            mesh = configmap_body(
                self.settings.mesh_configmap, ns, {model.MESH_KEY: outputs.mesh_yaml(peers.values())}, labels
            )
            if await apply(self.objects, "ConfigMap", mesh):
                self.metrics.writes.labels("mesh").inc()

    def _observe(self, name: str, result: Result) -> None:
        m, now, steps = self.metrics, self.clock(), result.steps
        m.fetch_error.labels(name, steps.public_url).set(0 if result.steps.public_ok else 1)
        if steps.public_ok:
            m.last_success.labels(name, "public").set(now)
        if steps.private_ok:
            m.last_success.labels(name, "private").set(now)
        if steps.api_host:
            m.api_check_error.labels(name, steps.api_host).set(0 if steps.api_ok else 1)
            if steps.api_ok:
                m.last_success.labels(name, "api").set(now)
        if result.token_expires is not None:
            m.token_expiry.labels(name).set(result.token_expires)
        m.identity_changed.labels(name).set(1 if result.identity_changed else 0)
        m.ready.labels(name).set(1 if result.ok else 0)

    # -- deletion ------------------------------------------------------------------------------------

    async def delete(self, name: str, others: Mapping[str, Snapshot]) -> None:
        """Remove the peer from the trust store and the mesh, and delete its remote secret."""
        async with self._lock(name):
            peers = {k: s.peer() for k, s in others.items() if k != name}
            await self.write_shared(peers)
            await self.objects.delete("Secret", self.settings.namespace, model.remote_secret_name(name))
            self.schedule.forget(name)
            self._pins.pop(name, None)
            self._statuses.pop(name, None)
            self.metrics.forget(name)
            log.info("peer %s removed: trust entry, remote secret and mesh entry deleted", name)

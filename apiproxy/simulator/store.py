"""The object store: current state, a global resourceVersion, bounded per-resource history, watch fan-out.

Like etcd plus kube's watch cache, in one process and one event loop:

* every mutation takes the next global revision (``resourceVersion``, a decimal string on the wire);
* each resource keeps the last ``history_limit`` events; older ones are *compacted*, and a watch or a
  ``continue`` token that needs them gets ``410 Expired``;
* each object is serialised once, on write, and served as bytes by LIST/GET/WATCH;
* watchers are plain objects with a bounded deque and a wake-up event, fed synchronously by the
  mutation; a watcher that falls ``queue_size`` events behind is closed, as kube closes slow watchers.

All methods are synchronous and must be called on the event loop's thread (or before it runs); they
raise :class:`apiproxy.status.StatusError` with kube's code, reason and message on failure, so the HTTP
layer renders them as they are.

In-process use::

    store.create({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x", "namespace": "a"}})
    obj = store.get("configmaps", "a", "x"); obj["data"] = {"k": "v"}; store.update(obj)
    store.patch("cm", "a", "x", {"metadata": {"labels": {"l": "1"}}})
    store.delete("configmaps", "a", "x")
"""

from __future__ import annotations

import asyncio
import bisect
import builtins
import copy
import datetime
import heapq
import json
import secrets
import uuid
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from apiproxy.simulator import resources as res
from apiproxy.simulator.resources import ResourceType
from apiproxy.simulator.selectors import FieldSelector, LabelSelector
from apiproxy.status import StatusError

ADDED = "ADDED"
MODIFIED = "MODIFIED"
DELETED = "DELETED"


def dumps(obj: Any) -> bytes:
    """Compact JSON as Go's encoding/json writes it (no spaces, UTF-8)."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def now_rfc3339() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class StoredObject:
    """One object version: its serialised form plus what selectors and sorting need.

    ``body`` is the JSON without ``kind``/``apiVersion`` (how items appear in a typed list); ``full``
    (with them) and the PartialObjectMetadata form are built on first use and cached.
    """

    __slots__ = ("_full", "_meta", "body", "fields", "key", "labels", "name", "namespace", "resource", "rv")

    def __init__(self, resource: ResourceType, obj: Mapping[str, Any]) -> None:
        meta = obj["metadata"]
        self.resource = resource
        self.name: str = meta["name"]
        self.namespace: str = meta.get("namespace", "")
        self.key = f"{self.namespace}/{self.name}" if resource.namespaced else self.name
        self.rv = int(meta["resourceVersion"])
        self.labels: dict[str, str] = dict(meta.get("labels") or {})
        fields = {"metadata.name": self.name}
        if resource.namespaced:
            fields["metadata.namespace"] = self.namespace
        for name, getter in resource.extra_fields.items():
            fields[name] = getter(obj)
        self.fields = fields
        self.body = dumps({k: v for k, v in obj.items() if k not in ("kind", "apiVersion")})
        self._full: bytes | None = None
        self._meta: bytes | None = None

    @property
    def full(self) -> bytes:
        if self._full is None:
            r = self.resource
            prefix = b'{"kind":"%s","apiVersion":"%s"' % (r.kind.encode(), r.api_version.encode())
            self._full = prefix + (b"}" if self.body == b"{}" else b"," + self.body[1:])
        return self._full

    @property
    def partial(self) -> bytes:
        """``meta.k8s.io/v1 PartialObjectMetadata`` for metadata-only clients."""
        if self._meta is None:
            meta = json.loads(self.body).get("metadata", {})
            self._meta = dumps(
                {"kind": "PartialObjectMetadata", "apiVersion": "meta.k8s.io/v1", "metadata": meta}
            )
        return self._meta

    def to_dict(self) -> dict[str, Any]:
        """A fresh, mutable copy of the object (with ``kind``/``apiVersion``)."""
        obj: dict[str, Any] = json.loads(self.full)
        return obj

    def with_rv(self, rv: int) -> StoredObject:
        obj = self.to_dict()
        obj["metadata"]["resourceVersion"] = str(rv)
        return StoredObject(self.resource, obj)


class Event:
    """One history entry; watchers share it and its serialised lines."""

    __slots__ = ("_lines", "_prev_at_rv", "obj", "prev", "rv", "type")

    def __init__(self, type_: str, obj: StoredObject, prev: StoredObject | None, rv: int) -> None:
        self.type = type_
        self.obj = obj
        self.prev = prev
        self.rv = rv
        self._lines: dict[tuple[str, str, bool], bytes] = {}
        self._prev_at_rv: StoredObject | None = None

    def prev_at_rv(self) -> StoredObject:
        """The previous state stamped with this event's RV: what kube sends as DELETED when an object
        stops matching a watcher's selectors."""
        assert self.prev is not None
        if self._prev_at_rv is None:
            self._prev_at_rv = self.prev.with_rv(self.rv)
        return self._prev_at_rv

    def line(self, type_: str, use_prev: bool, form: str) -> bytes:
        key = (type_, form, use_prev)
        line = self._lines.get(key)
        if line is None:
            so = self.prev_at_rv() if use_prev else self.obj
            line = event_line(type_, so.partial if form == "meta" else so.full)
            self._lines[key] = line
        return line


def event_line(type_: str, obj: bytes) -> bytes:
    return b'{"type":"%s","object":%s}\n' % (type_.encode(), obj)


class Watcher:
    """A registered watch: filters, a bounded backlog and a wake-up flag; no task of its own.

    ``pending`` holds ``(type, event, use_prev)``; the HTTP handler drains it. ``closed`` ends the stream
    (server stop, overflow); ``overflowed`` tells why.
    """

    __slots__ = ("closed", "fsel", "lsel", "namespace", "overflowed", "pending", "queue_size", "wake")

    def __init__(
        self,
        namespace: str | None,
        lsel: LabelSelector | None,
        fsel: FieldSelector | None,
        queue_size: int,
    ) -> None:
        self.namespace = namespace
        self.lsel = lsel or None
        self.fsel = fsel or None
        self.queue_size = queue_size
        self.pending: deque[tuple[str, Event, bool]] = deque()
        self.wake = asyncio.Event()
        self.closed = False
        self.overflowed = False

    def matches(self, so: StoredObject) -> bool:
        if self.namespace is not None and so.namespace != self.namespace:
            return False
        if self.lsel is not None and not self.lsel.matches(so.labels):
            return False
        return self.fsel is None or self.fsel.matches(so.fields)

    def translate(self, ev: Event) -> tuple[str, bool] | None:
        """Which event (type, send-previous-state) this watcher sees for ``ev``, as kube's cacheWatcher
        decides: an object entering the selection is ADDED, one leaving it is DELETED."""
        if self.lsel is None and self.fsel is None and self.namespace is None:
            return ev.type, False
        if ev.type == DELETED:
            return (DELETED, False) if self.matches(ev.obj) else None
        cur = self.matches(ev.obj)
        old = ev.prev is not None and self.matches(ev.prev)
        if cur:
            return (MODIFIED if old else ADDED), False
        if old:
            return DELETED, True
        return None

    def push(self, ev: Event) -> None:
        if self.closed:
            return
        seen = self.translate(ev)
        if seen is None:
            return
        if len(self.pending) >= self.queue_size:
            self.overflowed = True
            self.close()
            return
        self.pending.append((seen[0], ev, seen[1]))
        self.wake.set()

    def close(self) -> None:
        self.closed = True
        self.wake.set()


class Collection:
    """All objects of one resource, sorted by etcd-style key, with its history and watchers."""

    def __init__(self, resource: ResourceType, history_limit: int) -> None:
        self.resource = resource
        self.objects: dict[str, StoredObject] = {}
        self.keys: list[str] = []
        self.history: deque[Event] = deque()
        self.history_limit = history_limit
        #: Highest RV of an event no longer in history: watches/continues from below it are 410.
        self.compacted_rv = 0
        self.watchers: set[Watcher] = set()

    def record(self, ev: Event) -> None:
        if len(self.history) >= self.history_limit:
            self.compacted_rv = self.history.popleft().rv
        self.history.append(ev)
        for w in tuple(self.watchers) if self.watchers else ():
            w.push(ev)
            if w.closed:
                self.watchers.discard(w)

    def events_after(self, rv: int) -> list[Event]:
        hist = self.history
        if not hist or hist[-1].rv <= rv:
            return []
        # History is sorted by rv; bisect over a deque via a key-less scan from the right is O(k).
        out: list[Event] = []
        for ev in reversed(hist):
            if ev.rv <= rv:
                break
            out.append(ev)
        out.reverse()
        return out

    def iter_from(self, start_after: str | None) -> Iterator[StoredObject]:
        keys = self.keys
        idx = 0 if start_after is None else bisect.bisect_right(keys, start_after)
        objects = self.objects
        for i in range(idx, len(keys)):
            yield objects[keys[i]]

    def snapshot_iter(self, rv: int, start_after: str | None) -> Iterator[StoredObject]:
        """Objects as they were at ``rv`` (from current state by undoing later history), sorted, after
        ``start_after``. The caller has checked that ``rv`` is not compacted."""
        overrides: dict[str, StoredObject | None] = {}
        for ev in self.events_after(rv):
            key = ev.obj.key
            if key not in overrides:
                overrides[key] = ev.prev if ev.type != ADDED else None
        if not overrides:
            yield from self.iter_from(start_after)
            return
        extra = sorted(k for k in overrides if k not in self.objects)
        if start_after is not None:
            extra = extra[bisect.bisect_right(extra, start_after) :]
        current = (so.key for so in self.iter_from(start_after))
        for key in heapq.merge(current, extra):
            so = overrides[key] if key in overrides else self.objects[key]
            if so is not None:
                yield so


class Store:
    """Objects of every served resource, one global resourceVersion. See the module docstring."""

    def __init__(self, *, history_limit: int = 10000, watch_queue_size: int = 4096) -> None:
        self.history_limit = history_limit
        self.watch_queue_size = watch_queue_size
        self.resource_version = 1
        self.collections: dict[ResourceType, Collection] = {
            r: Collection(r, history_limit) for r in res.RESOURCES if r.storable
        }

    # -- lookups -----------------------------------------------------------------------------------

    def collection(self, resource: ResourceType | str) -> Collection:
        r = res.resolve(resource)
        coll = self.collections.get(r)
        if coll is None and r.custom:
            coll = self.collections[r] = Collection(r, self.history_limit)
        if coll is None:
            raise StatusError(405, f"{r.qualified} cannot be stored", reason="MethodNotAllowed")
        return coll

    def _resource_for(self, obj: Mapping[str, Any], resource: ResourceType | str | None) -> ResourceType:
        if resource is not None:
            return res.resolve(resource)
        r = res.for_kind(str(obj.get("apiVersion", "")), str(obj.get("kind", "")))
        if r is None:
            raise StatusError(
                400, f"no resource for apiVersion {obj.get('apiVersion')!r} kind {obj.get('kind')!r}"
            )
        return r

    @staticmethod
    def _key(r: ResourceType, namespace: str | None, name: str) -> str:
        return f"{namespace or ''}/{name}" if r.namespaced else name

    def get_stored(self, resource: ResourceType | str, namespace: str | None, name: str) -> StoredObject:
        coll = self.collection(resource)
        so = coll.objects.get(self._key(coll.resource, namespace, name))
        if so is None:
            r = coll.resource
            raise StatusError(
                404, f'{r.qualified} "{name}" not found', reason="NotFound", details=r.not_found_details(name)
            )
        return so

    def get(self, resource: ResourceType | str, namespace: str | None, name: str) -> dict[str, Any] | None:
        """A mutable copy of the object, or None."""
        try:
            return self.get_stored(resource, namespace, name).to_dict()
        except StatusError as err:
            if err.code == 404:
                return None
            raise

    def list(self, resource: ResourceType | str, namespace: str | None = None) -> list[dict[str, Any]]:
        coll = self.collection(resource)
        return [so.to_dict() for so in coll.iter_from(None) if namespace is None or so.namespace == namespace]

    def count(self, resource: ResourceType | str) -> int:
        return len(self.collection(resource).objects)

    # -- mutations ---------------------------------------------------------------------------------

    def _normalise(self, r: ResourceType, obj: Mapping[str, Any]) -> dict[str, Any]:
        src = json.loads(dumps(obj))
        meta = src.get("metadata")
        if not isinstance(meta, dict):
            meta = {}
        out: dict[str, Any] = {"kind": r.kind, "apiVersion": r.api_version, "metadata": meta}
        for k, v in src.items():
            if k not in ("kind", "apiVersion", "metadata"):
                out[k] = v
        if not r.namespaced:
            meta.pop("namespace", None)
        return out

    def _commit(self, coll: Collection, type_: str, so: StoredObject, prev: StoredObject | None) -> None:
        if type_ == DELETED:
            del coll.objects[so.key]
            del coll.keys[bisect.bisect_left(coll.keys, so.key)]
        else:
            if prev is None:
                bisect.insort(coll.keys, so.key)
            coll.objects[so.key] = so
        coll.record(Event(type_, so, prev, so.rv))

    def _next_rv(self) -> int:
        self.resource_version += 1
        return self.resource_version

    def create(self, obj: Mapping[str, Any], *, resource: ResourceType | str | None = None) -> dict[str, Any]:
        """Create ``obj`` (resource from ``apiVersion``/``kind`` unless given); emits ADDED.

        Sets uid, creationTimestamp (unless given) and resourceVersion; honours ``generateName``.
        409 AlreadyExists if the key is taken. Returns the stored object.
        """
        return self.create_stored(obj, resource=resource).to_dict()

    def create_stored(
        self, obj: Mapping[str, Any], *, resource: ResourceType | str | None = None
    ) -> StoredObject:
        """:meth:`create`, returning the stored version itself (no copy: for bulk seeding and HTTP)."""
        r = self._resource_for(obj, resource)
        coll = self.collection(r)
        new = self._normalise(r, obj)
        meta = new["metadata"]
        if not meta.get("name"):
            if meta.get("generateName"):
                meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
            else:
                raise StatusError(
                    422,
                    f'{r.kind} "" is invalid: metadata.name: Required value: '
                    "name or generateName is required",
                    reason="Invalid",
                    details={
                        "kind": r.kind,
                        "causes": [{"reason": "FieldValueRequired", "field": "metadata.name"}],
                    },
                )
        if r.namespaced and not meta.get("namespace"):
            meta["namespace"] = "default"
        key = self._key(r, meta.get("namespace"), meta["name"])
        if key in coll.objects:
            raise StatusError(
                409,
                f'{r.qualified} "{meta["name"]}" already exists',
                reason="AlreadyExists",
                details=r.not_found_details(meta["name"]),
            )
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_rfc3339())
        meta.pop("deletionTimestamp", None)
        if r.custom:
            meta["generation"] = 1
        if r.has_status_subresource:
            new.pop("status", None)  # kube ignores status on create when /status exists
        meta["resourceVersion"] = str(self._next_rv())
        so = StoredObject(r, new)
        self._commit(coll, ADDED, so, None)
        return so

    def update(
        self,
        obj: Mapping[str, Any],
        *,
        resource: ResourceType | str | None = None,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Replace an existing object; emits MODIFIED.

        If ``metadata.resourceVersion`` is set it must be current (else 409 Conflict, as kube's optimistic
        concurrency); unset means unconditional. uid and creationTimestamp are kept from the stored object.

        Custom resources with a ``status`` subresource: ``subresource="status"`` changes only ``status``,
        the main resource everything but it; ``metadata.generation`` grows when anything outside
        ``metadata`` and ``status`` changes. Once deleted with finalizers (``deletionTimestamp`` set), the
        update that leaves no finalizer deletes the object.
        """
        r = self._resource_for(obj, resource)
        coll = self.collection(r)
        new = self._normalise(r, obj)
        meta = new["metadata"]
        name = meta.get("name", "")
        prev = self.get_stored(r, meta.get("namespace"), name)
        want_rv = meta.get("resourceVersion")
        if want_rv and str(want_rv) != str(prev.rv):
            raise StatusError(
                409,
                f'Operation cannot be fulfilled on {r.qualified} "{name}": the object has been modified; '
                "please apply your changes to the latest version and try again",
                reason="Conflict",
                details=r.not_found_details(name),
            )
        old = json.loads(prev.body)
        old_meta = old["metadata"]
        if r.has_status_subresource:
            if subresource == "status":
                status = new.get("status")
                new = {"kind": r.kind, "apiVersion": r.api_version, **old}
                new["metadata"]["resourceVersion"] = meta.get("resourceVersion")
                meta = new["metadata"]
                if status is None:
                    new.pop("status", None)
                else:
                    new["status"] = status
            elif "status" in old:
                new["status"] = old["status"]
            else:
                new.pop("status", None)
        for keep in ("uid", "creationTimestamp", "deletionTimestamp"):
            if keep in old_meta:
                meta[keep] = old_meta[keep]
            else:
                meta.pop(keep, None)
        if r.custom:
            ignored = ("kind", "apiVersion", "metadata", "status")
            changed = {k: v for k, v in new.items() if k not in ignored} != {
                k: v for k, v in old.items() if k not in ignored
            }
            meta["generation"] = int(old_meta.get("generation", 1)) + (1 if changed else 0)
        if r.namespaced:
            meta["namespace"] = prev.namespace
        meta["resourceVersion"] = str(self._next_rv())
        so = StoredObject(r, new)
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            self._commit(coll, DELETED, so, prev)
            return so.to_dict()
        self._commit(coll, MODIFIED, so, prev)
        return so.to_dict()

    def patch(
        self,
        resource: ResourceType | str,
        namespace: str | None,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Apply a JSON merge patch (RFC 7386); emits MODIFIED (see :meth:`update` for ``subresource``)."""
        current = self.get_stored(resource, namespace, name).to_dict()
        merged = merge_patch(current, patch)
        if not isinstance(merged, dict):
            raise StatusError(422, "patch must produce an object", reason="Invalid")
        meta = merged.setdefault("metadata", {})
        meta["name"] = name
        if namespace:
            meta["namespace"] = namespace
        if "resourceVersion" not in (patch.get("metadata") or {}):
            meta.pop("resourceVersion", None)
        return self.update(merged, resource=resource, subresource=subresource)

    def json_patch(
        self,
        resource: ResourceType | str,
        namespace: str | None,
        name: str,
        ops: builtins.list[Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        """Apply a JSON patch (RFC 6902); a failed ``test`` op (kopf's optimistic lock) is 422, as kube's."""
        current = self.get_stored(resource, namespace, name).to_dict()
        try:
            patched = apply_json_patch(current, ops)
        except JSONPatchError as err:
            raise StatusError(
                422,
                f"the server rejected our request due to an error in our request: {err}",
                reason="Invalid",
            ) from None
        if not isinstance(patched, dict):
            raise StatusError(422, "patch must produce an object", reason="Invalid")
        meta = patched.setdefault("metadata", {})
        meta["name"] = name
        if namespace:
            meta["namespace"] = namespace
        meta.pop("resourceVersion", None)
        return self.update(patched, resource=resource, subresource=subresource)

    def delete(self, resource: ResourceType | str, namespace: str | None, name: str) -> dict[str, Any]:
        """Delete an object; emits DELETED carrying the deletion's resourceVersion. Deleting a namespace
        deletes everything in it first (kube's namespace controller, minus the Terminating phase)."""
        coll = self.collection(resource)
        r = coll.resource
        prev = self.get_stored(r, namespace, name)
        prev_meta = json.loads(prev.body)["metadata"]
        if prev_meta.get("finalizers"):
            # Finalizers pending: mark for deletion; the update removing the last one deletes (kube's way).
            if prev_meta.get("deletionTimestamp"):
                return prev.to_dict()
            marked = json.loads(prev.body)
            marked["metadata"]["deletionTimestamp"] = now_rfc3339()
            marked["metadata"]["deletionGracePeriodSeconds"] = 0
            marked["metadata"]["resourceVersion"] = str(self._next_rv())
            so = StoredObject(r, marked)
            self._commit(coll, MODIFIED, so, prev)
            return so.to_dict()
        if r is res.NAMESPACES:
            for other in self.collections.values():
                if other.resource.namespaced:
                    for so in [o for o in other.objects.values() if o.namespace == name]:
                        self.delete(other.resource, so.namespace, so.name)
        tomb = prev.with_rv(self._next_rv())
        self._commit(coll, DELETED, tomb, prev)
        return tomb.to_dict()

    def delete_collection(
        self,
        resource: ResourceType | str,
        namespace: str | None,
        lsel: LabelSelector | None = None,
        fsel: FieldSelector | None = None,
    ) -> builtins.list[dict[str, Any]]:
        coll = self.collection(resource)
        probe = Watcher(namespace, lsel, fsel, 0)
        doomed = [so for so in coll.iter_from(None) if probe.matches(so)]
        return [self.delete(coll.resource, so.namespace, so.name) for so in doomed]

    def bulk_create(self, objs: Iterable[Mapping[str, Any]]) -> int:
        n = 0
        for obj in objs:
            self.create_stored(obj)
            n += 1
        return n

    # -- watch registration ------------------------------------------------------------------------

    def watch(
        self,
        resource: ResourceType | str,
        namespace: str | None = None,
        lsel: LabelSelector | None = None,
        fsel: FieldSelector | None = None,
        *,
        since: int | None = None,
    ) -> tuple[Watcher, builtins.list[StoredObject] | builtins.list[Event]]:
        """Register a watcher atomically with its starting point.

        ``since=None``: returns the current matching objects (to send as ADDED), then live events.
        ``since=N``: returns history events after N (410 if compacted), then live events.
        """
        coll = self.collection(resource)
        w = Watcher(namespace, lsel, fsel, self.watch_queue_size)
        backlog: builtins.list[StoredObject] | builtins.list[Event]
        if since is None:
            backlog = [so for so in coll.iter_from(None) if w.matches(so)]
        else:
            if since < coll.compacted_rv:
                raise StatusError(
                    410, f"too old resource version: {since} ({coll.compacted_rv})", reason="Expired"
                )
            backlog = coll.events_after(since)
        coll.watchers.add(w)
        return w, backlog

    def unwatch(self, resource: ResourceType | str, watcher: Watcher) -> None:
        self.collection(resource).watchers.discard(watcher)

    def watcher_count(self) -> int:
        return sum(len(c.watchers) for c in self.collections.values())

    def close_watchers(self) -> None:
        for coll in self.collections.values():
            for w in coll.watchers:
                w.close()
            coll.watchers.clear()


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch."""
    if not isinstance(patch, Mapping):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


class JSONPatchError(ValueError):
    """A JSON patch that cannot be applied (bad op, missing path, failed test)."""


def _pointer(path: str) -> builtins.list[str]:
    if path == "":
        return []
    if not path.startswith("/"):
        raise JSONPatchError(f"path {path!r} does not start with /")
    return [p.replace("~1", "/").replace("~0", "~") for p in path[1:].split("/")]


def _parent(doc: Any, parts: builtins.list[str]) -> Any:
    for part in parts[:-1]:
        if isinstance(doc, dict) and part in doc:
            doc = doc[part]
        elif isinstance(doc, list) and part.isdigit() and int(part) < len(doc):
            doc = doc[int(part)]
        else:
            raise JSONPatchError(f"path element {part!r} not found")
    return doc


def _get_at(doc: Any, parts: builtins.list[str]) -> Any:
    if not parts:
        return doc
    parent, last = _parent(doc, parts), parts[-1]
    if isinstance(parent, dict) and last in parent:
        return parent[last]
    if isinstance(parent, list) and last.isdigit() and int(last) < len(parent):
        return parent[int(last)]
    raise JSONPatchError(f"path {'/'.join(parts)!r} not found")


def _add(doc: Any, parts: builtins.list[str], value: Any) -> Any:
    if not parts:
        return value
    parent, last = _parent(doc, parts), parts[-1]
    if isinstance(parent, dict):
        parent[last] = value
    elif isinstance(parent, list):
        index = len(parent) if last == "-" else int(last) if last.isdigit() else -1
        if not 0 <= index <= len(parent):
            raise JSONPatchError(f"bad array index {last!r}")
        parent.insert(index, value)
    else:
        raise JSONPatchError("cannot add into a scalar")
    return doc


def _remove(doc: Any, parts: builtins.list[str]) -> Any:
    _get_at(doc, parts)
    parent, last = _parent(doc, parts), parts[-1]
    if isinstance(parent, dict):
        del parent[last]
    else:
        del parent[int(last)]
    return doc


def apply_json_patch(target: Any, ops: builtins.list[Any]) -> Any:
    """RFC 6902 on a copy: add, remove, replace, move, copy, test."""
    doc = copy.deepcopy(target)
    if not isinstance(ops, list):
        raise JSONPatchError("a JSON patch is an array of operations")
    for op in ops:
        if not isinstance(op, Mapping) or not isinstance(op.get("path"), str):
            raise JSONPatchError("each operation needs op and path")
        kind, parts = op.get("op"), _pointer(op["path"])
        if kind == "test":
            if _get_at(doc, parts) != op.get("value"):
                raise JSONPatchError(f"test failed at {op['path']}")
        elif kind == "add":
            doc = _add(doc, parts, copy.deepcopy(op.get("value")))
        elif kind == "remove":
            doc = _remove(doc, parts)
        elif kind == "replace":
            _get_at(doc, parts)
            doc = (
                _add(_remove(doc, parts), parts, copy.deepcopy(op.get("value"))) if parts else op.get("value")
            )
        elif kind in ("move", "copy"):
            source = _pointer(str(op.get("from", "")))
            value = copy.deepcopy(_get_at(doc, source))
            if kind == "move":
                doc = _remove(doc, source)
            doc = _add(doc, parts, value)
        else:
            raise JSONPatchError(f"unknown op {kind!r}")
    return doc

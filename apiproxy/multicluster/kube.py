"""The writes kopf does not do: Secrets and the mesh ConfigMap, with the official ``kubernetes`` client.

Each write is one full-object create or replace (with the ``resourceVersion`` read just before), so the
apiserver stores either the old object or the new one, never part of one; a conflict (someone else wrote
in between) is retried by the caller's next reconcile. Objects are compared by content first: an unchanged
object is not written at all.
"""

from __future__ import annotations

import asyncio
import base64
import importlib
import json
from collections.abc import Mapping
from typing import Any, Protocol


class Conflict(Exception):
    """The object changed (or appeared) between our read and our write."""


class Objects(Protocol):
    """The handful of calls the controller makes; the real one is :class:`KubeObjects`."""

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None: ...
    async def create(self, kind: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]: ...
    async def replace(
        self, kind: str, namespace: str, name: str, body: Mapping[str, Any]
    ) -> dict[str, Any]: ...
    async def delete(self, kind: str, namespace: str, name: str) -> None: ...


class KubeObjects:
    """:class:`Objects` over the official client, raw JSON in and out (no model objects)."""

    def __init__(self, api_client: Any) -> None:
        client: Any = importlib.import_module("kubernetes.client")
        self.core = client.CoreV1Api(api_client)
        self._exc: Any = importlib.import_module("kubernetes.client.exceptions")

    def _method(self, verb: str, kind: str) -> Any:
        suffix = {"Secret": "secret", "ConfigMap": "config_map", "Event": "event"}[kind]
        return getattr(self.core, f"{verb}_namespaced_{suffix}")

    def _call(self, verb: str, kind: str, *args: Any) -> dict[str, Any] | None:
        try:
            response = self._method(verb, kind)(*args, _preload_content=False)
        except self._exc.ApiException as exc:
            if exc.status == 404 and verb in ("read", "delete"):
                return None
            if exc.status == 409:
                raise Conflict(f"{kind} {args[1] if len(args) > 1 else ''}: {exc.reason}") from None
            raise
        try:
            data = json.loads(response.data)
        finally:
            response.release_conn()
        return data if isinstance(data, dict) else None

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._call, "read", kind, name, namespace)

    async def create(self, kind: str, namespace: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._call, "create", kind, namespace, dict(body)) or {}

    async def replace(self, kind: str, namespace: str, name: str, body: Mapping[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._call, "replace", kind, name, namespace, dict(body)) or {}

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        await asyncio.to_thread(self._call, "delete", kind, name, namespace)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def secret_body(
    name: str,
    namespace: str,
    data: Mapping[str, bytes],
    *,
    labels: Mapping[str, str] | None = None,
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if labels:
        metadata["labels"] = dict(labels)
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "data": {k: b64(v) for k, v in sorted(data.items())},
    }


def configmap_body(
    name: str, namespace: str, data: Mapping[str, str], labels: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "data": dict(sorted(data.items())),
    }


def _same(current: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Content equality: data, type, and the labels/annotations we set (others' additions are kept)."""
    if (current.get("data") or {}) != (desired.get("data") or {}):
        return False
    if desired.get("type") and current.get("type") != desired.get("type"):
        return False
    cur_meta, want_meta = current.get("metadata") or {}, desired.get("metadata") or {}
    for field in ("labels", "annotations"):
        have = cur_meta.get(field) or {}
        if any(have.get(k) != v for k, v in (want_meta.get(field) or {}).items()):
            return False
    return True


async def apply(objects: Objects, kind: str, desired: Mapping[str, Any]) -> bool:
    """Create or replace ``desired`` when its content differs; True when something was written."""
    meta = desired["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    current = await objects.get(kind, namespace, name)
    if current is None:
        await objects.create(kind, namespace, desired)
        return True
    if _same(current, desired):
        return False
    body = json.loads(json.dumps(desired))
    cur_meta = current.get("metadata") or {}
    body["metadata"]["resourceVersion"] = cur_meta.get("resourceVersion")
    for field in ("labels", "annotations"):
        merged = {**(cur_meta.get(field) or {}), **(body["metadata"].get(field) or {})}
        if merged:
            body["metadata"][field] = merged
    await objects.replace(kind, namespace, name, body)
    return True


def secret_data(secret: Mapping[str, Any] | None) -> dict[str, bytes]:
    """Decoded ``data`` of a Secret read from the API (undecodable values are skipped)."""
    out: dict[str, bytes] = {}
    for key, value in ((secret or {}).get("data") or {}).items():
        try:
            out[str(key)] = base64.b64decode(str(value), validate=True)
        except ValueError:
            continue
    return out

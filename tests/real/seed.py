"""Seed a real apiserver with the same mesh the simulator is seeded with.

The simulator's :func:`apiproxy.simulator.seed_mesh` already knows what an Istio mesh looks like
(namespaces, nodes, a few hundred pods with ``nodeName``, services, Endpoints and EndpointSlices, the
``istio`` ConfigMap in ``istio-system``, and Secrets that must stay unreadable). Here its objects are
created in a real cluster: server-set metadata is dropped, objects are created in dependency order, and
the pods' and nodes' ``status`` (which create ignores) is written through the status subresource, so both
worlds hold the same shapes and the contract tests can compare them.
"""

from __future__ import annotations

import http.client
import json
from dataclasses import dataclass
from typing import Any

from apiproxy.simulator import Simulator, seed_mesh
from tests.real.cluster import RealCluster

#: Creation order: namespaces first, then what lives in them.
ORDER = ("namespaces", "nodes", "configmaps", "secrets", "services", "endpoints", "endpointslices", "pods")
SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "managedFields", "generation", "selfLink")
#: Services whose clusterIP the simulator invented; the real apiserver allocates its own.
_SERVICE_SPEC_SERVER_SET = ("clusterIP", "clusterIPs")


@dataclass(frozen=True)
class Seeded:
    counts: dict[str, int]
    #: (namespace, name) of every Secret created: none may ever be read through the proxy.
    secrets: list[tuple[str, str]]


def mesh_objects(**options: Any) -> dict[str, list[dict[str, Any]]]:
    """The simulator's mesh as plain objects, by resource, ready to create in a real cluster."""
    sim = Simulator(tokens=set())
    seed_mesh(sim.store, **options)
    out: dict[str, list[dict[str, Any]]] = {}
    for resource in ORDER:
        objects = []
        for obj in sim.store.list(resource):
            meta = obj["metadata"]
            for key in SERVER_SET:
                meta.pop(key, None)
            if resource == "services":
                for key in _SERVICE_SPEC_SERVER_SET:
                    obj.get("spec", {}).pop(key, None)
            if resource == "namespaces":
                obj.pop("status", None)
                obj.get("spec", {}).pop("finalizers", None)
            objects.append(obj)
        out[resource] = objects
    return out


def seed(cluster: RealCluster, **options: Any) -> Seeded:
    """Create the mesh in ``cluster``; existing system objects (``default`` namespace, ...) are kept."""
    objects = mesh_objects(**options)
    existing = set(cluster.kubectl("get", "namespaces", "-o", "name").stdout.split())
    counts: dict[str, int] = {}
    conn = http.client.HTTPSConnection("127.0.0.1", cluster.port, context=cluster.admin_ssl(), timeout=60)
    try:
        for resource in ORDER:
            created = 0
            for obj in objects[resource]:
                meta = obj["metadata"]
                if resource == "namespaces" and f"namespace/{meta['name']}" in existing:
                    continue
                status = obj.pop("status", None) if resource in ("pods", "nodes") else None
                path = _collection_path(obj)
                code, body = _send(conn, "POST", path, obj)
                if code == 409:
                    continue
                if code != 201:
                    raise RuntimeError(
                        f"seeding {resource} {meta.get('namespace')}/{meta['name']}: {code} {body[:300]!r}"
                    )
                created += 1
                if status:
                    current = json.loads(body)
                    current["status"] = status
                    code, body = _send(conn, "PUT", f"{path}/{meta['name']}/status", current)
                    if code != 200:
                        raise RuntimeError(f"status of {resource} {meta['name']}: {code} {body[:300]!r}")
            counts[resource] = created
    finally:
        conn.close()
    secrets = [(s["metadata"]["namespace"], s["metadata"]["name"]) for s in objects["secrets"]]
    return Seeded(counts, secrets)


def _collection_path(obj: dict[str, Any]) -> str:
    api_version: str = obj["apiVersion"]
    prefix = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    plural = {
        "Namespace": "namespaces",
        "Node": "nodes",
        "ConfigMap": "configmaps",
        "Secret": "secrets",
        "Service": "services",
        "Endpoints": "endpoints",
        "EndpointSlice": "endpointslices",
        "Pod": "pods",
    }[obj["kind"]]
    namespace = obj["metadata"].get("namespace")
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"


def _send(
    conn: http.client.HTTPSConnection, method: str, path: str, obj: dict[str, Any]
) -> tuple[int, bytes]:
    conn.request(method, path, body=json.dumps(obj), headers={"Content-Type": "application/json"})
    resp = conn.getresponse()
    return resp.status, resp.read()

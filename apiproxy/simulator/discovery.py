"""Legacy discovery documents (``/api``, ``/apis``, ``/apis/<g>``, ``/api(s)/.../<v>``) and ``/version``.

Built once from the resource table and served as bytes. kubectl first asks for aggregated discovery;
answering the legacy types with ``Content-Type: application/json`` makes it fall back, as against an
apiserver without aggregated discovery.
"""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from apiproxy.simulator import resources as res
from apiproxy.simulator.resources import ResourceType
from apiproxy.simulator.store import dumps

KUBE_VERSION = {
    "major": "1",
    "minor": "30",
    "gitVersion": "v1.30.6",
    # Not a real commit: the simulator is no build of Kubernetes.
    "gitCommit": hashlib.sha1(b"apiproxy-simulator", usedforsecurity=False).hexdigest(),
    "gitTreeState": "clean",
    "buildDate": "2024-10-22T20:28:14Z",
    "goVersion": "go1.22.8",
    "compiler": "gc",
    "platform": "linux/amd64",
}


def _storage_hash(r: ResourceType) -> str:
    digest = hashlib.sha256(f"{r.api_version}/{r.kind}".encode()).digest()
    return base64.b64encode(digest[:8]).decode()


def api_resource_list(group: str, version: str) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    for r in res.resources_in(group, version):
        entry: dict[str, Any] = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": list(r.verbs),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        if r.storable:
            entry["storageVersionHash"] = _storage_hash(r)
        entries.append(entry)
        for sub in r.subresources:
            sub_entry: dict[str, Any] = {
                "name": f"{r.plural}/{sub.name}",
                "singularName": "",
                "namespaced": r.namespaced,
                "kind": sub.kind,
                "verbs": list(sub.verbs),
            }
            if sub.group:
                sub_entry["group"] = sub.group
                sub_entry["version"] = sub.version
            entries.append(sub_entry)
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": entries}


def api_group(group: str) -> dict[str, Any]:
    versions = [{"groupVersion": f"{group}/{v}", "version": v} for v in res.group_versions(group)]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions,
        "preferredVersion": versions[0],
    }


def api_group_list() -> dict[str, Any]:
    groups = [api_group(g) for g in dict.fromkeys(g for g, _ in res.GROUP_VERSIONS if g)]
    for g in groups:
        del g["kind"], g["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def static_documents() -> dict[str, bytes]:
    """Path → JSON body for every discovery document except ``/api`` (which names the address)."""
    docs = {"/apis": dumps(api_group_list()), "/version": dumps(KUBE_VERSION)}
    for group, version in res.GROUP_VERSIONS:
        if group:
            docs[f"/apis/{group}"] = dumps(api_group(group))
            docs[f"/apis/{group}/{version}"] = dumps(api_resource_list(group, version))
        else:
            docs[f"/api/{version}"] = dumps(api_resource_list(group, version))
    return docs

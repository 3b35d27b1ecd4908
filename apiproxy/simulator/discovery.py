"""Legacy discovery documents (``/api``, ``/apis``, ``/apis/<g>``, ``/api(s)/.../<v>``) and ``/version``.

Built once from the resource table and served as bytes. kubectl first asks for aggregated discovery;
answering the legacy types with ``Content-Type: application/json`` makes it fall back, as against an
apiserver without aggregated discovery.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
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


def _group_versions(extra: Sequence[ResourceType]) -> list[tuple[str, str]]:
    return list(dict.fromkeys([*res.GROUP_VERSIONS, *((r.group, r.version) for r in extra)]))


def api_resource_list(group: str, version: str, extra: Sequence[ResourceType] = ()) -> dict[str, Any]:
    entries: list[dict[str, Any]] = []
    served = res.resources_in(group, version)
    served += [r for r in extra if (r.group, r.version) == (group, version) and r not in served]
    for r in served:
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


def api_group(group: str, extra: Sequence[ResourceType] = ()) -> dict[str, Any]:
    versions = [
        {"groupVersion": f"{group}/{v}", "version": v} for g, v in _group_versions(extra) if g == group
    ]
    return {
        "kind": "APIGroup",
        "apiVersion": "v1",
        "name": group,
        "versions": versions,
        "preferredVersion": versions[0],
    }


def api_group_list(extra: Sequence[ResourceType] = ()) -> dict[str, Any]:
    groups = [api_group(g, extra) for g in dict.fromkeys(g for g, _ in _group_versions(extra) if g)]
    for g in groups:
        del g["kind"], g["apiVersion"]
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_versions(server_address: str) -> dict[str, Any]:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def static_documents(extra: Sequence[ResourceType] = ()) -> dict[str, bytes]:
    """Path → JSON body for every discovery document except ``/api`` (which names the address).

    ``extra``: custom resources this simulator serves (from the CRDs it was given).
    """
    docs = {"/apis": dumps(api_group_list(extra)), "/version": dumps(KUBE_VERSION)}
    for group, version in _group_versions(extra):
        if group:
            docs[f"/apis/{group}"] = dumps(api_group(group, extra))
            docs[f"/apis/{group}/{version}"] = dumps(api_resource_list(group, version, extra))
        else:
            docs[f"/api/{version}"] = dumps(api_resource_list(group, version, extra))
    return docs

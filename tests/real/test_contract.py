"""The simulator's contract with the real apiserver: one table of requests, sent through a proxy to each,
seeded with the same mesh. Where the proxy (or a client behind it) can tell a difference, the answers
must agree; where they do not, the difference is listed here with its reason.

What is compared is the *shape* a client depends on (status code, content type, kinds, which metadata
fields exist, Status reason/code/message/details, watch framing, table columns), not server-chosen values
(resourceVersions, uids, timestamps, continue-token bytes).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from apiproxy.demo.sandbox import Sandbox
from tests.real.conftest import Real, real_sandbox

Shape = dict[str, Any]


@dataclass(frozen=True)
class Case:
    name: str
    target: str
    headers: tuple[tuple[str, str], ...] = ()
    #: Why the simulator may answer differently here (None: it must not).
    known_difference: str | None = None


def body_shape(status: int, content_type: str, body: bytes) -> Shape:
    shape: Shape = {"http": status, "content_type": content_type.split(";")[0]}
    if not content_type.startswith("application/json"):
        shape["bytes"] = bool(body)
        return shape
    doc = json.loads(body)
    shape["kind"] = doc.get("kind")
    shape["apiVersion"] = doc.get("apiVersion")
    meta = doc.get("metadata") or {}
    shape["metadata_keys"] = sorted(
        k for k in meta if k in ("resourceVersion", "continue", "remainingItemCount")
    )
    if doc.get("kind") == "Status":
        shape |= {k: doc.get(k) for k in ("status", "reason", "code", "message", "details")}
    if "items" in doc:
        shape["items_is_list"] = isinstance(doc["items"], list)
        shape["item_kinds"] = sorted({i.get("kind", "<none>") for i in doc["items"]})
    if doc.get("kind") == "Table":
        shape["columns"] = [c["name"] for c in doc.get("columnDefinitions", [])]
        shape["rows_have_objects"] = all("object" in r for r in doc.get("rows", []))
    return shape


CASES = [
    Case("list pods in a namespace", "/api/v1/namespaces/accounts/pods"),
    Case("list with limit gives a continue token", "/api/v1/namespaces/accounts/pods?limit=2"),
    Case("list nodes", "/api/v1/nodes"),
    Case("list endpointslices", "/apis/discovery.k8s.io/v1/namespaces/accounts/endpointslices"),
    Case("get a missing pod", "/api/v1/namespaces/accounts/pods/no-such-pod"),
    Case("get a missing namespace", "/api/v1/namespaces/no-such-namespace"),
    Case("list in a missing namespace is an empty list", "/api/v1/namespaces/no-such-namespace/pods"),
    Case("get the mesh config map", "/api/v1/namespaces/istio-system/configmaps/istio"),
    Case(
        "list by field selector naming one object",
        "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio",
    ),
    Case("pods without Failed ones", "/api/v1/pods?fieldSelector=status.phase!%3DFailed&limit=5"),
    Case("an unsupported field selector", "/api/v1/pods?fieldSelector=spec.schedulerName%3Dx"),
    Case("a malformed label selector", "/api/v1/pods?labelSelector=a%3D%3D%3Db"),
    Case(
        "a continue token that is not one",
        "/api/v1/pods?limit=1&continue=bm90LWEtdG9rZW4",
        known_difference="the message ends with the JSON decoder's own error text (Go's vs Python's)",
    ),
    Case(
        "kubectl's table",
        "/api/v1/namespaces/accounts/services",
        (("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io,application/json"),),
    ),
    Case(
        "metadata-only list",
        "/apis/discovery.k8s.io/v1/namespaces/accounts/endpointslices",
        (("Accept", "application/json;as=PartialObjectMetadataList;v=v1;g=meta.k8s.io,application/json"),),
    ),
    Case(
        "protobuf list",
        "/api/v1/namespaces/accounts/services",
        (("Accept", "application/vnd.kubernetes.protobuf"),),
        known_difference="the simulator speaks JSON only and answers a protobuf-only Accept with 406",
    ),
    Case(
        "protobuf preferred, JSON accepted",
        "/api/v1/namespaces/accounts/services",
        (("Accept", "application/vnd.kubernetes.protobuf,application/json"),),
        known_difference="the simulator falls back to JSON where the apiserver answers protobuf",
    ),
    Case("discovery: core versions", "/api"),
    Case("discovery: groups", "/apis"),
    Case("discovery: a group version", "/apis/discovery.k8s.io/v1"),
]


@pytest.fixture
async def pair(real: Real, tmp_path: Path) -> AsyncIterator[tuple[Sandbox, Sandbox]]:
    simulated = Sandbox(tmp_path / "sim", seed={})  # seed_mesh's defaults: the mesh the real one got
    actual = real_sandbox(real, tmp_path / "real")
    await simulated.start()
    await actual.start()
    try:
        yield simulated, actual
    finally:
        await simulated.stop()
        await actual.stop()


async def fetch(box: Sandbox, case: Case) -> Shape:
    async with (
        aiohttp.ClientSession(
            base_url=box.proxy_url,
            headers={"Authorization": f"Bearer {box.clusters['alpha'].token}", **dict(case.headers)},
            connector=aiohttp.TCPConnector(ssl=box.client_ssl()),
        ) as http,
        http.get(case.target) as resp,
    ):
        return body_shape(resp.status, resp.headers.get("Content-Type", ""), await resp.read())


def _ignore_discovery_details(shape: Shape) -> Shape:
    """Discovery lists what each server serves: kinds and codes must agree, the lists may not."""
    return {k: v for k, v in shape.items() if k not in ("item_kinds",)}


NORMALISE: dict[str, Callable[[Shape], Shape]] = {
    "discovery: core versions": _ignore_discovery_details,
    "discovery: groups": _ignore_discovery_details,
    "discovery: a group version": _ignore_discovery_details,
}


async def test_simulator_answers_like_the_real_apiserver(pair: tuple[Sandbox, Sandbox]) -> None:
    simulated, actual = pair
    mismatches: list[str] = []
    for case in CASES:
        sim_shape, real_shape = await fetch(simulated, case), await fetch(actual, case)
        normalise = NORMALISE.get(case.name, lambda s: s)
        sim_shape, real_shape = normalise(sim_shape), normalise(real_shape)
        if case.known_difference:
            assert sim_shape != real_shape, f"{case.name}: listed as different but now agrees; drop the note"
            continue
        if sim_shape != real_shape:
            mismatches.append(
                f"{case.name} ({case.target}):\n  simulator: {sim_shape}\n  apiserver: {real_shape}"
            )
    assert not mismatches, "\n".join(mismatches)


async def test_watch_framing_matches(pair: tuple[Sandbox, Sandbox]) -> None:
    """An empty watch that times out: same status, content type and a clean end on both."""
    results = []
    for box in pair:
        async with (
            aiohttp.ClientSession(
                base_url=box.proxy_url,
                headers={"Authorization": f"Bearer {box.clusters['alpha'].token}"},
                connector=aiohttp.TCPConnector(ssl=box.client_ssl()),
            ) as http,
            http.get("/api/v1/namespaces/no-such-namespace/pods?watch=true&timeoutSeconds=1") as resp,
        ):
            body = await resp.read()
            results.append((resp.status, resp.headers.get("Content-Type"), body))
    assert results[0] == results[1] == (200, "application/json", b"")

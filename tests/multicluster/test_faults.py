"""Every bad input of the issue, through kopf and the simulator: a condition with a clear reason, backoff,
and nothing established torn down."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.auth.keys import public_key_pem
from apiproxy.certs import make_ca
from apiproxy.demo.sandbox import write_trust_file
from tests.helpers import eventually
from tests.multicluster.conftest import (
    OUR_UUID,
    Ours,
    Peer,
    ScriptedServer,
    StartController,
    free_port,
)

PEER_UUID = "3f0c9a52-7e1b-4d8a-b6c2-91e4f0a7d3b8"
ROOT = make_ca("scripted mesh root").cert_pem.decode()


def public_json(uuid: str = PEER_UUID, key: str | None = None, root: str = ROOT) -> bytes:
    pem = key or public_key_pem(ed25519.Ed25519PrivateKey.generate().public_key(), deckhouse=True).decode()
    return json.dumps({"clusterUUID": uuid, "authnKeyPub": pem, "rootCA": root}).encode()


def body(data: bytes, status: int = 200) -> Any:
    async def handler(_request: web.Request) -> web.StreamResponse:
        return web.Response(body=data, status=status, content_type="application/json")

    return handler


async def condition_reason(ours: Ours, name: str, kind: str, timeout: float = 20) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        c = ours.condition(name, kind)
        return c if c and c["status"] == "False" else None

    return await eventually(probe, timeout=timeout)


async def slow(_request: web.Request) -> web.StreamResponse:
    await asyncio.Event().wait()  # never answers; the controller's timeout ends it
    raise AssertionError("unreachable")


async def redirect(_request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("https://127.0.0.1:9/metadata/public/public.json")


async def huge(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    await response.prepare(request)
    chunk = b" " * 65536
    for _ in range(40):  # 2.5 MiB, chunked (no Content-Length to refuse up front)
        await response.write(chunk)
    await response.write_eof()
    return response


CASES = [
    ("timeout", slow, "Timeout"),
    ("redirect", redirect, "RedirectRefused"),
    ("huge", huge, "ResponseTooLarge"),
    ("invalid-json", body(b'{"clusterUUID": '), "InvalidJSON"),
    ("bad-uuid", body(public_json(uuid="not-a-uuid")), "InvalidPublicMetadata"),
    (
        "bad-key",
        body(public_json(key="-----BEGIN ED25519 PUBLIC KEY-----\nAAAA\n-----END ED25519 PUBLIC KEY-----\n")),
        "InvalidPublicMetadata",
    ),
    ("our-uuid", body(public_json(uuid=OUR_UUID)), "ClaimsOwnClusterUUID"),
    ("non-ok", body(b"{}", status=503), "NonOKResponse"),
]


@pytest.mark.parametrize("name, handler, reason", CASES, ids=[c[0] for c in CASES])
async def test_bad_public_endpoints_set_a_reason(
    ours: Ours,
    scripted: ScriptedServer,
    start_controller: StartController,
    name: str,
    handler: Any,
    reason: str,
) -> None:
    scripted.routes["/metadata/public/public.json"] = handler
    run = await start_controller(fetch_timeout=0.5)
    ours.create(name, {"metadataEndpoint": scripted.endpoint, "metadata": {"ca": scripted.ca_pem}})
    public = await condition_reason(ours, name, "PublicMetadataExchangeReady")
    assert public["reason"] == reason, public
    labels = {"multicluster_name": name, "endpoint": scripted.endpoint + "public/public.json"}
    fetch_errors = "d8_istio_multicluster_metadata_endpoints_fetch_error_count"
    await eventually(lambda: run.metrics.registry.get_sample_value(fetch_errors, labels) == 1)
    ready = ours.condition(name)
    assert ready is not None and ready["status"] == "False" and ready["reason"] == reason
    assert ours.secret(f"istio-remote-secret-{name}") is None
    trust = ours.secret("d8-remote-clusters-public-metadata")
    assert trust is None or json.loads(base64.b64decode(trust["data"]["remote-public-metadata.json"])) == {}
    # the message never carries a byte of what the endpoint sent
    assert "not-a-uuid" not in public["message"] and "BEGIN" not in public["message"]


async def test_unreachable_endpoint(ours: Ours, start_controller: StartController) -> None:
    await start_controller()
    port = free_port()
    ours.create("gone", {"metadataEndpoint": f"https://127.0.0.1:{port}/metadata/"})
    public = await condition_reason(ours, "gone", "PublicMetadataExchangeReady")
    assert public["reason"] == "FetchFailed"
    # the message names the endpoint, port included, and is the same at every retry
    assert public["message"].startswith(f"GET 127.0.0.1:{port}/metadata/public/public.json: cannot connect")
    assert " object at 0x" not in public["message"]


async def test_expected_uuid_mismatch(ours: Ours, peer: Peer, start_controller: StartController) -> None:
    await start_controller()
    ours.create(
        "pinned",
        {
            "metadataEndpoint": peer.endpoint,
            "metadata": {"ca": peer.ca_pem},
            "expectedClusterUUID": PEER_UUID,
        },
    )
    public = await condition_reason(ours, "pinned", "PublicMetadataExchangeReady")
    assert public["reason"] == "UnexpectedClusterUUID" and peer.uuid in public["message"]


async def test_401_on_our_private_token(ours: Ours, peer: Peer, start_controller: StartController) -> None:
    del peer.sandbox.clusters["ours"]  # the peer does not trust us (yet)
    write_trust_file(peer.sandbox.trust_file, list(peer.sandbox.clusters.values()))
    await start_controller()
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    private = await condition_reason(ours, "east", "PrivateMetadataExchangeReady")
    assert private["reason"] == "TokenRejected"
    assert ours.condition("east", "PublicMetadataExchangeReady")["status"] == "True"  # type: ignore[index]


async def test_two_resources_for_one_peer(ours: Ours, peer: Peer, start_controller: StartController) -> None:
    await start_controller()
    spec = {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}}
    ours.create("east", spec)
    await eventually(lambda: (ours.condition("east") or {}).get("status") == "True", timeout=30)
    ours.create("east-again", spec)
    public = await condition_reason(ours, "east-again", "PublicMetadataExchangeReady")
    assert public["reason"] == "DuplicatePeer" and "east" in public["message"]
    assert ours.secret("istio-remote-secret-east-again") is None
    assert (ours.condition("east") or {}).get("status") == "True"


async def test_a_transient_failure_tears_nothing_down(
    ours: Ours, peer: Peer, start_controller: StartController
) -> None:
    await start_controller()
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    await eventually(lambda: (ours.condition("east") or {}).get("status") == "True", timeout=30)
    trust_before = ours.secret("d8-remote-clusters-public-metadata")
    remote_before = ours.secret("istio-remote-secret-east")
    peer.process.terminate()
    await peer.process.wait()
    public = await condition_reason(ours, "east", "PublicMetadataExchangeReady")
    assert public["reason"] == "FetchFailed"
    trust_after = ours.secret("d8-remote-clusters-public-metadata")
    remote_after = ours.secret("istio-remote-secret-east")
    assert trust_after is not None and remote_after is not None and trust_before is not None
    assert trust_after["data"] == trust_before["data"]
    assert remote_after["data"] == remote_before["data"]  # type: ignore[index]

    def warnings() -> list[dict[str, Any]]:
        events = ours.store.list("events", "default")  # about a cluster-scoped object: see events.py
        return [e for e in events if e.get("type") == "Warning" and e.get("reason", "").endswith("Failed")]

    # events are posted in the background: wait for it, a transition to failure is one
    failed = await eventually(warnings, timeout=30)
    assert all(e["involvedObject"]["name"] == "east" for e in failed)


async def test_a_spec_change_is_reconciled_at_once_and_observed(
    ours: Ours, peer: Peer, start_controller: StartController
) -> None:
    await start_controller(resync=3600.0)  # no resync during the test: only the update handler can act
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    await eventually(lambda: (ours.condition("east") or {}).get("status") == "True", timeout=30)
    moved = f"https://127.0.0.1:{free_port()}/metadata/"
    ours.store.patch("istiomulticlusters", None, "east", {"spec": {"metadataEndpoint": moved}})
    public = await condition_reason(ours, "east", "PublicMetadataExchangeReady")
    assert public["reason"] == "FetchFailed" and public["observedGeneration"] == 2
    assert ours.resource("east")["status"]["observedGeneration"] == 2  # type: ignore[index]
    assert ours.secret("istio-remote-secret-east") is not None, "established outputs stay"

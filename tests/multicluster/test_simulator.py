"""The controller under kopf against the simulator, with a real peer: its proxy and its exporter process."""

from __future__ import annotations

import base64
import json
import time

from tests.helpers import eventually
from tests.multicluster.conftest import Ours, Peer, StartController


async def test_establishment_from_a_real_peer_exporter(
    ours: Ours, peer: Peer, start_controller: StartController
) -> None:
    run = await start_controller()
    started = time.monotonic()
    ours.create("east", {"metadataEndpoint": peer.endpoint, "metadata": {"ca": peer.ca_pem}})
    ready = await eventually(
        lambda: (ours.condition("east") or {}).get("status") == "True" and ours.condition("east"), timeout=30
    )
    elapsed = time.monotonic() - started
    assert ready["reason"] == "Established"
    status = ours.resource("east")["status"]  # type: ignore[index]
    assert status["remoteClusterUUID"] == peer.uuid
    assert status["apiHost"] == peer.api_host
    trust = ours.secret("d8-remote-clusters-public-metadata")
    assert trust is not None
    doc = json.loads(base64.b64decode(trust["data"]["remote-public-metadata.json"]))
    assert list(doc) == [peer.uuid]
    remote = ours.secret("istio-remote-secret-east")
    assert remote is not None and remote["metadata"]["labels"]["istio/multiCluster"] == "true"
    print(f"established in {elapsed:.3f}s; status: {json.dumps(status, indent=1)[:3000]}")
    del run

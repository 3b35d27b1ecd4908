"""The faults of the federation story, end to end: every part a process, each apiserver simulated.

East and west (and *south*, a third cluster federated with west only) run as ``apiproxy demo`` runs them:
a simulated apiserver in this process, ``apiproxy serve``, ``apiproxy exporter`` and ``apiproxy
multicluster`` as processes started from their config files. The federation is established once for
the module; each test breaks one thing, checks what the other side keeps and reports, and restores it
until both sides are Ready again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
import yaml
from prometheus_client.parser import text_string_to_metric_families

from apiproxy.auth.keys import load_private_key
from apiproxy.demo.federation import KUBECTL, NAMESPACE, Cluster, Tour, decoded, wait_for
from apiproxy.multicluster import model, tokens
from apiproxy.multicluster.conditions import PRIVATE, PUBLIC, READY, REMOTE_API, Reason
from apiproxy.multicluster.identity import fingerprint

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

#: Longest wait for the controllers to notice a fault or its repair (resync 2 s, retries from 200 ms).
NOTICE = 30.0
#: Longest wait for a restarted part (a Python process importing on a loaded machine) to be back.
RESTART = 60.0


@dataclass
class Federation:
    east: Cluster
    west: Cluster
    south: Cluster
    workdir: Path
    created_to_ready: float


def report(request: pytest.FixtureRequest, line: str) -> None:
    """A line in pytest's own output (not captured), for the numbers the suite measures."""
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def condition(here: Cluster, peer: str, kind: str) -> dict[str, Any]:
    status = (here.resource(peer) or {}).get("status") or {}
    found = [c for c in status.get("conditions") or () if c.get("type") == kind]
    return dict(found[0]) if found else {}


def is_ready(here: Cluster, peer: str) -> bool:
    return condition(here, peer, READY).get("status") == "True"


def both_ready(fed: Federation) -> bool:
    fed.east.running()
    fed.west.running()
    return is_ready(fed.east, "west") and is_ready(fed.west, "east")


def resource_for(there: Cluster) -> dict[str, Any]:
    """The IstioMulticluster an administrator creates for ``there``: its endpoint and CA, nothing else."""
    return {
        "apiVersion": "deckhouse.io/v1alpha1",
        "kind": "IstioMulticluster",
        "metadata": {"name": there.name},
        "spec": {"metadataEndpoint": there.endpoint, "metadata": {"ca": there.ca_pem}},
    }


def stored(here: Cluster, name: str) -> tuple[str, dict[str, str]]:
    """A Secret's resourceVersion and data: what must not change while a fault lasts."""
    secret = here.secret(name)
    assert secret is not None, f"{here.name} has no Secret {name}"
    return secret["metadata"]["resourceVersion"], dict(secret.get("data") or {})


def remote_secrets(here: Cluster) -> list[str]:
    return sorted(
        s["metadata"]["name"]
        for s in here.store.list("secrets", NAMESPACE)
        if (s["metadata"].get("labels") or {}).get("istio/multiCluster") == "true"
    )


def api_token(here: Cluster, peer: Cluster) -> str:
    """The token istiod of ``here`` reads ``peer`` with, from the remote secret written by its controller."""
    config = yaml.safe_load(decoded(here.secret(f"istio-remote-secret-{peer.name}"), peer.uuid) or b"{}")
    return str(config["users"][0]["user"]["token"])


def audit_records(here: Cluster) -> list[dict[str, Any]]:
    """The proxy's audit records written so far (it flushes about every 100 ms, at each reload tick)."""
    records = []
    for line in here.box.audit_file.read_text().splitlines():
        with contextlib.suppress(ValueError):
            records.append(json.loads(line))
    return records


async def proxy_get(here: Cluster, path: str, token: str) -> int:
    headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=here.box.client_ssl())) as s,
        s.get(here.proxy_url + path, headers=headers) as resp,
    ):
        await resp.read()
        return resp.status


async def authentication_failures(here: Cluster) -> dict[str, float]:
    """``apiproxy_authentication_failures_total`` by reason, from the proxy's /metrics."""
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"http://127.0.0.1:{here.metrics_port}/metrics") as resp,
    ):
        text = await resp.text()
    return {
        sample.labels["reason"]: sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "apiproxy_authentication_failures"
        for sample in family.samples
        if sample.name == "apiproxy_authentication_failures_total"
    }


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def federation(
    tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> AsyncIterator[Federation]:
    """East and west federated, Ready on both sides; south started beside them (all nine processes start
    together), not federated with anyone yet."""
    workdir = tmp_path_factory.mktemp("faults")
    clusters = [Cluster(name, workdir / name) for name in ("east", "west", "south")]
    east, west, south = clusters
    try:
        started = time.monotonic()
        for outcome in await asyncio.gather(*(c.start() for c in clusters), return_exceptions=True):
            if isinstance(outcome, BaseException):
                raise outcome
        await asyncio.gather(*(c.wait_up() for c in clusters))
        report(request, f"\nthree clusters up (9 processes) in {time.monotonic() - started:.1f}s")
        tour = Tour(east, west, workdir)
        await tour.create_both()
        created = time.monotonic()
        fed = Federation(east, west, south, workdir, 0.0)
        await wait_for(partial(both_ready, fed), "east and west Ready", NOTICE)
        fed.created_to_ready = time.monotonic() - created
        report(request, f"both resources created → both sides Ready: {fed.created_to_ready:.2f}s")
        yield fed
    finally:
        await asyncio.gather(*(c.stop() for c in clusters), return_exceptions=True)


@contextlib.asynccontextmanager
async def down(fed: Federation, here: Cluster, part: str, sig: int = signal.SIGTERM) -> AsyncIterator[None]:
    """``part`` of ``here`` stopped; on leaving, started again if the test did not, and both sides Ready."""
    await here.stop_part(part, sig)
    try:
        yield
    finally:
        if part not in here.processes:
            await here.start_part(part)
        await wait_for(partial(both_ready, fed), "both sides Ready again", RESTART)


async def test_both_sides_become_ready_quickly(federation: Federation) -> None:
    assert federation.created_to_ready < 20, "both sides Ready within seconds of the resources' creation"
    for here, peer in ((federation.east, federation.west), (federation.west, federation.east)):
        conditions = here.conditions(peer.name)
        assert {kind: conditions[kind] for kind in (PUBLIC, PRIVATE, REMOTE_API)} == {
            PUBLIC: ("True", Reason.FETCHED),
            PRIVATE: ("True", Reason.FETCHED),
            REMOTE_API: ("True", Reason.REACHABLE),
        }
        assert remote_secrets(here) == [f"istio-remote-secret-{peer.name}"]


async def test_peer_exporter_down_keeps_everything_established(federation: Federation) -> None:
    east, west = federation.east, federation.west
    remote_before = stored(east, "istio-remote-secret-west")
    trust_before = stored(east, model.TRUST_SECRET)
    trust_file_before = east.box.trust_file.read_bytes()
    async with down(federation, west, "exporter"):
        public = await wait_for(
            lambda: (c := condition(east, "west", PUBLIC)).get("status") == "False" and c,
            "east to report west's metadata unavailable",
            NOTICE,
        )
        assert public["reason"] == Reason.FETCH_FAILED
        endpoint = f"127.0.0.1:{west.exporter_port}/metadata/public/public.json"
        assert public["message"].startswith(f"GET {endpoint}: cannot connect"), public["message"]

        # East keeps checking west's API with istiod's token while the metadata is unavailable: wait for
        # two more of its checks to reach west's proxy, then read what east reports.
        def checks() -> int:
            return sum(
                r.get("url") == "/api" and r.get("clusterUUID") == east.uuid for r in audit_records(west)
            )

        seen = checks()
        await wait_for(lambda: checks() >= seen + 2, "east's controller to check west's API again", NOTICE)
        assert condition(east, "west", PUBLIC)["reason"] == Reason.FETCH_FAILED
        assert east.conditions("west")[REMOTE_API] == ("True", Reason.REACHABLE)
        assert east.conditions("west")[READY] == ("False", Reason.FETCH_FAILED)
        # nothing established is torn down: remote secret, trust Secret and the proxy's trust file
        assert stored(east, "istio-remote-secret-west") == remote_before
        assert stored(east, model.TRUST_SECRET) == trust_before
        assert east.box.trust_file.read_bytes() == trust_file_before
        # and east's istiod still reads west's pods through west's proxy
        kubeconfig = federation.workdir / "east-istiod-kubeconfig-for-west"
        kubeconfig.write_bytes(decoded(east.secret("istio-remote-secret-west"), west.uuid) or b"")
        if KUBECTL is not None:
            code, out = await Tour(east, west, federation.workdir).kubectl(
                kubeconfig, "get", "pods", "-A", "--no-headers"
            )
            assert code == 0, out
            assert len(out.splitlines()) == len(west.store.list("pods"))
        else:
            assert await proxy_get(west, "/api/v1/pods", api_token(east, west)) == 200

        await west.start_part("exporter")
        await wait_for(
            lambda: all(s == "True" for s, _ in east.conditions("west").values()),
            "east's conditions back to True",
            RESTART,
        )
    assert stored(east, "istio-remote-secret-west") == remote_before
    assert stored(east, model.TRUST_SECRET) == trust_before


async def test_peer_proxy_down_is_reported_and_the_remote_secret_kept(federation: Federation) -> None:
    east, west = federation.east, federation.west
    remote_before = stored(east, "istio-remote-secret-west")
    port = west.proxy_port
    async with down(federation, west, "proxy"):
        api = await wait_for(
            lambda: (c := condition(east, "west", REMOTE_API)).get("status") == "False" and c,
            "east to report west's API unavailable",
            NOTICE,
        )
        assert api["reason"] == Reason.FETCH_FAILED
        assert api["message"].startswith(f"GET 127.0.0.1:{west.proxy_port}/api: cannot connect"), api[
            "message"
        ]
        conditions = east.conditions("west")
        assert conditions[READY] == ("False", Reason.FETCH_FAILED)
        assert conditions[PUBLIC] == conditions[PRIVATE] == ("True", Reason.FETCHED), "metadata still flows"
        assert stored(east, "istio-remote-secret-west") == remote_before

        await west.start_part("proxy")
        assert west.proxy_port == port, "the proxy comes back where the remote secret points"
        await wait_for(
            lambda: east.conditions("west").get(REMOTE_API) == ("True", Reason.REACHABLE),
            "east's RemoteAPIServerReady back to True",
            RESTART,
        )
    assert stored(east, "istio-remote-secret-west") == remote_before


async def test_controller_killed_mid_exchange_resumes_with_the_same_key_and_pin(
    federation: Federation,
) -> None:
    east, west = federation.east, federation.west
    keypair_before = stored(east, model.KEYPAIR_SECRET)
    west_key = fingerprint((decoded(west.secret(model.KEYPAIR_SECRET), "pub.pem") or b"").decode())
    # start over: both resources deleted, their outputs gone
    east.store.delete("istiomulticlusters", None, "west")
    west.store.delete("istiomulticlusters", None, "east")
    await wait_for(
        lambda: (
            not (
                remote_secrets(east) or remote_secrets(west) or east.resource("west") or west.resource("east")
            )
        ),
        "the federation to be removed on both sides",
        NOTICE,
    )
    east.store.create(resource_for(west))
    # mid-exchange: east has pinned west, but west does not trust east yet, so east is not Ready
    pinned = await wait_for(
        lambda: ((east.resource("west") or {}).get("status") or {}).get("pinnedIdentity"),
        "east to pin west",
        NOTICE,
    )
    assert not is_ready(east, "west")
    async with down(federation, east, "controller", signal.SIGKILL):
        west.store.create(resource_for(east))
        await east.start_part("controller")
        await wait_for(partial(both_ready, federation), "both sides Ready after the restart", RESTART)
    assert stored(east, model.KEYPAIR_SECRET) == keypair_before, "the keypair is not regenerated"
    status = (east.resource("west") or {}).get("status") or {}
    assert status["pinnedIdentity"] == pinned, "the pin is unchanged"
    assert fingerprint(status["metadataCache"]["public"]["authnKeyPub"]) == west_key
    assert remote_secrets(east) == ["istio-remote-secret-west"]
    assert remote_secrets(west) == ["istio-remote-secret-east"]
    # the token in east's remote secret is signed by east's unchanged key, and west accepts it
    assert await proxy_get(west, "/api/v1/namespaces", api_token(east, west)) == 200


async def test_a_cluster_federated_with_west_only_is_refused_at_east(federation: Federation) -> None:
    east, west, south = federation.east, federation.west, federation.south
    west.store.create(resource_for(south))
    south.store.create(resource_for(west))
    try:
        await wait_for(
            lambda: is_ready(west, "south") and is_ready(south, "west"), "west and south Ready", NOTICE
        )
        assert both_ready(federation), "east and west stay Ready beside the new peer"
        south_token = api_token(south, west)

        # positive control: south's istiod token reads west
        async def west_accepts() -> bool:
            return await proxy_get(west, "/api/v1/namespaces", south_token) == 200

        await wait_for(
            west_accepts, "west's proxy to accept south's token (its trust file refreshed)", NOTICE
        )
        # a token south signs for east itself, with east's UUID as audience and scope api
        south_key = load_private_key(decoded(south.secret(model.KEYPAIR_SECRET), "priv.pem") or b"")
        for_east = tokens.api_token(
            south_key, our_uuid=south.uuid, peer_uuid=east.uuid, now=time.time(), ttl=3600
        )
        failures_before = await authentication_failures(east)
        audited_before = len(audit_records(east))
        assert await proxy_get(east, "/api/v1/namespaces", south_token) == 401
        assert await proxy_get(east, "/api/v1/namespaces", for_east) == 401
        failures = await authentication_failures(east)
        assert failures.get("unknown_cluster", 0) - failures_before.get("unknown_cluster", 0) == 2
        assert sum(failures.values()) - sum(failures_before.values()) == 2

        def refusals() -> list[dict[str, Any]]:
            return [r for r in audit_records(east)[audited_before:] if r.get("status") == 401]

        records = await wait_for(lambda: len(refusals()) >= 2 and refusals(), "east's audit records", NOTICE)
        assert [r["target"] for r in records] == ["/api/v1/namespaces"] * 2
        assert all(r["cluster"] is None and r["decision"] != "allow" for r in records), records
        logged = east.box.audit_file.read_text() + (east.workdir / "proxy.log").read_text()
        for token in (south_token, for_east):
            assert token not in logged and token.rsplit(".", 1)[1] not in logged
    finally:
        west.store.delete("istiomulticlusters", None, "south")
        south.store.delete("istiomulticlusters", None, "west")
        await wait_for(
            lambda: remote_secrets(west) == ["istio-remote-secret-east"] and not remote_secrets(south),
            "south's federation with west to be removed",
            NOTICE,
        )
        await wait_for(partial(both_ready, federation), "east and west Ready", NOTICE)
    trust = json.loads(decoded(west.secret(model.TRUST_SECRET), model.TRUST_KEY) or b"{}")
    assert list(trust) == [east.uuid], "west trusts east only again"

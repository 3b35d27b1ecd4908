"""The federation story and its faults on two real kube-apiservers, east and west (tests/real/federation.py).

Each cluster runs the proxy, the exporter and the controller as processes logged in with the RBAC deploy/
grants them; the proxy follows the trust Secret its controller writes through the real apiserver. The
tests share one federation and run in order: established, then each fault and its recovery, then a
stranger's token, then the removal, and last a controller killed while it establishes the federation
again, which leaves it whole.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from apiproxy.multicluster import tokens
from apiproxy.multicluster.model import KEYPAIR_SECRET, TRUST_SECRET, remote_secret_name
from tests.real.cluster import KUBECTL
from tests.real.federation import (
    GROUP_PATH,
    Federation,
    Member,
    Watch,
    remote_secret_kubeconfig,
    running_federation,
)

pytestmark = pytest.mark.timeout(300)

CONDITIONS = ("PublicMetadataExchangeReady", "PrivateMetadataExchangeReady", "RemoteAPIServerReady", "Ready")
#: Revocation must reach the peer's proxy within this many seconds.
REVOCATION_BUDGET = 10.0


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    started = time.monotonic()
    with running_federation(tmp_path_factory.mktemp("federation")) as federation:
        print(
            f"\ntwo clusters, each with its apiserver and the three parts, up in "
            f"{time.monotonic() - started:.1f}s"
        )
        yield federation


def states(member: Member, name: str) -> dict[str, tuple[str, str]]:
    return {t: (c["status"], c["reason"]) for t, c in member.conditions(name).items()}


def ready(member: Member, name: str) -> bool:
    return all(states(member, name).get(t, ("",))[0] == "True" for t in CONDITIONS)


def kubectl_as(kubeconfig: Path, *args: str) -> tuple[int, str, str]:
    done = subprocess.run(
        [KUBECTL, f"--kubeconfig={kubeconfig}", f"--cache-dir={kubeconfig.parent / 'kube-cache'}", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    return done.returncode, done.stdout, done.stderr


def east_token_for_west(fed: Federation, tmp_path: Path) -> str:
    return remote_secret_kubeconfig(fed.east, fed.west, tmp_path / "east-for-west")[1]


# -- 1. establish --------------------------------------------------------------------------------------------


def test_both_sides_establish_and_easts_istiod_reads_west_through_its_proxy(
    fed: Federation, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    east, west = fed.members
    began = time.monotonic()
    east.peer_with(west)
    west.peer_with(east)
    created = time.monotonic()
    seen: dict[tuple[str, str], tuple[str, str]] = {}

    def both_ready() -> bool:
        for here, there in ((east, west), (west, east)):
            for kind, state in states(here, there.name).items():
                if seen.get((here.name, kind)) != state:
                    seen[(here.name, kind)] = state
                    print(f"  +{time.monotonic() - created:5.2f}s [{here.name}] {there.name}: {kind}={state}")
        return ready(east, "west") and ready(west, "east")

    fed.wait(both_ready, "both IstioMulticlusters Ready", timeout=90)
    elapsed = time.monotonic() - created
    record_property("created_to_both_ready_seconds", round(elapsed, 3))
    print(
        f"both resources created -> both sides Ready: {elapsed:.2f}s "
        f"(the two kubectl applies: {created - began:.2f}s)"
    )

    # each side trusts exactly the other, and wrote one remote secret, for it
    assert list(east.trust()) == [west.uuid] and list(west.trust()) == [east.uuid]
    for here, there in ((east, west), (west, east)):
        [secret] = here.remote_secrets()
        assert secret["metadata"]["name"] == remote_secret_name(there.name)
        assert secret["metadata"]["annotations"]["networking.istio.io/cluster"] == there.uuid

    # east's istiod kubeconfig, unchanged, with the real kubectl: west's pods through west's proxy
    kubeconfig, _ = remote_secret_kubeconfig(east, west, tmp_path / "east-for-west")
    code, out, err = kubectl_as(kubeconfig, "get", "pods", "-A", "-o", "json")
    assert code == 0, err
    through = sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in json.loads(out)["items"])
    direct_list = json.loads(west.kubectl("get", "pods", "-A", "-o", "json").stdout)["items"]
    direct = sorted((p["metadata"]["namespace"], p["metadata"]["name"]) for p in direct_list)
    assert through == direct and len(direct) >= 10
    assert f"127.0.0.1:{west.proxy_port}" in kubeconfig.read_text(), "the server is west's proxy"

    # no Secret of west, and no write
    code, out, err = kubectl_as(kubeconfig, "get", "secrets", "-A")
    assert code == 0 and out == "" and "No resources found" in err, (code, out, err)
    code, out, err = kubectl_as(kubeconfig, "create", "configmap", "written-by-east", "-n", "default")
    assert code != 0 and "forbidden" in err.lower(), (code, out, err)
    assert west.get_json("configmap", "written-by-east", "-n", "default") is None


# -- 2. the peer's exporter down -----------------------------------------------------------------------------


def test_the_peers_exporter_down_fails_the_exchange_and_tears_nothing_down(fed: Federation) -> None:
    east, west = fed.members
    assert ready(east, "west")
    api_before = east.conditions("west")["RemoteAPIServerReady"]
    versions = {
        "remote": east.version("secret", remote_secret_name("west")),
        "trust": east.version("secret", TRUST_SECRET),
    }
    west.exporter.stop()
    stopped = time.monotonic()
    public = fed.wait(
        lambda: (c := east.conditions("west")["PublicMetadataExchangeReady"])["status"] == "False" and c,
        "east's public metadata exchange failing",
        timeout=30,
    )
    print(
        f"west's exporter stopped -> east's exchange False after {time.monotonic() - stopped:.2f}s: {public}"
    )
    assert public["reason"] == "FetchFailed" and f"127.0.0.1:{west.exporter_port}" in public["message"]
    # two more reconciles later: istiod's access is still checked, and still works; nothing was rewritten
    reconciles = east.reconciles()
    fed.wait(lambda: east.reconciles() >= reconciles + 2, "two more reconciles of east's peer", timeout=30)
    now = east.conditions("west")
    assert now["RemoteAPIServerReady"]["status"] == "True", now["RemoteAPIServerReady"]
    assert now["RemoteAPIServerReady"]["lastTransitionTime"] == api_before["lastTransitionTime"]
    assert now["Ready"]["status"] == "False" and now["Ready"]["reason"] == "FetchFailed"
    assert east.version("secret", remote_secret_name("west")) == versions["remote"]
    assert east.version("secret", TRUST_SECRET) == versions["trust"]

    west.exporter.start()
    west.wait_exporter()
    fed.wait(lambda: ready(east, "west"), "east's peer Ready again", timeout=30)
    assert east.version("secret", remote_secret_name("west")) == versions["remote"]


# -- 3. the peer's proxy down --------------------------------------------------------------------------------


def test_the_peers_proxy_down_fails_the_remote_api_and_keeps_istiods_secret(fed: Federation) -> None:
    east, west = fed.members
    assert ready(east, "west")
    remote_version = east.version("secret", remote_secret_name("west"))
    west.proxy.stop()
    stopped = time.monotonic()
    api = fed.wait(
        lambda: (c := east.conditions("west")["RemoteAPIServerReady"])["status"] == "False" and c,
        "east's RemoteAPIServerReady False",
        timeout=30,
    )
    print(
        f"west's proxy stopped -> east's RemoteAPIServerReady False after {time.monotonic() - stopped:.2f}s"
    )
    assert api["reason"] == "FetchFailed" and f"127.0.0.1:{west.proxy_port}" in api["message"], api
    assert states(east, "west")["PrivateMetadataExchangeReady"][0] == "True", "the exporter is up"
    assert east.version("secret", remote_secret_name("west")) == remote_version

    west.proxy.start()  # the same port, from its config file
    west.wait_proxy()
    fed.wait(lambda: ready(east, "west"), "east's peer Ready again", timeout=30)
    assert east.version("secret", remote_secret_name("west")) == remote_version


# -- 5. a third, non-federated cluster -----------------------------------------------------------------------


def test_a_token_signed_by_a_non_federated_cluster_is_refused_before_the_apiserver(
    fed: Federation, tmp_path: Path
) -> None:
    east, west = fed.members
    third_key = ed25519.Ed25519PrivateKey.generate()  # what a third cluster's controller generates
    third_uuid = str(uuid.uuid4())
    now = time.time()
    forged = {
        "third cluster": tokens.api_token(
            third_key, our_uuid=third_uuid, peer_uuid=east.uuid, now=now, ttl=600
        ),
        "posing as west": tokens.api_token(
            third_key, our_uuid=west.uuid, peer_uuid=east.uuid, now=now, ttl=600
        ),
    }
    trusted = remote_secret_kubeconfig(west, east, tmp_path / "west-for-east")[1]
    marks = {}
    for what, token in forged.items():
        marks[what] = mark = uuid.uuid4().hex
        status, body = east.get(
            f"{east.proxy_url}/api/v1/namespaces/default/pods?labelSelector=m%3D{mark}", token
        )
        assert status == 401, (what, status, body[:300])
    # the same request with west's token reaches east's apiserver: once it is in the audit log, anything
    # the refused ones had sent would be there too (the log is written as requests are served)
    control = uuid.uuid4().hex
    status, _ = east.get(
        f"{east.proxy_url}/api/v1/namespaces/default/pods?labelSelector=m%3D{control}", trusted
    )
    assert status == 200
    audited = fed.wait(
        lambda: [e for e in east.cluster.audit_events() if control in e.get("requestURI", "")],
        "the trusted request in east's audit log",
        timeout=20,
    )
    assert audited[0]["user"]["username"] == east.cluster.service_account_user("apiproxy", "apiproxy")
    uris = [e.get("requestURI", "") for e in east.cluster.audit_events()]
    for what, mark in marks.items():
        assert not [u for u in uris if mark in u], f"the {what} request reached east's apiserver"


# -- 6. removal ----------------------------------------------------------------------------------------------


def test_deleting_the_resource_on_west_refuses_east_and_closes_its_watch(
    fed: Federation, tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    east, west = fed.members
    assert ready(west, "east")
    token = east_token_for_west(fed, tmp_path)
    namespaces = f"{west.proxy_url}/api/v1/namespaces?limit=1"
    assert west.get(namespaces, token)[0] == 200
    watch = Watch.through_proxy(west, "/api/v1/namespaces?watch=true&timeoutSeconds=300", token)
    try:
        assert watch.status == 200 and watch.next_event()["type"] == "ADDED"
        watch.drain()
        west.kubectl("delete", "istiomulticluster", "east", "--wait=false")
        deleted = time.monotonic()
        fed.wait(
            lambda: west.get(namespaces, token)[0] == 401, "east's token refused", timeout=REVOCATION_BUDGET
        )
        refused_after = time.monotonic() - deleted
        assert watch.ended.wait(REVOCATION_BUDGET), "east's open watch was not closed"
        closed_after = watch.ended_at - deleted
    finally:
        watch.close()
    record_property("deleted_to_refused_seconds", round(refused_after, 3))
    record_property("deleted_to_watch_closed_seconds", round(closed_after, 3))
    print(
        f"IstioMulticluster deleted on west -> east's token refused at west's proxy after "
        f"{refused_after:.2f}s, "
        f"east's open watch closed after {closed_after:.2f}s"
    )
    fed.wait(lambda: west.resource("east") is None, "west's resource gone (finalizer done)")
    assert west.trust() == {} and west.remote_secrets() == []
    assert list(east.trust()) == [west.uuid], "deleting on one side only stops that side trusting"


# -- 4. a controller killed mid-exchange ---------------------------------------------------------------------


def test_a_controller_killed_mid_exchange_resumes_with_its_key_and_one_remote_secret(
    fed: Federation, tmp_path: Path
) -> None:
    east, west = fed.members
    keypairs = {m.name: m.version("secret", KEYPAIR_SECRET) for m in fed.members}
    # west's resources as west's apiserver streams them, so the kill follows the controller's first write
    watch = Watch.as_admin(
        west, f"/apis/{GROUP_PATH}/istiomulticlusters?watch=true&fieldSelector=metadata.name%3Deast"
    )
    try:
        assert watch.status == 200
        west.peer_with(east)
        while True:
            obj = watch.next_event()["object"]
            if obj["metadata"].get("finalizers"):
                break  # the controller has taken the resource on: its reconcile runs now
        west.controller.kill()
    finally:
        watch.close()
    conditions = {c["type"]: c["status"] for c in (obj.get("status") or {}).get("conditions") or ()}
    written = {"trusts east": east.uuid in west.trust(), "remote secrets": len(west.remote_secrets())}
    print(
        f"west's controller SIGKILLed mid-exchange; the resource's conditions then: {conditions or 'none'}; "
        f"written by then: {written}"
    )
    assert conditions.get("Ready") != "True", "killed too late: the exchange had finished"
    west.controller.start()
    west.wait_controller()
    fed.wait(lambda: ready(west, "east") and ready(east, "west"), "both sides Ready again", timeout=90)
    assert {m.name: m.version("secret", KEYPAIR_SECRET) for m in fed.members} == keypairs, (
        "no key regenerated"
    )
    for here, there in ((east, west), (west, east)):
        secrets = here.remote_secrets()
        assert [s["metadata"]["name"] for s in secrets] == [remote_secret_name(there.name)]
        assert list(here.trust()) == [there.uuid]
    # and it works again: east's istiod reads west
    token = east_token_for_west(fed, tmp_path)
    fed.wait(
        lambda: west.get(f"{west.proxy_url}/api/v1/namespaces?limit=1", token)[0] == 200, "east reads west"
    )


def test_no_part_asked_its_apiserver_for_more_than_its_shipped_rbac_allows(fed: Federation) -> None:
    """Everything above ran with the RBAC deploy/ ships (and the proxy's trust-Secret reader): the
    apiservers refused none of the parts' requests."""
    for member in fed.members:
        assert member.refused() == [], member.name

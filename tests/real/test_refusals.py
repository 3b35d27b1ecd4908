"""What the policy refuses never reaches the real apiserver, and what it allows is served by the real
authorizer with the RBAC ``apiproxy policy rbac`` generated: reviews pass (JSON and client-go's
protobuf), writes, secrets, exec, port-forward and the proxy verb are refused with a Status the client
prints, and the apiserver's audit log and state show that nothing happened."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from apiproxy.demo.sandbox import Sandbox
from tests.helpers import kubectl
from tests.real.conftest import Real
from tests.real.test_clients import proxy_session

FIXTURES = Path(__file__).parent.parent / "fixtures" / "client-go"
PROTOBUF = "application/vnd.kubernetes.protobuf"

WRITE_VERBS = {"create", "update", "patch", "delete", "deletecollection"}
REVIEWS = {"tokenreviews", "subjectaccessreviews"}


def is_plain_read(event: dict[str, Any]) -> bool:
    """An audit event of a read the policy allows: discovery, or get/list/watch of an object (no
    subresource, no Secret). kubectl reads before it writes (``label`` gets the pod first)."""
    ref = event.get("objectRef", {})
    return (
        event["verb"] in ("get", "list", "watch")
        and "subresource" not in ref
        and ref.get("resource") != "secrets"
    )


def some_pod(real: Real) -> tuple[str, str]:
    _, _, body = real.cluster.request("GET", "/api/v1/namespaces/accounts/pods?limit=1")
    meta = json.loads(body)["items"][0]["metadata"]
    return meta["namespace"], meta["name"]


@pytest.mark.parametrize(
    ("fixture", "target"),
    [
        ("tokenreview-v1.pb", "/apis/authentication.k8s.io/v1/tokenreviews"),
        ("subjectaccessreview-v1.pb", "/apis/authorization.k8s.io/v1/subjectaccessreviews"),
    ],
)
async def test_client_go_protobuf_reviews_are_answered_201_by_the_real_apiserver(
    real: Real, proxy: Sandbox, fixture: str, target: str
) -> None:
    body = (FIXTURES / fixture).read_bytes()
    async with (
        proxy_session(proxy) as http,
        http.post(target, data=body, headers={"Content-Type": PROTOBUF, "Accept": PROTOBUF}) as resp,
    ):
        answer = await resp.read()
    assert resp.status == 201, answer[:300]
    assert resp.headers["Content-Type"] == PROTOBUF and answer.startswith(b"k8s\x00")


async def test_json_token_review_is_answered_by_the_real_apiserver(real: Real, proxy: Sandbox) -> None:
    review = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenReview",
        "spec": {"token": real.proxy_token},
    }
    async with (
        proxy_session(proxy) as http,
        http.post("/apis/authentication.k8s.io/v1/tokenreviews", json=review) as resp,
    ):
        answer = await resp.json()
    assert resp.status == 201, answer
    assert answer["status"]["authenticated"] is True
    assert answer["status"]["user"]["username"] == real.proxy_user


@pytest.mark.parametrize(
    ("args", "expect"),
    [
        (["create", "configmap", "planted", "-n", "accounts", "--from-literal=a=1"], "forbidden"),
        (["label", "pod", "{pod}", "-n", "{ns}", "planted=yes"], "forbidden"),
        (["delete", "pod", "{pod}", "-n", "{ns}", "--wait=false"], "forbidden"),
        (["delete", "pods", "--all", "-n", "{ns}", "--wait=false"], "forbidden"),
        (["exec", "{pod}", "-n", "{ns}", "--", "true"], "forbidden"),
        (["port-forward", "pod/{pod}", "-n", "{ns}", "18080:80"], "forbidden"),
        (["get", "--raw", "/api/v1/namespaces/{ns}/pods/{pod}/proxy"], "forbidden"),
        (["get", "--raw", "/api/v1/namespaces/{ns}/services/checkout:80/proxy"], "forbidden"),
        # kube would route the rest of the path to the pod; the proxy refuses it before authorizing.
        (["get", "--raw", "/api/v1/namespaces/{ns}/pods/{pod}/proxy/metrics"], "badrequest"),
        (["get", "serviceaccounts", "-A"], "forbidden"),
        (["create", "token", "apiproxy", "-n", "apiproxy"], "forbidden"),
    ],
    ids=lambda v: "-".join(v[:2]) if isinstance(v, list) else None,
)
async def test_refused_requests_never_reach_the_apiserver(
    real: Real, proxy: Sandbox, args: list[str], expect: str
) -> None:
    ns, pod = some_pod(real)
    argv = [a.format(ns=ns, pod=pod) for a in args]
    before = len(real.cluster.settled_audit_events())
    result = await kubectl(proxy.kubeconfig(), *argv, timeout=60)
    assert result.returncode != 0, result.stdout
    assert expect in (result.stdout + result.stderr).lower(), result.stderr
    # kubectl's discovery and reads pass (they are allowed); nothing else reached the apiserver.
    reached = [
        e for e in real.cluster.settled_audit_events()[before:] if e["user"]["username"] == real.proxy_user
    ]
    assert not [e for e in reached if not is_plain_read(e)], reached
    # ... and the state agrees.
    assert real.cluster.kubectl("get", "configmap", "planted", "-n", "accounts", check=False).returncode != 0
    labels = json.loads(real.cluster.kubectl("get", "pod", pod, "-n", ns, "-o", "json").stdout)["metadata"]
    assert "planted" not in labels.get("labels", {})


async def test_the_proxy_identity_never_wrote_or_read_secrets_at_the_apiserver(
    real: Real, proxy: Sandbox
) -> None:
    """Across everything this session has sent through proxies so far, the apiserver saw the proxy's
    identity only read (and review), and never a Secret, exec, attach, port-forward or proxy request."""
    async with proxy_session(proxy) as http:
        for namespace, name in real.seeded.secrets[:3]:
            async with http.get(f"/api/v1/namespaces/{namespace}/secrets/{name}") as resp:
                body = await resp.read()
                assert resp.status in (403, 404), body[:200]
                assert b'"data"' not in body
    events = list(real.cluster.audit_events_by(real.proxy_user))
    assert events, "the proxy's identity made no request at all: the audit log is not being read"
    for event in events:
        ref = event.get("objectRef", {})
        assert event["verb"] not in WRITE_VERBS or ref.get("resource") in REVIEWS, event
        assert ref.get("resource") != "secrets", event
        assert ref.get("subresource") not in ("exec", "attach", "portforward", "proxy"), event


async def test_a_caller_token_is_not_a_credential_at_the_apiserver(real: Real, proxy: Sandbox) -> None:
    """The remote cluster's token authenticates at the proxy only; sent to the apiserver it is nobody,
    and the proxy answered with its own identity (the apiserver's audit names it)."""
    status, _, _ = real.cluster.request("GET", "/api/v1/pods?limit=1", token=proxy.clusters["alpha"].token)
    assert status == 401
    before = len(real.cluster.settled_audit_events())
    async with proxy_session(proxy) as http, http.get("/api/v1/namespaces/accounts/pods?limit=1") as resp:
        assert resp.status == 200
    served = [
        e
        for e in real.cluster.settled_audit_events()[before:]
        if e.get("objectRef", {}).get("resource") == "pods"
        and e.get("objectRef", {}).get("namespace") == "accounts"
    ]
    assert served and {e["user"]["username"] for e in served} == {real.proxy_user}

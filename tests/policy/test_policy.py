"""policy: validation with exact lines, the shipped policies, decisions, and properties."""

# ruff: noqa: E501  (the case tables read best one case per line)
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from apiproxy.policy import Policy, PolicyError, forbidden_message, load_policy, parse_policy
from apiproxy.policy.requestinfo import MalformedRequest, classify

POLICIES = Path(__file__).resolve().parents[2] / "policies"
HEAD = "apiVersion: apiproxy.io/v1alpha1\nkind: Policy\nrules:\n"


def errors_of(body: str, head: str = HEAD) -> list[str]:
    with pytest.raises(PolicyError) as excinfo:
        parse_policy(head + textwrap.dedent(body), "p.yaml")
    return excinfo.value.errors


# (rule text after the 3-line header, expected "line: message fragment" list)
INVALID = [
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [get]\n    colour: red\n",
     ["p.yaml:8: unknown field 'colour' in rules[0]"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [get, delete]\n",
     ["p.yaml:7: verb 'delete' is not allowed: the proxy is read-only"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    verbs:\n      - get\n      - '*'\n",
     ["p.yaml:9: verb '*' is not allowed"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [GET]\n",
     ["p.yaml:7: unknown verb 'GET' (hint: verbs are lowercase: 'get')"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [create]\n",
     ["p.yaml:7: create is only allowed on tokenreviews and subjectaccessreviews, not core/pods"]),
    ("  - clusters: ['*']\n    apiGroups: ['*']\n    resources: [tokenreviews]\n    verbs: [create]\n",
     ["p.yaml:7: create cannot be combined with '*' apiGroups or resources"]),
    ("  - clusters: ['*']\n    apiGroups: [authentication.k8s.io, authorization.k8s.io]\n"
     "    resources: [tokenreviews, subjectaccessreviews]\n    verbs: [create]\n",
     ["p.yaml:7: create is only allowed on tokenreviews and subjectaccessreviews, not "
      "authentication.k8s.io/subjectaccessreviews, authorization.k8s.io/tokenreviews"]),
    ("  - clusters: ['*']\n    apiGroups: [authorization.k8s.io]\n    resources: [subjectaccessreviews]\n"
     "    verbs: [create]\n    namespaces: [a]\n",
     ["p.yaml:8: namespaces cannot be used with create"]),
    ("  - clusters: ['*']\n    apiGroups: [authorization.k8s.io]\n    resources: [localsubjectaccessreviews]\n"
     "    verbs: [create]\n",
     ["p.yaml:7: create is only allowed on tokenreviews and subjectaccessreviews"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    nonResourceURLs: [/version]\n    verbs: [get]\n",
     ["p.yaml:5: rules[0] has both nonResourceURLs and apiGroups"]),
    ("  - clusters: ['*']\n    nonResourceURLs: ['/ap*i']\n    verbs: [get]\n",
     ["p.yaml:5: nonResourceURL '/ap*i': '*' is only allowed at the end"]),
    ("  - clusters: ['*']\n    nonResourceURLs: [/version]\n    verbs: [list]\n",
     ["p.yaml:6: verb 'list' does not apply to nonResourceURLs"]),
    ("  - clusters: ['*']\n    nonResourceURLs: [/api/v1/pods]\n    verbs: [get]\n",
     ["p.yaml:5: nonResourceURL '/api/v1/pods' is a resource path"]),
    ("  - clusters: ['*']\n    nonResourceURLs: [version]\n    verbs: [get]\n",
     ["p.yaml:5: nonResourceURL 'version' must be a path starting with '/'"]),
    ("  - clusters: []\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [get]\n",
     ["p.yaml:4: clusters must not be empty"]),
    ("  - apiGroups: ['']\n    resources: [pods]\n    verbs: [get]\n",
     ["p.yaml:4: rules[0] has no clusters"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n",
     ["p.yaml:4: rules[0] has no verbs"]),
    ("  - clusters: ['*']\n    resources: [pods]\n    verbs: [get]\n",
     ["p.yaml:4: rules[0] has resources but no apiGroups"]),
    ("  - clusters: ['*']\n    verbs: [get]\n",
     ["p.yaml:4: rules[0] has neither resources nor nonResourceURLs"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods/exec]\n    verbs: [get]\n",
     ["p.yaml:6: subresource 'pods/exec' opens a connection"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: ['*/status']\n    verbs: [get]\n",
     ["p.yaml:6: resource '*/status': '*' cannot have a subresource"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [Pods]\n    verbs: [get]\n",
     ["p.yaml:6: resource 'Pods' is not a valid resource or resource/subresource (hint: resources are lowercase"]),
    ("  - clusters: ['*']\n    apiGroups: [v1]\n    resources: [pods]\n    verbs: [get]\n",
     ["p.yaml:5: API group 'v1' does not exist"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [configmaps]\n    verbs: [get]\n    resourceNames: ['*']\n",
     ["p.yaml:8: resourceName '*' is not allowed"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [configmaps]\n    verbs: [get]\n    resourceNames: ['a*b']\n",
     ["p.yaml:8: resourceName 'a*b': '*' is only allowed at the end"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [configmaps]\n    verbs: [get]\n    namespaces: ['*']\n",
     ["p.yaml:8: namespace '*' is not allowed"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [get, get]\n",
     ["p.yaml:7: verbs lists 'get' twice"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [get]\n    verbs: [list]\n",
     ["p.yaml:8: duplicate key 'verbs' in rules[0] (first given on line 7)"]),
    ("  - clusters: [no]\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [get]\n",
     ["p.yaml:4: each entry of clusters must be a string (hint: quote it)"]),
    ("  - name: a\n    clusters: ['*']\n    nonResourceURLs: [/version]\n    verbs: [get]\n"
     "  - name: a\n    clusters: ['*']\n    nonResourceURLs: [/api]\n    verbs: [get]\n",
     ["p.yaml:8: rule name 'a' is used twice (first on line 4)"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: pods\n    verbs: [get]\n",
     ["p.yaml:6: resources must be a list of strings"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [secrets]\n    verbs: [get]\n    action: hide\n",
     ["p.yaml:8: unknown action 'hide' (hint: \"allow\" (the default) or \"conceal\")"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [secrets]\n    verbs: [get]\n    action: Conceal\n",
     ["p.yaml:8: unknown action 'Conceal' (hint: did you mean 'conceal'?)"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [secrets]\n    verbs: [get]\n    action: [conceal]\n",
     ["p.yaml:8: action must be a string"]),
    ("  - clusters: ['*']\n    apiGroups: [authentication.k8s.io]\n    resources: [tokenreviews]\n"
     "    verbs: [create]\n    action: conceal\n",
     ["p.yaml:7: verb 'create' cannot be concealed: only get, list and watch can"]),
    ("  - clusters: ['*']\n    nonResourceURLs: [/version]\n    verbs: [get]\n    action: conceal\n",
     ["p.yaml:7: rules[0]: nonResourceURLs cannot be concealed"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: ['*']\n    verbs: [list]\n    action: conceal\n",
     ["p.yaml:6: a conceal rule must name its resources, not '*'"]),
    ("  - clusters: ['*']\n    apiGroups: ['*']\n    resources: [secrets]\n    verbs: [list]\n    action: conceal\n",
     ["p.yaml:5: a conceal rule must name its API groups, not '*'"]),
    ("  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods/log]\n    verbs: [get]\n    action: conceal\n",
     ["p.yaml:6: subresource 'pods/log' cannot be concealed: only whole resources can"]),
]  # fmt: skip


@pytest.mark.parametrize(("body", "expected"), INVALID, ids=lambda v: str(v)[:60])
def test_validation_errors_have_exact_lines(body: str, expected: list[str]) -> None:
    errors = errors_of(body)
    for want in expected:
        assert any(e.startswith(want) for e in errors), (want, errors)


def test_all_errors_are_collected() -> None:
    errors = errors_of(
        "  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [delete]\n"
        "  - clusters: ['*']\n    nonResourceURLs: ['/x*y']\n    verbs: [get]\n    extra: 1\n"
    )
    assert [e.split(":")[1] for e in errors] == ["7", "11", "9"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "p.yaml:1: policy is empty"),
        ("kind: Policy\nrules: []\n", "p.yaml:1: missing apiVersion"),
        ("apiVersion: v1\nkind: Policy\nrules: []\n", "p.yaml:1: apiVersion must be 'apiproxy.io/v1alpha1'"),
        ("apiVersion: apiproxy.io/v1alpha1\nkind: Policy\nrules: []\n", "p.yaml:3: rules must not be empty"),
        ("apiVersion: apiproxy.io/v1alpha1\nkind: Policy\n", "p.yaml:1: missing rules"),
        (
            "apiVersion: apiproxy.io/v1alpha1\nkind: Policy\nkind: Policy\nrules: []\n",
            "p.yaml:3: duplicate key 'kind'",
        ),
        ("apiVersion: apiproxy.io/v1alpha1\nkind: Policy\nrules:\n  - [a\n", "p.yaml:5: invalid YAML"),
        ("- a\n", "p.yaml:1: the policy must be a mapping"),
        (
            "apiVersion: apiproxy.io/v1alpha1\nkind: Policy\nrules: [1]\n",
            "p.yaml:3: rules[0] must be a mapping",
        ),
        ("a: 1\n---\nb: 2\n", "p.yaml:2: invalid YAML"),
    ],
)
def test_document_errors(text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as excinfo:
        parse_policy(text, "p.yaml")
    assert any(e.startswith(expected) for e in excinfo.value.errors), excinfo.value.errors


def test_load_policy_errors(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as excinfo:
        load_policy(tmp_path / "missing.yaml")
    assert "cannot read" in excinfo.value.errors[0]
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(b"\xff\xfe")
    with pytest.raises(PolicyError) as excinfo:
        load_policy(bad)
    assert "not UTF-8" in excinfo.value.errors[0]


@pytest.mark.parametrize("name", ["istio-remote.yaml", "discovery-minimal.yaml"])
def test_shipped_policies_load(name: str) -> None:
    policy = load_policy(POLICIES / name)
    assert policy.rules
    assert len(policy.sha256) == 64
    for rule in policy.rules:
        assert rule.verbs <= {"get", "list", "watch", "create"}


@pytest.fixture(scope="module")
def istio() -> Policy:
    return load_policy(POLICIES / "istio-remote.yaml")


ISTIO_DECISIONS = [
    ("GET", "/api/v1/pods?resourceVersion=0&limit=500", True),
    ("GET", "/api/v1/pods?fieldSelector=status.phase%21%3DFailed&watch=true&allowWatchBookmarks=true", True),
    ("GET", "/api/v1/namespaces?watch=1", True),
    ("GET", "/api/v1/services", True),
    ("GET", "/api/v1/nodes/node-1", True),
    ("GET", "/api/v1/watch/namespaces/default/pods", True),
    ("GET", "/apis/discovery.k8s.io/v1/endpointslices?watch=true", True),
    ("GET", "/apis/apiextensions.k8s.io/v1/customresourcedefinitions", True),
    ("GET", "/apis/gateway.networking.k8s.io/v1/gateways", True),
    ("GET", "/apis/networking.istio.io/v1/workloadentries", True),
    ("GET", "/apis/networking.istio.io/v1/serviceentries", False),
    ("GET", "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio", True),
    (
        "GET",
        "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio-v1x19&watch=1",
        True,
    ),
    ("GET", "/api/v1/namespaces/istio-system/configmaps/istio", True),
    ("GET", "/api/v1/namespaces/istio-system/configmaps", False),
    ("GET", "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert", False),
    ("GET", "/api/v1/namespaces/istio-system/configmaps/istio-sidecar-injector", False),
    ("GET", "/api/v1/namespaces/default/configmaps/istio", False),
    ("GET", "/api/v1/configmaps?fieldSelector=metadata.name%3Distio", False),
    ("GET", "/api/v1/watch/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio", False),
    ("GET", "/api/v1/secrets", False),
    ("GET", "/api/v1/namespaces/istio-system/secrets/cacerts", False),
    ("GET", "/api/v1/namespaces/default/pods/p/log", False),
    ("GET", "/api/v1/namespaces/default/pods/p/status", False),
    ("GET", "/api/v1/proxy/namespaces/default/pods/p", False),
    ("GET", "/api/v1/namespaces/default/pods/p/exec", False),
    ("POST", "/api/v1/namespaces/default/pods", False),
    ("PUT", "/api/v1/namespaces/default/pods/p", False),
    ("PATCH", "/api/v1/namespaces/default/pods/p", False),
    ("DELETE", "/api/v1/namespaces/default/pods/p", False),
    ("DELETE", "/api/v1/pods", False),
    ("POST", "/api/v1/watch/pods", False),
    ("POST", "/apis/authentication.k8s.io/v1/tokenreviews", True),
    ("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", True),
    ("POST", "/apis/authorization.k8s.io/v1/namespaces/x/localsubjectaccessreviews", False),
    ("POST", "/apis/authentication.k8s.io/v1/namespaces/x/tokenreviews", False),
    ("POST", "/apis/authentication.k8s.io/v1/tokenreviews/x", False),
    ("GET", "/apis/authentication.k8s.io/v1/tokenreviews", False),
    ("POST", "/apis/authentication.k8s.io/v1/subjectaccessreviews", False),
    ("GET", "/version", True),
    ("GET", "/api", True),
    ("GET", "/api/v1", True),
    ("GET", "/apis", True),
    ("GET", "/apis/apps/v1", True),
    ("POST", "/apis", False),
    ("GET", "/healthz", False),
    ("GET", "/openapi/v2", False),
    ("GET", "/metrics", False),
    ("GET", "/API/v1/pods", False),
    ("GET", "/", False),
]


@pytest.mark.parametrize(("method", "target", "allowed"), ISTIO_DECISIONS)
def test_istio_remote_decisions(istio: Policy, method: str, target: str, allowed: bool) -> None:
    info = classify(method, target)
    decision = istio.decide("3f1c-uuid", "alpha", info)
    assert decision.allowed is allowed, (decision, istio.explain("3f1c-uuid", "alpha", info))
    assert (decision.rule is not None) is (allowed or decision.concealed)
    assert not (decision.allowed and decision.concealed)
    assert decision.reason


ISTIO_CONCEALED = [
    # istiod's gateway-credentials informer: every namespace, with its field selector.
    (
        "/api/v1/secrets?fieldSelector=type%21%3Dhelm.sh%2Frelease.v1%2Ctype%21%3Dkubernetes.io"
        "%2Fservice-account-token&limit=500&resourceVersion=0",
        "secrets-concealed",
    ),
    ("/api/v1/secrets?watch=true&allowWatchBookmarks=true&timeoutSeconds=300", "secrets-concealed"),
    ("/api/v1/namespaces/istio-system/secrets/cacerts", "secrets-concealed"),
    ("/api/v1/watch/namespaces/d8-istio/secrets", "secrets-concealed"),
    # istiod 1.26's configmap informer, cluster-wide.
    ("/api/v1/configmaps?limit=500&resourceVersion=0", "configmaps-concealed"),
    ("/api/v1/configmaps?watch=1&sendInitialEvents=true&resourceVersionMatch=NotOlderThan", "configmaps-concealed"),
    ("/api/v1/namespaces/istio-system/configmaps", "configmaps-concealed"),
    # The mesh-config allow rule wins over the conceal rule for the configmaps it names.
    ("/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio&watch=1", None),
    ("/api/v1/namespaces/istio-system/configmaps/istio", None),
]  # fmt: skip


@pytest.mark.parametrize(("target", "rule"), ISTIO_CONCEALED)
def test_istio_remote_conceals_secrets_and_cluster_wide_configmaps(
    istio: Policy, target: str, rule: str | None
) -> None:
    decision = istio.decide("3f1c-uuid", "alpha", classify("GET", target))
    if rule is None:
        assert decision.action == "allow" and decision.rule == "mesh-config"
    else:
        assert (decision.action, decision.rule, decision.allowed) == ("conceal", rule, False)
        assert decision.reason == f"concealed by rule {rule!r}"


def test_a_named_configmap_outside_mesh_config_is_still_denied(istio: Policy) -> None:
    # Only list and watch of configmaps are concealed: a GET by name is refused as before.
    info = classify("GET", "/api/v1/namespaces/istio-system/configmaps/istio-ca-root-cert")
    assert istio.decide("u", None, info).action == "deny"


CONCEALING = """\
apiVersion: apiproxy.io/v1alpha1
kind: Policy
rules:
  - name: hide-secrets
    description: the client watches them but must never see one
    clusters: ["*"]
    apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch"]
    action: conceal
  - name: gateway-credentials
    clusters: ["alpha"]
    apiGroups: [""]
    resources: ["secrets"]
    verbs: ["get", "list", "watch"]
    namespaces: ["d8-istio"]
  - name: hide-widgets
    clusters: ["beta"]
    apiGroups: ["example.com"]
    resources: ["widgets"]
    verbs: ["list"]
    namespaces: ["team-b"]
    action: conceal
  - name: allow
    clusters: ["*"]
    action: allow
    apiGroups: [""]
    resources: ["pods"]
    verbs: ["list"]
"""


@pytest.fixture(scope="module")
def concealing() -> Policy:
    return parse_policy(CONCEALING, "c.yaml")


@pytest.mark.parametrize(
    ("cluster", "name", "method", "target", "action", "rule"),
    [
        ("u1", "alpha", "GET", "/api/v1/namespaces/d8-istio/secrets", "allow", "gateway-credentials"),
        ("u1", "alpha", "GET", "/api/v1/namespaces/d8-istio/secrets/x", "allow", "gateway-credentials"),
        ("u1", "alpha", "GET", "/api/v1/namespaces/other/secrets", "conceal", "hide-secrets"),
        ("u2", "beta", "GET", "/api/v1/namespaces/d8-istio/secrets", "conceal", "hide-secrets"),
        ("u2", "beta", "GET", "/api/v1/secrets?watch=1", "conceal", "hide-secrets"),
        ("u2", "beta", "GET", "/apis/example.com/v1/namespaces/team-b/widgets", "conceal", "hide-widgets"),
        ("u2", "beta", "GET", "/apis/example.com/v1/namespaces/team-b/widgets?watch=1", "deny", None),
        ("u2", "beta", "GET", "/apis/example.com/v1/namespaces/team-c/widgets", "deny", None),
        ("u1", "alpha", "GET", "/apis/example.com/v1/namespaces/team-b/widgets", "deny", None),
        ("u2", "beta", "GET", "/api/v1/namespaces/x/secrets/s/status", "deny", None),
        ("u2", "beta", "DELETE", "/api/v1/namespaces/x/secrets/s", "deny", None),
        ("u2", "beta", "POST", "/api/v1/namespaces/x/secrets", "deny", None),
        ("u2", "beta", "POST", "/api/v1/watch/secrets", "deny", None),
        ("u2", "beta", "GET", "/api/v1/pods", "allow", "allow"),
    ],
)
def test_allow_wins_over_conceal_and_only_reads_are_concealed(
    concealing: Policy, cluster: str, name: str, method: str, target: str, action: str, rule: str | None
) -> None:
    decision = concealing.decide(cluster, name, classify(method, target))
    assert (decision.action, decision.rule) == (action, rule)
    assert decision.allowed is (action == "allow")
    assert decision.concealed is (action == "conceal")


def test_explain_says_concealed_and_by_which_rule(concealing: Policy) -> None:
    text = concealing.explain("u2", "beta", classify("GET", "/api/v1/secrets?watch=true"))
    assert "decision:    CONCEAL: concealed by rule 'hide-secrets' (c.yaml:4)" in text
    assert "nothing is read upstream" in text
    assert "the client watches them but must never see one" in text
    denied = concealing.explain("u2", "beta", classify("GET", "/api/v1/configmaps"))
    assert "DENY" in denied and "hide-secrets [conceal] (c.yaml:4): resource 'configmaps' not in" in denied


def test_rbac_grants_nothing_for_concealed_rules(concealing: Policy, istio: Policy) -> None:
    granted = {
        (g, r)
        for rule in concealing.rbac_rules()
        for g in rule.get("apiGroups", [])
        for r in rule["resources"]
    }
    assert ("", "secrets") not in granted and ("example.com", "widgets") not in granted
    # Only the opt-in allow rule's namespace gets a Role with secrets; team-b (concealed only) gets none.
    assert concealing.rbac_namespaces() == ["d8-istio"]
    (role,) = concealing.rbac_rules("d8-istio")
    assert role["resources"] == ["secrets"]
    assert concealing.rbac_rules("team-b") == []
    # The one read a conceal rule needs: the apiserver's current resourceVersion, from a namespace list.
    assert {"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]} in concealing.rbac_rules()
    # The shipped policy already lists namespaces, so nothing is added; and nothing names secrets.
    text = istio.rbac_yaml()
    assert "secrets" not in text
    assert [r for r in istio.rbac_rules() if r.get("resources") == ["namespaces"]] == []
    assert all("configmaps" not in r.get("resources", []) for r in istio.rbac_rules())
    assert istio.rbac_namespaces() == ["istio-system"]


def test_a_policy_without_conceal_rules_gets_no_extra_grant(scoped: Policy) -> None:
    assert not scoped.conceals_anything
    assert all(r.get("resources") != ["namespaces"] for r in scoped.rbac_rules())


SCOPED = """\
apiVersion: apiproxy.io/v1alpha1
kind: Policy
rules:
  - name: alpha-pods
    clusters: ["uuid-alpha"]
    apiGroups: [""]
    resources: ["pods", "pods/status"]
    verbs: ["get", "list"]
    namespaces: ["team-a"]
  - name: beta-by-name
    clusters: ["beta"]
    apiGroups: ["apps", "*"]
    resources: ["deployments"]
    verbs: ["get", "list", "watch"]
    resourceNames: ["web", "api-*"]
  - name: anything-readable-for-gamma
    clusters: ["gamma"]
    apiGroups: ["*"]
    resources: ["*"]
    verbs: ["get"]
  - name: discovery
    clusters: ["*"]
    nonResourceURLs: ["/version", "/apis/*"]
    verbs: ["get"]
"""


@pytest.fixture(scope="module")
def scoped() -> Policy:
    return parse_policy(SCOPED, "scoped.yaml")


SCOPED_DECISIONS = [
    ("uuid-alpha", None, "GET", "/api/v1/namespaces/team-a/pods", "alpha-pods"),
    ("uuid-alpha", "alpha", "GET", "/api/v1/namespaces/team-a/pods/p/status", "alpha-pods"),
    ("uuid-alpha", None, "GET", "/api/v1/namespaces/team-a/pods?watch=1", None),
    ("uuid-alpha", None, "GET", "/api/v1/namespaces/team-b/pods", None),
    ("uuid-alpha", None, "GET", "/api/v1/pods", None),
    ("uuid-alpha", None, "GET", "/api/v1/namespaces/team-a/pods/p/log", None),
    ("uuid-other", "alpha", "GET", "/api/v1/namespaces/team-a/pods", None),
    ("uuid-b", "beta", "GET", "/apis/apps/v1/namespaces/x/deployments/web", "beta-by-name"),
    ("uuid-b", "beta", "GET", "/apis/apps/v1/deployments?fieldSelector=metadata.name%3Dapi-7", "beta-by-name"),
    ("uuid-b", "beta", "GET", "/apis/extensions/v1/deployments?fieldSelector=metadata.name%3D%3Dweb&watch=1", "beta-by-name"),
    ("uuid-b", "beta", "GET", "/apis/apps/v1/deployments?fieldSelector=metadata.name%3Dother", None),
    ("uuid-b", "beta", "GET", "/apis/apps/v1/deployments", None),
    ("uuid-b", "beta", "GET", "/apis/apps/v1/watch/deployments?fieldSelector=metadata.name%3Dweb", None),
    ("uuid-b", "beta", "GET", "/apis/apps/v1/namespaces/x/deployments/api-", "beta-by-name"),
    ("uuid-b", "beta", "GET", "/apis/apps/v1/namespaces/x/deployments/web/scale", None),
    ("uuid-g", "gamma", "GET", "/api/v1/namespaces/x/secrets/s", "anything-readable-for-gamma"),
    ("uuid-g", "gamma", "GET", "/api/v1/namespaces/x/secrets", None),
    ("uuid-g", "gamma", "GET", "/api/v1/namespaces/x/pods/p/status", None),
    ("uuid-g", "gamma", "PUT", "/api/v1/namespaces/x/pods/p", None),
    ("anyone", None, "GET", "/version", "discovery"),
    ("anyone", None, "GET", "/apis/apps", "discovery"),
    ("anyone", None, "GET", "/apis", None),
    ("anyone", None, "GET", "/versionx", None),
]  # fmt: skip


@pytest.mark.parametrize(("uuid", "name", "method", "target", "rule"), SCOPED_DECISIONS)
def test_scoped_decisions(
    scoped: Policy, uuid: str, name: str | None, method: str, target: str, rule: str | None
) -> None:
    decision = scoped.decide(uuid, name, classify(method, target))
    assert decision.rule == rule
    assert decision.allowed is (rule is not None)


def test_first_rule_wins_whatever_the_index_path(scoped: Policy) -> None:
    text = SCOPED.replace("  - name: alpha-pods", "  - name: early\n    clusters: ['*']\n    apiGroups: ['*']\n"
                          "    resources: ['*']\n    verbs: ['list']\n  - name: alpha-pods")  # fmt: skip
    policy = parse_policy(text, "x")
    assert (
        policy.decide("uuid-alpha", None, classify("GET", "/api/v1/namespaces/team-a/pods")).rule == "early"
    )
    assert (
        policy.decide("uuid-alpha", None, classify("GET", "/api/v1/namespaces/team-a/pods/p")).rule
        == "alpha-pods"
    )


def test_explain(scoped: Policy) -> None:
    text = scoped.explain("uuid-alpha", "alpha", classify("GET", "/api/v1/namespaces/team-b/pods"))
    assert "DENY" in text
    assert "alpha-pods (scoped.yaml:4): namespace 'team-b' not in namespaces ['team-a']" in text
    text = scoped.explain("uuid-b", "beta", classify("GET", "/apis/apps/v1/deployments"))
    assert "fieldSelector=metadata.name" in text
    text = scoped.explain("uuid-alpha", None, classify("GET", "/api/v1/namespaces/team-a/pods"))
    assert "ALLOW by rule 'alpha-pods' (scoped.yaml:4)" in text
    assert "DENY" in scoped.explain("x", None, classify("DELETE", "/api/v1/pods/x"))


def test_rbac_rules(istio: Policy, scoped: Policy) -> None:
    rules = istio.rbac_rules()
    assert {
        "apiGroups": ["authentication.k8s.io"],
        "resources": ["tokenreviews"],
        "verbs": ["create"],
    } in rules
    assert rules[-1] == {
        "nonResourceURLs": ["/api", "/api/*", "/apis", "/apis/*", "/version"],
        "verbs": ["get"],
    }
    # The mesh-config rule is restricted to istio-system: it is not granted cluster-wide, only by a Role.
    assert not [r for r in rules if "configmaps" in r.get("resources", [])]
    assert istio.rbac_namespaces() == ["istio-system"]
    (configmaps,) = istio.rbac_rules("istio-system")
    assert configmaps["resources"] == ["configmaps"] and configmaps["verbs"] == ["get", "list", "watch"]
    assert "resourceNames" not in configmaps  # a glob cannot be expressed in RBAC
    for namespace in [None, *scoped.rbac_namespaces()]:
        for rule in scoped.rbac_rules(namespace):
            assert set(rule["verbs"]) <= {"get", "list", "watch", "create"}


def test_rbac_manifests_bind_each_role_to_the_proxys_service_account(istio: Policy) -> None:
    docs = list(yaml.safe_load_all(istio.rbac_yaml("x", ("d8-istio", "apiproxy"))))
    kinds = [(d["kind"], d["metadata"].get("namespace")) for d in docs]
    assert kinds == [
        ("ClusterRole", None),
        ("ClusterRoleBinding", None),
        ("Role", "istio-system"),
        ("RoleBinding", "istio-system"),
    ]
    for binding in (docs[1], docs[3]):
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": "apiproxy", "namespace": "d8-istio"}
        ]
        assert binding["roleRef"]["name"] == "x"
    assert docs[2]["metadata"]["annotations"]["apiproxy.io/namespace"] == "istio-system"


def test_forbidden_message() -> None:
    msg, details = forbidden_message(classify("GET", "/api/v1/pods"), "alpha")
    assert (
        msg
        == 'pods is forbidden: cluster "alpha" cannot list resource "pods" in API group "" at the cluster scope'
    )
    assert details == {"kind": "pods"}
    msg, details = forbidden_message(
        classify("GET", "/apis/apps/v1/namespaces/ns/deployments/web/scale"), "b"
    )
    assert msg == (
        'deployments.apps "web" is forbidden: cluster "b" cannot get resource "deployments/scale" '
        'in API group "apps" in the namespace "ns"'
    )
    assert details == {"name": "web", "group": "apps", "kind": "deployments"}
    msg, details = forbidden_message(classify("GET", "/healthz"), "c", reason="not in policy")
    assert msg == 'forbidden: cluster "c" cannot get path "/healthz": not in policy'
    assert details == {}


def test_large_policy_compiles_and_decides() -> None:
    rules = "".join(
        f"  - name: r{i}\n    clusters: ['c{i % 50}']\n    apiGroups: ['g{i % 20}.example.com']\n"
        f"    resources: ['res{i}']\n    verbs: [get, list, watch]\n    namespaces: ['ns{i % 7}']\n"
        for i in range(1000)
    )
    policy = parse_policy(HEAD + rules, "big")
    info = classify("GET", "/apis/g19.example.com/v1/namespaces/ns5/res999")
    assert policy.decide("c49", None, info).rule == "r999"
    assert not policy.decide("c48", None, info).allowed


# ----------------------------------------------------------------------------------------- properties

_VERBS = st.sampled_from(
    ["get", "list", "watch", "create", "update", "patch", "delete", "deletecollection", "*", "proxy"]
)
_GROUPS = st.sampled_from(["", "*", "apps", "authentication.k8s.io", "authorization.k8s.io"])
_RESOURCES = st.sampled_from(
    ["*", "pods", "pods/status", "tokenreviews", "subjectaccessreviews", "secrets", "pods/exec"]
)


@st.composite
def rule_texts(draw: st.DrawFn) -> str:
    if draw(st.integers(0, 4)) == 0:
        urls = draw(
            st.lists(
                st.sampled_from(["/version", "/api/*", "*", "/healthz", "/apis"]), min_size=1, unique=True
            )
        )
        verbs = draw(st.lists(_VERBS, min_size=1, unique=True))
        return f"  - clusters: ['*']\n    nonResourceURLs: {urls!r}\n    verbs: {verbs!r}\n"
    text = (
        f"  - clusters: {draw(st.lists(st.sampled_from(['*', 'a', 'b']), min_size=1, unique=True))!r}\n"
        f"    apiGroups: {draw(st.lists(_GROUPS, min_size=1, unique=True))!r}\n"
        f"    resources: {draw(st.lists(_RESOURCES, min_size=1, unique=True))!r}\n"
        f"    verbs: {draw(st.lists(_VERBS, min_size=1, unique=True))!r}\n"
    )
    if draw(st.booleans()):
        text += f"    namespaces: {draw(st.lists(st.sampled_from(['x', 'y']), min_size=1, unique=True))!r}\n"
    if draw(st.booleans()):
        text += f"    resourceNames: {draw(st.lists(st.sampled_from(['n', 'n*', 'm']), min_size=1, unique=True))!r}\n"
    return text


_TARGETS = st.sampled_from(
    [
        "/api/v1/pods", "/api/v1/namespaces/x/pods/n", "/api/v1/namespaces/x/pods/n/status",
        "/api/v1/namespaces/x/pods/n/exec", "/api/v1/secrets?fieldSelector=metadata.name%3Dn",
        "/apis/apps/v1/namespaces/y/deployments", "/apis/authentication.k8s.io/v1/tokenreviews",
        "/apis/authorization.k8s.io/v1/subjectaccessreviews", "/api/v1/watch/pods", "/version", "/healthz",
        "/api/v1/namespaces/x", "/api/v1/namespaces/x/finalize", "/api/v1/proxy/nodes/n",
    ]
)  # fmt: skip
_ANY_METHOD = st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"])


@settings(max_examples=400, deadline=None)
@given(
    st.lists(rule_texts(), min_size=1, max_size=6), st.lists(st.tuples(_ANY_METHOD, _TARGETS), max_size=20)
)
def test_no_write_is_ever_allowed(rules: list[str], requests: list[tuple[str, str]]) -> None:
    try:
        policy = parse_policy(HEAD + "".join(rules), "gen")
    except PolicyError:
        return
    for method, target in requests:
        try:
            info = classify(method, target)
        except MalformedRequest:
            continue
        for cluster in ("a", "b", "c"):
            decision = policy.decide(cluster, None, info)
            if not decision.allowed:
                continue
            if method == "GET":
                assert info.verb in {"get", "list", "watch"}
                assert info.subresource not in {"exec", "attach", "portforward", "proxy"}
            else:
                assert method == "POST" and info.verb == "create"
                assert (info.api_group, info.resource) in {
                    ("authentication.k8s.io", "tokenreviews"),
                    ("authorization.k8s.io", "subjectaccessreviews"),
                }
                assert not (info.namespace or info.name or info.subresource)

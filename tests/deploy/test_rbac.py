"""The shipped RBAC is what `apiproxy policy rbac` derives from the shipped policy, and read-only."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import pytest
import yaml

from apiproxy.policy.cli import cmd_rbac
from tests.deploy.conftest import DEPLOY, ROOT, Manifest, one

POLICY = Path("policies/istio-remote.yaml")  # relative: the generated header names it this way
POLICY_COPY = DEPLOY / "base" / "policy" / "istio-remote.yaml"
RBAC = DEPLOY / "base" / "rbac.yaml"
REGENERATE = f"apiproxy policy rbac {POLICY} --name apiproxy > deploy/base/rbac.yaml"

READ_VERBS = {"get", "list", "watch"}
#: The only writes a policy may allow: reviews persist nothing.
REVIEW_CREATES = {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")}


def rbac_output(policy: Path, name: str = "apiproxy") -> str:
    out = io.StringIO()
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        status = cmd_rbac(
            argparse.Namespace(file=str(policy), name=name, service_account="apiproxy/apiproxy"), out
        )
    finally:
        os.chdir(cwd)
    assert status == 0, out.getvalue()
    return out.getvalue()


def test_shipped_rbac_is_the_output_of_policy_rbac() -> None:
    assert RBAC.read_text() == rbac_output(POLICY), f"deploy/base/rbac.yaml drifted: {REGENERATE}"


def test_policy_copy_is_byte_identical() -> None:
    assert POLICY_COPY.read_bytes() == (ROOT / POLICY).read_bytes(), (
        f"{POLICY_COPY.relative_to(ROOT)} drifted from {POLICY}: cp {POLICY} {POLICY_COPY.relative_to(ROOT)}"
    )


def test_rendered_roles_only_gain_labels(docs: list[Manifest]) -> None:
    shipped = {d["kind"]: d for d in yaml.safe_load_all(RBAC.read_text())}
    for kind in ("ClusterRole", "Role"):
        rendered = one(docs, kind)
        assert rendered["rules"] == shipped[kind]["rules"]
        assert rendered["metadata"]["name"] == shipped[kind]["metadata"]["name"]
        assert rendered["metadata"]["annotations"] == shipped[kind]["metadata"]["annotations"]
        assert rendered["metadata"].get("namespace") == shipped[kind]["metadata"].get("namespace")
        assert "aggregationRule" not in rendered


def test_nothing_namespaced_is_granted_cluster_wide(docs: list[Manifest]) -> None:
    """The proxy's identity reads configmaps in istio-system only, as the policy allows, not everywhere."""
    cluster_resources = {r for rule in one(docs, "ClusterRole")["rules"] for r in rule.get("resources", [])}
    assert "configmaps" not in cluster_resources and "secrets" not in cluster_resources
    role = one(docs, "Role")
    assert role["metadata"]["namespace"] == "istio-system"
    assert [r["resources"] for r in role["rules"]] == [["configmaps"]]
    assert check_read_only(role["rules"]) == []


def check_read_only(rules: list[Manifest]) -> list[str]:
    """Every way a rule could grant more than reads and the two review creates."""
    problems = []
    for i, rule in enumerate(rules):
        verbs = set(rule["verbs"])
        if "nonResourceURLs" in rule:
            if verbs != {"get"}:
                problems.append(f"rule {i}: non-resource URLs with verbs {sorted(verbs)}")
            continue
        groups, resources = rule.get("apiGroups", []), rule.get("resources", [])
        if "*" in verbs or "*" in groups or "*" in resources:
            problems.append(f"rule {i}: wildcard")
        if any("/" in r for r in resources):
            problems.append(f"rule {i}: subresource {resources}")
        writes = verbs - READ_VERBS
        if not writes:
            continue
        if writes != {"create"} or verbs != {"create"}:
            problems.append(f"rule {i}: write verbs {sorted(writes)}")
        elif not {(g, r) for g in groups for r in resources} <= REVIEW_CREATES or rule.get("resourceNames"):
            problems.append(f"rule {i}: create on {groups} {resources}")
    return problems


def test_cluster_role_grants_no_writes_but_the_reviews(docs: list[Manifest]) -> None:
    rules = one(docs, "ClusterRole")["rules"]
    assert check_read_only(rules) == []
    creates = {
        (g, r)
        for rule in rules
        if "create" in rule["verbs"]
        for g in rule["apiGroups"]
        for r in rule["resources"]
    }
    assert creates == REVIEW_CREATES


@pytest.mark.parametrize(
    "rule",
    [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "patch"]},
        {"apiGroups": [""], "resources": ["secrets"], "verbs": ["*"]},
        {"apiGroups": ["*"], "resources": ["pods"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["pods/exec"], "verbs": ["get"]},
        {"apiGroups": [""], "resources": ["configmaps"], "verbs": ["create"]},
        {
            "apiGroups": ["authorization.k8s.io"],
            "resources": ["localsubjectaccessreviews"],
            "verbs": ["create"],
        },
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["tokenreviews"],
            "verbs": ["create", "delete"],
        },
        {"nonResourceURLs": ["/metrics"], "verbs": ["get", "post"]},
    ],
)
def test_the_read_only_check_catches_writes(rule: Manifest) -> None:
    assert check_read_only([rule])

"""The shipped ClusterRole is what `apiproxy policy rbac` derives from the shipped policy, and read-only."""

from __future__ import annotations

import argparse
import io
import os
from pathlib import Path

import pytest
import yaml

from apiproxy.policy_cli import cmd_rbac
from tests.deploy.conftest import DEPLOY, ROOT, Manifest, one

POLICY = Path("policies/istio-remote.yaml")  # relative: the generated header names it this way
POLICY_COPY = DEPLOY / "base" / "policy" / "istio-remote.yaml"
CLUSTER_ROLE = DEPLOY / "base" / "clusterrole.yaml"
REGENERATE = f"apiproxy policy rbac {POLICY} --name apiproxy > deploy/base/clusterrole.yaml"

READ_VERBS = {"get", "list", "watch"}
#: The only writes a policy may allow: reviews persist nothing.
REVIEW_CREATES = {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")}


def rbac_output(policy: Path, name: str = "apiproxy") -> str:
    out = io.StringIO()
    cwd = Path.cwd()
    os.chdir(ROOT)
    try:
        status = cmd_rbac(argparse.Namespace(file=str(policy), name=name), out)
    finally:
        os.chdir(cwd)
    assert status == 0, out.getvalue()
    return out.getvalue()


def test_cluster_role_is_the_output_of_policy_rbac() -> None:
    assert CLUSTER_ROLE.read_text() == rbac_output(POLICY), (
        f"deploy/base/clusterrole.yaml drifted: {REGENERATE}"
    )


def test_policy_copy_is_byte_identical() -> None:
    assert POLICY_COPY.read_bytes() == (ROOT / POLICY).read_bytes(), (
        f"{POLICY_COPY.relative_to(ROOT)} drifted from {POLICY}: cp {POLICY} {POLICY_COPY.relative_to(ROOT)}"
    )


def test_rendered_cluster_role_only_gains_labels(docs: list[Manifest]) -> None:
    shipped = yaml.safe_load(CLUSTER_ROLE.read_text())
    rendered = one(docs, "ClusterRole")
    assert rendered["rules"] == shipped["rules"]
    assert rendered["metadata"]["name"] == shipped["metadata"]["name"]
    assert rendered["metadata"]["annotations"] == shipped["metadata"]["annotations"]
    assert "aggregationRule" not in rendered
    assert not [d for d in docs if d["kind"] in {"Role", "RoleBinding"}]


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

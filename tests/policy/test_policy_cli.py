"""policy_cli: `policy check|explain|rbac` through a local argparse parser."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from apiproxy.policy.cli import add_commands, target_from_url

POLICY = str(Path(__file__).resolve().parents[2] / "policies" / "istio-remote.yaml")


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    parser = argparse.ArgumentParser(prog="apiproxy")
    add_commands(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    code = int(args.func(args))
    return code, capsys.readouterr().out


def test_check_ok(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["policy", "check", POLICY], capsys)
    assert code == 0
    assert out.startswith(f"{POLICY}: ok (")


def test_check_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: apiproxy.io/v1alpha1\nkind: Policy\nrules:\n"
        "  - clusters: ['*']\n    apiGroups: ['']\n    resources: [pods]\n    verbs: [get, delete]\n"
    )
    code, out = run(["policy", "check", POLICY, str(bad)], capsys)
    assert code == 1
    assert f"{POLICY}: ok" in out
    assert f"{bad}:7: verb 'delete' is not allowed" in out


@pytest.mark.parametrize(
    ("method", "target", "code", "expected"),
    [
        ("GET", "/api/v1/pods?watch=true", 0, "ALLOW by rule 'service-registry-core'"),
        ("get", "https://proxy.example:4443/api/v1/nodes", 0, "ALLOW"),
        (
            "GET",
            "/api/v1/namespaces/istio-system/secrets",
            3,
            "CONCEAL: concealed by rule 'secrets-concealed'",
        ),
        ("GET", "/api/v1/namespaces/istio-system/serviceaccounts", 1, "closest rules:"),
        ("DELETE", "/api/v1/namespaces/x/pods/p", 1, "DENY"),
        ("GET", "/api/v1/pods/", 2, "REJECT (400)"),
        ("HEAD", "/api/v1/pods", 2, "REJECT (405)"),
    ],
)
def test_explain(
    method: str, target: str, code: int, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    got, out = run(
        [
            "policy",
            "explain",
            "--policy",
            POLICY,
            "--cluster",
            "uuid-1",
            "--cluster-name",
            "alpha",
            method,
            target,
        ],
        capsys,
    )
    assert got == code
    assert expected in out


def test_explain_with_bad_policy(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(
        ["policy", "explain", "--policy", str(tmp_path / "no.yaml"), "--cluster", "u", "GET", "/"], capsys
    )
    assert code == 2
    assert "cannot read" in out


def test_rbac(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run(["policy", "rbac", POLICY, "--name", "istio-reader"], capsys)
    assert code == 0
    assert "kind: ClusterRole" in out
    assert "name: istio-reader" in out
    assert "tokenreviews" in out
    assert "secrets" not in out  # concealed: the proxy never reads them, so it is granted nothing


def test_target_from_url() -> None:
    assert target_from_url("https://h:1/api?x=1") == "/api?x=1"
    assert target_from_url("http://h") == "/"
    assert target_from_url("/version") == "/version"

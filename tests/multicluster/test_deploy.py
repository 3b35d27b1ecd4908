"""deploy/multicluster and the controller's alert rules: schema-valid offline, least privilege, consistent
with the controller's flags, and every alert unit-tested with promtool."""

from __future__ import annotations

from typing import Any

import yaml

from apiproxy.cli import _build_parsers
from apiproxy.multicluster import model
from apiproxy.multicluster.settings import MulticlusterSettings
from apiproxy.settings import parse_settings
from tests.deploy.conftest import DEPLOY, OBSERVABILITY, require_module, require_tool, run

K8S_VERSION = "1.32.0"
RULES = OBSERVABILITY / "multicluster.rules.yaml"


def rendered() -> list[dict[str, Any]]:
    kubectl = require_tool("kubectl", "kubectl")
    proc = run([kubectl, "kustomize", str(DEPLOY / "multicluster")])
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind]
    assert len(found) == 1, kind
    return found[0]


def test_every_manifest_matches_the_kubernetes_schema() -> None:
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    docs = rendered()
    kinds = {"CustomResourceDefinition", "ServiceAccount", "Deployment"}
    kinds |= {"ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"}
    assert {d["kind"] for d in docs} == kinds
    for doc in docs:
        kv.validate(doc, K8S_VERSION, strict=True)


def test_crd_is_deckhouses_schema_with_status_and_columns() -> None:
    crd = one(rendered(), "CustomResourceDefinition")
    spec = crd["spec"]
    assert (spec["group"], spec["scope"], spec["names"]["kind"]) == (model.GROUP, "Cluster", model.KIND)
    (version,) = spec["versions"]
    assert version["name"] == model.VERSION and version["subresources"] == {"status": {}}
    props = version["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
    assert {"metadataEndpoint", "enableIngressGateway", "metadata", "expectedClusterUUID"} == set(props)
    assert set(props["metadata"]["properties"]) == {"ca", "insecureSkipVerify"}
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]["properties"]
    assert {"public", "private", "publicLastFetchTimestamp", "privateLastFetchTimestamp"} <= set(
        status["metadataCache"]["properties"]
    )
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns == ["Ready", "Reason", "Remote UUID", "API Host", "Token Expiry", "Age"]


def test_rbac_is_least_privilege() -> None:
    docs = rendered()
    cluster_rules = one(docs, "ClusterRole")["rules"]
    assert {r for rule in cluster_rules for r in rule["resources"]} == {
        "istiomulticlusters",
        "istiomulticlusters/status",
        "events",
    }
    assert [rule["verbs"] for rule in cluster_rules if "events" in rule["resources"]] == [["create"]]
    for rule in cluster_rules + one(docs, "Role")["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"]
        assert not {"list", "watch"} & set(rule["verbs"]) or rule["resources"] == ["istiomulticlusters"]
    assert one(docs, "Role")["metadata"]["namespace"] == "d8-istio"


def test_deployment_args_are_valid_controller_flags() -> None:
    deployment = one(rendered(), "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[0] == "multicluster"
    _, parsers = _build_parsers()
    settings: MulticlusterSettings = parse_settings(parsers["multicluster"], args[1:], MulticlusterSettings)
    assert settings.namespace == "d8-istio" and settings.api_token_ttl == 30 * 86400
    ports = {p["containerPort"] for p in container["ports"]}
    assert int(settings.metrics_listen.rsplit(":", 1)[1]) in ports
    assert int(settings.liveness_listen.rsplit(":", 1)[1]) in ports
    assert deployment["spec"]["strategy"]["type"] == "Recreate" and deployment["spec"]["replicas"] == 1


def test_rules_pass_promtool_check_and_unit_tests() -> None:
    promtool = require_tool("promtool", "prometheus")
    check = run([promtool, "check", "rules", str(RULES)])
    assert check.returncode == 0, check.stdout + check.stderr
    tested = run([promtool, "test", "rules", "multicluster.rules.test.yaml"], cwd=OBSERVABILITY)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_every_alert_is_unit_tested_and_uses_the_controllers_metrics() -> None:
    from apiproxy.multicluster.metrics import ControllerMetrics

    names = {m.name for m in ControllerMetrics().registry.collect()}
    alerts = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    tests = yaml.safe_load((OBSERVABILITY / "multicluster.rules.test.yaml").read_text())["tests"]
    tested = {t["alertname"] for case in tests for t in case["alert_rule_test"] if t["exp_alerts"]}
    assert {a["alert"] for a in alerts} == tested
    for alert in alerts:
        assert any(name in alert["expr"] for name in names), alert["alert"]


def pruned(value: Any, schema: dict[str, Any]) -> Any:
    """What a structural schema keeps of ``value``: an object keeps only declared properties unless it
    preserves unknown fields (the apiserver drops the rest silently, with a 200)."""
    if isinstance(value, dict):
        props = schema.get("properties") or {}
        keep = value if schema.get("x-kubernetes-preserve-unknown-fields") else {
            k: v for k, v in value.items() if k in props
        }  # fmt: skip
        return {k: pruned(v, props[k]) if k in props else v for k, v in keep.items()}
    if isinstance(value, list) and "items" in schema:
        return [pruned(v, schema["items"]) for v in value]
    return value


async def test_every_status_field_the_controller_writes_is_declared() -> None:
    """During a peer's key rotation the pin carries the next key's fingerprint; were it undeclared, the
    apiserver would prune it and a restarted controller would take the promotion for an identity change
    (found against the real apiserver: tests/real/test_multicluster.py)."""
    import json

    from cryptography.hazmat.primitives.asymmetric import ed25519

    from apiproxy.auth.keys import public_key_pem
    from apiproxy.multicluster import rotation
    from apiproxy.multicluster.reconcile import Context, reconcile
    from tests.multicluster.peers import ENDPOINT, OUR_UUID, PEER_UUID, Clock, ScriptedPeer, public_doc

    crd = one(rendered(), "CustomResourceDefinition")
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    ctx = Context(OUR_UUID, ed25519.Ed25519PrivateKey.generate(), 30 * 86400.0, Clock())
    spec = model.parse_spec("east", {"metadataEndpoint": ENDPOINT, "metadata": {"insecureSkipVerify": True}})
    current, nxt = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    first = await reconcile(spec, None, ctx, ScriptedPeer.healthy(current), generation=1)
    doc = json.loads(public_doc(PEER_UUID, current))
    doc["authnKeyPubNext"] = public_key_pem(nxt.public_key(), deckhouse=True).decode()
    doc["authnKeyPubNextProof"] = rotation.make_proof(current, nxt.public_key())
    peer = ScriptedPeer.healthy(current)
    peer.answers["/metadata/public/public.json"] = json.dumps(doc).encode()
    publishing = await reconcile(spec, first.status, ctx, peer, generation=1)
    assert publishing.status["pinnedIdentity"].get("nextKeyFingerprint")
    for status in (first.status, publishing.status):
        assert pruned(status, schema) == status

"""deploy/federation and its Deckhouse overlay: all three parts in one namespace, wired to each other
(the proxy mounts the trust store the controller writes, the exporter and the controller share the
namespace), schema-valid offline, every pod covered by a NetworkPolicy and, when replicated, a
PodDisruptionBudget; and the Ingress examples point at real Services and ports."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from apiproxy.cli import _build_parsers
from apiproxy.multicluster import model
from apiproxy.multicluster.settings import MulticlusterSettings
from apiproxy.settings import parse_settings
from tests.deploy.conftest import DEPLOY, Manifest, find, one, require_module, require_tool, run

K8S_VERSION = "1.32.0"
CRD_GROUPS = ("monitoring.coreos.com/",)
#: Each federation target and the namespace it installs into.
FEDERATION = {
    "federation": (DEPLOY / "federation", "istio-system"),
    "federation-deckhouse": (DEPLOY / "federation" / "deckhouse", "d8-istio"),
}
PARTS = ("apiproxy", "apiproxy-exporter", "apiproxy-multicluster")
#: The policy's namespaced rules (the mesh config) are bound where the policy says, not where we install.
POLICY_NAMESPACE = "istio-system"
_RENDERED: dict[str, list[Manifest]] = {}


def rendered(target: str) -> list[Manifest]:
    if target not in _RENDERED:
        kubectl = require_tool("kubectl", "kubectl")
        proc = run([kubectl, "kustomize", str(FEDERATION[target][0])])
        assert proc.returncode == 0, proc.stderr
        _RENDERED[target] = [doc for doc in yaml.safe_load_all(proc.stdout) if doc]
    return _RENDERED[target]


@pytest.fixture(params=sorted(FEDERATION))
def target(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def pod_labels(docs: list[Manifest], name: str) -> dict[str, str]:
    labels: dict[str, str] = one(docs, "Deployment", name)["spec"]["template"]["metadata"]["labels"]
    return labels


def container(docs: list[Manifest], name: str) -> dict[str, Any]:
    first: dict[str, Any] = one(docs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
    return first


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector["matchLabels"].items())


def test_every_object_matches_the_kubernetes_schema(target: str) -> None:
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    errors, checked = [], 0
    for doc in rendered(target):
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
            checked += 1
        except kv.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert checked >= 25


def test_all_three_parts_and_the_crd_are_installed(target: str) -> None:
    docs = rendered(target)
    for name in PARTS:
        one(docs, "Deployment", name)
        one(docs, "ServiceAccount", name)
        one(docs, "ClusterRoleBinding", name)
        one(docs, "NetworkPolicy", name)
    crd = one(docs, "CustomResourceDefinition")
    assert crd["spec"]["names"]["kind"] == model.KIND
    assert not find(docs, "Namespace"), "the namespace belongs to Istio or Deckhouse, never created here"


def test_everything_lives_in_one_namespace_and_bindings_name_our_service_accounts(target: str) -> None:
    docs = rendered(target)
    namespace = FEDERATION[target][1]
    accounts = {(d["metadata"]["namespace"], d["metadata"]["name"]) for d in find(docs, "ServiceAccount")}
    for doc in docs:
        meta = doc["metadata"]
        if doc["kind"] in {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}:
            assert "namespace" not in meta
        elif doc["kind"] in {"Role", "RoleBinding"} and meta["name"] == "apiproxy":
            assert meta["namespace"] == POLICY_NAMESPACE
        else:
            assert meta.get("namespace") == namespace, f"{doc['kind']}/{meta['name']}"
        for subject in doc.get("subjects", ()):
            assert (subject["namespace"], subject["name"]) in accounts, f"{doc['kind']}/{meta['name']}"


def test_the_parts_are_wired_to_each_other(target: str) -> None:
    """The proxy trusts what the controller pins; the exporter and the controller share the namespace in
    which the controller writes the keypair, the trust store and istiod's remote secrets."""
    docs = rendered(target)
    namespace = FEDERATION[target][1]
    volumes = {
        v["name"]: v for v in one(docs, "Deployment", "apiproxy")["spec"]["template"]["spec"]["volumes"]
    }
    trust = volumes["trust"]["secret"]
    assert trust["secretName"] == model.TRUST_SECRET
    assert [item["key"] for item in trust["items"]] == [model.TRUST_KEY]
    _, parsers = _build_parsers()
    args = container(docs, "apiproxy-multicluster")["args"]
    assert args[0] == "multicluster"
    settings: MulticlusterSettings = parse_settings(parsers["multicluster"], args[1:], MulticlusterSettings)
    assert settings.namespace == namespace
    assert "--namespace=$(POD_NAMESPACE)" in container(docs, "apiproxy-exporter")["args"]
    controller_role = one(docs, "Role", "apiproxy-multicluster")
    assert controller_role["metadata"]["namespace"] == namespace


def test_every_pod_has_a_network_policy_and_replicated_ones_a_disruption_budget(target: str) -> None:
    docs = rendered(target)
    for name in PARTS:
        labels = pod_labels(docs, name)
        policies = [p for p in find(docs, "NetworkPolicy") if selects(p["spec"]["podSelector"], labels)]
        assert policies, f"{name} has no NetworkPolicy"
        assert all(p["spec"].get("ingress") is not None for p in policies), "ingress is never left open"
        budgets = [b for b in find(docs, "PodDisruptionBudget") if selects(b["spec"]["selector"], labels)]
        replicas = one(docs, "Deployment", name)["spec"].get("replicas", 1)
        if replicas > 1:
            assert len(budgets) == 1 and budgets[0]["spec"]["minAvailable"] == 1, name
        else:
            assert not budgets, f"{name} has one replica: a budget would block every drain"


def test_metrics_are_reachable_only_from_the_monitoring_namespace(target: str) -> None:
    monitoring = "d8-monitoring" if target == "federation-deckhouse" else "monitoring"
    policy = one(rendered(target), "NetworkPolicy", "apiproxy-multicluster")
    (rule,) = policy["spec"]["ingress"]
    assert rule["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": monitoring}}}
    ]
    assert rule["ports"] == [{"port": 9092, "protocol": "TCP"}]
    metrics = [
        p for p in container(rendered(target), "apiproxy-multicluster")["ports"] if p["name"] == "metrics"
    ]
    assert metrics[0]["containerPort"] == 9092


def test_deckhouse_overlay_carries_deckhouses_prometheus_label() -> None:
    docs = rendered("federation-deckhouse")
    monitoring = [d for d in docs if d["apiVersion"].startswith(CRD_GROUPS)]
    assert monitoring
    assert all(d["metadata"]["labels"].get("prometheus") == "main" for d in monitoring)


@pytest.mark.parametrize(
    ("example", "service"),
    [("apiproxy-ingress.yaml", "apiproxy"), ("exporter-ingress.yaml", "apiproxy-exporter")],
)
def test_ingress_examples_validate_and_point_at_a_real_service_port(example: str, service: str) -> None:
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    ingress = yaml.safe_load((DEPLOY / "examples" / example).read_text())
    kv.validate(ingress, K8S_VERSION, strict=True)
    backends = [p["backend"]["service"] for r in ingress["spec"]["rules"] for p in r["http"]["paths"]]
    assert backends and all(b["name"] == service for b in backends)
    ports = {p["name"] for p in one(rendered("federation"), "Service", service)["spec"]["ports"]}
    assert all(b["port"]["name"] in ports for b in backends)


def test_proxy_ingress_passes_tls_through_to_the_proxy() -> None:
    """Peers verify the proxy's own certificate (spec.metadata.ca): the ingress must not terminate TLS."""
    ingress = yaml.safe_load((DEPLOY / "examples" / "apiproxy-ingress.yaml").read_text())
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/ssl-passthrough"] == "true"
    assert "tls" not in ingress["spec"]


def test_controller_is_scraped_and_its_alerts_are_the_unit_tested_rules(target: str) -> None:
    docs = rendered(target)
    name = "apiproxy-multicluster"
    service = one(docs, "Service", name)
    assert selects({"matchLabels": service["spec"]["selector"]}, pod_labels(docs, name))
    (port,) = service["spec"]["ports"]
    container_ports = {p["name"] for p in container(docs, name)["ports"]}
    assert port["name"] == "metrics" and port["targetPort"] in container_ports
    monitor = one(docs, "ServiceMonitor", name)
    assert selects(monitor["spec"]["selector"], service["metadata"]["labels"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    rules = yaml.safe_load((DEPLOY / "observability" / "multicluster.rules.yaml").read_text())
    assert one(docs, "PrometheusRule", name)["spec"]["groups"] == rules["groups"]

"""The metadata exporter's manifests and observability: schema-valid, RBAC exactly what its watches need
(read-only), flags the exporter accepts, probes on its real endpoints, alerts unit-tested, dashboard on
exported metrics."""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiproxy.exporter.main import identity_of
from apiproxy.exporter.metrics import ExporterMetrics
from apiproxy.exporter.settings import ExporterSettings
from apiproxy.exporter.sources import kubernetes_sources
from apiproxy.exporter.state import ExporterState
from apiproxy.settings import add_arguments, parse_settings
from apiproxy.tlsconfig import parse_listen
from tests.deploy.conftest import (
    DEPLOY,
    OBSERVABILITY,
    TARGETS,
    Manifest,
    one,
    render,
    require_module,
    require_tool,
    run,
)
from tests.deploy.test_observability import SCRAPE_SERIES, metric_names

NAME = "apiproxy-exporter"
RULES = OBSERVABILITY / "apiproxy-exporter.rules.yaml"
RULE_TESTS = OBSERVABILITY / "apiproxy-exporter.rules.test.yaml"
PROMETHEUS_RULE = OBSERVABILITY / "exporter-prometheusrule.yaml"
DASHBOARD = OBSERVABILITY / "apiproxy-exporter-dashboard.json"
INGRESS = DEPLOY / "examples" / "exporter-ingress.yaml"
K8S_VERSION = "1.32.0"
READ = {"get", "list", "watch"}

CORE = {
    ("ServiceAccount", NAME),
    ("Role", NAME),
    ("RoleBinding", NAME),
    ("ClusterRole", NAME),
    ("ClusterRoleBinding", NAME),
    ("Deployment", NAME),
    ("Service", NAME),
    ("NetworkPolicy", NAME),
}
MONITORING = {("ServiceMonitor", NAME), ("PrometheusRule", NAME), ("ConfigMap", f"{NAME}-grafana-dashboard")}


def container(docs: list[Manifest]) -> Manifest:
    containers: list[Manifest] = one(docs, "Deployment", NAME)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def exporter_settings(docs: list[Manifest], namespace: str) -> ExporterSettings:
    """The container's args as ``apiproxy exporter`` parses them, with ``$(VAR)`` expanded as kubelet does."""
    args = list(container(docs)["args"])
    assert args[0] == "exporter"
    values = {"POD_NAMESPACE": namespace, "API_HOST": "api.example.com:443"}
    expanded = [re.sub(r"\$\((\w+)\)", lambda m: values[m.group(1)], a) for a in args[1:]]
    env = {e["name"] for e in container(docs)["env"]}
    assert set(values) <= env and "CLUSTER_UUID" in env
    parser = argparse.ArgumentParser()
    add_arguments(parser, ExporterSettings)
    settings: ExporterSettings = parse_settings(parser, expanded, ExporterSettings)
    return settings


def test_objects_rendered(target: str, exporter_docs: list[Manifest]) -> None:
    expected = CORE if target == "base" else CORE | MONITORING
    assert {(d["kind"], d["metadata"]["name"]) for d in exporter_docs} == expected


def test_manifests_and_ingress_example_match_the_kubernetes_schema(exporter_docs: list[Manifest]) -> None:
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    for doc in [*exporter_docs, yaml.safe_load(INGRESS.read_text())]:
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            continue
        kv.validate(doc, K8S_VERSION, strict=True)


def test_ingress_example_routes_only_metadata_to_the_http_port() -> None:
    ingress = yaml.safe_load(INGRESS.read_text())
    service = one(render("base"), "Service", NAME)
    paths = [p for rule in ingress["spec"]["rules"] for p in rule["http"]["paths"]]
    assert [p["path"] for p in paths] == ["/metadata/"]
    backend = paths[0]["backend"]["service"]
    assert backend["name"] == service["metadata"]["name"]
    assert backend["port"]["name"] in {p["name"] for p in service["spec"]["ports"]}


def test_bindings_name_the_service_account_in_the_install_namespace(
    target: str, exporter_docs: list[Manifest]
) -> None:
    namespace = TARGETS[target][1]
    assert one(exporter_docs, "Role")["metadata"]["namespace"] == namespace
    for kind, role in (("RoleBinding", "Role"), ("ClusterRoleBinding", "ClusterRole")):
        binding = one(exporter_docs, kind)
        assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": role, "name": NAME}
        assert binding["subjects"] == [{"kind": "ServiceAccount", "name": NAME, "namespace": namespace}]
    assert one(exporter_docs, "Deployment")["spec"]["template"]["spec"]["serviceAccountName"] == NAME


def _allows(rules: list[Manifest], resource: str, verb: str, name: str | None) -> bool:
    for rule in rules:
        if rule.get("apiGroups") != [""] or resource not in rule["resources"] or verb not in rule["verbs"]:
            continue
        names = rule.get("resourceNames")
        if names is None or (name is not None and name in names):
            return True
    return False


def test_rbac_is_read_only_and_exactly_what_the_watches_need(
    target: str, exporter_docs: list[Manifest]
) -> None:
    namespace = TARGETS[target][1]
    settings = dataclasses.replace(exporter_settings(exporter_docs, namespace), cluster_uuid="uuid")
    state = ExporterState(identity_of(settings), ExporterMetrics(), ())
    watches = kubernetes_sources(settings, state)
    role, cluster_role = one(exporter_docs, "Role")["rules"], one(exporter_docs, "ClusterRole")["rules"]
    for rule in role + cluster_role:
        assert set(rule["verbs"]) <= READ, rule
        assert rule["apiGroups"] == [""], rule
    used: set[tuple[str, str]] = set()
    for w in watches:
        t = w.target
        assert t.namespace in (None, namespace)
        # A namespaced watch may be covered by the Role, or by a cluster-wide grant it needs anyway.
        scope = "namespace" if t.namespace and _allows(role, t.resource, "list", t.name) else "cluster"
        rules = role if scope == "namespace" else cluster_role
        for verb in ("list", "watch"):
            assert _allows(rules, t.resource, verb, t.name), (str(t), verb)
        used.add((scope, t.resource))
        if t.resource == "secrets":
            assert t.name, "Secrets are only ever read by name"
    granted = {("namespace", r) for rule in role for r in rule["resources"]}
    granted |= {("cluster", r) for rule in cluster_role for r in rule["resources"]}
    assert granted == used, "RBAC grants something no watch reads"
    for rule in role:
        if set(rule["resources"]) & {"secrets", "configmaps"}:
            names = {w.target.name for w in watches if w.target.resource in rule["resources"]}
            assert set(rule["resourceNames"]) == names


def test_flags_probes_and_ports_fit_the_exporter(target: str, exporter_docs: list[Manifest]) -> None:
    settings = exporter_settings(exporter_docs, TARGETS[target][1])
    ports = {p["name"]: p["containerPort"] for p in container(exporter_docs)["ports"]}
    assert parse_listen(settings.listen)[1] == ports["http"]
    assert parse_listen(settings.metrics_listen)[1] == ports["metrics"]
    assert settings.namespace == TARGETS[target][1]
    assert settings.kubeconfig is None  # in-cluster
    c = container(exporter_docs)
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    security = c["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    service = one(exporter_docs, "Service")["spec"]
    assert {p["name"]: p["port"] for p in service["ports"]} == {"http": 8080, "metrics": 9091}
    assert service["selector"] == one(exporter_docs, "Deployment")["spec"]["selector"]["matchLabels"]


# ----------------------------------------------------------------------------------------- observability


def exported_metric_names() -> set[str]:
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = set()
    for family in ExporterMetrics().registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"] if "alert" in rule]


def test_rules_pass_promtool_and_their_unit_tests() -> None:
    promtool = require_tool("promtool", "prometheus")
    proc = run([promtool, "check", "rules", str(RULES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = run([promtool, "test", "rules", RULE_TESTS.name], cwd=OBSERVABILITY)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names == firing == quiet


def test_alerts_read_exported_metrics_of_the_exporters_job() -> None:
    service = one(render("default"), "Service", NAME)["metadata"]["name"]
    for alert in alerts():
        assert re.fullmatch(r"ApiproxyExporter[A-Z][A-Za-z]+", alert["alert"])
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert metric_names(alert["expr"]) <= exported_metric_names() | SCRAPE_SERIES, alert["alert"]
        for job in re.findall(r'job="([^"]*)"', alert["expr"]):
            assert job == service


def test_prometheus_rule_carries_the_same_groups() -> None:
    assert (
        yaml.safe_load(PROMETHEUS_RULE.read_text())["spec"]["groups"]
        == yaml.safe_load(RULES.read_text())["groups"]
    )


@pytest.mark.parametrize("target", ["default", "deckhouse"])
def test_service_monitor_scrapes_the_metrics_port(target: str) -> None:
    docs = render(target)
    monitor = one(docs, "ServiceMonitor", NAME)["spec"]
    service = one(docs, "Service", NAME)
    assert monitor["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [e["port"] for e in monitor["endpoints"]] == ["metrics"]
    proxy_monitor = one(docs, "ServiceMonitor", "apiproxy")["spec"]["selector"]["matchLabels"]
    assert not proxy_monitor.items() <= service["metadata"]["labels"].items(), "scraped twice"


def dashboard_exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            expr = target["expr"]
            for variable, value in {"$__rate_interval": "5m", "$job": NAME, "$cluster": ".*"}.items():
                expr = expr.replace(variable, value)
            assert "$" not in expr
            exprs.append(expr)
    return exprs


def test_dashboard_covers_every_exporter_metric_with_valid_promql(tmp_path: Path) -> None:
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= metric_names(expr)
    exported = exported_metric_names()
    assert used - exported - SCRAPE_SERIES == set()
    assert {n for n in exported if not n.endswith("_created")} <= used
    promtool = require_tool("promtool", "prometheus")
    rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_network_policy_admits_peers_prometheus_and_reaches_only_the_apiserver_and_dns(
    target: str, exporter_docs: list[Manifest]
) -> None:
    policy = one(exporter_docs, "NetworkPolicy")["spec"]
    pod_labels = one(exporter_docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    ports = {p["name"]: p["containerPort"] for p in container(exporter_docs)["ports"]}
    peers, prometheus = policy["ingress"]
    assert "from" not in peers and [p["port"] for p in peers["ports"]] == [ports["http"]]
    assert [p["port"] for p in prometheus["ports"]] == [ports["metrics"]]
    monitoring = "d8-monitoring" if target == "deckhouse" else "monitoring"
    assert prometheus["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": monitoring}}}
    ]
    assert {p["port"] for rule in policy["egress"] for p in rule["ports"]} == {443, 6443, 53}

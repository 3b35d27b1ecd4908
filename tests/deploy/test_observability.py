"""Alert rules (promtool), their unit tests, the PrometheusRule and ServiceMonitor, and the dashboard."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from apiproxy.proxy.metrics import Metrics
from tests.deploy.conftest import OBSERVABILITY, Manifest, find, one, render, require_tool, run

RULES = OBSERVABILITY / "apiproxy.rules.yaml"
RULE_TESTS = OBSERVABILITY / "apiproxy.rules.test.yaml"
PROMETHEUS_RULE = OBSERVABILITY / "prometheusrule.yaml"
DASHBOARD = OBSERVABILITY / "apiproxy-dashboard.json"
#: Series Prometheus makes itself when it scrapes.
SCRAPE_SERIES = {"up"}
#: Grafana variables, replaced by something PromQL accepts.
GRAFANA_VARIABLES = {"$__rate_interval": "5m", "$job": "apiproxy", "$cluster": ".*"}
_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless"}
_PROMQL_WORDS |= {"bool", "offset", "inf", "nan", "Inf", "NaN"}


def exported_metric_names() -> set[str]:
    """Every series name the proxy's registry can expose."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created")}
    names = set()
    for family in Metrics().registry.collect():
        names |= {family.name + s for s in suffixes.get(family.type, ("",))}
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (a small lexer: enough for our expressions)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", " ", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", expr):
        before = expr[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent of a number
        if expr[match.end() :].lstrip().startswith("(") or match.group() in _PROMQL_WORDS:
            continue  # a function or an operator
        names.add(match.group())
    return names


def test_metric_name_lexer() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (le, verb) "
        '(rate(apiproxy_request_duration_seconds_bucket{job="a"}[5m])))'
        " / on (x) group_left up{job=~'a|b'} > 1e3 unless absent(foo)"
    )
    assert metric_names(expr) == {"apiproxy_request_duration_seconds_bucket", "up", "foo"}


def rule_groups(path: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = yaml.safe_load(path.read_text())["groups"]
    return groups


def alerts() -> list[dict[str, Any]]:
    return [rule for group in rule_groups(RULES) for rule in group["rules"] if "alert" in rule]


# ------------------------------------------------------------------------------------------- rules


def test_rules_pass_promtool_check() -> None:
    promtool = require_tool("promtool", "prometheus")
    proc = run([promtool, "check", "rules", str(RULES)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_rule_unit_tests_pass() -> None:
    promtool = require_tool("promtool", "prometheus")
    proc = run([promtool, "test", "rules", RULE_TESTS.name], cwd=OBSERVABILITY)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_is_unit_tested_firing_and_quiet() -> None:
    firing, quiet = set(), set()
    for case in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    names = {a["alert"] for a in alerts()}
    assert names - firing == set(), "alerts never shown firing"
    assert names - quiet == set(), "alerts never shown not firing"
    assert (firing | quiet) <= names, "tests of alerts that do not exist"


def test_required_alerts_exist() -> None:
    exprs = {a["alert"]: a["expr"] for a in alerts()}
    wanted = {
        "ApiproxyDown": "up",
        "ApiproxyAbsent": "absent(",
        "ApiproxyUpstreamUnreachable": "apiproxy_upstream_errors_total",
        "ApiproxyAuthenticationFailuresSpike": "apiproxy_authentication_failures_total",
        "ApiproxyConfigReloadFailing": "apiproxy_config_last_reload_successful",
        "ApiproxyCertificateExpiringSoon": "14 * 86400",
        "ApiproxyClusterRateLimited": "apiproxy_rate_limited_total",
    }
    for name, needle in wanted.items():
        assert needle in exprs[name], name


def test_alerts_are_well_formed() -> None:
    for alert in alerts():
        assert re.fullmatch(r"Apiproxy[A-Z][A-Za-z]+", alert["alert"])
        assert alert["labels"]["severity"] in {"warning", "critical"}
        assert alert["annotations"]["summary"] and alert["annotations"]["description"]
        assert metric_names(alert["expr"]) <= exported_metric_names() | SCRAPE_SERIES, alert["alert"]


def test_prometheus_rule_carries_the_same_groups() -> None:
    manifest = yaml.safe_load(PROMETHEUS_RULE.read_text())
    assert manifest["spec"]["groups"] == rule_groups(RULES), (
        "deploy/observability/prometheusrule.yaml and apiproxy.rules.yaml differ: copy the groups"
    )


def test_rendered_monitoring_objects(target: str, docs: list[Manifest]) -> None:
    if target == "base":
        assert not find(docs, "ServiceMonitor") and not find(docs, "PrometheusRule")
        return
    rule = one(docs, "PrometheusRule", "apiproxy")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(rule) == {"apiVersion", "kind", "metadata", "spec"}
    assert rule["spec"] == {"groups": rule_groups(RULES)}
    for group in rule["spec"]["groups"]:
        assert set(group) <= {"name", "interval", "rules"}
        for r in group["rules"]:
            assert set(r) <= {"alert", "record", "expr", "for", "labels", "annotations"}
            assert ("alert" in r) != ("record" in r) and isinstance(r["expr"], str)
            assert "for" not in r or re.fullmatch(r"\d+[smhdwy]", r["for"])
    monitor = one(docs, "ServiceMonitor", "apiproxy")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    service = one(docs, "Service", "apiproxy")
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    labels = service["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in monitor["spec"]["selector"]["matchLabels"].items())
    ports = {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"] and all(e["port"] in ports for e in monitor["spec"]["endpoints"])
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    # The job label the rules select by is the Service name (the ServiceMonitor sets no jobLabel).
    assert "jobLabel" not in monitor["spec"] and service["metadata"]["name"] == "apiproxy"
    dashboard = one(docs, "ConfigMap", "apiproxy-grafana-dashboard")
    assert dashboard["data"] == {DASHBOARD.name: DASHBOARD.read_text()}


# --------------------------------------------------------------------------------------- dashboard


def dashboard_targets() -> list[dict[str, Any]]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t for p in dashboard["panels"] for t in p.get("targets", [])]


def dashboard_exprs() -> list[str]:
    exprs = []
    for t in dashboard_targets():
        expr = t["expr"]
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"unknown variable in {t['expr']}"
        exprs.append(expr)
    return exprs


def test_dashboard_is_well_formed() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "job", "cluster"} <= variables
    for panel in dashboard["panels"]:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            refs = [t["refId"] for t in panel["targets"]]
            assert len(refs) == len(set(refs)), panel["title"]


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = exported_metric_names() | SCRAPE_SERIES
    used: set[str] = set()
    for expr in dashboard_exprs():
        used |= metric_names(expr)
    assert used - exported == set()
    # Every topic the dashboard promises has a panel.
    assert {
        "apiproxy_requests_total",
        "apiproxy_request_duration_seconds_bucket",
        "apiproxy_watches_active",
        "apiproxy_authorization_denials_total",
        "apiproxy_authentication_failures_total",
        "apiproxy_upstream_errors_total",
        "apiproxy_policy_reloads_total",
        "apiproxy_trust_reloads_total",
        "apiproxy_certificate_expiry_timestamp_seconds",
        "apiproxy_rate_limited_total",
    } <= used


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    promtool = require_tool("promtool", "prometheus")
    rules = [{"record": f"dashboard:query{i}", "expr": e} for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard.rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(path)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("target", ["default", "deckhouse"])
def test_the_rules_select_the_scrape_job_the_service_monitor_creates(target: str) -> None:
    service = one(render(target), "Service", "apiproxy")
    for alert in alerts():
        for job in re.findall(r'job="([^"]*)"', alert["expr"]):
            assert job == service["metadata"]["name"], alert["alert"]

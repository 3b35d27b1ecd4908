"""The rendered manifests: schema-valid, least privilege, hardened, and consistent with the proxy's flags."""

from __future__ import annotations

import copy
from pathlib import PurePosixPath

import pytest
import yaml

from apiproxy.proxy.settings import Settings, settings_from_args
from tests.deploy.conftest import DEPLOY, ROOT, TARGETS, Manifest, find, one, render, require_module

#: Kubernetes version the manifests are validated against (kubernetes-validate ships the schemas).
K8S_VERSION = "1.32.0"
#: Kinds not in the Kubernetes schemas (Prometheus Operator CRDs): checked structurally elsewhere.
CRD_GROUPS = ("monitoring.coreos.com/",)

CORE_OBJECTS = {
    ("ServiceAccount", "apiproxy"),
    ("ClusterRole", "apiproxy"),
    ("ClusterRoleBinding", "apiproxy"),
    ("Role", "apiproxy"),
    ("RoleBinding", "apiproxy"),
    ("Deployment", "apiproxy"),
    ("Service", "apiproxy"),
    ("PodDisruptionBudget", "apiproxy"),
    ("HorizontalPodAutoscaler", "apiproxy"),
    ("NetworkPolicy", "apiproxy"),
    ("ConfigMap", "apiproxy-policy"),
}
MONITORING_OBJECTS = {
    ("ServiceMonitor", "apiproxy"),
    ("PrometheusRule", "apiproxy"),
    ("ConfigMap", "apiproxy-grafana-dashboard"),
}
EXPECTED = {
    "base": CORE_OBJECTS | {("Namespace", "apiproxy")},
    "default": CORE_OBJECTS | MONITORING_OBJECTS | {("Namespace", "apiproxy")},
    # d8-istio belongs to Deckhouse: the overlay must not create it.
    "deckhouse": CORE_OBJECTS | MONITORING_OBJECTS,
}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}
HEALTH_PATHS = {"/livez", "/healthz", "/readyz", "/ready"}


def pod_spec(docs: list[Manifest]) -> Manifest:
    spec: Manifest = one(docs, "Deployment", "apiproxy")["spec"]["template"]["spec"]
    return spec


def container(docs: list[Manifest]) -> Manifest:
    containers = pod_spec(docs)["containers"]
    assert [c["name"] for c in containers] == ["apiproxy"]
    c: Manifest = containers[0]
    return c


def container_port(docs: list[Manifest], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    return ports[name]


def serve_settings(docs: list[Manifest]) -> Settings:
    args = container(docs)["args"]
    assert args[0] == "serve"
    return settings_from_args(args[1:])  # also proves every flag exists


def port_of(address: str) -> int:
    return int(address.rpartition(":")[2])


def pod_labels(docs: list[Manifest]) -> dict[str, str]:
    labels: dict[str, str] = one(docs, "Deployment", "apiproxy")["spec"]["template"]["metadata"]["labels"]
    return labels


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ------------------------------------------------------------------------------------------- schemas


def test_objects_rendered(target: str, docs: list[Manifest]) -> None:
    assert {(d["kind"], d["metadata"]["name"]) for d in docs} == EXPECTED[target]


def test_every_manifest_matches_the_kubernetes_schema(docs: list[Manifest]) -> None:
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    errors = []
    checked = 0
    for doc in docs:
        if doc["apiVersion"].startswith(CRD_GROUPS):
            continue
        try:
            kv.validate(doc, K8S_VERSION, strict=True)
            checked += 1
        except kv.ValidationError as exc:
            path = "/".join(str(p) for p in exc.path)
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {path}: {exc.message}")
    assert not errors, "\n".join(errors)
    assert checked >= len(CORE_OBJECTS)


def test_objects_live_in_the_target_namespace(target: str, docs: list[Manifest]) -> None:
    namespace = TARGETS[target][1]
    for doc in docs:
        if doc["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in doc["metadata"], doc["kind"]
        elif doc["kind"] in ("Role", "RoleBinding"):
            # The policy's namespaced rules are granted where they apply, not in the install namespace.
            assert doc["metadata"]["namespace"] == doc["metadata"]["annotations"]["apiproxy.io/namespace"]
            assert doc["metadata"]["namespace"] == "istio-system"
        else:
            assert doc["metadata"].get("namespace") == namespace, (doc["kind"], doc["metadata"]["name"])
    for binding_kind, role_kind in (("ClusterRoleBinding", "ClusterRole"), ("RoleBinding", "Role")):
        binding = one(docs, binding_kind, "apiproxy")
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": role_kind,
            "name": one(docs, role_kind)["metadata"]["name"],
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": pod_spec(docs)["serviceAccountName"], "namespace": namespace}
        ]


# -------------------------------------------------------------------------------------- the workload


def test_pod_runs_hardened(docs: list[Manifest]) -> None:
    spec = pod_spec(docs)
    pod = spec["securityContext"]
    assert pod["runAsNonRoot"] is True
    assert pod["runAsUser"] == 65532
    assert pod["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = container(docs)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc.get("runAsUser", pod["runAsUser"]) == 65532
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc.get("seccompProfile", pod["seccompProfile"]) == {"type": "RuntimeDefault"}
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")


def test_own_token_is_projected_rotating_and_not_automounted(docs: list[Manifest]) -> None:
    assert one(docs, "ServiceAccount", "apiproxy")["automountServiceAccountToken"] is False
    spec = pod_spec(docs)
    assert spec["automountServiceAccountToken"] is False
    assert spec["serviceAccountName"] == "apiproxy"
    projected = [v["projected"] for v in spec["volumes"] if "projected" in v]
    assert len(projected) == 1
    sources = projected[0]["sources"]
    tokens = [s["serviceAccountToken"] for s in sources if "serviceAccountToken" in s]
    assert tokens == [{"path": "token", "expirationSeconds": 3600}]
    cas = [s["configMap"] for s in sources if "configMap" in s]
    assert cas == [{"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}]


def _files_of_volume(docs: list[Manifest], volume: Manifest) -> set[str] | None:
    """The file names a volume provides, when the manifests tell (None: decided by the operator's data)."""
    if "projected" in volume:
        files: set[str] = set()
        for source in volume["projected"]["sources"]:
            for kind in ("secret", "configMap"):
                if kind in source:
                    files |= {i["path"] for i in source[kind].get("items", [])}
            if "serviceAccountToken" in source:
                files.add(source["serviceAccountToken"]["path"])
        return files
    for kind in ("secret", "configMap"):
        if kind in volume and volume[kind].get("items"):
            return {i["path"] for i in volume[kind]["items"]}
    if "configMap" in volume:
        return set(one(docs, "ConfigMap", volume["configMap"]["name"])["data"])
    if "secret" in volume:
        return None
    return None


def test_every_file_flag_points_into_a_mounted_volume(docs: list[Manifest]) -> None:
    settings = serve_settings(docs)
    spec = pod_spec(docs)
    mounts = container(docs)["volumeMounts"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert all(not m.get("subPath") for m in mounts), "subPath mounts never see ConfigMap/Secret updates"
    files = {
        "tls_cert_file": settings.tls_cert_file,
        "tls_private_key_file": settings.tls_private_key_file,
        "trust_file": settings.trust_file,
        "policy": settings.policy,
        "upstream_token_file": settings.upstream_token_file,
        "upstream_ca_file": settings.upstream_ca_file,
    }
    for flag, path in files.items():
        assert path is not None, f"--{flag.replace('_', '-')} is not set"
        file = PurePosixPath(str(path))
        mount = [m for m in mounts if file.parent == PurePosixPath(m["mountPath"])]
        assert len(mount) == 1, f"--{flag.replace('_', '-')}={file}: no volume mounted at {file.parent}"
        assert mount[0].get("readOnly") is True
        provided = _files_of_volume(docs, volumes[mount[0]["name"]])
        if provided is None:  # a Secret the operator provides: kubernetes.io/tls keys
            assert file.name in {"tls.crt", "tls.key"}, (
                f"--{flag}: {file.name} is not a kubernetes.io/tls key"
            )
        else:
            assert file.name in provided, f"--{flag}: volume {mount[0]['name']} has no {file.name}"


def test_policy_configmap_holds_the_shipped_policy(docs: list[Manifest]) -> None:
    data = one(docs, "ConfigMap", "apiproxy-policy")["data"]
    assert data == {"istio-remote.yaml": (ROOT / "policies" / "istio-remote.yaml").read_text()}


def test_cluster_uuid_comes_from_a_configmap(docs: list[Manifest]) -> None:
    env = {e["name"]: e for e in container(docs)["env"]}
    assert env["CLUSTER_UUID"]["valueFrom"] == {
        "configMapKeyRef": {"name": "apiproxy-cluster", "key": "cluster-uuid"}
    }
    assert "--cluster-uuid" not in " ".join(container(docs)["args"])


def test_listeners_match_the_container_ports(docs: list[Manifest]) -> None:
    settings = serve_settings(docs)
    assert port_of(settings.listen) == container_port(docs, "https") == 4443
    assert port_of(settings.metrics_listen) == container_port(docs, "metrics") == 9090
    assert settings.log_format == "json"


@pytest.mark.parametrize("probe", ["startupProbe", "livenessProbe", "readinessProbe"])
def test_probes_use_real_endpoints_on_the_metrics_port(docs: list[Manifest], probe: str) -> None:
    get = container(docs)[probe]["httpGet"]
    assert get.get("scheme", "HTTP") == "HTTP"
    port = get["port"]
    number = container_port(docs, port) if isinstance(port, str) else port
    assert number == port_of(serve_settings(docs).metrics_listen)
    assert get["path"] in HEALTH_PATHS
    # The path must exist in the proxy's code, not only in this test.
    sources = "".join(p.read_text() for p in (ROOT / "apiproxy").rglob("*.py"))
    assert f'"{get["path"]}"' in sources


def test_readiness_checks_readiness_and_liveness_checks_liveness(docs: list[Manifest]) -> None:
    assert container(docs)["readinessProbe"]["httpGet"]["path"] in {"/readyz", "/ready"}
    # Liveness must not depend on the apiserver: an apiserver outage must not restart every replica.
    assert container(docs)["livenessProbe"]["httpGet"]["path"] in {"/livez", "/healthz"}
    assert container(docs)["startupProbe"]["httpGet"]["path"] in {"/livez", "/healthz"}


def test_termination_grace_outlasts_the_proxys_shutdown(docs: list[Manifest]) -> None:
    settings = serve_settings(docs)
    grace = pod_spec(docs)["terminationGracePeriodSeconds"]
    assert grace > settings.shutdown_grace + settings.shutdown_delay


def test_resources_request_cpu_and_memory_and_limit_memory_only(docs: list[Manifest]) -> None:
    resources = container(docs)["resources"]
    assert resources["requests"] == {"cpu": "100m", "memory": "96Mi"}
    assert resources["limits"] == {"memory": "256Mi"}  # no CPU limit: see the comment in deployment.yaml


def test_replicas_spread_and_disruption_budget(docs: list[Manifest]) -> None:
    deployment = one(docs, "Deployment", "apiproxy")
    labels = pod_labels(docs)
    assert selects(deployment["spec"]["selector"]["matchLabels"], labels)
    assert deployment["spec"]["replicas"] == 2
    affinity = pod_spec(docs)["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    assert [a["podAffinityTerm"]["topologyKey"] for a in affinity] == ["kubernetes.io/hostname"]
    assert selects(affinity[0]["podAffinityTerm"]["labelSelector"]["matchLabels"], labels)
    spread = pod_spec(docs)["topologySpreadConstraints"]
    assert [s["topologyKey"] for s in spread] == ["topology.kubernetes.io/zone"]
    assert selects(spread[0]["labelSelector"]["matchLabels"], labels)
    pdb = one(docs, "PodDisruptionBudget", "apiproxy")["spec"]
    assert pdb["minAvailable"] == 1
    assert selects(pdb["selector"]["matchLabels"], labels)
    hpa = one(docs, "HorizontalPodAutoscaler", "apiproxy")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "apiproxy"}
    assert hpa["minReplicas"] >= deployment["spec"]["replicas"]
    assert hpa["maxReplicas"] > hpa["minReplicas"]
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]


def test_service_exposes_https_and_metrics(docs: list[Manifest]) -> None:
    service = one(docs, "Service", "apiproxy")["spec"]
    assert selects(service["selector"], pod_labels(docs))
    ports = {p["name"]: p for p in service["ports"]}
    assert set(ports) == {"https", "metrics"}
    assert ports["https"]["port"] == 4443 and ports["https"]["targetPort"] == "https"
    assert ports["metrics"]["port"] == 9090 and ports["metrics"]["targetPort"] == "metrics"
    container_ports = {p["name"] for p in container(docs)["ports"]}
    assert {p["targetPort"] for p in ports.values()} <= container_ports


def test_network_policy(target: str, docs: list[Manifest]) -> None:
    policy = one(docs, "NetworkPolicy", "apiproxy")["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels(docs))
    assert sorted(policy["policyTypes"]) == ["Egress", "Ingress"]
    by_port = {}
    for rule in policy["ingress"]:
        for port in rule["ports"]:
            by_port[port["port"]] = rule.get("from")
    assert set(by_port) == {4443, 9090}
    assert by_port[4443] is None  # remote clusters come through an ingress or load balancer
    monitoring = "d8-monitoring" if target == "deckhouse" else "monitoring"
    assert by_port[9090] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": monitoring}}}
    ]
    egress = {(p["port"], p.get("protocol", "TCP")) for rule in policy["egress"] for p in rule["ports"]}
    assert egress == {(443, "TCP"), (6443, "TCP"), (53, "UDP"), (53, "TCP")}


# ---------------------------------------------------------------------------------------- Deckhouse


def test_deckhouse_overlay_is_a_drop_in() -> None:
    docs = render("deckhouse")
    assert not find(docs, "Namespace")
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    assert volumes["trust"]["secret"]["secretName"] == "d8-remote-clusters-public-metadata"
    assert volumes["trust"]["secret"]["items"] == [
        {"key": "remote-public-metadata.json", "path": "remote-public-metadata.json"}
    ]
    assert str(serve_settings(docs).trust_file).endswith("/remote-public-metadata.json")
    assert port_of(serve_settings(docs).listen) == 4443
    assert serve_settings(docs).jwt_issuer == "d8-istio"
    for kind in ("ServiceMonitor", "PrometheusRule"):
        monitoring = find(docs, kind)
        assert {d["metadata"]["name"] for d in monitoring} == {"apiproxy", "apiproxy-exporter"}
        assert all(d["metadata"]["labels"]["prometheus"] == "main" for d in monitoring)


def test_base_and_overlay_differ_only_where_intended() -> None:
    def without_namespace(doc: Manifest) -> Manifest:
        doc = copy.deepcopy(doc)
        doc["metadata"].pop("namespace", None)
        return doc

    base = {(d["kind"], d["metadata"]["name"]): without_namespace(d) for d in render("base")}
    overlay = {(d["kind"], d["metadata"]["name"]): without_namespace(d) for d in render("deckhouse")}
    for key in base.keys() & overlay.keys():
        if key in {
            ("Deployment", "apiproxy"),
            ("NetworkPolicy", "apiproxy"),
            ("ClusterRoleBinding", "apiproxy"),
            ("RoleBinding", "apiproxy"),
            ("NetworkPolicy", "apiproxy-exporter"),
            ("ClusterRoleBinding", "apiproxy-exporter"),
            ("RoleBinding", "apiproxy-exporter"),
        }:
            continue  # patched on purpose; their patches are checked above
        assert base[key] == overlay[key], key
    # The Deployment differs in the trust volume only.
    base_pod, overlay_pod = base["Deployment", "apiproxy"], overlay["Deployment", "apiproxy"]
    for pod in base_pod, overlay_pod:
        pod["spec"]["template"]["spec"]["volumes"] = [
            v for v in pod["spec"]["template"]["spec"]["volumes"] if v["name"] != "trust"
        ]
    assert base_pod == overlay_pod


def test_kustomizations_list_files_that_exist() -> None:
    for kustomization in DEPLOY.rglob("kustomization.yaml"):
        data = yaml.safe_load(kustomization.read_text())
        for entry in data.get("resources", []) + data.get("components", []):
            assert (kustomization.parent / entry).exists(), f"{kustomization}: {entry}"


# ----------------------------------------------------------------------------------------- examples


def test_remote_secret_example_is_what_istiod_reads() -> None:
    secret = yaml.safe_load((DEPLOY / "examples" / "istio-remote-secret.yaml").read_text())
    kv = require_module("kubernetes_validate", "kubernetes-validate")
    kv.validate(secret, K8S_VERSION, strict=True)
    assert secret["metadata"]["labels"] == {"istio/multiCluster": "true"}
    cluster = secret["metadata"]["annotations"]["networking.istio.io/cluster"]
    kubeconfig = yaml.safe_load(secret["stringData"][cluster])
    assert list(secret["stringData"]) == [cluster]
    assert kubeconfig["current-context"] == cluster
    assert kubeconfig["clusters"][0]["cluster"]["server"].endswith(":4443")


def test_certificate_example_fills_the_serving_secret() -> None:
    certificate = yaml.safe_load((DEPLOY / "examples" / "cert-manager-certificate.yaml").read_text())
    assert certificate["apiVersion"] == "cert-manager.io/v1" and certificate["kind"] == "Certificate"
    volumes = {v["name"]: v for v in pod_spec(render("base"))["volumes"]}
    assert certificate["spec"]["secretName"] == volumes["tls"]["secret"]["secretName"]
    assert "server auth" in certificate["spec"]["usages"]

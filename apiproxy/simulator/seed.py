"""A deterministic, Istio-flavoured cluster to serve: namespaces, nodes, services, pods with sidecars,
endpoints and endpointslices that agree with each other, the ConfigMaps istiod reads, a few secrets.

Same arguments → same names, labels, IPs, uids and relations (only timestamps follow ``now``), so tests
can assert on concrete objects and benchmarks compare like with like.
"""

from __future__ import annotations

import base64
import datetime
import ipaddress
import json
import random
import uuid
from dataclasses import dataclass, field
from typing import Any

from apiproxy.simulator.store import Store

APP_NAMESPACES = (
    "bookinfo",
    "payments",
    "checkout",
    "catalog",
    "frontend",
    "inventory",
    "shipping",
    "accounts",
    "search",
    "orders",
    "users",
    "billing",
)
SYSTEM_NAMESPACES = ("default", "kube-system", "kube-public", "kube-node-lease", "istio-system")
SERVICE_NAMES = (
    "productpage",
    "reviews",
    "ratings",
    "details",
    "cart",
    "currency",
    "email",
    "payment",
    "recommendation",
    "ads",
    "shipping",
    "checkout",
    "frontend",
    "catalog",
    "inventory",
    "auth",
    "notifications",
    "search",
    "profile",
    "gateway",
)
REGION = "eu-west-1"
ZONES = ("eu-west-1a", "eu-west-1b", "eu-west-1c")
ISTIO_VERSION = "1.22.3"
KUBELET_VERSION = "v1.30.6"
PADDING_ANNOTATION = "simulator.apiproxy.io/padding"
_ALNUM = "bcdfghjklmnpqrstvwxz2456789"


@dataclass
class SeedSummary:
    """Counts per resource plural, and the names tests most often need."""

    counts: dict[str, int] = field(default_factory=dict)
    app_namespaces: list[str] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    def add(self, plural: str) -> None:
        self.counts[plural] = self.counts.get(plural, 0) + 1


class _Seeder:
    def __init__(self, store: Store, seed: int, now: datetime.datetime) -> None:
        self.store = store
        self.rng = random.Random(seed)  # noqa: S311 - deterministic fixtures, not security
        self.now = now
        self.summary = SeedSummary()
        self.pod_ip = int(ipaddress.IPv4Address("10.244.0.2"))
        self.zones: dict[str, str] = {}

    def uid(self) -> str:
        return str(uuid.UUID(int=self.rng.getrandbits(128), version=4))

    def suffix(self, n: int) -> str:
        return "".join(self.rng.choice(_ALNUM) for _ in range(n))

    def ts(self, min_age: float, max_age: float) -> str:
        age = datetime.timedelta(seconds=self.rng.uniform(min_age, max_age))
        return (self.now - age).strftime("%Y-%m-%dT%H:%M:%SZ")

    def meta(self, name: str, namespace: str | None, created: str, **extra: Any) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": name}
        if namespace is not None:
            meta["namespace"] = namespace
        meta["uid"] = self.uid()
        meta["creationTimestamp"] = created
        meta.update({k: v for k, v in extra.items() if v})
        return meta

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        so = self.store.create_stored(obj)
        self.summary.add(so.resource.plural)
        return obj


def seed_mesh(
    store: Store,
    *,
    pods: int = 300,
    services: int = 100,
    namespaces: int = 8,
    nodes: int = 5,
    pod_annotation_bytes: int = 0,
    seed: int = 1,
    now: datetime.datetime | None = None,
) -> SeedSummary:
    """Fill ``store`` with a realistic mesh.

    ``pods``/``services`` are *application* workloads spread round-robin over ``namespaces`` application
    namespaces (istio-injection=enabled) and ``nodes`` nodes. On top come the fixed system objects a
    real cluster has: namespaces default/kube-system/kube-public/kube-node-lease/istio-system, services
    ``default/kubernetes``, ``kube-system/kube-dns``, ``istio-system/istiod`` and
    ``istio-system/istio-ingressgateway`` with their pods (coredns x2, istiod, ingress gateway), their
    endpoints and endpointslices, the ConfigMaps ``istio``, ``istio-sidecar-injector``, ``kube-root-ca.crt``
    and ``istio-ca-root-cert``, and a few secrets. Every service gets Endpoints and one EndpointSlice
    listing its ready pods.

    ``pod_annotation_bytes`` adds an annotation of that size to every application pod, to make LISTs fat
    (about 2 KB per pod otherwise... plus the padding). Returns a :class:`SeedSummary`.
    """
    s = _Seeder(store, seed, now or datetime.datetime.now(datetime.UTC).replace(microsecond=0))
    day = 86400.0
    app_ns = [
        APP_NAMESPACES[i % len(APP_NAMESPACES)]
        + (f"-{i // len(APP_NAMESPACES)}" if i >= len(APP_NAMESPACES) else "")
        for i in range(namespaces)
    ]
    s.summary.app_namespaces = list(app_ns)
    for name in SYSTEM_NAMESPACES:
        labels = {"kubernetes.io/metadata.name": name}
        if name == "istio-system":
            labels["topology.istio.io/network"] = "network1"
        s.put(_namespace(s, name, labels, s.ts(60 * day, 61 * day)))
    for name in app_ns:
        labels = {"kubernetes.io/metadata.name": name, "istio-injection": "enabled"}
        s.put(_namespace(s, name, labels, s.ts(20 * day, 40 * day)))

    node_objs = [s.put(_node(s, i, s.ts(30 * day, 31 * day))) for i in range(max(nodes, 1))]
    s.zones = {
        n["metadata"]["name"]: n["metadata"]["labels"]["topology.kubernetes.io/zone"] for n in node_objs
    }
    s.summary.nodes = [n["metadata"]["name"] for n in node_objs]

    ca_pem = _fake_pem(s.rng, "CERTIFICATE")
    for ns in (*SYSTEM_NAMESPACES, *app_ns):
        s.put(_configmap(s, ns, "kube-root-ca.crt", {"ca.crt": ca_pem}))
        if ns != "istio-system":
            s.put(_configmap(s, ns, "istio-ca-root-cert", {"root-cert.pem": ca_pem}))
    s.put(_configmap(s, "istio-system", "istio", {"mesh": _MESH_CONFIG, "meshNetworks": "networks: {}\n"}))
    s.put(
        _configmap(
            s,
            "istio-system",
            "istio-sidecar-injector",
            {"values": json.dumps({"global": {"tag": ISTIO_VERSION}})},
        )
    )
    s.put(
        _secret(
            s,
            "istio-system",
            "cacerts",
            "Opaque",
            ("ca-cert.pem", "ca-key.pem", "root-cert.pem", "cert-chain.pem"),
        )
    )
    s.put(
        _secret(s, "istio-system", "istio-ingressgateway-certs", "kubernetes.io/tls", ("tls.crt", "tls.key"))
    )
    for ns in app_ns:
        s.put(_secret(s, ns, f"{ns}-tls", "kubernetes.io/tls", ("tls.crt", "tls.key")))

    # System services and their pods.
    system = [
        ("default", "kubernetes", "10.96.0.1", [("https", 443, 6443)], 0, None),
        (
            "kube-system",
            "kube-dns",
            "10.96.0.10",
            [("dns", 53, 53), ("dns-tcp", 53, 53), ("metrics", 9153, 9153)],
            2,
            "coredns",
        ),
        (
            "istio-system",
            "istiod",
            "10.96.0.20",
            [
                ("grpc-xds", 15010, 15010),
                ("https-dns", 15012, 15012),
                ("https-webhook", 443, 15017),
                ("http-monitoring", 15014, 15014),
            ],
            1,
            "istiod",
        ),
        (
            "istio-system",
            "istio-ingressgateway",
            "10.96.0.30",
            [("status-port", 15021, 15021), ("http2", 80, 8080), ("https", 443, 8443)],
            1,
            "istio-ingressgateway",
        ),
    ]
    for ns, svc, ip, ports, replicas, app in system:
        selector = {"app": app} if app else None
        svc_obj = s.put(_service(s, ns, svc, ip, ports, selector, lb=svc == "istio-ingressgateway"))
        pod_objs = [
            s.put(_pod(s, ns, app, node_objs, sidecar=False, padding=0, version=None))
            for _ in range(replicas)
            if app
        ]
        if not app:  # the apiserver itself
            _endpoints(s, svc_obj, [], ports, host_ips=[_addr(node_objs[0], "InternalIP")])
        else:
            _endpoints(s, svc_obj, pod_objs, ports)

    # Application services, then pods round-robin over them.
    app_services: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    for i in range(services):
        ns = app_ns[i % len(app_ns)] if app_ns else "default"
        base = SERVICE_NAMES[i % len(SERVICE_NAMES)]
        name = base if i < len(SERVICE_NAMES) else f"{base}-{i // len(SERVICE_NAMES)}"
        ip = str(ipaddress.IPv4Address(int(ipaddress.IPv4Address("10.96.1.0")) + i + 1))
        ports = [("http", 80, 8080), ("grpc", 9090, 9090)]
        app_services.append((s.put(_service(s, ns, name, ip, ports, {"app": name}, lb=False)), []))
    for i in range(pods):
        if app_services:
            svc_obj, members = app_services[i % len(app_services)]
            ns, app = svc_obj["metadata"]["namespace"], svc_obj["metadata"]["name"]
        else:
            ns, app, members = (app_ns[i % len(app_ns)] if app_ns else "default"), "standalone", []
        version = "v2" if i % 7 == 6 else "v1"
        members.append(
            s.put(_pod(s, ns, app, node_objs, sidecar=True, padding=pod_annotation_bytes, version=version))
        )
    for svc_obj, members in app_services:
        _endpoints(s, svc_obj, members, [("http", 80, 8080), ("grpc", 9090, 9090)])
    return s.summary


_MESH_CONFIG = """defaultConfig:
  discoveryAddress: istiod.istio-system.svc:15012
  proxyMetadata:
    ISTIO_META_DNS_CAPTURE: "true"
  tracing: {}
enablePrometheusMerge: true
rootNamespace: istio-system
trustDomain: cluster.local
"""


def _fake_pem(rng: random.Random, label: str) -> str:
    body = base64.b64encode(rng.randbytes(600)).decode()
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return f"-----BEGIN {label}-----\n" + "\n".join(lines) + f"\n-----END {label}-----\n"


def _namespace(s: _Seeder, name: str, labels: dict[str, str], created: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": s.meta(name, None, created, labels=labels),
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    }


def _node(s: _Seeder, i: int, created: str) -> dict[str, Any]:
    name = f"worker-{i:02d}"
    zone = ZONES[i % len(ZONES)]
    labels = {
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "m6i.2xlarge",
        "topology.kubernetes.io/region": REGION,
        "topology.kubernetes.io/zone": zone,
    }
    if i == 0:
        labels["node-role.kubernetes.io/control-plane"] = ""
    internal = f"10.0.{i // 250}.{i % 250 + 10}"
    ready_since = created
    conditions = [
        {
            "type": t,
            "status": "False",
            "reason": r,
            "message": m,
            "lastHeartbeatTime": ready_since,
            "lastTransitionTime": ready_since,
        }
        for t, r, m in (
            ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
        )
    ]
    conditions.append(
        {
            "type": "Ready",
            "status": "True",
            "reason": "KubeletReady",
            "message": "kubelet is posting ready status",
            "lastHeartbeatTime": ready_since,
            "lastTransitionTime": ready_since,
        }
    )
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": s.meta(
            name,
            None,
            created,
            labels=labels,
            annotations={
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
        ),
        "spec": {
            "podCIDR": f"10.244.{i}.0/24",
            "podCIDRs": [f"10.244.{i}.0/24"],
            "providerID": f"aws:///{zone}/i-{s.rng.getrandbits(64):016x}",
        },
        "status": {
            "capacity": {
                "cpu": "8",
                "ephemeral-storage": "104845292Ki",
                "memory": "32386680Ki",
                "pods": "110",
            },
            "allocatable": {
                "cpu": "7910m",
                "ephemeral-storage": "95551679124",
                "memory": "31369848Ki",
                "pods": "110",
            },
            "conditions": conditions,
            "addresses": [
                {"type": "InternalIP", "address": internal},
                {"type": "ExternalIP", "address": f"203.0.113.{i % 250 + 1}"},
                {"type": "Hostname", "address": name},
            ],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "machineID": f"{s.rng.getrandbits(128):032x}",
                "systemUUID": s.uid(),
                "bootID": s.uid(),
                "kernelVersion": "6.1.112-124.190.amzn2023.x86_64",
                "osImage": "Amazon Linux 2023.6.20241031",
                "containerRuntimeVersion": "containerd://1.7.22",
                "kubeletVersion": KUBELET_VERSION,
                "kubeProxyVersion": KUBELET_VERSION,
                "operatingSystem": "linux",
                "architecture": "amd64",
            },
        },
    }


def _addr(node: dict[str, Any], kind: str) -> str:
    return next(str(a["address"]) for a in node["status"]["addresses"] if a["type"] == kind)


def _configmap(s: _Seeder, ns: str, name: str, data: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": s.meta(name, ns, s.ts(86400, 86400 * 20)),
        "data": data,
    }


def _secret(s: _Seeder, ns: str, name: str, type_: str, keys: tuple[str, ...]) -> dict[str, Any]:
    data = {k: base64.b64encode(s.rng.randbytes(48)).decode() for k in keys}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": s.meta(name, ns, s.ts(86400, 86400 * 20)),
        "type": type_,
        "data": data,
    }


def _service(
    s: _Seeder,
    ns: str,
    name: str,
    ip: str,
    ports: list[tuple[str, int, int]],
    selector: dict[str, str] | None,
    *,
    lb: bool,
) -> dict[str, Any]:
    labels = {"app": selector["app"]} if selector else {"component": "apiserver", "provider": "kubernetes"}
    spec: dict[str, Any] = {
        "ports": [
            {
                "name": pname,
                "protocol": "UDP" if pname == "dns" else "TCP",
                "port": port,
                "targetPort": target,
            }
            for pname, port, target in ports
        ],
        "clusterIP": ip,
        "clusterIPs": [ip],
        "type": "LoadBalancer" if lb else "ClusterIP",
        "sessionAffinity": "None",
        "ipFamilies": ["IPv4"],
        "ipFamilyPolicy": "SingleStack",
        "internalTrafficPolicy": "Cluster",
    }
    if selector:
        spec["selector"] = selector
    status: dict[str, Any] = {"loadBalancer": {}}
    if lb:
        for i, p in enumerate(spec["ports"]):
            p["nodePort"] = 30000 + (s.rng.getrandbits(12) % 2000) + i
        spec["externalTrafficPolicy"] = "Cluster"
        status = {
            "loadBalancer": {
                "ingress": [{"hostname": f"a{s.rng.getrandbits(64):016x}.elb.{REGION}.amazonaws.com"}]
            }
        }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": s.meta(name, ns, s.ts(86400 * 5, 86400 * 20), labels=labels),
        "spec": spec,
        "status": status,
    }


def _pod(
    s: _Seeder,
    ns: str,
    app: str,
    nodes: list[dict[str, Any]],
    *,
    sidecar: bool,
    padding: int,
    version: str | None,
) -> dict[str, Any]:
    rs_hash = _stable_hash(f"{ns}/{app}/{version}")
    name = f"{app}-{rs_hash}-{s.suffix(5)}"
    node = nodes[s.rng.randrange(len(nodes))]
    node_name = node["metadata"]["name"]
    host_ip = _addr(node, "InternalIP")
    pod_ip = str(ipaddress.IPv4Address(s.pod_ip))
    s.pod_ip += 1
    if s.pod_ip & 0xFF in (0, 255):
        s.pod_ip += 2
    created = s.ts(3600, 86400 * 10)
    started = created
    labels = {"app": app, "pod-template-hash": rs_hash}
    if version:
        labels["version"] = version
    annotations: dict[str, str] = {"kubectl.kubernetes.io/default-container": app}
    image = f"registry.example.com/{ns}/{app}:{version or '1.0'}.{s.rng.randrange(20)}"
    containers: list[dict[str, Any]] = [
        {
            "name": app,
            "image": image,
            "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}],
            "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
            "readinessProbe": {
                "httpGet": {"path": "/healthz", "port": 8080, "scheme": "HTTP"},
                "periodSeconds": 10,
            },
            "terminationMessagePath": "/dev/termination-log",
            "terminationMessagePolicy": "File",
            "imagePullPolicy": "IfNotPresent",
        }
    ]
    init: list[dict[str, Any]] = []
    if sidecar:
        labels.update(
            {
                "security.istio.io/tlsMode": "istio",
                "service.istio.io/canonical-name": app,
                "service.istio.io/canonical-revision": version or "latest",
            }
        )
        annotations.update(
            {
                "istio.io/rev": "default",
                "prometheus.io/path": "/stats/prometheus",
                "prometheus.io/port": "15020",
                "prometheus.io/scrape": "true",
                "sidecar.istio.io/status": json.dumps(
                    {
                        "initContainers": ["istio-init"],
                        "containers": ["istio-proxy"],
                        "volumes": [
                            "workload-socket",
                            "credential-socket",
                            "workload-certs",
                            "istio-envoy",
                            "istio-data",
                            "istio-podinfo",
                            "istio-token",
                            "istiod-ca-cert",
                        ],
                        "imagePullSecrets": None,
                        "revision": "default",
                    },
                    separators=(",", ":"),
                ),
            }
        )
        proxy_image = f"docker.io/istio/proxyv2:{ISTIO_VERSION}"
        containers.append(
            {
                "name": "istio-proxy",
                "image": proxy_image,
                "args": [
                    "proxy",
                    "sidecar",
                    "--domain",
                    "$(POD_NAMESPACE).svc.cluster.local",
                    "--proxyLogLevel=warning",
                    "--log_output_level=default:info",
                ],
                "ports": [{"name": "http-envoy-prom", "containerPort": 15090, "protocol": "TCP"}],
                "env": [
                    {"name": "PILOT_CERT_PROVIDER", "value": "istiod"},
                    {"name": "CA_ADDR", "value": "istiod.istio-system.svc:15012"},
                    {
                        "name": "POD_NAME",
                        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.name"}},
                    },
                    {
                        "name": "POD_NAMESPACE",
                        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}},
                    },
                    {
                        "name": "INSTANCE_IP",
                        "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "status.podIP"}},
                    },
                    {"name": "ISTIO_META_WORKLOAD_NAME", "value": app},
                    {"name": "ISTIO_META_MESH_ID", "value": "cluster.local"},
                    {"name": "TRUST_DOMAIN", "value": "cluster.local"},
                ],
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "2", "memory": "1Gi"},
                },
                "readinessProbe": {
                    "httpGet": {"path": "/healthz/ready", "port": 15021, "scheme": "HTTP"},
                    "periodSeconds": 15,
                },
                "securityContext": {
                    "runAsUser": 1337,
                    "runAsGroup": 1337,
                    "runAsNonRoot": True,
                    "readOnlyRootFilesystem": True,
                },
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent",
            }
        )
        init.append(
            {
                "name": "istio-init",
                "image": proxy_image,
                "args": [
                    "istio-iptables",
                    "-p",
                    "15001",
                    "-z",
                    "15006",
                    "-u",
                    "1337",
                    "-m",
                    "REDIRECT",
                    "-i",
                    "*",
                    "-b",
                    "*",
                    "-d",
                    "15090,15021,15020",
                ],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}},
                "securityContext": {
                    "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
                    "runAsUser": 0,
                    "runAsNonRoot": False,
                },
            }
        )
    if padding > 0:
        annotations[PADDING_ANNOTATION] = _padding(s.rng, padding)
    statuses = [
        {
            "name": c["name"],
            "state": {"running": {"startedAt": started}},
            "lastState": {},
            "ready": True,
            "restartCount": 0 if s.rng.random() < 0.9 else s.rng.randrange(1, 4),
            "image": c["image"],
            "imageID": f"{c['image'].split(':')[0]}@sha256:{s.rng.getrandbits(256):064x}",
            "containerID": f"containerd://{s.rng.getrandbits(256):064x}",
            "started": True,
        }
        for c in containers
    ]
    init_statuses = [
        {
            "name": c["name"],
            "state": {
                "terminated": {
                    "exitCode": 0,
                    "reason": "Completed",
                    "startedAt": started,
                    "finishedAt": started,
                    "containerID": f"containerd://{s.rng.getrandbits(256):064x}",
                }
            },
            "lastState": {},
            "ready": True,
            "restartCount": 0,
            "image": c["image"],
            "imageID": f"{c['image'].split(':')[0]}@sha256:{s.rng.getrandbits(256):064x}",
            "started": False,
        }
        for c in init
    ]
    owner = {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": f"{app}-{rs_hash}",
        "uid": str(uuid.uuid5(uuid.NAMESPACE_OID, f"{ns}/{app}/{rs_hash}")),
        "controller": True,
        "blockOwnerDeletion": True,
    }
    spec: dict[str, Any] = {
        "containers": containers,
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": app if sidecar else "default",
        "serviceAccount": app if sidecar else "default",
        "nodeName": node_name,
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
            {
                "key": "node.kubernetes.io/unreachable",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            },
        ],
        "priority": 0,
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
    }
    if init:
        spec["initContainers"] = init
    conditions = [
        {"type": t, "status": "True", "lastProbeTime": None, "lastTransitionTime": started}
        for t in ("PodReadyToStartContainers", "Initialized", "Ready", "ContainersReady", "PodScheduled")
    ]
    status: dict[str, Any] = {
        "phase": "Running",
        "conditions": conditions,
        "hostIP": host_ip,
        "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": started,
        "containerStatuses": statuses,
        "qosClass": "Burstable",
    }
    if init_statuses:
        status["initContainerStatuses"] = init_statuses
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": s.meta(
            name,
            ns,
            created,
            generateName=f"{app}-{rs_hash}-",
            labels=labels,
            annotations=annotations,
            ownerReferences=[owner],
        ),
        "spec": spec,
        "status": status,
    }


def _stable_hash(text: str) -> str:
    value = uuid.uuid5(uuid.NAMESPACE_OID, text).int
    out = []
    for _ in range(10):
        value, digit = divmod(value, len(_ALNUM))
        out.append(_ALNUM[digit])
    return "".join(out)


def _padding(rng: random.Random, size: int) -> str:
    """Incompressible-ish printable filler so fat lists are as big on the wire as they claim."""
    raw = base64.b64encode(rng.randbytes(size * 3 // 4 + 3)).decode()
    return raw[:size]


def _endpoints(
    s: _Seeder,
    svc: dict[str, Any],
    pods: list[dict[str, Any]],
    ports: list[tuple[str, int, int]],
    *,
    host_ips: list[str] | None = None,
) -> None:
    ns, name = svc["metadata"]["namespace"], svc["metadata"]["name"]
    created = svc["metadata"]["creationTimestamp"]
    proto = {p["name"]: p["protocol"] for p in svc["spec"]["ports"]}
    targets = [
        {
            "ip": p["status"]["podIP"],
            "nodeName": p["spec"]["nodeName"],
            "targetRef": {
                "kind": "Pod",
                "namespace": ns,
                "name": p["metadata"]["name"],
                "uid": p["metadata"]["uid"],
            },
        }
        for p in pods
    ]
    if host_ips:
        targets = [{"ip": ip} for ip in host_ips]
    ep_ports = [
        {"name": pname, "port": target, "protocol": proto.get(pname, "TCP")} for pname, _port, target in ports
    ]
    subsets = [{"addresses": targets, "ports": ep_ports}] if targets else []
    ep: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": s.meta(name, ns, created, labels=dict(svc["metadata"].get("labels") or {})),
    }
    if subsets:
        ep["subsets"] = subsets
    s.put(ep)
    zone_of = s.zones
    endpoints = []
    for t in targets:
        entry: dict[str, Any] = {
            "addresses": [t["ip"]],
            "conditions": {"ready": True, "serving": True, "terminating": False},
        }
        if "targetRef" in t:
            entry["targetRef"] = t["targetRef"]
            entry["nodeName"] = t["nodeName"]
            if t["nodeName"] in zone_of:
                entry["zone"] = zone_of[t["nodeName"]]
        endpoints.append(entry)
    slice_labels = {
        "kubernetes.io/service-name": name,
        "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
        **(svc["metadata"].get("labels") or {}),
    }
    owner = {
        "apiVersion": "v1",
        "kind": "Service",
        "name": name,
        "uid": svc["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }
    s.put(
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": s.meta(
                f"{name}-{s.suffix(5)}",
                ns,
                created,
                generateName=f"{name}-",
                labels=slice_labels,
                ownerReferences=[owner],
            ),
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": ep_ports,
        }
    )

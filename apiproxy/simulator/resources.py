"""The resource table: every API resource the simulator serves, as kube-apiserver describes it.

One immutable :class:`ResourceType` per resource drives routing, discovery, error messages and field
selectors, so adding a resource is one entry here (plus, optionally, a table printer in ``tables.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

CRUD_VERBS = ("create", "delete", "deletecollection", "get", "list", "patch", "update", "watch")
REVIEW_VERBS = ("create",)

FieldGetter = Callable[[Mapping[str, Any]], str]


@dataclass(frozen=True, slots=True)
class Subresource:
    """A discovery-only subresource (``pods/log``, ``pods/status`` ...)."""

    name: str
    kind: str
    verbs: tuple[str, ...]
    group: str = ""
    version: str = ""


@dataclass(frozen=True, slots=True, eq=False)
class ResourceType:
    # Identity equality: resources are singletons of this module (and carry an unhashable field map).
    """What discovery says about a resource, plus the few facts the handlers need."""

    group: str
    version: str
    kind: str
    plural: str
    singular: str
    namespaced: bool
    short_names: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    verbs: tuple[str, ...] = CRUD_VERBS
    subresources: tuple[Subresource, ...] = ()
    #: Selectable fields beyond ``metadata.name``/``metadata.namespace`` (kube's per-type field label sets).
    extra_fields: Mapping[str, FieldGetter] = field(default_factory=dict)
    #: Served from a CustomResourceDefinition: ``metadata.generation`` counts spec changes, and with a
    #: ``status`` subresource the main endpoint ignores ``status`` while ``/status`` changes only it.
    custom: bool = False
    #: A CRD's ``additionalPrinterColumns``: ``(name, type, jsonPath, priority)``.
    printer_columns: tuple[tuple[str, str, str, int], ...] = ()

    @property
    def has_status_subresource(self) -> bool:
        return self.custom and self.subresource("status") is not None

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def list_kind(self) -> str:
        return f"{self.kind}List"

    @property
    def qualified(self) -> str:
        """``pods`` or ``endpointslices.discovery.k8s.io``: how kube names a resource in messages."""
        return f"{self.plural}.{self.group}" if self.group else self.plural

    @property
    def gvr(self) -> str:
        """The ``/v1, Resource=pods`` spelling kube uses in selector errors."""
        return f"{self.group}/{self.version}, Resource={self.plural}"

    @property
    def storable(self) -> bool:
        """Review resources are create-only and persist nothing."""
        return "get" in self.verbs

    def subresource(self, name: str) -> Subresource | None:
        for sub in self.subresources:
            if sub.name == name:
                return sub
        return None

    def not_found_details(self, name: str) -> dict[str, str]:
        details = {"name": name, "kind": self.plural}
        if self.group:
            details["group"] = self.group
        return details


def _dig(*path: str) -> FieldGetter:
    def get(obj: Mapping[str, Any]) -> str:
        cur: Any = obj
        for part in path:
            if not isinstance(cur, Mapping):
                return ""
            cur = cur.get(part)
        if cur is None:
            return ""
        if isinstance(cur, bool):
            return "true" if cur else "false"
        return str(cur)

    return get


def _pod_ips(obj: Mapping[str, Any]) -> str:
    ips = obj.get("status", {}).get("podIPs") or []
    return ",".join(str(ip.get("ip", "")) for ip in ips)


_POD_SUBRESOURCES = (
    Subresource("attach", "PodAttachOptions", ("create", "get")),
    Subresource("binding", "Binding", ("create",)),
    Subresource("ephemeralcontainers", "Pod", ("get", "patch", "update")),
    Subresource("eviction", "Eviction", ("create",), "policy", "v1"),
    Subresource("exec", "PodExecOptions", ("create", "get")),
    Subresource("log", "Pod", ("get",)),
    Subresource("portforward", "PodPortForwardOptions", ("create", "get")),
    Subresource(
        "proxy", "PodProxyOptions", ("create", "delete", "get", "head", "options", "patch", "update")
    ),
    Subresource("resize", "Pod", ("get", "patch", "update")),
    Subresource("status", "Pod", ("get", "patch", "update")),
)

NAMESPACES = ResourceType(
    "",
    "v1",
    "Namespace",
    "namespaces",
    "namespace",
    namespaced=False,
    short_names=("ns",),
    verbs=("create", "delete", "get", "list", "patch", "update", "watch"),
    subresources=(
        Subresource("finalize", "Namespace", ("update",)),
        Subresource("status", "Namespace", ("get", "patch", "update")),
    ),
    extra_fields={"status.phase": _dig("status", "phase")},
)
PODS = ResourceType(
    "",
    "v1",
    "Pod",
    "pods",
    "pod",
    namespaced=True,
    short_names=("po",),
    categories=("all",),
    subresources=_POD_SUBRESOURCES,
    extra_fields={
        "spec.nodeName": _dig("spec", "nodeName"),
        "spec.restartPolicy": _dig("spec", "restartPolicy"),
        "spec.schedulerName": _dig("spec", "schedulerName"),
        "spec.serviceAccountName": _dig("spec", "serviceAccountName"),
        "spec.hostNetwork": _dig("spec", "hostNetwork"),
        "status.phase": _dig("status", "phase"),
        "status.podIP": _dig("status", "podIP"),
        "status.podIPs": _pod_ips,
        "status.nominatedNodeName": _dig("status", "nominatedNodeName"),
    },
)
SERVICES = ResourceType(
    "",
    "v1",
    "Service",
    "services",
    "service",
    namespaced=True,
    short_names=("svc",),
    categories=("all",),
    subresources=(
        Subresource("proxy", "ServiceProxyOptions", ("create", "delete", "get", "patch", "update")),
        Subresource("status", "Service", ("get", "patch", "update")),
    ),
)
ENDPOINTS = ResourceType(
    "", "v1", "Endpoints", "endpoints", "endpoints", namespaced=True, short_names=("ep",)
)
CONFIGMAPS = ResourceType(
    "", "v1", "ConfigMap", "configmaps", "configmap", namespaced=True, short_names=("cm",)
)
SECRETS = ResourceType(
    "",
    "v1",
    "Secret",
    "secrets",
    "secret",
    namespaced=True,
    extra_fields={"type": _dig("type")},
)
NODES = ResourceType(
    "",
    "v1",
    "Node",
    "nodes",
    "node",
    namespaced=False,
    short_names=("no",),
    subresources=(
        Subresource("proxy", "NodeProxyOptions", ("create", "delete", "get", "patch", "update")),
        Subresource("status", "Node", ("get", "patch", "update")),
    ),
    extra_fields={"spec.unschedulable": _dig("spec", "unschedulable")},
)
ENDPOINTSLICES = ResourceType(
    "discovery.k8s.io", "v1", "EndpointSlice", "endpointslices", "endpointslice", namespaced=True
)
TOKENREVIEWS = ResourceType(
    "authentication.k8s.io",
    "v1",
    "TokenReview",
    "tokenreviews",
    "tokenreview",
    namespaced=False,
    verbs=REVIEW_VERBS,
)
SELFSUBJECTREVIEWS = ResourceType(
    "authentication.k8s.io",
    "v1",
    "SelfSubjectReview",
    "selfsubjectreviews",
    "selfsubjectreview",
    namespaced=False,
    verbs=REVIEW_VERBS,
)
SUBJECTACCESSREVIEWS = ResourceType(
    "authorization.k8s.io",
    "v1",
    "SubjectAccessReview",
    "subjectaccessreviews",
    "subjectaccessreview",
    namespaced=False,
    verbs=REVIEW_VERBS,
)
SELFSUBJECTACCESSREVIEWS = ResourceType(
    "authorization.k8s.io",
    "v1",
    "SelfSubjectAccessReview",
    "selfsubjectaccessreviews",
    "selfsubjectaccessreview",
    namespaced=False,
    verbs=REVIEW_VERBS,
)
LOCALSUBJECTACCESSREVIEWS = ResourceType(
    "authorization.k8s.io",
    "v1",
    "LocalSubjectAccessReview",
    "localsubjectaccessreviews",
    "localsubjectaccessreview",
    namespaced=True,
    verbs=REVIEW_VERBS,
)

EVENTS = ResourceType("", "v1", "Event", "events", "event", namespaced=True, short_names=("ev",))

RESOURCES: tuple[ResourceType, ...] = (
    CONFIGMAPS,
    EVENTS,
    ENDPOINTS,
    NAMESPACES,
    NODES,
    PODS,
    SECRETS,
    SERVICES,
    ENDPOINTSLICES,
    TOKENREVIEWS,
    SELFSUBJECTREVIEWS,
    SUBJECTACCESSREVIEWS,
    SELFSUBJECTACCESSREVIEWS,
    LOCALSUBJECTACCESSREVIEWS,
)

#: (group, version) pairs in the order ``/apis`` lists them; the core group first.
GROUP_VERSIONS: tuple[tuple[str, str], ...] = tuple(
    dict.fromkeys((r.group, r.version) for r in RESOURCES).keys()
)

_BY_PATH: dict[tuple[str, str, str], ResourceType] = {(r.group, r.version, r.plural): r for r in RESOURCES}
_BY_API_KIND: dict[tuple[str, str], ResourceType] = {(r.api_version, r.kind): r for r in RESOURCES}


def _aliases() -> dict[str, ResourceType]:
    table: dict[str, ResourceType] = {}
    for r in RESOURCES:
        for alias in (r.plural, r.singular, r.kind, r.kind.lower(), r.qualified, *r.short_names):
            table.setdefault(alias, r)
    return table


_BY_ALIAS = _aliases()


def resources_from_crd(crd: Mapping[str, Any]) -> list[ResourceType]:
    """One :class:`ResourceType` per served version of an ``apiextensions.k8s.io/v1`` CRD manifest."""
    spec = crd["spec"]
    names = spec["names"]
    out = []
    for version in spec["versions"]:
        if not version.get("served", True):
            continue
        subresources = []
        if "status" in (version.get("subresources") or {}):
            subresources.append(Subresource("status", names["kind"], ("get", "patch", "update")))
        columns = tuple(
            (str(c["name"]), str(c.get("type", "string")), str(c["jsonPath"]), int(c.get("priority", 0)))
            for c in version.get("additionalPrinterColumns") or ()
        )
        out.append(
            ResourceType(
                spec["group"],
                version["name"],
                names["kind"],
                names["plural"],
                names.get("singular") or names["kind"].lower(),
                namespaced=spec.get("scope", "Namespaced") == "Namespaced",
                short_names=tuple(names.get("shortNames") or ()),
                categories=tuple(names.get("categories") or ()),
                subresources=tuple(subresources),
                custom=True,
                printer_columns=columns,
            )
        )
    return out


def register(resource: ResourceType) -> ResourceType:
    """Serve a custom resource from now on; registering the same path again returns the first one.

    The lookup tables are process-wide (every simulator of a test process serves a CRD once it is
    registered); discovery stays per simulator, so only simulators given the CRD advertise it.
    """
    key = (resource.group, resource.version, resource.plural)
    existing = _BY_PATH.get(key)
    if existing is not None:
        if not existing.custom or existing.kind != resource.kind:
            raise ValueError(f"{resource.qualified} is already served as {existing.kind}")
        return existing
    _BY_PATH[key] = resource
    _BY_API_KIND.setdefault((resource.api_version, resource.kind), resource)
    for alias in (
        resource.plural,
        resource.singular,
        resource.kind,
        resource.kind.lower(),
        resource.qualified,
        *resource.short_names,
    ):
        _BY_ALIAS.setdefault(alias, resource)
    return resource


def lookup(group: str, version: str, plural: str) -> ResourceType | None:
    """The resource served at ``/api(s)/<group>/<version>/<plural>``, if any."""
    return _BY_PATH.get((group, version, plural))


def for_kind(api_version: str, kind: str) -> ResourceType | None:
    return _BY_API_KIND.get((api_version, kind))


def resolve(name: ResourceType | str) -> ResourceType:
    """Accept a :class:`ResourceType` or any name kubectl would: ``pods``, ``pod``, ``Pod``, ``po``,
    ``endpointslices.discovery.k8s.io``."""
    if isinstance(name, ResourceType):
        return name
    found = _BY_ALIAS.get(name)
    if found is None:
        raise KeyError(f"unknown resource {name!r}")
    return found


def group_versions(group: str) -> list[str]:
    return [v for g, v in GROUP_VERSIONS if g == group]


def resources_in(group: str, version: str) -> list[ResourceType]:
    return [r for r in RESOURCES if r.group == group and r.version == version]

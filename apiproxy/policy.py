"""The read-only allowlist: which remote cluster may read what, checked before anything is forwarded.

A policy is a YAML document shaped like RBAC (see ``policies/README.md`` for the full reference)::

    apiVersion: apiproxy.io/v1alpha1
    kind: Policy
    rules:
      - name: workloads                 # optional, unique; shown in audit lines and explain
        description: why istiod needs it
        clusters: ["*"]                 # remote cluster UUIDs or friendly names, "*" = every cluster
        apiGroups: [""]                 # "" is the core group; "*" = any (read verbs only)
        resources: ["pods", "services"] # "resource" or "resource/subresource"; "*" = any top-level resource
        verbs: ["get", "list", "watch"]
        namespaces: ["istio-system"]    # optional; absent = any namespace and the cluster scope
        resourceNames: ["istio", "istio-v*"]  # optional; a trailing "*" matches a prefix
      - name: no-secrets
        clusters: ["*"]
        apiGroups: [""]
        resources: ["secrets"]
        verbs: ["get", "list", "watch"]
        action: conceal                 # optional; "allow" (the default) or "conceal"
      - clusters: ["*"]
        nonResourceURLs: ["/version", "/api", "/api/*", "/apis", "/apis/*"]
        verbs: ["get"]

Everything not allowed by some rule is denied. A rule with ``action: conceal`` does not forward: the proxy
answers get/list/watch itself as if no such object existed (an empty list with the apiserver's current
resourceVersion, a watch that stays open with bookmarks, 404 for a name; see :mod:`apiproxy.conceal`). That
is for resources a client insists on watching but must never see, where a 403 would keep it retrying for
ever (a remote istiod's Secret informer). An allow rule that matches wins over a conceal rule, so an opt-in
allow for one namespace still works. Verbs are ``get``, ``list`` and ``watch``; the single
exception is ``create`` on ``authentication.k8s.io`` ``tokenreviews`` and ``authorization.k8s.io``
``subjectaccessreviews`` (they persist nothing and multi-primary meshes need them), cluster-scoped only.

:func:`parse_policy` validates everything at once and raises :class:`PolicyError` with one
``file:line: message (hint: ...)`` per problem. The result, :class:`Policy`, is an immutable compiled
snapshot: rules are indexed by ``(verb, group, resource)`` and then by cluster, so :meth:`Policy.decide`
costs a handful of dict lookups whatever the size of the policy.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apiproxy.requestinfo import MalformedRequest, RequestInfo, classify

__all__ = [
    "ACTIONS",
    "API_VERSION",
    "KIND",
    "Decision",
    "Policy",
    "PolicyError",
    "Rule",
    "forbidden_message",
    "load_policy",
    "parse_policy",
]

API_VERSION = "apiproxy.io/v1alpha1"
KIND = "Policy"

READ_VERBS = frozenset({"get", "list", "watch"})
#: What a rule does with the requests it matches: forward them, or answer them as if nothing existed.
ACTIONS = ("allow", "conceal")
#: The only (group, resource) pairs a rule may allow ``create`` on.
REVIEW_CREATES = frozenset(
    {("authentication.k8s.io", "tokenreviews"), ("authorization.k8s.io", "subjectaccessreviews")}
)
#: Subresources that open a stream to a container or a proxy; no rule may name them.
CONNECT_SUBRESOURCES = frozenset({"exec", "attach", "portforward", "proxy"})
#: The HTTP method each allowed verb must arrive with.
_VERB_METHOD = {"get": "GET", "list": "GET", "watch": "GET", "create": "POST"}

#: Rule fields that hold lists of strings.
_LIST_FIELDS = (
    "clusters",
    "verbs",
    "apiGroups",
    "resources",
    "resourceNames",
    "namespaces",
    "nonResourceURLs",
)
_RULE_FIELDS = ("name", "description", "action", *_LIST_FIELDS)
_TOP_FIELDS = ("apiVersion", "kind", "rules")
_WRITE_VERBS = frozenset(
    {
        "update",
        "patch",
        "delete",
        "deletecollection",
        "proxy",
        "impersonate",
        "bind",
        "escalate",
        "approve",
        "sign",
    }
)
_NAME_OK = re.compile(r"[A-Za-z0-9._~:@-]+").fullmatch
_RESOURCE_OK = re.compile(r"[a-z0-9][a-z0-9.-]*").fullmatch
_GROUP_OK = re.compile(r"[a-z0-9][a-z0-9.-]*").fullmatch
_URL_OK = re.compile(r"/[A-Za-z0-9._~:@/-]*").fullmatch
_STR_TAG = "tag:yaml.org,2002:str"
#: libyaml's loader when PyYAML was built with it (10x faster); both record line numbers.
_LOADER: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class PolicyError(ValueError):
    """A policy failed to load; ``errors`` holds every problem, each ``file:line: message``."""

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


@dataclass(frozen=True)
class Decision:
    """The outcome for one request: ``rule`` is the deciding rule's label (``None`` when denied).

    ``allowed`` means forwarded upstream. A concealed request is not allowed (nothing of it goes upstream)
    and not refused either: the proxy answers it itself, as if the resource were empty."""

    allowed: bool
    rule: str | None
    reason: str
    concealed: bool = False

    @property
    def action(self) -> str:
        """``allow``, ``conceal`` or ``deny``: what the proxy does, as audit records name it."""
        return "allow" if self.allowed else "conceal" if self.concealed else "deny"


@dataclass(frozen=True, eq=False)
class Rule:
    """One compiled rule. ``label`` is its ``name``, or ``rules[i]`` when it has none."""

    index: int
    label: str
    line: int
    description: str
    clusters: frozenset[str]
    verbs: frozenset[str]
    api_groups: frozenset[str] = frozenset()
    resources: frozenset[str] = frozenset()
    namespaces: frozenset[str] | None = None
    resource_names: frozenset[str] | None = None
    name_prefixes: tuple[str, ...] = ()
    non_resource_urls: frozenset[str] = frozenset()
    url_prefixes: tuple[str, ...] = ()
    #: The ``resourceNames`` list as written (exact names and globs), for display and RBAC.
    names_as_written: tuple[str, ...] = ()
    #: ``allow`` forwards what the rule matches; ``conceal`` answers it in the proxy (see the module doc).
    action: str = "allow"

    @property
    def conceals(self) -> bool:
        return self.action == "conceal"

    @property
    def is_resource_rule(self) -> bool:
        return bool(self.resources)

    def matches_cluster(self, cluster_uuid: str, cluster_name: str | None) -> bool:
        c = self.clusters
        return "*" in c or cluster_uuid in c or (cluster_name is not None and cluster_name in c)

    def scope_ok(self, info: RequestInfo) -> bool:
        """Namespace and name checks, once verb, group, resource and cluster are known to match."""
        if self.namespaces is not None and info.namespace not in self.namespaces:
            return False
        return self.resource_names is None or self.scope_ok_name(info.name)

    def url_ok(self, path: str) -> bool:
        return path in self.non_resource_urls or any(path.startswith(p) for p in self.url_prefixes)

    def misses(self, cluster_uuid: str, cluster_name: str | None, info: RequestInfo) -> list[str]:
        """Every reason this rule does not allow ``info`` (empty when it does)."""
        out: list[str] = []
        if not self.matches_cluster(cluster_uuid, cluster_name):
            out.append(f"cluster not in {_show(self.clusters)}")
        if info.verb not in self.verbs:
            out.append(f"verb {info.verb!r} not in {_show(self.verbs)}")
        if not info.is_resource_request:
            if not self.non_resource_urls and not self.url_prefixes:
                out.append("rule is for resources, request is a non-resource URL")
            elif not self.url_ok(info.path):
                out.append(
                    f"path {info.path!r} not in {_show(self.non_resource_urls | _globs(self.url_prefixes))}"
                )
            return out
        if not self.is_resource_rule:
            out.append("rule is for non-resource URLs, request is for a resource")
            return out
        if "*" not in self.api_groups and info.api_group not in self.api_groups:
            out.append(f"API group {info.api_group!r} not in {_show(self.api_groups)}")
        rp = info.resource_path
        if rp not in self.resources and not ("*" in self.resources and not info.subresource):
            out.append(f"resource {rp!r} not in {_show(self.resources)}")
        if self.namespaces is not None and info.namespace not in self.namespaces:
            where = f"namespace {info.namespace!r}" if info.namespace else "the cluster scope"
            out.append(f"{where} not in namespaces {_show(self.namespaces)}")
        if self.resource_names is not None and not self.scope_ok_name(info.name):
            if info.name:
                out.append(f"name {info.name!r} not in resourceNames {_show(self.names_as_written)}")
            else:
                out.append(
                    "request names no object but the rule requires resourceNames "
                    + _show(self.names_as_written)
                    + (
                        " (list/watch need fieldSelector=metadata.name=...)"
                        if info.verb in ("list", "watch")
                        else ""
                    )
                )
        return out

    def scope_ok_name(self, name: str) -> bool:
        if self.resource_names is None:
            return True
        return bool(name) and (
            name in self.resource_names or any(name.startswith(p) for p in self.name_prefixes)
        )


def _show(values: Iterable[str]) -> str:
    return "[" + ", ".join(repr(v) for v in sorted(values)) + "]"


def _globs(prefixes: Iterable[str]) -> frozenset[str]:
    return frozenset(p + "*" for p in prefixes)


_IndexKey = tuple[str, str, str]


@dataclass(frozen=True, eq=False)
class Policy:
    """An immutable compiled policy; build it with :func:`parse_policy` or :func:`load_policy`."""

    source: str
    sha256: str
    rules: tuple[Rule, ...]
    _index: dict[_IndexKey, dict[str, tuple[Rule, ...]]] = field(repr=False)
    _urls: dict[str, tuple[Rule, ...]] = field(repr=False)
    _wild_group: bool = field(repr=False)
    _wild_resource: bool = field(repr=False)
    #: Conceal rules, indexed like allow rules (they name no wildcards, so exact keys suffice).
    _conceal_index: dict[_IndexKey, dict[str, tuple[Rule, ...]]] = field(repr=False, default_factory=dict)

    # ------------------------------------------------------------------ decisions

    def decide(self, cluster_uuid: str, cluster_name: str | None, info: RequestInfo) -> Decision:
        """Allow, conceal or deny ``info`` for the remote cluster ``cluster_uuid`` (also ``cluster_name``).

        Allow rules are consulted first: one that matches wins over any conceal rule."""
        rule = self._match(cluster_uuid, cluster_name, info)
        if rule is not None:
            return Decision(True, rule.label, f"allowed by rule {rule.label!r}")
        rule = self._match_conceal(cluster_uuid, cluster_name, info)
        if rule is not None:
            return Decision(False, rule.label, f"concealed by rule {rule.label!r}", concealed=True)
        return Decision(False, None, self._deny_reason(info))

    @property
    def conceals_anything(self) -> bool:
        return bool(self._conceal_index)

    def _match_conceal(self, cluster_uuid: str, cluster_name: str | None, info: RequestInfo) -> Rule | None:
        if (
            not self._conceal_index
            or not info.is_resource_request
            or info.verb not in READ_VERBS
            or info.method != "GET"
        ):
            return None
        return self._match(cluster_uuid, cluster_name, info, self._conceal_index, wild=False)

    def _match(
        self,
        cluster_uuid: str,
        cluster_name: str | None,
        info: RequestInfo,
        index: dict[_IndexKey, dict[str, tuple[Rule, ...]]] | None = None,
        *,
        wild: bool = True,
    ) -> Rule | None:
        verb = info.verb
        if _VERB_METHOD.get(verb) != info.method:
            return None  # e.g. a POST classified as watch (deprecated watch/ path), or any write
        tokens: tuple[str, ...]
        if cluster_name is None or cluster_name == cluster_uuid:
            tokens = (cluster_uuid, "*")
        else:
            tokens = (cluster_uuid, cluster_name, "*")
        best: Rule | None = None
        if not info.is_resource_request:
            for token in tokens:
                for rule in self._urls.get(token, ()):
                    if best is not None and rule.index >= best.index:
                        break
                    if verb in rule.verbs and rule.url_ok(info.path):
                        best = rule
                        break
            return best
        if verb == "create" and (info.namespace or info.name or info.subresource):
            return None  # reviews are cluster-scoped, nameless objects
        group = info.api_group
        rp = info.resource_path
        keys: list[_IndexKey] = [(verb, group, rp)]
        if wild and self._wild_group:
            keys.append((verb, "*", rp))
        if wild and self._wild_resource and not info.subresource:
            keys.append((verb, group, "*"))
            if self._wild_group:
                keys.append((verb, "*", "*"))
        if index is None:
            index = self._index
        for key in keys:
            by_cluster = index.get(key)
            if by_cluster is None:
                continue
            for token in tokens:
                for rule in by_cluster.get(token, ()):
                    if best is not None and rule.index >= best.index:
                        break
                    if rule.scope_ok(info):
                        best = rule
                        break
        return best

    def _deny_reason(self, info: RequestInfo) -> str:
        if _VERB_METHOD.get(info.verb) != info.method:
            if info.verb in _VERB_METHOD:
                return f"{info.method} cannot {info.verb}: the proxy only forwards reads and review creates"
            return f"verb {info.verb!r} is never allowed: the proxy is read-only"
        return "no rule of the proxy's policy allows it"

    def explain(
        self, cluster_uuid: str, cluster_name: str | None, info: RequestInfo, *, closest: int = 5
    ) -> str:
        """Human text: the classified request, the decision, and the allowing rule or the closest misses."""
        d = self.decide(cluster_uuid, cluster_name, info)
        matched = self._match(cluster_uuid, cluster_name, info) or self._match_conceal(
            cluster_uuid, cluster_name, info
        )
        cluster = cluster_uuid if not cluster_name else f"{cluster_uuid} ({cluster_name})"
        lines = [
            f"policy:      {self.source} (sha256 {self.sha256[:12]}, {len(self.rules)} rules)",
            f"cluster:     {cluster}",
            f"request:     {info.method} {info.forward_target}",
            f"classified:  {info.describe()}",
            "             "
            + " ".join(
                f"{k}={v!r}"
                for k, v in (
                    ("verb", info.verb),
                    ("apiGroup", info.api_group),
                    ("apiVersion", info.api_version),
                    ("namespace", info.namespace),
                    ("resource", info.resource),
                    ("subresource", info.subresource),
                    ("name", info.name),
                )
                if info.is_resource_request or k == "verb"
            ),
        ]
        if d.allowed:
            rule = matched
            assert rule is not None
            lines.append(f"decision:    ALLOW by rule {rule.label!r} ({self.source}:{rule.line})")
            if rule.description:
                lines.append(f"             {rule.description}")
            return "\n".join(lines)
        if d.concealed:
            rule = matched
            assert rule is not None
            lines.append(
                f"decision:    CONCEAL: concealed by rule {rule.label!r} ({self.source}:{rule.line})"
            )
            lines.append(
                "             the proxy answers as if none existed (empty list, open watch, 404 for a "
                "name); nothing is read upstream"
            )
            if rule.description:
                lines.append(f"             {rule.description}")
            return "\n".join(lines)
        lines.append(f"decision:    DENY: {d.reason}")
        ranked = sorted(
            ((r.misses(cluster_uuid, cluster_name, info), r) for r in self.rules),
            key=lambda mr: (len(mr[0]), mr[1].index),
        )
        if _VERB_METHOD.get(info.verb) != info.method:
            return "\n".join(lines)
        if ranked:
            lines.append("closest rules:")
            for misses, r in ranked[:closest]:
                why = (
                    "; ".join(misses) if misses else "matches, but the request is not a cluster-scoped create"
                )
                shown = f"{r.label} [conceal]" if r.conceals else r.label
                lines.append(f"  - {shown} ({self.source}:{r.line}): {why}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ introspection

    @property
    def cluster_selectors(self) -> frozenset[str]:
        """Every cluster UUID or name the rules mention (``"*"`` included when used)."""
        out: set[str] = set()
        for r in self.rules:
            out |= r.clusters
        return frozenset(out)

    def rbac_namespaces(self) -> list[str]:
        """Namespaces that rules restrict themselves to: each gets a Role of its own."""
        return sorted(
            {
                ns
                for r in self.rules
                if r.is_resource_rule and r.namespaces and not r.conceals
                for ns in r.namespaces
            }
        )

    def rbac_rules(self, namespace: str | None = None) -> list[dict[str, list[str]]]:
        """The RBAC ``PolicyRule`` list the proxy's own service account needs to serve this policy.

        ``namespace=None`` gives the cluster-wide rules (for a ClusterRole): rules without ``namespaces``
        and the non-resource URLs. A namespace gives the rules restricted to it (for a Role there), so
        the proxy's identity reads in that namespace only. Globs cannot be expressed in
        ``resourceNames``: a rule with one comes out without names (the proxy still narrows each request).

        Conceal rules grant nothing: the proxy never reads what they conceal. It does read the apiserver's
        current resourceVersion for them (``list namespaces``, see :mod:`apiproxy.upstream_facts`), so a
        policy that conceals anything gets that grant if no allow rule already gives it.
        """
        out: list[dict[str, list[str]]] = []
        seen: set[tuple[tuple[str, ...], ...]] = set()
        urls: set[str] = set()
        for r in self.rules:
            if r.conceals:
                continue
            if not r.is_resource_rule:
                if namespace is None:
                    urls |= r.non_resource_urls | _globs(r.url_prefixes)
                continue
            if (r.namespaces is not None) != (namespace is not None):
                continue
            if namespace is not None and r.namespaces is not None and namespace not in r.namespaces:
                continue
            entry: dict[str, list[str]] = {
                "apiGroups": sorted(r.api_groups),
                "resources": sorted(r.resources),
                "verbs": [v for v in ("get", "list", "watch", "create") if v in r.verbs],
            }
            if r.resource_names is not None and not r.name_prefixes:
                entry["resourceNames"] = sorted(r.resource_names)
            key = tuple(tuple(v) for v in entry.values())
            if key not in seen:
                seen.add(key)
                out.append(entry)
        if namespace is None and self.conceals_anything and not self._lists_namespaces():
            out.append({"apiGroups": [""], "resources": ["namespaces"], "verbs": ["list"]})
        if urls:
            out.append({"nonResourceURLs": sorted(urls), "verbs": ["get"]})
        return out

    def _lists_namespaces(self) -> bool:
        """Whether some allow rule already grants cluster-wide ``list namespaces`` (every name)."""
        return any(
            not r.conceals
            and r.namespaces is None
            and r.resource_names is None
            and "list" in r.verbs
            and r.api_groups & {"", "*"}
            and r.resources & {"namespaces", "*"}
            for r in self.rules
        )

    def rbac_manifests(
        self, name: str = "apiproxy", service_account: tuple[str, str] = ("apiproxy", "apiproxy")
    ) -> list[dict[str, Any]]:
        """ClusterRole and ClusterRoleBinding for the cluster-wide rules, and a Role and RoleBinding in each
        namespace that rules are restricted to: the proxy's identity can read no more than the policy names.
        ``service_account`` is (namespace, name) of the proxy's ServiceAccount."""
        sa_namespace, sa_name = service_account
        subject = [{"kind": "ServiceAccount", "name": sa_name, "namespace": sa_namespace}]
        annotations = {"apiproxy.io/policy-sha256": self.sha256}
        docs: list[dict[str, Any]] = [
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": {"name": name, "annotations": dict(annotations)},
                "rules": self.rbac_rules(),
            },
            {
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRoleBinding",
                "metadata": {"name": name, "annotations": dict(annotations)},
                "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
                "subjects": subject,
            },
        ]
        for namespace in self.rbac_namespaces():
            # The namespace is repeated in an annotation so that tools that rewrite namespaces (kustomize)
            # can put it back.
            meta = {
                "name": name,
                "namespace": namespace,
                "annotations": {**annotations, "apiproxy.io/namespace": namespace},
            }
            docs.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "Role",
                    "metadata": copy.deepcopy(meta),
                    "rules": self.rbac_rules(namespace),
                }
            )
            docs.append(
                {
                    "apiVersion": "rbac.authorization.k8s.io/v1",
                    "kind": "RoleBinding",
                    "metadata": copy.deepcopy(meta),
                    "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
                    "subjects": subject,
                }
            )
        return docs

    def rbac_yaml(
        self, name: str = "apiproxy", service_account: tuple[str, str] = ("apiproxy", "apiproxy")
    ) -> str:
        """:meth:`rbac_manifests` as one YAML stream."""
        header = f"# Generated from {self.source} by `apiproxy policy rbac`; the proxy narrows it further.\n"
        body = yaml.safe_dump_all(
            self.rbac_manifests(name, service_account), sort_keys=False, default_flow_style=False, width=100
        )
        return header + body


# ====================================================================== loading and validation


def load_policy(path: str | Path) -> Policy:
    """Read and compile a policy file; raises :class:`PolicyError` listing every problem."""
    source = str(path)
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise PolicyError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError([f"{source}:1: file is not UTF-8 ({exc.reason} at byte {exc.start})"]) from exc
    return parse_policy(text, source)


def parse_policy(text: str, source: str = "<policy>") -> Policy:
    """Validate and compile policy ``text``; ``source`` names it in errors (usually the file path)."""
    try:
        root = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else 1
        problem = exc.problem or exc.context or "invalid YAML"
        raise PolicyError([f"{source}:{line}: invalid YAML: {problem}"]) from exc
    except yaml.YAMLError as exc:
        raise PolicyError([f"{source}:1: invalid YAML: {exc}"]) from exc
    v = _Validator(source)
    rules = v.document(root)
    if v.errors:
        raise PolicyError(v.errors)
    return _compile(text, source, rules)


@dataclass
class _RawRule:
    index: int
    line: int
    name: str | None = None
    description: str = ""
    clusters: list[str] = field(default_factory=list)
    verbs: list[str] = field(default_factory=list)
    api_groups: list[str] | None = None
    resources: list[str] | None = None
    resource_names: list[str] | None = None
    namespaces: list[str] | None = None
    non_resource_urls: list[str] | None = None
    action: str = "allow"


class _Validator:
    def __init__(self, source: str) -> None:
        self.source = source
        self.errors: list[str] = []

    def err(self, node: yaml.Node | int, message: str, hint: str | None = None) -> None:
        line = node if isinstance(node, int) else node.start_mark.line + 1
        self.errors.append(f"{self.source}:{line}: {message}" + (f" (hint: {hint})" if hint else ""))

    # -- structure helpers

    def mapping(
        self, node: yaml.Node, what: str, allowed: Sequence[str]
    ) -> dict[str, tuple[yaml.Node, yaml.Node]]:
        if not isinstance(node, yaml.MappingNode):
            self.err(node, f"{what} must be a mapping")
            return {}
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != _STR_TAG:
                self.err(key_node, f"{what} has a key that is not a string")
                continue
            key = str(key_node.value)
            if key in out:
                first = out[key][0].start_mark.line + 1
                self.err(key_node, f"duplicate key {key!r} in {what} (first given on line {first})")
                continue
            if key not in allowed:
                close = [a for a in allowed if a.lower() == key.lower()]
                hint = f"did you mean {close[0]!r}?" if close else f"known fields: {', '.join(allowed)}"
                self.err(key_node, f"unknown field {key!r} in {what}", hint)
                continue
            out[key] = (key_node, value_node)
        return out

    def string(self, node: yaml.Node, what: str) -> str | None:
        if not isinstance(node, yaml.ScalarNode) or node.tag != _STR_TAG:
            hint = "quote it" if isinstance(node, yaml.ScalarNode) else None
            self.err(node, f"{what} must be a string", hint)
            return None
        return str(node.value)

    def strings(self, node: yaml.Node, what: str) -> list[tuple[yaml.Node, str]] | None:
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"{what} must be a list of strings", f'write {what}: ["..."]')
            return None
        if not node.value:
            self.err(node, f"{what} must not be empty", "omit the field or list at least one value")
            return None
        out: list[tuple[yaml.Node, str]] = []
        seen: set[str] = set()
        for item in node.value:
            s = self.string(item, f"each entry of {what}")
            if s is None:
                continue
            if s in seen:
                self.err(item, f"{what} lists {s!r} twice")
                continue
            seen.add(s)
            out.append((item, s))
        return out

    # -- document

    def document(self, root: yaml.Node | None) -> list[_RawRule]:
        if root is None:
            self.err(
                1, "policy is empty", f"start with apiVersion: {API_VERSION}, kind: {KIND}, rules: [...]"
            )
            return []
        top = self.mapping(root, "the policy", _TOP_FIELDS)
        if not isinstance(root, yaml.MappingNode):
            return []
        for key, expected in (("apiVersion", API_VERSION), ("kind", KIND)):
            if key not in top:
                self.err(root, f"missing {key}", f"add {key}: {expected}")
                continue
            value = self.string(top[key][1], key)
            if value is not None and value != expected:
                self.err(top[key][1], f"{key} must be {expected!r}, not {value!r}")
        if "rules" not in top:
            self.err(root, "missing rules", "add rules: with at least one rule")
            return []
        rules_node = top["rules"][1]
        if not isinstance(rules_node, yaml.SequenceNode):
            self.err(rules_node, "rules must be a list of rules")
            return []
        if not rules_node.value:
            self.err(rules_node, "rules must not be empty", "a policy with no rules denies everything")
            return []
        out = [self.rule(i, node) for i, node in enumerate(rules_node.value)]
        names: dict[str, int] = {}
        for r in out:
            if r.name is None:
                continue
            if r.name in names:
                self.err(r.line, f"rule name {r.name!r} is used twice (first on line {names[r.name]})")
            else:
                names[r.name] = r.line
        return out

    def rule(self, index: int, node: yaml.Node) -> _RawRule:
        what = f"rules[{index}]"
        raw = _RawRule(index=index, line=node.start_mark.line + 1)
        fields = self.mapping(node, what, _RULE_FIELDS)
        if not isinstance(node, yaml.MappingNode):
            return raw
        lists: dict[str, list[tuple[yaml.Node, str]] | None] = {}
        for key in _LIST_FIELDS:
            if key in fields:
                lists[key] = self.strings(fields[key][1], key)
        if "name" in fields:
            raw.name = self.string(fields["name"][1], "name")
            if raw.name is not None and not raw.name.strip():
                self.err(fields["name"][1], "name must not be blank")
        if "description" in fields:
            raw.description = self.string(fields["description"][1], "description") or ""
        if "action" in fields:
            action = self.string(fields["action"][1], "action")
            if action is not None and action not in ACTIONS:
                close = [a for a in ACTIONS if a == action.strip().lower()]
                hint = f"did you mean {close[0]!r}?" if close else '"allow" (the default) or "conceal"'
                self.err(fields["action"][1], f"unknown action {action!r}", hint)
            elif action is not None:
                raw.action = action

        # clusters
        if "clusters" not in fields:
            self.err(
                node,
                f"{what} has no clusters",
                'list remote cluster UUIDs or names, or ["*"] for every cluster',
            )
        for item, c in lists.get("clusters") or []:
            if not c.strip() or c != c.strip():
                self.err(item, f"cluster {c!r} is blank or has surrounding spaces")
            elif "*" in c and c != "*":
                self.err(item, f"cluster {c!r}: '*' matches every cluster and cannot be part of a name")
            else:
                raw.clusters.append(c)

        # verbs
        if "verbs" not in fields:
            self.err(node, f"{what} has no verbs", 'e.g. verbs: ["get", "list", "watch"]')
        for item, verb in lists.get("verbs") or []:
            if verb == "*":
                self.err(item, "verb '*' is not allowed", 'list the verbs: ["get", "list", "watch"]')
            elif verb in READ_VERBS or verb == "create":
                raw.verbs.append(verb)
            elif verb.lower() in READ_VERBS or verb.lower() == "create":
                self.err(item, f"unknown verb {verb!r}", f"verbs are lowercase: {verb.lower()!r}")
            elif verb in _WRITE_VERBS:
                self.err(
                    item, f"verb {verb!r} is not allowed: the proxy is read-only", "use get, list or watch"
                )
            else:
                self.err(
                    item, f"unknown verb {verb!r}", "allowed verbs: get, list, watch (and create on reviews)"
                )

        is_url_rule = "nonResourceURLs" in fields
        resource_keys = [k for k in ("apiGroups", "resources", "resourceNames", "namespaces") if k in fields]
        if is_url_rule and resource_keys:
            self.err(
                fields[resource_keys[0]][0],
                f"{what} has both nonResourceURLs and {resource_keys[0]}",
                "split it into a resource rule and a nonResourceURLs rule",
            )
        elif is_url_rule:
            self.url_rule(raw, fields, lists)
        else:
            self.resource_rule(raw, node, what, fields, lists)
        if raw.action == "conceal":
            self.conceal_rule(raw, node, what, fields)
        return raw

    def conceal_rule(
        self, raw: _RawRule, node: yaml.Node, what: str, fields: dict[str, tuple[yaml.Node, yaml.Node]]
    ) -> None:
        """A concealed resource is answered by the proxy, so it must be one it can answer for: a named
        top-level resource of a named group, read with get, list or watch."""
        where = fields["action"][1]
        if raw.non_resource_urls is not None:
            self.err(where, f"{what}: nonResourceURLs cannot be concealed", "conceal applies to resources")
            return
        for verb in raw.verbs:
            if verb not in READ_VERBS:
                self.err(
                    fields["verbs"][1],
                    f"verb {verb!r} cannot be concealed: only get, list and watch can",
                    'use verbs: ["get", "list", "watch"]',
                )
        if "*" in (raw.api_groups or ()):
            self.err(fields["apiGroups"][1], "a conceal rule must name its API groups, not '*'")
        for res in raw.resources or ():
            if res == "*":
                self.err(fields["resources"][1], "a conceal rule must name its resources, not '*'")
            elif "/" in res:
                self.err(
                    fields["resources"][1],
                    f"subresource {res!r} cannot be concealed: only whole resources can",
                )

    def url_rule(
        self,
        raw: _RawRule,
        fields: dict[str, tuple[yaml.Node, yaml.Node]],
        lists: dict[str, list[tuple[yaml.Node, str]] | None],
    ) -> None:
        for verb in raw.verbs:
            if verb != "get":
                self.err(
                    fields["verbs"][1],
                    f"verb {verb!r} does not apply to nonResourceURLs",
                    'use verbs: ["get"]',
                )
        raw.non_resource_urls = []
        for item, url in lists.get("nonResourceURLs") or []:
            body = url[:-1] if url.endswith("*") else url
            if url == "*":
                raw.non_resource_urls.append(url)
            elif "*" in body:
                self.err(item, f"nonResourceURL {url!r}: '*' is only allowed at the end", 'e.g. "/apis/*"')
            elif not _URL_OK(body):
                self.err(
                    item,
                    f"nonResourceURL {url!r} must be a path starting with '/' (characters A-Za-z0-9-._~:@/)",
                )
            elif "//" in body or any(seg in (".", "..") for seg in body.split("/")):
                self.err(item, f"nonResourceURL {url!r} has an empty, '.' or '..' segment")
            elif not url.endswith("*") and _is_resource_path(url):
                self.err(
                    item,
                    f"nonResourceURL {url!r} is a resource path; kube-apiserver authorizes it as a resource",
                    "write a rule with apiGroups and resources instead",
                )
            else:
                raw.non_resource_urls.append(url)

    def resource_rule(
        self,
        raw: _RawRule,
        node: yaml.Node,
        what: str,
        fields: dict[str, tuple[yaml.Node, yaml.Node]],
        lists: dict[str, list[tuple[yaml.Node, str]] | None],
    ) -> None:
        if "resources" not in fields and "apiGroups" not in fields:
            self.err(
                node, f"{what} has neither resources nor nonResourceURLs", "a rule allows one or the other"
            )
            return
        if "resources" not in fields:
            self.err(node, f"{what} has apiGroups but no resources")
        if "apiGroups" not in fields:
            self.err(node, f"{what} has resources but no apiGroups", 'the core group is "": apiGroups: [""]')
        raw.api_groups, raw.resources = [], []
        for item, g in lists.get("apiGroups") or []:
            if g in ("v1", "core"):
                self.err(item, f"API group {g!r} does not exist", 'the core group is written ""')
            elif g in ("", "*") or _GROUP_OK(g):
                raw.api_groups.append(g)
            elif "/" in g:
                self.err(item, f"API group {g!r} must not include a version", f"write {g.split('/')[0]!r}")
            else:
                self.err(item, f"API group {g!r} is not a valid group name")
        for item, res in lists.get("resources") or []:
            base, _, sub = res.partition("/")
            if res == "*":
                raw.resources.append(res)
            elif base == "*":
                self.err(item, f"resource {res!r}: '*' cannot have a subresource", "name the resources")
            elif sub == "*" or "*" in res:
                self.err(item, f"resource {res!r}: subresources cannot be wildcards", "name each subresource")
            elif not _RESOURCE_OK(base) or (sub and not _RESOURCE_OK(sub)):
                hint = (
                    f"resources are lowercase plurals, e.g. {res.lower()!r}" if res.lower() != res else None
                )
                self.err(item, f"resource {res!r} is not a valid resource or resource/subresource", hint)
            elif sub in CONNECT_SUBRESOURCES:
                self.err(
                    item,
                    f"subresource {res!r} opens a connection to a container or a proxy and is never allowed",
                )
            else:
                raw.resources.append(res)
        if "namespaces" in fields:
            raw.namespaces = []
            for item, ns in lists.get("namespaces") or []:
                if ns == "*":
                    self.err(item, "namespace '*' is not allowed", "omit namespaces to allow every namespace")
                elif not _NAME_OK(ns) or ns in (".", ".."):
                    self.err(item, f"namespace {ns!r} is not a valid namespace name")
                else:
                    raw.namespaces.append(ns)
        if "resourceNames" in fields:
            raw.resource_names = []
            for item, n in lists.get("resourceNames") or []:
                body = n[:-1] if n.endswith("*") else n
                if n == "*":
                    self.err(
                        item, "resourceName '*' is not allowed", "omit resourceNames to allow every name"
                    )
                elif "*" in body:
                    self.err(item, f"resourceName {n!r}: '*' is only allowed at the end (a prefix match)")
                elif not _NAME_OK(body) or body in (".", ".."):
                    self.err(item, f"resourceName {n!r} is not a valid object name")
                else:
                    raw.resource_names.append(n)
        # create is only for the two reviews, cluster-scoped and nameless
        if "create" in raw.verbs:
            verbs_node = fields["verbs"][1]
            pairs = {(g, r) for g in raw.api_groups for r in raw.resources}
            wild = "*" in raw.api_groups or "*" in raw.resources
            if wild:
                self.err(verbs_node, "create cannot be combined with '*' apiGroups or resources")
            elif pairs and not pairs <= REVIEW_CREATES:
                bad = sorted(f"{g or 'core'}/{r}" for g, r in pairs - REVIEW_CREATES)
                self.err(
                    verbs_node,
                    f"create is only allowed on tokenreviews and subjectaccessreviews, not {', '.join(bad)}",
                    "one rule per review: apiGroups [authentication.k8s.io] resources [tokenreviews], or "
                    "apiGroups [authorization.k8s.io] resources [subjectaccessreviews]",
                )
            for key in ("namespaces", "resourceNames"):
                if key in fields:
                    self.err(
                        fields[key][0],
                        f"{key} cannot be used with create: reviews are cluster-scoped, nameless",
                    )


def _is_resource_path(url: str) -> bool:
    try:
        return classify("GET", url).is_resource_request
    except MalformedRequest:
        return False


# ====================================================================== compilation


def _compile(text: str, source: str, raws: list[_RawRule]) -> Policy:
    rules: list[Rule] = []
    for raw in raws:
        common: dict[str, Any] = {
            "index": raw.index,
            "label": raw.name if raw.name else f"rules[{raw.index}]",
            "line": raw.line,
            "description": raw.description,
            "clusters": frozenset(raw.clusters),
            "verbs": frozenset(raw.verbs),
            "action": raw.action,
        }
        if raw.non_resource_urls is not None:
            written = raw.non_resource_urls
            rules.append(
                Rule(
                    **common,
                    non_resource_urls=frozenset(u for u in written if not u.endswith("*")),
                    url_prefixes=tuple(u[:-1] for u in written if u.endswith("*")),
                )
            )
            continue
        names = raw.resource_names
        rules.append(
            Rule(
                **common,
                api_groups=frozenset(raw.api_groups or ()),
                resources=frozenset(raw.resources or ()),
                namespaces=frozenset(raw.namespaces) if raw.namespaces is not None else None,
                resource_names=frozenset(n for n in names if not n.endswith("*"))
                if names is not None
                else None,
                name_prefixes=tuple(n[:-1] for n in names or () if n.endswith("*")),
                names_as_written=tuple(names or ()),
            )
        )

    index: dict[_IndexKey, dict[str, list[Rule]]] = {}
    conceal: dict[_IndexKey, dict[str, list[Rule]]] = {}
    urls: dict[str, list[Rule]] = {}
    for rule in rules:
        if not rule.is_resource_rule:
            for c in rule.clusters:
                urls.setdefault(c, []).append(rule)
            continue
        target = conceal if rule.conceals else index
        for key in _keys(rule):
            by_cluster = target.setdefault(key, {})
            for c in rule.clusters:
                by_cluster.setdefault(c, []).append(rule)
    allowing = [r for r in rules if not r.conceals]
    return Policy(
        source=source,
        sha256=hashlib.sha256(text.encode("utf-8")).hexdigest(),
        rules=tuple(rules),
        _index={k: {c: tuple(rs) for c, rs in v.items()} for k, v in index.items()},
        _urls={c: tuple(rs) for c, rs in urls.items()},
        _wild_group=any("*" in r.api_groups for r in allowing),
        _wild_resource=any("*" in r.resources for r in allowing),
        _conceal_index={k: {c: tuple(rs) for c, rs in v.items()} for k, v in conceal.items()},
    )


def _keys(rule: Rule) -> Iterator[_IndexKey]:
    for verb in rule.verbs:
        for group in rule.api_groups:
            for res in rule.resources:
                yield (verb, group, res)


# ====================================================================== 403 bodies


def forbidden_message(
    info: RequestInfo, cluster_display: str, reason: str = ""
) -> tuple[str, dict[str, str]]:
    """The message and ``details`` of the 403 Status kube-apiserver would send, naming the cluster.

    ``pods is forbidden: cluster "alpha" cannot list resource "pods" in API group "" at the cluster scope``
    """
    who = f'cluster "{cluster_display}"'
    if not info.is_resource_request:
        msg = f'forbidden: {who} cannot {info.verb} path "{info.path}"'
        return (f"{msg}: {reason}" if reason else msg), {}
    resource = info.resource_path
    where = f'in the namespace "{info.namespace}"' if info.namespace else "at the cluster scope"
    body = f'{who} cannot {info.verb} resource "{resource}" in API group "{info.api_group}" {where}'
    if reason:
        body = f"{body}: {reason}"
    qualified = f"{info.resource}.{info.api_group}" if info.api_group else info.resource
    if info.name:
        msg = f'{qualified} "{info.name}" is forbidden: {body}'
    else:
        msg = f"{qualified} is forbidden: {body}"
    details: dict[str, str] = {}
    if info.name:
        details["name"] = info.name
    if info.api_group:
        details["group"] = info.api_group
    if info.resource:
        details["kind"] = info.resource
    return msg, details

"""The compiled allowlist and its decisions: which remote cluster may read what.

A :class:`Policy` is an immutable snapshot of validated :class:`Rule` objects (built by
:mod:`apiproxy.policy.parse` from YAML; see :mod:`apiproxy.policy` for the format). It answers three
questions: :meth:`Policy.decide` (allow, conceal or deny one classified request), what the 403 says
(:func:`forbidden_message`, worded as kube-apiserver words it, naming the cluster), and which RBAC the
proxy's own service account needs to serve what the policy allows (:meth:`Policy.rbac_manifests`).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from apiproxy.policy.requestinfo import RequestInfo

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

    @classmethod
    def from_rules(cls, rules: Sequence[Rule], source: str, sha256: str) -> Policy:
        """Index validated rules by ``(verb, group, resource)`` and then by cluster, so :meth:`decide`
        costs a handful of dict lookups whatever the size of the policy."""
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
        return cls(
            source=source,
            sha256=sha256,
            rules=tuple(rules),
            _index={k: {c: tuple(rs) for c, rs in v.items()} for k, v in index.items()},
            _urls={c: tuple(rs) for c, rs in urls.items()},
            _wild_group=any("*" in r.api_groups for r in allowing),
            _wild_resource=any("*" in r.resources for r in allowing),
            _conceal_index={k: {c: tuple(rs) for c, rs in v.items()} for k, v in conceal.items()},
        )

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
        current resourceVersion for them (``list namespaces``, see :mod:`apiproxy.proxy.upstream_facts`), so a
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

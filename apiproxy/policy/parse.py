"""Policy YAML → :class:`~apiproxy.policy.rules.Policy`, validated all at once.

:func:`parse_policy` reports every problem in one :class:`~apiproxy.policy.rules.PolicyError`, each
``file:line: message (hint: ...)``, so an admin fixes a policy in one round rather than one error per
reload. Nothing here decides a request: validation only ever produces rules, and
:meth:`Policy.from_rules <apiproxy.policy.rules.Policy.from_rules>` indexes them.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from apiproxy.policy.requestinfo import MalformedRequest, classify
from apiproxy.policy.rules import (
    ACTIONS,
    API_VERSION,
    CONNECT_SUBRESOURCES,
    KIND,
    READ_VERBS,
    REVIEW_CREATES,
    Policy,
    PolicyError,
    Rule,
)

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
    return Policy.from_rules(rules, source, hashlib.sha256(text.encode("utf-8")).hexdigest())

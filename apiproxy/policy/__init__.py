"""The read-only allowlist: which remote cluster may read what, checked before anything is forwarded.

Pure code, no I/O but reading a file: :mod:`.requestinfo` classifies a request exactly as kube-apiserver
does, :mod:`.parse` validates policy YAML into :mod:`.rules` (the compiled allowlist and its decisions),
:mod:`.reviews` checks the body of the two review POSTs a policy may allow, and :mod:`.cli` is
``apiproxy policy check|explain|rbac``.

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
resourceVersion, a watch that stays open with bookmarks, 404 for a name; see
:mod:`apiproxy.proxy.conceal`). That is for resources a client insists on watching but must never see,
where a 403 would keep it retrying for ever (a remote istiod's Secret informer). An allow rule that
matches wins over a conceal rule, so an opt-in allow for one namespace still works. Verbs are ``get``,
``list`` and ``watch``; the single exception is ``create`` on ``authentication.k8s.io`` ``tokenreviews``
and ``authorization.k8s.io`` ``subjectaccessreviews`` (they persist nothing and multi-primary meshes need
them), cluster-scoped only.

:func:`parse_policy` validates everything at once and raises :class:`PolicyError` with one
``file:line: message (hint: ...)`` per problem. The result, :class:`Policy`, is an immutable compiled
snapshot: rules are indexed by ``(verb, group, resource)`` and then by cluster, so :meth:`Policy.decide`
costs a handful of dict lookups whatever the size of the policy.
"""

from apiproxy.policy.parse import load_policy, parse_policy
from apiproxy.policy.rules import (
    ACTIONS,
    API_VERSION,
    KIND,
    Decision,
    Policy,
    PolicyError,
    Rule,
    forbidden_message,
)

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

"""``apiproxy policy check|explain|rbac``: validate a policy, ask it about one request, derive RBAC.

* ``policy check FILE...`` prints ``FILE: ok (N rules, sha256 ...)`` or every ``FILE:LINE: message``;
  exit 0 when every file is valid, 1 otherwise.
* ``policy explain --policy FILE --cluster UUID [--cluster-name NAME] METHOD TARGET`` classifies the
  request as the proxy would and prints the decision with the allowing rule or the closest misses.
  ``TARGET`` is the raw path and query (``/api/v1/pods?watch=true``); a full ``https://host/...`` URL is
  accepted too and only its path and query are used. Exit 0 when allowed, 1 when denied, 2 when the
  request is malformed (the proxy would answer 400) or the policy does not load, 3 when concealed (the
  proxy answers it itself, as if empty) - so scripts and CI can assert on a policy:
  ``apiproxy policy explain ... GET /api/v1/secrets && echo "too open"``.
* ``policy rbac FILE [--name NAME] [--service-account NS/NAME]`` prints the RBAC the proxy's service
  account needs: a ClusterRole for cluster-wide rules, a Role in each namespace rules are restricted to.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, TextIO

from apiproxy.policy import Policy, PolicyError, load_policy
from apiproxy.policy.requestinfo import MalformedRequest, classify

__all__ = ["add_commands", "cmd_check", "cmd_explain", "cmd_rbac", "target_from_url"]


def add_commands(subparsers: argparse._SubParsersAction[Any]) -> None:
    """Register ``policy check|explain|rbac`` on the main CLI's subparsers."""
    policy = subparsers.add_parser(
        "policy",
        help="check a policy, explain a decision, print the RBAC it needs",
        description="Work with allowlist policies (see policies/README.md).",
    )
    sub = policy.add_subparsers(dest="policy_command", required=True, metavar="SUBCOMMAND")

    check = sub.add_parser(
        "check", help="validate policy files", description="Validate policy files; exit 1 on any error."
    )
    check.add_argument("files", nargs="+", metavar="FILE")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser(
        "explain",
        help="show how a policy decides one request",
        description="Classify METHOD TARGET as the proxy would and show the decision. "
        "Exit 0 when allowed, 1 when denied, 2 when the request is malformed or the policy invalid, "
        "3 when concealed (answered by the proxy as if empty, never forwarded).",
    )
    explain.add_argument("--policy", required=True, metavar="FILE")
    explain.add_argument("--cluster", required=True, metavar="UUID", help="the remote cluster's UUID")
    explain.add_argument("--cluster-name", metavar="NAME", help="the remote cluster's friendly name")
    explain.add_argument("method", metavar="METHOD", help="GET, POST, ...")
    explain.add_argument("target", metavar="TARGET", help="raw path and query, e.g. '/api/v1/pods?watch=1'")
    explain.set_defaults(func=cmd_explain)

    rbac = sub.add_parser(
        "rbac",
        help="print the ClusterRole the proxy's service account needs",
        description="Print a ClusterRole granting what the policy can allow (the proxy narrows it further). "
        "Concealed resources get no grant: the proxy never reads them.",
    )
    rbac.add_argument("file", metavar="FILE")
    rbac.add_argument("--name", default="apiproxy", help="metadata.name of the roles and bindings")
    rbac.add_argument(
        "--service-account",
        default="apiproxy/apiproxy",
        metavar="NAMESPACE/NAME",
        help="the proxy's ServiceAccount, bound to the roles (default: apiproxy/apiproxy)",
    )
    rbac.set_defaults(func=cmd_rbac)


def cmd_check(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    failed = False
    for path in args.files:
        try:
            policy = load_policy(path)
        except PolicyError as exc:
            failed = True
            for line in exc.errors:
                print(line, file=out)
            continue
        print(f"{path}: ok ({len(policy.rules)} rules, sha256 {policy.sha256[:12]})", file=out)
    return 1 if failed else 0


def cmd_explain(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    policy = _load(args.policy, out)
    if policy is None:
        return 2
    method = args.method.upper()
    target = target_from_url(args.target)
    try:
        info = classify(method, target)
    except MalformedRequest as exc:
        print(f"request:     {method} {target}", file=out)
        print(f"decision:    REJECT ({exc.code}): {exc.message}", file=out)
        return 2
    print(policy.explain(args.cluster, args.cluster_name, info), file=out)
    return _EXIT_CODES[policy.decide(args.cluster, args.cluster_name, info).action]


#: ``policy explain`` exit status by decision: non-zero unless the request would be forwarded.
_EXIT_CODES = {"allow": 0, "deny": 1, "conceal": 3}


def cmd_rbac(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    policy = _load(args.file, out)
    if policy is None:
        return 1
    namespace, _, name = getattr(args, "service_account", "apiproxy/apiproxy").partition("/")
    if not namespace or not name:
        out.write("--service-account must be NAMESPACE/NAME\n")
        return 2
    out.write(policy.rbac_yaml(args.name, (namespace, name)))
    return 0


def target_from_url(url: str) -> str:
    """``https://host:443/api/v1/pods?x=1`` → ``/api/v1/pods?x=1``; anything else is returned as is."""
    for scheme in ("https://", "http://"):
        if url.startswith(scheme):
            rest = url[len(scheme) :]
            slash = rest.find("/")
            return rest[slash:] if slash >= 0 else "/"
    return url


def _load(path: str, out: TextIO) -> Policy | None:
    try:
        return load_policy(path)
    except PolicyError as exc:
        for line in exc.errors:
            print(line, file=out)
        return None

"""Every fixed label value of every labelled counter has a series at 0 from the start."""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

import apiproxy
from apiproxy.auth.errors import REASONS
from apiproxy.badrequest import INVALID_REASONS
from apiproxy.proxy import http1, limits
from apiproxy.proxy.metrics import (
    DENIAL_REASONS,
    RATE_LIMIT_KINDS,
    RELOAD_RESULTS,
    UPSTREAM_ERROR_KINDS,
    Metrics,
)

PACKAGE = Path(apiproxy.__file__).parent


def series(metrics: Metrics, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """``{labels: value}`` of the ``_total`` samples of counter ``name``."""
    return {
        tuple(sorted(s.labels.items())): s.value
        for m in metrics.registry.collect()
        if m.name == name
        for s in m.samples
        if s.name == name + "_total"
    }


def test_fixed_labels_are_registered_at_zero() -> None:
    m = Metrics()
    expected = {
        "apiproxy_upstream_errors": {(("kind", k),) for k in UPSTREAM_ERROR_KINDS},
        "apiproxy_authentication_failures": {(("reason", r),) for r in REASONS},
        "apiproxy_invalid_requests": {(("reason", r),) for r in INVALID_REASONS},
        "apiproxy_policy_reloads": {(("result", r),) for r in RELOAD_RESULTS},
        "apiproxy_trust_reloads": {(("result", r),) for r in RELOAD_RESULTS},
        "apiproxy_rate_limited": {(("cluster", ""), ("kind", "connections"))},
    }
    for name, labels in expected.items():
        got = series(m, name)
        assert set(got) == labels, name
        assert set(got.values()) == {0.0}, name


def test_per_cluster_counters_are_registered_when_a_cluster_is_trusted() -> None:
    m = Metrics()
    m.set_clusters(frozenset({"alpha"}))
    m.rate_limited.labels("alpha", "rate").inc()
    m.set_clusters(frozenset({"alpha", "beta"}))  # a second call leaves existing counts alone
    limited = series(m, "apiproxy_rate_limited")
    for cluster in ("alpha", "beta"):
        for kind in RATE_LIMIT_KINDS:
            assert (("cluster", cluster), ("kind", kind)) in limited
    assert limited[(("cluster", "alpha"), ("kind", "rate"))] == 1.0
    denials = series(m, "apiproxy_authorization_denials")
    assert {(("cluster", "beta"), ("reason", r)) for r in DENIAL_REASONS} <= set(denials)


def test_every_upstream_failure_kind_is_in_the_fixed_set() -> None:
    kinds = set()
    pending = [http1.RequestFailed]
    while pending:
        cls = pending.pop()
        kinds.add(cls.kind)
        pending.extend(cls.__subclasses__())
    assert kinds <= set(UPSTREAM_ERROR_KINDS)


def _string_first_args(source: str, *calls: str) -> set[str]:
    """The string literals passed first to any of ``calls``; a plain name passed on (a helper that
    forwards its own parameter) is skipped, anything else fails: it could hide a label."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) in calls and node.args:
            first = node.args[0]
            if isinstance(first, ast.Name):
                continue
            assert isinstance(first, ast.Constant) and isinstance(first.value, str), ast.dump(node)
            found.add(first.value)
    return found


def test_every_rate_limit_kind_raised_is_in_the_fixed_set() -> None:
    raised = _string_first_args(inspect.getsource(limits), "TooManyRequests")
    assert raised and raised <= set(RATE_LIMIT_KINDS)


def test_every_authentication_failure_reason_raised_is_in_the_auth_packages_set() -> None:
    """The metric takes its labels from ``apiproxy.auth.errors.REASONS``: a reason raised anywhere but
    missing there would have no series until it first happens (and trip the constructor's assert)."""
    raised: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        raised |= _string_first_args(path.read_text(), "AuthenticationError", "_fail")
    assert raised, "no AuthenticationError found: the scan is broken"
    assert raised <= REASONS, raised - REASONS

"""Cost of authorizing one request: classify + decide, for the shipped policy and a 1,000-rule one.

Run: ``python benchmarks/policy_bench.py [--iterations N]``. For each request mix it prints the mean
cost in microseconds of ``classify()`` alone and of ``classify()`` + ``Policy.decide()``, measured with
``perf_counter_ns`` over ``N`` passes (best of 5 rounds, so scheduler noise does not count).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import apiproxy  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apiproxy.policy import Policy, load_policy, parse_policy
from apiproxy.policy.requestinfo import classify

ROOT = Path(__file__).resolve().parents[1]

#: What a remote istiod sends in steady state, plus a few denials.
ISTIO_MIX = [
    ("GET", "/api/v1/pods?resourceVersion=0&limit=500&fieldSelector=status.phase%21%3DFailed"),
    ("GET", "/api/v1/pods?allowWatchBookmarks=true&resourceVersion=123456&timeoutSeconds=421&watch=true"),
    ("GET", "/apis/discovery.k8s.io/v1/endpointslices?allowWatchBookmarks=true&resourceVersion=9&watch=true"),
    ("GET", "/api/v1/namespaces/istio-system/configmaps?fieldSelector=metadata.name%3Distio&limit=500"),
    ("GET", "/api/v1/services?limit=500&resourceVersion=0"),
    ("POST", "/apis/authentication.k8s.io/v1/tokenreviews"),
    ("GET", "/version"),
    ("GET", "/api/v1/namespaces/istio-system/secrets"),  # denied
    ("GET", "/apis/networking.istio.io/v1/serviceentries?watch=1"),  # denied
]


def generated_policy(n: int = 1000) -> Policy:
    """``n`` rules over 40 clusters, 25 groups and ``n`` resources, half of them namespaced."""
    rules = []
    for i in range(n):
        rule = (
            f"  - name: r{i}\n    clusters: ['cluster-{i % 40}']\n    apiGroups: ['g{i % 25}.example.com']\n"
            f"    resources: ['res{i}', 'res{i}/status']\n    verbs: [get, list, watch]\n"
        )
        if i % 2:
            rule += f"    namespaces: ['ns-{i % 13}', 'team-{i % 17}']\n"
        if i % 5 == 0:
            rule += f"    resourceNames: ['obj-{i}', 'prefix-{i}-*']\n"
        rules.append(rule)
    text = "apiVersion: apiproxy.io/v1alpha1\nkind: Policy\nrules:\n" + "".join(rules)
    return parse_policy(text, f"<generated {n} rules>")


def generated_mix() -> list[tuple[str, str]]:
    """Requests from cluster-4 (rules 4, 44, 84, ...: cluster-scoped, no resourceNames)."""
    return [
        ("GET", "/apis/g4.example.com/v1/res4?watch=true&resourceVersion=5"),  # allowed
        ("GET", "/apis/g19.example.com/v1/namespaces/a/res44/obj-1"),  # allowed
        ("GET", "/apis/g9.example.com/v1/namespaces/b/res84/obj-2/status"),  # allowed
        ("GET", "/apis/g0.example.com/v1/res0?fieldSelector=metadata.name%3Dprefix-0-x"),  # other cluster
        ("GET", "/apis/g9.example.com/v1/res1234"),  # no such rule
    ]


def bench(fn: Callable[[], object], iterations: int) -> float:
    best = float("inf")
    for _ in range(5):
        start = time.perf_counter_ns()
        for _ in range(iterations):
            fn()
        best = min(best, (time.perf_counter_ns() - start) / iterations)
    return best / 1000.0


def measure_mix(policy: Policy, mix: list[tuple[str, str]], cluster: str, iterations: int) -> dict[str, Any]:
    """Mean µs per request of classify, decide, and both, over the request mix."""
    infos = [classify(m, t) for m, t in mix]
    allowed = sum(policy.decide(cluster, "alpha", i).allowed for i in infos)

    def classify_only() -> None:
        for m, t in mix:
            classify(m, t)

    def decide_only() -> None:
        for i in infos:
            policy.decide(cluster, "alpha", i)

    def both() -> None:
        for m, t in mix:
            policy.decide(cluster, "alpha", classify(m, t))

    per = len(mix)
    return {
        "rules": len(policy.rules),
        "requests": per,
        "allowed": allowed,
        "classify_us": round(bench(classify_only, iterations) / per, 3),
        "decide_us": round(bench(decide_only, iterations) / per, 3),
        "classify_decide_us": round(bench(both, iterations) / per, 3),
    }


def run(name: str, policy: Policy, mix: list[tuple[str, str]], cluster: str, iterations: int) -> None:
    f = measure_mix(policy, mix, cluster, iterations)
    print(
        f"{name:<34} rules={f['rules']:>5}  requests={f['requests']} (allowed {f['allowed']})  "
        f"classify {f['classify_us']:6.2f} µs  decide {f['decide_us']:6.2f} µs  "
        f"classify+decide {f['classify_decide_us']:6.2f} µs"
    )


def run_all(iterations: int) -> dict[str, Any]:
    """Every figure of this benchmark as a dict (for ``python -m benchmarks``)."""
    t0 = time.perf_counter()
    big = generated_policy(1000)
    compile_ms = (time.perf_counter() - t0) * 1000
    shipped = load_policy(ROOT / "policies" / "istio-remote.yaml")
    return {
        "iterations": iterations,
        "compile_1000_rules_ms": round(compile_ms, 1),
        "istio-remote.yaml": measure_mix(shipped, ISTIO_MIX, "uuid", iterations),
        "generated-1000": measure_mix(big, generated_mix(), "cluster-4", iterations),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--iterations", type=int, default=5000)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    big = generated_policy(1000)
    compile_ms = (time.perf_counter() - t0) * 1000
    print(f"python {sys.version.split()[0]}; 1,000-rule policy parsed and compiled in {compile_ms:.0f} ms")
    run(
        "istio-remote.yaml",
        load_policy(ROOT / "policies" / "istio-remote.yaml"),
        ISTIO_MIX,
        "uuid",
        args.iterations,
    )
    run("generated, 1,000 rules", big, generated_mix(), "cluster-4", args.iterations)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

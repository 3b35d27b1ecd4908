"""Cost of authenticating one request: a cold JWT verification per algorithm, and a cached check.

Run: ``python benchmarks/auth_bench.py [--runs N]``. Prints the median (and p90) in microseconds over
``N`` runs measured with ``perf_counter_ns``. "cold" means a fresh verifier each run, so the whole path
(parse, key selection, signature, claims, cache insert) is paid; "cached" is the steady state of a
remote istiod reusing its token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    import apiproxy  # noqa: F401
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from apiproxy.auth.jwt import TokenVerifier
from apiproxy.auth.keys import public_key_pem
from apiproxy.auth.mint import mint_token
from apiproxy.auth.truststore import parse_trust_json

AUDIENCE = "8b2f6c1e-0d5a-4c3e-9f41-2a7d9e0b5c11"


def measure(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    for _ in range(min(100, runs)):
        fn()
    samples = []
    for _ in range(runs):
        start = time.perf_counter_ns()
        fn()
        samples.append(time.perf_counter_ns() - start)
    samples.sort()
    return statistics.median(samples) / 1000, samples[int(len(samples) * 0.9)] / 1000


def run(runs: int) -> dict[str, Any]:
    """The figures as a dict: ``cold_us[alg]`` and ``cached_us``, each ``{"median": µs, "p90": µs}``."""
    keys: dict[str, Any] = {
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
        "RS256": rsa.generate_private_key(65537, 2048),
        "PS256": None,
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "ES384": ec.generate_private_key(ec.SECP384R1()),
    }
    keys["PS256"] = keys["RS256"]
    doc = {
        f"cluster-{alg}": {"authnKeyPub": public_key_pem(key.public_key(), deckhouse=True).decode()}
        for alg, key in keys.items()
    }
    store = parse_trust_json(json.dumps(doc).encode())
    now = time.time()
    out: dict[str, Any] = {"runs": runs, "cold_us": {}}
    for alg, key in keys.items():
        token = mint_token(key, f"cluster-{alg}", AUDIENCE, ttl=3600, now=now, algorithm=alg)

        def cold(token: str = token) -> None:
            TokenVerifier(store, AUDIENCE).verify(token)

        median, p90 = measure(cold, runs)
        out["cold_us"][alg] = {"median": round(median, 2), "p90": round(p90, 2)}

    token = mint_token(keys["EdDSA"], "cluster-EdDSA", AUDIENCE, ttl=3600, now=now)
    verifier = TokenVerifier(store, AUDIENCE)
    verifier.verify(token)
    median, p90 = measure(lambda: verifier.verify(token), runs * 10)
    out["cached_us"] = {"median": round(median, 3), "p90": round(p90, 3), "hits": verifier.cache_hits}
    out["cold_over_cached_EdDSA"] = round(out["cold_us"]["EdDSA"]["median"] / median, 1) if median else None
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=2000)
    args = parser.parse_args(argv)
    figures = run(args.runs)
    print(f"auth benchmark: median / p90 over {args.runs} runs, microseconds")
    for alg, v in figures["cold_us"].items():
        print(f"  cold   {alg:<6} {v['median']:9.1f} {v['p90']:9.1f}")
    c = figures["cached_us"]
    print(f"  cached EdDSA  {c['median']:9.2f} {c['p90']:9.2f}   (hits: {c['hits']})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

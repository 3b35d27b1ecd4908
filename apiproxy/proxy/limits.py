"""Limits that protect the apiserver and the proxy from one noisy remote cluster.

Pure bookkeeping, no I/O: a token bucket per cluster for non-watch requests, a count of open watches per
cluster, and the cap on how long one watch may live. Over a limit the caller answers 429 with
``Retry-After``, which client-go honours by backing off.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from apiproxy.status import StatusError


class TooManyRequests(StatusError):
    """429 with ``Retry-After``; ``kind`` is the bounded metrics label of the limit that was hit."""

    def __init__(self, kind: str, message: str, retry_after: int) -> None:
        super().__init__(
            429,
            message,
            details={"retryAfterSeconds": retry_after},
            headers={"Retry-After": str(retry_after)},
        )
        self.kind = kind


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class RateLimiter:
    """A token bucket per key: ``qps`` tokens a second, at most ``burst`` saved up. ``qps <= 0`` disables."""

    def __init__(self, qps: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.qps = qps
        self.burst = max(burst, 1)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, key: str) -> None:
        """Spend one token of ``key``'s bucket, or raise :class:`TooManyRequests`."""
        if self.qps <= 0:
            return
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.stamp) * self.qps)
            bucket.stamp = now
        if bucket.tokens < 1.0:
            wait = max(1, math.ceil((1.0 - bucket.tokens) / self.qps))
            raise TooManyRequests(
                "rate", f"too many requests from this cluster (limit {self.qps:g}/s), retry later", wait
            )
        bucket.tokens -= 1.0

    def forget(self, keep: set[str]) -> None:
        """Drop the buckets of clusters no longer trusted (their keys would otherwise live forever)."""
        for key in list(self._buckets):
            if key not in keep:
                del self._buckets[key]


class WatchCounter:
    """Open watches per key, capped. ``limit <= 0`` disables the cap."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, key: str) -> None:
        count = self._open.get(key, 0)
        if 0 < self.limit <= count:
            raise TooManyRequests(
                "watches", f"this cluster already holds {count} open watches (limit {self.limit})", 5
            )
        self._open[key] = count + 1

    def release(self, key: str) -> None:
        count = self._open.get(key, 0) - 1
        if count > 0:
            self._open[key] = count
        else:
            self._open.pop(key, None)

    def count(self, key: str) -> int:
        return self._open.get(key, 0)


def cap_watch_timeout(target: str, cap: float, rng: Callable[[], float] = random.random) -> tuple[str, float]:
    """Bound a watch's ``timeoutSeconds`` by ``cap``; add one (50-100 % of ``cap``) if the client sent none.

    Jitter spreads the re-watches of many clients over time instead of letting them all reconnect at
    once. Returns the new target and the timeout in force. Only that one parameter changes.
    """
    path, _sep, query = target.partition("?")
    pairs = query.split("&") if query else []
    limit = max(int(cap), 1)
    for i, pair in enumerate(pairs):
        key, _, value = pair.partition("=")
        if key == "timeoutSeconds":
            asked = int(value) if value.isdigit() else 0
            if 0 < asked <= limit:
                return target, float(asked)
            pairs[i] = f"timeoutSeconds={limit}"
            return f"{path}?{'&'.join(pairs)}", float(limit)
    chosen = max(1, int(limit * (0.5 + rng() / 2)))
    pairs.append(f"timeoutSeconds={chosen}")
    return f"{path}?{'&'.join(pairs)}", float(chosen)

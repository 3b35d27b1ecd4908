"""Exponential, capped, jittered retry delays; pure so the schedule can be tested without waiting."""

from __future__ import annotations

import random
from collections.abc import Callable


def retry_delay(
    failures: int,
    *,
    base: float = 5.0,
    cap: float = 300.0,
    jitter: float = 0.2,
    rand: Callable[[], float] = random.random,
) -> float:
    """Seconds before the next attempt after ``failures`` consecutive failures (≥ 1).

    ``base * 2**(failures-1)``, capped, then spread by ±``jitter`` so many resources failing together
    (one peer down behind several resources, or a controller restart) do not retry in lockstep.
    """
    if failures < 1:
        raise ValueError("failures counts from 1")
    raw = min(cap, base * 2.0 ** min(failures - 1, 62))
    spread = 1.0 + jitter * (2.0 * rand() - 1.0)
    return min(cap, max(0.0, raw * spread))


def resync_delay(interval: float, *, jitter: float = 0.1, rand: Callable[[], float] = random.random) -> float:
    """The next resync, ``interval`` ±``jitter``: resources created together drift apart."""
    return max(0.0, interval * (1.0 + jitter * (2.0 * rand() - 1.0)))

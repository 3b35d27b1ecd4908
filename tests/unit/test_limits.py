"""Rate and watch limits, with an injected clock."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from apiproxy.proxy.limits import RateLimiter, TooManyRequests, WatchCounter, cap_watch_timeout


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_burst_then_refuses_with_retry_after() -> None:
    clock = Clock()
    limiter = RateLimiter(qps=2, burst=3, clock=clock)
    for _ in range(3):
        limiter.take("alpha")
    with pytest.raises(TooManyRequests) as err:
        limiter.take("alpha")
    assert err.value.code == 429 and err.value.kind == "rate"
    assert err.value.headers == {"Retry-After": "1"}
    assert err.value.details == {"retryAfterSeconds": 1}


def test_bucket_refills_at_its_rate_and_caps_at_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(qps=10, burst=5, clock=clock)
    for _ in range(5):
        limiter.take("a")
    clock.now += 0.25  # 2.5 tokens
    limiter.take("a")
    limiter.take("a")
    with pytest.raises(TooManyRequests):
        limiter.take("a")
    clock.now += 3600
    for _ in range(5):
        limiter.take("a")
    with pytest.raises(TooManyRequests):
        limiter.take("a")


def test_clusters_have_separate_buckets() -> None:
    limiter = RateLimiter(qps=1, burst=1, clock=Clock())
    limiter.take("alpha")
    with pytest.raises(TooManyRequests):
        limiter.take("alpha")
    limiter.take("beta")


def test_zero_qps_disables() -> None:
    limiter = RateLimiter(qps=0, burst=1, clock=Clock())
    for _ in range(1000):
        limiter.take("alpha")


def test_forget_drops_unknown_clusters() -> None:
    limiter = RateLimiter(qps=1, burst=1, clock=Clock())
    limiter.take("alpha")
    limiter.take("beta")
    limiter.forget({"beta"})
    limiter.take("alpha")  # a fresh bucket
    with pytest.raises(TooManyRequests):
        limiter.take("beta")


def test_watch_counter_caps_per_cluster() -> None:
    watches = WatchCounter(limit=2)
    watches.acquire("alpha")
    watches.acquire("alpha")
    with pytest.raises(TooManyRequests) as err:
        watches.acquire("alpha")
    assert err.value.kind == "watches"
    watches.acquire("beta")
    watches.release("alpha")
    watches.acquire("alpha")
    assert watches.count("alpha") == 2 and watches.count("beta") == 1


@pytest.mark.parametrize(
    ("target", "expected", "timeout"),
    [
        ("/api/v1/pods?watch=1&timeoutSeconds=300", "/api/v1/pods?watch=1&timeoutSeconds=300", 300),
        ("/api/v1/pods?watch=1&timeoutSeconds=99999", "/api/v1/pods?watch=1&timeoutSeconds=1800", 1800),
        ("/api/v1/pods?timeoutSeconds=0&watch=1", "/api/v1/pods?timeoutSeconds=1800&watch=1", 1800),
        ("/api/v1/pods?watch=1", "/api/v1/pods?watch=1&timeoutSeconds=1350", 1350),
        ("/api/v1/watch/pods", "/api/v1/watch/pods?timeoutSeconds=1350", 1350),
    ],
)
def test_watch_timeout_is_capped_or_added_with_jitter(target: str, expected: str, timeout: float) -> None:
    assert cap_watch_timeout(target, 1800, rng=lambda: 0.5) == (expected, timeout)


@given(st.floats(min_value=0, max_value=0.999999))
def test_added_timeout_stays_within_half_to_full_cap(r: float) -> None:
    _, timeout = cap_watch_timeout("/api/v1/pods?watch=1", 600, rng=lambda: r)
    assert 300 <= timeout <= 600

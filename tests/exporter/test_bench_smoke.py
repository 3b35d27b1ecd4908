"""The exporter benchmark runs end to end at tiny size (figures are not judged here)."""

from __future__ import annotations

import asyncio

from benchmarks import exporter_bench


async def test_exporter_benchmark_produces_its_figures() -> None:
    result = await asyncio.to_thread(exporter_bench.run, 20)
    assert set(result["handler"]) == {"private_cold_us", "private_cached_us", "not_modified_us"}
    assert set(result["loopback"]) == {"private_cached_us", "not_modified_us"}
    assert all(v["median"] > 0 for part in result.values() for v in part.values())
